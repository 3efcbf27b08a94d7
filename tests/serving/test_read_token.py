"""Off loopback, reading the API needs a token (the read token, or the predict or admin
token); /health, /ready and the OpenAPI document stay open; the console and the CLI keep
working with the tokens they find."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import pytest

from appliance.core import parse
from appliance.serving import reads_need_token
from tests.conftest import FAST_CONFIG, copy_state
from tui.client import ApiError, ApplianceClient

OPEN = ["/health", "/ready", "/schema/openapi.json"]
# Every read route, and a path that does not exist (closed too: nothing says what exists).
CLOSED = ["/metrics", "/v1/events", "/v1/pipelines", "/v1/pipelines/machines",
          "/v1/pipelines/machines/ingestions", "/v1/pipelines/machines/models",
          "/v1/pipelines/machines/jobs", "/v1/pipelines/machines/drift",
          "/v1/pipelines/machines/metrics", "/v1/system", "/v1/feature-sets",
          "/v1/feature-sets/machine_info", "/v1/feature-sets/machine_info/M-001",
          "/v1/nothing-here"]
CONFIG = FAST_CONFIG + """
[server]
predict_token_required = true

[feature_sets.machine_info]
key = "machine_id"
"""


@pytest.mark.parametrize(("host", "required", "gated"), [
    ("127.0.0.1", False, False), ("localhost", False, False), ("::1", False, False),
    ("127.0.0.1", True, True), ("0.0.0.0", False, True), ("192.168.1.20", False, True),
    ("box.lan", False, True),
])
def test_reads_need_a_token_off_loopback_or_when_asked(host, required, gated):
    settings = parse({"server": {"host": host, "read_token_required": required}})
    assert reads_need_token(settings.server) is gated


def test_off_loopback_every_read_needs_a_token(trained_template, tmp_path, start_daemon):
    root = copy_state(trained_template, tmp_path / "state")
    (root / "appliance.toml").write_text(CONFIG)
    daemon = start_daemon(root, "--host", "0.0.0.0")
    assert daemon.url.startswith("http://0.0.0.0:")
    daemon.wait_ready_model("machines", 1)  # /ready is open
    read = (root / "read_token").read_text().strip()
    predict = (root / "predict_token").read_text().strip()
    assert os.stat(root / "read_token").st_mode & 0o777 == 0o600
    assert len({read, predict, daemon.token}) == 3 and len(read) >= 43

    def get(path: str, token: str | None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return daemon.get(path, headers=headers).status_code

    for path in OPEN:
        assert get(path, None) == 200, path
    for path in CLOSED:
        for bad in (None, "wrong", read + "x", read[:-1]):
            resp = daemon.get(path, headers={} if bad is None else
                              {"Authorization": f"Bearer {bad}"})
            assert resp.status_code == 401, (path, bad, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer"
            body = resp.json()
            assert body["code"] == "unauthorized" and "read_token" in body["message"]
        expected = 404 if path.endswith(("nothing-here", "M-001")) else 200
        for token in (read, predict, daemon.token):
            assert get(path, token) == expected, path
    # Predictions keep their own gate: the predict token (or the admin one), not the read
    # token; admin actions need the admin token.
    row = {"rows": [{"rpm": 1}]}  # through both gates, then refused by the model
    predict_path = "/v1/pipelines/machines/predict"
    assert daemon.http.post(predict_path, json=row,
                            headers={"Authorization": f"Bearer {read}"}).status_code == 401
    assert daemon.http.post(predict_path, json=row,
                            headers={"Authorization": f"Bearer {predict}"}).status_code == 422
    promote = "/v1/pipelines/machines/models/1/promote"
    for token in (None, read, predict):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert daemon.http.post(promote, headers=headers).status_code == 401
    assert daemon.post(promote, admin=True).status_code == 200
    # The OpenAPI document says so.
    spec = daemon.get("/schema/openapi.json").json()
    events = spec["paths"]["/v1/events"]["get"]
    assert "401" in events["responses"] and events["security"] == [{"bearer": []}]
    assert "401" not in spec["paths"]["/health"]["get"]["responses"]

    # The console: with the read token (read-only), with the admin token, without any.
    async def console(**tokens: str) -> list[str]:
        client = ApplianceClient(daemon.url, **tokens)
        try:
            listed = await client.pipelines()
            await client.events()
            await client.ingestions("machines")
            return [p.name for p in listed.pipelines]
        finally:
            await client.aclose()

    assert asyncio.run(console(read_token=read)) == ["machines"]
    assert asyncio.run(console(token=daemon.token)) == ["machines"]
    with pytest.raises(ApiError) as refused:
        asyncio.run(console())
    assert refused.value.status == 401 and "read_token" in refused.value.message

    # The CLI: from the state directory (the admin token), and from elsewhere with only
    # the read token.
    cli = [sys.executable, "-m", "appliance"]
    out = subprocess.run([*cli, "status", "--state-dir", str(root)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "machines" in out.stdout, out.stderr
    reader = tmp_path / "reader"
    reader.mkdir()
    shutil.copy(root / "read_token", reader / "read_token")
    out = subprocess.run([*cli, "status", "--state-dir", str(reader), "--url", daemon.url],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "machines" in out.stdout, out.stderr
    out = subprocess.run([*cli, "status", "--state-dir", str(tmp_path / "nobody"), "--url",
                          daemon.url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "401" in out.stderr and "read_token" in out.stderr
    assert "reads_need_token" in daemon.log()


def test_on_loopback_reads_stay_open(trained_template, tmp_path, start_daemon):
    root = copy_state(trained_template, tmp_path / "state")
    (root / "appliance.toml").write_text(CONFIG)
    daemon = start_daemon(root)
    assert daemon.get("/v1/events").status_code == 200
    assert daemon.get("/metrics").status_code == 200
    assert not (root / "read_token").exists()
