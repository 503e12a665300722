"""``seqrec tune``: Optuna search over a model's declared space; the best becomes a preset."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.command()
    @project_option
    @click.option("--model", "-m", "model_name", help="Registered model (see `seqrec models`).")
    @click.option(
        "--task",
        type=click.Choice(["next-item", "classify"]),
        default="next-item",
        show_default=True,
    )
    @click.option("--label", help="For classify: purchase-within:7d, churn:30d, next-event-type.")
    @click.option(
        "--trials",
        type=click.IntRange(1),
        default=20,
        show_default=True,
        help="Finished + pruned trials in the study, counted across resumed runs.",
    )
    @click.option("--timeout", type=click.FloatRange(min=1), help="Stop after S seconds.")
    @click.option(
        "--epochs", type=click.IntRange(1), help="Cap each trial's epochs (default: the preset's)."
    )
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--study", help="Study name (default: <model>-<task>[-<label>]).")
    @click.option(
        "--save-as",
        help="Workspace preset to write the best configuration to (default: 'tuned' for "
        "next-item, 'tuned-classify-<label>' to classify; 'default' replaces the model's "
        "defaults in this workspace).",
    )
    @click.option(
        "--plot",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write a PNG of the trials here.",
    )
    @click.option(
        "--min-gain",
        type=click.FloatRange(min=0),
        default=2.0,
        show_default=True,
        help="Paired standard errors by which the best trial must beat the configuration the "
        "study started from (today's defaults) on validation to be saved instead of it; 0 "
        "saves the best trial whatever its margin.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    def tune(
        project: Path | None,
        model_name: str | None,
        task: str,
        label: str | None,
        trials: int,
        timeout: float | None,
        epochs: int | None,
        seed: int,
        study: str | None,
        save_as: str | None,
        plot: Path | None,
        min_gain: float,
        as_json: bool,
    ) -> None:
        """Search a model's hyperparameters with Optuna (pruned on validation NDCG@10 or
        ROC-AUC). The study lives in the workspace's database: rerun the same command to resume
        a killed run. Its first trial trains today's configuration; the best trial is saved as a
        workspace preset for `seqrec train --preset`, unless it beats today's configuration by
        less than --min-gain paired standard errors on validation: then the preset keeps it."""
        from seqrec.tuning import tune as run

        ws = workspace(project)
        res = run(
            ws,
            model_name or ws.config.models.default,
            task=task,
            label=label,
            trials=trials,
            timeout=timeout,
            epochs=epochs,
            seed=seed,
            study=study,
            save_as=save_as,
            plot=plot,
            progress=not as_json,
            min_gain=min_gain,
        )
        if as_json:
            emit_json(res.to_dict())
            return
        table = Table(title=f"study {res.study}: top trials by valid {res.metric}")
        for col in ("trial", "state", res.metric, "epochs", "seconds", "parameters"):
            table.add_column(col)
        ranked = sorted(
            (t for t in res.trials if t["value"] is not None),
            key=lambda t: -float(t["value"]),
        )
        for t in ranked[:10]:
            table.add_row(
                str(t["number"]),
                t["state"].lower() + (" (start)" if t.get("start") else ""),
                f"{t['value']:.4f}",
                str(t["epochs"]),
                str(t["seconds"] or "-"),
                ", ".join(
                    f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in t["params"].items()
                ),
            )
        Console().print(table)
        states: dict[str, int] = {}
        for t in res.trials:
            states[t["state"].lower()] = states.get(t["state"].lower(), 0) + 1
        click.echo(
            f"{len(res.trials)} trials ({', '.join(f'{n} {s}' for s, n in states.items())}); "
            f"best: trial {res.best_trial}, valid {res.metric} {res.best_value:.4f}"
        )
        start = next((t for t in res.trials if t["number"] == res.start_trial), None)
        if start is not None and start["value"] is not None:
            click.echo(
                f"the study started from preset '{start['start']}' (trial {start['number']}): "
                f"valid {res.metric} {start['value']:.4f}"
            )
        if res.gain is not None and res.gain_se is not None:
            click.echo(
                f"best over start: {res.gain:+.4f} +- {res.gain_se:.4f} (paired standard error "
                f"on the validation examples); {res.comparison}"
                + ("; --min-gain 0 saves the best" if res.preset_trial != res.best_trial else "")
            )
        elif res.comparison:
            click.echo(res.comparison)
        click.echo(
            f"saved trial {res.preset_trial} as workspace preset '{res.preset}' "
            f"({res.preset_file}): "
            f"`seqrec train --model {model_name or ws.config.models.default} --preset {res.preset}"
            + (f" --task classify --label {label}`" if task == "classify" else "`")
        )
        if res.plot:
            click.echo(f"plot: {res.plot}")
