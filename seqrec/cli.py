"""The ``seqrec`` command line.

Subcommand groups live in ``seqrec/commands/``; plugins add their own through the
``register_commands`` hook. User mistakes (``SeqrecError``) print a message and exit 1 (or the
error's ``exit_code``; commands marked with :func:`user_errors_exit` use their own code), without
a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from seqrec import __version__
from seqrec.config import Workspace, load_workspace
from seqrec.errors import SeqrecError

F = TypeVar("F", bound=Callable[..., Any])


def project_option(func: F) -> F:
    """Add ``--project DIR`` (default: $SEQREC_PROJECT or the current directory)."""
    return click.option(
        "--project",
        "-p",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Workspace directory holding seqrec.toml (default: $SEQREC_PROJECT or .).",
    )(func)


def workspace(project: Path | None) -> Workspace:
    """Load the workspace and point BentoML at its model store before anything imports it."""
    ws = load_workspace(project)
    os.environ.setdefault("BENTOML_HOME", str(ws.model_store))
    os.environ["SEQREC_PROJECT"] = str(ws.root)
    return ws


def emit_json(obj: Any) -> None:
    """Print one JSON object on stdout (for ``--json``)."""
    click.echo(json.dumps(obj, sort_keys=True, default=str))


def friendly_errors(func: F) -> F:
    """Turn SeqrecError into a clean message and its exit code (default 1)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SeqrecError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code or 1)

    return wrapper  # type: ignore[return-value]


def user_errors_exit(code: int) -> Callable[[F], F]:
    """Make a command's SeqrecErrors that set no exit code of their own exit with ``code``."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except SeqrecError as exc:
                if exc.exit_code is None:
                    exc.exit_code = code
                raise

        return wrapper  # type: ignore[return-value]

    return decorate


class SeqrecGroup(click.Group):
    """A click group whose commands all get friendly error handling."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SeqrecError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code or 1)


@click.group(cls=SeqrecGroup)
@click.version_option(__version__, prog_name="seqrec")
def cli() -> None:
    """seqrec: sequence recommendation on a feature store."""


def _register_builtin_commands() -> None:
    from seqrec.commands import (
        events,
        features,
        models,
        plugin,
        project,
        report,
        runs,
        serve,
        train,
        tune,
    )

    for module in (project, events, features, models, train, tune, serve, runs, report, plugin):
        module.register(cli)
    from seqrec.commands import items  # item text and embeddings

    items.register(cli)


def build_cli() -> click.Group:
    """The CLI with built-in commands and every plugin's commands."""
    if not cli.commands:
        _register_builtin_commands()
        from seqrec.plugins import get_plugin_manager

        get_plugin_manager().call_each("register_commands", cli=cli)  # one at a time
    return cli


#: library warnings seqrec's users can do nothing about: (category, start of the message).
#: Silenced in the command line only; tests calling the libraries still see them.
QUIET_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (DeprecationWarning, "fetch_arrow_table() is deprecated"),  # ibis, under Feast
    (DeprecationWarning, "GitWildMatchPattern ('gitwildmatch') is deprecated"),  # pathspec
)


def quiet_library_warnings() -> None:
    """Drop :data:`QUIET_WARNINGS` and print seqrec's own warnings as ``warning: ...`` lines.

    A filter alone does not hold: Feast calls ``warnings.simplefilter("once",
    DeprecationWarning)`` when imported, ahead of any filter set before, so the known
    warnings are dropped where they are shown."""
    import warnings

    show = warnings.showwarning

    def showwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: Any = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if any(issubclass(category, c) and text.startswith(m) for c, m in QUIET_WARNINGS):
            return
        if category.__module__.startswith("seqrec"):  # ours are meant for people
            click.secho(f"warning: {text}", fg="yellow", err=True)
            return
        show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


#: environment variable naming the log level of the command line (DEBUG shows the tracebacks
#: behind one-line warnings, e.g. of a broken plugin); unset: Python's default (warnings only)
LOG_LEVEL_ENV = "SEQREC_LOG_LEVEL"


def configure_logging() -> None:
    """Log to stderr at ``$SEQREC_LOG_LEVEL`` when it is set (a name such as DEBUG or INFO)."""
    import logging

    name = os.environ.get(LOG_LEVEL_ENV, "").strip().upper()
    if not name:
        return
    level = logging.getLevelName(name)
    if not isinstance(level, int):
        click.secho(
            f"warning: {LOG_LEVEL_ENV}={name!r} is not a log level "
            "(DEBUG, INFO, WARNING, ERROR); ignored",
            fg="yellow",
            err=True,
        )
        return
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    quiet_library_warnings()
    configure_logging()
    build_cli()(prog_name="seqrec")


if __name__ == "__main__":  # pragma: no cover
    main()
