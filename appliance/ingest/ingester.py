"""Ingesting one claimed file, start to end: :class:`Ingester`.

Every dropped file ends, exactly once, in ``archive/<pipeline>/`` (taken as data, as
feedback, or as a duplicate) or in ``rejected/<pipeline>/`` beside a
``<file>.reason.json`` (refused). A file is first claimed by an atomic rename into
``processing/<pipeline>/`` (:mod:`~appliance.ingest.watcher`); what a crash leaves there is
processed again at the next start, and the ``stored_as`` name on its SQLite record tells
whether it was already recorded, so nothing is taken twice.

The way of one file through :meth:`Ingester.process`, and the module of each step:

1. checks on the file itself (a regular file, an accepted format, not empty, not too
   large); its hash starts on a thread of its own (:mod:`~appliance.ingest.work`);
2. opening: a .csv.gz decompressed, a Parquet footer or a CSV header checked, a lazy
   scan returned (:mod:`~appliance.ingest.formats`);
3. a file of ``prediction_id`` and the target is feedback, stored apart (here);
4. conversion to a Parquet file: the first file's types inferred, a later one cast
   losslessly to the pipeline's schema (:mod:`~appliance.ingest.schema`);
5. a duplicate (same hash as a file taken before) is archived, not taken again; else the
   null targets are dropped, the data set version written and the ingestion recorded;
6. the move to ``archive/`` or ``rejected/`` under a free name, with the reason file of a
   refusal (:mod:`~appliance.ingest.outcomes`), and the event that tells about it.

Any refusal along the way is an ``ApplianceError`` that ends in step 6. A fault of the box
(no disk space, file descriptors or memory left) is not the file's: it goes back to the
inbox, to be taken again, and is refused only when it may be at fault, the second time it
runs out of room or memory (:mod:`~appliance.ingest.faults`). Each start of a claimed file
is counted in SQLite before it is read: a file the process died on twice is refused at the
next start, unread, so one file can't keep the daemon in a crash loop.

Files stream: a CSV is converted with Polars' lazy engine (``scan_csv`` ... ``sink_parquet``),
so a file several times larger than memory goes through in bounded memory, with the schema
checks, the casts and the dropping of null targets as lazy expressions. A Parquet file is
first judged by its footer (row count, declared and decoded sizes), so a decompression bomb
is refused before anything is loaded. Any failure inside the parser, even a Rust panic,
refuses that file and nothing else.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from appliance.core import ApplianceError, Settings, StateDir, fsync_dir
from appliance.features import dtype_from_name
from appliance.ingest.faults import (
    CRASHES_TOLERATED,
    RESOURCE,
    TIMES_SENT_BACK,
    NoRoom,
    fault_of,
)
from appliance.ingest.formats import (
    PolarsFailure,
    drop_repeated_headers,
    gunzip,
    is_utf8,
    open_csv,
    open_parquet,
    polars_call,
    read_failure,
    repeated_headers,
    scan_csv,
    to_utf8,
)
from appliance.ingest.names import ACCEPTED_SUFFIXES, claim_time, file_format, original_name
from appliance.ingest.outcomes import Outcome, final_name, free_name, reason_path, write_reason
from appliance.ingest.schema import (
    INFER_ROWS,
    check_values,
    convert,
    is_repeated_header,
    keep_labelled_rows,
    lossless,
)
from appliance.ingest.work import HashJob, Work
from appliance.store import Events, IngestionRecord, Store, monotonic_ms

log = logging.getLogger("appliance.ingest")

FEEDBACK_ID = "prediction_id"
# Test hook for the crash-recovery tests: the process kills itself (SIGKILL, as `kill -9`)
# when ingestion reaches the named step (``step``), or reaches it with the named file
# (``step:file name``). Unset in production.
_CRASH_AT, _, _CRASH_FILE = os.environ.get("APPLIANCE_TEST_CRASH_AT", "").partition(":")


def _step(name: str, file: str = "") -> None:
    if name == _CRASH_AT and (not _CRASH_FILE or file == _CRASH_FILE):
        os.kill(os.getpid(), signal.SIGKILL)


class Ingester:
    """Ingests claimed files, one at a time (the daemon runs it on one worker thread)."""

    def __init__(self, state: StateDir, store: Store, events: Events, settings: Settings,
                 on_accepted: Callable[[str, IngestionRecord], None] | None = None,
                 free_bytes: Callable[[], int] | None = None) -> None:
        self.state = state
        self.store = store
        self.events = events
        self.settings = settings
        self.on_accepted = on_accepted
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(self.state.root).free)
        # Told about a file sent back to the inbox for want of a resource (the watcher then
        # holds it for a while instead of taking it again at once).
        self.on_requeued: Callable[[Path], None] | None = None
        # Held while a file is ingested, and by what must not run beside that (deleting a
        # pipeline, forgetting an empty one).
        self.lock = threading.Lock()
        # Files sent back for want of file descriptors, said once per file (not per retry).
        self._deferred: set[tuple[str, str]] = set()
        self._current: Work | None = None

    def process(self, claimed: Path, pipeline: str) -> Outcome | None:
        """Ingest one claimed file. It ends in archive/ or rejected/, with its record; or,
        when the box ran short of disk space, file descriptors or memory meanwhile, back in
        the inbox (and None is returned). Holds :attr:`lock` throughout: deleting a
        pipeline waits for the file in hand."""
        with self.lock:
            if not os.path.lexists(claimed):  # its pipeline was deleted since the claim
                log.info("claimed_file_gone file=%s", claimed)
                return None
            return self._take(claimed, pipeline)

    def _take(self, claimed: Path, pipeline: str) -> Outcome | None:
        name = original_name(claimed)
        done = self.store.ingestion_by_claim(pipeline, claimed.name)
        if done is not None:
            return self._finish_recorded(claimed, name, pipeline, done)
        work = Work(claimed=claimed, pipeline=pipeline, name=name,
                    received=claim_time(claimed), started=time.monotonic())
        # The claim (a rename into processing/) reaches the disk before the file's record
        # (or its start's count) does, so that a power cut can't leave a record of a file
        # still in the inbox.
        _fsync_dir(claimed.parent)
        starts = self._count_start(work)
        self._current = work
        outcome: Outcome | None = None
        try:
            outcome = self._process(work, starts)
            return outcome
        finally:
            self._current = None
            work.digest()
            work.cleanup()
            self._forget(work, ended=outcome is not None)

    def interrupted(self) -> None:
        """The daemon stops without waiting for the file in hand (it outlived the stop
        budget): its start is not counted as a crash, as the next start takes it again."""
        work = self._current
        if work is not None:
            self._forget(work, ended=False)

    def _process(self, work: Work, starts: int) -> Outcome | None:
        pipeline, claimed, name = work.pipeline, work.claimed, work.name
        _step("claimed", name)
        try:
            try:
                if starts > CRASHES_TOLERATED:     # each earlier start was a crash
                    raise self._crashed(work, starts - 1)
                return self._ingest(work)
            except PolarsFailure as exc:  # any Polars failure not mapped closer to its call
                raise read_failure(work, exc) from None
        except ApplianceError as err:
            work.digest()
            return self._refuse(work, err)
        except (OSError, MemoryError) as exc:
            if self.store.ingestion_by_claim(pipeline, claimed.name) is not None:
                raise  # failed after its record: the next start finishes the move
            fault = fault_of(exc)
            if fault is not None:
                work.digest()
                work.cleanup()
                return self._set_aside(work, fault, exc)
            log.exception("ingest_os_error file=%s", claimed)
            work.digest()
            return self._refuse(work, ApplianceError(
                "read_failed", f"`{name}` could not be read or written: "
                f"{getattr(exc, 'strerror', None) or exc}; drop it again once the cause is "
                "fixed", {"error": str(exc), "errno": getattr(exc, "errno", None)}))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a bug, or a panic out of Polars: refuse, never strand
            if self.store.ingestion_by_claim(pipeline, claimed.name) is not None:
                raise  # failed after its record: the next start finishes the move
            log.exception("ingest_internal_error file=%s", claimed)
            work.digest()
            return self._refuse(work, ApplianceError(
                "internal_error", f"`{name}` could not be ingested: {type(exc).__name__}: "
                f"{str(exc)[:300]}; this is a bug in the appliance, drop the file again after "
                "an update", {"error": f"{type(exc).__name__}: {str(exc)[:1000]}"}))

    # --- the steps -----------------------------------------------------------------------

    def _ingest(self, work: Work) -> Outcome:
        limits = self.settings.ingest
        name = work.name
        st = os.lstat(work.claimed)
        if not stat.S_ISREG(st.st_mode):
            raise ApplianceError(
                "not_a_regular_file",
                f"`{name}` is a symlink, FIFO, device, socket or directory; only regular files "
                "are taken, and links are never followed",
                {"mode": stat.filemode(st.st_mode)},
            )
        work.size = size = st.st_size
        fmt = file_format(name)
        if fmt is None:
            raise ApplianceError(
                "unsupported_format",
                f"`{name}` is not an accepted format; drop .csv, .csv.gz or .parquet files",
                {"accepted": list(ACCEPTED_SUFFIXES)},
            )
        work.fmt = fmt
        if size == 0:
            raise ApplianceError("empty_file", f"`{name}` is empty (0 bytes)", {"size_bytes": 0})
        if size > limits.max_file_mb * 1024 * 1024:
            raise ApplianceError(
                "file_too_large",
                f"`{name}` is {size / 1e6:.0f} MB, over the limit of {limits.max_file_mb} MB "
                "(ingest.max_file_mb); split it, or raise the limit",
                {"size_bytes": size, "limit_mb": limits.max_file_mb},
            )
        work.hashing = HashJob(work.claimed)
        source = work.source = work.claimed
        if fmt == ".csv.gz":
            with work.timed("gunzip"):
                source = work.source = gunzip(work, limits, self._room)
        # A feature set's rows are keyed by its entity column, as a pipeline's rows are by
        # their target: the column must be there, and rows without it are dropped.
        feature_set = self.settings.feature_sets.get(work.pipeline)
        section = feature_set or self.settings.pipeline(work.pipeline)
        work.section = f"{'feature_sets' if feature_set else 'pipelines'}.{work.pipeline}"
        work.timestamp, work.timestamp_format = section.timestamp, section.timestamp_format
        target = feature_set.key if feature_set else self.settings.pipeline(work.pipeline).target
        record = self.store.pipeline(work.pipeline)
        schema = record.schema if record is not None and record.schema else None
        opened = len(work.warnings)
        if fmt == ".parquet":
            lf, have = open_parquet(work, source, limits)
        else:
            if not is_utf8(section.csv_encoding):
                with work.timed("to_utf8"):
                    source = work.source = to_utf8(work, source, section.csv_encoding,
                                                   limits, self._room)
            lf, have = open_csv(work, source, limits, section.csv_separator,
                                section.csv_decimal)
        if feature_set is not None:
            for column, key in ((feature_set.key, "key"), (feature_set.timestamp, "timestamp")):
                if column and column not in have:
                    raise ApplianceError(
                        "missing_key" if key == "key" else "missing_timestamp",
                        f"column `{column}` not found in `{name}`; it is the {key} of feature "
                        f"set `{work.pipeline}` ([feature_sets.{work.pipeline}] {key} in "
                        "appliance.toml)",
                        {"expected_column": column, "columns": list(have)[:50],
                         "config_key": f"feature_sets.{work.pipeline}.{key}"},
                    )
        elif (set(have) == {FEEDBACK_ID, target} and target != FEEDBACK_ID):
            dup = self.store.taken_with_hash(work.pipeline, work.content_hash())
            if dup is not None:
                return self._duplicate(work, dup)
            return self._feedback(work, source, lf, have, target, schema)
        if target not in have:
            only = next(iter(have), "") if len(have) == 1 else ""
            sep = next((c for c in (";", "\t", "|") if c in only), None)
            hint = (f" The file seems to separate columns with {sep!r}, but "
                    f"[pipelines.{work.pipeline}] csv_separator = {work.separator!r}: set it "
                    f"to {sep!r} (or \"auto\") in appliance.toml." if sep else "")
            raise ApplianceError(
                "missing_target",
                f"column `{target}` not found in `{name}`; the target column of pipeline "
                f"`{work.pipeline}` is `{target}`. Name the right one with "
                f'[pipelines.{work.pipeline}] target = "..." in appliance.toml.{hint}',
                {"expected_column": target, "columns": list(have)[:50],
                 "config_key": f"pipelines.{work.pipeline}.target"},
            )
        scratch = self.state.pipeline_dir(self.state.datasets, work.pipeline) / (
            f".tmp-{work.claimed.name}")
        scratch.mkdir(exist_ok=True)
        work.temps.append(scratch)
        tmp = scratch / "data.parquet"
        def without_headers(repeats: int) -> tuple[Path, pl.LazyFrame, dict[str, Any]]:
            clean = work.source = drop_repeated_headers(work, source, limits, self._room)
            del work.warnings[opened:]
            work.warnings.append(
                f"{repeats} repeated header lines were dropped (files joined end to end, or "
                "a logger that writes its header at each restart)")
            return (clean, *open_csv(work, clean, limits, section.csv_separator,
                                     section.csv_decimal))

        # A line repeating the header shows as a value equal to its column's name, so it is
        # looked for only then, and other files pay nothing for it; in a schema of text
        # only, where it casts without an error, it is looked for at once.
        if fmt != ".parquet" and schema and all(t == "String" for t in schema.values()) \
                and (repeats := repeated_headers(source)):
            source, lf, have = without_headers(repeats)
        with work.timed("convert"):
            try:
                convert(work, source, lf, have, schema, tmp)
            except ApplianceError as err:
                if not is_repeated_header(work, err):
                    raise
                repeats = repeated_headers(source)
                if not repeats:  # a value that happens to equal its column's name
                    raise
                source, lf, have = without_headers(repeats)
                convert(work, source, lf, have, schema, tmp)
        _step("converted", name)
        # Duplicates are found once the hash is done: a duplicate costs a conversion, but a
        # new file (the usual case) costs no extra read for its hash.
        dup = self.store.taken_with_hash(work.pipeline, work.content_hash())
        if dup is not None:
            return self._duplicate(work, dup)
        return self._finish_dataset(work, tmp, target, schema)

    # --- the two endings -----------------------------------------------------------------

    def _finish_dataset(self, work: Work, tmp: Path, target: str,
                        stored: dict[str, str] | None) -> Outcome:
        rows = keep_labelled_rows(work, tmp, target, self._role(work),
                                  self.settings.ingest.max_rows)
        schema = polars_call(lambda: pl.scan_parquet(tmp, glob=False).collect_schema())
        return self._accept(work, tmp, rows, {c: str(t) for c, t in schema.items()}, stored)

    def _role(self, work: Work) -> str:
        return "key" if work.pipeline in self.settings.feature_sets else "target"

    def _accept(self, work: Work, tmp: Path, rows: int, schema: dict[str, str],
                stored: dict[str, str] | None) -> Outcome:
        """Keep the data set. The first file fixes the pipeline's schema; a later one types
        the schema's columns that had no value until it (stored as "Null")."""
        pipeline = work.pipeline
        with work.timed("store"):
            self.store.ensure_pipeline(pipeline)
            if stored is None:
                self.store.set_pipeline_schema(pipeline, schema)
            elif "Null" in stored.values():
                typed = {c: schema.get(c, t) if t == "Null" else t for c, t in stored.items()}
                if typed != stored:
                    self.store.set_pipeline_schema(pipeline, typed)
            version = self.store.next_dataset_version(pipeline)
            folder = self.state.pipeline_dir(self.state.datasets, pipeline)
            dataset = folder / f"v{version:06d}.parquet"
            os.replace(tmp, dataset)
            _fsync_dir(folder)
        _step("dataset_written", work.name)
        rel = str(dataset.relative_to(self.state.root))
        record = self.store.record_ingestion(
            pipeline=pipeline, file_name=work.name, status="accepted",
            received_at=work.received, sha256=work.sha, size_bytes=work.size, rows=rows,
            columns=len(schema), warnings=work.warnings, stored_as=work.claimed.name,
            duration_ms=monotonic_ms(work.started),
            details={"format": work.fmt, "timings_ms": work.timings},
            dataset=(rel, rows, work.sha or ""),
        )
        return self._finish_recorded(work.claimed, work.name, pipeline, record)

    def _duplicate(self, work: Work, dup: IngestionRecord) -> Outcome:
        record = self.store.record_ingestion(
            pipeline=work.pipeline, file_name=work.name, status="duplicate",
            received_at=work.received, sha256=work.sha, size_bytes=work.size,
            stored_as=work.claimed.name, code="duplicate",
            reason=f"same content as `{dup.file_name}` (ingestion {dup.id}); archived, not "
                   "ingested again",
            details={"duplicate_of": dup.id, "format": work.fmt},
            duration_ms=monotonic_ms(work.started),
        )
        return self._finish_recorded(work.claimed, work.name, work.pipeline, record)

    def _feedback(self, work: Work, path: Path, lf: pl.LazyFrame, have: dict[str, Any],
                  target: str, schema: dict[str, str] | None) -> Outcome:
        """A file of ``prediction_id`` and the target: outcomes of earlier predictions, kept
        for monitoring, never training data."""
        want = dtype_from_name(schema[target]) if schema and target in schema else None
        if work.fmt != ".parquet" and want is None:
            lf = scan_csv(path, work, infer_schema_length=INFER_ROWS)
            have = dict(polars_call(lf.collect_schema))
        outcome = pl.col(target)
        if want is not None and have[target] != want:
            outcome = lossless(target, have[target], want, work.decimal_comma)
            check_values(work, lf, {target: outcome}, {target: want})
        frame = polars_call(lambda: lf.select(
            pl.col(FEEDBACK_ID).cast(pl.String), outcome.alias(target)).collect())
        if frame.height > self.settings.ingest.max_rows:
            raise ApplianceError(
                "too_many_rows", f"`{work.name}` has {frame.height} rows, over the limit of "
                f"{self.settings.ingest.max_rows} (ingest.max_rows)",
                {"rows": frame.height, "limit": self.settings.ingest.max_rows})
        kept = frame.drop_nulls()
        if kept.height < frame.height:
            work.warnings.append(f"{frame.height - kept.height} rows without a prediction id "
                                 "or an outcome were dropped")
        if kept.height == 0:
            code = "header_only" if frame.height == 0 and work.fmt != ".parquet" else "no_rows"
            raise ApplianceError(code, f"`{work.name}` holds no outcome of a prediction",
                                 {"columns": [FEEDBACK_ID, target], "rows": frame.height})
        ids = kept[FEEDBACK_ID].to_list()
        known = self.store.count_known_predictions(work.pipeline, ids)
        if known < len(ids):
            work.warnings.append(f"{len(ids) - known} of {len(ids)} prediction ids are not in "
                                 "the prediction log of this pipeline")
        self.store.ensure_pipeline(work.pipeline)
        record = self.store.record_feedback_ingestion(
            list(zip(ids, kept[target].to_list(), strict=True)),
            pipeline=work.pipeline, file_name=work.name, received_at=work.received,
            sha256=work.sha, size_bytes=work.size, rows=kept.height, columns=2,
            warnings=work.warnings, stored_as=work.claimed.name,
            duration_ms=monotonic_ms(work.started),
            details={"format": work.fmt, "timings_ms": work.timings, "known_predictions": known},
        )
        return self._finish_recorded(work.claimed, work.name, work.pipeline, record)

    def _refuse(self, work: Work, err: ApplianceError) -> Outcome:
        self.store.ensure_pipeline(work.pipeline)
        record = self.store.record_ingestion(
            pipeline=work.pipeline, file_name=work.name, status="rejected",
            received_at=work.received, sha256=work.sha, size_bytes=work.size, code=err.code,
            reason=err.message, details=err.details, warnings=work.warnings,
            stored_as=work.claimed.name, duration_ms=monotonic_ms(work.started),
        )
        return self._finish_recorded(work.claimed, work.name, work.pipeline, record)

    def _finish_recorded(self, claimed: Path, name: str, pipeline: str,
                         record: IngestionRecord) -> Outcome:
        """Move a recorded file to its final place and tell about it. Also what recovery
        runs for a file recorded before a crash but not yet moved."""
        _step("recorded", name)
        rejected = record.status == "rejected"
        folder = self.state.pipeline_dir(self.state.rejected if rejected else self.state.archive,
                                         pipeline)
        final = (final_name(folder, name, record.id) if rejected
                 else free_name(folder, name, record.id))
        if rejected and not reason_path(final).exists():
            write_reason(final, record)
            _step("reason_written", name)
        os.replace(claimed, final)
        _step("moved", name)
        if record.status == "accepted":
            self.events.emit(
                "ingested", f"{name}: {record.rows} rows as data set v{record.dataset_version}",
                pipeline=pipeline, rows=record.rows, dataset_version=record.dataset_version,
                warnings=record.warnings or None)
            if self.on_accepted is not None:
                self.on_accepted(pipeline, record)
        elif record.status == "feedback":
            self.events.emit("feedback", f"{name}: {record.rows} outcomes of predictions",
                             pipeline=pipeline, rows=record.rows,
                             warnings=record.warnings or None)
        elif record.status == "duplicate":
            self.events.emit("duplicate", f"{name}: {record.reason}", pipeline=pipeline)
        else:
            self.events.emit("refused", f"{name}: {record.reason}", pipeline=pipeline,
                             level="warning", code=record.code)
        return Outcome(record, final)

    # --- attempts that did not end: a crash, a fault of the box --------------------------

    def _count_start(self, work: Work) -> int:
        """Count this start of the claimed file, durably before any of it is read: a start
        the process does not live to finish (out of memory, a native abort) stays counted,
        and the next start after too many refuses the file (``_crashed``)."""
        try:
            starts = self.store.count_attempt(work.pipeline, "started", work.claimed.name)
        except Exception as exc:  # a full disk: count nothing, ingest as before
            log.warning("ingest_attempt_not_counted file=%s error=%s", work.claimed, exc)
            return 1
        if 1 < starts <= CRASHES_TOLERATED:
            self.events.emit(
                "ingest_interrupted",
                f"{work.name}: the daemon stopped while ingesting it (out of memory, a crash "
                f"or a kill), {starts - 1} time(s); it is taken again, and refused once that "
                f"happens {CRASHES_TOLERATED} times", pipeline=work.pipeline, level="warning",
                file=work.name, crashes=starts - 1)
        elif starts > 1:
            log.warning("ingest_restarted file=%s starts=%d", work.claimed, starts)
        return starts

    def _forget(self, work: Work, ended: bool) -> None:
        """The start ended in this process: it is no crash. When the file itself ended
        (archived or refused), the times it went back for want of room or memory go too."""
        keys = [work.claimed.name]
        if ended:
            self._deferred.discard((work.pipeline, work.name))
            if work.sha:
                keys.append(work.sha)
        try:
            self.store.forget_attempts(work.pipeline, keys)
        except Exception as exc:
            log.warning("ingest_attempt_not_forgotten file=%s error=%s", work.claimed, exc)

    def _crashed(self, work: Work, crashes: int) -> ApplianceError:
        return ApplianceError(
            "crashed_twice",
            f"`{work.name}`: the daemon stopped {crashes} times while ingesting it (out of "
            "memory, a crash in a native library, or a kill); it is refused so that the "
            "files behind it are taken and the daemon stays up. If it is good data, drop it "
            "again after checking the daemon's log, split into smaller files if memory ran "
            "out", {"crashes": crashes})

    def _room(self) -> int:
        """Bytes free on the state directory's disk above ``ingest.min_free_mb``."""
        try:
            free = self.free_bytes()
        except OSError:
            return 1 << 62
        return free - self.settings.ingest.min_free_mb * 1024 * 1024

    def _set_aside(self, work: Work, fault: str, exc: BaseException) -> Outcome | None:
        """The box ran short of disk space, file descriptors or memory while the file was
        ingested. Out of file descriptors, it is not the file's fault: the file goes back to
        the inbox, to be taken again. Out of room or memory, it may be (a gzip bomb, a file
        too big for the box): back the first time, refused the second."""
        details = dict(getattr(exc, "details", None) or {})
        details["error"] = str(exc)[:300] or type(exc).__name__
        if fault != "no_fds":
            key = work.sha or f"{work.name}:{work.size}"
            try:
                times = self.store.count_attempt(work.pipeline, fault, key, details)
            except Exception:
                times = 1  # the database can't count it (the disk is full): send it back
            if times > TIMES_SENT_BACK:
                return self._refuse(work, self._short_twice(work, fault, times, details))
        back = self._send_back(work)
        pipeline = work.pipeline
        if fault == "no_room":
            why = str(exc) if isinstance(exc, NoRoom) else \
                "the disk of the state directory filled up during ingestion"
            self.events.emit(
                "waiting_for_space",
                f"{work.name}: {why}; the file is back in the inbox and is taken again once "
                "there is room (refused if it runs out of room again)",
                pipeline=pipeline, level="warning", file=work.name, **_scalars(details))
        elif fault == "no_memory" or (pipeline, work.name) not in self._deferred:
            if fault == "no_fds":
                self._deferred.add((pipeline, work.name))
            what = RESOURCE[fault]
            then = ("" if fault == "no_fds" else
                    " (refused if it runs out of memory again)")
            self.events.emit(
                "ingest_deferred",
                f"{work.name}: the daemon ran out of {what} while ingesting it "
                f"({details['error']}); this is the box's fault, not the file's: it is back "
                f"in the inbox and taken again in {self.settings.ingest.rescan_seconds:g} s"
                f"{then}", pipeline=pipeline, level="warning", file=work.name, fault=fault,
                error=details["error"])
        else:
            log.warning("ingest_deferred file=%s fault=%s error=%s", back, fault,
                        details["error"])
        if self.on_requeued is not None:
            self.on_requeued(back)
        return None

    def _short_twice(self, work: Work, fault: str, times: int,
                     details: dict[str, Any]) -> ApplianceError:
        if fault == "no_room":
            return ApplianceError(
                "no_room",
                f"`{work.name}` needed more room on the state directory's disk than there was, "
                f"{times} times ({details['error']}); free space (or split the file) and drop "
                "it again", {**details, "times": times})
        return ApplianceError(
            "out_of_memory",
            f"`{work.name}` ran the daemon out of memory {times} times "
            f"({details['error']}); split it into smaller files, or free memory on the box, "
            "and drop it again", {**details, "times": times})

    def _send_back(self, work: Work) -> Path:
        """Move the claimed file back to the inbox, under a free name."""
        inbox = self.state.pipeline_dir(self.state.inbox, work.pipeline)
        back = free_name(inbox, work.name, work.claimed.name.split("__", 1)[0])
        shutil.move(work.claimed, back)  # a rename, unless the inbox is another file system
        return back


def _scalars(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in details.items() if isinstance(v, int | float | str) and k != "error"}


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # a file system that can't sync folders
        fsync_dir(folder)

