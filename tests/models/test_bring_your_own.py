"""Bring your own model: a model trained with plain LightGBM in the test (numpy, the way a
notebook's pandas frame would give it: a category column as codes with the file's category
map), imported as a bare model file, served: the same numbers as ``Booster.predict``. And
the mappings that can't be proven are refused."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from tests.conftest import SAMPLES, copy_state
from tests.models.test_bundles import cli, predictions, send

NUMERIC = ["temperature_c", "vibration_mm_s", "pressure_bar", "rpm", "humidity_pct",
           "hours_since_service"]


def _train(categorical: bool = True, names: list[str] | None = None) -> tuple[lgb.Booster,
                                                                              list[str]]:
    data = pl.read_csv(SAMPLES / "machines_01.csv")
    kinds = sorted(data.get_column("machine_type").unique().to_list())
    codes = data.get_column("machine_type").replace_strict(kinds, list(range(len(kinds))))
    x = np.column_stack([data.get_column(c).cast(pl.Float64).to_numpy() for c in NUMERIC]
                        + ([codes.cast(pl.Float64).to_numpy()] if categorical else []))
    y = data.get_column("failed_within_24h").to_numpy()
    features = names or (NUMERIC + (["machine_type"] if categorical else []))
    train = lgb.Dataset(x, y, feature_name=features,
                        categorical_feature=[len(NUMERIC)] if categorical else "auto")
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1,
                         "min_data_per_group": 5, "cat_smooth": 1}, train,
                        num_boost_round=40)
    return booster, kinds


def _model_text(booster: lgb.Booster, kinds: list[str] | None) -> str:
    """What Booster.save_model writes; with ``kinds``, the category map pandas would have
    written for a category column (``pandas_categorical``)."""
    text = booster.model_to_string()
    if kinds is not None:
        assert "pandas_categorical:null" in text
        text = text.replace("pandas_categorical:null", "pandas_categorical:" + json.dumps(
            [kinds]))
    return text


@pytest.fixture
def box(trained_template, tmp_path, start_daemon):
    root = copy_state(trained_template, tmp_path / "box")
    daemon = start_daemon(root)
    daemon.wait_ready_model("machines", 1)
    return daemon


def test_a_model_trained_with_plain_lightgbm_serves_booster_predicts_numbers(box, tmp_path):
    booster, kinds = _train()
    path = tmp_path / "notebook_model.txt"
    path.write_text(_model_text(booster, kinds))
    out = cli("bundle", "import", str(path), "--pipeline", "machines",
              "--state-dir", str(box.state_root)).stdout
    assert out.startswith("machines v2:"), out
    model = box.get("/v1/pipelines/machines/models").json()["models"][0]
    assert model["version"] == 2 and model["lineage"]["source"]["kind"] == "model_file"
    if model["stage"] != "production":
        resp = box.post("/v1/pipelines/machines/models/2/promote", admin=True)
        assert resp.status_code == 200, resp.text
    rows = pl.read_csv(SAMPLES / "machines_02.csv").head(40)
    sent = rows.select("machine_type", "site", *NUMERIC).to_dicts()
    sent[0]["machine_type"] = "a type never seen"  # missing, as pandas' code -1 would be
    sent[1]["temperature_c"] = None
    got = predictions(box, "machines", sent)
    assert got["model_version"] == 2
    codes = [float(kinds.index(r["machine_type"])) if r["machine_type"] in kinds else np.nan
             for r in sent]
    x = np.column_stack([np.array([np.nan if r[c] is None else r[c] for r in sent],
                                  dtype=np.float64) for c in NUMERIC] + [np.array(codes)])
    want = booster.predict(x)
    assert got["predictions"] == [float(v) for v in want]


@pytest.mark.parametrize(("case", "needle"), [
    ("no category map", "can't be proven"),
    ("unnamed", "unnamed"),
    ("unknown column", "is not a column"),
])
def test_a_mapping_that_cannot_be_proven_is_refused(box, case, needle):
    if case == "no category map":
        booster, _ = _train()
        text = _model_text(booster, None)
    elif case == "unnamed":
        booster, _ = _train(categorical=False,
                            names=[f"Column_{i}" for i in range(len(NUMERIC))])
        text = _model_text(booster, None)
    else:
        booster, _ = _train(categorical=False, names=[*NUMERIC[:-1], "hours_since_repair"])
        text = _model_text(booster, None)
    resp = send(box, "machines", text.encode())
    assert resp.status_code == 422 and needle in resp.json()["message"], resp.text
    listed = box.get("/v1/pipelines/machines/models").json()["models"]
    assert [m["version"] for m in listed] == [1]


def test_an_sklearn_classifier_fitted_on_a_pandas_frame_serves_its_own_numbers(box, tmp_path):
    """The notebook path as users write it: pandas with a `category` column, scikit-learn's
    LGBMClassifier, then `clf.booster_.save_model(...)` (pandas' category map is in the file,
    written by LightGBM itself)."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("sklearn")
    frame = pd.read_csv(SAMPLES / "machines_01.csv")
    x = frame[[*NUMERIC, "machine_type"]].astype({"machine_type": "category"})
    clf = lgb.LGBMClassifier(n_estimators=40, num_leaves=15, min_child_samples=5,
                             verbose=-1)
    clf.fit(x, frame["failed_within_24h"])
    path = tmp_path / "sklearn_model.txt"
    clf.booster_.save_model(str(path))
    assert "pandas_categorical:[[" in path.read_text()
    out = cli("bundle", "import", str(path), "--pipeline", "machines",
              "--state-dir", str(box.state_root)).stdout
    assert out.startswith("machines v2:"), out
    if box.get("/v1/pipelines/machines/models").json()["models"][0]["stage"] != "production":
        resp = box.post("/v1/pipelines/machines/models/2/promote", admin=True)
        assert resp.status_code == 200, resp.text
    rows = pd.read_csv(SAMPLES / "machines_02.csv").head(40)
    sent = [{k: (None if pd.isna(v) else v) for k, v in r.items()}     # NaN: JSON null
            for r in rows[["machine_type", "site", *NUMERIC]].to_dict("records")]
    got = predictions(box, "machines", sent)
    assert got["model_version"] == 2
    want = clf.predict_proba(rows[[*NUMERIC, "machine_type"]].astype(
        {"machine_type": pd.CategoricalDtype(x["machine_type"].cat.categories)}))[:, 1]
    assert got["predictions"] == [float(v) for v in want]
