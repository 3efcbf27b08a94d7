"""``appliance ingest``: a file put into ``inbox/<pipeline>/`` the way a careful writer does
it (copied under a hidden temporary name, made durable, renamed into place), safe under
``sudo``.

Under sudo, on a box where the service runs as its own user (systemd's DynamicUser), the
daemon must be able to move what we make, so the copy (and a pipeline folder we create) is
given to the owner of the inbox. Everything under the inbox is that user's to change, so
root trusts nothing there:

- the inbox and the pipeline folder are opened as directory fds with ``O_NOFOLLOW`` (a
  symlink is refused, with its path named) and every step after works relative to them;
- the temporary file is created new (``O_CREAT | O_EXCL | O_NOFOLLOW``) under a random
  name, so nothing planted under a guessed name is ever opened;
- ownership changes through the open fds (``fchown``), never by path.

The state directory itself is the operator's path and may be a link (systemd makes
``/var/lib/appliance`` one); only what lies below it is opened without following links.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

from appliance.core import ApplianceError, StateDir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


def drop_file(state: StateDir, pipeline: str, src: Path) -> Path:
    """Copy ``src`` into ``inbox/<pipeline>/`` under its own name; returns the folder.
    Raises :class:`ApplianceError` when a folder on the way is a link or not a folder."""
    state.root.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(state.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        inbox_fd, _ = _open_dir(root_fd, "inbox", state.inbox)
    finally:
        os.close(root_fd)
    try:
        folder_fd, created = _open_dir(inbox_fd, pipeline, state.inbox / pipeline)
        try:
            owner = _service_owner(inbox_fd)
            if owner is not None and (created or os.fstat(folder_fd).st_uid != owner[0]):
                os.fchown(folder_fd, *owner)  # the daemon must rename files out of it
            _copy_in(src, folder_fd, owner)
            os.fsync(folder_fd)
        finally:
            os.close(folder_fd)
    finally:
        os.close(inbox_fd)
    return state.inbox / pipeline


def _service_owner(inbox_fd: int) -> tuple[int, int] | None:
    """Under sudo, the (uid, gid) to give what we make: the inbox's owner, when it is
    another user than root. None when nothing is to be given."""
    if os.geteuid() != 0:
        return None
    st = os.fstat(inbox_fd)
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def _open_dir(parent_fd: int, name: str, shown: Path) -> tuple[int, bool]:
    """``name`` in ``parent_fd`` as a directory fd, made when missing; never through a
    symlink. Returns the fd and whether we made the folder."""
    created = False
    try:
        os.mkdir(name, 0o777, dir_fd=parent_fd)
        created = True
    except FileExistsError:
        pass
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd), created
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symbolic link" if exc.errno == errno.ELOOP else "not a folder"
            raise ApplianceError(
                "not_a_folder",
                f"{shown} is {kind}: `appliance ingest` never follows links inside the state "
                "directory (the service's user can change what is there); remove it, find "
                "out who made it, and run the command again",
                {"path": str(shown)}) from None
        raise


def _copy_in(src: Path, folder_fd: int, owner: tuple[int, int] | None) -> None:
    """Copy ``src`` under a new hidden name in the folder, give it to ``owner``, make it
    durable, and rename it into place (over a file of the same name, as ``mv`` would)."""
    tmp = f".{src.name}.{secrets.token_hex(8)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o666, dir_fd=folder_fd)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as fin:
            if owner is not None:
                os.fchown(out.fileno(), *owner)
            shutil.copyfileobj(fin, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, src.name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=folder_fd)  # removes the name, never what a link names
        except OSError:
            pass
        raise
