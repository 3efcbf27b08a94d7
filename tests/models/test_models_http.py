"""Models over real HTTP, with the real daemon: every task end to end, categories as text,
tuning from the command line, rollback, and damaged model files."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
from click.testing import CliRunner

from appliance.cli import cli
from tests.conftest import SAMPLES, drop, wait_for


def wait_version(daemon, pipeline: str, version: int, timeout: float = 90) -> dict:
    """Wait until ``version`` exists and the gate has ruled on it; returns its info."""
    def ruled():
        r = daemon.get(f"/v1/pipelines/{pipeline}/models")
        if r.status_code != 200:
            return None
        found = [m for m in r.json()["models"] if m["version"] == version]
        return found[0] if found and found[0]["stage"] != "candidate" else None
    return wait_for(ruled, timeout=timeout, what=f"{pipeline} v{version} to be ruled on")


def predict(daemon, pipeline: str, rows: list[dict]) -> dict:
    r = daemon.post(f"/v1/pipelines/{pipeline}/predict", json={"rows": rows})
    assert r.status_code == 200, r.text
    return r.json()


def test_categories_as_text_round_trip(state_root, start_daemon, tmp_path):
    (state_root / "appliance.toml").write_text("[ingest]\nsettle_seconds = 0.2\n")
    rng = np.random.default_rng(4)
    n = 1200
    color = rng.choice(["red", "green", "blue"], n)
    size = rng.normal(size=n)
    p = np.where(color == "red", 0.85, 0.1) + 0.05 * (size > 0)
    frame = pl.DataFrame({"color": color, "size": size,
                          "target": np.where(rng.random(n) < p, "yes", "no")})
    path = tmp_path / "colors.csv"
    frame.write_csv(path)
    daemon = start_daemon(state_root)
    drop(state_root, "colors", path)
    daemon.wait_ready_model("colors", 1)

    meta = json.loads((state_root / "models/colors/1/model.json").read_text())
    assert meta["task"] == "binary" and "text with 2" in meta["task_reason"]
    feature = {f["name"]: f for f in meta["spec"]["features"]}["color"]
    assert feature["kind"] == "categorical"
    assert sorted(feature["categories"]) == ["blue", "green", "red"]

    rows = [{"color": c, "size": 0.3} for c in ("red", "blue", "purple", None)]
    out = predict(daemon, "colors", rows)["predictions"]
    assert out[0] > 0.6 > 0.3 > out[1]  # P("yes"): learned from the text categories
    assert out[2] == out[3]  # a category never seen in training is the same as missing
    bad = daemon.post("/v1/pipelines/colors/predict", json={"rows": [{"color": 3, "size": 1}]})
    assert bad.status_code == 422 and "color" in bad.json()["message"]


def test_regression_and_multiclass_end_to_end(state_root, start_daemon, tmp_path):
    (state_root / "appliance.toml").write_text("[ingest]\nsettle_seconds = 0.2\n")
    rng = np.random.default_rng(9)

    def make(n):
        a, b = rng.normal(size=n), rng.normal(size=n)
        kind = rng.choice(["x", "y"], n)
        value = (300 * a - 200 * b + 100 * (kind == "x") + rng.normal(scale=30, size=n))
        species = np.array(["setosa", "versicolor", "virginica"])[
            np.digitize(a + 0.2 * rng.normal(size=n), [-0.6, 0.6])]
        return pl.DataFrame({"a": a, "b": b, "kind": kind,
                             "target": value.round().astype(np.int64), "species": species})

    train, fresh = make(2000), make(300)
    train.drop("species").write_csv(tmp_path / "prices.csv")
    train.drop("target").rename({"species": "target"}).write_csv(tmp_path / "flowers.csv")
    daemon = start_daemon(state_root)
    drop(state_root, "prices", tmp_path / "prices.csv")
    drop(state_root, "flowers", tmp_path / "flowers.csv")
    daemon.wait_ready_model("prices", 1)
    daemon.wait_ready_model("flowers", 1)

    rows = fresh.select("a", "b", "kind").to_dicts()
    prices = predict(daemon, "prices", rows)
    y = fresh["target"].to_numpy()
    p = np.array(prices["predictions"])
    r2 = 1 - np.sum((p - y) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 > 0.8
    models = daemon.get("/v1/pipelines/prices/models").json()["models"]
    assert models[0]["task"] == "regression" and set(models[0]["metrics"]) >= {"rmse", "r2"}
    assert "integer with" in models[0]["lineage"]["task_reason"]

    flowers = predict(daemon, "flowers", rows)["predictions"]
    assert all(set(f["probabilities"]) == {"setosa", "versicolor", "virginica"}
               and abs(sum(f["probabilities"].values()) - 1) < 1e-9 for f in flowers)
    accuracy = np.mean([f["class"] == s for f, s in zip(flowers, fresh["species"], strict=True)])
    assert accuracy > 0.8
    info = daemon.get("/v1/pipelines/flowers/models").json()["models"][0]
    assert info["task"] == "multiclass" and info["lineage"]["gate"]["metric"] == "log_loss"


def test_rollback_tuning_and_damaged_models(machines_state, start_daemon):
    daemon = start_daemon(machines_state)
    args = ["--state-dir", str(machines_state)]
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    wait_version(daemon, "machines", 1)
    drop(machines_state, "machines", SAMPLES / "machines_02.csv")
    wait_version(daemon, "machines", 2)

    # Tuning from the command line; a bare POST still trains; a wrong body is refused.
    out = CliRunner().invoke(cli, ["train", "machines", "--tune", "2", *args])
    assert out.exit_code == 0 and "search of 2 trials" in out.output, out.output
    v3 = wait_version(daemon, "machines", 3)
    assert v3["lineage"]["tuning"]["trials_completed"] == 2
    bad = daemon.post("/v1/pipelines/machines/retrain", admin=True, json={"tune": 2})
    assert bad.status_code == 400 and "tune" in bad.json()["message"]
    assert daemon.post("/v1/pipelines/machines/retrain").status_code == 401

    # Every version says why it is where it is, and what it was made from.
    models = {m["version"]: m for m in daemon.get("/v1/pipelines/machines/models").json()[
        "models"]}
    assert all(m["decision"] and m["lineage"]["gate"]["reason"] for m in models.values())
    assert [d["file_name"] for d in models[2]["lineage"]["datasets"]] == [
        "machines_01.csv", "machines_02.csv"]
    listing = CliRunner().invoke(cli, ["models", "machines", *args])
    assert listing.exit_code == 0 and "vs the baseline" in listing.output
    assert "data sets v1..v2, 4500 rows (all)" in listing.output
    assert "tuned: 2 trials" in listing.output

    # Rollback: put the other of v1/v2 into production; serving follows at once.
    rows = pl.read_csv(SAMPLES / "machines_02.csv").head(50).drop(
        "failed_within_24h").to_dicts()
    before = predict(daemon, "machines", rows)
    serving = before["model_version"]
    other = 1 if serving != 1 else 2
    r = daemon.post(f"/v1/pipelines/machines/models/{other}/promote", admin=True)
    assert r.status_code == 200 and r.json()["previous_version"] == serving
    after = predict(daemon, "machines", rows)
    assert after["model_version"] == other and after["predictions"] != before["predictions"]
    assert daemon.get("/v1/pipelines/machines").json()["production"]["version"] == other

    # A damaged file is never served: promote answers 409 with the reason; the model that
    # served keeps serving, and an event says so.
    damaged = ({1, 2, 3} - {serving, other}).pop()
    model_txt = machines_state / f"models/machines/{damaged}/model.txt"
    model_txt.write_bytes(model_txt.read_bytes() + b"\n")
    r = daemon.post(f"/v1/pipelines/machines/models/{damaged}/promote", admin=True)
    assert r.status_code == 409 and r.json()["code"] == "model_corrupt"
    assert "does not match the hash" in r.json()["message"]
    assert predict(daemon, "machines", rows)["model_version"] == other
    events = daemon.get("/v1/events", params={"pipeline": "machines"}).json()["events"]
    assert any(e["kind"] == "model_load_failed" and e["details"]["version"] == damaged
               for e in events)
    out = CliRunner().invoke(cli, ["promote", "machines", str(damaged), *args])
    assert out.exit_code == 1 and "409" in out.output

    # At start, a production model cut short (which would crash LightGBM's parser) is
    # refused before parsing, and the version that was production before it serves.
    assert daemon.stop() == 0
    prod_txt = machines_state / f"models/machines/{other}/model.txt"
    prod_txt.write_bytes(prod_txt.read_bytes()[: prod_txt.stat().st_size // 2])
    again = start_daemon(machines_state)
    wait_for(lambda: again.get("/ready").status_code == 200, timeout=30, what="ready")
    assert again.get("/ready").json()["models"] == {"machines": serving}
    assert predict(again, "machines", rows)["predictions"] == before["predictions"]
    models = {m["version"]: m for m in again.get("/v1/pipelines/machines/models").json()[
        "models"]}
    assert models[other]["stage"] == "rejected" and models[serving]["stage"] == "production"
    assert models[serving]["decision"].startswith(f"automatic rollback: v{other}")
    kinds = [e["kind"] for e in again.get("/v1/events").json()["events"]]
    assert "rolled_back" in kinds and "model_load_failed" in kinds
