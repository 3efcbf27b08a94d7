"""Derived features' expressions: Polars SQL over a pipeline's columns.

Here in ``core`` because the config checks every expression when it is read, and the
feature store compiles the same text for training and serving.
"""

import polars as pl

from appliance.core.errors import ApplianceError


def compile_expression(name: str, text: str) -> pl.Expr:
    try:
        return pl.sql_expr(text)
    except Exception as exc:  # Polars raises SQLInterfaceError / SQLSyntaxError
        raise ApplianceError(
            "derived_parse",
            f"derived feature `{name}`: `{text}` is not a valid SQL expression ({exc})",
            {"feature": name, "expression": text},
        ) from None
