"""Training on a Dask cluster against training on the box.

2,000,000 rows x 20 features (18 numeric, 2 text categories; bench/train.py's data) and a
binary target. The same ``appliance.models.train`` (window, split, encoding, fit with
early stopping, validation predictions, metrics) runs:

  (a) local: LightGBM on this box with the appliance's default threads (all cores but
             one: 1 on a 2-core box; ``--local-threads`` to change it; 2 OpenMP threads on
             a shared 2-core box spin against the other processes and run several times
             slower);
  (b) dask:  the fits on a real ``distributed.LocalCluster`` of 2 worker processes (one
             thread each) on this box, through the Dask engine (rows scattered to the
             workers, early stopping on the whole validation rows on every worker, the
             best round confirmed on the box).

Both score the same held-out rows (the split is the box's, by construction): their AUC
is printed (target: within 0.005). On a 2-core box this measures the engine's overhead,
not a speed-up: the ratio (b)/(a) is printed, medians of ``--runs`` runs. The cluster is
started once (its start is printed apart, not counted in (b)).

Run: ``.venv/bin/python bench/dask_train.py [--rows N] [--runs K]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--local-threads", type=int, default=0,
                    help="[train] threads for (a); 0: the appliance's default")
    args = ap.parse_args()

    import distributed
    import lightgbm as lgb
    from train import make_frame  # bench/train.py's data set

    from appliance.core import parse
    from appliance.models.dask_engine import DaskEngine
    from appliance.models.train import train

    frame = make_frame(args.rows)
    print(f"data: {frame.height} rows x {frame.width - 1} features (18 numeric, 2 text "
          f"categories), binary target; lightgbm {lgb.__version__}, distributed "
          f"{distributed.__version__}")
    from appliance.models.train import training_threads

    settings = parse({"train": {"threads": args.local_threads, "learning_rate": 0.1},
                      "dask": {"scheduler": "tcp://127.0.0.1:1", "timeout_s": 3600}})
    pipeline = settings.pipeline("bench")
    print(f"local: {training_threads(args.local_threads)} LightGBM thread(s)")

    started = time.perf_counter()
    cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address="127.0.0.1:0",
                                       host="127.0.0.1")
    settings.dask.scheduler = cluster.scheduler_address
    print(f"cluster: {args.workers} worker processes x 1 thread, started in "
          f"{time.perf_counter() - started:.1f}s")
    local_s: list[float] = []
    dask_s: list[float] = []
    try:
        for run in range(args.runs):
            t = time.perf_counter()
            local = train(frame, pipeline, settings.train)
            local_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            engine = DaskEngine(settings.dask)
            try:
                remote = train(frame, pipeline, settings.train, engine=engine)
            finally:
                engine.close()
            dask_s.append(time.perf_counter() - t)
            assert local.valid_frame.height == remote.valid_frame.height
            print(f"run {run + 1}: local {local_s[-1]:.1f}s ({local.best_iteration} rounds, "
                  f"AUC {local.metrics['auc']:.4f}), dask {dask_s[-1]:.1f}s "
                  f"({remote.best_iteration} rounds, AUC {remote.metrics['auc']:.4f})",
                  flush=True)
    finally:
        cluster.close()
    lm, dm = statistics.median(local_s), statistics.median(dask_s)
    gap = abs(local.metrics["auc"] - remote.metrics["auc"])
    kind = f"medians of {args.runs} runs" if args.runs > 1 else "single run"
    print(f"local (a): {lm:.1f}s  dask (b): {dm:.1f}s  ({kind}, {local.train_rows} train "
          f"rows, {local.valid_rows} held-out rows)")
    print(f"ratio dask/local: {dm / lm:.2f}x (overhead on one box, not a speed-up)")
    print(f"AUC on the same held-out rows: local {local.metrics['auc']:.4f}, dask "
          f"{remote.metrics['auc']:.4f}, difference {gap:.4f} (target <= 0.005: "
          f"{'met' if gap <= 0.005 else 'NOT met'})")


if __name__ == "__main__":
    main()
