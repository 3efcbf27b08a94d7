"""The protocols' bodies to predict's rows (``appliance/serving/protocols.py``), directly: the
shapes, the binary tensor extension, CSV cells by column kind, and each refusal's words. The
answers over real HTTP are compared with predict's in test_protocols.py."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from appliance.core import ApplianceError
from appliance.features import Feature, FeatureSpec
from appliance.serving.protocols import (
    decode_infer,
    explain_of,
    infer_rows,
    input_columns,
    mlflow_csv_rows,
    mlflow_json_rows,
)

SPEC = FeatureSpec(task="binary", target="y", classes=[0, 1], features=[
    Feature(name="t", kind="numeric", dtype="Float64"),
    Feature(name="n", kind="numeric", dtype="Int64"),
    Feature(name="site", kind="categorical", dtype="String", categories=["a", "b"]),
    Feature(name="ok", kind="boolean", dtype="Boolean"),
    Feature(name="day", kind="date", dtype="Date"),
])


def rows_of(doc: dict, binary: bytes = b"", header: bytes | None = None) -> list[dict]:
    body = json.dumps(doc).encode()
    if header is None and binary:
        header = str(len(body)).encode()
    request, rest = decode_infer(body + binary, header)
    return infer_rows(request, rest, 1000)


def test_columns_and_their_datatypes():
    assert input_columns(SPEC) == [("t", "FP64"), ("n", "INT64"), ("site", "BYTES"),
                                   ("ok", "BOOL"), ("day", "BYTES")]


def test_shapes_n_and_n_by_1_flat_or_nested_give_the_same_rows():
    want = [{"t": 1.5, "site": "a"}, {"t": None, "site": None}]
    for shape, t, site in (([2], [1.5, None], ["a", None]),
                           ([2, 1], [[1.5], [None]], [["a"], [None]]),
                           ([2, 1], [1.5, None], ["a", None])):
        doc = {"inputs": [{"name": "t", "shape": shape, "datatype": "FP64", "data": t},
                          {"name": "site", "shape": shape, "datatype": "BYTES", "data": site}]}
        assert rows_of(doc) == want


def test_binary_tensors_with_nan_as_missing_and_length_prefixed_strings():
    floats = np.array([2.5, np.nan]).tobytes()
    strings = b"".join(struct.pack("<I", len(s)) + s for s in (b"b", b"caf\xc3\xa9"))
    flags = np.array([True, False]).tobytes()
    doc = {"inputs": [
        {"name": "t", "shape": [2, 1], "datatype": "FP64",
         "parameters": {"binary_data_size": len(floats)}},
        {"name": "site", "shape": [2], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(strings)}},
        {"name": "ok", "shape": [2], "datatype": "BOOL",
         "parameters": {"binary_data_size": len(flags)}},
        {"name": "n", "shape": [2], "datatype": "INT64", "data": [3, 4]}]}
    assert rows_of(doc, floats + strings + flags) == [
        {"t": 2.5, "site": "b", "ok": True, "n": 3},
        {"t": None, "site": "café", "ok": False, "n": 4}]


def test_nan_in_json_is_missing_and_infinity_is_left_for_the_encoder():
    body = (b'{"inputs": [{"name": "t", "shape": [3], "datatype": "FP64", '
            b'"data": [NaN, 1, Infinity]}]}')
    request, rest = decode_infer(body, None)
    assert infer_rows(request, rest, 10) == [{"t": None}, {"t": 1}, {"t": float("inf")}]


@pytest.mark.parametrize(("doc", "status", "words"), [
    ({"inputs": []}, 400, "`inputs` is empty"),
    ({"inputs": [{"name": "t", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]},
     400, "shape [2, 2]"),
    ({"inputs": [{"name": "t", "shape": [2], "datatype": "FP64", "data": [1]}]}, 400,
     "has 1"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "FP64", "data": [1]},
                 {"name": "n", "shape": [2], "datatype": "INT64", "data": [1, 2]}]}, 400,
     "`n` has 2 rows"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "FP64", "data": [1]},
                 {"name": "t", "shape": [1], "datatype": "FP64", "data": [1]}]}, 400,
     "sent twice"),
    ({"inputs": [{"name": "t", "shape": [5000], "datatype": "FP64", "data": [1] * 5000}]},
     413, "server.max_batch_rows"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "FP64"}]}, 400, "array"),
    ({"inputz": []}, 400, "not an inference request"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "FP64",
                  "parameters": {"binary_data_size": 99}}]}, 400, "beyond"),
])
def test_infer_refusals_name_the_input(doc, status, words):
    with pytest.raises(ApplianceError) as caught:
        rows_of(doc)
    assert caught.value.status == status and words in caught.value.message


def test_mlflow_bodies():
    rows = [{"t": 1.5, "site": "a"}, {"t": None, "site": "b"}]
    split = {"dataframe_split": {"columns": ["t", "site"], "index": [0, 1],
                                 "data": [[1.5, "a"], [None, "b"]]}}
    for doc in (split, {"dataframe_records": rows}, {"instances": rows},
                {"inputs": {"t": [1.5, None], "site": ["a", "b"]}},
                {"inputs": rows, "params": {"explain": 3}}):
        got, explain = mlflow_json_rows(json.dumps(doc).encode())
        assert got == rows
        assert explain == (3 if "params" in doc else None)
    for doc, words in (({"dataframe_records": rows, "instances": rows}, "exactly one"),
                       ({"rows": rows}, "exactly one"),
                       ({"dataframe_split": {"columns": ["t"], "data": [[1, 2]]}}, "row 0"),
                       ({"dataframe_records": [rows[0], 5]}, "row 1"),
                       ({"inputs": rows, "params": {"explain": -1}}, "explain")):
        with pytest.raises(ApplianceError, match=words):
            mlflow_json_rows(json.dumps(doc).encode())


def test_csv_cells_follow_their_columns_kind():
    body = b"t,n,site,ok,day,extra\n1.5,3,a,true,2026-01-02,x\n,,,,,\nhot,2.0,7,maybe,x,y\n"
    assert mlflow_csv_rows(body, SPEC) == [
        {"t": 1.5, "n": 3, "site": "a", "ok": True, "day": "2026-01-02", "extra": "x"},
        {"t": None, "n": None, "site": None, "ok": None, "day": None, "extra": None},
        # what doesn't parse stays text, for the encoder to refuse naming its column
        {"t": "hot", "n": 2.0, "site": "7", "ok": "maybe", "day": "x", "extra": "y"}]
    with pytest.raises(ApplianceError, match="row 0: 1 values for 6 columns"):
        mlflow_csv_rows(b"t,n,site,ok,day,extra\n1\n", SPEC)


def test_explain_parameter_hook():
    assert explain_of(None) is None and explain_of({"explain": 2}) == 2
    for bad in (True, "3", 1.5, -1, 0, 10_001):
        with pytest.raises(ApplianceError, match="explain"):
            explain_of({"explain": bad})
