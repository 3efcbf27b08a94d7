"""The name a file takes in archive/ or rejected/ costs the same whatever the folder holds:
a sensor that always drops `latest.csv` must not make each ingestion probe every earlier
`latest.csv` (quadratic over the box's life)."""

from __future__ import annotations

import os
import time

import pytest

from appliance.core import StateDir, parse
from appliance.ingest import Ingester
from appliance.store import Events, Store
from tests.ingest.ingest_files import good_csv

EARLIER = 1000  # same-named files already in the folder


class StatCounter:
    """Counts the stat system calls Python makes (os.stat, os.lstat and what calls them)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real_stat, real_lstat = os.stat, os.lstat

        def stat(*args, **kwargs):
            self.calls += 1
            return real_stat(*args, **kwargs)

        def lstat(*args, **kwargs):
            self.calls += 1
            return real_lstat(*args, **kwargs)

        monkeypatch.setattr(os, "stat", stat)
        monkeypatch.setattr(os, "lstat", lstat)


def _ingest(tmp_path, name: str, content: bytes, area: str, crowd: int,
            monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Ingest one file named ``name`` with ``crowd`` same-named files already in
    ``area``/p; returns (stat calls made, the name it took)."""
    state = StateDir(tmp_path / f"s{crowd}{area}")
    state.create()
    settings = parse({"pipelines": {"p": {"retrain": {"min_new_rows": 10**9}}}})
    store = Store.open(state.db)
    ingester = Ingester(state, store, Events(store), settings)
    folder = state.pipeline_dir(getattr(state, area), "p")
    for i in range(crowd):
        (folder / (name if i == 0 else f"{name}.{i}")).write_bytes(b"earlier")
        if area == "rejected":
            (folder / (name if i == 0 else f"{name}.{i}")).with_name(
                f"{name if i == 0 else f'{name}.{i}'}.reason.json").write_text("{}")
    before = set(os.listdir(folder))
    claimed = state.pipeline_dir(state.processing, "p") / f"{time.time_ns()}__{name}"
    claimed.write_bytes(content)
    with monkeypatch.context() as m:
        counter = StatCounter(m)
        outcome = ingester.process(claimed, "p")
    store.close()
    assert outcome is not None and outcome.final_path.exists()
    (taken,) = set(os.listdir(folder)) - before - {outcome.final_path.name + ".reason.json"}
    return counter.calls, taken


@pytest.mark.parametrize(("area", "content"), [
    ("archive", good_csv(20)),
    ("rejected", b"x,y,kind,target\n1,0.5,a,1\n2,1,b,0,7\n"),
], ids=["archive", "rejected"])
def test_a_name_taken_many_times_costs_no_more_than_a_free_one(tmp_path, monkeypatch, area,
                                                               content):
    alone, first = _ingest(tmp_path, "latest.csv", content, area, 0, monkeypatch)
    crowded, later = _ingest(tmp_path, "latest.csv", content, area, EARLIER, monkeypatch)
    assert crowded - alone < 10, (
        f"{crowded - alone} more stat calls with {EARLIER} same-named files in {area}/")
    assert first == "latest.csv"
    # The ingestion id makes the name unique, and the format suffix stays last.
    assert later.startswith("latest.") and later.endswith(".csv") and later != "latest.csv"
