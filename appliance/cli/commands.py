"""The command line: ``appliance <command>``. Each command parses flags and calls the
library; the admin commands talk to the running daemon over its HTTP API."""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import click
import httpx

from appliance import __version__
from appliance.core import ConfigError, Settings, StateDir, load, resolve_state_dir

STATE_DIR_HELP = "state directory [env APPLIANCE_STATE_DIR; default ./appliance-state]"


def _state_option(f: Any) -> Any:
    return click.option("--state-dir", type=click.Path(file_okay=False), default=None,
                        help=STATE_DIR_HELP)(f)


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"appliance: {message}", err=True)
    sys.exit(code)


def load_settings(state_dir: str | None, config: str | None,
                  overrides: dict[str, Any] | None = None) -> tuple[Settings, StateDir]:
    state = StateDir(resolve_state_dir(state_dir))
    try:
        settings = load(state.root, Path(config) if config else None, overrides)
    except ConfigError as exc:
        _fail(f"config error: {exc}")
    return settings, state


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="appliance")
def cli() -> None:
    """An MLOps appliance for one box: drop data in, get a served model out."""


@cli.command()
@_state_option
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="config file [default <state>/appliance.toml when present]")
@click.option("--host", default=None, help="address to bind [default 127.0.0.1]")
@click.option("--port", type=int, default=None, help="port to listen on [default 8080]")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default=None, help="log level [default info]")
def run(state_dir: str | None, config: str | None, host: str | None, port: int | None,
        log_level: str | None) -> None:
    """Run the daemon in the foreground (what systemd starts).

    Example: appliance run --state-dir /var/lib/appliance --port 8080
    """
    from appliance.core import logs
    from appliance.daemon import StartupError
    from appliance.daemon import run as run_daemon

    overrides = {"server.host": host, "server.port": port, "log.level": log_level}
    settings, state = load_settings(state_dir, config, overrides)
    logs.setup(settings.log.level)

    def reload_settings() -> Settings:  # SIGHUP: the same file and flags, read again
        return load(state.root, Path(config) if config else None, overrides)

    try:
        sys.exit(run_daemon(settings, state, reload_settings))
    except StartupError as exc:
        _fail(str(exc), 1)


@cli.command()
@_state_option
@click.option("--port", type=int, default=None,
              help="port of the daemon [default 8080, or any free port when it is taken]")
@click.option("--interval", type=float, default=15.0, show_default=True,
              help="seconds between the sample files fed to the inbox")
@click.option("--no-tui", is_flag=True,
              help="run the daemon in the foreground without the console (headless)")
def demo(state_dir: str | None, port: int | None, interval: float, no_tui: bool) -> None:
    """Run the whole appliance on the sample data, in a fresh state directory.

    The daemon starts, the console opens on it, and the sample files arrive one after
    another while prediction requests flow in: the first file trains version 1, the next
    retrains, a broken file is refused with its reason, a drifted batch follows.
    Quitting the console (q) stops the daemon; the state directory is kept.
    """
    from appliance.cli.demo import run_demo

    sys.exit(run_demo(Path(state_dir) if state_dir else None, port, interval,
                      tui=not no_tui))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--pipeline", required=True, help="the pipeline that receives the file")
@_state_option
def ingest(file: str, pipeline: str, state_dir: str | None) -> None:
    """Drop FILE into the inbox of a pipeline, as if copied there by hand.

    The file is copied under a temporary name and renamed into place, so the daemon takes
    it at once and never sees it half written.

    Example: appliance ingest readings.csv --pipeline machines
    """
    from appliance.core import PIPELINE_NAME

    if not PIPELINE_NAME.match(pipeline):
        _fail(f"`{pipeline}` is not a valid pipeline name (letters, digits, '_', '.', '-')")
    from appliance.cli.dropfile import drop_file
    from appliance.core import ApplianceError

    state = StateDir(resolve_state_dir(state_dir))
    src = Path(file)
    try:
        folder = drop_file(state, pipeline, src)
    except ApplianceError as err:
        _fail(err.message, 1)
    except OSError as exc:
        _fail(f"cannot drop {src} into {state.inbox / pipeline}: {exc.strerror or exc}", 1)
    click.echo(f"dropped {src.name} into {folder}")


# --- commands that talk to the running daemon ----------------------------------------------


class Client:
    """The daemon's API for one command. Before the first call that would carry a token,
    whatever answers on the URL must prove it holds that token (``GET /v1/identity``, an
    HMAC of a fresh challenge and the port it was reached on): a program holding the port
    while the daemon is down, or relaying to it from another port, never gets the token.
    The port is checked when the URL came from ``daemon.json`` (or the default), not when
    the operator named it with ``--url`` (it may go through a tunnel)."""

    def __init__(self, url: str | None, state_dir: str | None) -> None:
        state = StateDir(resolve_state_dir(state_dir))
        self.discovered = url is None
        if url is None:
            try:
                url = json.loads((state.root / "daemon.json").read_text())["url"]
            except (OSError, ValueError, KeyError):
                url = "http://127.0.0.1:8080"
        self.url = url.rstrip("/")
        try:
            self.token = os.environ.get("APPLIANCE_TOKEN") or state.token_file.read_text().strip()
        except OSError:
            self.token = None
        # What reads send when the daemon listens beyond loopback and the admin token is
        # not at hand: the read token, else the predict token (both read).
        self.read_token = os.environ.get("APPLIANCE_READ_TOKEN") or None
        for path in (state.read_token_file, state.predict_token_file):
            if self.read_token:
                break
            try:
                self.read_token = path.read_text().strip() or None
            except OSError:
                pass
        self._http = httpx.Client(timeout=30)  # one connection for the proof and the call
        self._trusted = False

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        token = self.token or self.read_token
        headers = dict(kwargs.pop("headers_extra", None) or {})
        if token:
            self._check_identity(token)  # no token goes to a daemon that has not proved it
            headers["Authorization"] = f"Bearer {token}"
        timeout = kwargs.pop("timeout", 30)
        try:
            resp = self._http.request(method, self.url + path, headers=headers,
                                      timeout=timeout, **kwargs)
        except httpx.HTTPError as exc:
            self._unreachable(exc)
        body = resp.json() if resp.headers.get("content-type", "").startswith(
            "application/json") else resp.text
        if resp.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else body
            _fail(f"{resp.status_code}: {message}", 1)
        return body

    def _check_identity(self, token: str) -> None:
        from appliance.api_types import identity_problem

        if self._trusted:
            return
        challenge = secrets.token_hex(32)
        try:
            resp = self._http.get(self.url + "/v1/identity", params={"challenge": challenge})
        except httpx.HTTPError as exc:
            self._unreachable(exc)
        port = httpx.URL(self.url).port or (443 if self.url.startswith("https") else 80)
        problem = identity_problem(resp.status_code, resp.content, token, challenge,
                                   port if self.discovered else None)
        if problem is not None:
            where = ("the URL in <state>/daemon.json" if self.discovered else "--url")
            _fail(f"{self.url} ({where}) did not prove it is this appliance's daemon: "
                  f"{problem}; the token was not sent. Is the daemon running (`systemctl "
                  "status appliance`, or `appliance run`)? Another program may hold its "
                  "port; or the token (<state>/token, $APPLIANCE_TOKEN) is not this "
                  "daemon's", 1)
        self._trusted = True

    def _unreachable(self, exc: Exception) -> None:
        _fail(f"cannot reach the daemon at {self.url} ({exc}); is `appliance run` running?", 1)


def _client_options(f: Any) -> Any:
    f = click.option("--url", default=None,
                     help="the daemon's API [default: from the state dir, else :8080]")(f)
    return _state_option(f)


@cli.command()
@_client_options
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
@click.option("--fleet", "fleet_file", type=click.Path(dir_okay=False), default=None,
              help="every box of this fleet file (TOML [[box]] entries) in one table; exit "
                   "1 when a box does not answer")
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=5.0, show_default=True,
              help="with --fleet: seconds a box has to answer")
def status(url: str | None, state_dir: str | None, as_json: bool, fleet_file: str | None,
           timeout: float) -> None:
    """One screen of the daemon's state, for scripts and ssh.

    With --fleet FILE: every box of the fleet in one table (--json for scripts)."""
    if fleet_file is not None:
        from appliance.cli.fleet import status_fleet

        sys.exit(status_fleet(fleet_file, as_json, timeout, bool(url)))
    client = Client(url, state_dir)
    body = client.call("GET", "/v1/pipelines")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"daemon {client.url}")
    rows = body["pipelines"]
    if not rows:
        click.echo("no pipelines yet: drop a CSV into <state>/inbox/<pipeline>/")
    for p in rows:
        metric = (f"{p['primary_metric']}={p['primary_metric_value']:.4f}"
                  if p.get("primary_metric_value") is not None else "-")
        held = (f"  held={p['held']} (suspect labels: appliance release|discard)"
                if p.get("held") else "")
        click.echo(f"  {p['name']:<20} {p['status']:<18} production=v{p['production_version']}"
                   f"  {metric}  datasets={p['datasets']} rows={p['rows']}{held}")


@cli.command()
@click.argument("name")
@click.option("--tune", "tune", type=click.IntRange(0, 10_000), default=None, metavar="N",
              help="search hyperparameters over N trials (Optuna), within train.tune_seconds "
                   "[default: train.tune_trials of the config]")
@_client_options
def train(name: str, tune: int | None, url: str | None, state_dir: str | None) -> None:
    """Start a training job for pipeline NAME.

    The new version replaces production only if it passes the gate; `appliance models
    NAME` shows the verdict. Example: appliance train machines --tune 30
    """
    kwargs = {"json": {"tune_trials": tune}} if tune is not None else {}
    body = Client(url, state_dir).call("POST", f"/v1/pipelines/{name}/retrain", **kwargs)
    click.echo(body["message"])


@cli.command()
@click.argument("name")
@_client_options
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
@click.option("--compare", is_flag=True,
              help="score every kept version on the same rows (the newest version's "
                   "held-out rows), beside production")
def models(name: str, url: str | None, state_dir: str | None, as_json: bool,
           compare: bool) -> None:
    """List the model versions of pipeline NAME with metrics and stage.

    Each version's metrics are on its own held-out rows; --compare scores them all on the
    same newest rows (a backtest). Example: appliance models machines --compare
    """
    body = Client(url, state_dir).call("GET", f"/v1/pipelines/{name}/models",
                                       params={"compare": "true"} if compare else None)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    if compare:
        click.echo(comparison_text(name, body.get("comparison") or {}))
        return
    if not body["models"]:
        click.echo(f"{name}: no model versions yet")
    for m in body["models"]:
        metrics = " ".join(f"{k}={v:.4f}" for k, v in m["metrics"].items()
                           if isinstance(v, float))
        click.echo(f"v{m['version']:<4} {m['stage']:<11} {m['task']:<11} {metrics}")
        if m.get("decision"):
            click.echo(f"      {m['decision']}")
        if m.get("policy_state"):
            click.echo(f"      policy: {m['policy_state']}")
        if m.get("source") and m["source"] != "trained here":
            key = f" (key {m['key_id']})" if m.get("key_id") else ""
            click.echo(f"      source: {m['source']}{key}")
        lineage = m.get("lineage") or {}
        if lineage.get("datasets") is not None:
            versions = [d["version"] for d in lineage["datasets"]]
            shown = (f"v{versions[0]}..v{versions[-1]}" if len(versions) > 1
                     else f"v{versions[0]}" if versions else "-")
            window = (lineage.get("window") or {}).get("kind", "all")
            tuning = lineage.get("tuning")
            tuned = (f"  tuned: {tuning['trials_completed']} trials, {tuning['chosen']}"
                     if tuning else "")
            click.echo(f"      data sets {shown}, {lineage.get('rows')} rows ({window}), "
                       f"trained {lineage.get('trained_at', m['created_at'])} in "
                       f"{lineage.get('training_seconds', 0):.1f}s{tuned}")


def comparison_text(name: str, c: dict[str, Any]) -> str:
    """The backtest as a table: every version on the same rows, beside production."""
    if not c.get("rows_from_version"):
        return f"{name}: nothing to compare ({c.get('note') or 'no model versions yet'})"
    metric = c["metric"]
    span = (f", {c['first_timestamp']} to {c['last_timestamp']}"
            if c.get("first_timestamp") else "")
    lines = [f"{name}: every version on v{c['rows_from_version']}'s {c['rows']} held-out "
             f"rows (the newest data{span}), {metric}:"]
    prod = c.get("production_version")
    for s in c["scores"]:
        head = f"  v{s['version']:<4} {s['stage']:<11}"
        if s.get("value") is None:
            lines.append(f"{head} {'-':>8}  {s.get('note') or ''}")
            continue
        if s["version"] == prod:
            vs = "production"
        elif s.get("vs_production") is not None:
            se = s.get("standard_error")
            shown = f" ± {se:.4f}" if se is not None else ""
            vs = f"{s['vs_production']:+.4f}{shown} vs v{prod}"
        else:
            vs = ""
        lines.append(f"{head} {s['value']:>8.4f}  {vs}")
    baseline = c.get("baseline")
    if baseline and metric in baseline:
        lines.append(f"  {'baseline':<16} {baseline[metric]:>8.4f}  (class prior or mean)")
    lines.append("  (+: better than production; ± one standard error, paired on these rows)")
    return "\n".join(lines)


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@_client_options
def promote(name: str, version: int, url: str | None, state_dir: str | None) -> None:
    """Make VERSION of pipeline NAME the production model (rollback too)."""
    body = Client(url, state_dir).call("POST", f"/v1/pipelines/{name}/models/{version}/promote")
    click.echo(f"{name}: v{body['version']} is production (was v{body['previous_version']})")


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@_client_options
def release(name: str, version: int, url: str | None, state_dir: str | None) -> None:
    """Let data set VERSION of pipeline NAME train: one held for suspect labels (the
    `suspect_labels` event and the TUI's Data tab name it), or one discarded.

    Its rows then count as new data (retrain.min_new_rows). Example: appliance release
    machines 3
    """
    body = Client(url, state_dir).call(
        "POST", f"/v1/pipelines/{name}/datasets/{version}/release")
    click.echo(f"{name}: {body['message']}")


@cli.command()
@click.argument("name")
@click.argument("version", type=int)
@_client_options
def discard(name: str, version: int, url: str | None, state_dir: str | None) -> None:
    """Keep data set VERSION of pipeline NAME, held for suspect labels, out of training.

    Nothing is deleted: the original stays in archive/ and the data set in datasets/;
    `appliance release NAME VERSION` lets it train after all.
    """
    body = Client(url, state_dir).call(
        "POST", f"/v1/pipelines/{name}/datasets/{version}/discard")
    click.echo(f"{name}: {body['message']}")


@cli.command()
@click.argument("name")
@click.option("--json", "rows_json", required=True,
              help='a row or a list of rows, e.g. \'{"temperature_c": 71.5, ...}\'; '
                   "@FILE reads it from a file")
@click.option("--explain", type=click.IntRange(1, 10_000), is_flag=False, flag_value=5,
              default=None, metavar="[K]",
              help="explain each prediction: the base value and the K largest feature "
                   "contributions (exact TreeSHAP, raw-score units; K defaults to 5)")
@_client_options
def predict(name: str, rows_json: str, explain: int | None, url: str | None,
            state_dir: str | None) -> None:
    """Predict with pipeline NAME's production model (the answer as JSON)."""
    text = Path(rows_json[1:]).read_text() if rows_json.startswith("@") else rows_json
    try:
        rows = json.loads(text)
    except ValueError as exc:
        _fail(f"--json is not valid JSON: {exc}")
    if isinstance(rows, dict):
        rows = rows["rows"] if "rows" in rows and isinstance(rows["rows"], list) else [rows]
    request: dict[str, Any] = {"rows": rows}
    if explain is not None:
        request["explain"] = explain
    body = Client(url, state_dir).call("POST", f"/v1/pipelines/{name}/predict", json=request)
    click.echo(json.dumps(body, indent=2))


@cli.group()
def pipeline() -> None:
    """Manage pipelines (admin): `appliance pipeline delete NAME`."""


@pipeline.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation (for scripts)")
@click.option("--force", is_flag=True,
              help="delete it even while it serves a model (its clients then get 404)")
@_client_options
def pipeline_delete(name: str, yes: bool, force: bool, url: str | None,
                    state_dir: str | None) -> None:
    """Delete pipeline NAME: its data sets, models, file records, predictions, monitoring and
    its files in inbox/, processing/, archive/, rejected/, datasets/ and models/.

    Asks first (--yes does not). Refused while it trains, and while it serves a model unless
    --force. A pipeline declared in appliance.toml stays declared, with no data; a file
    dropped into its folder later starts it afresh.

    Example: appliance pipeline delete junk --yes
    """
    client = Client(url, state_dir)
    if not yes:
        detail = client.call("GET", f"/v1/pipelines/{name}")
        serving = detail.get("production")
        what = (f"pipeline `{name}`: {detail.get('datasets', 0)} data set versions, "
                f"{detail.get('models', 0)} models, "
                f"{sum((detail.get('ingestions') or {}).values())} file records"
                + (f", serving v{serving['version']}" if serving else ""))
        click.confirm(f"Delete {what}, and all its files? This cannot be undone", abort=True)
    params = {"force": "true"} if force else {}
    # It may wait up to a minute for a file being ingested, then remove many files.
    body = client.call("DELETE", f"/v1/pipelines/{name}", params=params, timeout=300)
    click.echo(body["message"])


# --- operating the box -------------------------------------------------------------------


@cli.command()
@_state_option
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="config file [default <state>/appliance.toml when present]")
@click.option("--host", default=None, help="check this address instead of the config's")
@click.option("--port", type=int, default=None, help="check this port instead of the config's")
def doctor(state_dir: str | None, config: str | None, host: str | None,
           port: int | None) -> None:
    """Check the config, the state dir and token permissions, free disk, the port and the
    production models; print what to fix. Exit status 1 when something must be fixed.

    Read-only; safe while the daemon runs. Under systemd, as root:

    Example: sudo /opt/appliance/venv/bin/appliance doctor --state-dir /var/lib/appliance
    """
    from appliance.cli.doctor import exit_code, render, run_checks

    findings = run_checks(resolve_state_dir(state_dir), Path(config) if config else None,
                          {"server.host": host, "server.port": port})
    click.echo(render(findings))
    sys.exit(exit_code(findings))


@cli.command()
@click.argument("dest", type=click.Path(file_okay=False))
@_state_option
@click.option("--without-originals", is_flag=True,
              help="leave out archive/ and rejected/ (the dropped files as they came)")
def backup(dest: str, state_dir: str | None, without_originals: bool) -> None:
    """Copy the state directory to DEST (new or empty), safely while the daemon runs.

    The database is copied with SQLite's online backup, then the models, data sets, config,
    token and (unless --without-originals) the original files. Symlinks are copied as
    links, never what they point at; FIFOs, sockets and devices are left out (and listed).
    To restore: stop the service, put the copy in place of the state directory, start it.

    Example: appliance backup /mnt/usb/appliance-2026-03-01 --state-dir /var/lib/appliance
    """
    from appliance.cli.backup import backup as run_backup
    from appliance.core import ApplianceError

    state = StateDir(resolve_state_dir(state_dir))
    try:
        result = run_backup(state, Path(dest), originals=not without_originals)
    except ApplianceError as err:
        _fail(err.message, 1)
    click.echo(f"backed up {state.root} to {result.dest}: {result.files} files, "
               f"{result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s")
    if result.vanished:
        click.echo(f"{len(result.vanished)} file(s) moved while copying (taken by the "
                   "running daemon); the database copy is consistent without them")
    if result.skipped:
        click.echo(f"{len(result.skipped)} special file(s) left out (FIFOs, sockets or "
                   f"devices, refused drops): {', '.join(result.skipped)}")


def runfile_url(state_dir: str | None) -> str | None:
    """The URL in ``<state>/daemon.json``, read fresh each time (a restarted daemon may
    have moved to another port)."""
    state = StateDir(resolve_state_dir(state_dir))
    try:
        return json.loads((state.root / "daemon.json").read_text())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@cli.command()
@_client_options
@click.option("--token", default=None,
              help="admin token for promote/retrain [env APPLIANCE_TOKEN; default <state>/token]")
@click.option("--read-token", default=None,
              help="token for reads when the daemon listens beyond loopback [env "
                   "APPLIANCE_READ_TOKEN; default <state>/read_token, else the admin token]")
@click.option("--refresh", type=click.FloatRange(0.2, 60), default=1.5, show_default=True,
              help="seconds between refreshes")
@click.option("--pipeline", default=None, help="open this pipeline's screen first")
@click.option("--fleet", "fleet_file", type=click.Path(dir_okay=False), default=None,
              help="watch every box of this fleet file (TOML [[box]] entries); enter opens "
                   "a box [--refresh default 5 s here]")
def tui(url: str | None, state_dir: str | None, token: str | None, read_token: str | None,
        refresh: float, pipeline: str | None, fleet_file: str | None) -> None:
    """The operator's console: watch and drive a running daemon from the terminal.

    It talks to the daemon's HTTP API only, so it works the same over ssh. Without the
    admin token it is read-only. With --fleet FILE, many boxes at once.

    Example: appliance tui --state-dir /var/lib/appliance
    """
    if fleet_file is not None:
        from appliance.cli.fleet import tui_fleet

        source = click.get_current_context().get_parameter_source("refresh")
        sys.exit(tui_fleet(fleet_file, None if source is click.core.ParameterSource.DEFAULT
                           else refresh, bool(url or token or read_token or pipeline)))
    from tui.app import run as run_tui

    client = Client(url, state_dir)
    discover = None if url else (lambda: runfile_url(state_dir))
    sys.exit(run_tui(client.url, token or client.token, discover=discover,
                     refresh_seconds=refresh, open_pipeline=pipeline,
                     read_token=read_token or client.read_token))


@cli.command()
@click.argument("name", required=False)
@click.argument("key", required=False)
@_client_options
@click.option("--json", "as_json", is_flag=True, help="print the raw JSON")
def features(name: str | None, key: str | None, url: str | None, state_dir: str | None,
             as_json: bool) -> None:
    """List the feature sets; with NAME, one of them; with NAME KEY, an entity's values.

    Example: appliance features machine_info M-007
    """
    client = Client(url, state_dir)
    if name and key:
        body = client.call("GET", f"/v1/feature-sets/{name}/{key}")
    elif name:
        body = client.call("GET", f"/v1/feature-sets/{name}")
    else:
        body = client.call("GET", "/v1/feature-sets")
    if as_json or (name and key):
        click.echo(json.dumps(body, indent=2))
        return
    sets = [body] if name else body["feature_sets"]
    if not sets:
        click.echo('no feature sets; declare one with [feature_sets.NAME] key = "..."')
    for fs in sets:
        click.echo(f"{fs['name']:<20} key={fs['key']:<14} keys={fs['keys']:<6} "
                   f"rows={fs['rows']:<8} datasets={fs['datasets']} "
                   f"updated={fs['updated_at'] or '-'} used by={','.join(fs['used_by']) or '-'}")


def main() -> None:
    cli(prog_name="appliance")
