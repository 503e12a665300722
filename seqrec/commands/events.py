"""``seqrec events``: import and synthesize behaviour events."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    @cli.group()
    def events() -> None:
        """Load behaviour events into the SQL events table."""
