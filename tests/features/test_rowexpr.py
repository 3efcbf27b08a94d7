"""Derived features of request rows in plain Python (``appliance.rowexpr``): the same
values as Polars, bit for bit, or Polars does it.

The property test draws random SQL expressions from the grammar the evaluator covers (and
some it doesn't) over typed columns, and random rows with nulls, zeros, negatives and
extremes, and compares the evaluator with Polars on the same rows: a one-row frame per
row (what a one-row request computed before) and one frame of all the rows (a batch).
"""

from __future__ import annotations

import logging
import math
import os

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from appliance.core import ApplianceError
from appliance.features import featurestore, rowexpr
from appliance.features.featurestore import derive_rows, derive_rows_polars
from appliance.features.rowexpr import Fallback, RowProgram, Unsupported, same_value

SCHEMA = {"i": pl.Int64, "j": pl.Int64, "m": pl.Int32, "h": pl.Int16, "k": pl.Int8,
          "u": pl.UInt8, "v": pl.UInt32, "w": pl.UInt64, "f": pl.Float64, "g": pl.Float64,
          "b": pl.Boolean, "c": pl.Boolean, "s": pl.String, "t": pl.String}
INTS = ["i", "j", "m", "h", "k", "u", "v", "w"]
FLOATS = ["f", "g"]

EXAMPLES = int(os.environ.get("ROWEXPR_EXAMPLES", "1000"))


def _int_values(lo: int, hi: int) -> st.SearchStrategy:
    edges = [v for v in (0, 1, -1, 2, -2, 3, 7, -7, lo, hi, lo + 1, hi - 1) if lo <= v <= hi]
    return st.one_of(st.none(), st.sampled_from(edges), st.integers(max(lo, -10), 10),
                     st.integers(lo, hi))


VALUES = {
    "Int64": _int_values(-(2**63), 2**63 - 1), "Int32": _int_values(-(2**31), 2**31 - 1),
    "Int16": _int_values(-(2**15), 2**15 - 1), "UInt32": _int_values(0, 2**32 - 1),
    "Int8": _int_values(-128, 127), "UInt8": _int_values(0, 255),
    "UInt64": _int_values(0, 2**64 - 1),
    "Float64": st.one_of(st.none(), st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 2.5,
                                                     1.5, 0.1, 3.0, 1e300, -1e300, 1e-310]),
                         st.floats(-1e6, 1e6), st.floats(allow_nan=False, allow_infinity=False),
                         st.integers(-100, 100)),
    "Boolean": st.one_of(st.none(), st.booleans()),
    "String": st.one_of(st.none(), st.sampled_from(["", "a", "b", "ab", "é", "A", " "]),
                        st.text(max_size=3)),
}


def rows_strategy(n_max: int = 4) -> st.SearchStrategy:
    row = st.fixed_dictionaries({col: VALUES[str(dtype())] for col, dtype in SCHEMA.items()})
    return st.lists(row, min_size=1, max_size=n_max)


# --- the grammar ------------------------------------------------------------------------

INT_LITERALS = st.sampled_from(["0", "1", "2", "3", "-1", "7", "10", "100", "1000",
                                "2147483648", "9223372036854775807", "300"])
DEC_LITERALS = st.sampled_from(["0.5", "1.8", "2.25", "0.1", "100.0", "0.001", "1.50", "3.0"])
FLOAT_LITERALS = st.sampled_from(["1e3", "2.5e-3", "1e300"])


def numeric(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(st.sampled_from(INTS + FLOATS), INT_LITERALS, DEC_LITERALS,
                     FLOAT_LITERALS, st.sampled_from(["NULL", "LENGTH(s)", "b"]))
    if depth == 0:
        return leaf
    sub = numeric(depth - 1)
    pred = predicate(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["+", "-", "*", "/", "//", "%"]), sub).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        sub.map(lambda a: f"(-{a})"),
        st.tuples(st.sampled_from(["ABS", "SQRT", "EXP", "LN", "LOG10", "LOG2", "FLOOR",
                                   "CEIL", "SIGN", "ROUND", "TRUNC", "CBRT"]), sub).map(
            lambda t: f"{t[0]}({t[1]})"),
        st.tuples(sub, st.sampled_from(["0", "1", "2", "3", "0.5", "-1", "2.5", "10", "-0.5",
                                        "NULL", "g"])).map(lambda t: f"POWER({t[0]}, {t[1]})"),
        st.tuples(sub, st.sampled_from(["0", "1", "2", "3"])).map(
            lambda t: f"ROUND({t[0]}, {t[1]})"),
        st.tuples(sub, st.sampled_from(["2", "3", "0.5", "10"])).map(
            lambda t: f"LOG({t[0]}, {t[1]})"),
        st.tuples(st.sampled_from(["CAST", "TRY_CAST"]), sub,
                  st.sampled_from(["DOUBLE", "INT", "BIGINT", "SMALLINT", "TINYINT",
                                   "UTINYINT", "REAL", "BOOLEAN"])).map(
            lambda t: f"{t[0]}({t[1]} AS {t[2]})"),
        st.tuples(st.sampled_from(["COALESCE", "GREATEST", "LEAST", "NULLIF"]),
                  st.lists(sub, min_size=2, max_size=3)).map(
            lambda t: f"{t[0]}({', '.join(t[1][:2] if t[0] == 'NULLIF' else t[1])})"),
        st.tuples(pred, sub, sub).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} ELSE {t[2]} END"),
        st.tuples(pred, sub).map(lambda t: f"CASE WHEN {t[0]} THEN {t[1]} END"),
    )


def predicate(depth: int) -> st.SearchStrategy[str]:
    leaf = st.one_of(st.sampled_from(["b", "c", "TRUE", "FALSE", "s = 'a'", "s < t",
                                      "s IN ('a', 'b')", "i IN (1, 2, NULL)", "f IN (0, 1.5)",
                                      "(s || 'x') = 'ax'"]))
    if depth == 0:
        return leaf
    sub = numeric(depth - 1)
    pred = predicate(depth - 1)
    return st.one_of(
        leaf,
        st.tuples(sub, st.sampled_from(["=", "<>", "<", "<=", ">", ">="]), sub).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(pred, st.sampled_from(["AND", "OR"]), pred).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"),
        pred.map(lambda p: f"(NOT {p})"),
        st.tuples(sub, st.sampled_from(["IS NULL", "IS NOT NULL"])).map(
            lambda t: f"({t[0]} {t[1]})"),
        st.tuples(sub, sub, sub).map(lambda t: f"({t[0]} BETWEEN {t[1]} AND {t[2]})"),
        st.tuples(sub, st.sampled_from(["IS DISTINCT FROM", "IS NOT DISTINCT FROM"]),
                  sub).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        sub.map(lambda a: f"({a} IN (1, 2, 3))"),
    )


EXPRESSIONS = st.one_of(numeric(3), predicate(2),
                        st.sampled_from(["s || t", "s || 'x'", "CAST(i AS VARCHAR)",
                                         "CAST(b AS VARCHAR) || s"]))


# --- comparing ----------------------------------------------------------------------------


def _polars(expr: pl.Expr, rows: list[dict]) -> list | Exception:
    frame = pl.DataFrame({col: pl.Series(col, [r[col] for r in rows], dtype=dtype, strict=True)
                          for col, dtype in SCHEMA.items()})
    try:
        return frame.with_columns(expr.alias("x")).get_column("x").to_list()
    except Exception as exc:  # Polars refuses (a strict cast of an out-of-range value...)
        return exc


def _program(text: str) -> RowProgram | None:
    try:
        return RowProgram([("x", pl.sql_expr(text))], {c: t() for c, t in SCHEMA.items()})
    except Unsupported:
        return None


def check_same_as_polars(text: str, rows: list[dict]) -> str:
    """Assert the evaluator gives Polars' values; returns how it went (for the counts)."""
    try:
        expr = pl.sql_expr(text)
    except Exception:
        return "not SQL"
    program = _program(text)
    if program is None:
        return "unsupported"
    def mine(row: dict, batch: bool) -> object:
        try:
            return program.run(row, batch)["x"]
        except Fallback:
            return Fallback

    ones = [mine(row, False) for row in rows]
    for row, got in zip(rows, ones, strict=True):
        if got is Fallback:
            continue
        want = _polars(expr, [row])  # a one-row request
        assert not isinstance(want, Exception), (text, row, got, want)
        assert same_value(got, want[0]), (text, row, got, want[0])
    if len(rows) > 1:  # a batch request
        batch = _polars(expr, rows)
        if isinstance(batch, Exception) and not any(
                isinstance(_polars(expr, [row]), Exception) for row in rows):
            # Polars fails on the batch but on no row alone (a bug of its own): the self-check
            # must see it too, and leave batches to Polars.
            assert program.self_check() is None
            with pytest.raises(Fallback):
                program.run(rows[0], batch=True)
            return "polars fails on the batch"
        got = [mine(row, True) for row in rows]
        if Fallback in got:  # the whole request goes to Polars
            return "fallback" if Fallback in ones else "batch fallback"
        assert not isinstance(batch, Exception), (text, rows, got, batch)
        for mine_value, want in zip(got, batch, strict=True):
            assert same_value(mine_value, want), (text, rows, got, batch)
    return "fallback" if Fallback in ones else "same"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("ROWEXPR_SEED"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(text=EXPRESSIONS, rows=rows_strategy())
def test_random_expressions_give_polars_values_bit_for_bit(text, rows):
    event(check_same_as_polars(text, rows))


@settings(max_examples=EXAMPLES // 4, deadline=None, derandomize=not os.environ.get(
    "ROWEXPR_SEED"), suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(first=numeric(2), second=numeric(2), rows=rows_strategy())
def test_chained_derived_features_give_polars_values(first, second, rows):
    """A derived feature read by the next one: its type and value (and, in a batch,
    whether Polars holds it as one value) carry over."""
    second = second.replace("g", "x1")
    try:
        exprs = [("x1", pl.sql_expr(first)), ("x2", pl.sql_expr(second))]
        program = RowProgram(exprs, {c: t() for c, t in SCHEMA.items()})
    except Exception:  # not SQL, or not covered
        return
    for batch in ([[row] for row in rows] + ([rows] if len(rows) > 1 else [])):
        try:
            got = [program.run(row, len(batch) > 1) for row in batch]
        except Fallback:
            continue
        want = program.run_polars(batch)
        for mine_values, polars_values in zip(got, want, strict=True):
            for name in ("x1", "x2"):
                assert same_value(mine_values[name], polars_values[name]), (
                    first, second, batch, got, want)


# Common feature engineering: each must compile (so the property test isn't vacuous) and
# agree with Polars on every probe row.
COMMON = [
    "rpm_f / rated_f", "rpm / rated_rpm", "f * 1.8 + 32", "i * 1.8 + 32", "(f - g) / g",
    "i // 3", "i % 7", "-f", "ABS(f - g)", "SQRT(f * f + g * g)", "POWER(f, 2)",
    "POWER(i, 2)", "POWER(f, 0.5)", "POWER(f, 1.5)", "LN(f + 1)", "LOG10(f)", "LOG2(f)",
    "LN(i)", "EXP(f / 100)", "CASE WHEN f > 0.5 THEN 1 ELSE 0 END",
    "CASE WHEN s = 'a' THEN f ELSE g END", "CASE WHEN b AND f > g THEN i ELSE 0 END",
    "COALESCE(f, 0)", "COALESCE(i, j, 0)", "GREATEST(f, g)", "LEAST(i, 10)",
    "f IS NULL", "i IS NOT NULL", "CAST(i AS DOUBLE) / 3", "CAST(f AS INT)",
    "CAST(b AS INT)", "NOT b", "b OR c", "i BETWEEN 1 AND 10", "s IN ('a', 'b')",
    "NULLIF(g, 0)", "f / NULLIF(g, 0)", "ROUND(f)", "ROUND(f, 2)", "FLOOR(f)", "CEIL(f / 3)",
    "SIGN(f)", "i + j", "i * j", "m * 2", "k + 1", "u - 1", "w + 1", "i / 0", "f / 0",
    "i // 0", "LENGTH(s)", "s || t", "f * 2.5", "i - 0.5", "i + 2.5 > f", "i / 60.0",
    "ROUND(i * 1.8 + 32, 1)", "FLOOR(i * 0.5)", "f / 2.5", "CASE WHEN b THEN f / 2.5 END",
    "i IS DISTINCT FROM j", "TRY_CAST(f AS INT)", "CAST(i AS VARCHAR) || s",
]
COMMON_SCHEMA = {**SCHEMA, "rpm": pl.Int64, "rated_rpm": pl.Int64, "rpm_f": pl.Float64,
                 "rated_f": pl.Float64}


@pytest.mark.parametrize("text", COMMON)
def test_common_expressions_are_compiled_and_pass_the_self_check(text):
    program = RowProgram([("x", pl.sql_expr(text))], {c: t() for c, t in COMMON_SCHEMA.items()})
    assert program.self_check() is None


def test_the_semantics_that_differ_from_python():
    def run(text, **row):
        full = {c: None for c in SCHEMA} | row
        return RowProgram([("x", pl.sql_expr(text))], {c: t() for c, t in SCHEMA.items()}
                          ).run(full)["x"]

    assert run("i / j", i=7, j=2) == 3.5                     # SQL / of integers is a float
    assert run("i / j", i=1, j=0) == math.inf and math.isnan(run("i / j", i=0, j=0))
    assert run("f / g", f=-1.0, g=0.0) == -math.inf
    assert run("i // j", i=-7, j=2) == -3 and run("i % j", i=-7, j=2) == -1   # truncated
    assert run("i // j", i=1, j=0) is None and run("i % j", i=1, j=0) is None
    assert math.copysign(1, run("f % g", f=-7.5, g=2.0)) == -1                # fmod
    assert run("f = g", f=math.nan, g=math.nan) is True      # Polars' total order
    assert run("f > g", f=math.nan, g=math.inf) is True
    assert run("b AND c", b=None, c=False) is False and run("b OR c", b=None, c=True)
    assert run("f + g", f=1.0, g=None) is None
    assert str(run("i * 1.8 + 32", i=10)) == "50.0"          # a decimal, as Polars gives
    assert run("CASE WHEN b THEN 1 ELSE 2 END", b=None) == 2


def test_a_batch_takes_polars_kernels_for_a_column_with_a_constant():
    inputs = {"f": "Float64", "b": "Boolean"}

    def both(text: str, rows: list[dict]) -> tuple[list, list]:
        exprs = {"x": text}
        fast, slow = [dict(r) for r in rows], [dict(r) for r in rows]
        derive_rows(fast, exprs, inputs)
        derive_rows_polars(slow, exprs, inputs)
        return [r["x"] for r in fast], [r["x"] for r in slow]

    # A frame of one row: IEEE division. Of more (training's): Polars multiplies by the
    # reciprocal of a constant. A request row, even alone, is computed as in training.
    one_row_frame = pl.DataFrame({"f": [7.0]}).select(pl.sql_expr("f / 2.5"))
    assert one_row_frame.item() == 2.8
    assert both("f / 2.5", [{"f": 7.0}]) == ([2.8000000000000003],) * 2
    assert both("f / 2.5", [{"f": 7.0}] * 2) == ([2.8000000000000003] * 2,) * 2
    # `0 - x` is -x in a frame of rows (a zero keeps its sign), 0.0 - 0.0 for one row.
    one, batch = both("-f", [{"f": 0.0}]), both("-f", [{"f": 0.0}, {"f": 1.0}])
    assert math.copysign(1, one[0][0]) == math.copysign(1, one[1][0]) == -1
    assert math.copysign(1, batch[0][0]) == math.copysign(1, batch[1][0]) == -1
    # Whether CASE WHEN gives a column or one value depends on the rows: batches of such an
    # expression go to Polars.
    text = "f / CASE WHEN b THEN 2.5 ELSE 2.5 END"
    program = featurestore._row_program((("x", text),), tuple(inputs.items()))
    assert program is not None
    with pytest.raises(Fallback):
        program.run({"f": 7.0, "b": True}, batch=True)
    for rows in ([{"f": 7.0, "b": True}] * 2, [{"f": 7.0, "b": True}, {"f": 7.0, "b": None}]):
        fast, slow = both(text, rows)
        assert all(map(same_value, fast, slow))


def test_a_batch_polars_fails_on_is_left_to_polars():
    # Polars fails on this batch when `i` is null in every row, though it computes each
    # row alone: the self-check finds it, and such batches fail as they did.
    exprs = {"x": "ABS(0) IS DISTINCT FROM COALESCE(i, 0)"}
    inputs = {"i": "Int64"}
    rows = [{"i": None}, {"i": None}]
    with pytest.raises(Exception) as before:
        derive_rows_polars([dict(r) for r in rows], exprs, inputs)
    with pytest.raises(Exception) as now:
        derive_rows([dict(r) for r in rows], exprs, inputs)
    assert type(now.value) is type(before.value)
    one = [{"i": None}]
    derive_rows(one, exprs, inputs)
    assert one[0]["x"] is False


def test_integer_overflow_goes_to_polars():
    program = RowProgram([("x", pl.sql_expr("i * j"))], {"i": pl.Int64(), "j": pl.Int64()})
    with pytest.raises(Fallback):
        program.run({"i": 2**62, "j": 4})
    assert program.run({"i": 2**31, "j": 4}) == {"x": 2**33}
    # Through derive_rows, the request is computed by Polars, which wraps around.
    rows = [{"i": 2**62, "j": 4}]
    derive_rows(rows, {"x": "i * j"}, {"i": "Int64", "j": "Int64"})
    assert rows[0]["x"] == 0
    rows = [{"k": 100}]
    derive_rows(rows, {"x": "k + k"}, {"k": "Int8"})
    assert rows[0]["x"] == -56


def test_unsupported_expressions_fall_back_to_polars_with_its_values():
    for text in ["UPPER(s)", "CBRT(f)", "POWER(f, g)", "f::real", "SUBSTR(s, 1, 2)"]:
        with pytest.raises(Unsupported):
            RowProgram([("x", pl.sql_expr(text))], {c: t() for c, t in SCHEMA.items()})
    # ...and through derive_rows they give what Polars gives.
    rows = [{"s": "abc", "f": 8.0, "g": 1.5}, {"s": None, "f": -3.0, "g": 2.0}]
    exprs = {"up": "UPPER(s)", "root": "CBRT(f)", "p": "POWER(f, g)"}
    inputs = {"s": "String", "f": "Float64", "g": "Float64"}
    assert featurestore._row_program(tuple(exprs.items()), tuple(inputs.items())) is None
    expected = [dict(r) for r in rows]
    derive_rows_polars(expected, exprs, inputs)
    derive_rows(rows, exprs, inputs)
    assert rows == expected and rows[0]["up"] == "ABC"
    # Float32 inputs need single-precision arithmetic: Polars.
    assert not featurestore.prepare_derived({"x": "v * 2"}, {"v": "Float32"})


def test_derived_features_chain_and_a_sent_value_does_not_feed_the_next():
    exprs = {"ratio": "current / rated", "pct": "ratio * 100", "high": "pct > 90"}
    inputs = {"current": "Float64", "rated": "Int64"}
    assert featurestore.prepare_derived(exprs, inputs)
    rows = [{"current": 9.5, "rated": 10}, {"current": None, "rated": 10},
            {"current": 1.0, "rated": 10, "ratio": 5.0}, "not a row"]
    expected = [dict(r) if isinstance(r, dict) else r for r in rows]
    derive_rows_polars(expected, exprs, inputs)
    derive_rows(rows, exprs, inputs)
    assert rows == expected
    assert rows[2]["ratio"] == 5.0 and rows[2]["pct"] == 10.0  # computed, not the sent 5.0


def test_a_broken_evaluator_is_caught_by_the_self_check(monkeypatch, caplog):
    # A deliberate bug: float division off by one ulp.
    monkeypatch.setattr(rowexpr, "_fdiv", lambda x, y: math.nextafter(x / y, math.inf)
                        if y else math.nan)
    featurestore._row_program.cache_clear()
    exprs = {"load": "current / rated"}
    inputs = {"current": "Float64", "rated": "Float64"}
    try:
        with caplog.at_level(logging.WARNING, logger="appliance.featurestore"):
            assert not featurestore.prepare_derived(exprs, inputs)
        warnings = [r for r in caplog.records if "derived_fast_path_off" in r.getMessage()]
        assert len(warnings) == 1
        assert "load" in warnings[0].getMessage() and "current / rated" in \
            warnings[0].getMessage()
        rows = [{"current": 1.0, "rated": 3.0}]
        derive_rows(rows, exprs, inputs)
        assert rows[0]["load"] == 1.0 / 3.0  # Polars' value, not the broken one
        # Logged once: the decision is cached per set of expressions.
        derive_rows([{"current": 2.0, "rated": 3.0}], exprs, inputs)
        assert len([r for r in caplog.records
                    if "derived_fast_path_off" in r.getMessage()]) == 1
    finally:
        featurestore._row_program.cache_clear()


@pytest.mark.parametrize(("dtype", "value"), [
    ("Float64", "high"), ("Float64", [1.0]), ("Float64", 10**400), ("Int64", 1.5),
    ("Int64", "3"), ("Int64", 2**63), ("Int8", 128), ("UInt8", -1), ("Boolean", 1),
    ("String", 5), ("String", "\ud800"), ("Int64", {"a": 1}),
])
def test_invalid_input_values_are_refused_as_before(dtype, value):
    exprs = {"y": "v IS NULL"}
    inputs = {"v": dtype}
    assert featurestore.prepare_derived(exprs, inputs)
    rows = [{"v": None}, {"v": value}]
    with pytest.raises(ApplianceError) as fast:
        derive_rows([dict(r) for r in rows], exprs, inputs)
    with pytest.raises(ApplianceError) as before:
        derive_rows_polars([dict(r) for r in rows], exprs, inputs)
    assert fast.value.status == 422
    assert (fast.value.code, str(fast.value), fast.value.details) == \
        (before.value.code, str(before.value), before.value.details)
    assert fast.value.details == {"row": 1, "field": "v", "expected": dtype}


@pytest.mark.parametrize(("dtype", "value"), [
    ("Int64", True), ("Int8", -128), ("UInt64", 2**64 - 1), ("Float64", 3),
    ("Float64", 2**63 + 1), ("Float64", False), ("Float64", -0.0), ("String", "é"),
    ("Boolean", False),
])
def test_values_polars_accepts_are_taken_the_same_way(dtype, value):
    exprs = {"y": "COALESCE(v, v)"}
    inputs = {"v": dtype}
    rows, expected = [{"v": value}], [{"v": value}]
    derive_rows(rows, exprs, inputs)
    derive_rows_polars(expected, exprs, inputs)
    assert same_value(rows[0]["y"], expected[0]["y"])


def test_a_fault_of_the_evaluator_costs_speed_not_an_answer(monkeypatch, caplog):
    exprs, inputs = {"x": "f * 2"}, {"f": "Float64"}
    featurestore._row_program.cache_clear()
    try:
        assert featurestore.prepare_derived(exprs, inputs)

        def broken(self, row, batch=False):
            raise TypeError("a bug")

        monkeypatch.setattr(RowProgram, "run", broken)
        with caplog.at_level(logging.WARNING, logger="appliance.featurestore"):
            for _ in range(2):
                rows = [{"f": 1.5}]
                derive_rows(rows, exprs, inputs)
                assert rows[0]["x"] == 3.0
        assert len([r for r in caplog.records if "derived_fast_path_error" in r.message]) == 1
    finally:
        featurestore._row_program.cache_clear()
