"""The console's parts: the client's reading of the daemon's answers, the formatting, the
filter, the palette, features that light up when the daemon gains them, the import
contract, and the demo opening the console on its own daemon."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
from textual.widgets import Input, Static

from appliance.api_types import ErrorBody, Health, Identity, identity_proof
from tests.conftest import ROOT
from tests.tui.test_tui import SIZE, column, rows, text_of, until
from tests.tui.tui_fixture import NOW, fixture_app
from tui import format as fmt
from tui.client import ApiError, ApplianceClient, DaemonUnavailable, NotAvailable
from tui.screens.pipeline import PipelineScreen
from tui.widgets.box_panel import BoxPanel
from tui.widgets.drift_bars import DriftBars, bar
from tui.widgets.filter_table import FilterTable

# --- the client ------------------------------------------------------------------------


def _client(handler, token: str | None = "tok") -> ApplianceClient:
    return ApplianceClient("http://d.test", token, transport=httpx.MockTransport(handler))


def _json(status: int, body: object) -> httpx.Response:
    return httpx.Response(status, content=msgspec.json.encode(body),
                          headers={"content-type": "application/json"})


def _identity(request: httpx.Request, token: str) -> httpx.Response:
    """What a daemon holding ``token`` answers to GET /v1/identity (the console proves it
    before any call that carries the token)."""
    challenge = request.url.params["challenge"]
    return _json(200, Identity(port=80, proofs=[identity_proof(token, challenge, 80)]))


async def test_a_missing_route_is_not_available_but_a_missing_pipeline_is_an_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/system":
            return _json(404, ErrorBody(code="not_found", message="Not Found"))
        return _json(404, ErrorBody(code="unknown_pipeline", message="no pipeline `x`"))

    client = _client(handler)
    with pytest.raises(NotAvailable) as missing:
        await client.system()
    assert "GET /v1/system is not available from this daemon yet" in str(missing.value)
    with pytest.raises(ApiError) as unknown:
        await client.pipeline("x")
    assert not isinstance(unknown.value, NotAvailable)
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_pipeline")
    await client.aclose()


async def test_a_closed_port_is_named_refused_so_the_banner_can_say_what_to_do():
    # asyncio says "All connection attempts failed"; the refusal is in its cause chain.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]          # closed again: nothing listens there now
    client = ApplianceClient(f"http://127.0.0.1:{port}")
    with pytest.raises(DaemonUnavailable) as exc:
        await client.pipelines()
    assert exc.value.reason == "connection refused"
    await client.aclose()


async def test_nothing_answering_is_daemon_unavailable():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    client = _client(handler)
    with pytest.raises(DaemonUnavailable) as exc:
        await client.pipelines()
    assert exc.value.reason == "connection refused"
    assert "http://d.test is not answering" in str(exc.value)
    await client.aclose()


async def test_an_answer_of_the_wrong_shape_says_so():
    client = _client(lambda r: _json(200, {"pipelines": [{"name": 3}]}))
    with pytest.raises(ApiError) as exc:
        await client.pipelines()
    assert exc.value.code == "bad_response" and "same version" in exc.value.message
    await client.aclose()


def _identity(request: httpx.Request, token: str = "tok", port: int = 80) -> httpx.Response:
    challenge = request.url.params["challenge"]
    return _json(200, Identity(port=port, proofs=[identity_proof(token, challenge, port)]))


async def test_admin_calls_send_the_token_and_refuse_without_one():
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.url.path == "/v1/identity":
            return _identity(request)
        return _json(202, {"pipeline": "m", "started": True, "message": "training started"})

    client = _client(handler)
    assert (await client.retrain("m")).started
    assert seen == [None, "Bearer tok"]  # the proof first, without the token
    await client.aclose()
    anonymous = _client(handler, token=None)
    with pytest.raises(ApiError) as exc:
        await anonymous.promote("m", 1)
    assert exc.value.code == "no_token" and "--token" in exc.value.message
    assert len(seen) == 2  # nothing was sent
    await anonymous.aclose()


@pytest.mark.parametrize("answer", ["wrong proof", "not the daemon", "relayed", "no route"])
async def test_no_token_to_whatever_does_not_prove_it_is_the_daemon(answer):
    """Issue 19.17: a program holding the daemon's port (or relaying to it from another
    port) gets no token from the console."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.url.path != "/v1/identity":
            return _json(202, {"pipeline": "m", "started": True, "message": "ok"})
        if answer == "wrong proof":
            return _identity(request, token="not-tok")
        if answer == "relayed":
            return _identity(request, port=8081)
        if answer == "no route":
            return _json(404, ErrorBody(code="not_found", message="Not Found"))
        return _json(200, {"pipelines": []})

    client = ApplianceClient("http://d.test", "tok", discover=lambda: "http://d.test",
                             transport=httpx.MockTransport(handler))
    with pytest.raises(ApiError) as exc:
        await client.retrain("m")
    assert exc.value.code == "not_our_daemon" and "token was not sent" in exc.value.message
    assert seen == [None]
    await client.aclose()


async def test_rediscover_follows_the_runfile():
    urls = ["http://d.test"]
    client = ApplianceClient("http://d.test", None, discover=lambda: urls[-1],
                             transport=httpx.MockTransport(
                                 lambda r: _json(200, Health(status="ok", version=r.url.host))))
    assert not client.rediscover()
    urls.append("http://moved.test:9")
    assert client.rediscover() and client.url == "http://moved.test:9"
    assert (await client.health()).version == "moved.test"
    await client.aclose()


async def test_gather_raises_what_was_raised_and_keeps_what_was_returned():
    from tui.client import gather

    async def value(v: object) -> object:
        return v

    async def fail(exc: Exception) -> None:
        raise exc

    missing = NotAvailable(404, "not_found", "no route")
    assert await gather(value(1), value(missing)) == [1, missing]
    with pytest.raises(DaemonUnavailable):
        await gather(fail(ApiError(500, "x", "boom")), fail(DaemonUnavailable("u", "gone")))


# --- what numbers look like ----------------------------------------------------------------


def test_formatting():
    now = datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
    assert fmt.ago("2026-03-02T09:59:48.000Z", now) == "12s ago"
    assert fmt.ago("2026-03-02T09:47:00Z", now) == "13m ago"
    assert fmt.ago("2026-02-27T10:00:00Z", now) == "3d ago"
    assert fmt.ago(None, now) == fmt.NONE == "–"
    assert fmt.until("2026-03-02T10:00:40+00:00", now) == "in 40s"
    assert fmt.ms(1.84) == "1.8ms" and fmt.ms(250.4) == "250ms" and fmt.ms(None) == "–"
    assert fmt.percent(0.002) == "0.2%" and fmt.rate(None) == "–"
    assert fmt.size(38 * 2**30) == "38.0 GiB"
    assert fmt.dtype("Datetime(time_unit='us', time_zone=None)") == "Datetime"
    assert fmt.duration("2026-03-02T10:00:00Z", "2026-03-02T10:00:00.250Z") == "250ms"


def test_drift_bar_marks_the_threshold_and_fills_to_the_value():
    text = bar(0.3, scale=0.4, width=20, threshold=0.2).plain
    assert len(text) == 20
    assert text[10] == "┃"  # the threshold, inside the filled part
    assert text[:10] == "█" * 10 and text[14] != "·" and text[-1] == "·"
    low = bar(0.05, scale=0.4, width=20, threshold=0.2).plain
    assert low[10] == "│" and low[:2] == "██"


# --- the console on fixed data ---------------------------------------------------------


async def test_filtering_a_table_and_clearing_the_filter():
    app = fixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        files = app.screen.query_one("#ingestions", FilterTable)
        await until(pilot, lambda: files.row_count == 4, 5, "the files")
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"broken")
        assert list(rows(files)) == ["3"]
        assert "filter “broken”: 1 of 4" in str(files.border_title)
        await pilot.press("enter")  # keeps the filter, back to the table
        assert app.focused is files and files.row_count == 1
        await pilot.press("slash", "escape")
        assert files.row_count == 4 and files.filter_text == ""


async def test_read_only_without_a_token():
    from tests.tui.tui_fixture import clock, transport
    from tui.app import make_app

    app = make_app("http://appliance.test", None, transport=transport(), clock=clock,
                   refresh_seconds=3600)
    async with app.run_test(size=SIZE) as pilot:
        assert "read-only" in app.sub_title
        await pilot.press("enter", "2")
        models = app.screen.query_one("#models-table", FilterTable)
        await until(pilot, lambda: models.row_count == 4, 5, "the models")
        await pilot.press("down", "down", "p", "y")  # v2, an older one: a rollback
        await until(pilot, lambda: any("needs the admin token" in n.message
                                       for n in app._notifications), 5, "the refusal")


async def test_palette_offers_the_actions():
    app = fixture_app()
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.pipelines, 5, "the pipelines")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Help", "Refresh now", "Open pipeline machines", "Retrain machines",
                "Quit"} <= set(titles)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "machines: drift tab" in titles
        assert "Promote or roll back machines to the highlighted version" in titles


async def test_features_light_up_when_the_daemon_gains_them():
    missing = {"/v1/system", "/v1/pipelines/machines/drift"}
    from tests.tui.tui_fixture import clock, routes
    from tui.app import make_app

    table = routes()

    def handler(request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        if key == ("GET", "/v1/identity"):
            return _identity(request, "t")
        if request.url.path in missing or key not in table:
            return _json(404, ErrorBody(code="not_found", message="Not Found"))
        return _json(200, table[key])

    table[("GET", "/v1/events")] = {"events": []}
    app = make_app("http://appliance.test", "t", transport=httpx.MockTransport(handler),
                   clock=clock, refresh_seconds=0.1)
    async with app.run_test(size=SIZE) as pilot:
        box = app.screen.query_one(BoxPanel)
        note = box.query_one("#box-note", Static)
        await until(pilot, lambda: "not available from this daemon yet" in text_of(note), 5,
                    "the box placeholder")
        assert not app._notifications  # calm: no error
        await pilot.press("enter", "3")
        drift_note = app.screen.query_one("#drift-note", Static)
        await until(pilot, lambda: "Drift is not available" in text_of(drift_note), 5,
                    "the drift placeholder")
        missing.clear()  # the daemon is upgraded
        await until(pilot, lambda: "DRIFT: 3 of 9 features (33%), carrying 41% of the "
                    "model's gain" in text_of(drift_note), 5, "drift to appear")
        assert app.screen.query_one(DriftBars).report is not None
        await pilot.press("escape")
        await until(pilot, lambda: "CPU" in text_of(app.screen.query_one("#box-cpu")), 5,
                    "the box to appear")
        assert not app._notifications


async def test_overview_columns_from_monitoring():
    app = fixture_app()
    async with app.run_test(size=SIZE) as pilot:
        table = app.screen.query_one("#pipelines", FilterTable)
        await until(pilot, lambda: table.row_count == 3, 5, "the pipelines")
        assert [column(table, "machines", k) for k in
                ("model", "metric", "rps", "p50", "p99", "err", "drift", "last")] == [
            "v3", "auc 0.912", "4.2", "1.8ms", "6.4ms", "0.2%", "drift 41%", "13m ago"]
        assert column(table, "energy", "drift") == "drift 50%"  # no gains: the feature share
        assert column(table, "vision", "status") == "waiting for data"
        assert column(table, "vision", "rps") == "–"
        assert NOW.tzinfo is UTC


# --- the contract: the TUI is an HTTP client ---------------------------------------------


def test_import_contracts():
    code = ("from importlinter.cli import lint_imports; "
            "raise SystemExit(lint_imports(config_filename='pyproject.toml', no_cache=True, "
            "no_logo=True))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # The TUI's two contracts, by name (tests/test_layout.py checks the package layers).
    for kept in ("The TUI is a client of the HTTP API: from appliance it imports only "
                 "api_types KEPT", "The daemon runs without the TUI: only the cli and the "
                 "demo launch it KEPT"):
        assert kept in done.stdout, done.stdout


def test_the_tui_loads_nothing_of_the_daemon():
    code = ("import sys, tui.app, tui.screens.pipeline, tui.screens.overview; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'appliance'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['appliance', 'appliance.api_types']"


# --- the demo ------------------------------------------------------------------------------


async def test_demo_opens_the_console_on_its_daemon_and_stops_it(tmp_path):
    import asyncio

    from appliance.cli.demo import Demo, welcome
    from tui.app import make_app

    demo = Demo(tmp_path / "demo", interval=0.3, rate=20)
    demo.prepare()
    url = await asyncio.to_thread(demo.start_daemon, 0)
    try:
        demo.start_feeding()
        app = make_app(url, demo.token(), refresh_seconds=0.2, discover=demo.url,
                       welcome=welcome(0.3))
        async with app.run_test(size=SIZE) as pilot:
            assert any("This is the demo" in n.message for n in app._notifications)
            table = app.screen.query_one("#pipelines", FilterTable)
            await until(pilot, lambda: "machines" in rows(table)
                        and column(table, "machines", "model").startswith("v"), 60,
                        "a served model")
            feed = app.screen.query_one("#events", FilterTable)
            await until(pilot, lambda: any("refused" in r for r in rows(feed).values()), 30,
                        "the broken file to be refused")
            await until(pilot, lambda: demo.predictions > 0, 30, "predictions to flow")
    finally:
        code = await asyncio.to_thread(demo.stop)
    assert code == 0  # stopped cleanly on SIGTERM
    assert not demo.runfile.exists()
    assert "stopped" in demo.log_path.read_text()


def test_headless_demo_runs_the_loop_and_stops_on_sigterm(tmp_path):
    import json
    import signal

    from tests.conftest import wait_for

    state = tmp_path / "demo"
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "demo", "--no-tui", "--port",
                             "0", "--interval", "0.3", "--state-dir", str(state)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (state / "daemon.json").exists(), 60, what="the daemon")
        url = json.loads((state / "daemon.json").read_text())["url"]

        def refused_and_served() -> bool:
            files = httpx.get(f"{url}/v1/pipelines/machines/ingestions").json()["ingestions"]
            return any(f["status"] == "rejected" for f in files) and \
                httpx.get(f"{url}/ready").json()["models"].get("machines", 0) >= 1
        wait_for(refused_and_served, 60, what="a served model and a refused file")

        def windows() -> list[dict]:
            return httpx.get(f"{url}/v1/pipelines/machines/metrics?seconds=600").json()[
                "windows"]
        # Its clients start once a model serves: the overview's errors are 0, not the wait.
        wait_for(lambda: sum(w["requests"] for w in windows()) >= 5, 30,
                 what="the demo's prediction requests")
        assert sum(w["errors_4xx"] + w["errors_5xx"] for w in windows()) == 0, windows()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "appliance demo (no TUI)" in (tmp_path / "demo.log").read_text()
    assert not (state / "daemon.json").exists()


# --- the feature store on the Data tab ---------------------------------------------------


async def test_feature_sets_an_older_daemon_lacks_get_a_placeholder_then_appear():
    """An older daemon answers 404 to /v1/feature-sets: a calm line, no error; once the
    daemon has the route, the feature sets this pipeline joins show with their freshness,
    and one that joins none says what is declared and how to join it."""
    from tests.tui.tui_fixture import FEATURE_SETS, clock, routes
    from tui.app import make_app

    table = routes()
    missing = {"/v1/feature-sets"}

    def handler(request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        if key == ("GET", "/v1/identity"):
            return _identity(request, "t")
        if request.url.path in missing or key not in table:
            return _json(404, ErrorBody(code="not_found", message="Not Found"))
        return _json(200, table[key])

    table[("GET", "/v1/events")] = {"events": []}
    app = make_app("http://appliance.test", "t", transport=httpx.MockTransport(handler),
                   clock=clock, refresh_seconds=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PipelineScreen), 5, "the screen")
        screen = app.screen
        note = screen.query_one("#feature-note", Static)
        sets = screen.query_one("#feature-sets", FilterTable)
        await until(pilot, lambda: "Feature sets are not available from this daemon yet"
                    in text_of(note), 5, "the placeholder")
        assert note.display and not sets.display
        assert not app._notifications  # calm: no error

        missing.clear()  # the daemon is upgraded
        await until(pilot, lambda: sets.display and sets.row_count == 2, 5, "the table")
        assert not note.display
        # Only the sets `machines` joins (tariffs is energy's), with their freshness.
        assert rows(sets) == {
            "machine_info": ["machine_info", "machine_id", "60", "40", "2m ago", "26h ago",
                             "2m ago"],
            "site_weather": ["site_weather", "site", "0", "none yet", "–", "no time column",
                             "–"],
        }
        assert sets.title == "feature sets joined (2)"
        assert sets.border_subtitle == "no values yet: drop a file into inbox/site_weather/"

        # A pipeline that joins none: the table goes, a note names what is declared.
        table[("GET", "/v1/feature-sets")] = msgspec.structs.replace(
            FEATURE_SETS, feature_sets=[msgspec.structs.replace(f, used_by=["energy"])
                                        for f in FEATURE_SETS.feature_sets])
        await until(pilot, lambda: not sets.display and note.display, 5, "the note")
        assert text_of(note) == (
            "Joins no feature set (3 declared: machine_info, site_weather, tariffs). Join "
            'one with [pipelines.machines] join = ["machine_info"] in appliance.toml.')
        assert not app._notifications


async def test_the_client_reads_one_feature_set_and_one_entity_and_quotes_the_key():
    from appliance.api_types import OnlineFeatures
    from tests.tui.tui_fixture import FEATURE_SETS

    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        if request.url.path == "/v1/feature-sets/machine_info":
            return _json(200, FEATURE_SETS.feature_sets[0])
        return _json(200, OnlineFeatures(feature_set="machine_info", key="M 1/2",
                                         values={"rated_current": 11.0}, event_time=None,
                                         dataset_version=1, updated_at="2026-03-02T10:00:00Z"))

    client = _client(handler)
    assert (await client.feature_set("machine_info")).keys == 40
    online = await client.online_features("machine_info", "M 1/2")
    assert online.values == {"rated_current": 11.0}
    assert seen[-1] == "/v1/feature-sets/machine_info/M%201%2F2"
    await client.aclose()


async def test_the_console_sends_no_token_with_a_read_to_what_cannot_prove_it_holds_it():
    """A program on the daemon's port while the daemon is down (or a wrong address) answers
    the console: it gets no token, not even with a read, and the console says why."""
    from tests.tui.tui_fixture import clock, routes
    from tui.app import make_app

    table = routes()
    seen: list[tuple[str, str | None]] = []

    def impostor(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/v1/identity":
            return _identity(request, "not-the-token")
        key = (request.method, request.url.path)
        return _json(200, table[key]) if key in table else _json(
            404, ErrorBody(code="not_found", message="Not Found"))

    app = make_app("http://appliance.test", "t0ken", transport=httpx.MockTransport(impostor),
                   clock=clock, refresh_seconds=0.1)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(seen) >= 3, 5, "a few polls")
        problem = app.screen.query_one("#problem", Static)
        await until(pilot, lambda: "did not prove" in text_of(problem), 5, "the reason")
    assert seen and {path for path, _ in seen} == {"/v1/identity"}, seen
    assert all(auth is None for _, auth in seen)
