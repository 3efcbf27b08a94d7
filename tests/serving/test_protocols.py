"""The Open Inference Protocol V2 and MLflow's scoring protocol, over real HTTP against the
real daemon, with real clients (tritonclient, pandas' JSON): the same answers as the predict
route for binary, multiclass and regression models with categorical and missing values;
every refusal of predict has its counterpart on both; the auth, the metrics and the
prediction log are the predict route's."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import polars as pl
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import DaemonProcess, drop, wait_for
from tests.monitoring.prometheus_conventions import naming_problems

CONFIG = """
[ingest]
settle_seconds = 0.2
rescan_seconds = 1.0

[server]
log_sample_rate = 1.0

[pipelines.bin]
target = "y"
[pipelines.multi]
target = "y"
[pipelines.reg]
target = "y"
"""

FEATURES = ["temp", "count", "site", "ok", "day"]


def _frame(task: str, n: int = 600, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    temp = rng.normal(50, 10, n)
    count = rng.integers(0, 100, n)
    site = rng.choice(["north", "south", "east"], n)
    ok = rng.random(n) < 0.5
    score = (temp - 50) / 10 + (site == "north") * 1.5 - ok * 1.0 + count / 50
    if task == "bin":
        y = (score + rng.normal(0, 0.5, n) > 0.5).astype(int)
    elif task == "multi":
        y = np.where(score < 0, "low", np.where(score < 1.5, "mid", "high"))
    else:
        y = score * 3 + rng.normal(0, 0.3, n)
    temp = np.where(rng.random(n) < 0.1, np.nan, temp)  # missing values
    df = pl.DataFrame({"temp": temp, "count": count, "site": site, "ok": ok,
                       "day": pl.date_range(pl.date(2026, 1, 1), pl.date(2026, 1, 1) +
                                            pl.duration(days=n - 1), eager=True), "y": y})
    return df.with_columns(pl.col("temp").fill_nan(None),
                           pl.when(pl.int_range(n) % 7 == 0).then(None)
                           .otherwise(pl.col("site")).alias("site"))


def _rows() -> list[dict]:
    """Rows with every kind of value: missing numbers, missing and unseen categories."""
    df = _frame("bin", n=12, seed=11).drop("y")
    rows = df.with_columns(pl.col("day").cast(pl.String)).to_dicts()
    rows[1]["temp"] = None
    rows[2]["site"] = None
    rows[3]["site"] = "west"  # never seen in training: missing
    rows[4]["ok"] = None
    return rows


ROWS = _rows()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("protocols") / "state"
    root.mkdir()
    (root / "appliance.toml").write_text(CONFIG)
    d = DaemonProcess(root, [])
    try:
        for task in ("bin", "multi", "reg"):
            src = root.parent / f"{task}.csv"
            _frame(task).write_csv(src)
            drop(root, task, src)
        for task in ("bin", "multi", "reg"):
            d.wait_ready_model(task, 1)
        yield d
    finally:
        d.stop()


def _predict(d: DaemonProcess, name: str, rows: list[dict]) -> dict:
    r = d.post(f"/v1/pipelines/{name}/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    return r.json()


def _columns(rows: list[dict]) -> dict[str, list]:
    return {c: [r[c] for r in rows] for c in FEATURES}


def _oip_body(rows: list[dict], nested: bool = False) -> dict:
    types = {"temp": "FP64", "count": "INT64", "site": "BYTES", "ok": "BOOL", "day": "BYTES"}
    inputs = []
    for c, values in _columns(rows).items():
        shape = [len(values), 1] if nested else [len(values)]
        data = [[v] for v in values] if nested else values
        inputs.append({"name": c, "shape": shape, "datatype": types[c], "data": data})
    return {"inputs": inputs}


def _from_oip(task: str, body: dict) -> list:
    outs = {o["name"]: o for o in body["outputs"]}
    if task == "multi":
        k = outs["probabilities"]["shape"][1]
        probs = outs["probabilities"]["data"]
        return [(label, probs[i * k:(i + 1) * k]) for i, label in
                enumerate(outs["label"]["data"])]
    return outs["probability" if task == "bin" else "value"]["data"]


def _from_predict(task: str, preds: list) -> list:
    if task == "multi":
        return [(p["class"], list(p["probabilities"].values())) for p in preds]
    return preds


@pytest.mark.parametrize("task", ["bin", "multi", "reg"])
def test_the_three_routes_give_the_predict_routes_numbers(daemon, task):
    expected = _predict(daemon, task, ROWS)
    want = _from_predict(task, expected["predictions"])
    one = _predict(daemon, task, ROWS[:1])
    for nested in (False, True):
        r = daemon.post(f"/v2/models/{task}/infer", json=_oip_body(ROWS, nested))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == task and body["model_version"] == "1"
        assert _from_oip(task, body) == want
        assert len({*body["outputs"][-1]["data"]}) == len(ROWS)  # fresh prediction ids
    single = daemon.post(f"/v2/models/{task}/versions/1/infer", json=_oip_body(ROWS[:1]))
    assert _from_oip(task, single.json()) == _from_predict(task, one["predictions"])

    # MLflow: what pandas writes (NaN as null), its records, instances, inputs, and CSV.
    frame = pd.DataFrame(ROWS)
    split = '{"dataframe_split": ' + frame.to_json(orient="split") + "}"
    bodies = [
        {"content": split.encode(), "headers": {"content-type": "application/json"}},
        {"json": {"dataframe_records": ROWS}},
        {"json": {"dataframe_split": {"columns": FEATURES,
                                      "data": [[r[c] for c in FEATURES] for r in ROWS]}}},
        {"json": {"instances": ROWS}},
        {"json": {"inputs": _columns(ROWS)}},
        {"content": frame.to_csv(index=False).encode(),
         "headers": {"content-type": "text/csv"}},
    ]
    for kw in bodies:
        for path in ("/invocations?pipeline=" + task, f"/v1/pipelines/{task}/invocations"):
            r = daemon.http.post(path, **kw)
            assert r.status_code == 200, (kw, r.text)
            got = r.json()
            assert got["model_version"] == 1
            assert _from_predict(task, got["predictions"]) == want, kw


def test_tritonclient_metadata_and_infer_in_json_and_binary(daemon):
    client = triton.InferenceServerClient(daemon.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("bin") and client.is_model_ready("bin", "1")
        meta = client.get_model_metadata("bin")
        assert meta["versions"] == ["1"]
        assert {(i["name"], i["datatype"], tuple(i["shape"])) for i in meta["inputs"]} == {
            ("temp", "FP64", (-1,)), ("count", "INT64", (-1,)), ("site", "BYTES", (-1,)),
            ("ok", "BOOL", (-1,)), ("day", "BYTES", (-1,))}
        assert [o["name"] for o in meta["outputs"]] == ["probability", "prediction_id"]
        rows = [r for r in ROWS if r["ok"] is not None]  # a numpy BOOL can't be missing
        want = _predict(daemon, "bin", rows)["predictions"]
        arrays = {
            "temp": np.array([np.nan if r["temp"] is None else r["temp"] for r in rows]),
            "count": np.array([r["count"] for r in rows], dtype=np.int64),
            "site": np.array([(r["site"] or "").encode() for r in rows], dtype=object),
            "ok": np.array([r["ok"] for r in rows], dtype=bool),
            "day": np.array([r["day"].encode() for r in rows], dtype=object),
        }
        for binary in (False, True):
            inputs = []
            for name, arr in arrays.items():
                dtype = {"f": "FP64", "i": "INT64", "O": "BYTES", "b": "BOOL"}[arr.dtype.kind]
                inp = triton.InferInput(name, [len(rows), 1], dtype)
                inp.set_data_from_numpy(arr.reshape(-1, 1), binary_data=binary)
                inputs.append(inp)
            result = client.infer("bin", inputs, model_version="1",
                                  outputs=[triton.InferRequestedOutput("probability",
                                                                       binary_data=False)])
            assert result.as_numpy("probability").tolist() == want
            assert result.get_response()["model_version"] == "1"
        with pytest.raises(InferenceServerException, match=r"no version"):
            client.infer("bin", inputs, model_version="7")
    finally:
        client.close()


# (case, predict request, OIP request, MLflow request, status, words)
def _refusals() -> list[tuple]:
    row = ROWS[0]
    bad = {**row, "temp": "hot"}
    no_site = {k: v for k, v in row.items() if k != "site"}
    big = [row] * 60_000  # over server.max_body_bytes in every shape, columns too
    return [
        ("value of the wrong type", {"json": {"rows": [row, bad]}},
         {"json": _oip_body([row, bad])}, {"json": {"dataframe_records": [row, bad]}},
         422, ["row 1", "`temp`"]),
        ("missing column", {"json": {"rows": [no_site]}},
         {"json": {"inputs": [i for i in _oip_body([row])["inputs"] if i["name"] != "site"]}},
         {"json": {"dataframe_records": [no_site]}}, 422, ["`site`"]),
        ("infinity", {"content": json.dumps({"rows": [{**row, "temp": 1.5}]})
                      .replace("1.5", "1e400"), "headers": {"content-type": "application/json"}},
         {"content": json.dumps(_oip_body([{**row, "temp": 1.5}])).replace("1.5", "Infinity"),
          "headers": {"content-type": "application/json"}},
         {"content": json.dumps({"dataframe_records": [{**row, "temp": 1.5}]})
          .replace("1.5", "Infinity"), "headers": {"content-type": "application/json"}},
         # predict: 400 (its JSON parser refuses it); here a number the column refuses
         422, ["`temp`", "finite number"]),
        ("empty batch", {"json": {"rows": []}}, {"json": _oip_body([])},
         {"json": {"dataframe_records": []}}, 422, ["empty"]),
        ("not JSON", {"content": b'{"rows": [', "headers": {"content-type": "application/json"}},
         {"content": b'{"inputs": [', "headers": {"content-type": "application/json"}},
         {"content": b'{"dataframe_records": [', "headers": {
             "content-type": "application/json"}}, 400, ["not valid JSON"]),
        ("text/plain", {"content": b"{}", "headers": {"content-type": "text/plain"}},
         {"content": b"{}", "headers": {"content-type": "text/plain"}},
         {"content": b"{}", "headers": {"content-type": "text/plain"}}, 415, ["text/plain"]),
        ("body over the limit", {"json": {"rows": big}}, {"json": _oip_body(big)},
         {"json": {"dataframe_records": big}}, 413, ["server.max_body_bytes"]),
        ("string too long", {"json": {"rows": [{**row, "site": "x" * 2000}]}},
         {"json": _oip_body([{**row, "site": "x" * 2000}])},
         {"json": {"dataframe_records": [{**row, "site": "x" * 2000}]}}, 422,
         ["`site`", "server.max_string_chars"]),
    ]


@pytest.mark.parametrize("case", _refusals(), ids=lambda c: c[0])
def test_every_refusal_of_predict_has_its_counterpart(daemon, case):
    _, predict_kw, oip_kw, mlflow_kw, status, words = case
    ref = daemon.http.post("/v1/pipelines/bin/predict", **predict_kw)
    assert 400 <= ref.status_code < 500
    for path, kw in (("/v2/models/bin/infer", oip_kw), ("/invocations?pipeline=bin", mlflow_kw)):
        r = daemon.http.post(path, **kw)
        body = r.json()
        assert r.status_code == status, (path, r.text)
        assert body["error"] == body["message"], body
        for w in words:
            assert w in body["message"], (path, w, body)
        if path == "/invocations?pipeline=bin":
            assert body["error_code"]


def test_which_pipeline_and_which_version(daemon):
    r = daemon.post("/invocations", json={"dataframe_records": ROWS[:1]})
    assert r.status_code == 400 and "pipeline=NAME" in r.json()["message"]
    assert daemon.post("/invocations?pipeline=nope",
                       json={"dataframe_records": ROWS[:1]}).status_code == 404
    assert daemon.get("/ping?pipeline=reg").text == "\n"
    assert daemon.get("/version").text.strip()
    r = daemon.post("/v2/models/bin/versions/9/infer", json=_oip_body(ROWS[:1]))
    assert r.status_code == 404 and "version `9`" in r.json()["error"]
    for odd in ("%C2%B2", "v", "99999999999999999999999"):  # a superscript digit, no number
        r = daemon.post(f"/v2/models/bin/versions/{odd}/infer", json=_oip_body(ROWS[:1]))
        assert r.status_code == 404, (odd, r.text)
    assert daemon.post("/v2/models/bin/versions/v1/infer",
                       json=_oip_body(ROWS[:1])).status_code == 200
    assert daemon.get("/v2/models/nope").status_code == 404
    assert daemon.get("/v2").json()["name"] == "appliance"
    assert daemon.get("/v2/health/ready").json() == {"ready": True}
    r = daemon.post("/v2/models/bin/infer", json={**_oip_body(ROWS[:1]),
                                                  "outputs": [{"name": "nope"}]})
    assert r.status_code == 400 and "probability" in r.json()["error"]


def test_calls_are_counted_and_logged_as_predict_calls(daemon):
    def requests() -> int:
        windows = daemon.get("/v1/pipelines/reg/metrics").json()
        return sum(w["requests"] for w in windows["windows"])

    before = requests()
    daemon.post("/v2/models/reg/infer", json=_oip_body(ROWS[:2])).raise_for_status()
    r = daemon.post("/invocations?pipeline=reg", json={"dataframe_records": ROWS[:3]})
    r.raise_for_status()
    ids = r.json()["prediction_ids"]
    wait_for(lambda: requests() >= before + 2, timeout=20, what="the calls to be counted")
    db = Path(daemon.state_root) / "appliance.db"

    def logged() -> int:
        with sqlite3.connect(db) as con:
            marks = ",".join("?" * len(ids))
            return con.execute(f"SELECT count(*) FROM predictions WHERE id IN ({marks}) "
                               "AND inputs IS NOT NULL", ids).fetchone()[0]

    wait_for(lambda: logged() == len(ids), timeout=20, what="the predictions to be logged")
    exposition = daemon.get("/metrics").text
    assert naming_problems(exposition) == []
    counted = {s.labels["pipeline"]: s.value for f in text_string_to_metric_families(exposition)
               if f.name == "appliance_requests" for s in f.samples}
    assert counted["reg"] >= 2


def _reload(d: DaemonProcess, config: str) -> None:
    """Write the config and SIGHUP the daemon; returns once it has applied it."""
    def reloads() -> int:
        events = d.get("/v1/events", params={"limit": 1000}).json()["events"]
        return sum(e["kind"] == "config_reloaded" for e in events)

    before = reloads()
    (d.state_root / "appliance.toml").write_text(config)
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads() > before, timeout=15, what="the config to be reloaded")


def _binary_body(rows: list[dict]) -> tuple[bytes, str]:
    """tritonclient's binary tensor extension, by hand: (body, its JSON part's length)."""
    temp = np.array([np.nan if r["temp"] is None else r["temp"] for r in rows]).tobytes()
    inputs = [{"name": "temp", "shape": [len(rows)], "datatype": "FP64",
               "parameters": {"binary_data_size": len(temp)}}]
    rest = [{"name": c, "shape": [len(rows)], "datatype": t, "data": [r[c] for r in rows]}
            for c, t in (("count", "INT64"), ("site", "BYTES"), ("ok", "BOOL"),
                         ("day", "BYTES"))]
    head = json.dumps({"inputs": inputs + rest}).encode()
    return head + temp, str(len(head))


def test_the_fast_path_answers_exactly_as_the_route(daemon):
    body, head = _binary_body(ROWS)
    cases = [
        ("oip", "/v2/models/multi/infer", {"json": _oip_body(ROWS)}),
        ("oip version", "/v2/models/reg/versions/1/infer", {"json": _oip_body(ROWS[:1])}),
        ("oip binary", "/v2/models/bin/infer", {"content": body, "headers": {
            "inference-header-content-length": head,
            "content-type": "application/octet-stream"}}),
        ("oip NaN", "/v2/models/bin/infer", {
            "content": json.dumps(_oip_body([{**ROWS[0], "temp": 1.5}])).replace("1.5", "NaN"),
            "headers": {"content-type": "application/json"}}),
        ("mlflow", "/invocations?pipeline=multi", {"json": {"dataframe_records": ROWS}}),
        ("mlflow prefix", "/v1/pipelines/bin/invocations", {"json": {"instances": ROWS}}),
        ("mlflow csv", "/invocations?pipeline=reg", {
            "content": pd.DataFrame(ROWS).to_csv(index=False).encode(),
            "headers": {"content-type": "text/csv"}}),
        ("mlflow ambiguous", "/invocations", {"json": {"instances": ROWS}}),
        *[(f"oip {c[0]}", "/v2/models/bin/infer", c[2]) for c in _refusals()],
        *[(f"mlflow {c[0]}", "/invocations?pipeline=bin", c[3]) for c in _refusals()],
    ]

    def answers() -> dict[str, tuple]:
        out = {}
        for case, path, kw in cases:
            r = daemon.http.post(path, **kw)
            got = r.json()
            ids = got.pop("prediction_ids", None) or next(
                (o.pop("data") for o in got.get("outputs", []) if o["name"] == "prediction_id"),
                [])
            assert len(set(ids)) == len(ids)
            headers = {k: v for k, v in r.headers.items() if k != "date"}
            out[case] = (r.status_code, headers, got)
        return out

    fast = answers()
    assert all(fast[c][0] == 200 for c in ("oip", "oip version", "oip binary", "oip NaN",
                                           "mlflow", "mlflow prefix", "mlflow csv")), fast
    _reload(daemon, CONFIG.replace("[server]\n", "[server]\npredict_fast_path = false\n"))
    try:
        route = answers()
    finally:
        _reload(daemon, CONFIG)
    for case in fast:
        assert route[case] == fast[case], case


GATED = CONFIG.replace("[server]\n", "[server]\npredict_token_required = true\n"
                       "read_token_required = true\n")


def test_tokens_probes_and_no_model_as_on_predict(tmp_path, start_daemon):
    """The predict token gates the protocols' predictions; reads need the read token;
    the probes stay open; a pipeline without a model is a 503 with Retry-After."""
    root = tmp_path / "state"
    root.mkdir()
    (root / "appliance.toml").write_text(GATED)
    d = start_daemon(root)
    token = (root / "predict_token").read_text().strip()
    calls = [("/v2/models/bin/infer", {"json": _oip_body(ROWS[:1])}),
             ("/invocations?pipeline=bin", {"json": {"dataframe_records": ROWS[:1]}})]
    for path, kw in calls:
        for auth in (None, "Bearer wrong"):
            headers = {"authorization": auth} if auth else {}
            r = d.http.post(path, headers=headers, **kw)
            assert r.status_code == 401, r.text
            assert "predict_token" in r.json()["error"]
        r = d.http.post(path, headers={"authorization": f"Bearer {token}"}, **kw)
        assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
        assert "no model" in r.json()["error"]
    for path in ("/v2/health/live", "/ping?pipeline=bin", "/v2/health/ready"):
        assert d.get(path).status_code in (200, 503), path  # open: never 401
    for path in ("/v2", "/v2/models/bin", "/version"):
        assert d.get(path).status_code == 401, path
    r = d.get("/v2/models/bin/ready", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 503 and r.json() == {"name": "bin", "ready": False}


def test_hot_swap_under_load_on_both_protocols(daemon):
    """Promotions back and forth while clients call infer and /invocations: no call fails,
    and each answer is its version's (no mix of models within a call)."""
    src = daemon.state_root.parent / "reg2.csv"
    _frame("reg", n=400, seed=99).write_csv(src)
    drop(daemon.state_root, "reg", src)

    def second() -> bool:
        history = daemon.get("/v1/pipelines/reg/jobs").json()["history"]
        return any(j["model_version"] == 2 and j["status"] == "succeeded" for j in history)

    wait_for(second, timeout=90, what="v2 of reg to be trained")
    expected = {}
    for version in (2, 1):
        assert daemon.post(f"/v1/pipelines/reg/models/{version}/promote",
                           admin=True).status_code == 200
        expected[version] = _predict(daemon, "reg", ROWS)["predictions"]
    assert expected[1] != expected[2]
    r = daemon.post("/v2/models/reg/versions/2/infer", json=_oip_body(ROWS))
    assert r.status_code == 409 and "promote 2" in r.json()["error"], r.text

    failures: list[str] = []
    seen: dict[int, int] = {1: 0, 2: 0}
    stop = threading.Event()

    def client(oip: bool) -> None:
        with httpx.Client(base_url=daemon.url, timeout=10) as http:
            while not stop.is_set():
                if oip:
                    r = http.post("/v2/models/reg/infer", json=_oip_body(ROWS))
                else:
                    r = http.post("/invocations?pipeline=reg",
                                  json={"dataframe_records": ROWS})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                body = r.json()
                version = int(body["model_version"])
                got = _from_oip("reg", body) if oip else body["predictions"]
                if got != expected[version]:
                    failures.append(f"v{version} answered {got}")
                seen[version] += 1

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for k in range(10):
            assert daemon.post(f"/v1/pipelines/reg/models/{2 - k % 2}/promote",
                               admin=True).status_code == 200
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        daemon.post("/v1/pipelines/reg/models/1/promote", admin=True)
    assert not failures, failures[:3]
    assert seen[1] > 5 and seen[2] > 5, seen


def test_openapi_declares_the_protocols(daemon):
    spec = daemon.get("/schema/openapi.json").json()
    paths = spec["paths"]
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/{name}",
                 "/v2/models/{name}/versions/{version}", "/v2/models/{name}/ready",
                 "/v2/models/{name}/versions/{version}/ready", "/ping", "/version"):
        assert "400" in paths[path]["get"]["responses"], path
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
                 "/invocations", "/v1/pipelines/{name}/invocations"):
        op = paths[path]["post"]
        assert {"200", "400", "404", "413", "415", "422", "503"} <= set(op["responses"]), path
        assert "Retry-After" in op["responses"]["503"]["headers"], path
        assert op["requestBody"]["required"] is True
        assert op["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ProtocolErrorBody"}
    assert "text/csv" in paths["/invocations"]["post"]["requestBody"]["content"]
