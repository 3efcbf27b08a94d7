"""The online store holds at most its bound in memory (keys and bytes), reads the rest from
SQLite, and a new version refreshes only the keys it wrote: nothing is reloaded whole."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from appliance.core import parse
from appliance.features import FeatureStore
from appliance.features.featurestore import fill_rows
from appliance.features.online import OnlineStore
from appliance.store import Store

N = 2000


def _version(root: Path, store: Store, name: str, frame: pl.DataFrame, version: int) -> str:
    path = f"datasets/{name}/v{version:06d}.parquet"
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(root / path)
    store.record_ingestion(pipeline=name, file_name=f"{version}.csv", status="accepted",
                           received_at="t", dataset=(path, frame.height, str(version)))
    return path


@pytest.fixture
def features(tmp_path: Path):
    settings = parse({"feature_sets": {"machines": {"key": "id", "timestamp": "t"}},
                      "online_store": {"max_keys": 50, "max_mb": 1}})
    store = Store.open(tmp_path / "a.db")
    fs = FeatureStore(settings, store, tmp_path)
    frame = pl.DataFrame({"id": [f"M{i}" for i in range(N)], "t": ["2026-01-01"] * N,
                          "rated": [float(i) for i in range(N)]})
    fs.on_ingested("machines", _version(tmp_path, store, "machines", frame, 1), 1)
    yield fs, store, tmp_path
    store.close()


def test_memory_holds_the_bound_and_every_key_is_served(features):
    fs, _store, _ = features
    assert fs.online.held()[0] <= 50  # a version of 2,000 keys was not loaded whole
    rows = [{"id": f"M{i}"} for i in range(N)]
    fill_rows(rows, "machines", "id", ["rated", "t"], fs.online, "error")
    assert [r["rated"] for r in rows] == [float(i) for i in range(N)]
    keys, size = fs.online.held()
    assert keys <= 50 and size <= 1 << 20
    # The keys asked for last are the ones held: they are served without SQLite.
    assert fs.online.size("machines") == 50
    assert fs.online.get("machines", f"M{N - 1}") == {"t": "2026-01-01", "rated": N - 1.0}
    assert fs.online.get("machines", "M-none") is None


def test_a_new_version_refreshes_what_is_held_and_a_late_row_never_wins(features):
    fs, store, root = features
    assert fs.online.get("machines", "M1")["rated"] == 1.0  # now held
    newer = pl.DataFrame({"id": ["M1", "M7"], "t": ["2026-02-01", "2026-02-01"],
                          "rated": [100.0, 700.0]})
    fs.on_ingested("machines", _version(root, store, "machines", newer, 2), 2)
    assert fs.online.get("machines", "M1")["rated"] == 100.0
    assert fs.online.get("machines", "M7")["rated"] == 700.0
    late = pl.DataFrame({"id": ["M1"], "t": ["2026-01-15"], "rated": [-1.0]})
    fs.on_ingested("machines", _version(root, store, "machines", late, 3), 3)
    assert fs.online.get("machines", "M1")["rated"] == 100.0  # SQLite kept the newer
    assert fs.online.held()[0] <= 50
    # A restart warms the memory with the keys updated last, within the bound.
    again = FeatureStore(fs.settings, store, root)
    again.load()
    assert 0 < again.online.held()[0] <= 50
    assert again.online.get("machines", "M7")["rated"] == 700.0


def test_the_byte_bound_and_a_read_overtaken_by_a_write():
    big = {f"k{i}": {"text": "x" * 1000} for i in range(500)}
    store = OnlineStore(lambda fs, keys: {k: big[k] for k in keys if k in big},
                        max_keys=10_000, max_bytes=100_000)
    found = store.get_many("s", list(big))
    assert len(found) == 500
    keys, size = store.held()
    assert size <= 100_000 and 50 <= keys < 100
    # A read that a write overtakes does not put what it read (maybe older) in memory.
    values = {"a": {"v": 1}}
    racing = OnlineStore(None)

    def read(fs: str, keys: list[str]) -> dict:
        got = {k: dict(values[k]) for k in keys if k in values}
        values["a"] = {"v": 2}
        racing.refresh("s", ["a"])  # the version that wrote v=2 lands meanwhile
        return got

    racing._read = read
    assert racing.get("s", "a") == {"v": 1}  # what that request saw
    assert racing.held()[0] == 0  # but not kept
    racing._read = lambda fs, keys: {k: values[k] for k in keys}
    assert racing.get("s", "a") == {"v": 2}
