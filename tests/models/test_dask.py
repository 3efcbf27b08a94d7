"""Training on a Dask cluster (engine = "dask"): a real ``distributed.LocalCluster`` of two
worker processes (one thread each) on 127.0.0.1, shared by this module's tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

distributed = pytest.importorskip("distributed")

from appliance.core import ConfigError, DaskSettings, parse  # noqa: E402
from appliance.models import early_stop  # noqa: E402
from appliance.models.dask_engine import DaskEngine  # noqa: E402
from appliance.models.train import train  # noqa: E402
from tests.conftest import FAST_CONFIG, ROOT, SAMPLES, drop, wait_for  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    # The scheduler's HTTP server (health, metrics) binds the dashboard address even when
    # told None (8787, taken by the other xdist worker's cluster): a free loopback port.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0", host="127.0.0.1") as c:
        yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster.scheduler_address, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame(n: int, task: str, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    cat = rng.choice(["a", "b", "c"], n)
    signal_ = x[:, 0] + 0.8 * (cat == "a") + rng.normal(size=n)
    if task == "binary":
        y = pl.Series((signal_ > 0.4).astype(np.int64))
    elif task == "multiclass":
        y = pl.Series(np.digitize(signal_, [-0.5, 0.7]).astype(np.int64))
    else:
        y = pl.Series(signal_)
    return pl.DataFrame({f"f{i}": x[:, i] for i in range(4)}).with_columns(
        cat=pl.Series(cat), target=y)


# --- the early-stopping rule: the same round as lgb.early_stopping --------------------------

@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_box_chooses_the_round_lgb_early_stopping_chooses(task):
    df = frame(3000, task, seed=1)
    x = df.drop("target", "cat").to_numpy()
    y = df["target"].to_numpy().astype(np.float64)
    params = {"objective": task, "learning_rate": 0.2, "num_leaves": 31, "seed": 1,
              "deterministic": True, "verbosity": -1, "num_threads": 1}
    if task == "multiclass":
        params["num_class"] = 3
    xt, yt, xv, yv = x[:2400], y[:2400], x[2400:], y[2400:]
    stopped = lgb.train(params, lgb.Dataset(xt, yt), 400, valid_sets=[lgb.Dataset(xv, yv)],
                        callbacks=[lgb.early_stopping(15, verbose=False)])
    full = lgb.train(params, lgb.Dataset(xt, yt), 400)
    curve = early_stop.metric_curve(full, xv, yv, task)
    assert early_stop.best_iteration(curve, 15) == stopped.best_iteration
    assert stopped.best_iteration < 400  # it did stop early


def test_local_training_never_imports_dask():
    code = ("import sys, numpy as np, polars as pl\n"
            "from appliance.core import parse\n"
            "from appliance.models import train\n"
            "rng = np.random.default_rng(0)\n"
            "df = pl.DataFrame({'x': rng.normal(size=200), 'target': rng.integers(0, 2, 200)})\n"
            "s = parse({})\n"
            "train(df, s.pipeline('p'), s.train)\n"
            "import appliance.daemon, appliance.cli\n"
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_engine_dask_needs_a_scheduler_address():
    with pytest.raises(ConfigError) as err:
        parse({"pipelines": {"p": {"train": {"engine": "dask"}}}})
    assert err.value.key == "dask.scheduler" and "tcp://HOST:8786" in str(err.value)


def test_engine_dask_without_the_libraries_names_the_extra(monkeypatch):
    import appliance.core.config as config

    monkeypatch.setattr(config, "dask_missing", lambda: ["dask", "distributed"])
    with pytest.raises(ConfigError) as err:
        parse({"pipelines": {"p": {"train": {"engine": "dask"}}},
               "dask": {"scheduler": "tcp://10.0.0.5:8786"}})
    assert err.value.key == "pipelines.p.train.engine"
    assert "pip install 'appliance[dask]'" in str(err.value)


# --- on the cluster ---------------------------------------------------------------------

def test_local_and_dask_agree_on_the_same_rows(cluster, client):
    df = frame(8000, "binary")
    s = parse({"train": {"learning_rate": 0.1, "early_stopping_rounds": 20},
               "dask": {"scheduler": cluster.scheduler_address}})
    local = train(df, s.pipeline("p"), s.train)
    engine = DaskEngine(s.dask)
    try:
        remote = train(df, s.pipeline("p"), s.train, engine=engine)
        assert engine.describe()["worker_count"] == 2
    finally:
        engine.close()
    # The same split, categories and validation rows, by construction.
    assert local.valid_frame.equals(remote.valid_frame)
    assert local.spec.categorical_indices == remote.spec.categorical_indices
    assert np.array_equal(local.y_valid, remote.y_valid)
    # Distributed LightGBM bins each worker's rows: close, not identical.
    assert abs(local.metrics["auc"] - remote.metrics["auc"]) < 0.01
    assert abs(local.best_iteration - remote.best_iteration) <= 0.3 * local.best_iteration
    model = lgb.Booster(model_str=remote.model_text)
    assert model.current_iteration() == remote.best_iteration  # cut where the box chose


def test_the_workers_stop_where_the_box_confirms(cluster):
    df = frame(4000, "multiclass", seed=3)
    x = df.drop("target", "cat").to_numpy()
    y = df["target"].to_numpy().astype(np.float64)
    xt, yt, xv, yv = x[:3200], y[:3200], x[3200:], y[3200:]
    engine = DaskEngine(DaskSettings(scheduler=cluster.scheduler_address))
    try:
        params = {"objective": "multiclass", "num_class": 3, "learning_rate": 0.3,
                  "seed": 1, "deterministic": True, "verbosity": -1}
        result = engine.fit(params, xt, yt, xv, yv, task="multiclass", num_boost_round=500,
                            early_stopping_rounds=10, feature_names=["a", "b", "c", "d"],
                            categorical=[], should_stop=lambda: False)
    finally:
        engine.close()
    booster = lgb.Booster(model_str=result.model_text)
    best = early_stop.best_iteration(early_stop.metric_curve(booster, xv, yv, "multiclass"), 10)
    assert result.rounds < 500 and result.rounds == best + 10


def test_tuning_trials_run_on_the_cluster(cluster):
    df = frame(3000, "regression", seed=2)
    s = parse({"train": {"learning_rate": 0.2, "early_stopping_rounds": 10},
               "dask": {"scheduler": cluster.scheduler_address}})
    engine = DaskEngine(s.dask)
    try:
        c = train(df, s.pipeline("p"), s.train, engine=engine, tune_trials=2,
                  tune_seconds=120)
    finally:
        engine.close()
    assert c.tuning["trials_completed"] == 2 and c.metrics["r2"] > 0.3


def test_doctor_checks_the_scheduler_and_the_versions(cluster, state_root):
    from click.testing import CliRunner

    from appliance.cli import cli

    def doctor(scheduler: str) -> str:
        (state_root / "appliance.toml").write_text(
            '[pipelines.p.train]\nengine = "dask"\n'
            f'[dask]\nscheduler = "{scheduler}"\nconnect_timeout_s = 2\n'
            "shared_storage = true\n")
        result = CliRunner().invoke(cli, ["doctor", "--state-dir", str(state_root)])
        return "\n".join(line for line in result.output.splitlines() if " dask " in line)

    up = doctor(cluster.scheduler_address)
    assert up.count("OK    dask") == 3, up
    assert f"every worker sees {state_root}" in up
    assert "2 workers" in up and "lightgbm 4." in up
    down = f"tcp://127.0.0.1:{unused_port()}"
    started = time.monotonic()
    report = doctor(down)
    assert f"FAIL  dask       the Dask scheduler at {down} did not answer" in report, report
    assert time.monotonic() - started < 15


# --- in the daemon --------------------------------------------------------------------------

def dask_config(scheduler: str, extra: str = "") -> str:
    return (FAST_CONFIG + '[pipelines.machines.train]\nengine = "dask"\n'
            f'[dask]\nscheduler = "{scheduler}"\nconnect_timeout_s = 3\n' + extra)


def events_of(daemon, kind: str) -> list[dict]:
    return [e for e in daemon.get("/v1/events", params={"limit": 500}).json()["events"]
            if e["kind"] == kind]


@pytest.mark.timeout(150)
def test_a_dask_pipeline_trains_passes_the_gate_and_serves(cluster, machines_state,
                                                           start_daemon):
    (machines_state / "appliance.toml").write_text(
        dask_config(cluster.scheduler_address).replace(
            "[dask]\n", "[dask]\nshared_storage = true\n"))
    daemon = start_daemon(machines_state)
    drop(machines_state, "machines", SAMPLES / "machines_01.csv")
    daemon.wait_ready_model("machines", 1, timeout=120)
    meta = json.loads((machines_state / "models/machines/1/model.json").read_text())
    engine = meta["lineage"]["engine"]
    assert engine["name"] == "dask" and engine["scheduler"] == cluster.scheduler_address
    assert engine["worker_count"] == 2 and engine["versions"]["distributed"]
    assert engine["data"].startswith("read by the workers from the shared state directory")
    trained = events_of(daemon, "trained")[0]["message"]
    assert f"on the Dask cluster at {cluster.scheduler_address} (2 workers)" in trained
    rows = pl.read_csv(SAMPLES / "machines_02.csv").head(200)
    resp = daemon.post("/v1/pipelines/machines/predict",
                       json={"rows": rows.drop("failed_within_24h").to_dicts()})
    assert resp.status_code == 200 and resp.json()["model_version"] == 1


@pytest.mark.timeout(150)
def test_a_scheduler_that_is_down_fails_the_job_while_the_box_serves(
        trained_template, tmp_path, start_daemon):
    from tests.conftest import copy_state

    root = copy_state(trained_template, tmp_path / "state")
    down = f"tcp://127.0.0.1:{unused_port()}"
    (root / "appliance.toml").write_text(dask_config(down, "[jobs]\nretry_attempts = 1\n"
                                                     "retry_backoff_seconds = 0.5\n"))
    daemon = start_daemon(root)
    daemon.wait_ready_model("machines", 1)
    assert daemon.post("/v1/pipelines/machines/retrain", admin=True).status_code == 202
    failed = wait_for(lambda: len(events_of(daemon, "training_failed")) >= 2 and
                      events_of(daemon, "training_failed"), timeout=60,
                      what="the run and its retry to fail")
    assert all(f"the Dask scheduler at {down} did not answer" in e["message"] for e in failed)
    assert events_of(daemon, "training_retry_scheduled")
    row = pl.read_csv(SAMPLES / "machines_02.csv").head(1).drop("failed_within_24h")
    resp = daemon.post("/v1/pipelines/machines/predict", json={"rows": row.to_dicts()})
    assert resp.status_code == 200 and resp.json()["model_version"] == 1
    assert not (root / "models/machines/2").exists()  # nothing registered


def test_workers_reading_shared_storage_build_the_matrix_the_box_would_send(cluster,
                                                                             tmp_path):
    from appliance.features import build_spec, encode_target, to_matrices
    from appliance.models.data import read_datasets

    paths = []
    for i, seed in enumerate((4, 5)):
        part = frame(2000, "binary", seed=seed)
        if i == 1:  # a column the first version lacks, and missing values
            part = part.with_columns(extra=pl.when(pl.col("f1") > 1.0).then(None)
                                     .otherwise(pl.col("f2") * 2))
        paths.append(tmp_path / f"v{i + 1}.parquet")
        part.write_parquet(paths[-1])
    df = read_datasets(paths)
    ids = np.concatenate([np.column_stack([np.full(2000, v), np.arange(2000)])
                          for v in (1, 2)])
    s = parse({"dask": {"scheduler": cluster.scheduler_address, "shared_storage": True}})
    spec = build_spec(df, s.pipeline("p"), "binary")
    rows = np.random.default_rng(0).permutation(df.height)[:3000]  # any rows, any order
    x = to_matrices(df, spec, [rows])[0]
    y = encode_target(df["target"], spec)[rows]
    engine = DaskEngine(s.dask)
    engine.sources = {1: str(paths[0]), 2: str(paths[1])}
    try:
        schema = {f.name: df.schema[f.name] for f in spec.features}
        dx, dy, _ = engine._read_on_workers(ids[rows], y, spec, x.shape[1], schema)
        assert np.array_equal(engine.client.compute(dx).result(), x, equal_nan=True)
        assert np.array_equal(engine.client.compute(dy).result(), y)
        assert "read by the workers" in engine.describe()["data"]
        c = train(df, s.pipeline("p"), s.train, engine=engine, row_ids=ids)
        assert c.metrics["auc"] > 0.7
    finally:
        engine.close()


def test_a_worker_that_cannot_read_the_shared_files_fails_the_fit_clearly(cluster,
                                                                         tmp_path):
    from appliance.core import ApplianceError

    df = frame(500, "binary")
    s = parse({"dask": {"scheduler": cluster.scheduler_address, "shared_storage": True}})
    engine = DaskEngine(s.dask)
    missing = tmp_path / "not-mounted" / "v000001.parquet"
    engine.sources = {1: str(missing)}
    try:
        with pytest.raises(ApplianceError) as err:
            train(df, s.pipeline("p"), s.train, engine=engine,
                  row_ids=np.column_stack([np.ones(500, np.int64), np.arange(500)]))
    finally:
        engine.close()
    assert err.value.code == "dask_read_failed"
    assert str(missing) in err.value.message and "mounted at the same path" in err.value.message


def lightgbm_linked(pids: dict[str, int]) -> bool:
    """The workers' LightGBM processes are connected to each other (boosting has begun):
    a TCP connection between two worker processes on ports that are not Dask's."""
    import psutil

    dask_ports = {int(addr.rsplit(":", 1)[1]) for addr in pids}
    ends: dict[int, set[tuple[int, int]]] = {}
    for pid in pids.values():
        try:
            conns = psutil.Process(pid).net_connections("tcp")
        except psutil.Error:
            return False
        ends[pid] = {(c.laddr.port, c.raddr.port) for c in conns
                     if c.status == psutil.CONN_ESTABLISHED and c.raddr
                     and c.laddr.port not in dask_ports and c.raddr.port not in dask_ports}
    a, b = list(ends.values())[:2]
    return any((remote, local) in b for local, remote in a)


@pytest.mark.timeout(170)
def test_a_worker_lost_during_the_fit_fails_the_job_which_is_retried(
        state_root, tmp_path, start_daemon):
    # Its own cluster: this test kills one of its workers.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address="127.0.0.1:0", host="127.0.0.1") as cluster, \
            distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
        worker_lost_then_retried(cluster, client, state_root, tmp_path, start_daemon)


def worker_lost_then_retried(cluster, client, state_root, tmp_path, start_daemon):
    # A fit that takes a while: slow learning, no early stop before 5000 rounds.
    (state_root / "appliance.toml").write_text(
        '[ingest]\nsettle_seconds = 0.2\n[train]\nengine = "dask"\nlearning_rate = 0.001\n'
        'num_boost_round = 5000\nearly_stopping_rounds = 5000\n'
        f'[dask]\nscheduler = "{cluster.scheduler_address}"\ntimeout_s = 60\n'
        "[jobs]\nretry_attempts = 2\nretry_backoff_seconds = 1\n")
    client.wait_for_workers(2, timeout=60)
    rng = np.random.default_rng(0)
    n = 50_000
    x = rng.normal(size=(n, 6))
    data = tmp_path / "slow.csv"
    pl.DataFrame({f"f{i}": x[:, i] for i in range(6)}).with_columns(
        target=pl.Series((x[:, 0] + rng.normal(size=n) > 0).astype(np.int64))).write_csv(data)
    daemon = start_daemon(state_root)
    pids = client.run(os.getpid)
    drop(state_root, "slow", data)

    def fitting() -> str | None:
        for worker, keys in client.processing().items():
            if any("_train_part" in str(k) for k in keys):
                return worker
        return None

    victim = wait_for(fitting, timeout=60, what="the fit to run on the workers")
    wait_for(lambda: lightgbm_linked(pids), timeout=60, what="LightGBM's workers to link")
    os.kill(pids[victim], signal.SIGKILL)
    failed = wait_for(lambda: events_of(daemon, "training_failed"), timeout=60,
                      what="the fit to fail")
    message = failed[0]["message"]
    assert failed[0]["details"]["code"] == "dask_worker_lost", message
    assert victim in message and cluster.scheduler_address in message
    # The retry is scheduled just after the failure is recorded: wait for it, don't race it.
    wait_for(lambda: events_of(daemon, "training_retry_scheduled"), timeout=10,
             what="the retry to be scheduled")
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    wait_for(lambda: [e for e in events_of(daemon, "training_started")
                      if e["details"].get("trigger") == "retry"], timeout=30,
             what="the retry")
    wait_for(fitting, timeout=60, what="the retry's fit on the cluster")
    # SIGTERM during the fit: the workers are told to stop; the daemon exits cleanly.
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM, timeout=30) == 0, daemon.log()
    assert time.monotonic() - started < 20
    assert not (state_root / "models/slow/1").exists()
    wait_for(lambda: fitting() is None, timeout=20, what="the workers to stop the fit")
