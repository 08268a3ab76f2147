"""The one error type gpumix raises for bad input or a broken environment.

The CLI prints it as one line (plus a hint) and exits non-zero; it never becomes a traceback.
"""

from __future__ import annotations


class GpumixError(Exception):
    """A user-facing error: says what is wrong and, in ``hint``, what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"
