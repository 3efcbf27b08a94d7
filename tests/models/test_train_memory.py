"""A data window too large for the box's memory trains on its newest rows that fit, and
says so, rather than having the daemon killed in the middle of the training."""

from __future__ import annotations

import pytest

from appliance.models.memory import MiB, bytes_per_row, rows_that_fit
from tests.conftest import binary_csv, drop, wait_for

SCHEMA = {"f0": "Float64", "f1": "Int64", "kind": "String", "ok": "Boolean",
          "when": "Datetime(time_unit='us', time_zone=None)", "target": "Int64"}


def test_the_estimate_per_row():
    # frame: 8 + 8 + 32 + 1 + 8 + 8; training: three 8-byte values per column
    assert bytes_per_row(SCHEMA) == 65 + 3 * 8 * 6


def test_rows_that_fit_a_limit():
    per_row = bytes_per_row(SCHEMA)
    assert rows_that_fit(SCHEMA, 1000, 1)[0] is None            # 1000 rows: well under 1 MB
    cap, numbers = rows_that_fit(SCHEMA, 100_000, 1)
    assert cap == MiB // per_row and numbers["budget"] == "train.memory_limit_mb"
    assert numbers["estimated_mb"] == pytest.approx(100_000 * per_row / MiB, abs=0.1)
    assert rows_that_fit(None, 100_000, 1) == (None, {})
    auto, numbers = rows_that_fit(SCHEMA, 1000, 0)               # 80% of what is available
    assert auto is None and numbers["budget"].startswith("80%")


@pytest.mark.timeout(120)
def test_a_window_over_the_memory_limit_trains_on_its_newest_rows(state_root, start_daemon,
                                                                   tmp_path):
    (state_root / "appliance.toml").write_text(
        "[ingest]\nsettle_seconds = 0.2\n[train]\nnum_boost_round = 30\nthreads = 1\n"
        "memory_limit_mb = 1\n[pipelines.big]\ntarget = \"target\"\n")
    n = 12_000
    data = binary_csv(tmp_path / "big.csv", n, 5, seed=2)
    daemon = start_daemon(state_root)
    drop(state_root, "big", data)
    daemon.wait_ready_model("big", 1, timeout=90)
    per_row = 6 * 8 + 3 * 8 * 6
    cap = MiB // per_row
    event = next(e for e in daemon.get("/v1/events?pipeline=big").json()["events"]
                 if e["kind"] == "training_memory_capped")
    assert event["level"] == "warning"
    assert f"training on the newest {cap:,} of {n:,} rows" in event["message"]
    assert "train.memory_limit_mb" in event["message"]
    model = wait_for(lambda: daemon.get("/v1/pipelines/big/models").json()["models"][0],
                     what="the model")
    assert model["lineage"]["rows"] == cap
    assert model["lineage"]["window"]["memory"]["kept_rows"] == cap
    assert model["lineage"]["window"]["available_rows"] == n
