"""``seqrec runs``: the run history of ``seqrec train`` and ``seqrec retrain``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from seqrec.errors import EX_USAGE


def _score(metrics: dict[str, Any] | None, metric: str | None) -> str:
    value = (metrics or {}).get(metric or "")
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title=f"{len(rows)} run(s), newest first")
    for col in ("id", "kind", "status", "step", "model", "started (UTC)", "seconds"):
        table.add_column(col, justify="right" if col in ("id", "seconds") else "left")
    table.add_column("metric cand / prod", justify="right")
    table.add_column("decision")
    for r in rows:
        metric = r["metric"] or ""
        scores = f"{_score(r['candidate_metrics'], metric)} / "
        scores += _score(r["production_metrics"], metric)
        table.add_row(
            str(r["id"]),
            r["kind"],
            r["status"],
            r["step"] or "-",
            r["model"] or "-",
            r["started_at"][:16].replace("T", " "),
            "-" if r["duration_s"] is None else f"{r['duration_s']:.0f}",
            f"{metric} {scores}".strip(),
            r["decision"] or "-",
        )
    console = Console()
    if not console.is_terminal:  # piped or captured: don't fold the table into 80 columns
        console = Console(width=160)
    console.print(table)


def _print_run(run: dict[str, Any], changes: list[dict[str, Any]]) -> None:
    import json

    for key, value in run.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, sort_keys=True, default=str)
            value = value if len(value) <= 200 else value[:197] + "..."
        click.echo(f"{key:>18}: {'-' if value is None else value}")
    click.echo(f"\nlabel changes ({len(changes)}):")
    for c in changes:
        click.echo(
            f"  {c['at']}  {c['selector']}: {c['old_tag'] or '-'} -> {c['new_tag'] or '-'}"
            + (f"  ({c['reason']})" if c["reason"] else "")
        )


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, user_errors_exit, workspace

    @cli.group(invoke_without_command=True)
    @project_option
    @click.option("--json", "as_json", is_flag=True, help="Print the runs as one JSON list.")
    @click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
    @click.pass_context
    @user_errors_exit(EX_USAGE)
    def runs(ctx: click.Context, project: Path | None, as_json: bool, limit: int) -> None:
        """The run history of train and retrain: status, step, metrics and decision.

        A run left running by a process that died is shown as crashed, at the step it had
        begun. `seqrec runs show ID` prints one run with its label changes."""
        if ctx.invoked_subcommand is not None:
            return
        from seqrec.runs import list_runs

        rows = list_runs(workspace(project), limit=limit)
        if as_json:
            emit_json(rows)
        else:
            _print_table(rows)

    @runs.command()
    @project_option
    @click.argument("run_id", type=int)
    @click.option("--json", "as_json", is_flag=True, help="Print the run as one JSON object.")
    @user_errors_exit(EX_USAGE)
    def show(project: Path | None, run_id: int, as_json: bool) -> None:
        """Everything recorded about run RUN_ID, with the label changes it made."""
        from seqrec.runs import get_run, label_history

        ws = workspace(project)
        run = get_run(ws, run_id)
        changes = label_history(ws, run_id)
        if as_json:
            emit_json({**run, "label_changes": changes})
        else:
            _print_run(run, changes)
