"""Prediction latency while a model retrains.

One run: the appliance daemon serves the sample model; a bounded load (concurrency 4,
single rows) runs first while the box is idle, then while a training job runs on 200,000
rows. Target: p99 during training within 2x of idle, and no failed request. Training runs
under SCHED_IDLE, so under this load it takes longer than on an idle box: the time it took
is printed too.

    python bench/retrain_under_load.py [--seconds 8] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "sample_data"))
from generate import readings  # noqa: E402

ROW = {"timestamp": "2026-03-01T10:00:00", "machine_id": "M-007", "machine_type": "press",
       "site": "south", "temperature_c": 71.5, "vibration_mm_s": 2.9, "pressure_bar": 7.6,
       "rpm": 1480, "humidity_pct": 55.0, "hours_since_service": 820.0}


def load(url: str, body: Path, concurrency: int, seconds: float) -> dict:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/loadgen.py"), url, str(body),
         "--concurrency", str(concurrency), "--seconds", str(seconds)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--plain", action="store_true",
                    help="the sample pipeline without its feature set and derived feature")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-retrain-"))
    state = tmp / "state"
    state.mkdir()
    config = (ROOT / "sample_data/appliance.toml").read_text()
    if args.plain:
        config = config.split("join =")[0]
    (state / "appliance.toml").write_text(config + "\n[ingest]\nsettle_seconds = 0.2\n")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--state-dir", str(state), "--port", "0",
         "--log-level", "warning"], cwd=ROOT,
    )
    try:
        runfile = state / "daemon.json"
        deadline = time.monotonic() + 60
        while not runfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        url = json.loads(runfile.read_text())["url"]
        http = httpx.Client(base_url=url, timeout=30)
        if not args.plain:
            info = state / "inbox/machine_info"  # the feature set the sample pipeline joins
            info.mkdir(parents=True, exist_ok=True)
            (info / "machine_info.csv").write_bytes(
                (ROOT / "sample_data/machine_info.csv").read_bytes())
        inbox = state / "inbox/machines"
        inbox.mkdir(parents=True, exist_ok=True)
        time.sleep(1.0)
        (inbox / "machines_01.csv").write_bytes((ROOT / "sample_data/machines_01.csv").read_bytes())
        while http.get("/ready").json()["models"].get("machines") != 1:
            time.sleep(0.2)
        body = tmp / "row.json"
        body.write_text(json.dumps({"rows": [ROW]}))
        predict = f"{url}/v1/pipelines/machines/predict"
        load(predict, body, args.concurrency, 1.0)  # warm up
        idle = load(predict, body, args.concurrency, args.seconds)

        big = readings(args.rows, datetime(2026, 2, 1), seed=11)
        tmp_csv = inbox / ".big.csv.part"
        big.write_csv(tmp_csv)
        tmp_csv.rename(inbox / "big.csv")

        def status() -> str:
            return http.get("/v1/pipelines/machines").json()["status"]

        deadline = time.monotonic() + 60
        while status() != "training" and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        during: list[float] = []
        failed = requests = 0
        while status() == "training" and time.monotonic() - started < 120:
            chunk = load(predict, body, args.concurrency, 1.0)
            during += chunk["latencies_ms"]
            failed += chunk["failed"]
            requests += chunk["requests"]
        training_s = time.monotonic() - started
        jobs = http.get("/v1/pipelines/machines/jobs").json()["history"]
        p99_idle, p99_train = pct(idle["latencies_ms"], 0.99), pct(during, 0.99)
        print(f"idle:      {idle['requests']} requests, {idle['rps']:.0f} req/s, "
              f"p50 {idle['p50_ms']:.2f} ms, p99 {p99_idle:.2f} ms, failed {idle['failed']}")
        print(f"training:  {requests} requests over {training_s:.1f} s of training on "
              f"{args.rows + 3000} rows, p50 {pct(during, 0.5):.2f} ms, p99 {p99_train:.2f} ms,"
              f" failed {failed}")
        print(f"p99 ratio training/idle: {p99_train / p99_idle:.2f}x (target <= 2x); "
              f"failed requests: {failed + idle['failed']} (target 0)")
        print(f"last job: {jobs[0]['trigger']} {jobs[0]['status']} v{jobs[0]['model_version']}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


if __name__ == "__main__":
    main()
