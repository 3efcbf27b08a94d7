"""Ingestion against its floor, memory on a big CSV, and the drop-to-accepted delay.

1. Throughput: a 1,000,000-row x 20-column CSV (floats, integers, text, a timestamp and a
   binary target). The floor is bare Polars reading it and writing Parquet, with the same
   options the appliance uses (dates parsed), eagerly (``read_csv().write_parquet()``) and
   streaming (``scan_csv().sink_parquet()``); the faster is the floor. The appliance is
   timed three ways: ``Ingester.process`` in process on a pipeline's first file (types
   inferred) and on a later file (types from the pipeline's schema), and through the real
   daemon, from the rename into ``inbox/`` to the original landing in ``archive/`` (the
   record is written before that move). Every run gets a file with a different last row,
   so none is a duplicate. Runs are interleaved, so load from other processes hits all
   alike. Target: the appliance within 1.3x of the floor.
2. Memory: peak RSS of a child process that ingests a ~2 GB CSV (target: under 1 GB),
   beside the peak RSS of the streaming floor on the same file.
3. Delay: a small file dropped into a running daemon, written in place (it must settle for
   ``ingest.settle_seconds``; target under settle + 0.5 s) and renamed into place (taken
   at once).

Run: .venv/bin/python bench/ingest.py [--runs 5] [--big-gb 2] [--skip-big]
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

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.core import StateDir, parse  # noqa: E402
from appliance.ingest import Ingester  # noqa: E402
from appliance.store import Events, Store  # noqa: E402

SETTLE = 2.0


def frame(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    for i in range(8):
        cols[f"f{i}"] = rng.normal(size=n).round(6)
    for i in range(6):
        cols[f"i{i}"] = rng.integers(0, 10_000, size=n)
    cats = np.array(["alpha", "beta", "gamma", "delta", "epsilon"])
    for i in range(4):
        cols[f"c{i}"] = cats[rng.integers(0, 5, size=n)]
    start = np.datetime64("2024-01-01T00:00:00", "ms")
    cols["ts"] = start + rng.integers(0, 30_000_000, size=n).astype("timedelta64[s]")
    cols["target"] = rng.integers(0, 2, size=n)
    return pl.DataFrame(cols)


def unique_row(k: int) -> str:
    return ",".join([f"{k}.25"] * 8 + [str(k)] * 6 + ["zeta"] * 4
                    + ["2024-06-01T00:00:00.000", "1"]) + "\n"


def variant(src: Path, dest: Path, k: int) -> Path:
    """A copy of ``src`` with one more row, so its hash is new."""
    shutil.copyfile(src, dest)
    with open(dest, "a") as f:
        f.write(unique_row(k))
    return dest


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# --- the floor and the appliance in process -----------------------------------------------

def floor_eager(src: Path, out: Path) -> float:
    t = time.perf_counter()
    pl.read_csv(src, try_parse_dates=True).write_parquet(out)
    return time.perf_counter() - t


def floor_lazy(src: Path, out: Path) -> float:
    t = time.perf_counter()
    pl.scan_csv(src, try_parse_dates=True).sink_parquet(out)
    return time.perf_counter() - t


class InProcess:
    def __init__(self, root: Path, settings_raw: dict | None = None) -> None:
        self.state = StateDir(root)
        self.state.create()
        self.store = Store.open(self.state.db)
        self.ingester = Ingester(self.state, self.store, Events(self.store),
                                 parse(settings_raw or {}))

    def claim(self, src: Path, k: int) -> Path:
        folder = self.state.pipeline_dir(self.state.processing, "bench")
        return variant(src, folder / f"{time.time_ns()}__run{k}.csv", k)

    def process(self, claimed: Path) -> tuple[float, dict]:
        t = time.perf_counter()
        out = self.ingester.process(claimed, "bench")
        took = time.perf_counter() - t
        assert out is not None and out.record.status == "accepted", out and out.record.reason
        return took, out.record.details.get("timings_ms", {})

    def close(self) -> None:
        self.store.close()


# --- the daemon -----------------------------------------------------------------------------

class Daemon:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        (root / "appliance.toml").write_text(
            f"[ingest]\nsettle_seconds = {SETTLE}\n\n"
            "[pipelines.bench.retrain]\nmin_new_rows = 1000000000\n"
            # The first file still trains the pipeline's first model: on its newest 1,000
            # rows, so the job measured here is the ingestion, not a training beside it.
            "[pipelines.bench.train]\nwindow_rows = 1000\n")
        self.root = root
        self.log = open(root.parent / "daemon.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "run", "--state-dir", str(root), "--port", "0",
             "--log-level", "warning"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not (root / "daemon.json").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not start; see daemon.log")
            time.sleep(0.05)

    def drop(self, src: Path, name: str, k: int | None = None, rename: bool = True) -> float:
        """Seconds from the drop (rename, or close of a file written in place) until the
        original is in archive/."""
        inbox = self.root / "inbox" / "bench"
        inbox.mkdir(parents=True, exist_ok=True)
        final = inbox / name
        if rename:
            tmp = inbox / f".{name}.part"
            variant(src, tmp, k) if k is not None else shutil.copyfile(src, tmp)
            t = time.perf_counter()
            os.replace(tmp, final)
        else:
            data = src.read_bytes() + (unique_row(k).encode() if k is not None else b"")
            with open(final, "wb") as f:
                f.write(data)
            t = time.perf_counter()
        archived = self.root / "archive" / "bench" / name
        rejected = self.root / "rejected" / "bench" / name
        deadline = t + 300
        while not archived.exists():
            if rejected.exists():
                raise SystemExit(f"{name} was refused: "
                                 f"{(rejected.parent / (name + '.reason.json')).read_text()}")
            if time.perf_counter() > deadline:
                raise SystemExit(f"{name} was not taken within 300 s")
            time.sleep(0.002)
        return time.perf_counter() - t

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# --- memory on a big file ---------------------------------------------------------------------

CHILD_OURS = """
import json, os, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from appliance.core.config import parse
from appliance.store.events import Events
from appliance.ingest import Ingester
from appliance.core.statedir import StateDir
from appliance.store.database import Store
state = StateDir(Path(sys.argv[2])); state.create()
store = Store.open(state.db)
claimed = state.pipeline_dir(state.processing, "bench") / f"{time.time_ns()}__big.csv"
os.link(sys.argv[1], claimed)
t = time.perf_counter()
out = Ingester(state, store, Events(store), parse({})).process(claimed, "bench")
print(json.dumps({"seconds": time.perf_counter() - t, "status": out.record.status,
                  "rows": out.record.rows, "reason": out.record.reason,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_FLOOR = """
import json, resource, sys, time
import polars as pl
t = time.perf_counter()
pl.scan_csv(sys.argv[1], try_parse_dates=True).sink_parquet(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-gb", type=float, default=2.0)
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start "
          "(other processes share these cores: read medians and ratios)")
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmpdir:
        tmp = Path(tmpdir)
        src = tmp / "data.csv"
        base = frame(args.rows)
        base.write_csv(src)
        print(f"data: {args.rows:,} rows x {base.width} columns, "
              f"{src.stat().st_size / 1e6:.0f} MB CSV")

        # 1. throughput, interleaved
        first_dirs = tmp / "first"
        later = InProcess(tmp / "later")
        seed = tmp / "seed.csv"
        base.head(1000).write_csv(seed)
        later.process(later.claim(seed, -1))  # fixes the pipeline's schema
        daemon = Daemon(tmp / "daemon")
        times: dict[str, list[float]] = {k: [] for k in
                                         ("floor eager", "floor streaming", "ingester, first file",
                                          "ingester, later file", "daemon, drop to archived")}
        steps: list[dict] = []
        try:
            for k in range(args.runs):
                times["floor eager"].append(floor_eager(src, tmp / "floor.parquet"))
                times["floor streaming"].append(floor_lazy(src, tmp / "floor.parquet"))
                fresh = InProcess(first_dirs / str(k))
                took, _ = fresh.process(fresh.claim(src, k))
                times["ingester, first file"].append(took)
                fresh.close()
                shutil.rmtree(first_dirs / str(k))
                took, timing = later.process(later.claim(src, k))
                times["ingester, later file"].append(took)
                steps.append(timing)
                times["daemon, drop to archived"].append(
                    daemon.drop(src, f"run{k}.csv", k=k))
                for f in (tmp / "later/datasets/bench").glob("*.parquet"):
                    f.unlink()
            small = tmp / "small.csv"
            base.head(200).write_csv(small)
            in_place = [daemon.drop(small, f"small{k}.csv", k=10_000 + k, rename=False)
                        for k in range(args.runs)]
            renamed = [daemon.drop(small, f"small_r{k}.csv", k=20_000 + k)
                       for k in range(args.runs)]
        finally:
            daemon.stop()
            later.close()

        floor = min(med(times["floor eager"]), med(times["floor streaming"]))
        print(f"\n1. throughput ({args.runs} interleaved runs; median, min..max)")
        for name, xs in times.items():
            ratio = "" if name.startswith("floor") else f"   {med(xs) / floor:.2f}x the floor"
            print(f"   {name:26} {med(xs):6.2f} s  ({min(xs):.2f}..{max(xs):.2f}){ratio}")
        keys = sorted({key for s in steps for key in s})
        print("   later-file steps, median ms: " + ", ".join(
            f"{key} {med([s.get(key, 0) for s in steps]):.0f}" for key in keys)
            + " (the hash runs beside the conversion)")
        print("   target: the appliance within 1.3x of the floor")

        print(f"\n3. delay, small file ({base.head(200).write_csv().count(chr(10))} lines), "
              f"settle_seconds = {SETTLE}")
        print(f"   written in place:  median {med(in_place):.2f} s "
              f"({min(in_place):.2f}..{max(in_place):.2f}); target < {SETTLE + 0.5:.1f} s")
        print(f"   renamed into place: median {med(renamed):.3f} s "
              f"({min(renamed):.3f}..{max(renamed):.3f})")

        if args.skip_big:
            return
        big = tmp / "big.csv"
        reps = max(1, round(args.big_gb * 1e9 / src.stat().st_size))
        with open(big, "wb") as f:
            f.write(src.read_bytes())
            body = src.read_bytes().split(b"\n", 1)[1]
            for _ in range(reps - 1):
                f.write(body)
        size = big.stat().st_size
        for p in tmp.glob("*.parquet"):
            p.unlink()
        ours = child(CHILD_OURS, str(big), str(tmp / "big-state"), str(ROOT))
        shutil.rmtree(tmp / "big-state")
        fl = child(CHILD_FLOOR, str(big), str(tmp / "big-floor.parquet"))
        print(f"\n2. memory, a {size / 1e9:.2f} GB CSV ({reps * args.rows:,} rows) in a child "
              "process")
        print(f"   appliance: peak RSS {ours['max_rss_mb']:.0f} MB, {ours['seconds']:.1f} s, "
              f"{ours['status']} {ours['rows']:,} rows; target < 1024 MB")
        print(f"   floor (scan_csv.sink_parquet): peak RSS {fl['max_rss_mb']:.0f} MB, "
              f"{fl['seconds']:.1f} s")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
