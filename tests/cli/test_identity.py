"""The CLI sends the admin token only to the daemon it trusts (issue 19.17): whatever
answers on the URL of ``daemon.json`` must first prove it holds the token (an HMAC of a
fresh challenge and the port it was reached on); a local user holding the port while the
daemon is down, or relaying to it from another port, gets no token."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from click.testing import CliRunner

from appliance.api_types import identity_problem
from appliance.cli import cli
from appliance.core import StateDir


class Impostor:
    """A program on a local port that answers like the daemon and keeps every header.
    With ``relay_to``, it passes identity challenges on to the real daemon."""

    def __init__(self, relay_to: str | None = None) -> None:
        self.seen: list[tuple[str, str | None]] = []
        seen, relay = self.seen, relay_to

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                seen.append((self.path, self.headers.get("Authorization")))
                path = urlparse(self.path).path
                if relay and path == "/v1/identity":
                    r = httpx.get(relay + self.path, timeout=10)
                    status, body = r.status_code, r.content
                elif path == "/v1/identity":
                    challenge = parse_qs(urlparse(self.path).query)["challenge"][0]
                    status, body = 200, json.dumps(
                        {"port": self.server.server_address[1],
                         "proofs": [challenge, "00" * 32]}).encode()
                else:
                    status, body = 200, json.dumps(
                        {"pipelines": [], "message": "ok", "models": []}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def tokens_seen(self) -> list[str]:
        return [auth for _, auth in self.seen if auth]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def impostor():
    made: list[Impostor] = []

    def make(relay_to: str | None = None) -> Impostor:
        made.append(Impostor(relay_to))
        return made[-1]

    yield make
    for i in made:
        i.close()


def stale_state(tmp_path: Path, url: str) -> Path:
    """A state dir whose daemon is down, its daemon.json left pointing at ``url``."""
    state = StateDir(tmp_path / "state")
    state.create()
    (state.root / "daemon.json").write_text(json.dumps({"pid": 1, "url": url}))
    return state.root


@pytest.mark.parametrize("command", [["status"], ["train", "machines"],
                                     ["promote", "machines", "1"], ["models", "machines"]])
def test_no_token_to_a_program_holding_the_port(tmp_path, impostor, command):
    fake = impostor()
    root = stale_state(tmp_path, fake.url)
    result = CliRunner().invoke(cli, [*command, "--state-dir", str(root)])
    assert fake.tokens_seen() == []
    assert result.exit_code == 1, result.output
    assert fake.url in result.output and "did not prove" in result.output
    assert "token was not sent" in result.output


def test_no_token_through_a_relay_to_the_real_daemon(machines_state, start_daemon, tmp_path,
                                                     impostor):
    """The impostor forwards the challenge to the real daemon on another port: the proof
    names the port the daemon was reached on, not the one the CLI called."""
    daemon = start_daemon(machines_state)
    relay = impostor(relay_to=daemon.url)
    (machines_state / "daemon.json").write_text(json.dumps({"pid": 1, "url": relay.url}))
    result = CliRunner().invoke(cli, ["train", "machines", "--state-dir", str(machines_state)])
    assert relay.tokens_seen() == []
    assert result.exit_code == 1 and "port" in result.output, result.output
    # The real daemon, found where it is, proves itself and gets the call.
    (machines_state / "daemon.json").write_text(json.dumps({"pid": 1, "url": daemon.url}))
    result = CliRunner().invoke(cli, ["status", "--state-dir", str(machines_state)])
    assert result.exit_code == 0, result.output

    # The route itself: a proof for this token, this challenge and this port only.
    challenge = "ab" * 32
    r = daemon.get("/v1/identity", params={"challenge": challenge})
    assert r.status_code == 200 and daemon.token not in r.text
    port = int(daemon.url.rsplit(":", 1)[1])
    assert identity_problem(r.status_code, r.content, daemon.token, challenge, port) is None
    assert identity_problem(r.status_code, r.content, "x" * 43, challenge, port)
    assert identity_problem(r.status_code, r.content, daemon.token, "cd" * 32, port)
    assert identity_problem(r.status_code, r.content, daemon.token, challenge, port + 1)
    bad = daemon.get("/v1/identity", params={"challenge": "not hex"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_request"
