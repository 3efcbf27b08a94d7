"""What durability and housekeeping cost (issue 19 items 10 and 11).

1. A small file's ingestion (``Ingester.process``, 200 rows) as shipped, with its claim
   fsynced and its record committed with ``synchronous=FULL`` before the file moves, against
   the floor: the same ingestion with the record committed with ``synchronous=NORMAL`` and
   no fsync of the claim (what it was before: a power cut could lose the record of a file
   already in archive/). Runs interleaved; medians.
2. The name a file takes in archive/ when a sensor always drops ``latest.csv``: the time
   of one ingestion's name with 0 and with N same-named files already there, for the
   name scheme (the ingestion id in the name) and for the probing it replaced
   (``name.1``, ``name.2``, ...). The floor is the free name.
3. A retention pass over a state directory with N files in archive/ and N events, none
   old enough to go (what every pass costs), and one that removes them all.

Run: .venv/bin/python bench/durability.py [--files 40] [--crowd 10000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.core import StateDir, parse  # noqa: E402
from appliance.ingest import Ingester  # noqa: E402
from appliance.jobs import Housekeeping, Trainer  # noqa: E402
from appliance.models import LiveModels, Registry  # noqa: E402
from appliance.store import Events, Store  # noqa: E402


def csv(rows: int, seed: int) -> bytes:
    lines = ["x,y,kind,target"] + [f"{i + seed},{i * 0.5},{'abc'[i % 3]},{i % 2}"
                                   for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def not_durable(store: Store):
    """The floor of 1: commits as every other (NORMAL), no fsync of the claim."""
    import appliance.ingest.ingester as ingester_module

    real_atomic, real_fsync_dir = store._atomic, ingester_module._fsync_dir
    store._atomic = lambda durable=False: real_atomic(False)  # type: ignore[method-assign]
    ingester_module._fsync_dir = lambda folder: None
    try:
        yield
    finally:
        store._atomic = real_atomic  # type: ignore[method-assign]
        ingester_module._fsync_dir = real_fsync_dir


def bench_ingest(root: Path, files: int) -> None:
    state = StateDir(root / "ingest")
    state.create()
    settings = parse({"pipelines": {"p": {"retrain": {"min_new_rows": 10**9}}}})
    store = Store.open(state.db)
    ingester = Ingester(state, store, Events(store), settings)
    times: dict[str, list[float]] = {"durable": [], "floor": []}
    for i in range(files):
        for kind in ("durable", "floor") if i % 2 else ("floor", "durable"):
            claimed = state.pipeline_dir(state.processing, "p") / f"{time.time_ns()}__f.csv"
            claimed.write_bytes(csv(200, seed=1000 * i + (kind == "floor")))
            t0 = time.perf_counter()
            if kind == "durable":
                ingester.process(claimed, "p")
            else:
                with not_durable(store):
                    ingester.process(claimed, "p")
            times[kind].append(time.perf_counter() - t0)
    store.close()
    durable = statistics.median(times["durable"]) * 1000
    floor = statistics.median(times["floor"]) * 1000
    print(f"1. small-file ingestion, median of {files}: durable {durable:.1f} ms, "
          f"floor (NORMAL, no claim fsync) {floor:.1f} ms, ratio {durable / floor:.2f}x, "
          f"+{durable - floor:.1f} ms a file")


def old_free_name(folder: Path, name: str) -> Path:
    candidate = folder / name
    n = 1
    while candidate.exists() or candidate.with_name(candidate.name + ".reason.json").exists():
        candidate = folder / f"{name}.{n}"
        n += 1
    return candidate


def bench_names(root: Path, crowd: int) -> None:
    from appliance.ingest.outcomes import free_name

    def timed(fn, folder: Path, rounds: int = 20) -> float:
        out = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            fn(folder)
            out.append(time.perf_counter() - t0)
        return statistics.median(out) * 1e6

    empty = root / "empty"
    empty.mkdir()
    full = root / "full"
    full.mkdir()
    (full / "latest.csv").write_bytes(b"")
    for i in range(1, crowd + 1):
        (full / f"latest.csv.{i}").write_bytes(b"")
    for label, fn in (("ingestion id (ours)", lambda f: free_name(f, "latest.csv", 123456)),
                      ("probing name.N (before)", lambda f: old_free_name(f, "latest.csv"))):
        alone, crowded = timed(fn, empty), timed(fn, full)
        print(f"2. a name for latest.csv, {label}: free {alone:.1f} us, with {crowd} "
              f"taken {crowded:.1f} us, ratio {crowded / alone:.1f}x")


def bench_retention(root: Path, crowd: int) -> None:
    state = StateDir(root / "retention")
    state.create()
    settings = parse({})
    store = Store.open(state.db)
    events = Events(store)
    live = LiveModels()
    trainer = Trainer(state, store, Registry(state, store), events, settings, live)
    keeper = Housekeeping(state, store, events, settings, trainer, live,
                          Ingester(state, store, events, settings).lock)
    folder = state.pipeline_dir(state.archive, "p")
    for i in range(crowd):
        (folder / f"f{i}.csv").write_bytes(b"x")
    for _ in range(0, crowd, 1000):
        with store._atomic() as db:
            db.conn.executemany(
                "INSERT INTO events (ts, kind, level, pipeline, message) VALUES (?,?,?,?,?)",
                [("2026-01-01T00:00:00.000Z", "ingested", "info", "p", "m")] * 1000)
    now = time.time()
    t0 = time.perf_counter()
    keeper.apply_retention(now - 400 * 86400)   # nothing is old enough
    idle = time.perf_counter() - t0
    t0 = time.perf_counter()
    removed = keeper.apply_retention(now + 400 * 86400)
    full = time.perf_counter() - t0
    trainer.shutdown()
    store.close()
    print(f"3. retention pass over {crowd} archived files and {crowd} events: nothing to "
          f"remove {idle * 1000:.0f} ms; removing them all {full * 1000:.0f} ms "
          f"({removed['archived_files']} files, {removed['events']} events)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--crowd", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as tmp:
        root = Path(tmp)
        bench_ingest(root, args.files)
        bench_names(root, args.crowd)
        bench_retention(root, args.crowd)
    os.sync()


if __name__ == "__main__":
    main()
