"""How a dropped file ends, once it is recorded: its :class:`Outcome`, the name it takes in
``archive/<pipeline>/`` or ``rejected/<pipeline>/`` (never over another file), the
``<file>.reason.json`` written beside a refused one, and the builders of the refusals that
more than one step raises (bad UTF-8, a value that does not fit its column, an unsupported
column type).

The move itself, and the crash-test steps around it, are the ingester's
(``Ingester._finish_recorded``); a crash between them is made safe by these names: a
reason file already written for this very ingestion is found again, never orphaned.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.core import ApplianceError
from appliance.ingest.names import file_format
from appliance.ingest.work import Work
from appliance.store import IngestionRecord


@dataclass
class Outcome:
    """What came of one file: its record, and where the file now lies."""

    record: IngestionRecord
    final_path: Path


# --- where a recorded file goes ----------------------------------------------------------
#
# A file keeps its name when it is free. Else the ingestion id (unique) goes before its
# format suffix, `latest.1234.csv`: two probes, whatever the folder holds (probing
# `name.1`, `name.2`, ... cost a sensor that always drops `latest.csv` one probe per file it
# ever dropped). Only when that name is taken too (a file dropped under such a name) are
# `name.N` suffixes probed.


def unique_name(name: str, unique: int | str) -> str:
    """``name`` made unique by ``unique``, before its format suffix when it has one."""
    fmt = file_format(name)
    if fmt and len(name) > len(fmt):
        return f"{name[:-len(fmt)]}.{unique}{name[-len(fmt):]}"
    return f"{name}.{unique}"


def _candidates(name: str, unique: int | str | None) -> Iterator[str]:
    yield name
    if unique is not None:
        yield unique_name(name, unique)
    n = 1
    while True:
        yield f"{name}.{n}"
        n += 1


def _taken(path: Path) -> bool:
    # lexists: a link (a refused symlink kept as it came) takes its name, dangling or not.
    return os.path.lexists(path) or os.path.lexists(reason_path(path))


def free_name(folder: Path, name: str, unique: int | str | None = None) -> Path:
    """``folder/name``, or, when a file of that name is already there, the name made unique
    by ``unique`` (the ingestion id), or ``name.N``."""
    for candidate in _candidates(name, unique):
        if not _taken(folder / candidate):
            return folder / candidate
    raise AssertionError("unreachable")  # pragma: no cover


def reason_path(final: Path) -> Path:
    return final.with_name(final.name + ".reason.json")


def final_name(folder: Path, name: str, ingestion_id: int) -> Path:
    """Where a refused file goes: a free name (as :func:`free_name`), or the one whose
    reason file a crash already wrote for this very ingestion (so a reason file is never
    orphaned)."""
    for candidate in (folder / c for c in _candidates(name, ingestion_id)):
        reason = reason_path(candidate)
        if not os.path.lexists(candidate):
            if not os.path.lexists(reason):
                return candidate
            with contextlib.suppress(OSError, ValueError):
                if json.loads(reason.read_text()).get("ingestion_id") == ingestion_id:
                    return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def write_reason(final: Path, record: IngestionRecord) -> None:
    reason = reason_path(final)
    tmp = reason.with_name("." + reason.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(
            {"code": record.code or "refused", "message": record.reason or "",
             "details": record.details, "file": final.name, "pipeline": record.pipeline,
             "ingestion_id": record.id, "received_at": record.received_at},
            indent=2, default=str,
        ))
        f.flush()
        os.fsync(f.fileno())  # never an empty reason file after a power cut
    os.replace(tmp, reason)


# --- refusals raised by more than one step -----------------------------------------------


def not_utf8(name: str, offset: int, line: int | None, sample: bytes,
             section: str = "") -> ApplianceError:
    # The usual other encodings: UTF-16 (Excel's "Unicode Text", NUL bytes between
    # letters), and Western European Windows (Excel's plain "CSV", a lone 0x80-0xFF byte).
    if not section:
        hint = ""
    elif sample.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in sample:
        hint = f", or set [{section}] csv_encoding = \"utf-16\""
    else:
        hint = (f", or set [{section}] csv_encoding = \"cp1252\" if it comes from Windows "
                "in Western Europe")
    return ApplianceError(
        "not_utf8",
        f"`{name}` is not UTF-8 text: byte offset {offset} (line {line}) starts the invalid "
        f"bytes {sample[:8]!r}; save the file as UTF-8 (for example, from a spreadsheet, "
        f"'CSV UTF-8'){hint}",
        {"byte_offset": offset, "line": line, "bytes": sample[:8].hex(),
         "config_key": f"{section}.csv_encoding" if section else None})


def bad_value(work: Work, col: str, row: int | None, value: Any,
              want: Any) -> ApplianceError:
    line = row + 1 if row is not None and work.fmt != ".parquet" else None
    where = f"row {row}" + (f" (line {line})" if line else "") if row else "a row"
    return ApplianceError(
        "bad_value",
        f"`{work.name}`, column `{col}`, {where}: value {str(value)[:100]!r} is not "
        f"{want}, the column's type in pipeline `{work.pipeline}`'s schema; fix the value or "
        "drop the row",
        {"column": col, "row": row, "line": line, "value": None if value is None
         else str(value)[:200], "expected": str(want)},
    )


def unsupported_type(name: str, col: str, dtype: Any) -> ApplianceError:
    return ApplianceError(
        "unsupported_type",
        f"`{name}`, column `{col}`: type {dtype} is not supported; columns hold numbers, "
        "text, booleans, dates or datetimes", {"column": col, "type": str(dtype)})
