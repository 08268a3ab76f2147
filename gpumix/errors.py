"""The one error type gpumix raises for bad input or a broken environment.

The CLI prints it as one line (plus a hint) and exits non-zero; it never becomes a traceback.
"""

from __future__ import annotations

from pydantic import ValidationError


class GpumixError(Exception):
    """A user-facing error: says what is wrong and, in ``hint``, what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


def first_validation_problem(exc: ValidationError) -> tuple[str, str]:
    """The first problem pydantic found, as (dotted field path or '(top level)', message without pydantic's
    'Value error, ' prefix): what a one-line GpumixError about a bad file names."""
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return field, first["msg"].removeprefix("Value error, ")
