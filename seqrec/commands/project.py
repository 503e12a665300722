"""``seqrec init``, ``seqrec config``, ``seqrec plugins``, ``seqrec quickstart``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from seqrec.config import CONFIG_NAME, PROFILES
from seqrec.workspace_init import init_workspace


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.command()
    @click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
    @click.option("--profile", type=click.Choice(PROFILES), default="embedded", show_default=True)
    @click.option("--force", is_flag=True, help="Overwrite an existing seqrec.toml.")
    def init(directory: Path, profile: str, force: bool) -> None:
        """Create a workspace in DIRECTORY with a seqrec.toml of defaults."""
        path = init_workspace(directory, profile, force)
        click.echo(f"wrote {path} (profile {profile}); edit it, then `seqrec events import`")

    @cli.command()
    @project_option
    @click.option("--json", "as_json", is_flag=True, help="Print the resolved config as JSON.")
    @click.option("--reference", is_flag=True, help="Print the Markdown reference of every key.")
    def config(project: Path | None, as_json: bool, reference: bool) -> None:
        """Validate seqrec.toml and print the resolved configuration."""
        if reference:
            from seqrec.config import render_reference

            click.echo(render_reference(), nl=False)
            return
        ws = workspace(project)
        if as_json:
            emit_json(ws.config.model_dump())
        else:
            click.echo(f"# {ws.root / CONFIG_NAME}: valid")
            for section, values in ws.config.model_dump().items():
                click.echo(f"{section} = {values}")

    @cli.command()
    @click.option("--json", "as_json", is_flag=True)
    def plugins(as_json: bool) -> None:
        """List plugins: name, distribution, version, hooks, and why a broken one is broken."""
        from seqrec.models import model_registry
        from seqrec.plugins import get_plugin_manager

        pm = get_plugin_manager()
        model_registry(pm)  # runs every register_models: a plugin whose hook fails is broken
        infos = pm.describe()
        if as_json:
            emit_json([i.__dict__ for i in infos])
            return
        table = Table("plugin", "distribution", "version", "hooks", "status")
        for i in infos:
            status = f"[red]broken: {i.error}[/]" if i.error else ("default" if i.default else "ok")
            dist = "(seqrec)" if i.default else i.distribution or "-"
            table.add_row(i.name, dist, i.version or "-", ", ".join(i.hooks), status)
        Console().print(table)

    @cli.command()
    @project_option
    @click.option("--users", default=2000, show_default=True)
    @click.option("--items", default=1000, show_default=True)
    @click.option("--epochs", default=None, type=int, help="GPT-2 epochs (default 15).")
    @click.option("--seed", default=7, show_default=True)
    def quickstart(
        project: Path | None, users: int, items: int, epochs: int | None, seed: int
    ) -> None:
        """Run the whole pipeline on synthetic data in a fresh workspace (default ./demo)."""
        from seqrec.quickstart import run_quickstart

        run_quickstart(project or Path("demo"), users=users, items=items, epochs=epochs, seed=seed)
