"""``appliance backup DEST``: a consistent copy of the state directory, safe while the daemon
runs.

The database is copied first, with SQLite's online backup (a consistent snapshot even
while the daemon writes). Model versions and data set files are written before the rows
that name them and never changed afterwards, so every file the snapshot names is already
on disk and lands in the copy. Files written after the snapshot may be copied too; the
next start on the copy removes model folders the database does not know.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.core import ApplianceError, StateDir
from appliance.store import Store

# Never copied: the database (snapshotted instead), the running daemon's address, and
# half-written temporary files (any name starting with ".").
_SKIP = {"appliance.db", "appliance.db-wal", "appliance.db-shm", "appliance.db-journal",
         "daemon.json"}
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CHUNK = 1 << 20


@dataclass
class BackupResult:
    dest: Path
    files: int
    bytes: int
    seconds: float
    vanished: list[str]
    skipped: list[str] = field(default_factory=list)  # FIFOs, sockets, devices (relative)


def backup(state: StateDir, dest: Path, originals: bool = True) -> BackupResult:
    """Copy ``state`` to ``dest`` (a new or empty directory, made mode 0700).

    Links are copied as links, never what they point at (a refused symlink in rejected/
    stays a link); FIFOs, sockets and devices are left out and listed in ``skipped``.
    Everything under the state directory is opened relative to its folder's fd with
    ``O_NOFOLLOW``, so a folder swapped for a link while we copy is not followed either.
    """
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

    areas = {"models", "datasets", "inbox", "processing"}
    if originals:
        areas |= {"archive", "rejected"}
    tree = _Tree(state.root)
    tree.files, tree.bytes = 1, (dest / "appliance.db").stat().st_size
    root_fd = os.open(state.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in sorted(os.listdir(root_fd)):
            if name in _SKIP or name.startswith("."):
                continue
            try:
                st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and name not in areas:
                continue
            if stat.S_ISLNK(st.st_mode) and not originals and name in ("archive", "rejected"):
                continue
            tree.copy(root_fd, name, dest / name, name)
    finally:
        os.close(root_fd)
    return BackupResult(dest=dest, files=tree.files, bytes=tree.bytes,
                        seconds=round(time.monotonic() - started, 2), vanished=tree.vanished,
                        skipped=tree.skipped)


class _Tree:
    """The copy of a tree, relative to directory fds, never following a link."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = 0
        self.bytes = 0
        self.vanished: list[str] = []  # removed while we copied (e.g. ingested)
        self.skipped: list[str] = []

    def copy(self, parent_fd: int, name: str, dest: Path, rel: str) -> None:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=parent_fd), dest)
            elif stat.S_ISDIR(st.st_mode):
                self._copy_dir(parent_fd, name, dest, rel)
            elif stat.S_ISREG(st.st_mode):
                self._copy_file(parent_fd, name, dest)
            else:
                self.skipped.append(rel)
        except FileNotFoundError:
            self.vanished.append(str(self.root / rel))
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            self.vanished.append(str(self.root / rel))  # swapped for a link as we looked

    def _copy_dir(self, parent_fd: int, name: str, dest: Path, rel: str) -> None:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
        try:
            st = os.fstat(fd)
            dest.mkdir(exist_ok=True)
            for child in sorted(os.listdir(fd)):
                if not child.startswith("."):
                    self.copy(fd, child, dest / child, f"{rel}/{child}")
            os.chmod(dest, stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd)

    def _copy_file(self, parent_fd: int, name: str, dest: Path) -> None:
        fd = os.open(name, _FILE, dir_fd=parent_fd)
        with os.fdopen(fd, "rb") as fin:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.ELOOP, "no longer a regular file")
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(out, "wb") as fout:
                shutil.copyfileobj(fin, fout, _CHUNK)
                os.fchmod(out, stat.S_IMODE(st.st_mode))  # the token stays 0600
                fout.flush()
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.files += 1
        self.bytes += st.st_size
