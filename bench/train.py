"""Training: the appliance's whole job against bare ``lightgbm.train``.

One data set of 200,000 rows x 20 features (18 numeric, 2 text categories) and a binary
target, written as a Parquet data set version the way ingestion writes one. With the same
LightGBM parameters, the same split and early stopping:

  (a) floor:     ``lightgbm.train`` on NumPy arrays already in memory (split done
                 beforehand, categories already coded);
  (b) appliance: the whole training job, ``Trainer.train_and_gate``: read the Parquet
                 data set, infer the task, encode, split, train, evaluate against the
                 baseline, write and fsync the version, record it in SQLite, verify its
                 hash, load it and swap it in for serving. Each run is a fresh state
                 directory, in a child process, whose peak RSS is reported.

Run: ``.venv/bin/python bench/train.py [--rows N] [--runs K]``. Prints medians of K runs
and the ratio (b)/(a); the target is <= 1.15x. The box is shared and has few cores, so
read the medians, not single runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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

PIPELINE = "bench"


def make_frame(rows: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    x = rng.normal(size=(rows, 18))
    for i in range(18):
        cols[f"f{i:02d}"] = x[:, i]
    sites = np.array(["north", "south", "east", "west", "hall-7"])
    kinds = np.array([f"type-{k}" for k in range(30)])
    site = rng.integers(0, len(sites), rows)
    kind = rng.integers(0, len(kinds), rows)
    cols["site"] = sites[site]
    cols["kind"] = kinds[kind]
    logit = (x[:, 0] * 1.2 - x[:, 1] + 0.6 * x[:, 2] * x[:, 3] + np.sin(x[:, 4] * 2)
             + 0.8 * (site == 2) - 0.05 * kind + rng.normal(scale=1.0, size=rows))
    cols["target"] = (logit > np.quantile(logit, 0.8)).astype(np.int64)
    return pl.DataFrame(cols)


def seed_state(state_root: Path, parquet: Path, sha: str, rows: int) -> None:
    """A fresh state dir whose pipeline has the data set as version 1, as ingestion leaves
    it (the Parquet file in datasets/ and its rows in SQLite)."""
    from appliance.core import StateDir
    from appliance.store import Store, now_iso

    state = StateDir(state_root)
    state.create()
    folder = state.pipeline_dir(state.datasets, PIPELINE)
    target = folder / "v000001.parquet"
    shutil.copyfile(parquet, target)
    store = Store.open(state.db)
    store.ensure_pipeline(PIPELINE)
    store.record_ingestion(
        pipeline=PIPELINE, file_name="bench.parquet", status="accepted", received_at=now_iso(),
        sha256=sha, size_bytes=parquet.stat().st_size, rows=rows, columns=21,
        dataset=(str(target.relative_to(state_root)), rows, sha),
    )
    store.close()


def _status_mb(field: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's,
    inherited across fork and exec)."""
    return _status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return _status_mb("VmRSS") or 0.0


def job_child(state_root: Path) -> None:
    """(b), in its own process: prints {"seconds", "peak_rss_mb", "rss_before_mb"}."""
    from appliance.core import Settings, StateDir
    from appliance.jobs import Trainer
    from appliance.models import LiveModels, Registry
    from appliance.store import Events, Store

    state = StateDir(state_root)
    store = Store.open(state.db)
    settings = Settings()
    live = LiveModels()
    trainer = Trainer(state, store, Registry(state, store), Events(store), settings, live)
    before = rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    record = trainer.train_and_gate(PIPELINE, "bench")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = peak_rss_mb()
    served = live.get(PIPELINE)
    print(json.dumps({
        "seconds": seconds, "cpu": cpu, "peak_rss_mb": peak, "rss_before_mb": before,
        "version": record.version, "served": served.version if served else None,
        "iterations": served.booster.current_iteration() if served else None,
        "metrics": record.metrics,
    }))
    trainer.shutdown()


def floor_child(work: Path) -> None:
    """(a), in its own process: the arrays are loaded first, then only LightGBM is timed."""
    import lightgbm as lgb

    from appliance.core import Settings

    ts = Settings().train
    arrays = np.load(work / "floor.npz")
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_valid, y_valid = arrays["x_valid"], arrays["y_valid"]
    info = json.loads((work / "floor.json").read_text())
    before = rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    train_set = lgb.Dataset(x_train, y_train, categorical_feature=info["categorical"],
                            free_raw_data=True)
    valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set)
    booster = lgb.train(
        info["params"], train_set, num_boost_round=ts.num_boost_round, valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(ts.early_stopping_rounds, verbose=False)],
    )
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_rss_mb": peak_rss_mb(),
                      "rss_before_mb": before,
                      "iterations": booster.best_iteration}))


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"{args[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--floor", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        job_child(Path(args.job))
        return
    if args.floor:
        floor_child(Path(args.floor))
        return

    from appliance.core import PipelineSettings, Settings
    from appliance.features import build_spec, encode_target, infer_task, to_matrix
    from appliance.models import sha256_file
    from appliance.models.train import base_params, split

    settings = Settings()
    ts = settings.train
    frame = make_frame(args.rows)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        parquet = work / "data.parquet"
        frame.write_parquet(parquet)
        sha = sha256_file(parquet)

        # The floor's inputs: the same encoding and split as the appliance, made beforehand.
        ps = PipelineSettings()
        task, _ = infer_task(frame.get_column("target"))
        spec = build_spec(frame, ps, task)
        train_df, valid_df = split(frame, ps, ts.validation_fraction, ts.seed, task)
        x_train, x_valid = to_matrix(train_df, spec), to_matrix(valid_df, spec)
        y_train = encode_target(train_df.get_column("target"), spec)
        y_valid = encode_target(valid_df.get_column("target"), spec)
        params = base_params(task, spec, ts, len(y_train))
        np.savez(work / "floor.npz", x_train=x_train, y_train=y_train, x_valid=x_valid,
                 y_valid=y_valid)
        (work / "floor.json").write_text(json.dumps(
            {"params": params, "categorical": spec.categorical_indices}))
        del train_df, valid_df, x_train, x_valid

        floors, jobs, floor_info, job_info = [], [], [], []
        for run in range(args.runs):
            f = child("--floor", str(work))
            floors.append(f["seconds"])
            floor_info.append(f)
            state_root = work / f"state-{run}"
            seed_state(state_root, parquet, sha, frame.height)
            info = child("--job", str(state_root))
            jobs.append(info["seconds"])
            job_info.append(info)
            shutil.rmtree(state_root, ignore_errors=True)
            print(f"run {run + 1}: floor {f['seconds']:.2f}s ({f['iterations']} rounds, "
                  f"peak RSS {f['peak_rss_mb']:.0f} MB)   appliance {info['seconds']:.2f}s "
                  f"({info['iterations']} rounds, v{info['version']} served="
                  f"{info['served']}, peak RSS {info['peak_rss_mb']:.0f} MB)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    floor_med, job_med = statistics.median(floors), statistics.median(jobs)
    floor_cpu = statistics.median(i["cpu"] for i in floor_info)
    job_cpu = statistics.median(i["cpu"] for i in job_info)
    peak = max(i["peak_rss_mb"] for i in job_info)
    floor_peak = max(i["peak_rss_mb"] for i in floor_info)
    job_before = statistics.median(i["rss_before_mb"] for i in job_info)
    floor_before = statistics.median(i["rss_before_mb"] for i in floor_info)
    data_mb = args.rows * 20 * 8 / 1e6
    print()
    print(f"rows={args.rows} features=20 threads={params['num_threads']} "
          f"cores={os.cpu_count()} load={os.getloadavg()[0]:.2f}")
    print(f"(a) floor lightgbm.train, arrays in memory : median {floor_med:.2f}s wall, "
          f"{floor_cpu:.2f}s CPU")
    print(f"(b) appliance job, Parquet -> served model : median {job_med:.2f}s wall, "
          f"{job_cpu:.2f}s CPU")
    print(f"ratio (b)/(a) = {job_med / floor_med:.3f} wall, {job_cpu / floor_cpu:.3f} CPU "
          "(target <= 1.15; CPU time is the steadier figure on a shared box)")
    print(f"peak RSS: (b) {peak:.0f} MB ({job_before:.0f} MB before the job: the process "
          f"with its imports); (a) {floor_peak:.0f} MB ({floor_before:.0f} MB with its "
          f"arrays loaded). The float64 feature matrix is {data_mb:.0f} MB.")
    print(f"(b) validation metrics: {job_info[-1]['metrics']}")


if __name__ == "__main__":
    main()
