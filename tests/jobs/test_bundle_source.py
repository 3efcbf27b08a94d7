"""The watched bundle source: a folder polled by the daemon; a new signed bundle for a
pipeline this box runs is imported once (a copy under another name is not imported again),
one for another pipeline is left alone, a damaged one is refused once."""

from __future__ import annotations

import os
import shutil
import time

from appliance.core import StateDir, load
from appliance.models import Registry, export_bundle, generate_keys, load_private_key
from tests.conftest import FAST_CONFIG, wait_for
from tests.models.test_bundle_refusals import _members, _repack, _resign


def _export(template, key_path) -> bytes:
    from appliance.store import Store

    state = StateDir(template)
    store = Store.open_readonly(state.db)
    try:
        data, _ = export_bundle(store, Registry(state, store), load(template), "machines", 1,
                                load_private_key(key_path))
    finally:
        store.close()
    return data


def _place(folder, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.part"
    tmp.write_bytes(data)
    old = time.time() - 10  # as if copied a while ago: settled
    os.utime(tmp, (old, old))
    os.replace(tmp, folder / name)


def test_a_watched_folder_imports_each_new_bundle_once(trained_template, tmp_path,
                                                       start_daemon):
    keys = generate_keys(tmp_path / "keys")
    good = _export(trained_template, keys.private_path)
    files = _members(good)
    key = load_private_key(keys.private_path)
    elsewhere = _repack(_resign(files, key, {"pipeline": "elsewhere"}), [])
    damaged = dict(files, **{"model.json": files["model.json"] + b" "})
    damaged_bundle = _repack(damaged, [])
    usb = tmp_path / "usb"
    usb.mkdir()
    root = tmp_path / "box"
    root.mkdir()
    (root / "trusted_keys").mkdir()
    shutil.copy(keys.public_path, root / "trusted_keys" / "lab.pub")
    (root / "appliance.toml").write_text(
        FAST_CONFIG + f'\n[bundles]\nsource = "{usb}"\npoll_seconds = 0.3\n')
    daemon = start_daemon(root)
    _place(usb, "machines-v1.bundle", good)
    _place(usb, "other.bundle", elsewhere)
    _place(usb, "notes.txt", b"not a bundle: ignored")
    daemon.wait_ready_model("machines", 1)
    models = daemon.get("/v1/pipelines/machines/models").json()["models"]
    assert [(m["version"], m["stage"]) for m in models] == [(1, "production")]
    assert models[0]["lineage"]["source"]["imported_via"].startswith("source ")
    _place(usb, "copy-of-machines-v1.bundle", good)
    _place(usb, "damaged.bundle", damaged_bundle)

    def refused() -> list:
        events = daemon.get("/v1/events", params={"limit": 200}).json()["events"]
        return [e for e in events if e["kind"] == "bundle_refused"]

    wait_for(refused, timeout=20, what="the damaged bundle to be refused")
    time.sleep(1.5)  # several more polls
    assert len(refused()) == 1 and "damaged.bundle" in refused()[0]["message"]
    models = daemon.get("/v1/pipelines/machines/models").json()["models"]
    assert [m["version"] for m in models] == [1]
    imported = [e for e in daemon.get("/v1/events", params={"limit": 200}).json()["events"]
                if e["kind"] == "bundle_imported"]
    assert len(imported) == 1


def test_a_url_source_lists_bundles_in_an_index(trained_template, tmp_path, start_daemon):
    import functools
    import http.server
    import threading

    keys = generate_keys(tmp_path / "keys")
    share = tmp_path / "share"
    share.mkdir()
    (share / "machines-v1.bundle").write_bytes(_export(trained_template, keys.private_path))
    (share / "index.txt").write_text("# bundles\nmachines-v1.bundle\nmissing.bundle\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(share))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        root = tmp_path / "box"
        root.mkdir()
        (root / "trusted_keys").mkdir()
        shutil.copy(keys.public_path, root / "trusted_keys" / "lab.pub")
        url = f"http://127.0.0.1:{server.server_port}/index.txt"
        (root / "appliance.toml").write_text(
            FAST_CONFIG + f'\n[bundles]\nsource = "{url}"\npoll_seconds = 0.3\n')
        daemon = start_daemon(root)
        daemon.wait_ready_model("machines", 1)
        time.sleep(1.0)  # more polls: imported once
        models = daemon.get("/v1/pipelines/machines/models").json()["models"]
        assert [m["version"] for m in models] == [1]
        assert models[0]["lineage"]["source"]["file"] == "machines-v1.bundle"
    finally:
        server.shutdown()
        server.server_close()
