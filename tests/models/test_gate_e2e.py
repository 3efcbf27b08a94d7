"""The gate with the real daemon: files dropped in the inbox, trained, judged and served.

A batch with shuffled labels and one with inverted labels never replace a good model (it
keeps serving); a truly better one does; multiclass and regression too. The backtest
(`?compare=true`, `appliance models NAME --compare`) scores every version on the same
newest rows."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
from click.testing import CliRunner

from appliance.cli import cli
from tests.conftest import FAST_CONFIG, SAMPLES, drop
from tests.models.test_models_http import predict, wait_version

# The gate alone: a batch whose labels look suspect is not held here, so that it trains and
# meets the gate (tests/jobs/test_suspect_batches.py holds such batches before training).
CONFIG = FAST_CONFIG + """
[pipelines.machines.retrain]
hold_suspect = false

[pipelines.grades]
target = "grade"
[pipelines.grades.retrain]
hold_suspect = false

[pipelines.energy]
target = "load_kw"
timestamp = "ts"
[pipelines.energy.retrain]
hold_suspect = false
"""


def later(frame: pl.DataFrame, days: int, tag: str) -> pl.DataFrame:
    """The same readings as if taken ``days`` later, with ids of their own."""
    return frame.with_columns(pl.col("timestamp") + timedelta(days=days),
                              pl.col("reading_id") + tag)


def grades(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    k = np.digitize(x[:, 0] + 0.5 * x[:, 1] + rng.normal(0, 0.4, n), [-0.6, 0.6])
    return pl.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2],
                         "site": np.array(["north", "south", "east"])[rng.integers(0, 3, n)],
                         "grade": np.array(["low", "mid", "high"])[k]})


def energy(n: int, seed: int, day: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    minutes = np.sort(rng.integers(0, 60 * 24 * 10, n))
    start = np.datetime64("2026-01-01T00:00") + np.timedelta64(day, "D")
    load = 10 + 3 * np.sin(2 * x[:, 0]) + 2 * x[:, 1] * x[:, 2] + rng.normal(0, 0.5, n)
    return pl.DataFrame({"ts": (start + minutes.astype("timedelta64[m]")).astype("M8[us]"),
                         "x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "x3": x[:, 3],
                         "load_kw": load})


def written(tmp: Path, frame: pl.DataFrame, name: str) -> Path:
    path = tmp / name
    frame.write_parquet(path)
    return path


def test_bad_batches_never_replace_a_good_model_and_a_better_one_does(state_root,
                                                                        start_daemon,
                                                                        tmp_path):
    (state_root / "appliance.toml").write_text(CONFIG)
    daemon = start_daemon(state_root)
    drop(state_root, "machines", SAMPLES / "machines_01.csv")
    drop(state_root, "grades", written(tmp_path, grades(2000, 1), "grades_1.parquet"))
    drop(state_root, "energy", written(tmp_path, energy(600, 1, 0), "energy_1.parquet"))
    for pipeline in ("machines", "grades", "energy"):
        assert wait_version(daemon, pipeline, 1)["stage"] == "production"

    batch = pl.read_csv(SAMPLES / "machines_02.csv", try_parse_dates=True)
    shuffled = later(batch, 30, "-s").with_columns(pl.col("failed_within_24h").shuffle(seed=1))
    inverted = later(batch, 60, "-i").with_columns(
        (1 - pl.col("failed_within_24h")).alias("failed_within_24h"))
    drop(state_root, "machines", written(tmp_path, shuffled, "shuffled.parquet"))
    drop(state_root, "grades", written(tmp_path, grades(2000, 2).with_columns(
        pl.col("grade").replace_strict({"low": "mid", "mid": "high", "high": "low"})),
        "grades_swapped.parquet"))
    drop(state_root, "energy", written(tmp_path, energy(4000, 2, 10), "energy_2.parquet"))
    v2 = wait_version(daemon, "machines", 2)
    assert v2["stage"] == "rejected", v2["decision"]
    drop(state_root, "machines", written(tmp_path, inverted, "inverted.parquet"))
    v3 = wait_version(daemon, "machines", 3)
    assert v3["stage"] == "rejected", v3["decision"]

    # Every verdict keeps all its numbers: both sets of rows, every test.
    for v in (v2, v3):
        gate = v["lineage"]["gate"]
        assert set(gate["tests"]) == {"champion", "baseline", "champion_rows"}
        assert gate["tests"]["champion_rows"]["rows"] == 600  # v1's held-out rows
        assert v["decision"].startswith("vs production v1: auc ")
        assert "vs the baseline 0.5000" in v["decision"] and "On v1's 600 held-out rows" in \
            v["decision"]
    # The inverted batch makes v1 look terrible on the new rows; that is not enough.
    assert v3["lineage"]["gate"]["tests"]["champion"]["reference"] < 0.5
    assert not v3["lineage"]["gate"]["tests"]["baseline"]["passed"]

    rows = pl.read_csv(SAMPLES / "machines_02.csv").head(20).drop(
        "failed_within_24h").to_dicts()
    assert predict(daemon, "machines", rows)["model_version"] == 1  # the good model serves
    events = daemon.get("/v1/events", params={"pipeline": "machines"}).json()["events"]
    refused = [e for e in events if e["kind"] == "not_promoted"]
    assert {e["details"]["version"] for e in refused} == {2, 3}
    assert all(e["message"].startswith(f"v{e['details']['version']}: vs production v1: ")
               and e["details"]["gate"]["tests"]["champion_rows"]["z"] is not None
               for e in refused)

    # Multiclass: classes swapped upstream, not served. Regression: ten times the data,
    # truly better, served; its promoted event carries the numbers.
    g2 = wait_version(daemon, "grades", 2)
    assert g2["stage"] == "rejected" and g2["lineage"]["gate"]["metric"] == "log_loss"
    e2 = wait_version(daemon, "energy", 2)
    assert e2["stage"] == "production", e2["decision"]
    assert e2["lineage"]["gate"]["tests"]["champion"]["z"] > 2
    promoted = [e for e in daemon.get("/v1/events", params={"pipeline": "energy"}).json()[
        "events"] if e["kind"] == "promoted" and e["details"]["version"] == 2]
    assert promoted[0]["details"]["gate"]["tests"]["baseline"]["passed"]

    # The backtest: every version on the same rows, v3's held-out rows (the newest).
    plain = daemon.get("/v1/pipelines/machines/models").json()
    assert plain["comparison"] is None  # unchanged unless asked
    c = daemon.get("/v1/pipelines/machines/models", params={"compare": "true"}).json()[
        "comparison"]
    assert c["rows_from_version"] == 3 and c["rows"] == 1200 and c["metric"] == "auc"
    assert c["production_version"] == 1 and c["baseline"]["auc"] == 0.5
    scores = {s["version"]: s for s in c["scores"]}
    assert [s["version"] for s in c["scores"]] == [3, 2, 1]
    assert scores[3]["value"] == v3["metrics"]["auc"]  # its own rows are these rows
    assert scores[1]["value"] < 0.5 and scores[1]["vs_production"] is None
    assert scores[3]["vs_production"] > 0 and scores[3]["standard_error"] > 0
    assert scores[2]["stage"] == "rejected" and scores[1]["stage"] == "production"
    out = CliRunner().invoke(cli, ["models", "machines", "--compare",
                                   "--state-dir", str(state_root)])
    assert out.exit_code == 0, out.output
    assert "every version on v3's 1200 held-out rows (the newest data" in out.output
    assert "v1    production" in out.output and " vs v1" in out.output
    assert daemon.get("/v1/pipelines/machines/models",
                      params={"compare": "maybe"}).status_code == 400
