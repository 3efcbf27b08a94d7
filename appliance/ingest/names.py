"""The names a dropped file carries on its way: which names are taken at all (accepted
formats, writers' temporary names left alone), the safe name it is kept under, and the
``<claim time in ns>__<name>`` it has while claimed in ``processing/<pipeline>/``.

Both halves of ingestion read them: the watcher, to notice and claim a file, and the
ingester, to know its format, its original name and when it was received.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from appliance.store import now_iso

ACCEPTED_SUFFIXES = (".csv", ".csv.gz", ".parquet")
TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", "~")
NAME_MAX_BYTES = 180                # room for the claim prefix, `.N` and `.reason.json`


def is_temporary(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


def file_format(name: str) -> str | None:
    lower = name.lower()
    for suffix in ACCEPTED_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    return None


def safe_name(name: str) -> str:
    """The name a dropped file is kept under: valid UTF-8, printable, never a path, short
    enough for the claim prefix and ``.reason.json``; the format suffix is kept."""
    text = os.fsencode(name).decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() and ch not in "/\\\ufffd" else "_" for ch in text)
    if text.strip(".") == "":
        text = "_" + text
    fmt = file_format(text)
    suffix = text[len(text) - len(fmt):] if fmt else ""
    stem = text[: len(text) - len(suffix)]
    while len((stem + suffix).encode()) > NAME_MAX_BYTES and stem:
        stem = stem[:-1]
    return stem + suffix


def original_name(claimed: Path) -> str:
    """Claimed files are named ``<ns>__<original>``."""
    return claimed.name.split("__", 1)[1] if "__" in claimed.name else claimed.name


def claim_time(claimed: Path) -> str:
    """When the file was claimed (its prefix), as the record's ``received_at``."""
    prefix = claimed.name.split("__", 1)[0]
    if prefix.isdigit() and len(prefix) < 21:
        stamp = datetime.fromtimestamp(int(prefix) / 1e9, UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return now_iso()
