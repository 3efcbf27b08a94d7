"""Shadow scoring's cost to serving: single-row predict throughput and p99 at concurrency 16
with a candidate shadowing production at sample rate 1.0 and 0.1, against shadow off, in one
run (bench/serve.py's daemon set-up and load generator).

Three real daemons, each with v1 trained on sample_data/machines_01.csv in production and
v2 trained on machines_02.csv as a candidate: under `promotion.policy = "shadow"` (sample
rate 1.0, and 0.1) it shadows production, never decided during the run
(`shadow.min_requests` out of reach); under `manual` (the floor: shadow off) it just waits.
A fourth daemon, a second "off", measures the machine's own noise (A/A). Every cell is
measured `--repeats` times, interleaved in a rotating order, medians shown.

Targets (2 cores): at 0.1, >= 0.85x the throughput of off; at 1.0, >= 0.6x; p99 within
1.3x of off's.

    .venv/bin/python bench/shadow.py [--seconds 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import serve  # noqa: E402  (bench/serve.py: the daemon set-up and the load generator)

POLICY = """
[shadow]
sample_rate = {rate}
min_requests = 1000000000
min_labelled = 1000000000

[pipelines.machines.promotion]
policy = "{policy}"
"""


def start(workdir: Path, policy: str, rate: float) -> tuple[subprocess.Popen[bytes], str]:
    """A daemon serving v1, with v2 shadowing (or waiting, under `manual`)."""
    # v1 through the gate (a first model under `manual` would wait too), then the policy
    # under test, applied live by a SIGHUP, for v2.
    proc, url, _ = serve.start_appliance(workdir, POLICY.format(rate=rate, policy="gate"))
    try:
        _policy_for_v2(proc, url, workdir, policy)
    except BaseException:
        serve._stop(proc)  # a daemon that did not get ready is not left behind
        raise
    return proc, url


def _policy_for_v2(proc: subprocess.Popen[bytes], url: str, workdir: Path,
                   policy: str) -> None:
    import httpx

    config = workdir / "state" / "appliance.toml"
    config.write_text(config.read_text().replace('policy = "gate"', f'policy = "{policy}"'))
    proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        events = httpx.get(f"{url}/v1/events", timeout=10).json()["events"]
        return any(e["kind"] == "config_reloaded" for e in events)

    serve._wait(reloaded, 30, "the config to be reloaded")
    inbox = workdir / "state" / "inbox" / "machines"
    shutil.copyfile(serve.SAMPLES / "machines_02.csv", inbox / ".machines_02.csv.part")
    os.replace(inbox / ".machines_02.csv.part", inbox / "machines_02.csv")

    def v2_waits() -> bool:
        models = httpx.get(f"{url}/v1/pipelines/machines/models", timeout=10).json()["models"]
        v2 = [m for m in models if m["version"] == 2]
        return bool(v2) and bool(v2[0].get("policy_state"))

    serve._wait(v2_waits, 180, f"v2 to {'shadow' if policy == 'shadow' else 'wait'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (medians)")
    args = parser.parse_args()

    import httpx
    import polars as pl

    rows = pl.read_csv(serve.SAMPLES / "machines_02.csv").drop("failed_within_24h").head(1)
    body = json.dumps({"rows": rows.to_dicts()})
    workdir = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    procs: list[subprocess.Popen[Any]] = []
    servers: dict[str, str] = {}
    try:
        for name, policy, rate in (("shadow off", "manual", 0.0),
                                   ("shadow 0.1", "shadow", 0.1),
                                   ("shadow 1.0", "shadow", 1.0),
                                   ("off, again", "manual", 0.0)):
            proc, url = start(workdir / name.replace(" ", "-"), policy, rate)
            procs.append(proc)
            servers[name] = url
        print(f"{len(os.sched_getaffinity(0))} cores; single row, concurrency 16; "
              f"{args.repeats} x {args.seconds:g} s per cell, interleaved; medians shown")
        results: dict[str, list[dict[str, Any]]] = {}
        names = list(servers)
        for i in range(args.repeats):
            # Each round in another order, so no server always follows the same one.
            for name in names[i % len(names):] + names[:i % len(names)]:
                url = servers[name]
                results.setdefault(name, []).append(
                    serve.load(url, serve.PREDICT_PATH, body, 16, args.seconds))
                time.sleep(0.5)
        med = {name: {k: statistics.median(r[k] for r in runs)
                      for k in ("rps", "p50_ms", "p99_ms")} | {
                          "errors": sum(r["errors"] for r in runs)}
               for name, runs in results.items()}
        print(f"\n{'server':<11} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        for name, m in med.items():
            print(f"{name:<11} {m['rps']:>8.0f} {m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f} "
                  f"{m['errors']:>6.0f}")
        off = med["shadow off"]
        again = med["off, again"]
        print(f"\nthe machine's noise (A/A): the second 'off' daemon at "
              f"{again['rps'] / off['rps']:.2f}x the first's throughput, p99 "
              f"{again['p99_ms'] / off['p99_ms']:.2f}x")
        print("\ntargets:")
        for name, floor in (("shadow 0.1", 0.85), ("shadow 1.0", 0.6)):
            m = med[name]
            ratio, p99 = m["rps"] / off["rps"], m["p99_ms"] / off["p99_ms"]
            print(f"  {name}: {ratio:.2f}x the throughput of off (>= {floor}x): "
                  f"{'met' if ratio >= floor else 'NOT met'}; p99 {p99:.2f}x off's "
                  f"(<= 1.3x): {'met' if p99 <= 1.3 else 'NOT met'}")
        print("\nthe shadows over the run (from GET /v1/pipelines/machines/models):")
        for name, url in servers.items():
            models = httpx.get(f"{url}/v1/pipelines/machines/models", timeout=10).json()
            v2 = next(m for m in models["models"] if m["version"] == 2)
            s = v2.get("shadow")
            if s is None:
                print(f"  {name}: {v2['policy_state']}")
                continue
            print(f"  {name}: {s['requests']:,} requests, {s['sampled']:,} sampled, "
                  f"{s['scored']:,} scored, {s['dropped']:,} dropped (queue full), "
                  f"{s['errors']} errors; agreement {s['agreement'] or 0:.1%}; p99 shadow "
                  f"{s['p99_ms']} ms vs production {s['production_p99_ms']} ms (in process)")
        print("\nThe machine is shared: read medians and ratios, not single runs.")
    finally:
        for proc in procs:
            serve._stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
