"""One error type for everything an operator or a client is told.

The same object becomes a ``rejected/<file>.reason.json``, the body of a 4xx answer and
an event, so the three always agree.
"""

from __future__ import annotations

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
