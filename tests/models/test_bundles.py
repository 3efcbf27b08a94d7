"""Model bundles between two real daemons with their own state directories: export on one,
import on the other, the same predictions bit for bit (binary with a joined feature set and
a derived feature, multiclass, regression); keys; the CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import polars as pl
import pytest

from tests.conftest import ROOT, SAMPLES, drop, wait_for

BOX_CONFIG = """
[ingest]
settle_seconds = 0.2
rescan_seconds = 1.0

[train]
num_boost_round = 80

[feature_sets.machine_info]
key = "machine_id"
timestamp = "updated_at"

[pipelines.machines]
target = "failed_within_24h"
timestamp = "timestamp"
id = "reading_id"
join = ["machine_info"]

[pipelines.machines.derived]
rpm_load = "rpm / rated_rpm"

[pipelines.kinds]
target = "machine_type"
timestamp = "timestamp"
id = "reading_id"

[pipelines.speed]
target = "load"
timestamp = "timestamp"
id = "reading_id"
"""

FEATURES = ["temperature_c", "vibration_mm_s", "pressure_bar", "humidity_pct",
            "hours_since_service", "site"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def sample_rows(n: int = 25) -> pl.DataFrame:
    return pl.read_csv(SAMPLES / "machines_02.csv").head(n)


def send(daemon, pipeline: str, data: bytes):
    """POST a file's bytes to the import route, with the admin token."""
    return daemon.http.post(f"/v1/pipelines/{pipeline}/bundles", content=data, headers={
        "Authorization": f"Bearer {daemon.token}", "Content-Type": "application/octet-stream"})


def predictions(daemon, pipeline: str, rows: list[dict]) -> dict:
    resp = daemon.post(f"/v1/pipelines/{pipeline}/predict", json={"rows": rows})
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def box_a(tmp_path_factory):
    """Box A: three pipelines trained (binary with a join and a derived feature,
    multiclass, regression) and a signing key, its daemon stopped."""
    from tests.conftest import DaemonProcess

    root = tmp_path_factory.mktemp("box_a") / "state"
    root.mkdir()
    (root / "appliance.toml").write_text(BOX_CONFIG)
    data = pl.read_csv(SAMPLES / "machines_01.csv")
    src = root.parent / "src"
    src.mkdir()
    data.select("reading_id", "timestamp", *FEATURES, "machine_type").write_csv(
        src / "kinds.csv")
    data.select("reading_id", "timestamp", *FEATURES, load=pl.col("temperature_c") * 2.0
                + pl.col("vibration_mm_s") * 10.0 + pl.col("humidity_pct") * 0.1
                ).write_csv(src / "speed.csv")
    daemon = DaemonProcess(root, [])
    try:
        drop(root, "machine_info", SAMPLES / "machine_info.csv")
        wait_for(lambda: daemon.get("/v1/feature-sets/machine_info").status_code == 200 and
                 daemon.get("/v1/feature-sets/machine_info").json()["keys"] > 0,
                 what="machine_info in the online store")
        drop(root, "machines", SAMPLES / "machines_01.csv")
        drop(root, "kinds", src / "kinds.csv")
        drop(root, "speed", src / "speed.csv")
        for p in ("machines", "kinds", "speed"):
            daemon.wait_ready_model(p, 1, timeout=120)
    finally:
        assert daemon.stop() == 0, daemon.log()
    out = cli("keys", "generate", "--state-dir", str(root))
    assert "bundle_signing.key" in out.stdout
    return root


def test_keys_generate_writes_a_private_key_only_its_owner_reads(box_a, tmp_path):
    key = box_a / "keys" / "bundle_signing.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert (box_a / "keys" / "bundle_signing.pub").read_text().startswith(
        "-----BEGIN PUBLIC KEY-----")
    again = cli("keys", "generate", "--state-dir", str(box_a), check=False)
    assert again.returncode != 0 and "--force" in again.stderr


def test_round_trip_between_two_daemons_gives_the_same_predictions(box_a, tmp_path,
                                                                    start_daemon):
    box_b = tmp_path / "box_b"
    box_b.mkdir()
    (box_b / "appliance.toml").write_text(BOX_CONFIG)
    (box_b / "trusted_keys").mkdir()
    (box_b / "trusted_keys" / "box_a.pub").write_bytes(
        (box_a / "keys" / "bundle_signing.pub").read_bytes())
    bundles = {}
    for p in ("machines", "kinds", "speed"):
        out = tmp_path / f"{p}.bundle"
        text = cli("bundle", "export", p, "-o", str(out), "--state-dir", str(box_a)).stdout
        assert "signed" in text and out.stat().st_size > 0
        bundles[p] = out
    a = start_daemon(box_a)
    b = start_daemon(box_b)
    drop(box_b, "machine_info", SAMPLES / "machine_info.csv")
    wait_for(lambda: b.get("/v1/feature-sets/machine_info").status_code == 200 and
             b.get("/v1/feature-sets/machine_info").json()["keys"] > 0,
             what="machine_info on box B")
    rows = sample_rows()
    for p, path in bundles.items():
        if p == "kinds":  # through the CLI, which reads the pipeline from the bundle
            out = cli("bundle", "import", str(path), "--state-dir", str(box_b)).stdout
            assert out.startswith("kinds v1: production"), out
            model = b.get("/v1/pipelines/kinds/models").json()["models"][0]
            body = {"stage": model["stage"], "version": model["version"], "kind": "bundle",
                    "key_id": model["lineage"]["source"]["key_id"]}
        else:
            resp = send(b, p, path.read_bytes())
            assert resp.status_code == 200, resp.text
            body = resp.json()
        assert body["stage"] == "production" and body["version"] == 1, body
        assert body["kind"] == "bundle" and len(body["key_id"]) == 16
        if p == "machines":  # the machine's metadata comes from box B's online store
            sent = rows.drop("reading_id", "timestamp", "failed_within_24h").to_dicts()
        else:
            sent = rows.select(*FEATURES).to_dicts()
        want = predictions(a, p, sent)["predictions"]
        got = predictions(b, p, sent)["predictions"]
        assert got == want, p
        model = b.get(f"/v1/pipelines/{p}/models").json()["models"][0]
        source = model["lineage"]["source"]
        assert source["key_id"] == body["key_id"] and source["pipeline"] == p
        assert source["trained_at"] and source["exported_by"]
        assert model["lineage"]["origin"]["datasets"], "the origin's lineage is kept"
        # What drift is measured against came along (box B has no data of its own).
        meta_a = json.loads((box_a / "models" / p / "1" / "model.json").read_text())
        meta_b = json.loads((box_b / "models" / p / "1" / "model.json").read_text())
        assert meta_b["reference"] == meta_a["reference"] and meta_b["reference"]
        assert meta_b["spec"] == meta_a["spec"]
