"""Derived features' expressions are plain expressions over a row's columns: the text is
checked before Polars parses it, because Polars' parser plans a subquery as it reads it,
and a subquery can read a file (a FIFO would hang the parser, and a SIGHUP reload parses
on the event loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings

from appliance.core import ApplianceError
from appliance.core.sqlexpr import FUNCTIONS, compile_expression
from tests.conftest import ROOT

# Polars holds the GIL while its parser opens a file: a parse stuck on a FIFO stops every
# thread of the process. So the check runs in a child process, with a time limit.
CHILD = """
import json, sys
from appliance.core import ApplianceError, ConfigError, parse
from appliance.core.sqlexpr import compile_expression
fifo = sys.argv[1]
out = {}
try:
    compile_expression("x", f"(SELECT a FROM read_csv('{fifo}'))")
except ApplianceError as err:
    out["compile"] = [err.code, err.message]
raw = {"pipelines": {"p": {"derived": {
    "ok": "a * 2", "sneaky": f"a + (SELECT max(a) FROM read_csv('{fifo}'))"}}}}
try:
    parse(raw)
except ConfigError as err:
    out["config"] = [err.key, str(err)]
print(json.dumps(out))
"""


def test_a_subquery_reading_a_fifo_is_refused_without_reading_it(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(fifo)], capture_output=True,
                              text=True, timeout=20, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise AssertionError("parsing the expression opened the FIFO and hung") from None
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    code, message = out["compile"]
    assert code == "derived_not_plain" and "`x`" in message and "SELECT" in message
    key, message = out["config"]
    assert key == "pipelines.p.derived.sneaky" and "not a plain expression" in message


@pytest.mark.parametrize("text", [
    "(SELECT 1)",
    "a IN (SELECT a FROM read_parquet('/nonexistent'))",
    "EXISTS (SELECT 1)",
    "a > ANY (SELECT 1)",
    "(WITH q AS (SELECT 1 AS a) SELECT a FROM q)",
    "(FROM read_csv('/etc/passwd'))",
    "(VALUES (1))",
    "sum(a)", "avg(a) OVER ()", "count(*)", "median(a)", "first(a)",
    "row_number() OVER (ORDER BY a)", "COLUMNS('.*')", "unnest(a)",
    "now()", "current_date", "quantile_cont(a, 0.5)",
    '"read_csv"(\'/etc/passwd\')',
    "a; SELECT 1", "a -- comment", "a /* comment */ + 1", "$$x$$ || a", "E'x' || a",
    "`a` + 1", "[a] + 1", "a.b", "@a", "a ^ 2", "a + 'unterminated", "(a + 1",
    "a + 1)", "x" * 2001, "GREATEST()",
])
def test_what_is_not_a_plain_expression_is_refused(text):
    with pytest.raises(ApplianceError) as err:
        compile_expression("f", text)
    assert err.value.code in ("derived_not_plain", "derived_parse"), err.value.message
    assert "derived feature `f`" in err.value.message


@pytest.mark.parametrize("text", [
    "temperature * 1.8 + 32", "current / rated_current", '"Temperature [C]" * 2',
    '"select" + "from"', "CASE WHEN a > 1 THEN 'x' ELSE 'y' END", "s || 'x'", "f::real",
    "CAST(a AS DECIMAL(10, 2))", "TRY_CAST(s AS INT)", "EXTRACT(month FROM d)",
    "date_part('month', d)", "TRIM(BOTH 'x' FROM s)", "SUBSTRING(s FROM 1 FOR 2)",
    "a IS DISTINCT FROM b", "a IS NOT DISTINCT FROM (b + 1)", "s LIKE 'a%'",
    "s NOT ILIKE '%b'", "s ~ '\\d+'", "a BETWEEN 1 AND 2", "a IN (1, 2, NULL)",
    "NOT (a > 1 AND b IS NULL)", "COALESCE(a, b, 0)", "GREATEST(a, b) - LEAST(a, b)",
    "ROUND(LOG(a, 2), 3)", "POWER(a, 0.5)", "a // 2 + a % 3", "strftime(d, '%Y-%m')",
    "UPPER(s) || LOWER(t)", "1e3 * .5 + 5.", "INTERVAL '1 day'", "DATE '2024-01-01'",
    "'it''s' || s", "IF(a > 0, 1, -1)", "NULLIF(a, 0)",
])
def test_plain_expressions_are_accepted(text):
    compile_expression("f", text)


def test_every_allowed_function_is_one_polars_knows():
    unknown = []
    for name in sorted(FUNCTIONS):
        try:
            pl.sql_expr(f"{name}(a)")
        except BaseException as exc:
            if "unsupported function" in str(exc).lower():
                unknown.append(name)
    assert unknown == []


# Every expression of the row evaluator's grammar (what derived features are written in)
# that Polars reads is still accepted.
from tests.features.test_rowexpr import EXPRESSIONS  # noqa: E402


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=EXPRESSIONS)
def test_the_evaluators_grammar_is_plain(text):
    try:
        pl.sql_expr(text)
    except Exception:
        return
    compile_expression("f", text)
