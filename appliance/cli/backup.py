"""``appliance backup DEST``: a consistent copy of the state directory, safe while the daemon
runs.

The database is copied first, with SQLite's online backup (a consistent snapshot even
while the daemon writes). Model versions and data set files are written before the rows
that name them and never changed afterwards, so every file the snapshot names is already
on disk and lands in the copy. Files written after the snapshot may be copied too; the
next start on the copy removes model folders the database does not know.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.core import ApplianceError, StateDir
from appliance.store import Store

# Never copied: the database (snapshotted instead), the running daemon's address, and
# half-written temporary files.
_SKIP = {"appliance.db", "appliance.db-wal", "appliance.db-shm", "appliance.db-journal",
         "daemon.json"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n.startswith(".")}


@dataclass
class BackupResult:
    dest: Path
    files: int
    bytes: int
    seconds: float
    vanished: list[str]


def backup(state: StateDir, dest: Path, originals: bool = True) -> BackupResult:
    """Copy ``state`` to ``dest`` (a new or empty directory, made mode 0700)."""
    started = time.monotonic()
    if not state.db.exists():
        raise ApplianceError("no_database", f"{state.db} does not exist: is {state.root} the "
                             "state directory? (--state-dir or APPLIANCE_STATE_DIR)")
    dest = dest.absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ApplianceError("backup_dest_not_empty", f"{dest} exists and is not an empty "
                             "directory; give a new path, e.g. with the date in it")
    if dest == state.root or state.root in dest.parents:
        raise ApplianceError("backup_inside_state", f"{dest} is inside the state directory; "
                             "back up to another disk or folder")
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)

    source = Store.open_readonly(state.db)
    try:
        source.backup_to(dest / "appliance.db")
    finally:
        source.close()
    copy = Store.open_readonly(dest / "appliance.db")
    try:
        check = copy.quick_check()
    finally:
        copy.close()
    if check != "ok":
        raise ApplianceError("backup_damaged", f"the copied database fails its check: {check}")

    areas = ["models", "datasets", "inbox", "processing"]
    if originals:
        areas += ["archive", "rejected"]
    vanished: list[str] = []
    for name in sorted(os.listdir(state.root)):
        src = state.root / name
        if name in _SKIP or name.startswith("."):
            continue
        if src.is_dir():
            if name not in areas:
                continue
            try:
                shutil.copytree(src, dest / name, ignore=_ignore, dirs_exist_ok=True)
            except shutil.Error as exc:  # files removed while we copied (e.g. ingested)
                vanished += [str(e[0]) for e in exc.args[0]]
        elif src.is_file():
            shutil.copy2(src, dest / name)  # appliance.toml, token (mode kept)
    files = size = 0
    for path in dest.rglob("*"):
        if path.is_file():
            files += 1
            size += path.stat().st_size
    return BackupResult(dest=dest, files=files, bytes=size,
                        seconds=round(time.monotonic() - started, 2), vanished=vanished)
