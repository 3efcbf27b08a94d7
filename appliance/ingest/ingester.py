"""The drop folder: watching ``inbox/<pipeline>/`` and ingesting each complete file.

Every dropped file ends, exactly once, in ``archive/<pipeline>/`` (taken as data, as
feedback, or as a duplicate) or in ``rejected/<pipeline>/`` beside a
``<file>.reason.json`` (refused). A file is first claimed by an atomic rename into
``processing/<pipeline>/``; what a crash leaves there is processed again at the next start,
and the ``stored_as`` name on its SQLite record tells whether it was already recorded, so
nothing is taken twice.

Files stream: a CSV is converted with Polars' lazy engine (``scan_csv`` ... ``sink_parquet``),
so a file several times larger than memory goes through in bounded memory, with the schema
checks, the casts and the dropping of null targets as lazy expressions. A Parquet file is
first judged by its footer (row count, declared and decoded sizes), so a decompression bomb
is refused before anything is loaded. Any failure inside the parser, even a Rust panic,
refuses that file and nothing else.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import errno
import gzip
import io
import logging
import os
import re
import shutil
import signal
import stat
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from appliance.core import ApplianceError, Settings, StateDir
from appliance.features import dtype_from_name
from appliance.ingest.names import ACCEPTED_SUFFIXES, claim_time, file_format, original_name
from appliance.ingest.outcomes import (
    Outcome,
    bad_value,
    final_name,
    free_name,
    not_utf8,
    reason_path,
    unsupported_type,
    write_reason,
)
from appliance.ingest.parquet_footer import FooterError, read_footer
from appliance.ingest.work import CHUNK, HashJob, Work
from appliance.store import Events, IngestionRecord, Store, monotonic_ms

log = logging.getLogger("appliance.ingest")

FEEDBACK_ID = "prediction_id"
INFER_ROWS = 10_000                 # rows a first CSV file's column types are inferred from
_PROBE_BYTES = 4 << 20              # the CSV header must end within this
_DIAGNOSE_ROWS = 5_000_000          # how far a ragged-line diagnosis reads with Python's csv
_ROW = "__appliance_row__"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# Test hook for the crash-recovery tests: the process kills itself (SIGKILL, as `kill -9`)
# when ingestion reaches the named step. Unset in production.
_CRASH_AT = os.environ.get("APPLIANCE_TEST_CRASH_AT", "")


def _step(name: str) -> None:
    if name == _CRASH_AT:
        os.kill(os.getpid(), signal.SIGKILL)


class _PolarsFailure(Exception):
    """Polars failed (an error or a panic); ``text`` is its message."""

    def __init__(self, exc: BaseException) -> None:
        text = str(exc).strip() or type(exc).__name__
        super().__init__(text)
        self.text = text
        self.first_line = text.splitlines()[0][:300]


def _polars(fn: Callable[[], Any]) -> Any:
    """Run a Polars call; every failure, a panic included, becomes a ``_PolarsFailure``,
    except a full disk, which stays an ``OSError`` (the file waits, it is not at fault)."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise
        raise _PolarsFailure(exc) from None
    except BaseException as exc:  # Polars panics raise PanicException, a BaseException
        text = str(exc)
        if "os error 28" in text or "No space left" in text or "os error 122" in text:
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise _PolarsFailure(exc) from None


# --- types: what a pipeline's schema may hold, and lossless casts ---------------------------

def _kept_type(dtype: pl.DataType) -> pl.DataType | None:
    """The type a column is kept as in a data set, or None when the appliance can't use it
    (nested, binary, object, time of day, duration)."""
    if dtype.is_numeric() and not isinstance(dtype, pl.Decimal):
        return dtype
    if isinstance(dtype, pl.Decimal):
        return pl.Float64()
    if isinstance(dtype, (pl.Categorical, pl.Enum, pl.Null)) or dtype == pl.String:
        return pl.String()
    if dtype == pl.Boolean or dtype == pl.Date or isinstance(dtype, pl.Datetime):
        return dtype
    return None


def _plain_types(lf: pl.LazyFrame) -> pl.LazyFrame:
    """A CSV scan whose inferred types are all ones a schema may hold (a time of day, which
    date parsing can infer, is kept as text)."""
    schema = _polars(lf.collect_schema)
    if all(_kept_type(t) == t for t in schema.values()):
        return lf
    return lf.with_columns(pl.col(c).cast(pl.String) for c, t in schema.items()
                           if _kept_type(t) != t)


def _lossless(col: str, have: pl.DataType, want: pl.DataType) -> pl.Expr:
    """``col`` as ``want``; null where a value does not convert without loss."""
    x = pl.col(col)
    if have == want:
        return x
    if isinstance(have, pl.Null):
        return x.cast(want)
    if want == pl.String:
        return x.cast(pl.String)
    if have == pl.String or isinstance(have, (pl.Categorical, pl.Enum)):
        s = x.cast(pl.String).str.strip_chars()
        if want == pl.Boolean:
            low = s.str.to_lowercase()
            return (pl.when(low.is_in(["true", "1"])).then(pl.lit(True))
                    .when(low.is_in(["false", "0"])).then(pl.lit(False))
                    .otherwise(pl.lit(None, pl.Boolean)))
        if isinstance(want, pl.Datetime):
            return s.str.to_datetime(time_unit=want.time_unit, time_zone=want.time_zone,
                                     strict=False)
        if want == pl.Date:
            return s.str.to_date(strict=False)
        y = s.cast(want, strict=False)
        if want.is_integer():
            f = s.cast(pl.Float64, strict=False)
            whole = (f == f.round(0)) & (f.abs() < 2.0**53)
            y = pl.coalesce(y, pl.when(whole).then(f.cast(want, strict=False)))
        return y
    if isinstance(have, pl.Datetime) and isinstance(want, pl.Datetime) \
            and have.time_zone != want.time_zone:
        if have.time_zone and want.time_zone:
            x = x.dt.convert_time_zone(want.time_zone)
        elif want.time_zone:
            x = x.dt.replace_time_zone(want.time_zone)
        else:
            x = x.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return x.dt.cast_time_unit(want.time_unit)
    y = x.cast(want, strict=False)
    return pl.when(y.cast(have, strict=False) == x).then(y)


# --- ingestion ---------------------------------------------------------------------------


class Ingester:
    """Ingests claimed files, one at a time (the daemon runs it on one worker thread)."""

    def __init__(self, state: StateDir, store: Store, events: Events, settings: Settings,
                 on_accepted: Callable[[str, IngestionRecord], None] | None = None) -> None:
        self.state = state
        self.store = store
        self.events = events
        self.settings = settings
        self.on_accepted = on_accepted
        # Told about a file sent back to the inbox for want of disk space (the watcher then
        # holds it for a while instead of taking it again at once).
        self.on_requeued: Callable[[Path], None] | None = None

    def process(self, claimed: Path, pipeline: str) -> Outcome | None:
        """Ingest one claimed file. It ends in archive/ or rejected/, with its record; or,
        when the disk filled up meanwhile, back in the inbox (and None is returned)."""
        name = original_name(claimed)
        done = self.store.ingestion_by_claim(pipeline, claimed.name)
        if done is not None:
            return self._finish_recorded(claimed, name, pipeline, done)
        work = Work(claimed=claimed, pipeline=pipeline, name=name,
                     received=claim_time(claimed), started=time.monotonic())
        _step("claimed")
        try:
            try:
                return self._ingest(work)
            except _PolarsFailure as exc:  # any Polars failure not mapped closer to its call
                raise self._read_failure(work, exc) from None
        except ApplianceError as err:
            work.digest()
            return self._refuse(work, err)
        except OSError as exc:
            if self.store.ingestion_by_claim(pipeline, claimed.name) is not None:
                raise  # failed after its record: the next start finishes the move
            if exc.errno in _NO_SPACE:
                work.digest()
                work.cleanup()
                return self._send_back(work)
            log.exception("ingest_os_error file=%s", claimed)
            work.digest()
            return self._refuse(work, ApplianceError(
                "read_failed", f"`{name}` could not be read or written: {exc.strerror or exc}; "
                "drop it again once the cause is fixed",
                {"error": str(exc), "errno": exc.errno}))
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
        finally:
            work.digest()
            work.cleanup()

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
                source = work.source = self._gunzip(work)
        # A feature set's rows are keyed by its entity column, as a pipeline's rows are by
        # their target: the column must be there, and rows without it are dropped.
        feature_set = self.settings.feature_sets.get(work.pipeline)
        target = feature_set.key if feature_set else self.settings.pipeline(work.pipeline).target
        record = self.store.pipeline(work.pipeline)
        schema = record.schema if record is not None and record.schema else None
        if fmt == ".parquet":
            lf, have = self._open_parquet(work, source)
        else:
            lf, have = self._open_csv(work, source)
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
            dup = self.store.taken_with_hash(work.pipeline, work.digest() or "")
            if dup is not None:
                return self._duplicate(work, dup)
            return self._feedback(work, source, lf, have, target, schema)
        if target not in have:
            only = next(iter(have), "") if len(have) == 1 else ""
            sep = next((c for c in (";", "\t", "|") if c in only), None)
            hint = (f" The file seems to separate columns with {sep!r}; the appliance reads "
                    "comma-separated files, so save it with commas." if sep else "")
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
        with work.timed("convert"):
            if schema is None:
                self._convert_first(work, source, lf, have, tmp)
            else:
                self._convert_to_schema(work, source, lf, have, schema, tmp)
        _step("converted")
        # Duplicates are found once the hash is done: a duplicate costs a conversion, but a
        # new file (the usual case) costs no extra read for its hash.
        dup = self.store.taken_with_hash(work.pipeline, work.digest() or "")
        if dup is not None:
            return self._duplicate(work, dup)
        return self._finish_dataset(work, tmp, target, schema is None)

    def _gunzip(self, work: Work) -> Path:
        """Decompress a .csv.gz beside the claimed file (a hidden name, cleaned up after),
        refusing it once it passes ``ingest.max_file_mb`` (a gzip bomb stops there)."""
        limit = self.settings.ingest.max_file_mb * 1024 * 1024
        out = work.claimed.with_name("." + work.claimed.name + ".csv")
        work.temps.append(out)
        total = 0
        fd = os.open(work.claimed, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz, open(out, "wb") as f:
            while True:
                try:
                    chunk = gz.read(CHUNK)
                except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                    raise ApplianceError(
                        "unparseable",
                        f"`{work.name}` is not a valid gzip file: {exc or 'it ends early'} "
                        f"(after {total} decompressed bytes)",
                        {"error": str(exc) or "truncated", "decompressed_bytes": total},
                    ) from None
                if not chunk:
                    break
                total += len(chunk)
                if total > limit:
                    raise ApplianceError(
                        "file_too_large",
                        f"`{work.name}` decompresses to more than "
                        f"{self.settings.ingest.max_file_mb} MB (ingest.max_file_mb)",
                        {"decompressed_bytes_over": total, "limit_mb":
                         self.settings.ingest.max_file_mb},
                    )
                f.write(chunk)
        if total == 0:
            raise ApplianceError("empty_file", f"`{work.name}` decompresses to nothing",
                                 {"size_bytes": work.size})
        return out

    # --- opening: header and metadata checks before any data is read --------------------

    def _open_parquet(self, work: Work, path: Path) -> tuple[pl.LazyFrame, dict[str, Any]]:
        limits = self.settings.ingest
        name = work.name
        try:
            footer = read_footer(path)
        except FooterError as exc:
            raise ApplianceError("unparseable", f"`{name}` is not a readable Parquet file: {exc}",
                                 {"error": str(exc)}) from None
        details = {"rows": footer.num_rows, "columns": footer.columns,
                   "row_groups": footer.row_groups, "decoded_bytes": footer.decoded_bytes,
                   "uncompressed_bytes": footer.uncompressed_bytes}
        if footer.columns > limits.max_columns:
            raise ApplianceError(
                "too_many_columns",
                f"`{name}` has {footer.columns} columns, over the limit of {limits.max_columns} "
                "(ingest.max_columns)", {**details, "limit": limits.max_columns})
        if footer.num_rows > limits.max_rows:
            raise ApplianceError(
                "too_many_rows",
                f"`{name}` has {footer.num_rows} rows, over the limit of {limits.max_rows} "
                "(ingest.max_rows)", {**details, "limit": limits.max_rows})
        if footer.decoded_bytes > limits.max_uncompressed_mb * 1024 * 1024:
            raise ApplianceError(
                "uncompressed_too_large",
                f"`{name}` would decode to about {footer.decoded_bytes / 1e6:.0f} MB, over the "
                f"limit of {limits.max_uncompressed_mb} MB (ingest.max_uncompressed_mb); it was "
                "refused from its metadata, without loading it",
                {**details, "limit_mb": limits.max_uncompressed_mb})
        if footer.num_rows == 0:
            raise ApplianceError("no_rows", f"`{name}` has columns but no rows", details)
        lf = pl.scan_parquet(path, glob=False)
        try:
            have = dict(_polars(lf.collect_schema))
        except _PolarsFailure as exc:
            raise ApplianceError("unparseable",
                                 f"`{name}` is not a readable Parquet file: {exc.first_line}",
                                 {"error": exc.first_line}) from None
        return lf, have

    def _open_csv(self, work: Work, path: Path) -> tuple[pl.LazyFrame, dict[str, Any]]:
        """Check the header line (UTF-8, column count, unique names) and return a scan that
        reads every column as text, to learn the names."""
        limits = self.settings.ingest
        name = work.name
        with open(path, "rb") as f:
            head = f.read(_PROBE_BYTES)
        if not head.strip():
            raise ApplianceError("empty_file", f"`{name}` holds only blank space",
                                 {"size_bytes": work.size})
        bom = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            text = decoder.decode(head[bom:], final=len(head) < _PROBE_BYTES)
        except UnicodeDecodeError as exc:
            raise not_utf8(name, bom + exc.start, head[: bom + exc.start].count(b"\n") + 1,
                            head[bom + exc.start: bom + exc.start + 8]) from None
        if len(head) == _PROBE_BYTES and "\n" not in text and "\r" not in text:
            raise ApplianceError(
                "unparseable",
                f"`{name}` has no line break in its first {_PROBE_BYTES >> 20} MB; a CSV file "
                "starts with one header line of column names", {"line": 1})
        try:
            header = next(csv.reader(io.StringIO(text)), [])
        except csv.Error as exc:
            raise ApplianceError("unparseable", f"`{name}`: the header line can't be read: "
                                 f"{exc}", {"line": 1, "error": str(exc)}) from None
        if len(header) > limits.max_columns:
            raise ApplianceError(
                "too_many_columns",
                f"`{name}` has {len(header)} columns, over the limit of {limits.max_columns} "
                "(ingest.max_columns)", {"columns": len(header), "limit": limits.max_columns})
        dupes = sorted(c for c, n in Counter(header).items() if n > 1)
        if dupes:
            raise ApplianceError(
                "duplicate_columns",
                f"`{name}` names column(s) {', '.join(f'`{c}`' for c in dupes[:10])} more than "
                "once in its header; every column needs its own name",
                {"duplicates": dupes[:50], "line": 1})
        lf = pl.scan_csv(path, infer_schema=False, glob=False)
        try:
            have = dict(_polars(lf.collect_schema))
        except _PolarsFailure as exc:
            raise self._csv_failure(work, path, exc) from None
        return lf, have

    # --- converting: one streaming pass from the source to a Parquet file ----------------

    def _scan_csv(self, path: Path, **options: Any) -> pl.LazyFrame:
        return pl.scan_csv(path, glob=False, **options)

    def _convert_first(self, work: Work, path: Path, lf: pl.LazyFrame, have: dict[str, Any],
                       tmp: Path) -> None:
        """The first file of a pipeline: its column types are inferred, and fix the schema."""
        if work.fmt == ".parquet":
            exprs = []
            for col, dtype in have.items():
                kept = _kept_type(dtype)
                if kept is None:
                    raise unsupported_type(work.name, col, dtype)
                exprs.append(pl.col(col) if kept == dtype else pl.col(col).cast(kept))
            self._sink(work, path, lf.select(exprs), tmp)
            return
        # Types from the first rows, read eagerly (fast), then one streaming pass with that
        # schema: a scan told to infer from INFER_ROWS rows itself is about half again slower
        # on a large file. When the head does not parse, the scan's own inference finds and
        # names the problem.
        try:
            head_schema: Any = _polars(lambda: pl.read_csv(
                path, n_rows=INFER_ROWS, try_parse_dates=True, glob=False).schema)
        except _PolarsFailure:
            head_schema = None
        try:
            if head_schema is not None:
                scan = self._scan_csv(path, schema=head_schema)
            else:
                scan = self._scan_csv(path, infer_schema_length=INFER_ROWS,
                                      try_parse_dates=True)
            self._sink(work, path, _plain_types(scan), tmp)
        except ApplianceError as err:
            if err.code != "bad_value":
                raise
            # A value past the rows the types were inferred from does not fit them (a 2.5
            # after ten thousand integers): infer from the whole file instead.
            scan = self._scan_csv(path, infer_schema_length=None, try_parse_dates=True)
            self._sink(work, path, _plain_types(scan), tmp)
            work.warnings.append(
                f"column types were inferred from the whole file, as `{err.details['column']}` "
                f"changes type after row {INFER_ROWS}")

    def _convert_to_schema(self, work: Work, path: Path, lf: pl.LazyFrame,
                           have: dict[str, Any], schema: dict[str, str], tmp: Path) -> None:
        """A later file: keep the schema's columns in its order, cast what casts losslessly,
        refuse a value that does not (naming column, row and value), drop extras."""
        missing = [c for c in schema if c not in have]
        if missing:
            raise ApplianceError(
                "missing_columns",
                f"`{work.name}` lacks column(s) {', '.join(f'`{c}`' for c in missing[:20])} of "
                f"pipeline `{work.pipeline}`'s schema (fixed by its first file)",
                {"missing": missing, "schema": list(schema)},
            )
        extra = [c for c in have if c not in schema]
        if extra:
            shown = ", ".join(extra[:20]) + (f" and {len(extra) - 20} more" if len(extra) > 20
                                               else "")
            work.warnings.append(f"extra column(s) dropped: {shown}")
        wants = {c: dtype_from_name(t) for c, t in schema.items()}
        if work.fmt == ".parquet":
            for col in schema:
                if _kept_type(have[col]) is None:
                    raise unsupported_type(work.name, col, have[col])
            exprs = {c: _lossless(c, have[c], w) if w is not None else pl.col(c)
                     for c, w in wants.items()}
            self._check_values(work, lf, {c: e for c, e in exprs.items() if have[c] != wants[c]
                                          and wants[c] is not None}, wants)
            self._sink(work, path, lf.select(list(exprs.values())), tmp)
            return
        # CSV: the parser reads each column straight into its schema type. A column it can't
        # parse so (an integer column holding "3.0") is read as text and cast losslessly
        # instead, after a pass that finds the first value that does not cast.
        as_text: set[str] = set()
        for _ in range(len(schema) + 1):
            overrides = {c: w for c, w in wants.items() if w is not None and c not in as_text}
            scan = self._scan_csv(path, infer_schema=False, schema_overrides=overrides)
            casts = {c: _lossless(c, pl.String(), wants[c]) for c in as_text}  # type: ignore[arg-type]
            self._check_values(work, scan, casts, wants)
            exprs = [casts.get(c, pl.col(c)) for c in schema]
            try:
                self._sink(work, path, scan.select(exprs), tmp)
                return
            except ApplianceError as err:
                col = err.details.get("column")
                if err.code != "bad_value" or col not in wants or col in as_text:
                    raise
                as_text.add(col)
        raise AssertionError("unreachable: every column was tried as text")

    def _check_values(self, work: Work, lf: pl.LazyFrame, casts: dict[str, pl.Expr],
                      wants: dict[str, pl.DataType | None]) -> None:
        """Refuse the file at the first value of ``casts`` that does not convert."""
        if not casts:
            return
        bad = {c: (pl.col(c).is_not_null() & e.is_null()) for c, e in casts.items()}
        flags = _polars(lambda: lf.select([b.any().alias(c) for c, b in bad.items()]).collect())
        for col in casts:
            if flags[col][0]:
                found = _polars(lambda col=col: lf.with_row_index(_ROW).filter(bad[col])
                                .select(_ROW, pl.col(col).cast(pl.String)).head(1).collect())
                row = int(found[_ROW][0]) + 1 if found.height else None
                value = found[col][0] if found.height else None
                raise bad_value(work, col, row, value, wants[col])

    def _sink(self, work: Work, path: Path, lf: pl.LazyFrame, tmp: Path) -> None:
        try:
            _polars(lambda: lf.sink_parquet(tmp, sync_on_close="all"))
        except _PolarsFailure as exc:
            raise self._read_failure(work, exc) from None

    def _read_failure(self, work: Work, exc: _PolarsFailure) -> ApplianceError:
        """The refusal for a failure of Polars reading the dropped file."""
        if work.fmt == ".parquet" or work.source is None:
            return ApplianceError(
                "unparseable", f"`{work.name}` could not be read as "
                f"{work.fmt.lstrip('.') or 'data'}: {exc.first_line}", {"error": exc.first_line})
        return self._csv_failure(work, work.source, exc)

    # --- the two endings -----------------------------------------------------------------

    def _finish_dataset(self, work: Work, tmp: Path, target: str, first: bool) -> Outcome:
        limits = self.settings.ingest
        stats = _polars(lambda: pl.scan_parquet(tmp, glob=False).select(
            pl.len().alias("rows"), pl.col(target).null_count().alias("nulls")).collect())
        rows, nulls = int(stats["rows"][0]), int(stats["nulls"][0])
        if rows == 0:
            code = "header_only" if work.fmt != ".parquet" else "no_rows"
            raise ApplianceError(code, f"`{work.name}` has a header but no rows",
                                 {"columns": list(_polars(
                                     lambda: pl.scan_parquet(tmp, glob=False).collect_schema()))})
        if rows > limits.max_rows:
            raise ApplianceError(
                "too_many_rows", f"`{work.name}` has {rows} rows, over the limit of "
                f"{limits.max_rows} (ingest.max_rows)", {"rows": rows, "limit": limits.max_rows})
        if nulls:
            if nulls == rows:
                raise ApplianceError(
                    "no_rows", f"every row of `{work.name}` has a null {self._role(work)} "
                    f"`{target}`",
                    {"column": target, "rows": rows})
            kept = tmp.with_name(tmp.name + ".kept")
            work.temps.append(kept)
            with work.timed("drop_null_targets"):
                _polars(lambda: pl.scan_parquet(tmp, glob=False)
                        .filter(pl.col(target).is_not_null())
                        .sink_parquet(kept, sync_on_close="all"))
            os.replace(kept, tmp)
            work.warnings.append(f"{nulls} rows with a null {self._role(work)} were dropped")
            rows -= nulls
        schema = _polars(lambda: pl.scan_parquet(tmp, glob=False).collect_schema())
        return self._accept(work, tmp, rows, {c: str(t) for c, t in schema.items()}, first)

    def _role(self, work: Work) -> str:
        return "key" if work.pipeline in self.settings.feature_sets else "target"

    def _accept(self, work: Work, tmp: Path, rows: int, schema: dict[str, str],
                first: bool) -> Outcome:
        pipeline = work.pipeline
        with work.timed("store"):
            self.store.ensure_pipeline(pipeline)
            if first:
                self.store.set_pipeline_schema(pipeline, schema)
            version = self.store.next_dataset_version(pipeline)
            folder = self.state.pipeline_dir(self.state.datasets, pipeline)
            dataset = folder / f"v{version:06d}.parquet"
            os.replace(tmp, dataset)
            _fsync_dir(folder)
        _step("dataset_written")
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
            lf = self._scan_csv(path, infer_schema_length=INFER_ROWS)
            have = dict(_polars(lf.collect_schema))
        outcome = pl.col(target)
        if want is not None and have[target] != want:
            outcome = _lossless(target, have[target], want)
            self._check_values(work, lf, {target: outcome}, {target: want})
        frame = _polars(lambda: lf.select(
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
        _step("recorded")
        rejected = record.status == "rejected"
        folder = self.state.pipeline_dir(self.state.rejected if rejected else self.state.archive,
                                         pipeline)
        final = final_name(folder, name, record.id) if rejected else free_name(folder, name)
        if rejected and not reason_path(final).exists():
            write_reason(final, record)
            _step("reason_written")
        os.replace(claimed, final)
        _step("moved")
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

    def _send_back(self, work: Work) -> None:
        """The disk filled up while the file was ingested: it goes back to the inbox, to be
        taken again once there is room; it is not at fault, so it is not refused."""
        inbox = self.state.pipeline_dir(self.state.inbox, work.pipeline)
        back = free_name(inbox, work.name)
        shutil.move(work.claimed, back)  # a rename, unless the inbox is another file system
        self.events.emit(
            "waiting_for_space",
            f"{work.name}: the disk of the state directory filled up during ingestion; the "
            "file is back in the inbox and is taken again once there is room",
            pipeline=work.pipeline, level="warning", file=work.name)
        if self.on_requeued is not None:
            self.on_requeued(back)
        return None

    # --- saying where a CSV went wrong ----------------------------------------------------

    def _csv_failure(self, work: Work, path: Path, exc: _PolarsFailure) -> ApplianceError:
        name, text = work.name, exc.text
        if "utf-8" in text.lower() or "utf8" in text.lower():
            offset, line, sample = _locate_bad_utf8(path)
            if offset is not None:
                return not_utf8(name, offset, line, sample)
        m = re.search(r"could not parse `(.*?)` as dtype `([^`]+)` at column '(.*?)'", text, re.S)
        if m:
            value, dtype, col = m.group(1), m.group(2), m.group(3)
            row = self._locate_value(path, col, value)
            return bad_value(work, col, row, value, dtype)
        if "more fields" in text:
            found = _locate_ragged(path)
            if found is not None:
                row, line, fields, expected = found
                return ApplianceError(
                    "unparseable",
                    f"`{name}`: line {line} (row {row}) has {fields} fields, but the header "
                    f"names {expected} columns", {"line": line, "row": row, "fields": fields,
                                                  "expected_fields": expected})
        details: dict[str, Any] = {"error": exc.first_line}
        where = ""
        off = re.search(r"offset in the file is (\d+) bytes", text)
        if off:
            details["byte_offset"] = int(off.group(1))
            details["line"] = _line_at(path, int(off.group(1)))
            where = f" near line {details['line']}"
        return ApplianceError("unparseable",
                              f"`{name}` could not be parsed as CSV{where}: {exc.first_line}",
                              details)

    def _locate_value(self, path: Path, col: str, value: str) -> int | None:
        """The 1-based data row where ``value`` first appears in column ``col``."""
        try:
            found = _polars(lambda: self._scan_csv(path, infer_schema=False)
                            .with_row_index(_ROW).filter(pl.col(col) == value)
                            .select(_ROW).head(1).collect())
        except _PolarsFailure:
            return None
        return int(found[_ROW][0]) + 1 if found.height else None


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _locate_bad_utf8(path: Path) -> tuple[int | None, int | None, bytes]:
    """(byte offset, line, bytes) of the first invalid UTF-8 sequence, read in chunks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    consumed = lines = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            pending = decoder.getstate()[0]  # a partial character held from the last chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                data = pending + chunk
                line = lines + chunk[: max(exc.start - len(pending), 0)].count(b"\n") + 1
                return consumed - len(pending) + exc.start, line, data[exc.start: exc.start + 8]
            consumed += len(chunk)
            lines += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        pending = decoder.getstate()[0]
        return consumed - len(pending), lines + 1, pending[:8]
    return None, None, b""


def _locate_ragged(path: Path) -> tuple[int, int, int, int] | None:
    """(row, line, fields, expected) of the first record with more fields than the header."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
            for row, fields in enumerate(reader, start=1):
                if len(fields) > len(header):
                    return row, reader.line_num, len(fields), len(header)
                if row >= _DIAGNOSE_ROWS:
                    return None
        except (csv.Error, StopIteration):
            return None
    return None


def _line_at(path: Path, offset: int) -> int:
    lines = 0
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0 and (chunk := f.read(min(CHUNK, remaining))):
            lines += chunk.count(b"\n")
            remaining -= len(chunk)
    return lines + 1
