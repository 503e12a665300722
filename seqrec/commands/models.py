"""``seqrec models``: registered model types, or trained models in the store."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.command()
    @project_option
    @click.option("--stored", is_flag=True, help="List trained models in the model store instead.")
    @click.option("--json", "as_json", is_flag=True)
    def models(project: Path | None, stored: bool, as_json: bool) -> None:
        """List registered models and their tasks (or, with --stored, trained models)."""
        if stored:
            from seqrec import model_store

            rows = model_store.list_models(workspace(project).model_store)
            if as_json:
                emit_json(rows)
                return
            table = Table("tag", "created", "labels", "valid ndcg@10")
            for r in rows:
                ndcg = r["valid"].get("ndcg@10")
                table.add_row(
                    r["tag"],
                    r["created"][:19],
                    ",".join(f"{k}={v}" for k, v in r["labels"].items()),
                    f"{ndcg:.4f}" if ndcg is not None else "-",
                )
            Console().print(table)
            return
        from seqrec.models import model_registry

        specs = model_registry()
        if as_json:
            emit_json(
                [
                    {
                        "name": s.name,
                        "tasks": list(s.tasks),
                        "plugin": s.plugin,
                        "description": s.description,
                        "defaults": dict(s.defaults),
                    }
                    for s in specs.values()
                ]
            )
            return
        table = Table("model", "tasks", "plugin", "description")
        for s in sorted(specs.values(), key=lambda s: s.name):
            table.add_row(s.name, ", ".join(s.tasks), s.plugin, s.description)
        Console().print(table)
