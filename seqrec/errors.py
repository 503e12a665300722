"""The one exception type for user-facing errors.

A ``SeqrecError`` carries a message that says what was wrong, where, and what to do. The CLI
prints it without a traceback and exits non-zero (``exit_code``, when the error sets one, else
the command's code for user errors: 1, or 2 for ``seqrec retrain`` and ``seqrec runs``);
anything else is a bug and keeps its traceback. A best-effort step that goes on after a
failure logs it with :func:`log_caught`, which keeps a bug's traceback too.
"""

from __future__ import annotations

import logging

#: exit code of a command line misused or a configuration that is wrong (as click's own)
EX_USAGE = 2
#: exit code of a job that could not start now and may be retried later (sysexits EX_TEMPFAIL)
EX_TEMPFAIL = 75


class SeqrecError(Exception):
    """A user mistake or an unavailable resource, with a message meant for people.

    ``exit_code``: the process exit status the CLI uses for it (None: the command's default).
    """

    exit_code: int | None = None

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        exit_code: int | None = None,
    ):
        self.message = message
        self.where = where
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code
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

    exit_code = 1


def log_caught(
    logger: logging.Logger,
    exc: BaseException,
    expected: tuple[type[BaseException], ...],
    message: str,
    *args: object,
) -> bool:
    """Log ``exc``, caught by a best-effort step that goes on without it: one warning line
    (``message: exc``) when it is one of the ``expected`` failures (an outage, a damaged file,
    a user mistake); anything else is a bug, logged as an error with its traceback so that it
    cannot pass for one of those. Returns whether it was expected."""
    if isinstance(exc, expected):
        logger.warning(message + ": %s", *args, exc)
        return True
    logger.error(message + ": internal error (a bug)", *args, exc_info=exc)
    return False


def driver_reason(exc: BaseException) -> str:
    """The database driver's own words for a SQLAlchemy ``DBAPIError`` (its ``orig``), on one
    line: no "(Background on this error at: ...)" link, no tab-indented continuation."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())
