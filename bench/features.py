"""Feature store speed, in one run.

1. Point-in-time join: 1,000,000 training rows against a feature set of 10,000 keys with
   history (10 versions per key): the appliance's join (``join_feature_set``) against a
   bare Polars ``join_asof`` of the same frames (the floor). Target: within 1.5x.
2. Online fill: a prediction that fills 10 features from the online store
   against one that sends them all, at concurrency 1, through the real daemon. Target:
   at most 1.3x the latency.

    python bench/features.py [--rows 1000000] [--keys 10000] [--repeat 5] [--skip-predict]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from appliance.features.featurestore import join_feature_set  # noqa: E402

T0 = datetime(2026, 1, 1)


def frames(rows: int, keys: int, versions: int, seed: int = 0) -> tuple[pl.DataFrame, ...]:
    rng = np.random.default_rng(seed)
    span_s = 90 * 86400
    fs = pl.DataFrame({
        "entity": np.repeat(np.arange(keys), versions).astype(np.int64),
        "updated_at": pl.Series(
            rng.integers(0, span_s, keys * versions).astype("timedelta64[s]")
            + np.datetime64(T0, "us")),
        **{f"f{i}": rng.normal(size=keys * versions) for i in range(10)},
    })
    left = pl.DataFrame({
        "entity": rng.integers(0, keys, rows).astype(np.int64),
        "ts": pl.Series(rng.integers(0, span_s, rows).astype("timedelta64[s]")
                        + np.datetime64(T0, "us")),
        "x": rng.normal(size=rows),
        "target": rng.integers(0, 2, rows),
    })
    return left, fs


def timed_pair(a, b, repeat: int) -> tuple[float, float]:
    """Medians of ``a`` and ``b``, run alternately so that neither gets the warmer cache."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def join_bench(rows: int, keys: int, repeat: int) -> None:
    left, fs = frames(rows, keys, 10)

    def floor() -> pl.DataFrame:
        return left.sort("ts").join_asof(fs.sort("updated_at"), left_on="ts",
                                         right_on="updated_at", by="entity",
                                         strategy="backward", check_sortedness=False)

    def ours() -> pl.DataFrame:
        return join_feature_set(left, fs, key="entity", row_time="ts",
                                feature_time="updated_at", name="bench")

    assert floor().drop("updated_at").equals(ours())
    floor_s, ours_s = timed_pair(floor, ours, repeat)
    print(f"point-in-time join, {rows:,} rows x {keys:,} keys x 10 versions "
          f"(median of {repeat}):")
    print(f"  floor  polars join_asof      {floor_s * 1000:8.1f} ms")
    print(f"  ours   join_feature_set      {ours_s * 1000:8.1f} ms")
    print(f"  ratio  {ours_s / floor_s:.2f}x (target <= 1.5x)")


def predict_bench(seconds: float, rounds: int) -> None:
    """The real daemon serves a model that joins a 10-feature set: requests that send only
    the key (the appliance fills 10 values from the online store) against requests that
    send all of them, at concurrency 1, alternating rounds."""
    import json
    import subprocess
    import tempfile

    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="bench-features-"))
    state = tmp / "state"
    (state / "inbox/entity_info").mkdir(parents=True)
    (state / "inbox/events").mkdir(parents=True)
    (state / "appliance.toml").write_text(
        "[ingest]\nsettle_seconds = 0.2\n[server]\nlog_sample_rate = 0.0\n"
        '[feature_sets.entity_info]\nkey = "entity"\n'
        '[pipelines.events]\ntarget = "target"\njoin = ["entity_info"]\n'
    )
    rng = np.random.default_rng(1)
    keys = 10_000
    info = pl.DataFrame({"entity": [f"E{k}" for k in range(keys)],
                         **{f"f{i}": rng.normal(size=keys) for i in range(10)}})
    info.write_csv(state / "inbox/entity_info/info.csv")
    time.sleep(1.0)
    n = 20_000
    ent = rng.integers(0, keys, n)
    x = rng.normal(size=n)
    f0 = info["f0"].to_numpy()[ent]
    pl.DataFrame({"entity": [f"E{k}" for k in ent], "x": x,
                  "target": (x + f0 + rng.normal(size=n) > 0).astype(np.int64)}).write_csv(
        state / "inbox/events/events.csv")
    daemon = subprocess.Popen([sys.executable, "-m", "appliance", "run", "--state-dir",
                               str(state), "--port", "0", "--log-level", "warning"], cwd=ROOT)
    try:
        runfile = state / "daemon.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not runfile.exists():
            time.sleep(0.1)
        url = json.loads(runfile.read_text())["url"]
        http = httpx.Client(base_url=url, timeout=30)
        while time.monotonic() < deadline:
            if http.get("/ready").json()["models"].get("events"):
                break
            time.sleep(0.2)
        key_only = {"entity": "E42", "x": 0.3}
        full = {**key_only, **{f"f{i}": info[f"f{i}"][42] for i in range(10)}}
        a = http.post("/v1/pipelines/events/predict", json={"rows": [key_only]}).json()
        b = http.post("/v1/pipelines/events/predict", json={"rows": [full]}).json()
        assert a["predictions"] == b["predictions"], (a, b)
        bodies = {}
        for name, row in (("key only", key_only), ("all sent", full)):
            path = tmp / f"{name.replace(' ', '_')}.json"
            path.write_text(json.dumps({"rows": [row]}))
            bodies[name] = path
        predict = f"{url}/v1/pipelines/events/predict"
        p50: dict[str, list[float]] = {k: [] for k in bodies}
        rps: dict[str, list[float]] = {k: [] for k in bodies}
        for _ in range(rounds):
            for name, body in bodies.items():
                out = subprocess.run([sys.executable, str(ROOT / "bench/loadgen.py"), predict,
                                      str(body), "--concurrency", "1", "--seconds",
                                      str(seconds)], capture_output=True, text=True,
                                     check=True)
                result = json.loads(out.stdout)
                assert result["failed"] == 0, result["statuses"]
                p50[name].append(result["p50_ms"])
                rps[name].append(result["rps"])
        print(f"online fill of 10 features, concurrency 1 ({rounds} rounds x {seconds:g} s, "
              "medians):")
        for name in bodies:
            print(f"  {name:<9} p50 {statistics.median(p50[name]):.3f} ms   "
                  f"{statistics.median(rps[name]):8.0f} req/s")
        ratio = statistics.median(p50["key only"]) / statistics.median(p50["all sent"])
        print(f"  ratio  {ratio:.2f}x latency (target <= 1.3x)")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-predict", action="store_true")
    args = ap.parse_args()
    join_bench(args.rows, args.keys, args.repeat)
    if not args.skip_predict:
        predict_bench(args.seconds, args.rounds)


if __name__ == "__main__":
    main()
