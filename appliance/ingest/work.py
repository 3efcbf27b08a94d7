"""One claimed file in flight: :class:`Work` carries what the ingester learns of it (format,
size, hash, warnings, timings) and what it must clean up (temporary files); its content hash
is computed by :class:`HashJob` on a thread of its own while Polars converts it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.ingest.faults import TRANSIENT
from appliance.store import monotonic_ms

CHUNK = 1 << 20                     # the read size of the hash, gunzip and CSV diagnosis


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb", buffering=0) as f:
        buf = bytearray(CHUNK * 4)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


@dataclass
class Work:
    """One claimed file on its way through :meth:`Ingester.process`."""

    claimed: Path
    pipeline: str
    name: str
    received: str
    started: float
    fmt: str = ""
    sha: str | None = None
    size: int | None = None
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    temps: list[Path] = field(default_factory=list)
    hashing: HashJob | None = None
    source: Path | None = None          # what Polars reads: the file, or its decompressed copy
    separator: str = ","                # a CSV's column separator and decimal mark, as
    decimal_comma: bool = False         # configured or found in its first lines (open_csv)
    section: str = ""                   # its config section: pipelines.NAME, feature_sets.NAME
    timestamp: str | None = None        # the section's timestamp column, and its format
    timestamp_format: str | None = None
    hash_error: OSError | None = None
    unnamed: list[int] = field(default_factory=list)  # a CSV's columns with a blank name

    def named(self, columns: list[str]) -> list[str]:
        """A CSV's ``columns``, in file order, without those whose header is blank (they
        are dropped: see open_csv)."""
        skip = set(self.unnamed)
        return [c for i, c in enumerate(columns) if i not in skip]

    def digest(self) -> str | None:
        """The file's sha256, once its hashing thread is done (None if it failed)."""
        if self.sha is None and self.hashing is not None:
            job, self.hashing = self.hashing, None
            job.join()
            self.sha = job.value
            self.hash_error = job.error
            self.timings["hash"] = job.ms
        return self.sha

    def content_hash(self) -> str:
        """The sha256 the duplicate check needs; a hash that failed for a fault of the box
        (no file descriptors, say) raises it, as the file is then not at fault."""
        sha = self.digest()
        if sha is None and self.hash_error is not None and self.hash_error.errno in TRANSIENT:
            raise self.hash_error
        return sha or ""

    @contextlib.contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[step] = round(self.timings.get(step, 0) + monotonic_ms(t0), 1)

    def cleanup(self) -> None:
        for path in self.temps:
            if path.is_dir() and not path.is_symlink():
                # Polars' streaming sink can still create its file just after it reported
                # an error; in a removed folder it can't, so nothing half written is left.
                shutil.rmtree(path, ignore_errors=True)
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


class HashJob(threading.Thread):
    """Hashes a file on its own thread while Polars converts it, so the file's content hash
    costs no extra wall time (hashlib releases the GIL; the second read hits the page
    cache)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="ingest-hash", daemon=True)
        self.path = path
        self.value: str | None = None
        self.error: OSError | None = None
        self.ms = 0.0
        self.start()

    def run(self) -> None:
        t0 = time.monotonic()
        try:
            self.value = _sha256(self.path)
        except OSError as exc:
            self.error = exc
        self.ms = monotonic_ms(t0)
