"""The one exception type for user-facing errors.

A ``SeqrecError`` carries a message that says what was wrong, where, and what to do. The CLI
prints it without a traceback and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SeqrecError(Exception):
    """A user mistake or an unavailable resource, with a message meant for people."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class StoreUnavailable(SeqrecError):
    """A store (online feature store, events database) cannot be reached right now.

    Serving catches it to answer with the popularity fallback instead of failing the request.
    """
