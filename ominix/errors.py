"""The one exception type the CLI formats: what is wrong, and what to do about it."""

from __future__ import annotations


class OminixError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``hint`` what to do.

    The CLI prints both lines and exits with ``exit_code`` (2 = bad input, the default;
    1 = a failure while doing the work).
    """

    def __init__(self, message: str, hint: str = "", exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"
