"""The Open Inference Protocol V2 and MLflow's scoring protocol, as the predict route's rows.

Both protocols are other spellings of one predict call: this module turns a body of
either into the predict route's rows (one dict of feature values per row, None for a
missing value), which then go through the very same machinery as ``POST .../predict``
(:meth:`Predictions.answer_predict`: the strict encoder, the feature store, the metrics,
the prediction log and its drift sample), and turns the answer back into the protocol's
shape. Nothing here predicts, validates a feature's value or records anything: a value
the model can't take is refused by the encoder, which names the column.

- Open Inference Protocol: one named input per column (as MLServer's pandas codec and
  tritonclient users send a table), shapes ``[N]`` or ``[N, 1]``, data flat or nested,
  in JSON or with the binary tensor extension (``Inference-Header-Content-Length``, what
  tritonclient sends by default). A NaN of a floating-point input is a missing value
  (numpy clients have no other way to say it); JSON's null is one too.
- MLflow: ``dataframe_split`` (what ``pandas.DataFrame.to_json(orient="split")`` and
  MLflow's clients send), ``dataframe_records``, ``instances``, ``inputs`` (rows, or an
  object of columns), or a ``text/csv`` body with a header line.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import msgspec
import numpy as np

from appliance.api_types import (
    OipInferRequest,
    OipModelMetadata,
    OipResponseOutput,
    OipTensorMetadata,
    PredictResponse,
)
from appliance.core import ApplianceError

# The request parameter that asks for explanations, on both protocols (OIP: the request's
# ``parameters``; MLflow: ``params``). Parsed here and handed to the shared predict
# machinery by :func:`explain_of`; issue 16 item 4 answers it.
EXPLAIN_PARAMETER = "explain"

_decode_oip = msgspec.json.Decoder(OipInferRequest).decode
_decode_any = msgspec.json.Decoder().decode


def _bad(code: str, message: str, status: int = 400, **details: Any) -> ApplianceError:
    return ApplianceError(code, message, details, status=status)


class _Constant(str):
    """NaN, Infinity or -Infinity, as a body wrote it."""


def _lenient_json(body: bytes, what: str) -> Any:
    """JSON, with NaN read as a missing value (numpy clients send NaN for missing).
    Infinity stays a number, for the encoder to refuse by column."""
    try:
        return _decode_any(body)
    except msgspec.DecodeError as strict_error:
        if b"NaN" not in body and b"Infinity" not in body:
            raise _bad("invalid_json", f"the body is not valid JSON ({strict_error}); send "
                       f"{what}", field="(body)") from None
    except RecursionError:
        raise _bad("invalid_json", "the body is not usable JSON: arrays or objects are "
                   "nested too deeply", field="(body)") from None
    try:
        return json.loads(body, parse_constant=lambda c: None if c == "NaN" else
                          (math.inf if c == "Infinity" else -math.inf))
    except (ValueError, RecursionError) as exc:
        raise _bad("invalid_json", f"the body is not valid JSON ({exc}); send {what}",
                   field="(body)") from None


def explain_of(parameters: dict[str, Any] | None) -> int | None:
    """The ``explain`` request parameter (top k contributions per row), or None."""
    if not parameters or EXPLAIN_PARAMETER not in parameters:
        return None
    k = parameters[EXPLAIN_PARAMETER]
    if type(k) is not int or not 1 <= k <= 10_000:
        raise _bad("invalid_parameter", f"parameter `{EXPLAIN_PARAMETER}` must be an "
                   "integer from 1 to 10,000 (the top k feature contributions per row), as "
                   "`explain` on the predict route", field=EXPLAIN_PARAMETER,
                   expected="an integer from 1 to 10000")
    return k


# --- the model's columns, as a client sends them -------------------------------------------

def input_columns(spec: Any) -> list[tuple[str, str]]:
    """(column, OIP datatype) of what a request sends: the model's raw columns (a date is
    one column, not its parts), without the features the appliance fills in itself
    (joined from a feature set, derived), with the keys and inputs those need."""
    joined = {c for j in spec.joins for c in j["columns"]}
    derived = set(spec.derived)
    out: dict[str, str] = {}
    for j in spec.joins:
        out.setdefault(j["key"], "BYTES")
    for name, dtype in spec.derived_inputs.items():
        out.setdefault(name, _datatype_of_dtype(dtype))
    for f in spec.features:
        if f.name in joined or f.name in derived:
            continue
        if f.kind == "numeric":
            out[f.name] = "INT64" if f.dtype.startswith(("Int", "UInt")) else "FP64"
        elif f.kind == "boolean":
            out[f.name] = "BOOL"
        else:
            out[f.name] = "BYTES"
    return list(out.items())


def _datatype_of_dtype(dtype: str) -> str:
    if dtype.startswith(("Int", "UInt")):
        return "INT64"
    if dtype.startswith("Float"):
        return "FP64"
    return "BOOL" if dtype == "Boolean" else "BYTES"


def _label_type(classes: list[Any]) -> str:
    return "INT64" if classes and all(type(c) is int for c in classes) else "BYTES"


def output_tensors(spec: Any) -> list[OipTensorMetadata]:
    """The outputs of infer: the predict route's numbers, and the prediction ids."""
    if spec.task == "multiclass":
        k = len(spec.classes or [])
        outs = [OipTensorMetadata(name="probabilities", datatype="FP64", shape=[-1, k]),
                OipTensorMetadata(name="label", datatype=_label_type(spec.classes or []),
                                  shape=[-1])]
    elif spec.task == "binary":
        outs = [OipTensorMetadata(name="probability", datatype="FP64", shape=[-1])]
    else:
        outs = [OipTensorMetadata(name="value", datatype="FP64", shape=[-1])]
    return [*outs, OipTensorMetadata(name="prediction_id", datatype="BYTES", shape=[-1])]


def model_metadata(name: str, model: Any, versions: list[int]) -> OipModelMetadata:
    return OipModelMetadata(
        name=name, versions=[str(v) for v in versions], platform="lightgbm",
        inputs=[OipTensorMetadata(name=c, datatype=t, shape=[-1])
                for c, t in input_columns(model.spec)],
        outputs=output_tensors(model.spec),
    )


# --- Open Inference Protocol: a request's inputs to rows, the answer to outputs -------------

_BINARY = {"FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4",
           "INT16": "<i2", "INT8": "i1", "UINT64": "<u8", "UINT32": "<u4", "UINT16": "<u2",
           "UINT8": "u1", "BOOL": "?"}
_FLOATS = ("FP64", "FP32", "FP16")
_OIP_WHAT = ('{"inputs": [{"name": column, "shape": [N], "datatype": "FP64", "data": '
             "[...]}, ...]}")


def decode_infer(body: bytes, header_length: bytes | None) -> tuple[OipInferRequest, bytes]:
    """The request and the binary part after its JSON (empty without the extension)."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise _bad("invalid_request", "header Inference-Header-Content-Length must be the "
                       "length of the JSON part of the body, in bytes",
                       field="Inference-Header-Content-Length")
        n = int(header_length)
        body, binary = body[:n], body[n:]
    if not body:
        raise _bad("invalid_request", f"the body is empty; send {_OIP_WHAT}", field="(body)")
    try:
        return _decode_oip(body), binary
    except msgspec.ValidationError as exc:
        raise _bad("invalid_request", f"not an inference request: {exc}; send {_OIP_WHAT}",
                   field="(body)") from None
    except (msgspec.DecodeError, RecursionError):
        doc = _lenient_json(body, _OIP_WHAT)
    try:
        return msgspec.convert(doc, OipInferRequest), binary
    except msgspec.ValidationError as exc:
        raise _bad("invalid_request", f"not an inference request: {exc}; send {_OIP_WHAT}",
                   field="(body)") from None


def _binary_values(name: str, datatype: str, raw: bytes, count: int) -> list[Any]:
    if datatype == "BYTES":
        out: list[Any] = []
        at = 0
        while at < len(raw):
            if at + 4 > len(raw):
                break
            size = int.from_bytes(raw[at:at + 4], "little")
            out.append(raw[at + 4:at + 4 + size].decode("utf-8", "replace"))
            at += 4 + size
        if at != len(raw) or len(out) != count:
            raise _bad("invalid_input", f"input `{name}`: its binary data is not {count} "
                       "length-prefixed strings", field=name)
        return out
    dtype = np.dtype(_BINARY[datatype])
    if len(raw) != count * dtype.itemsize:
        raise _bad("invalid_input", f"input `{name}`: binary_data_size is {len(raw)} bytes, "
                   f"but {count} {datatype} values take {count * dtype.itemsize}", field=name)
    return np.frombuffer(raw, dtype=dtype).tolist()


def _flat(name: str, data: Any, n: int) -> list[Any]:
    """An input's data as N values: flat, or N rows of one value (shape [N, 1])."""
    if not isinstance(data, list):
        raise _bad("invalid_input", f"input `{name}`: `data` must be an array of values",
                   field=name, expected="an array")
    if data and isinstance(data[0], list):
        if not all(isinstance(v, list) and len(v) == 1 for v in data):
            raise _bad("invalid_input", f"input `{name}`: nested `data` must be N rows of "
                       "one value each (shape [N, 1])", field=name)
        data = [v[0] for v in data]
    if len(data) != n:
        raise _bad("invalid_input", f"input `{name}`: shape says {n} values but `data` has "
                   f"{len(data)}", field=name, expected=f"{n} values")
    return data


def infer_rows(request: OipInferRequest, binary: bytes, max_rows: int) -> list[dict[str, Any]]:
    """One row per index of the inputs (one input per column). Values are left for the
    encoder to check against the model, which names the column it refuses."""
    if not request.inputs:
        raise _bad("invalid_request", f"`inputs` is empty; send {_OIP_WHAT}", field="inputs")
    columns: dict[str, list[Any]] = {}
    n_rows: int | None = None
    at = 0
    for inp in request.inputs:
        name = inp.name
        if name in columns:
            raise _bad("invalid_input", f"input `{name}` is sent twice", field=name)
        shape = inp.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
            raise _bad("invalid_input", f"input `{name}`: shape {shape}; a column is sent "
                       "with shape [N] or [N, 1]", field=name, expected="[N] or [N, 1]")
        n = shape[0]
        if n > max_rows:
            raise _bad("batch_too_large", f"{n} rows in one call; at most {max_rows} "
                       "(server.max_batch_rows)", 413, field="inputs", rows=n,
                       limit=max_rows)
        if n_rows is None:
            n_rows = n
        elif n != n_rows:
            raise _bad("invalid_input", f"input `{name}` has {n} rows but "
                       f"`{request.inputs[0].name}` has {n_rows}; every column has the "
                       "same rows", field=name)
        params = inp.parameters
        size = None if params is None else params.get("binary_data_size")
        if size is not None:
            if inp.datatype not in _BINARY and inp.datatype != "BYTES":
                raise _bad("invalid_input", f"input `{name}`: datatype {inp.datatype} "
                           "is not supported", field=name)
            if type(size) is not int or size < 0 or at + size > len(binary):
                raise _bad("invalid_input", f"input `{name}`: binary_data_size {size} is "
                           "beyond the body's binary part", field=name)
            values = _binary_values(name, inp.datatype, binary[at:at + size], n)
            at += size
            if inp.datatype in _FLOATS:  # NaN is how a float array says "missing"
                values = [None if v != v else v for v in values]
        else:  # JSON: a NaN was read as null already
            values = inp.data
            if type(values) is not list or len(values) != n or (
                    values and type(values[0]) is list):
                values = _flat(name, values, n)
        columns[name] = values
    if n_rows == 1:
        return [{name: values[0] for name, values in columns.items()}]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def infer_outputs(model: Any, answer: PredictResponse,
                  requested: list[str] | None) -> list[OipResponseOutput]:
    """The answer as OIP outputs (all, or the ``requested`` names, in their order)."""
    n = len(answer.predictions)
    preds = answer.predictions
    spec = model.spec
    outs: dict[str, OipResponseOutput] = {}
    if spec.task == "multiclass":
        k = len(spec.classes or [])
        outs["probabilities"] = OipResponseOutput(
            name="probabilities", shape=[n, k], datatype="FP64",
            data=[p for row in preds for p in row["probabilities"].values()])
        outs["label"] = OipResponseOutput(name="label", shape=[n],
                                          datatype=_label_type(spec.classes or []),
                                          data=[row["class"] for row in preds])
    else:
        key = "probability" if spec.task == "binary" else "value"
        outs[key] = OipResponseOutput(name=key, shape=[n], datatype="FP64", data=preds)
    outs["prediction_id"] = OipResponseOutput(name="prediction_id", shape=[n],
                                              datatype="BYTES", data=answer.prediction_ids)
    if requested is None:
        return list(outs.values())
    for name in requested:
        if name not in outs:
            raise _bad("unknown_output", f"output `{name}` is not one of this model's: "
                       f"{', '.join(outs)}", field="outputs", expected=list(outs))
    return [outs[name] for name in requested]


# --- MLflow: a scoring request to rows ---------------------------------------------------------

MLFLOW_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_MLFLOW_KEY_SET = frozenset(MLFLOW_KEYS)
_MLFLOW_WHAT = ('{"dataframe_split": {"columns": [...], "data": [[...], ...]}} (or '
                "dataframe_records, instances, inputs), or a text/csv body with a header line")


def _records(rows: Any, key: str) -> list[Any]:
    """Rows as objects; an object of equal-length columns is turned into rows."""
    if isinstance(rows, dict):
        cols = {k: v if isinstance(v, list) else [v] for k, v in rows.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise _bad("invalid_request", f"`{key}`: the columns have different lengths "
                       f"({sorted(lengths)})", field=key)
        names = list(cols)
        return [dict(zip(names, r, strict=True)) for r in zip(*cols.values(), strict=True)]
    if not isinstance(rows, list):
        raise _bad("invalid_request", f"`{key}` must be an array of row objects or an object "
                   "of columns", field=key)
    for r, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _bad("invalid_row", f"`{key}` row {r}: expected an object of feature "
                       f"values (column: value), got {type(row).__name__}", 422, row=r,
                       field="(row)", expected="an object of feature values")
    return rows


def mlflow_json_rows(body: bytes) -> tuple[list[Any], int | None]:
    """(rows, explain) of a JSON scoring request."""
    if not body:
        raise _bad("invalid_request", f"the body is empty; send {_MLFLOW_WHAT}", field="(body)")
    doc = _lenient_json(body, _MLFLOW_WHAT)
    if not isinstance(doc, dict):
        raise _bad("invalid_request", f"the body must be a JSON object; send {_MLFLOW_WHAT}",
                   field="(body)")
    if len(doc) == 1 and (key := next(iter(doc))) in _MLFLOW_KEY_SET:
        explain = None  # the usual body: one key, no params
    else:
        keys = [k for k in MLFLOW_KEYS if k in doc]
        unknown = sorted(set(doc) - {*MLFLOW_KEYS, "params"})
        if len(keys) != 1 or unknown:
            got = ", ".join(f"`{k}`" for k in [*keys, *unknown]) or "none"
            raise _bad("invalid_request", f"the body must have exactly one of "
                       f"{', '.join(MLFLOW_KEYS)} (and optionally params); got {got}",
                       field="(body)", expected=list(MLFLOW_KEYS))
        params = doc.get("params")
        if params is not None and not isinstance(params, dict):
            raise _bad("invalid_request", "`params` must be an object", field="params")
        explain = explain_of(params)
        key = keys[0]
    value = doc[key]
    if key != "dataframe_split":
        return _records(value, key), explain
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
            or not isinstance(value.get("data"), list):
        raise _bad("invalid_request", "`dataframe_split` must be an object with `columns` "
                   "(names) and `data` (rows of values), as pandas' "
                   'to_json(orient="split") writes', field="dataframe_split")
    columns = value["columns"]
    if not all(type(c) is str for c in columns):
        columns = [str(c) for c in columns]
    width = len(columns)
    rows = []
    for r, values in enumerate(value["data"]):
        if type(values) is not list or len(values) != width:
            raise _bad("invalid_row", f"`dataframe_split` row {r}: expected {width} "
                       f"values, one per column", 422, row=r, field="(row)",
                       expected=f"{width} values")
        rows.append(dict(zip(columns, values, strict=False)))  # lengths checked above
    return rows, explain


_TRUE, _FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def _cell(kind: str | None, text: str) -> Any:
    """A CSV cell as the JSON value the encoder expects for its column's kind; a value
    that doesn't parse stays text, for the encoder to refuse by column."""
    if text == "":
        return None
    if kind == "numeric":
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return text
    if kind == "boolean":
        low = text.strip().lower()
        return True if low in _TRUE else False if low in _FALSE else text
    return text


def mlflow_csv_rows(body: bytes, spec: Any) -> list[Any]:
    """Rows of a text/csv body: a header line, then one line per row; an empty cell is
    missing."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad("invalid_csv", "the CSV body is not UTF-8", field="(body)") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if not header:
            raise _bad("invalid_csv", "the CSV body has no header line; the first line names "
                       "the columns", field="(body)")
        kinds = {f.name: f.kind for f in spec.features}
        kinds.update({c: ("numeric" if t in ("FP64", "INT64") else "boolean" if t == "BOOL"
                          else None) for c, t in input_columns(spec) if c not in kinds})
        steps = [(c, kinds.get(c)) for c in header]
        rows = []
        for r, line in enumerate(reader):
            if not line:
                continue
            if len(line) != len(header):
                raise _bad("invalid_row", f"CSV row {r}: {len(line)} values for "
                           f"{len(header)} columns", 422, row=r, field="(row)",
                           expected=f"{len(header)} values")
            rows.append({c: _cell(k, v) for (c, k), v in zip(steps, line, strict=True)})
    except csv.Error as exc:
        raise _bad("invalid_csv", f"the CSV body does not parse: {exc}", field="(body)") from None
    return rows
