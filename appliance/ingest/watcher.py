"""Watching ``inbox/<pipeline>/``: noticing files, waiting for each to be complete, and
claiming it for the ingester.

A file is noticed by watchdog's file events, or by a full rescan (at start and every
``ingest.rescan_seconds``) that catches what events missed. It is complete when its size
and mtime have not changed for ``ingest.settle_seconds``, or at once when its writer
renamed it into place. It waits in the inbox while the state directory's disk has too
little room for it. Then it is claimed: renamed, atomically, to
``processing/<pipeline>/<claim time in ns>__<safe name>`` and handed to ``submit`` (the
daemon's ingest worker, which runs :class:`~appliance.ingest.ingester.Ingester`).
At start, :meth:`InboxWatcher.recover` hands on again what a crash left claimed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from appliance.core import PIPELINE_NAME, IngestSettings, StateDir
from appliance.ingest.claim import claim, unshare
from appliance.ingest.faults import RESOURCE, fault_of
from appliance.ingest.names import is_temporary, safe_name
from appliance.store import Events

log = logging.getLogger("appliance.ingest")

GZ_ROOM_FACTOR = 6                  # disk a .csv.gz needs per byte: decompressed + converted


def room_needed(size: int, name: str) -> int:
    """Bytes of disk the ingestion of a file of this size may take, beyond the file."""
    return size * (GZ_ROOM_FACTOR if name.lower().endswith(".gz") else 1)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: InboxWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if event.event_type in ("created", "moved"):
                # A new pipeline folder: look at once at what is already in it.
                dest = event.dest_path if event.event_type == "moved" else event.src_path
                if dest:
                    self.watcher.scan_folder(Path(os.fsdecode(dest)))
            return
        if event.event_type == "moved":
            if event.dest_path:
                self.watcher.note(Path(os.fsdecode(event.dest_path)), renamed=True)
        elif event.event_type in ("created", "modified", "closed"):
            self.watcher.note(Path(os.fsdecode(event.src_path)))


class InboxWatcher:
    """Finds complete files in ``inbox/<pipeline>/`` and hands each, claimed, to ``submit``.

    A file is complete when its size and mtime have not changed for ``settle_seconds``, or
    at once when a writer renamed it into place. A full rescan at start and every
    ``rescan_seconds`` catches what file events missed. A file waits in the inbox while the
    state directory's disk has less than ``min_free_mb`` (plus the room the file needs) free.
    """

    POLL_SECONDS = 0.2

    def __init__(self, state: StateDir, settings: IngestSettings,
                 submit: Callable[[Path, str], None], events: Events | None = None,
                 free_bytes: Callable[[], int] | None = None) -> None:
        self.state = state
        self.settings = settings
        self.submit = submit
        self.events = events
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.state.root).free)
        self._pending: dict[Path, tuple[int, int, float, bool]] = {}
        self._held: dict[Path, float] = {}
        self._waiting: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._last_rescan = 0.0
        self._refused_names: set[Path] = set()
        # Files whose claim failed for want of a resource of the box, said once each.
        self._deferred: set[Path] = set()

    def start(self) -> None:
        self.recover()
        self.rescan()
        _prompt_renames()
        self._observer = Observer(generate_full_events=True)
        self._observer.schedule(_Handler(self), str(self.state.inbox), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        self._thread = threading.Thread(target=self._run, name="inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def recover(self) -> None:
        """Hand on again what a crash left claimed but unfinished, oldest claim first, and
        remove what a crash left half written (hidden temporary files)."""
        for area in (self.state.processing, self.state.datasets):
            for pipe_dir in _real_dirs(area):
                for path in pipe_dir.iterdir():
                    if not path.name.startswith("."):
                        continue
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            path.unlink()
        for pipe_dir in _real_dirs(self.state.processing):
            for path in sorted(pipe_dir.iterdir()):
                if not path.name.startswith("."):
                    _unshare_claimed(path)
                    self.submit(path, pipe_dir.name)

    def hold(self, path: Path) -> None:
        """Leave ``path`` alone until the next rescan is due (``ingest.rescan_seconds``): it
        came back for want of disk space, file descriptors or memory."""
        with self._lock:
            self._held[path] = time.monotonic() + self.settings.rescan_seconds
        self.note(path)

    def note(self, path: Path, renamed: bool = False) -> None:
        try:
            rel = path.relative_to(self.state.inbox)
        except ValueError:
            return
        if len(rel.parts) == 1 and not is_temporary(rel.parts[0]) and path not in \
                self._refused_names and not path.is_dir():
            self._refused_names.add(path)
            log.warning("inbox_file_ignored file=%s: files go in inbox/<pipeline>/", path)
        if len(rel.parts) != 2 or is_temporary(rel.parts[1]) or path.parent.is_symlink():
            return
        with self._lock:
            first = not self._pending
            self._pending[path] = (-1, -1, time.monotonic(), renamed)
        if renamed or first:
            self._wake.set()  # an idle poller sleeps until the next rescan otherwise

    def scan_folder(self, folder: Path) -> None:
        try:
            rel = folder.relative_to(self.state.inbox)
        except ValueError:
            return
        if len(rel.parts) != 1 or folder.name.startswith(".") or folder.is_symlink():
            return
        try:
            entries = list(folder.iterdir())
        except OSError:
            return
        for path in entries:
            if path not in self._pending:
                self.note(path)

    def rescan(self) -> None:
        self._last_rescan = time.monotonic()
        for pipe_dir in _real_dirs(self.state.inbox):
            self.scan_folder(pipe_dir)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                busy = bool(self._pending)
            if busy:
                self._wake.wait(self.POLL_SECONDS)
            else:
                # Nothing to watch settle: sleep until the next rescan (note() wakes it).
                due = self.settings.rescan_seconds - (time.monotonic() - self._last_rescan)
                self._wake.wait(max(self.POLL_SECONDS, due))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if time.monotonic() - self._last_rescan >= self.settings.rescan_seconds:
                    self.rescan()
                self._check_pending()
            except Exception:
                log.exception("inbox_check_failed")

    def _check_pending(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._pending.items())
        ready: list[tuple[int, str, Path, os.stat_result]] = []
        for path, (size, mtime, since, renamed) in items:
            try:
                st = path.lstat()
            except FileNotFoundError:
                with self._lock:
                    self._pending.pop(path, None)
                    self._held.pop(path, None)
                self._left_waiting(path)
                continue
            if self._held.get(path, 0) > now:
                continue
            current = (st.st_size, st.st_mtime_ns)
            if not stat.S_ISREG(st.st_mode) or renamed:
                ready.append((st.st_mtime_ns, path.name, path, st))
            elif current != (size, mtime):
                with self._lock:
                    self._pending[path] = (*current, now, False)
            elif now - since >= self.settings.settle_seconds:
                ready.append((st.st_mtime_ns, path.name, path, st))
        # Oldest first: files are taken in the order they were written.
        for _, _, path, st in sorted(ready, key=lambda r: r[:2]):
            if stat.S_ISREG(st.st_mode) and not self._room_for(path, st.st_size):
                continue
            with self._lock:
                self._pending.pop(path, None)
                self._held.pop(path, None)
            self._claim(path)
            self._left_waiting(path)

    # --- the free-space floor ------------------------------------------------------------

    def _room_for(self, path: Path, size: int) -> bool:
        floor = self.settings.min_free_mb * 1024 * 1024
        need = floor + room_needed(size, path.name)
        try:
            free = self.free_bytes()
        except OSError:
            return True
        if free >= need:
            return True
        if path not in self._waiting:
            first = not self._waiting
            self._waiting.add(path)
            message = (
                f"{path.name} waits in the inbox: the state directory's disk has "
                f"{free / 1e6:.0f} MB free, and taking it needs {need / 1e6:.0f} MB "
                f"(ingest.min_free_mb = {self.settings.min_free_mb}, plus room for the file); "
                "free some space, and waiting files are taken by themselves"
            )
            if first and self.events is not None:
                self.events.emit("waiting_for_space", message, pipeline=path.parent.name,
                                 level="warning", file=path.name, free_bytes=free,
                                 needed_bytes=need)
            else:
                log.warning("waiting_for_space file=%s free=%d needed=%d", path, free, need)
        return False

    def _left_waiting(self, path: Path) -> None:
        if path not in self._waiting:
            return
        self._waiting.discard(path)
        if not self._waiting and self.events is not None:
            self.events.emit("space_available",
                             "there is room on the disk again; waiting files are taken",
                             pipeline=path.parent.name)

    # --- claiming ------------------------------------------------------------------------

    def _claim(self, path: Path) -> None:
        pipeline = path.parent.name
        if not PIPELINE_NAME.match(pipeline):
            if path not in self._refused_names:
                log.warning("inbox_folder_ignored folder=%s: not a valid pipeline name "
                            "(letters, digits, '_', '.', '-')", path.parent)
                self._refused_names.add(path)
            return
        dest_dir = self.state.pipeline_dir(self.state.processing, pipeline)
        dest = dest_dir / f"{time.time_ns()}__{safe_name(path.name)}"
        try:
            claim(self.state.inbox, pipeline, path.name, dest_dir, dest.name)
        except FileNotFoundError:
            return  # taken by someone else, or deleted by its writer
        except OSError as exc:
            fault = fault_of(exc)
            if fault is not None:  # the box's fault, not the file's: it waits in the inbox
                self._claim_deferred(path, fault, exc)
                return
            if path not in self._refused_names:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    log.warning("claim_refused path=%s: the pipeline folder was replaced by "
                                "a link or a file; links are never followed", path)
                else:
                    log.warning("claim_failed path=%s error=%s", path, exc)
                self._refused_names.add(path)
            return
        self._deferred.discard(path)
        with contextlib.suppress(Exception):
            self.submit(dest, pipeline)

    def _claim_deferred(self, path: Path, fault: str, exc: OSError) -> None:
        if path in self._deferred:
            return
        self._deferred.add(path)
        what = RESOURCE[fault]
        message = (f"{path.name}: the daemon ran out of {what} while claiming it ({exc}); this "
                   "is the box's fault, not the file's: it stays in the inbox and is taken "
                   f"again in {self.settings.rescan_seconds:g} s")
        log.warning("ingest_deferred file=%s fault=%s error=%s", path, fault, exc)
        if self.events is not None:
            with contextlib.suppress(Exception):
                self.events.emit("ingest_deferred", message, pipeline=path.parent.name,
                                 level="warning", file=path.name, fault=fault,
                                 error=str(exc)[:300])


def _unshare_claimed(path: Path) -> None:
    """A claim a crash left with other hard links gets its private copy (see claim.py)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        unshare(fd, path.name)
    except OSError as exc:
        log.warning("claim_copy_failed file=%s error=%s: a hard-linked file is ingested "
                    "as it is", path, exc)
    finally:
        os.close(fd)


def _prompt_renames() -> None:
    """See a rename into the inbox at once. watchdog's inotify observer holds each
    IN_MOVED_FROM for 0.5 s to pair it with its IN_MOVED_TO, and every later event waits
    behind it in its queue; so each rename (ours into processing/ too) would delay what
    follows by half a second. With full events no pairing is needed (an unpaired
    IN_MOVED_TO is still reported as a move into the inbox), so the hold is made short."""
    with contextlib.suppress(ImportError, AttributeError):
        from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

        InotifyMoveEventGrouper.delay = min(InotifyMoveEventGrouper.delay, 0.02)


def _real_dirs(area: Path) -> list[Path]:
    """The sub-folders of ``area``, never following a symlink, hidden ones left out."""
    try:
        entries = sorted(area.iterdir())
    except OSError:
        return []
    out = []
    for path in entries:
        with contextlib.suppress(OSError):
            if not path.name.startswith(".") and stat.S_ISDIR(path.lstat().st_mode):
                out.append(path)
    return out
