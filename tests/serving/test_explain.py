"""Explanations over real HTTP against the real daemon serving the sample pipeline with its
feature store (machine metadata joined by key, one derived feature): `"explain": k` on the
predict route (test_serve.py compares the fast path and the route), its refusals,
`appliance predict --explain`, and the newest logged prediction explained (what the
console shows)."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from click.testing import CliRunner

from appliance.cli import cli
from tests.conftest import SAMPLES, DaemonProcess, drop, wait_for

PREDICT = "/v1/pipelines/machines/predict"
LATEST = "/v1/pipelines/machines/explanations/latest"
CONFIG = """
[ingest]
settle_seconds = 0.2
rescan_seconds = 1.0

[server]
log_sample_rate = 1.0

[pipelines.machines]
target = "failed_within_24h"
timestamp = "timestamp"
id = "reading_id"
join = ["machine_info"]

[pipelines.machines.derived]
rpm_load = "rpm / rated_rpm"

[feature_sets.machine_info]
key = "machine_id"
timestamp = "updated_at"
"""
SENT = ["machine_id", "machine_type", "site", "temperature_c", "vibration_mm_s",
        "pressure_bar", "rpm", "humidity_pct", "hours_since_service"]
JOINED = ["install_year", "rated_rpm", "firmware"]
# Rows as a caller sends them: the sensors and the machine's key, its metadata left to the
# online store.
ROWS = pl.read_csv(SAMPLES / "machines_02.csv").head(30).select(SENT).to_dicts()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("explain") / "state"
    root.mkdir()
    (root / "appliance.toml").write_text(CONFIG)
    daemon = DaemonProcess(root, [])
    try:
        drop(root, "machine_info", SAMPLES / "machine_info.csv")
        wait_for(lambda: daemon.get("/v1/feature-sets/machine_info").json().get("keys"),
                 timeout=30, what="the online store")
        drop(root, "machines", SAMPLES / "machines_01.csv")
        daemon.wait_ready_model("machines", 1)
        yield daemon
    finally:
        daemon.stop()


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _check(rows: list[dict], answer: dict, plain: dict, k: int) -> None:
    """The explained answer: the same predictions, and per row an explanation whose base
    value plus contributions is the raw score behind the probability answered."""
    assert answer["predictions"] == plain["predictions"]
    assert len(answer["explanations"]) == len(rows)
    for row, p, (e,) in zip(rows, answer["predictions"], answer["explanations"], strict=True):
        assert "class" not in e  # binary: one explanation, of the positive class' log-odds
        contributions = e["contributions"]
        assert len(contributions) == min(k, len(SENT) + len(JOINED) + 1)
        magnitudes = [abs(c["contribution"]) for c in contributions]
        assert magnitudes == sorted(magnitudes, reverse=True)
        total = e["base_value"] + math.fsum(c["contribution"] for c in contributions)
        assert abs(total + e["others"] - e["raw_score"]) <= 1e-9
        if k >= 100:
            assert e["others"] == 0.0 and abs(total - e["raw_score"]) <= 1e-9
        assert _sigmoid(e["raw_score"]) == pytest.approx(p, rel=1e-9, abs=1e-12)
        for c in contributions:
            name = c["feature"]
            if name in JOINED:
                assert (c["source"], c["feature_set"]) == ("joined", "machine_info")
            elif name == "rpm_load":
                assert c["source"] == "derived" and c["value"] == pytest.approx(
                    row["rpm"] / next(x["value"] for x in contributions
                                      if x["feature"] == "rated_rpm"))
            else:
                assert name in SENT and c["source"] == "input" and c["value"] == row[name]


def test_explain_adds_exact_contributions_named_as_the_caller_knows_them(served):
    plain = served.post(PREDICT, json={"rows": ROWS}).json()
    assert "explanations" not in plain  # no explain, nothing more in the answer
    for rows in (ROWS, ROWS[:1]):  # a batch, and one row (LightGBM's single-row C API)
        plain = served.post(PREDICT, json={"rows": rows}).json()
        answer = served.post(PREDICT, json={"rows": rows, "explain": 100}).json()
        _check(rows, answer, plain, 100)
        names = {c["feature"] for c in answer["explanations"][0][0]["contributions"]}
        assert names == set(SENT) | set(JOINED) | {"rpm_load"}
        top = served.post(PREDICT, json={"rows": rows, "explain": 3}).json()
        _check(rows, top, plain, 3)


@pytest.mark.parametrize("explain", [0, -1, True, 1.5, 10_001, [3]])
def test_a_bad_explain_is_refused_naming_the_field(served, explain):
    resp = served.post(PREDICT, json={"rows": ROWS[:1], "explain": explain})
    assert resp.status_code == 400, resp.text
    assert "explain" in resp.json()["message"]


def test_cli_predict_explain(served):
    args = ["predict", "machines", "--json", json.dumps(ROWS[0]), "--state-dir",
            str(served.state_root)]
    out = CliRunner().invoke(cli, [*args, "--explain"])
    assert out.exit_code == 0, out.output
    (e,), = json.loads(out.output)["explanations"]
    assert len(e["contributions"]) == 5  # K defaults to 5
    out = CliRunner().invoke(cli, [*args, "--explain", "2"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.output)["explanations"][0][0]["contributions"]) == 2
    out = CliRunner().invoke(cli, [*args, "--explain", "0"])
    assert out.exit_code != 0 and "--explain" in out.output


def test_the_newest_logged_prediction_is_explained(served):
    answer = served.post(PREDICT, json={"rows": ROWS[7:8]}).json()
    pid = answer["prediction_ids"][0]

    def latest() -> dict | None:
        body = served.get(LATEST, params={"k": 3}).json()
        return body if body.get("prediction_id") == pid else None

    body = wait_for(latest, timeout=15, what="the prediction to be logged")
    assert body["model_version"] == answer["model_version"]
    assert body["prediction"] == answer["predictions"][0] and body["ts"].endswith("Z")
    (e,) = body["explanations"]
    again = served.post(PREDICT, json={"rows": ROWS[7:8], "explain": 3}).json()
    assert e == again["explanations"][0][0]  # the logged inputs explain as the request did
    assert served.get(LATEST, params={"k": 0}).status_code == 400
    assert served.get("/v1/pipelines/nope/explanations/latest").status_code == 404


def test_the_protocols_explain_as_predict_does(served):
    """`explain` as a request parameter of /invocations and of the Open Inference
    Protocol's infer: the predict route's explanations, row for row."""
    columns = served.get("/v2/models/machines").json()["inputs"]
    rows = []
    for row in ROWS[:4]:  # what the metadata lists, a joined column from the online store
        stored = served.get(f"/v1/feature-sets/machine_info/{row['machine_id']}").json()
        rows.append({c["name"]: row.get(c["name"], stored["values"].get(c["name"]))
                     for c in columns})
    want = served.post(PREDICT, json={"rows": rows, "explain": 3}).json()["explanations"]
    mlflow = served.post("/invocations", params={"pipeline": "machines"},
                         json={"dataframe_records": rows, "params": {"explain": 3}})
    assert mlflow.status_code == 200, mlflow.text
    assert mlflow.json()["explanations"] == want
    plain = served.post("/invocations", params={"pipeline": "machines"},
                        json={"dataframe_records": rows}).json()
    assert "explanations" not in plain
    inputs = [{"name": c["name"], "datatype": c["datatype"], "shape": [len(rows)],
               "data": [r[c["name"]] for r in rows]} for c in columns]
    oip = served.post("/v2/models/machines/infer",
                      json={"inputs": inputs, "parameters": {"explain": 3}})
    assert oip.status_code == 200, oip.text
    assert oip.json()["parameters"]["explanations"] == want
    bad = served.post("/v2/models/machines/infer",
                      json={"inputs": inputs, "parameters": {"explain": 0}})
    assert bad.status_code == 400 and "explain" in bad.json()["error"]
