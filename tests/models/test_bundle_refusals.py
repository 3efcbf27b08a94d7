"""Every refusal of an import, each with a crafted bundle sent to a real daemon: the reason
names what is wrong, nothing is registered (no version, no folder), and the serving model
answers as before. Then the untouched bundle is accepted and goes through the gate."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from appliance.core import StateDir, load
from appliance.models import Registry, export_bundle, generate_keys, load_private_key, signing
from appliance.models import bundle as b
from appliance.store import Store
from tests.conftest import FAST_CONFIG, copy_state
from tests.models.test_bundles import predictions, send

ROWS = [{"machine_id": "M-001", "machine_type": "lathe", "site": "east",
         "temperature_c": 61.0, "vibration_mm_s": 3.9, "pressure_bar": 6.1, "rpm": 1500,
         "humidity_pct": 40.0, "hours_since_service": 800.0}]


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _members(bundle: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _repack(files: dict[str, bytes], extra: list[tuple[tarfile.TarInfo, bytes | None]]
            ) -> bytes:
    members = []
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        members.append((info, data))
    return _tar(members + extra)


def _resign(files: dict[str, bytes], key, manifest_changes=None) -> dict[str, bytes]:
    """The content files with a fresh manifest (sizes, digests) signed by ``key``."""
    content = {n: d for n, d in files.items() if n in b.CONTENT}
    manifest = json.loads(files[b.MANIFEST])
    manifest.pop("files")
    manifest.update(manifest_changes or {})
    members = _members(b.pack(content, manifest, None,
                              lambda m: signing.sign(key, m)))
    return {b.MANIFEST: members[b.MANIFEST], b.SIGNATURE: members[b.SIGNATURE], **content}


@pytest.fixture
def box(trained_template, tmp_path, start_daemon):
    """A box serving machines v1 (trained here), trusting one key; the bundle of its own
    v1 signed with that key, and a key it does not trust."""
    root = copy_state(trained_template, tmp_path / "box")
    (root / "appliance.toml").write_text(
        FAST_CONFIG + "\n[bundles]\nmax_member_mb = 4\nmax_bundle_mb = 2\n")
    trusted = generate_keys(tmp_path / "keys")
    stranger = generate_keys(tmp_path / "stranger")
    (root / "trusted_keys").mkdir()
    (root / "trusted_keys" / "ours.pub").write_bytes(trusted.public_path.read_bytes())
    state = StateDir(root)
    store = Store.open_readonly(state.db)
    try:
        good, _ = export_bundle(store, Registry(state, store), load(root), "machines", 1,
                                load_private_key(trusted.private_path))
    finally:
        store.close()
    daemon = start_daemon(root)
    daemon.wait_ready_model("machines", 1)
    return daemon, good, load_private_key(trusted.private_path), \
        load_private_key(stranger.private_path)


def _crafted(good: bytes, key, stranger) -> dict[str, tuple[bytes, str]]:
    files = _members(good)
    out: dict[str, tuple[bytes, str]] = {}
    flipped = bytearray(good)
    flipped[len(flipped) // 2] ^= 0x01
    out["flipped byte in the file"] = (bytes(flipped), "bundle_")
    changed = dict(files)
    model = bytearray(files["model.txt"])
    model[200] ^= 0x01
    changed["model.txt"] = bytes(model)
    out["flipped byte in model.txt"] = (_repack(changed, []), "bundle_digest_mismatch")
    out["wrong key"] = (_repack(_resign(files, stranger), []), "bundle_untrusted_key")
    forged = dict(files)
    forged[b.MANIFEST] = files[b.MANIFEST].replace(b'"version": 1', b'"version": 7')
    out["bad signature"] = (_repack(forged, []), "bundle_bad_signature")
    unsigned = {n: d for n, d in files.items() if n != b.SIGNATURE}
    out["unsigned"] = (_repack(unsigned, []), "bundle_unsigned")
    escape = tarfile.TarInfo("../escape.txt")
    escape.size = 3
    out["../ member"] = (_repack(files, [(escape, b"bad")]), "bundle_unsafe_member")
    absolute = tarfile.TarInfo("/etc/cron.d/x")
    absolute.size = 3
    out["absolute member"] = (_repack(files, [(absolute, b"bad")]), "bundle_unsafe_member")
    link = tarfile.TarInfo("model.txt")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    no_model = {n: d for n, d in files.items() if n != "model.txt"}
    out["symlink member"] = (_repack(no_model, [(link, None)]), "bundle_unsafe_member")
    device = tarfile.TarInfo("lineage.json")
    device.type = tarfile.CHRTYPE
    device.devmajor, device.devminor = 1, 3
    no_lineage = {n: d for n, d in files.items() if n != "lineage.json"}
    out["device member"] = (_repack(no_lineage, [(device, None)]), "bundle_unsafe_member")
    out["missing file"] = (_repack(no_model, []), "bundle_missing_file")
    bomb = dict(files)
    bomb["lineage.json"] = b" " * (5 << 20)  # 5 MB of spaces: a few KB compressed
    out["oversized member"] = (_repack(_resign(bomb, key), []), "bundle_member_too_large")
    meta = json.loads(files["model.json"])
    for f in meta["spec"]["features"]:
        if f["name"] == "temperature_c":
            f["name"] = "temperature_f"
    schema = dict(files, **{"model.json": json.dumps(meta).encode()})
    out["incompatible schema"] = (_repack(_resign(schema, key), []), "bundle_incompatible")
    meta = json.loads(files["model.json"])
    for f in meta["spec"]["features"]:
        if f["name"] == "site":
            f["kind"], f["categories"] = "numeric", None
    kinds = dict(files, **{"model.json": json.dumps(meta).encode()})
    out["a text column read as a number"] = (_repack(_resign(kinds, key), []),
                                             "bundle_incompatible")
    meta = json.loads(files["model.json"])
    meta["spec"]["task"], meta["spec"]["classes"] = "regression", None
    task = dict(files, **{"model.json": json.dumps(meta).encode()})
    out["another task"] = (_repack(_resign(task, key), []), "bundle_incompatible")
    meta = json.loads(files["model.json"])
    meta["spec"]["joins"] = [{"feature_set": "machine_info", "key": "machine_id",
                              "columns": ["rated_rpm"]}]
    join = dict(files, **{"model.json": json.dumps(meta).encode()})
    out["a feature set not declared here"] = (_repack(_resign(join, key), []),
                                              "bundle_incompatible")
    future = dict(files, **{"model.txt": files["model.txt"].replace(b"version=v4",
                                                                   b"version=v9", 1)})
    out["model LightGBM can't read"] = (_repack(_resign(future, key), []),
                                        "bundle_model_unreadable")
    cut = dict(files, **{"model.txt": files["model.txt"][: len(files["model.txt"]) // 2]})
    out["truncated model"] = (_repack(_resign(cut, key), []), "bundle_model_unreadable")
    return out


def test_every_refusal_registers_nothing_and_serving_goes_on(box):
    daemon, good, key, stranger = box
    before = predictions(daemon, "machines", ROWS)
    models_dir = Path(daemon.state_root) / "models" / "machines"
    for what, (data, code) in _crafted(good, key, stranger).items():
        resp = send(daemon, "machines", data)
        assert resp.status_code == 422, (what, resp.text)
        body = resp.json()
        assert body["code"].startswith(code), (what, body)
        assert body["message"], what
        listed = daemon.get("/v1/pipelines/machines/models").json()["models"]
        assert [(m["version"], m["stage"]) for m in listed] == [(1, "production")], what
        assert sorted(p.name for p in models_dir.iterdir()) == ["1"], what
    after = predictions(daemon, "machines", ROWS)
    assert after["predictions"] == before["predictions"] and after["model_version"] == 1
    refused = daemon.get("/v1/events", params={"limit": 200}).json()["events"]
    assert sum(e["kind"] == "bundle_refused" for e in refused) >= 17
    # The untouched bundle is accepted, and the gate scores it beside production on this
    # box's held-out rows: the same model is no better, so it is rejected, with the numbers.
    resp = send(daemon, "machines", good)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["version"] == 2 and body["stage"] == "rejected", body
    assert "vs production v1" in body["reason"] and "held-out rows" in body["reason"]
    assert predictions(daemon, "machines", ROWS)["model_version"] == 1


def test_a_body_over_the_bound_an_unknown_pipeline_and_no_token_are_refused(box):
    daemon, good, _, _ = box
    resp = send(daemon, "machines", b"\x1f\x8b" * (3 << 19))  # 3 MB, over max_bundle_mb
    assert resp.status_code == 413 and "bundles.max_bundle_mb" in resp.json()["message"]
    resp = send(daemon, "machines", b"\x1f\x8b" + b"\x00" * 1000)
    assert resp.status_code == 422 and resp.json()["code"] == "bundle_unreadable"
    resp = send(daemon, "nope", good)
    assert resp.status_code == 404
    resp = daemon.http.post("/v1/pipelines/machines/bundles", content=good)
    assert resp.status_code == 401
