"""The drop folder: watching ``inbox/<pipeline>/`` and ingesting each complete file.

Every dropped file ends, exactly once, in ``archive/<pipeline>/`` (taken) or in
``rejected/<pipeline>/`` beside a ``<file>.reason.json`` (refused). A file is first claimed
by an atomic rename into ``processing/<pipeline>/``; what a crash leaves there is processed
again at the next start, and the ``stored_as`` name on its SQLite record tells whether it
was already recorded, so nothing is taken twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from appliance.config import PIPELINE_NAME, IngestSettings, Settings
from appliance.errors import ApplianceError
from appliance.events import Events
from appliance.statedir import StateDir
from appliance.store import IngestionRecord, Store, monotonic_ms, now_iso

log = logging.getLogger("appliance.ingest")

ACCEPTED_SUFFIXES = (".csv", ".csv.gz", ".parquet")
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", "~")


def is_temporary(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


def file_format(name: str) -> str | None:
    lower = name.lower()
    for suffix in ACCEPTED_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return None


@dataclass
class Outcome:
    record: IngestionRecord
    final_path: Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/name.N`` when a file of that name is already there."""
    candidate = folder / name
    n = 1
    while candidate.exists() or candidate.with_name(candidate.name + ".reason.json").exists():
        candidate = folder / f"{name}.{n}"
        n += 1
    return candidate


def original_name(claimed: Path) -> str:
    """Claimed files are named ``<ns>__<original>``."""
    return claimed.name.split("__", 1)[1] if "__" in claimed.name else claimed.name


class Ingester:
    """Ingests claimed files, one at a time (the daemon runs it on one worker thread)."""

    def __init__(self, state: StateDir, store: Store, events: Events, settings: Settings,
                 on_accepted: Callable[[str, IngestionRecord], None] | None = None) -> None:
        self.state = state
        self.store = store
        self.events = events
        self.settings = settings
        self.on_accepted = on_accepted

    def process(self, claimed: Path, pipeline: str) -> Outcome:
        name = original_name(claimed)
        done = self.store.ingestion_by_claim(pipeline, claimed.name)
        if done is not None:
            # Recorded before a crash, not yet moved: finish the move only.
            area = self.state.archive if done.status != "rejected" else self.state.rejected
            final = _free_name(self.state.pipeline_dir(area, pipeline), name)
            if done.status == "rejected":
                self._write_reason(final, done.code or "refused", done.reason or "",
                                   done.details)
            os.replace(claimed, final)
            return Outcome(done, final)
        received = now_iso()
        started = time.monotonic()
        sha = size = None
        try:
            st = claimed.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise ApplianceError(
                    "not_a_regular_file",
                    f"`{name}` is a symlink, FIFO, device or socket; only regular files are "
                    "taken, and links are never followed",
                    {"mode": stat.filemode(st.st_mode)},
                )
            size = st.st_size
            sha = _sha256(claimed)
            dup = self.store.accepted_with_hash(pipeline, sha)
            if dup is not None:
                record = self.store.record_ingestion(
                    pipeline=pipeline, file_name=name, status="duplicate", received_at=received,
                    sha256=sha, size_bytes=size, stored_as=claimed.name,
                    reason=f"same content as `{dup.file_name}` (ingestion {dup.id}); "
                           "archived, not ingested again",
                    duration_ms=monotonic_ms(started),
                )
                final = _free_name(self.state.pipeline_dir(self.state.archive, pipeline), name)
                os.replace(claimed, final)
                self.events.emit("duplicate", f"{name}: {record.reason}", pipeline=pipeline)
                return Outcome(record, final)
            frame, warnings = self._read_and_check(claimed, name, pipeline, size)
            return self._accept(claimed, name, pipeline, frame, warnings, sha, size, received,
                                started)
        except ApplianceError as err:
            return self._refuse(claimed, name, pipeline, err, sha, size, received, started)

    # --- reading and checking ------------------------------------------------------------

    def _read_and_check(self, path: Path, name: str, pipeline: str,
                        size: int) -> tuple[pl.DataFrame, list[str]]:
        limits: IngestSettings = self.settings.ingest
        fmt = file_format(name)
        if fmt is None:
            raise ApplianceError(
                "unsupported_format",
                f"`{name}` is not an accepted format; drop .csv, .csv.gz or .parquet files",
                {"accepted": list(ACCEPTED_SUFFIXES)},
            )
        if size > limits.max_file_mb * 1024 * 1024:
            raise ApplianceError(
                "file_too_large",
                f"`{name}` is {size / 1e6:.0f} MB, over the limit of {limits.max_file_mb} MB "
                "(ingest.max_file_mb)",
                {"size_bytes": size, "limit_mb": limits.max_file_mb},
            )
        if size == 0:
            raise ApplianceError("empty_file", f"`{name}` is empty")
        frame = read_frame(path, fmt, name)
        if frame.width > limits.max_columns:
            raise ApplianceError(
                "too_many_columns",
                f"`{name}` has {frame.width} columns, over the limit of {limits.max_columns} "
                "(ingest.max_columns)",
                {"columns": frame.width, "limit": limits.max_columns},
            )
        if frame.height == 0:
            raise ApplianceError("no_rows", f"`{name}` has a header but no rows",
                                 {"columns": frame.columns})
        target = self.settings.pipeline(pipeline).target
        if target not in frame.columns:
            raise ApplianceError(
                "missing_target",
                f"column `{target}` not found in `{name}`; the target column of pipeline "
                f"`{pipeline}` is `{target}`. Name the right one with "
                f'[pipelines.{pipeline}] target = "..." in appliance.toml',
                {"expected_column": target, "columns": frame.columns[:50],
                 "config_key": f"pipelines.{pipeline}.target"},
            )
        warnings: list[str] = []
        frame = self._check_schema(frame, name, pipeline, warnings)
        nulls = frame.get_column(target).null_count()
        if nulls:
            frame = frame.filter(pl.col(target).is_not_null())
            warnings.append(f"{nulls} rows with a null target were dropped")
        if frame.height == 0:
            raise ApplianceError("no_rows", f"every row of `{name}` has a null target",
                                 {"column": target})
        return frame, warnings

    def _check_schema(self, frame: pl.DataFrame, name: str, pipeline: str,
                      warnings: list[str]) -> pl.DataFrame:
        """The first accepted file fixes the pipeline's schema; later files must keep it."""
        record = self.store.pipeline(pipeline)
        schema = record.schema if record else None
        if not schema:
            return frame
        missing = [c for c in schema if c not in frame.columns]
        if missing:
            raise ApplianceError(
                "missing_columns",
                f"`{name}` lacks column(s) {', '.join(f'`{c}`' for c in missing)} of the "
                f"pipeline's schema",
                {"missing": missing},
            )
        extra = [c for c in frame.columns if c not in schema]
        if extra:
            warnings.append(f"extra column(s) dropped: {', '.join(extra)}")
        casts = []
        for col, dtype_name in schema.items():
            want = _dtype(dtype_name)
            have = frame.schema[col]
            if want is None or have == want:
                casts.append(pl.col(col))
                continue
            try:
                casts.append(pl.col(col).cast(want, strict=True))
                frame.select(casts[-1])
            except Exception:
                bad = frame.with_row_index("_row").filter(
                    pl.col(col).is_not_null() & pl.col(col).cast(want, strict=False).is_null()
                ).head(1)
                row = int(bad["_row"][0]) + 2 if bad.height else None  # 1-based, after header
                value = bad[col][0] if bad.height else None
                raise ApplianceError(
                    "bad_value",
                    f"`{name}` column `{col}`: value {value!r} on line {row} is not "
                    f"{dtype_name} as the pipeline's schema requires",
                    {"column": col, "line": row, "value": str(value), "expected": dtype_name},
                ) from None
        return frame.select(casts)

    # --- the two endings -----------------------------------------------------------------

    def _accept(self, claimed: Path, name: str, pipeline: str, frame: pl.DataFrame,
                warnings: list[str], sha: str, size: int, received: str,
                started: float) -> Outcome:
        self.store.ensure_pipeline(pipeline)
        record = self.store.pipeline(pipeline)
        if record is not None and not record.schema:
            self.store.set_pipeline_schema(
                pipeline, {c: str(t) for c, t in frame.schema.items()}
            )
        version = self.store.next_dataset_version(pipeline)
        folder = self.state.pipeline_dir(self.state.datasets, pipeline)
        target = folder / f"v{version:06d}.parquet"
        tmp = folder / f".tmp-v{version:06d}.parquet"
        frame.write_parquet(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        rel = str(target.relative_to(self.state.root))
        record_ = self.store.record_ingestion(
            pipeline=pipeline, file_name=name, status="accepted", received_at=received,
            sha256=sha, size_bytes=size, rows=frame.height, columns=frame.width,
            warnings=warnings, stored_as=claimed.name, duration_ms=monotonic_ms(started),
            dataset=(rel, frame.height, sha),
        )
        final = _free_name(self.state.pipeline_dir(self.state.archive, pipeline), name)
        os.replace(claimed, final)
        self.events.emit(
            "ingested", f"{name}: {frame.height} rows as data set v{record_.dataset_version}",
            pipeline=pipeline, rows=frame.height, dataset_version=record_.dataset_version,
            warnings=warnings or None,
        )
        if self.on_accepted is not None:
            self.on_accepted(pipeline, record_)
        return Outcome(record_, final)

    def _refuse(self, claimed: Path, name: str, pipeline: str, err: ApplianceError,
                sha: str | None, size: int | None, received: str, started: float) -> Outcome:
        self.store.ensure_pipeline(pipeline)
        record = self.store.record_ingestion(
            pipeline=pipeline, file_name=name, status="rejected", received_at=received,
            sha256=sha, size_bytes=size, code=err.code, reason=err.message,
            details=err.details, stored_as=claimed.name, duration_ms=monotonic_ms(started),
        )
        final = _free_name(self.state.pipeline_dir(self.state.rejected, pipeline), name)
        self._write_reason(final, err.code, err.message, err.details)
        os.replace(claimed, final)
        self.events.emit("refused", f"{name}: {err.message}", pipeline=pipeline,
                         level="warning", code=err.code)
        return Outcome(record, final)

    @staticmethod
    def _write_reason(final: Path, code: str, message: str, details: dict[str, Any]) -> None:
        reason = final.with_name(final.name + ".reason.json")
        tmp = reason.with_name("." + reason.name + ".tmp")
        tmp.write_text(json.dumps(
            {"code": code, "message": message, "details": details, "file": final.name},
            indent=2, default=str,
        ))
        os.replace(tmp, reason)


def _dtype(name: str) -> pl.DataType | None:
    simple = {
        "Int8": pl.Int8, "Int16": pl.Int16, "Int32": pl.Int32, "Int64": pl.Int64,
        "UInt8": pl.UInt8, "UInt16": pl.UInt16, "UInt32": pl.UInt32, "UInt64": pl.UInt64,
        "Float32": pl.Float32, "Float64": pl.Float64, "String": pl.String,
        "Boolean": pl.Boolean, "Date": pl.Date,
    }
    if name in simple:
        return simple[name]()
    if name.startswith("Datetime"):
        unit = "ns" if "'ns'" in name else "ms" if "'ms'" in name else "us"
        return pl.Datetime(unit)
    return None


def read_frame(path: Path, fmt: str, name: str) -> pl.DataFrame:
    """Read a dropped file; any parser failure, even a panic, is a refusal of that file."""
    try:
        if fmt == ".parquet":
            return pl.read_parquet(path)
        return pl.read_csv(path, try_parse_dates=True, infer_schema_length=10_000)
    except (KeyboardInterrupt, SystemExit):
        raise
    except pl.exceptions.NoDataError:
        raise ApplianceError("empty_file", f"`{name}` has no data") from None
    except BaseException as exc:  # Polars panics raise PanicException, a BaseException
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        code = "not_utf8" if "utf-8" in first.lower() or "utf8" in first.lower() else "unparseable"
        raise ApplianceError(
            code, f"`{name}` could not be read as {fmt.lstrip('.')}: {first}",
            {"error": first},
        ) from None


# --- watching --------------------------------------------------------------------------


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: InboxWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        if event.event_type == "moved":
            self.watcher.note(Path(os.fsdecode(event.dest_path)), renamed=True)
        elif event.event_type in ("created", "modified", "closed"):
            self.watcher.note(Path(os.fsdecode(event.src_path)))


class InboxWatcher:
    """Finds complete files in ``inbox/<pipeline>/`` and hands each, claimed, to ``submit``.

    A file is complete when its size and mtime have not changed for ``settle_seconds``, or
    at once when a writer renamed it into place. A full rescan at start and every
    ``rescan_seconds`` catches what file events missed.
    """

    POLL_SECONDS = 0.2

    def __init__(self, state: StateDir, settings: IngestSettings,
                 submit: Callable[[Path, str], None]) -> None:
        self.state = state
        self.settings = settings
        self.submit = submit
        self._pending: dict[Path, tuple[int, int, float, bool]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._last_rescan = 0.0
        self._refused_names: set[Path] = set()

    def start(self) -> None:
        self.recover()
        self.rescan()
        self._observer = Observer()
        self._observer.schedule(_Handler(self), str(self.state.inbox), recursive=True)
        self._observer.daemon = True
        self._observer.start()
        self._thread = threading.Thread(target=self._run, name="inbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def recover(self) -> None:
        """Hand on again what a crash left claimed but unfinished."""
        if not self.state.processing.exists():
            return
        for pipe_dir in sorted(self.state.processing.iterdir()):
            if not pipe_dir.is_dir():
                continue
            for path in sorted(pipe_dir.iterdir()):
                if path.is_file() and not path.name.startswith("."):
                    self.submit(path, pipe_dir.name)

    def note(self, path: Path, renamed: bool = False) -> None:
        try:
            rel = path.relative_to(self.state.inbox)
        except ValueError:
            return
        if len(rel.parts) != 2 or is_temporary(rel.parts[1]):
            return
        with self._lock:
            self._pending[path] = (-1, -1, time.monotonic(), renamed)

    def rescan(self) -> None:
        self._last_rescan = time.monotonic()
        try:
            pipe_dirs = [p for p in self.state.inbox.iterdir() if p.is_dir()]
        except OSError:
            return
        for pipe_dir in pipe_dirs:
            try:
                entries = list(pipe_dir.iterdir())
            except OSError:
                continue
            for path in entries:
                if path not in self._pending:
                    self.note(path)

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            if time.monotonic() - self._last_rescan >= self.settings.rescan_seconds:
                self.rescan()
            try:
                self._check_pending()
            except Exception:
                log.exception("inbox_check_failed")

    def _check_pending(self) -> None:
        now = time.monotonic()
        with self._lock:
            items = list(self._pending.items())
        for path, (size, mtime, since, renamed) in items:
            try:
                st = path.lstat()
            except FileNotFoundError:
                with self._lock:
                    self._pending.pop(path, None)
                continue
            current = (st.st_size, st.st_mtime_ns)
            if not stat.S_ISREG(st.st_mode) or renamed:
                ready = True
            elif current != (size, mtime):
                with self._lock:
                    self._pending[path] = (*current, now, False)
                continue
            else:
                ready = now - since >= self.settings.settle_seconds
            if ready:
                with self._lock:
                    self._pending.pop(path, None)
                self._claim(path)

    def _claim(self, path: Path) -> None:
        pipeline = path.parent.name
        if not PIPELINE_NAME.match(pipeline):
            if path not in self._refused_names:
                log.warning("inbox_folder_ignored folder=%s: not a valid pipeline name",
                            path.parent)
                self._refused_names.add(path)
            return
        dest_dir = self.state.pipeline_dir(self.state.processing, pipeline)
        dest = dest_dir / f"{time.time_ns()}__{path.name}"
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return  # taken by someone else, or deleted by its writer
        except OSError as exc:
            log.warning("claim_failed path=%s error=%s", path, exc)
            return
        with contextlib.suppress(Exception):
            self.submit(dest, pipeline)
