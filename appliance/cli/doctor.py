"""``appliance doctor``: checks what the daemon needs before (or while) it runs, and says how
to fix what is wrong. Read-only: it never creates or changes anything in the state dir.

Each check returns :class:`Finding`\\ s; ``fail`` means the daemon will not start or will
misbehave, ``warn`` that something deserves a look.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from appliance.core import DASK_INSTALL, ConfigError, Settings, StateDir, dask_missing, load

# Where systemd looks for drop-ins of appliance.service.
DROPIN_DIRS = (Path("/etc/systemd/system/appliance.service.d"),
               Path("/run/systemd/system/appliance.service.d"))

FAIL_FREE_BYTES = 512 * 1024**2  # below this, ingestion and training will soon fail
WARN_FREE_BYTES = 2 * 1024**3
WARN_FREE_FRACTION = 0.10


@dataclass
class Finding:
    check: str
    status: str  # ok | warn | fail
    message: str
    fix: str | None = None


def check_config(state: StateDir, config: Path | None,
                 overrides: dict[str, Any] | None) -> tuple[Settings | None, list[Finding]]:
    source = config or state.config
    try:
        settings = load(state.root, config, overrides)
    except ConfigError as exc:
        where = f"the value of `{exc.key}`" if exc.key else "the file"
        return None, [Finding("config", "fail", str(exc),
                              f"correct {where} in {exc.path or source}, then check again")]
    if config is None and not state.config.exists():
        return settings, [Finding("config", "ok",
                                  f"no {state.config}: every setting has its default")]
    return settings, [Finding("config", "ok", f"{source} is valid")]


def check_state_dir(state: StateDir) -> list[Finding]:
    root = state.root
    if not root.exists():
        return [Finding("state_dir", "warn", f"{root} does not exist yet; the first start "
                        "makes it (under systemd, StateDirectory= does)")]
    st = root.stat()
    if not stat.S_ISDIR(st.st_mode):
        return [Finding("state_dir", "fail", f"{root} is not a directory",
                        "point --state-dir (or APPLIANCE_STATE_DIR) at a directory")]
    out = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        out.append(Finding("state_dir", "fail",
                           f"{root} is writable by other users (mode {mode:04o}): they could "
                           "replace models or data", f"chmod 700 {root}"))
    elif mode & 0o007:
        out.append(Finding("state_dir", "warn",
                           f"{root} is readable by other users (mode {mode:04o}): data and "
                           "models are exposed", f"chmod 700 {root}"))
    if not os.access(root, os.W_OK | os.X_OK):
        out.append(Finding("state_dir", "fail",
                           f"{root} is not writable by this user (uid {os.getuid()}; owner "
                           f"uid {st.st_uid})",
                           "run as the user the daemon runs as, or chown the directory to it"))
    if not out:
        out.append(Finding("state_dir", "ok", f"{root} (mode {mode:04o}, owner uid "
                           f"{st.st_uid})"))
    return out


def check_token(state: StateDir) -> list[Finding]:
    path = state.token_file
    try:
        st = path.lstat()
    except FileNotFoundError:
        return [Finding("token", "ok", f"no {path} yet; the first start makes it (mode 0600)")]
    if not stat.S_ISREG(st.st_mode):
        return [Finding("token", "fail", f"{path} is not a regular file",
                        f"remove it; the next start makes a new token: rm {path}")]
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return [Finding("token", "fail",
                        f"{path} has mode {mode:04o}: other users can read the admin token",
                        f"chmod 600 {path} (and, if it may have leaked, remove it and restart "
                        "to get a new one)")]
    try:
        empty = not path.read_text().strip()
    except OSError as exc:
        return [Finding("token", "fail", f"{path}: {exc.strerror}",
                        "run as the user the daemon runs as (or root)")]
    if empty:
        return [Finding("token", "fail", f"{path} is empty: no client can authenticate",
                        f"rm {path}, then restart: a new token is made")]
    return [Finding("token", "ok", f"{path} (mode {mode:04o})")]


def check_disk(state: StateDir, fail_below: int = FAIL_FREE_BYTES,
               warn_below: int = WARN_FREE_BYTES,
               warn_fraction: float = WARN_FREE_FRACTION) -> list[Finding]:
    path = state.root
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    text = (f"{usage.free / 1e9:.1f} GB free of {usage.total / 1e9:.1f} GB "
            f"({100 * usage.free / usage.total:.0f}%) on the state dir's filesystem")
    fix = ("free space: old files in archive/ and rejected/ can be moved off the box; or "
           "give the state dir a bigger disk")
    if usage.free < fail_below:
        return [Finding("disk", "fail", text + f"; below {fail_below / 1e6:.0f} MB, "
                        "ingestion and training fail", fix)]
    if usage.free < warn_below or usage.free < warn_fraction * usage.total:
        return [Finding("disk", "warn", text + "; running low", fix)]
    return [Finding("disk", "ok", text)]


def check_port(state: StateDir, settings: Settings | None) -> list[Finding]:
    if settings is None:
        return [Finding("port", "warn", "not checked: the config is broken")]
    host, port = settings.server.host, settings.server.port
    if port == 0:
        return [Finding("port", "ok", "port 0: the daemon picks a free port at start")]
    where = f"{host}:{port}"
    try:
        # As the daemon binds (daemon.bind_socket), so the answer is the same.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            ours = _our_daemon_on(state, port)
            if ours:
                return [Finding("port", "ok", f"{where} is in use by this appliance ({ours})")]
            return [Finding("port", "fail", f"{where} is in use by another program",
                            f"find it with `ss -ltnp 'sport = :{port}'` and stop it, or set "
                            "[server] port in appliance.toml (or --port)")]
        fix = "choose another [server] host or port"
        if exc.errno == errno.EACCES:
            fix = ("use a port of 1024 or more: the service has no capability to bind "
                   "privileged ports")
        elif exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
            fix = "set [server] host to an address of this box (or 127.0.0.1, or 0.0.0.0)"
        return [Finding("port", "fail", f"cannot listen on {where}: {exc.strerror or exc}",
                        fix)]
    return [Finding("port", "ok", f"{where} is free")]


def _our_daemon_on(state: StateDir, port: int) -> str | None:
    """A description of this state dir's daemon when it listens on ``port`` and answers."""
    try:
        info = json.loads((state.root / "daemon.json").read_text())
        url, pid = str(info["url"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not url.endswith(f":{port}"):
        return None
    try:
        alive = httpx.get(url + "/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        alive = False
    return f"daemon pid {pid}, answering on {url}" if alive else None


def check_models(state: StateDir) -> list[Finding]:
    import sqlite3

    from appliance.models import Registry
    from appliance.store import Store

    if not state.db.exists():
        return [Finding("models", "ok", "no database yet: no models to check")]
    try:
        store = Store.open_readonly(state.db)
    except sqlite3.Error as exc:
        return [Finding("database", "fail", f"{state.db}: {exc}",
                        "run as the user the daemon runs as (or root); if the file is "
                        "damaged, restore the state dir from a backup (docs/operations.md)")]
    try:
        quick = store.quick_check()
        pending, unknown = store.migration_state()
    except sqlite3.Error as exc:
        store.close()
        return [Finding("database", "fail", f"{state.db}: {exc}",
                        "stop the service and restore the state dir from a backup")]
    if quick != "ok":
        store.close()
        return [Finding("database", "fail", f"{state.db} is damaged: {quick}",
                        "stop the service and restore the state dir from a backup "
                        "(docs/operations.md)")]
    if unknown:
        store.close()
        return [Finding(
            "database", "fail", f"{state.db} was migrated by a newer release of the "
            f"appliance ({', '.join(unknown)}), which this one does not know",
            "install that release again, or restore the backup made before the upgrade")]
    if pending:
        store.close()
        return [Finding("database", "warn", f"{state.db}: the next start applies "
                        f"{len(pending)} migration(s) ({', '.join(pending)}); models are "
                        "checked after it", "back up the state dir before that start")]
    out = [Finding("database", "ok", f"{state.db} (schema up to date, quick_check ok)")]
    registry = Registry(state, store)
    try:
        for pipeline in store.pipelines():
            record = store.production_model(pipeline.name)
            if record is None:
                continue
            name = f"{pipeline.name} v{record.version}"
            try:
                registry.load(pipeline.name, record.version)
            except Exception as exc:
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                out.append(Finding(
                    "models", "fail", f"{name} (production) does not load: {message}",
                    f"promote a version that loads (appliance models {pipeline.name}; "
                    f"appliance promote {pipeline.name} N), or retrain (appliance train "
                    f"{pipeline.name})"))
            else:
                out.append(Finding("models", "ok", f"{name} (production): files match their "
                                   "hashes and load"))
    finally:
        store.close()
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_network(settings: Settings | None,
                  dropin_dirs: tuple[Path, ...] = DROPIN_DIRS) -> list[Finding]:
    if settings is None:
        return []
    host = settings.server.host
    if _is_loopback(host):
        return [Finding("network", "ok", f"the API binds to {host} (this box only)")]
    for folder in dropin_dirs:
        for conf in sorted(folder.glob("*.conf")) if folder.is_dir() else []:
            try:
                text = conf.read_text()
            except OSError:
                continue
            if any(line.strip().startswith("IPAddressAllow=") for line in text.splitlines()):
                return [Finding("network", "ok", f"the API binds to {host}; {conf} widens "
                                "the unit's IPAddressAllow")]
    return [Finding(
        "network", "warn",
        f"the API binds to {host}, but the shipped unit allows only localhost "
        "(IPAddressAllow=localhost): other machines will time out",
        "if it runs under systemd: `systemctl edit appliance`, add `[Service]` and "
        "`IPAddressAllow=<your LAN, e.g. 192.168.10.0/24>`, then `systemctl restart appliance`"
        "; put a firewall or a TLS proxy in front of it too")]


def check_dask(settings: Settings | None, state_root: Path | None = None) -> list[Finding]:
    """When a pipeline trains on Dask: the libraries, the scheduler (a short timeout), and
    the same dask, distributed and lightgbm versions on the scheduler and workers."""
    if settings is None:
        return []
    users = [n for n in settings.pipelines if settings.engine(n) == "dask"]
    if not users and settings.train.engine != "dask":
        return []
    missing = dask_missing()
    if missing:
        return [Finding("dask", "fail", f"engine = \"dask\" needs {', '.join(missing)}, "
                        "which this install lacks", f"run {DASK_INSTALL}")]
    from appliance.models import check_dask_cluster

    return [Finding("dask", status, message, fix)
            for status, message, fix in check_dask_cluster(
                settings.dask, str(state_root) if state_root else "")]


def run_checks(state_root: Path, config: Path | None = None,
               overrides: dict[str, Any] | None = None,
               dropin_dirs: tuple[Path, ...] = DROPIN_DIRS) -> list[Finding]:
    state = StateDir(state_root)
    settings, findings = check_config(state, config, overrides)
    findings += check_state_dir(state)
    findings += check_token(state)
    findings += check_disk(state)
    findings += check_port(state, settings)
    findings += check_network(settings, dropin_dirs)
    findings += check_models(state)
    findings += check_dask(settings, state.root)
    return findings


def render(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.status.upper():<5} {f.check:<10} {f.message}")
        if f.fix and f.status != "ok":
            lines.append(f"{'':16}fix: {f.fix}")
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    if fails:
        lines.append(f"{fails} problem{'s' if fails != 1 else ''} to fix"
                     + (f", {warns} warning{'s' if warns != 1 else ''}" if warns else ""))
    else:
        lines.append("all good" + (f" ({warns} warning{'s' if warns != 1 else ''})"
                                   if warns else ""))
    return "\n".join(lines)


def exit_code(findings: list[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0

