"""Derived features of one request row in plain Python, exactly as Polars computes them.

A derived feature is a Polars SQL expression (``pl.sql_expr``). Computing it for one
prediction row through Polars costs a DataFrame and a query (about half a millisecond),
and it runs on Polars' thread pool, which the daemon starts at a lower CPU priority: while
a training job runs, a request would wait behind it. This module compiles such an
expression once into nested Python closures over one row's values.

It compiles only what it can compute *identically* to Polars, and refuses the rest:

- It walks the expression's JSON form (``expr.meta.serialize(format="json")``) and asks
  Polars the type of every sub-expression, so that result types, supertypes and the
  widening of literals are Polars' own, never a guess of ours.
- Each operation follows Polars' semantics for those types: null in, null out (Kleene
  logic for AND/OR); SQL ``/`` is float division even of integers, with IEEE results for a
  zero divisor (inf, -inf, NaN); ``//`` and ``%`` of integers truncate toward zero and give
  null for a zero divisor; floats compare in Polars' total order (NaN equals NaN and is
  larger than everything); float results come from the same operations in the same order
  (Python floats are IEEE doubles, and ``math`` calls the same C library), so they are
  bit-identical; decimals (SQL's ``1.8`` is a decimal literal) are exact scaled integers.
- Integers are exact Python integers. Where Polars would wrap around (a result outside its
  type), :class:`Fallback` is raised for that row, and so for an out-of-range cast.
- Polars itself computes a few float operations differently for a frame of one row and
  for a batch (a column beside a constant takes other kernels: ``x / 2.5`` is
  ``x * (1 / 2.5)``, ``0 - x`` is ``-x``); a program has a one-row form and a batch form
  (see :class:`_Compiler`). Requests take the batch form, even for one row: training
  computed the features on frames of many rows, and a served row must get those values.

Anything else raises :class:`Unsupported` at compile time. Either way the caller computes
with Polars: correct, only slower. :meth:`RowProgram.self_check` then compares both ways on
probe rows, so that a gap in this module can cost speed but never a wrong value.
No ``eval``: the closures only call the operations listed here.

Kept as one piece: it is a compiler, one table of Polars' type rules and operations that
the one-row form and the batch form must both follow; split across modules, a rule could
change in one form and not the other, and a served value would differ from training's.
"""

from __future__ import annotations

import io
import json
import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import polars as pl

__all__ = ["Fallback", "RowProgram", "Unsupported"]


class Unsupported(Exception):
    """The expression, or the type of one of its inputs, is not one this module computes
    exactly like Polars: the caller keeps using Polars for it."""


class Fallback(Exception):
    """This request can't be computed here exactly (an integer result Polars would wrap,
    a value Polars may refuse or convert): compute it with Polars."""


Env = dict[str, Any]
Fn = Callable[[Env], Any]

NAN = float("nan")
INF = float("inf")

_INT_TYPES = {
    "Int8": (-(2**7), 2**7 - 1), "Int16": (-(2**15), 2**15 - 1),
    "Int32": (-(2**31), 2**31 - 1), "Int64": (-(2**63), 2**63 - 1),
    "UInt8": (0, 2**8 - 1), "UInt16": (0, 2**16 - 1), "UInt32": (0, 2**32 - 1),
    "UInt64": (0, 2**64 - 1),
}


@dataclass(frozen=True)
class Kind:
    """What a value is, here: ``int`` (with the range of its Polars type), ``float``,
    ``bool``, ``str``, ``dec`` (a scaled integer: the value times 10**scale) or ``null``."""

    tag: str
    name: str
    lo: int = 0
    hi: int = 0
    scale: int = 0
    limit: int = 0  # decimals: 10**precision


def kind_of(dtype: pl.DataType) -> Kind:
    name = str(dtype)
    if name in _INT_TYPES:
        lo, hi = _INT_TYPES[name]
        return Kind("int", name, lo=lo, hi=hi)
    if name == "Float64":
        return Kind("float", name)
    if name == "Boolean":
        return Kind("bool", name)
    if name == "String":
        return Kind("str", name)
    if name == "Null":
        return Kind("null", name)
    if isinstance(dtype, pl.Decimal):
        precision = dtype.precision or 38
        return Kind("dec", name, scale=dtype.scale, limit=10**precision)
    raise Unsupported(f"type {name}")


_NUMERIC = frozenset({"int", "bool", "float", "dec"})
_EXACT = 10**80  # comparisons of integers and decimals are exact: no range to keep


# --- plain operations on non-null values ------------------------------------------------


def _fdiv(x: float, y: float) -> float:
    """IEEE division: a zero divisor gives inf, -inf or NaN, as in Polars."""
    try:
        return x / y
    except ZeroDivisionError:
        if x != x or x == 0:
            return NAN
        return math.copysign(INF, x) * math.copysign(1.0, y)


def _fmod(x: float, y: float) -> float:
    """Polars' float ``%``: C's fmod (the sign of the dividend)."""
    if y == 0 or x != x or y != y or x in (INF, -INF):
        return NAN
    return math.fmod(x, y)


def _idiv(x: int, y: int) -> int | None:
    """Integer ``//``: truncated toward zero; null for a zero divisor."""
    if y == 0:
        return None
    q = abs(x) // abs(y)
    return -q if (x < 0) != (y < 0) else q


def _irem(x: int, y: int) -> int | None:
    """Integer ``%``: the sign of the dividend; null for a zero divisor."""
    if y == 0:
        return None
    r = abs(x) % abs(y)
    return -r if x < 0 else r


def _odd_integer(y: float) -> bool:
    return math.isfinite(y) and y == math.floor(y) and int(y) % 2 == 1


def _powf(x: float, y: float) -> float:
    """C's pow (which ``math.pow`` calls), with its IEEE results where Python raises."""
    try:
        return math.pow(x, y)
    except OverflowError:
        return -INF if x < 0 and _odd_integer(y) else INF
    except ValueError:
        if x == 0:  # zero to a negative power
            return math.copysign(INF, x) if _odd_integer(y) else INF
        return NAN


def _ln(x: float) -> float:
    if x != x or x < 0:
        return NAN
    if x == 0:
        return -INF
    if x == INF:
        return INF
    return math.log(x)


def _sqrt(x: float) -> float:
    if x < 0:
        return NAN
    return x if x != x else math.sqrt(x)


def _exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return INF


def _integral(x: float, to_int: Callable[[float], int]) -> float:
    """floor/ceil/trunc/round of a float as a float, keeping the sign of a zero."""
    if not math.isfinite(x):
        return x
    return math.copysign(float(to_int(x)), x)


def _floor(x: float) -> float:
    return _integral(x, math.floor)


def _ceil(x: float) -> float:
    return _integral(x, math.ceil)


def _trunc(x: float) -> float:
    return _integral(x, math.trunc)


def _round_even(x: float) -> float:
    return _integral(x, round)  # Python's round(float) is exact, ties to even


def _fsign(x: float) -> float:
    return 1.0 if x > 0 else -1.0 if x < 0 else x  # zeros and NaN stay as they are


def _isign(x: int) -> int:
    return (x > 0) - (x < 0)


# Floats compare in Polars' total order: NaN equals NaN and is above everything.
def _feq(x: float, y: float) -> bool:
    return x == y or (x != x and y != y)


def _flt(x: float, y: float) -> bool:
    return x < y or (x == x and y != y)


def _fle(x: float, y: float) -> bool:
    return x <= y or y != y


_FLOAT_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "Eq": _feq, "NotEq": lambda x, y: not _feq(x, y),
    "Lt": _flt, "LtEq": _fle,
    "Gt": lambda x, y: _flt(y, x), "GtEq": lambda x, y: _fle(y, x),
}
_EXACT_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "Eq": operator.eq, "NotEq": operator.ne, "Lt": operator.lt, "LtEq": operator.le,
    "Gt": operator.gt, "GtEq": operator.ge,
}


def _pick(greater: bool, floats: bool) -> Callable[[Any, Any], Any]:
    """GREATEST/LEAST of two non-null values: NaN loses, a tie goes to the later argument
    (a tie of 0.0 with -0.0, where that shows, is left to Polars)."""
    better = operator.gt if greater else operator.lt

    def pick(a: Any, b: Any) -> Any:
        if floats:
            if a != a:
                return b
            if b != b:
                return a
            if a == b and a == 0 and math.copysign(1.0, a) != math.copysign(1.0, b):
                raise Fallback("GREATEST/LEAST of 0.0 and -0.0")
        return a if better(a, b) else b

    return pick


# --- combinators ------------------------------------------------------------------------


def _const(value: Any) -> Fn:
    return lambda env: value


def _converter(src: Kind, dst: Kind) -> Callable[[Any], Any] | None:
    """How a non-null value of ``src`` becomes one of ``dst`` when Polars casts it to the
    supertype of an operation (always exact or correctly rounded). None: unchanged."""
    s, d = src.tag, dst.tag
    if s == "null" or (s == d and s in ("float", "bool", "str")):
        return None
    if s == d == "int":
        if dst.lo <= src.lo and src.hi <= dst.hi:
            return None
        lo, hi = dst.lo, dst.hi

        def narrowed(v: int) -> int:  # a literal cast to a narrower type of the other side
            if lo <= v <= hi:
                return v
            raise Fallback(f"{v} as {dst.name}")

        return narrowed
    if d == "float":
        if s in ("int", "bool"):
            return float
        if s == "dec":
            div = 10**src.scale
            return lambda v: v / div  # int / int is correctly rounded, as Polars' cast
    if d == "int" and s == "bool":
        return int
    if d == "dec" and (s == "int" or (s == "dec" and src.scale <= dst.scale)):
        mul = 10 ** (dst.scale - src.scale) if s == "dec" else 10**dst.scale
        if s == "dec" and mul == 1 and src.limit <= dst.limit:
            return None
        return _in_range(lambda v: int(v) * mul, dst)
    raise Unsupported(f"{src.name} as {dst.name}")


def _as(fn: Fn, src: Kind, dst: Kind) -> Fn:
    conv = _converter(src, dst)
    if conv is None:
        return fn

    def converted(env: Env) -> Any:
        v = fn(env)
        return None if v is None else conv(v)

    return converted


def _binary(fa: Fn, fb: Fn, op: Callable[[Any, Any], Any]) -> Fn:
    """Both sides are always evaluated (so a Fallback anywhere is seen), then null in,
    null out."""

    def fn(env: Env) -> Any:
        a = fa(env)
        b = fb(env)
        if a is None or b is None:
            return None
        return op(a, b)

    return fn


def _unary(fa: Fn, op: Callable[[Any], Any]) -> Fn:
    def fn(env: Env) -> Any:
        a = fa(env)
        return None if a is None else op(a)

    return fn


def _in_range(op: Callable[..., Any], kind: Kind) -> Callable[..., Any]:
    """An integer or decimal result must fit its Polars type; Polars would wrap around
    (or fail), so outside it the request goes to Polars."""
    if kind.tag == "int":
        lo, hi = kind.lo, kind.hi

        def checked(*args: Any) -> Any:
            r = op(*args)
            if r is None or lo <= r <= hi:
                return r
            raise Fallback(f"{r} is outside {kind.name}")

        return checked
    if kind.tag == "dec":
        limit = kind.limit

        def checked_dec(*args: Any) -> Any:
            r = op(*args)
            if r is None or -limit < r < limit:
                return r
            raise Fallback(f"{r} is outside {kind.name}")

        return checked_dec
    return op


# --- the compiler -----------------------------------------------------------------------


def _roots(node: Any) -> bool:
    """Whether a JSON expression reads any column."""
    if isinstance(node, dict):
        return "Column" in node or any(_roots(v) for v in node.values())
    if isinstance(node, list):
        return any(_roots(v) for v in node)
    return False


def _only(mapping: Any) -> tuple[str, Any]:
    if isinstance(mapping, str):
        return mapping, None
    if not isinstance(mapping, dict) or len(mapping) != 1:
        raise Unsupported(f"expression node {str(mapping)[:80]}")
    return next(iter(mapping.items()))


def _children(tag: str, body: Any) -> list[Any]:
    if tag == "Ternary":
        return [body["truthy"], body["falsy"], body["predicate"]]
    if tag == "Cast":
        return [body["expr"]]
    if tag == "BinaryExpr":
        return [body["left"], body["right"]]
    if tag == "Function":
        return list(body["input"])
    return []


def _maybe_scalar(node: Any, scalar_columns: set[str]) -> bool:
    """Whether Polars may hold this sub-expression as one value broadcast over a batch
    (a scalar) rather than a column: constants, and what selects among values where one
    may be a scalar (CASE WHEN whose rows all take the same branch, COALESCE...)."""
    tag, body = _only(node)
    if tag == "Column":
        return body in scalar_columns
    children = _children(tag, body)
    flags = [_maybe_scalar(c, scalar_columns) for c in children]
    selects = tag == "Ternary" or (tag == "Function" and _only(body["function"])[0] in (
        "Coalesce", "MaxHorizontal", "MinHorizontal"))
    if selects:
        return any(flags[:2] if tag == "Ternary" else flags) or all(flags)
    return all(flags)


class _Compiler:
    """Compiles one expression, for a frame of one row or (``batch``) of many.

    Polars' arithmetic between a column and a scalar (a constant) takes other kernels
    than between two columns: for floats, it divides by multiplying with the reciprocal,
    takes `x + 0` and `0 + x` as x and `0 - x` as -x (the sign of a zero shows it). For one
    row, both sides have one value: plain IEEE arithmetic. The batch form computes the
    scalar kernels where it knows which side is the scalar; where a side may or may not be
    one depending on the data (a CASE WHEN whose rows all take a constant), a row goes to
    Polars if the two kernels would differ on it."""

    def __init__(self, schema: dict[str, pl.DataType], batch: bool = False,
                 scalar_columns: set[str] | None = None) -> None:
        self.schema = dict(schema)
        self.frame = pl.LazyFrame(schema=self.schema)
        self.batch = batch
        self.scalar_columns = scalar_columns or set()
        self.height_sensitive = False  # whether the batch form differs from the one-row one

    def expr(self, node: Any) -> pl.Expr:
        return pl.Expr.deserialize(io.StringIO(json.dumps(node)), format="json")

    def dtype(self, node: Any) -> pl.DataType:
        """The type Polars gives this sub-expression over the inputs."""
        try:
            return self.frame.select(self.expr(node).alias("out")).collect_schema()["out"]
        except Exception as exc:
            raise Unsupported(f"Polars can't type `{str(node)[:80]}`: {exc}") from None

    def compile(self, node: Any) -> tuple[Fn, Kind]:
        tag, body = _only(node)
        if tag == "Column":
            if body not in self.schema:
                raise Unsupported(f"unknown column {body}")
            return operator.itemgetter(body), kind_of(self.schema[body])
        kind = kind_of(self.dtype(node))
        handler = getattr(self, f"_node_{tag}", None)
        if handler is None:
            raise Unsupported(f"`{tag}` expressions")
        return handler(node, body, kind), kind

    def constant(self, node: Any) -> tuple[Any, Kind]:
        """The value of a sub-expression that reads no column (a literal exponent...)."""
        if _roots(node):
            raise Unsupported("a column where a constant is needed")
        fn, kind = self.compile(node)
        return fn({}), kind

    # Literals: Polars evaluates them once, so their value is exactly Polars' value.
    def _node_Literal(self, node: Any, body: Any, kind: Kind) -> Fn:
        if not isinstance(body, dict) or ("Dyn" not in body and "Scalar" not in body):
            raise Unsupported("literal lists")
        try:
            values = pl.select(self.expr(node).alias("v")).to_series().to_list()
        except Exception as exc:
            raise Unsupported(f"literal {body}: {exc}") from None
        if len(values) != 1:
            raise Unsupported("literal lists")
        return _const(_internal(values[0], kind))

    def _node_Cast(self, node: Any, body: Any, kind: Kind) -> Fn:
        fn, src = self.compile(body["expr"])
        strict = body.get("options") == "Strict"
        if body.get("options") not in ("Strict", "NonStrict"):
            raise Unsupported(f"cast option {body.get('options')}")
        return _cast(fn, src, kind, strict)

    def _node_Ternary(self, node: Any, body: Any, kind: Kind) -> Fn:
        fp, kp = self.compile(body["predicate"])
        if kp.tag not in ("bool", "null"):
            raise Unsupported(f"CASE WHEN on {kp.name}")
        ft = _as(*self.compile(body["truthy"]), kind)
        ff = _as(*self.compile(body["falsy"]), kind)

        def ternary(env: Env) -> Any:
            p = fp(env)
            t = ft(env)
            f = ff(env)
            return t if p is True else f  # a null condition takes the ELSE branch

        return ternary

    def _node_BinaryExpr(self, node: Any, body: Any, kind: Kind) -> Fn:
        return self.binary(body["op"], body["left"], body["right"], kind)

    def binary(self, op: str, left: Any, right: Any, kind: Kind) -> Fn:
        a = self.compile(left)
        b = self.compile(right)
        constants = [_constant_value(*x) if not _roots(n) else _NOT_CONSTANT
                     for x, n in ((a, left), (b, right))]
        scalar = [c is not _NOT_CONSTANT for c in constants]
        maybe = [_maybe_scalar(n, self.scalar_columns) for n in (left, right)]
        if kind.tag == "float" and op in ("Div", "Plus", "Minus") and any(maybe) and not all(
                scalar):
            self.height_sensitive = True
            if self.batch:
                return self._batch_arith(op, a, b, constants, maybe)
        return _binary_op(op, a, b, kind)

    def _batch_arith(self, op: str, a: tuple[Fn, Kind], b: tuple[Fn, Kind],
                     constants: list[Any], maybe: list[bool]) -> Fn:
        """Float ``/``, ``+``, ``-`` in a batch, where a side is or may be a scalar."""
        f64 = Kind("float", "Float64")
        fa, fb = _as(*a, f64), _as(*b, f64)
        scalar = [c is not _NOT_CONSTANT for c in constants]
        # A constant beside what is surely a column: Polars' scalar kernel, known.
        known = scalar[0] != scalar[1] and not maybe[0 if scalar[1] else 1]
        c = constants[1] if scalar[1] else constants[0]
        if op == "Div":
            if known and scalar[1]:  # times the reciprocal
                inverse = None if c is None else _fdiv(1.0, _as(_const(c), b[1], f64)({}))
                return _binary(fa, _const(inverse), operator.mul)
            if scalar[0] or not maybe[1]:
                return _binary(fa, fb, _fdiv)  # only a column by a scalar takes the inverse

            def either_kernel(x: float, y: float) -> float:
                q = _fdiv(x, y)
                if same_value(q, x * _fdiv(1.0, y)):
                    return q
                raise Fallback("a division Polars computes one way or another by the data")

            return _binary(fa, fb, either_kernel)
        py = operator.add if op == "Plus" else operator.sub
        if known:
            if c == 0 and (op == "Plus" or scalar[0]):  # x + 0, 0 + x: x; 0 - x: -x
                other = fb if scalar[0] else fa
                return other if op == "Plus" else _unary(other, operator.neg)
            return _binary(fa, fb, py)

        def guarded(x: float, y: float) -> float:  # a zero scalar shows in a zero's sign
            r = py(x, y)
            if r == 0 and ((maybe[0] and x == 0) or (maybe[1] and y == 0)):
                raise Fallback("the sign of a zero Polars computes one way or another")
            return r

        return _binary(fa, fb, guarded)

    def _node_Function(self, node: Any, body: Any, kind: Kind) -> Fn:
        inputs = body["input"]
        name, arg = _only(body["function"])
        if name == "Sql":
            sub, sub_arg = _only(arg)
            if sub == "Binary":
                return self.binary({"Mul": "Multiply"}.get(sub_arg, sub_arg), inputs[0],
                                   inputs[1], kind)
            if sub == "ToFloat":
                return _as(*self.compile(inputs[0]), kind)
            if sub == "Round":
                return _round(*self.compile(inputs[0]), kind, sub_arg["decimals"])
            if sub == "IsIn" and sub_arg == {"nulls_equal": False}:
                return self._is_in(inputs)
            raise Unsupported(f"SQL function {sub}")
        if name == "Pow" and arg == "Generic":
            return self._pow(inputs, kind)
        if name == "Log":
            return self._log(inputs, kind)
        if name in ("Coalesce", "MaxHorizontal", "MinHorizontal"):
            fns = [_as(*self.compile(n), kind) for n in inputs]
            if name == "Coalesce":
                return _coalesce(fns)
            return _fold(fns, _pick(name == "MaxHorizontal", kind.tag == "float"))
        if len(inputs) != 1:
            raise Unsupported(f"function {name}")
        fa, ka = self.compile(inputs[0])
        if name == "Boolean":
            if arg == "IsNull":
                return lambda env: fa(env) is None
            if arg == "IsNotNull":
                return lambda env: fa(env) is not None
            if arg == "Not" and ka.tag in ("bool", "null"):
                return _unary(fa, operator.not_)
            raise Unsupported(f"boolean function {arg}")
        if name == "StringExpr" and arg == "LenChars" and ka.tag == "str":
            return _unary(fa, len)
        return _math(name, arg, fa, ka, kind)

    def _is_in(self, inputs: list[Any]) -> Fn:
        fx, kx = self.compile(inputs[0])
        if _only(inputs[1])[0] != "Literal":
            raise Unsupported("IN with a non-literal list")
        try:
            series = pl.select(self.expr(inputs[1]).alias("v")).to_series()
        except Exception as exc:
            raise Unsupported(f"IN list: {exc}") from None
        values = series.to_list()
        dtype = series.dtype
        if isinstance(dtype, pl.List) and len(values) == 1:  # the list as one value
            dtype, values = dtype.inner, values[0]
        kl = kind_of(dtype)
        has_null = any(v is None for v in values)
        present = [v for v in values if v is not None]
        if kx.tag == "float" and kl.tag in ("int", "float", "dec"):
            members = {float(v) for v in present}  # float(Decimal) is correctly rounded
            if any(v != v for v in members):
                raise Unsupported("NaN in an IN list")
        elif (kx.tag, kl.tag) in (("int", "int"), ("str", "str"), ("bool", "bool")):
            members = set(present)
        elif kx.tag == "null":
            members = set()
        else:
            raise Unsupported(f"{kx.name} IN a list of {kl.name}")

        def is_in(env: Env) -> bool | None:
            v = fx(env)
            if v is None:
                return None
            if v in members:
                return True
            return None if has_null else False  # SQL: not found among a NULL is unknown

        return is_in

    def _pow(self, inputs: list[Any], kind: Kind) -> Fn:
        fb, kb = self.compile(inputs[0])
        # The exponent must be a constant: a column of exponents takes another code path in
        # Polars for one row than for many.
        e, ke = self.constant(inputs[1])
        if kb.tag == "int" and ke.tag == "int":
            if e is not None and not 0 <= e < 2**32:
                raise Unsupported("an integer to a negative power")  # Polars refuses it
            if kind.tag != "int":
                raise Unsupported(f"POWER giving {kind.name}")
            if e is None:
                return lambda env: (fb(env), None)[1]
            return _unary(fb, _in_range(lambda v: v**e, kind))
        if kind.tag != "float" or kb.tag not in ("int", "float") or ke.tag not in (
                "int", "float"):
            raise Unsupported(f"POWER of {kb.name} by {ke.name}")
        fb = _as(fb, kb, kind)
        if e is None:
            return lambda env: (fb(env), None)[1]
        e = float(e)
        if e == 1.0:
            return fb
        if e == 0.5:
            return _unary(fb, _sqrt)
        if e == math.floor(e) and 1.0 < e < 10.0:
            n = int(e)

            def repeated(x: float) -> float:  # Polars multiplies for small integral powers
                r = x
                for _ in range(1, n):
                    r = r * x
                return r

            return _unary(fb, repeated)
        return _unary(fb, lambda x: _powf(x, e))

    def _log(self, inputs: list[Any], kind: Kind) -> Fn:
        if len(inputs) != 2 or kind.tag != "float":
            raise Unsupported("LOG")
        fx, kx = self.compile(inputs[0])
        if kx.tag not in ("int", "float", "dec"):
            raise Unsupported(f"LOG of {kx.name}")
        fx = _as(fx, kx, kind)
        base, kbase = self.constant(inputs[1])
        if base is None:
            return lambda env: (fx(env), None)[1]
        if kbase.tag not in ("int", "float", "dec"):
            raise Unsupported(f"LOG base of {kbase.name}")
        ln_base = _ln(_as(_const(base), kbase, kind)({}))
        return _unary(fx, lambda x: _fdiv(_ln(x), ln_base))  # Rust's log(x, b): ln x / ln b


_NOT_CONSTANT = object()


def _constant_value(fn: Fn, kind: Kind) -> Any:
    """The value of a sub-expression that reads no column."""
    try:
        return fn({})
    except Fallback:
        raise Unsupported("a constant Polars can't compute") from None


def _internal(value: Any, kind: Kind) -> Any:
    """A Python value as Polars returns it (``to_list``) to the form used here."""
    if value is None:
        return None
    if kind.tag == "dec":
        sign, digits, exponent = Decimal(value).as_tuple()
        n = int("".join(map(str, digits)) or "0")
        shift = kind.scale + int(exponent)
        if shift < 0:
            raise Unsupported(f"decimal literal {value}")
        return (-n if sign else n) * 10**shift
    if kind.tag == "float":
        return float(value)
    if kind.tag == "int" and type(value) is int:
        return value
    if kind.tag in ("bool", "str") and type(value) is {"bool": bool, "str": str}[kind.tag]:
        return value
    raise Unsupported(f"literal {value!r} of {kind.name}")


def _output(kind: Kind) -> Callable[[Any], Any] | None:
    """Internal form to the value ``Series.to_list()`` gives (decimals as Decimal)."""
    if kind.tag != "dec":
        return None
    scale = kind.scale
    return lambda v: Decimal(f"{v}E-{scale}")


def _cast(fn: Fn, src: Kind, dst: Kind, strict: bool) -> Fn:
    s, d = src.tag, dst.tag

    def fail(v: Any) -> None:
        if strict:
            raise Fallback(f"CAST of {v!r} to {dst.name}")  # Polars raises an error
        return None

    if s == "null":
        return lambda env: (fn(env), None)[1]
    if s == d and s in ("float", "bool", "str"):
        return fn
    if s == d == "int":
        if dst.lo <= src.lo and src.hi <= dst.hi:
            return fn
        lo, hi = dst.lo, dst.hi
        return _unary(fn, lambda v: v if lo <= v <= hi else fail(v))
    if s == "bool" and d == "int":
        return _unary(fn, int)
    if s in ("int", "bool") and d == "float":
        return _unary(fn, float)
    if s == "float" and d == "int":
        lo, hi = dst.lo, dst.hi

        def float_to_int(v: float) -> int | None:
            if not math.isfinite(v):
                return fail(v)
            t = int(v)  # truncates, as Polars' cast
            return t if lo <= t <= hi else fail(v)

        return _unary(fn, float_to_int)
    if s == "int" and d == "bool":
        return _unary(fn, lambda v: v != 0)
    if s == "dec" and d == "float":
        return _as(fn, src, dst)
    if s == "dec" and d == "dec" and src.scale == dst.scale and src.limit <= dst.limit:
        return fn
    if d == "str" and s == "int":
        return _unary(fn, str)
    if d == "str" and s == "bool":
        return _unary(fn, lambda v: "true" if v else "false")
    raise Unsupported(f"CAST from {src.name} to {dst.name}")


def _binary_op(op: str, a: tuple[Fn, Kind], b: tuple[Fn, Kind], kind: Kind) -> Fn:
    (fa, ka), (fb, kb) = a, b
    if op in ("And", "Or"):
        if ka.tag not in ("bool", "null") or kb.tag not in ("bool", "null"):
            raise Unsupported(f"{op} of {ka.name} and {kb.name}")
        return _kleene(fa, fb, op == "And")
    if op in _EXACT_COMPARE or op in ("EqValidity", "NotEqValidity"):
        return _compare(op, a, b)
    if op in ("Plus", "Minus", "Multiply"):
        return _arith(op, a, b, kind)
    if op == "Div" and kind.tag == "dec" and {ka.tag, kb.tag} <= {"int", "dec"}:
        return _binary(fa, fb, _in_range(_decimal_div(ka, kb, kind), kind))
    if op == "Div":
        if kind.tag != "float":
            raise Unsupported(f"/ giving {kind.name}")
        return _binary(_as(fa, ka, kind), _as(fb, kb, kind), _fdiv)
    if op in ("IntDiv", "Rem"):
        if kind.tag == "int" and ka.tag in ("int", "bool") and kb.tag in ("int", "bool"):
            return _binary(_as(fa, ka, kind), _as(fb, kb, kind),
                           _in_range(_idiv if op == "IntDiv" else _irem, kind))
        if op == "Rem" and kind.tag == "float":
            return _binary(_as(fa, ka, kind), _as(fb, kb, kind), _fmod)
        if op == "IntDiv" and kind.tag == "int" and "float" in (ka.tag, kb.tag):
            f64 = Kind("float", "Float64")
            lo, hi = kind.lo, kind.hi

            def trunc_div(x: float, y: float) -> int:  # trunc(x / y), then a strict cast
                q = _fdiv(x, y)
                if not math.isfinite(q) or not lo <= int(q) <= hi:
                    raise Fallback(f"{x} // {y} is not an {kind.name}")
                return int(q)

            return _binary(_as(fa, ka, f64), _as(fb, kb, f64), trunc_div)
        raise Unsupported(f"{op} of {ka.name} and {kb.name} giving {kind.name}")
    raise Unsupported(f"operator {op}")


def _decimal_div(ka: Kind, kb: Kind, kind: Kind) -> Callable[[int, int], int]:
    """Decimal division, rounded to the nearest at the scale Polars gives the result (an
    exact tie, where the rounding rule would show, and a zero divisor go to Polars)."""
    shift = kind.scale + (kb.scale if kb.tag == "dec" else 0) - (
        ka.scale if ka.tag == "dec" else 0)
    if shift < 0:
        raise Unsupported(f"decimal division giving {kind.name}")
    mul = 10**shift

    def div(x: int, y: int) -> int:
        if y == 0:
            raise Fallback("decimal division by zero")  # an error in Polars
        q, r = divmod(abs(x) * mul, abs(y))
        if 2 * r > abs(y):
            q += 1
        elif 2 * r == abs(y):
            raise Fallback("a decimal quotient halfway between two")
        return -q if (x < 0) != (y < 0) else q

    return div


def _kleene(fa: Fn, fb: Fn, is_and: bool) -> Fn:
    def fn(env: Env) -> bool | None:
        a = fa(env)
        b = fb(env)
        if is_and:
            if a is False or b is False:
                return False
        elif a is True or b is True:
            return True
        if a is None or b is None:
            return None
        return is_and

    return fn


def _arith(op: str, a: tuple[Fn, Kind], b: tuple[Fn, Kind], kind: Kind) -> Fn:
    (fa, ka), (fb, kb) = a, b
    py = {"Plus": operator.add, "Minus": operator.sub, "Multiply": operator.mul}[op]
    if kind.tag in ("int", "float"):
        return _binary(_as(fa, ka, kind), _as(fb, kb, kind), _in_range(py, kind))
    if kind.tag == "dec":
        if op != "Multiply":
            return _binary(_as(fa, ka, kind), _as(fb, kb, kind), _in_range(py, kind))
        scales = [k.scale if k.tag == "dec" else 0 for k in (ka, kb)]
        if sum(scales) != kind.scale or any(k.tag not in ("int", "dec") for k in (ka, kb)):
            raise Unsupported(f"decimal product of {ka.name} and {kb.name} as {kind.name}")
        return _binary(fa, fb, _in_range(py, kind))
    if kind.tag == "str" and op == "Plus" and ka.tag == kb.tag == "str":
        return _binary(fa, fb, operator.add)
    raise Unsupported(f"{op} of {ka.name} and {kb.name} giving {kind.name}")


def _compare(op: str, a: tuple[Fn, Kind], b: tuple[Fn, Kind]) -> Fn:
    (fa, ka), (fb, kb) = a, b
    tags = {ka.tag, kb.tag}
    table = _EXACT_COMPARE
    if "null" in tags:
        pass  # always null (or, for the validity forms, a test of nullness)
    elif tags == {"bool", "dec"}:
        raise Unsupported("comparing Boolean with Decimal")  # Polars refuses it when run
    elif tags <= _NUMERIC:
        if "float" in tags:
            common = Kind("float", "Float64")
            table = _FLOAT_COMPARE
        elif "dec" in tags:
            common = Kind("dec", "Decimal", scale=max(k.scale for k in (ka, kb)),
                          limit=_EXACT)
        else:
            common = Kind("int", "Int", lo=-_EXACT, hi=_EXACT)
        if ka.tag != "bool" or kb.tag != "bool":
            fa, fb = _as(fa, ka, common), _as(fb, kb, common)
    elif not (ka.tag == kb.tag == "str"):
        raise Unsupported(f"comparing {ka.name} with {kb.name}")
    if op in ("EqValidity", "NotEqValidity"):
        eq = table["Eq"]
        want = op == "EqValidity"

        def validity(env: Env) -> bool:  # IS [NOT] DISTINCT FROM: null equals null
            x = fa(env)
            y = fb(env)
            same = (x is None and y is None) if x is None or y is None else eq(x, y)
            return same if want else not same

        return validity
    return _binary(fa, fb, table[op])


def _coalesce(fns: list[Fn]) -> Fn:
    def fn(env: Env) -> Any:
        found = None
        for f in fns:  # every argument is evaluated, as Polars does
            v = f(env)
            if found is None:
                found = v
        return found

    return fn


def _fold(fns: list[Fn], pick: Callable[[Any, Any], Any]) -> Fn:
    def fn(env: Env) -> Any:
        best = None
        for f in fns:
            v = f(env)
            if v is not None:
                best = v if best is None else pick(best, v)
        return best

    return fn


def _round(fa: Fn, ka: Kind, kind: Kind, decimals: int) -> Fn:
    if ka.tag == "int" and kind.tag == "int":
        return fa
    if ka.tag == kind.tag == "dec" and ka.scale == kind.scale:  # half away from zero
        if ka.scale <= decimals:
            return fa
        mul = 10 ** (ka.scale - decimals)
        half = mul // 2

        def round_decimal(v: int) -> int:
            rem = _irem(v, mul)
            assert rem is not None
            offset = (-mul if v < 0 else mul) if abs(rem) >= half else 0
            return v - rem + offset

        return _unary(fa, _in_range(round_decimal, kind))
    if ka.tag != "float" or kind.tag != "float" or not 0 <= decimals <= 22:
        raise Unsupported(f"ROUND of {ka.name} to {decimals} places")
    if decimals == 0:
        return _unary(fa, _round_even)
    mul = float(10**decimals)  # exact up to 10**22, like Rust's powi

    def round_to(x: float) -> float:
        r = _round_even(x * mul) / mul
        return r if math.isfinite(r) else x

    return _unary(fa, round_to)


def _math(name: str, arg: Any, fa: Fn, ka: Kind, kind: Kind) -> Fn:
    """The one-argument numeric functions."""
    if name == "Abs":
        if ka.tag == "int" and ka.lo == 0 and kind == ka:
            return fa
        if ka.tag in ("int", "dec", "float") and kind == ka:
            return _unary(fa, _in_range(abs, kind))
    elif name in ("Exp", "Pow") and kind.tag == "float" and ka.tag in ("int", "bool",
                                                                        "float", "dec"):
        op = {"Exp": _exp, "Sqrt": _sqrt}.get(arg if name == "Pow" else name)
        if op is not None:
            return _unary(_as(fa, ka, kind), op)
    elif name in ("Floor", "Ceil") or (name == "Truncate" and arg == {"decimals": 0}):
        if ka.tag == "int" and kind == ka:
            return fa
        if ka.tag == kind.tag == "float":
            return _unary(fa, {"Floor": _floor, "Ceil": _ceil, "Truncate": _trunc}[name])
        if ka.tag == kind.tag == "dec" and ka.scale == kind.scale and name in ("Floor",
                                                                                  "Ceil"):
            mul = 10**ka.scale
            if name == "Floor":
                return _unary(fa, _in_range(lambda v: v - v % mul, kind))  # Python's % floors
            return _unary(fa, _in_range(lambda v: v - v % -mul, kind))
    elif name == "Sign":
        if ka.tag == kind.tag == "int":
            return _unary(fa, _isign)
        if ka.tag == kind.tag == "float":
            return _unary(fa, _fsign)
    raise Unsupported(f"function {name} {arg or ''} of {ka.name}".strip())


# --- a pipeline's derived features over request rows ------------------------------------


def _coercer(dtype_name: str) -> Callable[[Any], Any]:
    """A request value as ``pl.Series([v], dtype, strict=True)`` takes it, or Fallback for
    anything else (the Polars path then gives the same 422 as always)."""
    if dtype_name in _INT_TYPES:
        lo, hi = _INT_TYPES[dtype_name]

        def to_int(v: Any) -> Any:
            t = type(v)
            if t is int and lo <= v <= hi:
                return v
            if v is None:
                return None
            if t is bool:
                return int(v)
            raise Fallback(dtype_name)

        return to_int
    if dtype_name == "Float64":

        def to_float(v: Any) -> Any:
            t = type(v)
            if t is float or v is None:
                return v
            if t is int or t is bool:
                try:
                    return float(v)
                except OverflowError:
                    raise Fallback(dtype_name) from None
            raise Fallback(dtype_name)

        return to_float
    if dtype_name == "Boolean":

        def to_bool(v: Any) -> Any:
            if v is None or type(v) is bool:
                return v
            raise Fallback(dtype_name)

        return to_bool
    if dtype_name == "String":

        def to_str(v: Any) -> Any:
            if v is None:
                return None
            if type(v) is str:
                if v.isascii():
                    return v
                try:
                    v.encode("utf-8")  # a lone surrogate is not a string Polars can hold
                    return v
                except UnicodeEncodeError:
                    pass
            raise Fallback(dtype_name)

        return to_str
    raise Unsupported(f"input type {dtype_name}")


class RowProgram:
    """A pipeline's derived features, in order (a later one may read an earlier one),
    compiled for request rows whose inputs have the given Polars types (as in training).

    Raises :class:`Unsupported` if any expression or input type can't be computed here.
    """

    def __init__(self, expressions: Iterable[tuple[str, pl.Expr]],
                 inputs: dict[str, pl.DataType]) -> None:
        self.expressions = list(expressions)
        self.input_types = dict(inputs)
        self.reported = False  # whether a fault on a request was logged (once)
        self._inputs = [(col, _coercer(str(dtype))) for col, dtype in inputs.items()]
        schema = dict(inputs)
        Step = tuple[str, Fn, Callable[[Any], Any] | None]
        self._one: list[Step] = []
        self._batch: list[Step] | None = []  # None: batches are left to Polars
        scalars: set[str] = set()  # derived features Polars may hold as one value
        for name, expr in self.expressions:
            try:
                tree = json.loads(expr.meta.serialize(format="json"))
            except Exception as exc:
                raise Unsupported(f"`{name}` can't be serialized: {exc}") from None
            try:
                compiler = _Compiler(schema, scalar_columns=scalars)
                fn, kind = compiler.compile(tree)
                batch_fn = fn
                if compiler.height_sensitive:
                    batch_fn, _ = _Compiler(schema, batch=True,
                                            scalar_columns=scalars).compile(tree)
            except Unsupported as exc:
                raise Unsupported(f"`{name}`: {exc}") from None
            self._one.append((name, fn, _output(kind)))
            self._batch.append((name, batch_fn, _output(kind)))  # type: ignore[union-attr]
            if _maybe_scalar(tree, scalars):
                scalars.add(name)
            schema[name] = compiler.dtype(tree)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.expressions]

    def run(self, row: Any, batch: bool = False) -> dict[str, Any]:
        """The derived values of one request row (a dict; anything else reads as all
        missing), as Polars gives them for a frame of this one row, or (``batch``) of this
        row among others. Raises Fallback when Polars must compute them."""
        steps = self._one
        if batch:
            if self._batch is None:
                raise Fallback("batches of these expressions are left to Polars")
            steps = self._batch
        get = row.get if isinstance(row, dict) else (lambda col: None)
        env = {col: coerce(get(col)) for col, coerce in self._inputs}
        out: dict[str, Any] = {}
        for name, fn, output in steps:
            value = env[name] = fn(env)
            out[name] = value if output is None or value is None else output(value)
        return out

    def run_polars(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The same, computed by Polars for a frame of these rows (the reference)."""
        columns = {col: pl.Series(col, [r.get(col) for r in rows], dtype=dtype, strict=True)
                   for col, dtype in self.input_types.items()}
        frame = pl.DataFrame(columns, height=len(rows))
        for name, expr in self.expressions:
            frame = frame.with_columns(expr.alias(name))
        return frame.select(self.names).to_dicts()

    def self_check(self) -> str | None:
        """Compute probe rows (zeros, negatives, nulls, extremes, fractions, empty strings)
        both here and with Polars: each row alone, and batches of them (one where an input
        is null in every row too). None if every value is the same; else what differed.
        Where Polars fails on a batch but on none of its rows alone (a bug of its own),
        batches are left to Polars."""
        rows = probe_rows(self.input_types)
        computed = []  # the rows Polars computes alone
        for row in rows:
            try:
                alone: dict[str, Any] | Exception = self.run_polars([row])[0]
            except Exception as exc:  # such a request fails in Polars: ours must fall back
                alone = exc
            else:
                computed.append(row)
            mismatch = self._compare(row, alone, batch=False)
            if mismatch:
                return mismatch
        batches = [computed] + [
            [{**r, **({col: None} if col else dict.fromkeys(r))} for r in computed[:4]]
            for col in [None, *self.input_types]]
        for batch in batches:
            if len(batch) < 2:
                continue
            try:
                wanted = self.run_polars(batch)
            except Exception:
                self._batch = None
                return None
            for row, want in zip(batch, wanted, strict=True):
                mismatch = self._compare(row, want, batch=True)
                if mismatch:
                    return mismatch
        return None

    def _compare(self, row: dict[str, Any], want: dict[str, Any] | Exception,
                 batch: bool) -> str | None:
        try:
            got = self.run(row, batch=batch)
        except Fallback:
            return None
        except Exception as exc:
            return f"`{self.names[0]}` raised {exc!r} on {row}"
        if isinstance(want, Exception):
            return f"`{self.names[0]}` gave values on {row} where Polars fails: {want}"
        for name in self.names:
            if not same_value(got[name], want[name]):
                return (f"`{name}` on {row}{' in a batch' if batch else ''}: "
                        f"{got[name]!r} here, {want[name]!r} in Polars")
        return None


def same_value(a: Any, b: Any) -> bool:
    """Equal in value and type; floats bit for bit (any NaN equals any NaN); decimals with
    the same exponent."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if a != a:
            return b != b
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, Decimal):
        return a == b and a.as_tuple().exponent == b.as_tuple().exponent
    return bool(a == b)


def _probes(dtype_name: str) -> list[Any]:
    if dtype_name in _INT_TYPES:
        lo, hi = _INT_TYPES[dtype_name]
        values = [0, 1, -1, 2, -2, 3, -7, 7, 10, 100, 1000, lo, hi, lo + 1, hi - 1, 2**31,
                  -(2**31), 2**53 + 1, None]
        return [v for v in values if v is None or lo <= v <= hi]
    if dtype_name == "Float64":
        return [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5, 1.5, 3.0, 0.1, 7.0, -7.0, 1e-300,
                1e300, -1e300, 1e18, 2.0**63, 123456.789, NAN, INF, -INF, None]
    if dtype_name == "Boolean":
        return [True, False, None]
    return ["", "a", "b", "A", "abc", "é", " ", "0", None]


def probe_rows(inputs: dict[str, pl.DataType]) -> list[dict[str, Any]]:
    """Rows that take each input's probe values, combined with different strides so that
    zeros meet negatives, nulls and extremes; plus all-zero and all-null rows."""
    probes = {col: _probes(str(dtype)) for col, dtype in inputs.items()}
    if not probes:
        return [{}]
    n = 2 * max(len(p) for p in probes.values())
    rows = [{col: p[0] for col, p in probes.items()}, {col: None for col in probes}]
    for r in range(n):
        rows.append({col: p[(r * (2 * c + 1) + c) % len(p)]
                     for c, (col, p) in enumerate(probes.items())})
    return rows
