"""One error type for everything an operator or a client is told.

The same object becomes a ``rejected/<file>.reason.json``, the body of a 4xx answer and
an event, so the three always agree.
"""

from __future__ import annotations

import reprlib
from typing import Any


class ApplianceError(Exception):
    """A failure with a stable machine-readable ``code``, a message for a person and details.

    ``status`` is the HTTP status the API answers with when this reaches a client.
    """

    def __init__(
        self, code: str, message: str, details: dict[str, Any] | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def __str__(self) -> str:
        return self.message


_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel = 2
_PREVIEW.maxstring = 60
_PREVIEW.maxother = 60
_PREVIEW.maxlist = _PREVIEW.maxdict = _PREVIEW.maxtuple = _PREVIEW.maxset = 4


def preview(value: Any, limit: int = 60) -> str:
    """A short repr of a value a client sent, for an error message: bounded in length and
    in depth, so a huge or deeply nested value costs no more to show than a small one (a
    plain ``repr`` of 20,000 nested lists raises RecursionError)."""
    shown = _PREVIEW.repr(value)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."
