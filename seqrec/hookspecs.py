"""Plugin hooks. A plugin is a module (or object) with functions marked ``@seqrec.hookimpl``.

Third-party plugins register under the entry point group ``seqrec``; built-in ones load exactly
the same way. Every hook is optional to implement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from seqrec.models import ModelSpec

hookspec = pluggy.HookspecMarker("seqrec")
hookimpl = pluggy.HookimplMarker("seqrec")


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Called once when the model registry is built: call ``register(spec)`` for each model."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Called when the CLI starts: add click commands or groups to ``cli``."""
