"""A check reads a huge data set version as an even sample, never whole."""

from __future__ import annotations

import polars as pl

from appliance.features import read_rows


def test_a_small_version_is_read_whole_and_a_large_one_every_kth_row(tmp_path):
    path = tmp_path / "v000001.parquet"
    pl.DataFrame({"i": range(10_000), "x": [0.5] * 10_000}).write_parquet(path)
    assert read_rows(path, 10_000, limit=10_000)["i"].to_list() == list(range(10_000))
    sample = read_rows(path, 10_000, limit=1_000)
    assert sample["i"].to_list() == list(range(0, 10_000, 10))
    odd = read_rows(path, 10_000, limit=3_000)            # step 4: 2,500 rows, evenly
    assert odd.height == 2_500 and odd["i"][-1] == 9_996
    assert read_rows(path, None, limit=10).height == 10_000   # rows unknown: all of them
