"""``seqrec features``: build, apply, materialize, status."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.group()
    def features() -> None:
        """Sequence features through Feast (offline and online)."""

    @features.command()
    @project_option
    @click.option("--json", "as_json", is_flag=True)
    def build(project: Path | None, as_json: bool) -> None:
        """Compute the sequence features in SQL and write the offline snapshot."""
        from seqrec.features.snapshots import build_snapshot

        info = build_snapshot(workspace(project))
        if as_json:
            emit_json(asdict(info))
        else:
            click.echo(
                f"built {info.rows:,} feature rows for {info.users:,} users "
                f"from {info.events:,} events in {info.seconds:.2f}s"
            )

    @features.command()
    @project_option
    def apply(project: Path | None) -> None:
        """Register the entity, source, feature view and feature service with Feast."""
        from seqrec.features.repo import apply as apply_defs

        for line in apply_defs(workspace(project)):
            click.echo(f"applied {line}")

    @features.command()
    @project_option
    @click.option("--incremental", is_flag=True, help="Only rows newer than the last run.")
    @click.option("--json", "as_json", is_flag=True)
    def materialize(project: Path | None, incremental: bool, as_json: bool) -> None:
        """Load each user's newest sequence into the online store."""
        from seqrec.features.materialize import materialize as run

        report = run(workspace(project), incremental=incremental, progress=not as_json)
        if as_json:
            emit_json(asdict(report))
        else:
            click.echo(
                f"{report.mode} materialization: {report.users_written:,} users written in "
                f"{report.seconds:.2f}s ({report.rows_per_s:,.0f} rows/s); events up to id {report.max_event_id} online"
            )
            if report.items_written is not None:
                click.echo(f"item text embeddings: {report.items_written:,} items written")

    @features.command()
    @project_option
    @click.option("--json", "as_json", is_flag=True)
    def status(project: Path | None, as_json: bool) -> None:
        """Snapshot, registry and online-store state."""
        from seqrec.features.status import status as get_status

        st = get_status(workspace(project))
        if as_json:
            emit_json(st)
        else:
            for k, v in st.items():
                click.echo(f"{k:>22}: {v}")
