"""Derived features' expressions: Polars SQL over a pipeline's columns.

Here in ``core`` because the config checks every expression when it is read, and the
feature store compiles the same text for training and serving.

Only a plain expression over one row's columns is accepted: column names, literals,
operators, ``CASE``, ``CAST`` and an allow-list of scalar functions. The text is checked
*before* Polars sees it (:func:`check_plain`), because Polars plans a subquery while it
parses, and a subquery may read a file (``(SELECT * FROM read_csv('/path'))``): parsing
would do file I/O, and a FIFO there would hang whoever parses (a SIGHUP reload does it on
the event loop). The check is a tokenizer of our own that refuses whatever it does not
know (comments, dollar quotes, ``;``, prefixed strings...), so nothing can hide from it in
a form Polars' parser reads differently. The parsed expression is then walked as a second
line: a subplan, an aggregate, a window or a selector of many columns is refused too (an
aggregate would compute over the training frame but over one row when serving).
"""

from __future__ import annotations

import json
import re

import polars as pl

from appliance.core.errors import ApplianceError


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Scalar, row-wise, deterministic functions of Polars SQL (lower case).
FUNCTIONS = _words("""
    abs acos acosd asin asind atan atan2 atan2d atand cbrt ceil ceiling cos cosd cot cotd
    degrees div exp floor ln log log10 log1p log2 mod pi pow power radians round sign sin
    sind sqrt tan tand trunc truncate
    bit_length char_length character_length concat concat_ws ends_with initcap left length
    lower lpad ltrim normalize octet_length regexp_like regexp_replace replace reverse right
    rpad rtrim split_part starts_with strpos substr substring trim upper
    date date_part date_trunc strftime strptime timestamp
    coalesce greatest if ifnull least nullif
""")
# Syntax written like a call, and types that take arguments (``CAST(x AS DECIMAL(10, 2))``).
_CALL_SYNTAX = frozenset({"cast", "try_cast", "extract"})
_TYPES_WITH_ARGS = frozenset({"decimal", "numeric", "varchar", "char", "character",
                              "datetime", "float"})
# Keywords a parenthesis may follow (``a IN (1, 2)``, ``NOT (a > 1)``).
_BEFORE_PAREN = frozenset({"and", "or", "not", "in", "is", "when", "then", "else", "case",
                           "between", "like", "ilike", "from"})
# Words that only a query, a window or a collection needs: never in a plain expression.
# (A column of that name is written quoted: "order".)
_QUERY_WORDS = _words("""
    select with values table union intersect except where group having order limit offset
    fetch qualify join lateral over partition window filter within exists any all some
    unnest array struct map into recursive returning pivot unpivot top using natural cross
""")
# The clock: frozen when parsed, so training and serving would read different values.
_CLOCK_WORDS = frozenset({"current_date", "current_time", "current_timestamp", "localtime",
                          "localtimestamp", "sysdate", "now"})
# Calls inside which FROM is part of the syntax: EXTRACT(month FROM d), TRIM(BOTH 'x' FROM
# s), SUBSTRING(s FROM 1 FOR 2).
_FROM_INSIDE = frozenset({"extract", "trim", "substring", "substr"})
# Nodes of a parsed expression that are not row-wise.
_NOT_ROW_WISE = {"SubPlan": "a subquery", "Agg": "an aggregate", "Over": "a window",
                 "Window": "a window", "Rolling": "a window", "Explode": "unnest",
                 "Selector": "a selection of many columns"}

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<ident>"(?:[^"]|"")*")
  | (?P<number>(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![A-Za-z0-9_.]))
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=>|!~\*|::|//|\|\||<=|>=|<>|!=|==|!~|~\*|[-+*/%=<>(),~&|])
""", re.VERBOSE)

MAX_LENGTH = 2000


class NotPlain(ValueError):
    """The text is not a plain expression over a row's columns; the message says why."""


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text.startswith(("--", "/*"), pos):
            raise NotPlain(f"a comment at character {pos + 1}")
        m = _TOKEN.match(text, pos)
        if m is None:
            bad = text[pos]
            if bad in "'\"":
                what = "string" if bad == "'" else "quoted name"
                raise NotPlain(f"an unterminated {what} at character {pos + 1}")
            raise NotPlain(f"`{bad}` at character {pos + 1}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group(), pos))
        pos = m.end()
        if kind in ("word", "number") and pos < len(text) and text[pos] in "'\"":
            raise NotPlain(f"`{m.group()}{text[pos]}` at character {m.start() + 1} (write "
                           "strings as plain '...' and names as \"...\")")
    return out


def check_plain(text: str) -> None:
    """Raise :class:`NotPlain` unless ``text`` is a plain expression over a row's columns
    (see the module's docstring). Reads only the text: never Polars, never a file."""
    if len(text) > MAX_LENGTH:
        raise NotPlain(f"longer than {MAX_LENGTH} characters")
    tokens = _tokens(text)
    openers: list[str | None] = []  # the call each open parenthesis belongs to
    for i, (kind, value, pos) in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        called = nxt is not None and nxt[1] == "("
        if kind == "ident" and called:
            raise NotPlain(f"`{value}(` at character {pos + 1}: a quoted name is not a "
                           "function")
        if kind == "op" and value == "(":
            openers.append(prev[1].lower() if prev and prev[0] == "word" else None)
        elif kind == "op" and value == ")":
            if not openers:
                raise NotPlain(f"an unmatched `)` at character {pos + 1}")
            openers.pop()
        if kind != "word":
            continue
        word = value.lower()
        if word in _QUERY_WORDS:
            raise NotPlain(f"`{value}` at character {pos + 1}: no subqueries, windows or "
                           f'collections (a column named so is written "{value}")')
        if word in _CLOCK_WORDS:
            raise NotPlain(f"`{value}` at character {pos + 1}: the clock is read once, when "
                           "the expression is parsed, so training and serving would differ")
        if word == "from":
            inside = openers[-1] if openers else None
            after_distinct = prev is not None and prev[1].lower() == "distinct"
            if not after_distinct and (inside not in _FROM_INSIDE or (prev and prev[1] == "(")):
                raise NotPlain(f"`{value}` at character {pos + 1}: an expression reads no "
                               "table")
        if called and word not in FUNCTIONS | _CALL_SYNTAX | _TYPES_WITH_ARGS | _BEFORE_PAREN:
            raise NotPlain(f"`{value}(` at character {pos + 1}: not one of the scalar "
                           "functions allowed; aggregates, windows, table functions and the "
                           "clock are not")
    if openers:
        raise NotPlain("an unclosed `(`")


def _walk(node: object) -> str | None:
    """What in a parsed expression (its JSON form) is not row-wise, if anything."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _NOT_ROW_WISE:
                return _NOT_ROW_WISE[key]
            found = _walk(value)
            if found:
                return found
    elif isinstance(node, list):
        for value in node:
            found = _walk(value)
            if found:
                return found
    return None


def compile_expression(name: str, text: str) -> pl.Expr:
    """The Polars expression of derived feature ``name``; an :class:`ApplianceError`
    naming the feature when ``text`` is not a plain expression or not valid SQL."""
    details = {"feature": name, "expression": text}
    hint = ("use column names (\"quoted\" unless a plain word), literals, operators, CASE, "
            "CAST and scalar functions")
    try:
        check_plain(text)
    except NotPlain as why:
        raise ApplianceError(
            "derived_not_plain",
            f"derived feature `{name}`: `{text}` is not a plain expression over the "
            f"pipeline's columns ({why}); {hint}", details,
        ) from None
    try:
        expr = pl.sql_expr(text)
    # Polars raises SQLInterfaceError / SQLSyntaxError, and panics on a few texts
    # (``GREATEST()``): a PanicException, which is not an Exception.
    except (Exception, pl.exceptions.PanicException) as exc:
        raise ApplianceError(
            "derived_parse",
            f"derived feature `{name}`: `{text}` is not a valid SQL expression ({exc})",
            details,
        ) from None
    found = "a selection of many columns" if expr.meta.has_multiple_outputs() else None
    if found is None:
        try:
            found = _walk(json.loads(expr.meta.serialize(format="json")))
        # An expression Polars can't serialize: the text check stands.
        except (Exception, pl.exceptions.PanicException):
            found = None
    if found:
        raise ApplianceError(
            "derived_not_plain",
            f"derived feature `{name}`: `{text}` is not a plain expression over the "
            f"pipeline's columns ({found}); {hint}", details,
        )
    return expr
