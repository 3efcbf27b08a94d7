"""Opening a dropped file with Polars: CSV, CSV.gz and Parquet.

A .csv.gz is first decompressed beside the claimed file, refused once it passes
``ingest.max_file_mb``, and stopped once it passes half the disk space above
``ingest.min_free_mb`` (a gzip bomb stops there, before the disk is full). A Parquet file is
judged by its footer (:mod:`~appliance.ingest.parquet_footer`: row count, declared and
decoded sizes) before anything is loaded. A CSV's header line is checked (UTF-8, column
count, unique names) before Polars scans it. What opens is a lazy scan and the columns'
names and types; the conversion is :mod:`~appliance.ingest.schema`'s.

Every Polars call runs through :func:`polars_call`, so any failure inside the parser, even
a Rust panic, becomes a :class:`PolarsFailure` that refuses that file and nothing else; a
CSV's failure is then diagnosed (:func:`csv_failure`: bad UTF-8, a value that does not
parse, a ragged line) so the refusal names the line and the value.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import mmap
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from appliance.core import ApplianceError, IngestSettings
from appliance.ingest.faults import TRANSIENT, NoRoom, os_error_in
from appliance.ingest.outcomes import bad_value, not_utf8
from appliance.ingest.parquet_footer import FooterError, read_footer
from appliance.ingest.work import CHUNK, Work

_PROBE_BYTES = 4 << 20              # the CSV header must end within this
_ROOM_CHECK_BYTES = 64 << 20        # how often gunzip looks at the disk's free space again
_DIAGNOSE_ROWS = 5_000_000          # how far a ragged-line diagnosis reads with Python's csv
ROW_INDEX = "__appliance_row__"     # the row-number column of a search for a bad value


# --- every Polars call: a failure refuses the file, a fault of the box waits ------------


class PolarsFailure(Exception):
    """Polars failed (an error or a panic); ``text`` is its message."""

    def __init__(self, exc: BaseException) -> None:
        text = str(exc).strip() or type(exc).__name__
        super().__init__(text)
        self.text = text
        self.first_line = text.splitlines()[0][:300]


def polars_call(fn: Callable[[], Any]) -> Any:
    """Run a Polars call; every failure, a panic included, becomes a ``PolarsFailure``,
    except a fault of the box (a full disk, no file descriptors or memory left), which
    stays an ``OSError`` or ``MemoryError``: the file waits, it is not at fault."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except OSError as exc:
        if exc.errno in TRANSIENT:
            raise
        # Polars' own OS errors carry no errno, only text: "Too many open files (os error 24)"
        box = os_error_in(str(exc)) if exc.errno is None else None
        if box is not None:
            raise box from None
        raise PolarsFailure(exc) from None
    except BaseException as exc:  # Polars panics raise PanicException, a BaseException
        box = os_error_in(str(exc))
        if box is not None:
            raise box from None
        raise PolarsFailure(exc) from None


# --- opening: header and metadata checks before any data is read -----------------------


def scan_csv(path: Path, work: Work, **options: Any) -> pl.LazyFrame:
    """A lazy CSV scan of exactly ``path`` (never a glob pattern), with the file's separator
    and decimal mark."""
    return pl.scan_csv(path, glob=False, separator=work.separator,
                       decimal_comma=work.decimal_comma, **options)


def read_csv_head(path: Path, work: Work, rows: int) -> pl.DataFrame:
    """The first ``rows`` rows, read eagerly with the types Polars infers from them."""
    return pl.read_csv(path, n_rows=rows, try_parse_dates=True, glob=False,
                       separator=work.separator, decimal_comma=work.decimal_comma)


def read_csv_text_head(path: Path, work: Work, rows: int) -> pl.DataFrame:
    """The first ``rows`` rows, every column as text."""
    return pl.read_csv(path, n_rows=rows, infer_schema=False, glob=False,
                       separator=work.separator, decimal_comma=work.decimal_comma)


_SEPARATORS = (";", "\t", "|")
_COMMA_DECIMAL = re.compile(r"[+-]?\d+,\d+")
_DOT_DECIMAL = re.compile(r"[+-]?\d*\.\d+([eE][+-]?\d+)?")
_SNIFF_ROWS = 200


def csv_dialect(text: str, separator: str, decimal: str) -> tuple[str, bool]:
    """The separator and whether numbers use a decimal comma, for a CSV that starts with
    ``text``: as configured, or (``auto``) a comma unless the header line has none and has
    a semicolon, a tab or a bar (a European spreadsheet's export); and a decimal comma only
    when the columns are not separated by commas and the first rows' numbers are all
    written ``1,5`` (none ``1.5``)."""
    if separator == "auto":
        header = text.split("\n", 1)[0]
        separator = "," if "," in header else next(
            (c for c in _SEPARATORS if c in header), ",")
    if decimal != "auto":
        return separator, decimal == ","
    if separator == ",":
        return separator, False
    comma = dot = 0
    reader = csv.reader(io.StringIO(text), delimiter=separator)
    try:
        next(reader, None)  # the header
        for i, row in enumerate(reader):
            if i >= _SNIFF_ROWS:
                break
            for value in row:
                v = value.strip()
                if _COMMA_DECIMAL.fullmatch(v):
                    comma += 1
                elif _DOT_DECIMAL.fullmatch(v):
                    dot += 1
    except csv.Error:
        pass  # a broken line: the parser will name it
    return separator, comma > 0 and dot == 0


def gunzip(work: Work, limits: IngestSettings, room: Callable[[], int]) -> Path:
    """Decompress a .csv.gz beside the claimed file (a hidden name, cleaned up after), on
    the running byte budget of :func:`_write_budgeted`: a gzip bomb stops before it fills
    the disk."""
    def chunks(raw: Any) -> Iterator[bytes]:
        total = 0
        with gzip.GzipFile(fileobj=raw) as gz:
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
                    return
                total += len(chunk)
                yield chunk

    out = _write_budgeted(work, work.claimed, ".csv", chunks, limits, room, "decompresses to")
    if out is None:
        raise ApplianceError("empty_file", f"`{work.name}` decompresses to nothing",
                             {"size_bytes": work.size})
    return out


def to_utf8(work: Work, source: Path, encoding: str, limits: IngestSettings,
            room: Callable[[], int]) -> Path:
    """A CSV in another text encoding (``csv_encoding``) converted to UTF-8 beside the
    claimed file, on the same byte budget as gunzip. A byte that is not text in that
    encoding refuses the file, naming where."""
    def chunks(raw: Any) -> Iterator[bytes]:
        decoder = codecs.getincrementaldecoder(encoding)()
        read = 0
        while True:
            data = raw.read(CHUNK)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                offset = read + exc.start
                raise _not_text(work, source, encoding, offset) from None
            read += len(data)
            if text:
                yield text.encode("utf-8")
            if not data:
                return

    out = _write_budgeted(work, source, ".utf8.csv", chunks, limits, room,
                          "converted to UTF-8 takes")
    return out if out is not None else source


def _not_text(work: Work, path: Path, encoding: str, offset: int) -> ApplianceError:
    with open(path, "rb") as f:
        before = f.read(offset)
        sample = f.read(8)
    line = before.count(b"\n") + 1
    return ApplianceError(
        "not_text",
        f"`{work.name}` is not {encoding} text: byte offset {offset} (line {line}) starts "
        f"the invalid bytes {sample!r}; set [{work.section}] csv_encoding to the encoding it "
        "is in, or save it as UTF-8",
        {"byte_offset": offset, "line": line, "bytes": sample.hex(), "encoding": encoding,
         "config_key": f"{work.section}.csv_encoding"})


def repeated_headers(path: Path) -> int:
    """How many lines after the first repeat the header line exactly: CSV files joined end
    to end (`cat a.csv b.csv`), or a logger that writes its header again at each restart.
    Read as data, each such line turns every column of numbers into text. A byte search
    over the file (memory-mapped), so it costs a fraction of reading it."""
    with open(path, "rb") as f:
        header = _header_line(f.readline())
        # A header of numbers only may be a first row of data: identical rows stay.
        if not re.search(rb"[A-Za-z_]", header) or os.fstat(f.fileno()).st_size == 0:
            return 0
        try:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # a file system that can't map files: not checked
            return 0
        with mapped as mm:
            found = 0
            for prefix in (b"\n", b"\n" + codecs.BOM_UTF8):
                needle = prefix + header
                at = mm.find(needle)
                while at != -1:
                    end = at + len(needle)
                    if mm[end:end + 1] in (b"\n", b"\r", b""):
                        found += 1
                    at = mm.find(needle, end)
            return found


def _header_line(line: bytes) -> bytes:
    line = line[len(codecs.BOM_UTF8):] if line.startswith(codecs.BOM_UTF8) else line
    return line.rstrip(b"\r\n")


def drop_repeated_headers(work: Work, source: Path, limits: IngestSettings,
                          room: Callable[[], int]) -> Path:
    """A copy of ``source`` without the lines after the first that repeat its header line
    (see :func:`repeated_headers`), on gunzip's byte budget."""
    def chunks(raw: Any) -> Iterator[bytes]:
        first = raw.readline()
        header = _header_line(first)
        yield first
        out: list[bytes] = []
        size = 0
        for line in raw:
            if _header_line(line) == header:
                continue
            out.append(line)
            size += len(line)
            if size >= CHUNK:
                yield b"".join(out)
                out, size = [], 0
        if out:
            yield b"".join(out)

    out = _write_budgeted(work, source, ".noheaders.csv", chunks, limits, room,
                          "without its repeated headers takes")
    return out if out is not None else source


def is_utf8(encoding: str) -> bool:
    """Whether ``csv_encoding`` is UTF-8, which Polars reads as it is."""
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _write_budgeted(work: Work, source: Path, suffix: str,
                    chunks: Callable[[Any], Iterator[bytes]], limits: IngestSettings,
                    room: Callable[[], int], verb: str) -> Path | None:
    """Write what ``chunks`` makes of ``source`` to a hidden file beside the claimed one
    (cleaned up after), on a running byte budget: refused once it passes
    ``ingest.max_file_mb``, and stopped with :class:`NoRoom` once it passes half the disk
    space above ``ingest.min_free_mb`` (``room()`` at the start; the other half is the
    conversion's) or once the disk falls to that floor meanwhile. None when it wrote
    nothing."""
    limit = limits.max_file_mb * 1024 * 1024
    room_at_start = room()
    budget = min(limit, max(room_at_start, 0) // 2)
    out = work.claimed.with_name("." + work.claimed.name + suffix)
    work.temps.append(out)
    total = 0
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as raw, open(out, "wb") as f:
        for chunk in chunks(raw):
            total += len(chunk)
            if total > limit:
                raise ApplianceError(
                    "file_too_large",
                    f"`{work.name}` {verb} more than {limits.max_file_mb} MB "
                    "(ingest.max_file_mb)",
                    {"decompressed_bytes_over": total, "limit_mb": limits.max_file_mb},
                )
            left = room() if total % _ROOM_CHECK_BYTES < len(chunk) else 1
            if total > budget or left <= 0:
                raise NoRoom(
                    f"`{work.name}` {verb} more than {total / 1e6:.0f} MB, over "
                    f"half the {room_at_start / 1e6:.0f} MB the state directory's disk had "
                    f"free above ingest.min_free_mb ({limits.min_free_mb} MB) when it began",
                    {"decompressed_bytes_over": total, "budget_bytes": budget,
                     "room_bytes_at_start": room_at_start, "room_bytes_left": left,
                     "min_free_mb": limits.min_free_mb})
            f.write(chunk)
    return out if total else None


def open_parquet(work: Work, path: Path,
                 limits: IngestSettings) -> tuple[pl.LazyFrame, dict[str, Any]]:
    """Judge the file by its footer (columns, rows, decoded size) before loading any of it,
    and return a scan of it with its columns' names and types."""
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
        have = dict(polars_call(lf.collect_schema))
    except PolarsFailure as exc:
        raise ApplianceError("unparseable",
                             f"`{name}` is not a readable Parquet file: {exc.first_line}",
                             {"error": exc.first_line}) from None
    return lf, have


def open_csv(work: Work, path: Path, limits: IngestSettings, separator: str = "auto",
             decimal: str = "auto") -> tuple[pl.LazyFrame, dict[str, Any]]:
    """Find the separator and decimal mark (:func:`csv_dialect`, kept on ``work``), check
    the header line (UTF-8, column count, unique names) and return a scan that reads every
    column as text, to learn the names."""
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
                       head[bom + exc.start: bom + exc.start + 8], work.section) from None
    if len(head) == _PROBE_BYTES and "\n" not in text and "\r" not in text:
        raise ApplianceError(
            "unparseable",
            f"`{name}` has no line break in its first {_PROBE_BYTES >> 20} MB; a CSV file "
            "starts with one header line of column names", {"line": 1})
    work.separator, work.decimal_comma = csv_dialect(text, separator, decimal)
    try:
        header = next(csv.reader(io.StringIO(text), delimiter=work.separator), [])
    except csv.Error as exc:
        raise ApplianceError("unparseable", f"`{name}`: the header line can't be read: "
                             f"{exc}", {"line": 1, "error": str(exc)}) from None
    if len(header) > limits.max_columns:
        raise ApplianceError(
            "too_many_columns",
            f"`{name}` has {len(header)} columns, over the limit of {limits.max_columns} "
            "(ingest.max_columns)", {"columns": len(header), "limit": limits.max_columns})
    # A column with a blank name (what a separator at the end of every line leaves) is
    # dropped: it can't be told from the next file's, and a later export without the
    # trailing separator would lack it. The original keeps its values, in archive/.
    work.unnamed = [i for i, c in enumerate(header) if not c.strip()]
    if work.unnamed:
        where = ", ".join(str(i + 1) for i in work.unnamed[:10])
        work.warnings.append(f"{len(work.unnamed)} column(s) with no name in the header "
                             f"(position {where}) were dropped")
    dupes = sorted(c for c, n in Counter(c for c in header if c.strip()).items() if n > 1)
    if dupes:
        raise ApplianceError(
            "duplicate_columns",
            f"`{name}` names column(s) {', '.join(f'`{c}`' for c in dupes[:10])} more than "
            "once in its header; every column needs its own name",
            {"duplicates": dupes[:50], "line": 1})
    lf = scan_csv(path, work, infer_schema=False)
    try:
        have = dict(polars_call(lf.collect_schema))
    except PolarsFailure as exc:
        raise csv_failure(work, path, exc) from None
    if work.unnamed:
        named = work.named(list(have))
        lf, have = lf.select(named), {c: have[c] for c in named}
    return lf, have


# --- saying where the file went wrong --------------------------------------------------


def read_failure(work: Work, exc: PolarsFailure) -> ApplianceError:
    """The refusal for a failure of Polars reading the dropped file."""
    if work.fmt == ".parquet" or work.source is None:
        return ApplianceError(
            "unparseable", f"`{work.name}` could not be read as "
            f"{work.fmt.lstrip('.') or 'data'}: {exc.first_line}", {"error": exc.first_line})
    return csv_failure(work, work.source, exc)


def csv_failure(work: Work, path: Path, exc: PolarsFailure) -> ApplianceError:
    """The refusal for a CSV Polars could not read, saying where: the first bad UTF-8
    byte, the row of a value that does not parse, the first ragged line, or the line
    Polars names."""
    name, text = work.name, exc.text
    if "utf-8" in text.lower() or "utf8" in text.lower():
        offset, line, sample = _locate_bad_utf8(path)
        if offset is not None:
            return not_utf8(name, offset, line, sample, work.section)
    m = re.search(r"could not parse `(.*?)` as dtype `([^`]+)` at column '(.*?)'", text, re.S)
    if m:
        value, dtype, col = m.group(1), m.group(2), m.group(3)
        row = locate_value(path, work, col, value)
        return bad_value(work, col, row, value, dtype)
    if "more fields" in text:
        found = _locate_ragged(path, work.separator)
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


def locate_value(path: Path, work: Work, col: str, value: str) -> int | None:
    """The 1-based data row where ``value`` first appears in column ``col``."""
    try:
        found = polars_call(lambda: scan_csv(path, work, infer_schema=False)
                            .with_row_index(ROW_INDEX).filter(pl.col(col) == value)
                            .select(ROW_INDEX).head(1).collect())
    except PolarsFailure:
        return None
    return int(found[ROW_INDEX][0]) + 1 if found.height else None


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


def _locate_ragged(path: Path, separator: str) -> tuple[int, int, int, int] | None:
    """(row, line, fields, expected) of the first record with more fields than the header."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=separator)
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
