"""The watched bundle source (``[bundles] source``): a folder (a mounted USB stick, a
network share) or an https URL, polled every ``bundles.poll_seconds`` by the job
scheduler. A new bundle (``*.bundle``) for a pipeline this box runs is imported, through
the same checks and promotion policy as ``appliance bundle import``, once: every file
handled (imported, refused, or for a pipeline this box does not run) is remembered by its
SHA-256 in SQLite, so a restart or a renamed copy does not import it again.

A URL is an index: a text file listing one bundle per line (a name relative to the URL,
or an absolute URL); plain http is accepted on loopback only. Each download is bounded by
``bundles.max_bundle_mb``. Only signed bundles come this way unless
``bundles.allow_unsigned``; bare model files are never taken from a source.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx

from appliance.core import ApplianceError, Settings
from appliance.models import ModelImporter, bundle_pipeline
from appliance.store import Events, Store

log = logging.getLogger("appliance.bundles")

SUFFIX = ".bundle"


class BundleSource:
    def __init__(self, store: Store, events: Events, settings: Settings,
                 importer: ModelImporter, pipelines: object) -> None:
        self.store = store
        self.events = events
        self.settings = settings
        self.importer = importer
        self.pipelines = pipelines  # () -> the pipelines this box runs

    def poll(self) -> int:
        """Look at the source once; returns how many bundles were imported."""
        source = self.settings.bundles.source
        if not source:
            return 0
        imported = 0
        try:
            for name, data in self._files(source):
                imported += self._handle(source, name, data)
        except ApplianceError as err:
            log.warning("bundle_source_unreadable source=%s error=%s", source, err.message)
        return imported

    def _handle(self, source: str, name: str, data: bytes) -> int:
        sha = hashlib.sha256(data).hexdigest()
        if self.store.bundle_seen(sha):
            return 0
        try:
            pipeline = bundle_pipeline(data)
        except ApplianceError as err:
            pipeline, why = None, err.message
        else:
            why = None if pipeline else "not a bundle (bare model files are imported by hand)"
        if pipeline is not None and pipeline not in self.pipelines():  # type: ignore[operator]
            self.store.add_bundle_seen(sha256=sha, source=source, name=name, pipeline=pipeline,
                                       outcome="not_for_this_box",
                                       reason=f"this box runs no pipeline `{pipeline}`")
            log.info("bundle_skipped file=%s pipeline=%s (not run here)", name, pipeline)
            return 0
        if pipeline is None:
            self.events.emit("bundle_refused", f"{name} in {source}: {why}; nothing was "
                             "registered", level="warning", file=name, via="source")
            self.store.add_bundle_seen(sha256=sha, source=source, name=name, pipeline=None,
                                       outcome="refused", reason=why)
            return 0
        try:
            result = self.importer.import_bytes(data, pipeline, via=f"source {source}",
                                                file_name=name)
        except ApplianceError as err:  # the event says why; it is not tried again
            self.store.add_bundle_seen(sha256=sha, source=source, name=name, pipeline=pipeline,
                                       outcome="refused", reason=err.message)
            return 0
        self.store.add_bundle_seen(sha256=sha, source=source, name=name, pipeline=pipeline,
                                   outcome="imported", version=result.version,
                                   reason=result.reason)
        return 1

    def _files(self, source: str) -> Iterator[tuple[str, bytes]]:
        limit = self.settings.bundles.max_bundle_mb << 20
        if "://" in source:
            yield from self._urls(source, limit)
            return
        folder = Path(source)
        if not folder.is_dir():
            raise ApplianceError("source_unreadable", f"{folder} is not a folder (unmounted?)")
        settle = self.settings.ingest.settle_seconds
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") or not path.name.endswith(SUFFIX):
                continue
            try:
                st = path.stat()
                if not path.is_file() or path.is_symlink():
                    continue
                if time.time() - st.st_mtime < settle:
                    continue  # still being copied: the next poll takes it
                if st.st_size > limit:  # refused without reading it, once
                    self._oversized(source, path.name, st.st_size, st.st_mtime_ns, limit)
                    continue
                data = path.read_bytes()
            except OSError as exc:
                log.warning("bundle_source_file_unreadable file=%s error=%s", path, exc)
                continue
            yield path.name, data

    def _oversized(self, source: str, name: str, size: int, mtime_ns: int, limit: int
                   ) -> None:
        key = hashlib.sha256(f"oversized:{source}/{name}:{size}:{mtime_ns}".encode()).hexdigest()
        if self.store.bundle_seen(key):
            return
        why = (f"{name} is {size / 1e6:.1f} MB, over bundles.max_bundle_mb "
               f"({limit >> 20} MB)")
        self.events.emit("bundle_refused", f"{why}; nothing was registered", level="warning",
                         file=name, via="source")
        self.store.add_bundle_seen(sha256=key, source=source, name=name, pipeline=None,
                                   outcome="refused", reason=why)

    def _urls(self, url: str, limit: int) -> Iterator[tuple[str, bytes]]:
        _check_url(url)
        with httpx.Client(timeout=60, follow_redirects=False) as http:
            index = _get(http, url, 1 << 20).decode(errors="replace")
            for line in index.splitlines():
                line = line.strip()
                if not line or line.startswith("#") or not line.endswith(SUFFIX):
                    continue
                target = urljoin(url, line)
                try:
                    _check_url(target)
                    yield line.rsplit("/", 1)[-1], _get(http, target, limit)
                except ApplianceError as err:
                    log.warning("bundle_source_download_failed url=%s error=%s", target,
                                err.message)


def _check_url(url: str) -> None:
    parsed = urlparse(url)
    loopback = parsed.hostname in ("127.0.0.1", "localhost", "::1")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and loopback):
        raise ApplianceError("source_unreadable",
                             f"bundles.source {url}: only https URLs (or http on loopback)")


def _get(http: httpx.Client, url: str, limit: int) -> bytes:
    try:
        with http.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise ApplianceError("source_unreadable", f"{url} answered {resp.status_code}")
            chunks, size = [], 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ApplianceError("source_unreadable",
                                         f"{url} is over bundles.max_bundle_mb")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ApplianceError("source_unreadable", f"{url}: {exc}") from None
