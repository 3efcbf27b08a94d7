"""Generate the sample data: sensor readings of factory machines and whether each machine
failed within the next 24 hours. Seeded, so the files are the same on every run.

    python sample_data/generate.py            # writes the CSVs beside this script

Files:
  machines_01.csv          3,000 readings, the first batch: version 1 learns from it
  machines_02.csv          1,500 later readings from the same process
  machines_03_drifted.csv  1,500 readings after a heat wave and a change of lubricant:
                           temperature runs hotter, vibration shifts, failures rise (most
                           where vibration is high: what failure follows has changed too)
  machines_broken.csv      a file exported without the target column: refused
  machine_info.csv         the feature set `machine_info`: each machine's install year,
                           rated speed and firmware, with its history (firmware updates in
                           mid January); the pipeline joins it as of each reading's time
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
TYPES = ["press", "lathe", "mill", "pump"]
SITES = ["north", "south", "east"]


def readings(n: int, start: datetime, seed: int, drift: bool = False) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    machine = rng.integers(1, 121, n)
    mtype = np.array(TYPES)[machine % len(TYPES)]
    site = np.array(SITES)[(machine // 7) % len(SITES)]
    minutes = np.sort(rng.integers(0, 60 * 24 * 30, n))
    ts = [start + timedelta(minutes=int(m)) for m in minutes]
    hours = rng.gamma(2.0, 180.0, n)  # since last service
    base_temp = {"press": 62.0, "lathe": 55.0, "mill": 58.0, "pump": 48.0}
    temp = np.array([base_temp[t] for t in mtype]) + rng.normal(0, 6, n) + hours / 150
    vib = rng.lognormal(mean=0.2, sigma=0.35, size=n) + hours / 900
    pressure = rng.normal(6.0, 0.8, n)
    rpm = rng.normal(1500, 220, n).round()
    humidity = rng.uniform(20, 80, n)
    if drift:
        temp = temp + 9.0 + rng.normal(0, 3, n)
        vib = vib * 1.6
        humidity = humidity + 12
    logit = (
        -7.2
        + 0.075 * (temp - 55)
        + 1.9 * (vib - 1.3)
        + 0.004 * hours
        + 0.9 * (mtype == "press")
        - 0.6 * (mtype == "pump")
        + 0.45 * (np.abs(pressure - 6.0) > 1.4)
        + 0.35 * (site == "south")
    )
    if drift:
        # The new lubricant: a machine that vibrates hard now fails much more often, so a
        # model retrained on this batch is clearly better on it than the old one.
        logit = logit + 1.6 * (vib > 2.4)
    p = 1 / (1 + np.exp(-logit))
    failed = (rng.uniform(size=n) < p).astype(np.int64)
    humidity_col = np.where(rng.uniform(size=n) < 0.05, np.nan, humidity.round(1))
    return pl.DataFrame({
        "reading_id": [f"R{seed:02d}-{i:06d}" for i in range(n)],
        "timestamp": ts,
        "machine_id": [f"M-{m:03d}" for m in machine],
        "machine_type": mtype,
        "site": site,
        "temperature_c": temp.round(2),
        "vibration_mm_s": vib.round(3),
        "pressure_bar": pressure.round(3),
        "rpm": rpm.astype(np.int64),
        "humidity_pct": humidity_col,
        "hours_since_service": hours.round(1),
        "failed_within_24h": failed,
    }).with_columns(pl.col("humidity_pct").fill_nan(None))


def machine_info(seed: int = 5) -> pl.DataFrame:
    """Machine metadata keyed by machine_id, with history: every machine as installed, and a
    firmware update with a re-rated speed for a third of them on 2026-01-15."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in range(1, 121):
        mtype = TYPES[m % len(TYPES)]
        rated = {"press": 1400, "lathe": 1600, "mill": 1500, "pump": 1700}[mtype]
        rows.append({"machine_id": f"M-{m:03d}", "updated_at": datetime(2025, 12, 1),
                     "install_year": int(rng.integers(2008, 2025)),
                     "rated_rpm": rated, "firmware": "v4.2"})
        if m % 3 == 0:
            rows.append({"machine_id": f"M-{m:03d}", "updated_at": datetime(2026, 1, 15),
                         "install_year": rows[-1]["install_year"],
                         "rated_rpm": rated + 100, "firmware": "v5.0"})
    return pl.DataFrame(rows)


def main(out: Path = HERE) -> None:
    start = datetime(2026, 1, 1)
    readings(3000, start, seed=1).write_csv(out / "machines_01.csv")
    readings(1500, start + timedelta(days=30), seed=2).write_csv(out / "machines_02.csv")
    readings(1500, start + timedelta(days=60), seed=3, drift=True).write_csv(
        out / "machines_03_drifted.csv"
    )
    readings(200, start + timedelta(days=90), seed=4).drop("failed_within_24h").write_csv(
        out / "machines_broken.csv"
    )
    machine_info().write_csv(out / "machine_info.csv")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
