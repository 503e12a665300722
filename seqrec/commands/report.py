"""``seqrec report``: the HTML report of a training or retraining run."""

from __future__ import annotations

from pathlib import Path

import click


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.command()
    @click.argument("run", type=int, required=False)
    @project_option
    @click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder to write (default: <workspace>/reports/run-<id>/).",
    )
    @click.option("--open", "open_", is_flag=True, help="Open the report in a browser.")
    @click.option("--json", "as_json", is_flag=True, help="Print {path, folder} as JSON.")
    def report(
        run: int | None, project: Path | None, out: Path | None, open_: bool, as_json: bool
    ) -> None:
        """Write the report of run RUN (default: the newest; `seqrec runs` lists them):
        decision, learning curves, the metric across retrains, NDCG@10 by history length,
        coverage, calibration for classifiers and drift. A folder of index.html + PNGs."""
        from seqrec.monitoring.report import build_report

        ws = workspace(project)
        path = build_report(ws, run, out)
        if as_json:
            emit_json({"path": str(path), "folder": str(path.parent)})
        else:
            click.echo(f"report: {path}")
        if open_:
            click.launch(str(path))
