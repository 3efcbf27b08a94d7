"""The online store's memory: the latest feature values of the entities requests ask for,
bounded in keys and bytes, in front of SQLite (the record, ``Store.upsert_online_features``).

A request's key is looked up here first; a key not held is read from SQLite (on a
connection of its own, so never behind the daemon's writes) and kept, the least recently
used keys making room. A new feature set version refreshes only the keys it wrote that are
held; nothing is ever reloaded whole, so a feature set of millions of entities costs the
bound, not its size.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from typing import Any

# Read the stored values of some keys of a feature set: (feature_set, keys) -> {key: values}.
Reader = Callable[[str, list[str]], dict[str, dict[str, Any]]]

_ENTRY_BYTES = 200  # the cache's own share per key (its node, the tuple, the key pair)
REFRESH_CHUNK = 1000  # keys dropped per hold of the lock when a version refreshes them


def _size(key: str, values: dict[str, Any] | None) -> int:
    """What a cached entry holds, in bytes (Python's own sizes, one level deep)."""
    size = _ENTRY_BYTES + sys.getsizeof(key)
    if values is not None:
        size += sys.getsizeof(values) + sum(sys.getsizeof(k) + sys.getsizeof(v)
                                            for k, v in values.items())
    return size


class OnlineStore:
    """The latest feature values per entity key, for the request path: a bounded,
    least-recently-used cache of what ``read`` (SQLite) holds.

    Without ``read`` (tests, tools) it holds only what is put in with :meth:`load`.
    A key with no stored values is remembered as such too (it costs a read otherwise),
    until a version writes it."""

    def __init__(self, read: Reader | None = None, *, max_keys: int = 100_000,
                 max_bytes: int = 64 << 20) -> None:
        self._read = read
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[str, str], tuple[dict[str, Any] | None, int]] = (
            OrderedDict())
        self._bytes = 0
        self._lock = threading.Lock()
        # Bumped by every write to a feature set: a read that started before it must not
        # put what it read (maybe older than the write) into the cache.
        self._generation: dict[str, int] = {}

    # --- the request path ------------------------------------------------------------------

    def get(self, feature_set: str, key: Any) -> dict[str, Any] | None:
        """The values of one key (None: it has none); a request of one row asks this."""
        entry = (feature_set, str(key))
        with self._lock:
            hit = self._cache.get(entry)
            if hit is not None:
                self._cache.move_to_end(entry)
                return hit[0]
        return self.get_many(feature_set, [entry[1]]).get(entry[1])

    def get_many(self, feature_set: str, keys: Iterable[Any]) -> dict[str, dict[str, Any]]:
        """The values of those of ``keys`` that have some, by key (as text); the keys not
        held are read from SQLite in one query."""
        found: dict[str, dict[str, Any]] = {}
        missing: list[str] = []
        with self._lock:
            cache = self._cache
            for raw in keys:
                key = str(raw)
                hit = cache.get((feature_set, key))
                if hit is None:
                    missing.append(key)
                    continue
                cache.move_to_end((feature_set, key))
                if hit[0] is not None:
                    found[key] = hit[0]
            generation = self._generation.get(feature_set, 0)
        if missing and self._read is not None:
            missing = list(dict.fromkeys(missing))
            read = self._read(feature_set, missing)
            found.update(read)
            self._put(feature_set, {k: read.get(k) for k in missing}, generation)
        return found

    # --- what changes it -------------------------------------------------------------------

    def load(self, feature_set: str, entries: dict[str, dict[str, Any]]) -> None:
        """Put these values in (warming at start, or a store without SQLite behind it)."""
        with self._lock:
            generation = self._generation.get(feature_set, 0)
        self._put(feature_set, dict(entries), generation)

    def refresh(self, feature_set: str, keys: Collection[str]) -> int:
        """A version wrote ``keys`` (SQLite has their new values): the held ones are read
        again, the others stay out. Returns how many were refreshed.

        The work is bounded by the cache, not the version (the smaller side is walked),
        and done a chunk at a time, so requests never wait long for the lock."""
        with self._lock:
            self._generation[feature_set] = generation = (
                self._generation.get(feature_set, 0) + 1)
            if len(keys) > len(self._cache):
                candidates = [k for fs, k in self._cache if fs == feature_set]
                written = keys if isinstance(keys, (set, frozenset, dict)) else set(keys)
                candidates = [k for k in candidates if k in written]
            else:
                candidates = [str(k) for k in keys]
        held: list[str] = []
        for start in range(0, len(candidates), REFRESH_CHUNK):
            with self._lock:
                for key in candidates[start:start + REFRESH_CHUNK]:
                    entry = self._cache.pop((feature_set, key), None)
                    if entry is not None:
                        self._bytes -= entry[1]
                        held.append(key)
        if held and self._read is not None:
            read = self._read(feature_set, held)
            self._put(feature_set, {k: read.get(k) for k in held}, generation)
        return len(held)

    def _put(self, feature_set: str, entries: dict[str, dict[str, Any] | None],
             generation: int) -> None:
        sized = [(key, values, _size(key, values)) for key, values in entries.items()]
        for start in range(0, len(sized), REFRESH_CHUNK):
            with self._lock:
                if self._generation.get(feature_set, 0) != generation:
                    return  # written meanwhile: what was read may be older; read it again
                cache = self._cache
                for key, values, size in sized[start:start + REFRESH_CHUNK]:
                    old = cache.pop((feature_set, key), None)
                    if old is not None:
                        self._bytes -= old[1]
                    cache[(feature_set, key)] = (values, size)
                    self._bytes += size
                while cache and (len(cache) > self.max_keys or self._bytes > self.max_bytes):
                    _, (_, size) = cache.popitem(last=False)
                    self._bytes -= size

    # --- what it holds -----------------------------------------------------------------

    def size(self, feature_set: str) -> int:
        """Keys of the feature set held in memory (with values)."""
        with self._lock:
            return sum(1 for (fs, _), (v, _) in self._cache.items()
                       if fs == feature_set and v is not None)

    def held(self) -> tuple[int, int]:
        """(keys, bytes) held in memory, every feature set together."""
        with self._lock:
            return len(self._cache), self._bytes
