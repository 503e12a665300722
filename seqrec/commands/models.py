"""``seqrec models``: registered model types, or trained models in the store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from seqrec.config import CONFIG_NAME, find_root
from seqrec.errors import SeqrecError


def has_workspace() -> bool:
    return (find_root(None) / CONFIG_NAME).is_file()


if TYPE_CHECKING:
    from seqrec.models import ModelSpec


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.command()
    @project_option
    @click.option("--stored", is_flag=True, help="List trained models in the model store instead.")
    @click.option(
        "--presets", "show_presets", is_flag=True, help="List every model's presets and settings."
    )
    @click.option("--json", "as_json", is_flag=True)
    def models(project: Path | None, stored: bool, show_presets: bool, as_json: bool) -> None:
        """List registered models, their tasks and presets (or, with --stored, trained models)."""
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
        from seqrec.models import DEFAULT_PRESET, model_registry
        from seqrec.presets import workspace_presets
        from seqrec.tuning import spec_space

        specs = model_registry()
        ws = None
        if project is not None:
            ws = workspace(project)
        elif has_workspace():  # the current directory's workspace adds its own presets
            try:
                ws = workspace(None)
            except SeqrecError as exc:
                click.secho(f"warning: workspace presets not shown: {exc}", fg="yellow", err=True)

        def presets_of(s: ModelSpec) -> dict[str, dict[str, Any]]:
            out = {
                DEFAULT_PRESET: {
                    "source": "plugin",
                    "description": "the defaults",
                    "params": dict(s.defaults),
                    "train": dict(s.train_defaults),
                }
            }
            for name, p in s.presets.items():
                out[name] = {
                    "source": "plugin",
                    "description": p.description,
                    "params": dict(p.params),
                    "train": dict(p.train),
                }
            for name, entry in (workspace_presets(ws, s.name) if ws else {}).items():
                out[name] = {"source": "workspace", **entry}
            return out

        if as_json:
            emit_json(
                [
                    {
                        "name": s.name,
                        "tasks": list(s.tasks),
                        "plugin": s.plugin,
                        "description": s.description,
                        "defaults": dict(s.defaults),
                        "train_defaults": dict(s.train_defaults),
                        "text_defaults": dict(s.text_defaults),
                        "presets": presets_of(s),
                        "search_space": spec_space(s),
                    }
                    for s in specs.values()
                ]
            )
            return
        if show_presets:
            table = Table("model", "preset", "source", "settings", "description")
            for s in sorted(specs.values(), key=lambda s: s.name):
                for name, p in presets_of(s).items():
                    shown = {**p.get("params", {}), **p.get("train", {})}
                    if name == DEFAULT_PRESET and p["source"] == "plugin":
                        shown = dict(s.train_defaults)  # its params are every default
                        shown.update(
                            {f"{k} (item_text=true)": v for k, v in s.text_defaults.items()}
                        )
                    table.add_row(
                        s.name,
                        name,
                        p["source"],
                        ", ".join(f"{k}={v}" for k, v in shown.items()) or "-",
                        str(p.get("description", "")),
                    )
            Console().print(table)
            return
        table = Table("model", "tasks", "plugin", "presets", "description")
        for s in sorted(specs.values(), key=lambda s: s.name):
            table.add_row(
                s.name, ", ".join(s.tasks), s.plugin, ", ".join(presets_of(s)), s.description
            )
        Console().print(table)
