"""The claim of a dropped file: the move from ``inbox/<pipeline>/`` into
``processing/<pipeline>/``, trusting nothing a dropper can change.

- The pipeline folder is opened as a directory fd with ``O_NOFOLLOW``, and the rename is
  made relative to it (``renameat``): a folder swapped for a symlink after its file was
  noticed is refused, never followed into the state directory or anywhere else. (The
  inbox itself is the operator's and may be a link or a mount.)
- A file with other hard links (``st_nlink > 1``) is copied once claimed, and the copy
  takes its place: the dropper's other link can change neither what is ingested nor the
  original archived afterwards. The check is made after the rename, when no new link can
  be made to the file from outside the state directory; a crash before the copy is
  finished leaves the linked file claimed, and :func:`unshare` at recovery copies it then.
- From an inbox on another file system (a network mount) the file is copied under a
  hidden name, made durable, renamed into place, and the original removed.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("appliance.ingest")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20
COPY_PREFIX = ".copy-"  # hidden: removed by the recovery when a crash leaves one


def claim(inbox: Path, pipeline: str, name: str, dest_dir: Path, dest_name: str) -> None:
    """Move ``inbox/<pipeline>/<name>`` to ``dest_dir/<dest_name>``, never through a link.
    Raises OSError (``FileNotFoundError`` when the file is gone; ``ELOOP`` when the
    pipeline folder is a link)."""
    inbox_fd = os.open(inbox, _DIR_FLAGS)
    try:
        src_fd = os.open(pipeline, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=inbox_fd)
    finally:
        os.close(inbox_fd)
    try:
        dst_fd = os.open(dest_dir, _DIR_FLAGS | os.O_NOFOLLOW)
        try:
            try:
                os.rename(name, dest_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_across_devices(src_fd, name, dst_fd, dest_name)
                return
            try:
                unshare(dst_fd, dest_name)
            except OSError as exc:  # claimed all the same; the disk decides what follows
                log.warning("claim_copy_failed file=%s error=%s: a hard-linked file is "
                            "ingested as it is", dest_name, exc)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


def unshare(dir_fd: int, name: str) -> bool:
    """When the claimed regular file ``name`` has other hard links, replace it by a copy
    of its own (hidden temporary, fsync, rename). True when a copy was made."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink <= 1:
        return False
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                  dir_fd=dir_fd)
    with os.fdopen(src, "rb") as fin:
        _write_copy(fin, dir_fd, name)
    log.info("claim_copied_hard_link file=%s links=%d: the file had other names; "
             "a private copy is ingested and archived", name, st.st_nlink)
    return True


def _copy_across_devices(src_fd: int, name: str, dst_fd: int, dest_name: str) -> None:
    """Claim a file from an inbox on another file system: copy it under a hidden name,
    make it durable, rename it into place, then remove the original. A crash between the
    last two steps leaves both; the second is then archived as a duplicate, never
    ingested twice."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=src_fd)
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EXDEV, "not a regular file, on another file system")
        _write_copy(fin, dst_fd, dest_name)
    os.unlink(name, dir_fd=src_fd)


def _write_copy(fin: BinaryIO, dir_fd: int, dest_name: str) -> None:
    tmp = COPY_PREFIX + dest_name
    try:
        os.unlink(tmp, dir_fd=dir_fd)  # a crash's leftover
    except FileNotFoundError:
        pass
    out = os.open(tmp, _NEW_FILE, 0o666, dir_fd=dir_fd)
    try:
        with os.fdopen(out, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
            fout.flush()
            os.fsync(fout.fileno())
        os.rename(tmp, dest_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
