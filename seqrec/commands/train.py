"""``seqrec train`` and ``seqrec evaluate``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from seqrec.errors import EX_USAGE, SeqrecError


def parse_ks(raw: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in raw.split(",") if k.strip()}))
    except ValueError:
        raise SeqrecError(f"--k must be comma-separated integers, got {raw!r}") from None
    if not ks or min(ks) < 1:
        raise SeqrecError(f"--k values must be >= 1, got {raw!r}")
    return ks


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``("d_model=128", "loss=sampled")`` -> typed dict (TOML values; bare words are strings)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SeqrecError(f"--param must be KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw.strip()
    return out


def _print_classification(res: dict[str, Any], split: str) -> None:
    cols = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc")
    table = Table(title=f"{res['tag']} ({res['label']}) on {res['examples']:,} {split} examples")
    for col in cols:
        table.add_column(col, justify="right")
    table.add_row(*(f"{res[c]:.4f}" for c in cols))
    Console().print(table)
    click.echo(f"confusion matrix (rows: true {res['class_names']}): {res['confusion_matrix']}")


def _print_ranking(res: dict[str, Any], ks: tuple[int, ...], split: str) -> None:
    title = f"{res['tag']} on {res['users']:,} {split} users"
    if res.get("sampled_from"):
        title += f" (a sample of {res['sampled_from']:,})"
    if res["exclude_seen"]:
        title += " (seen items excluded)"
    if res.get("new_item_slots"):
        title += f" ({res['new_item_slots']} new-item slots)"
    table = Table(title=title)
    table.add_column("K")
    metrics = ("recall", "ndcg", "mrr", "coverage")
    for m in metrics:
        table.add_column(f"{m}@K", justify="right")
    for k in ks:
        cells = []
        for m in metrics:
            cell = f"{res[f'{m}@{k}']:.4f}"
            if f"{m}@{k}_ci95" in res:
                lo, hi = res[f"{m}@{k}_ci95"]
                cell += f" [{lo:.3f}, {hi:.3f}]"
            cells.append(cell)
        table.add_row(str(k), *cells)
    Console().print(table)


def record_train(ws: Any, run: Any) -> Any:
    """Run ``run()`` (returning a TrainOutcome) recorded as a 'train' run in the history."""
    from seqrec import runs

    run_id = runs.start_run(ws, "train")
    runs.begin_step(ws, run_id, "train")
    try:
        out = run()
    except BaseException as exc:
        runs.fail_run(ws, run_id, exc)
        raise
    runs.finish_run(
        ws,
        run_id,
        "succeeded",
        model=out.model,
        task=out.task,
        label=(out.data or {}).get("label"),
        preset=out.preset,
        seed=out.settings.get("seed"),
        config={"params": out.params, "settings": out.settings},
        candidate_tag=out.tag,
        vocab_after=(out.data or {}).get("items"),
        metric=out.settings.get("metric"),
        candidate_metrics=out.valid,
        details=out.to_dict(),
        **out.stats,
    )
    return out


def _worker_args(ctx: click.Context, project: Path) -> list[str]:
    """The ``seqrec train`` arguments each process of ``--nproc`` runs with: this invocation's
    options as given (paths absolute), ``--project`` the workspace root, ``--nproc`` left out."""
    args = ["train", "--project", str(project)]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name in ("project", "nproc"):
            continue
        flag = max(param.opts, key=len)  # the long form
        value = ctx.params.get(param.name or "")
        if param.is_flag:
            args += [flag] if value else []
            continue
        values: list[Any] = list(value or ()) if param.multiple else [value]
        for v in (v for v in values if v is not None):
            args += [flag, str(v.resolve() if isinstance(v, Path) else v)]
    return args


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, user_errors_exit, workspace

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
    @click.option("--epochs", type=click.IntRange(1), default=None)
    @click.option("--seed", type=int, default=None)
    @click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Hyperparameter.")
    @click.option(
        "--preset",
        help="Named configuration (plugin or workspace preset; `seqrec models --presets`). "
        "Default: the model's defaults, or the workspace preset 'default' if there is one.",
    )
    @click.option(
        "--init-from",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Warm start from a local checkpoint directory (no hub access).",
    )
    @click.option("--resume", is_flag=True, help="Continue the interrupted run (same settings).")
    @click.option(
        "--run-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Checkpoint directory (default: runs/<model>-<task>-seed<S>).",
    )
    @click.option(
        "--nproc",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="Train in this many processes on this machine (PyTorch DDP: gloo on CPU, nccl on "
        "CUDA). The effective batch stays batch_size; each process takes batch_size / N of it.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object: tag + metrics.")
    def train(
        project: Path | None,
        model_name: str | None,
        task: str,
        label: str | None,
        epochs: int | None,
        seed: int | None,
        params: tuple[str, ...],
        preset: str | None,
        init_from: Path | None,
        resume: bool,
        run_dir: Path | None,
        nproc: int,
        as_json: bool,
    ) -> None:
        """Train a model with the shared trainer and save it to the model store.

        With no options this trains the model's defaults: its best known configuration.
        Under torchrun (`torchrun ... -m seqrec train`) each process trains its rank (DDP)."""
        from seqrec.pipeline import train_model
        from seqrec.training import distributed

        ws = workspace(project)
        if nproc > 1:
            if distributed.launched():
                raise SeqrecError(
                    "--nproc inside a torchrun launch: the launcher already started the processes",
                    hint="drop --nproc (torchrun's --nproc-per-node sets the count)",
                )
            distributed.launch(
                nproc,
                _worker_args(click.get_current_context(), ws.root),
            )
            return

        def job() -> Any:
            return train_model(
                ws,
                model_name or ws.config.models.default,
                task=task,
                label=label,
                epochs=epochs,
                seed=seed,
                params=parse_params(params),
                preset=preset,
                init_from=init_from,
                resume=resume,
                run_dir=run_dir,
                progress=not as_json,
            )

        try:  # rank 0 (or the only process) records the run; the others only train
            out = record_train(ws, job) if distributed.is_main() else job()
        finally:
            distributed.shutdown()
        if not distributed.is_main():
            return
        if as_json:
            emit_json(
                {
                    "tag": out.tag,
                    **out.valid,
                    "task": out.task,
                    "best_epoch": out.best_epoch,
                    "epochs_run": out.epochs_run,
                    "seconds": out.seconds,
                    "seconds_per_epoch": out.seconds_per_epoch,
                    "resumed_from": out.resumed_from,
                    "preset": out.preset,
                }
            )
            return
        if out.toml_overrides:
            click.echo(
                f"note: seqrec.toml [train] sets {', '.join(out.toml_overrides)} over the "
                "model's preset (comment them out to train its tuned settings)",
                err=True,
            )
        keys = ("ndcg@10", "recall@10", "roc_auc", "f1")
        shown = "  ".join(f"{k} {v:.4f}" for k, v in out.valid.items() if k in keys)
        click.echo(
            f"saved {out.tag}: valid {shown} "
            f"(best epoch {out.best_epoch}/{out.epochs_run}, {out.seconds:.1f}s, "
            f"preset {out.preset})",
            err=True,
        )
        click.echo(out.tag)

    @cli.command()
    @project_option
    @click.argument("tag", required=False)
    @click.option("--k", "k_raw", default="10,20", show_default=True, help="Cut-offs, e.g. 10,20.")
    @click.option("--exclude-seen", is_flag=True, help="Never rank items the user already saw.")
    @click.option(
        "--split", type=click.Choice(["test", "valid"]), default="test", show_default=True
    )
    @click.option(
        "--dump-topk",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write JSONL {user_id, target, topk} lines so anyone can recompute the metrics.",
    )
    @click.option(
        "--new-item-slots",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="Of every top-k list, up to N places go to cold-start items (no training "
        "events), the best by the model's score, as `[serve] new_item_slots` serves them.",
    )
    @click.option(
        "--sample-users",
        type=click.IntRange(1),
        default=None,
        help="Evaluate a seeded random sample of N users (each still ranked over the whole "
        "catalogue): the metrics estimate the full split's, at a cost that does not grow "
        "with the number of users.",
    )
    @click.option("--json", "as_json", is_flag=True)
    def evaluate(
        project: Path | None,
        tag: str | None,
        k_raw: str,
        exclude_seen: bool,
        split: str,
        dump_topk: Path | None,
        new_item_slots: int,
        sample_users: int | None,
        as_json: bool,
    ) -> None:
        """Score a stored model (default: latest of the default model) on the held-out split.

        Next-item: Recall@K (= HR@K), NDCG@K, MRR@K and coverage@K by full ranking over all
        items, with bootstrap 95% intervals. Classification: accuracy, precision, recall, F1,
        ROC-AUC, PR-AUC (macro for multi-class) and the confusion matrix.
        """
        from seqrec.pipeline import evaluate_model

        ws = workspace(project)
        ks = parse_ks(k_raw)
        res = evaluate_model(
            ws,
            tag or ws.config.models.default,
            ks=ks,
            exclude_seen=exclude_seen,
            split=split,
            progress=not as_json,
            dump_topk=dump_topk,
            new_item_slots=new_item_slots,
            sample_users=sample_users,
        )
        if as_json:
            emit_json(res)
        elif res["task"] == "classify":
            _print_classification(res, split)
        else:
            _print_ranking(res, ks, split)

    @cli.command()
    @project_option
    @click.option(
        "--production",
        "production_label",
        default="stage=production",
        show_default=True,
        help="Label that marks the production model (moved to the candidate on promotion).",
    )
    @click.option("--model", "-m", "model_name", help="Only without a production model.")
    @click.option("--task", type=click.Choice(["next-item", "classify"]), default=None)
    @click.option("--label", help="For classify without a production model.")
    @click.option("--metric", help="Compared metric (default: ndcg@10, or roc_auc to classify).")
    @click.option(
        "--min-gain",
        type=float,
        default=0.0,
        show_default=True,
        help="Promote only if the candidate beats production by at least this much.",
    )
    @click.option("--epochs", type=click.IntRange(1), default=None)
    @click.option("--seed", type=int, default=None)
    @click.option("--no-promote", is_flag=True, help="Compare and report; change no labels.")
    @click.option("--no-materialize", is_flag=True, help="Skip the incremental materialization.")
    @click.option(
        "--wait",
        type=click.FloatRange(0),
        is_flag=False,
        flag_value=math.inf,
        default=None,
        metavar="[SECONDS]",
        help="When another retrain holds the workspace's lock, wait for it (at most SECONDS; "
        "alone: until it is free) instead of exiting 75.",
    )
    @click.option(
        "--drift-threshold",
        type=click.FloatRange(min=0, min_open=True),
        default=0.2,
        show_default=True,
        help="PSI above which a feature's drift is flagged (monitoring only; `seqrec report`).",
    )
    @click.option(
        "--min-intake-agreement",
        type=click.FloatRange(min=0),
        default=0.5,
        show_default=True,
        help="Refuse to promote when the item-to-item transitions of the events since "
        "production's training agree with the earlier ones less than this (about 1 for clean "
        "data, near 0 for shuffled or re-keyed ids); 0 = never refuse.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
    @user_errors_exit(EX_USAGE)
    def retrain(
        project: Path | None,
        production_label: str,
        model_name: str | None,
        task: str | None,
        label: str | None,
        metric: str | None,
        min_gain: float,
        epochs: int | None,
        seed: int | None,
        no_promote: bool,
        no_materialize: bool,
        wait: float | None,
        drift_threshold: float,
        min_intake_agreement: float,
        as_json: bool,
    ) -> None:
        """Refresh features, warm-start a candidate from production, compare both on the newest
        window, and promote it if it is better. The run is recorded (`seqrec runs`).

        \b
        Exit codes:
          0   the run completed, promoted or not (see "promoted" in the report)
          2   user or configuration error
          75  another retrain holds the workspace's lock (retry later, or --wait)
          1   the run failed
        """
        from seqrec.retrain import retrain as run

        ws = workspace(project)
        rep = run(
            ws,
            production_label=production_label,
            model_name=model_name,
            task=task,
            label=label,
            metric=metric,
            min_gain=min_gain,
            epochs=epochs,
            seed=seed,
            promote=not no_promote,
            materialize=not no_materialize,
            progress=not as_json,
            wait=wait,
            drift_threshold=drift_threshold,
            min_intake_agreement=min_intake_agreement,
        )
        if as_json:
            emit_json(rep.to_dict())
            return
        verdict = "PROMOTED" if rep.promoted else "kept production"
        click.echo(f"{verdict}: {rep.reason}")
        click.echo(f"candidate {rep.candidate}; production was {rep.production or 'none'}")
        click.echo(f"run {rep.run_id} (`seqrec runs show {rep.run_id}`)")
        click.echo(f"report: {rep.report_path} ({rep.seconds:.0f} s)")
        if rep.drift and rep.drift.get("flagged"):
            psi = ", ".join(
                f"{k} {v:.2f}" for k, v in rep.drift["psi"].items() if v > drift_threshold
            )
            click.echo(
                f"drift flagged (PSI > {drift_threshold:g}): {psi}; `seqrec report` shows it"
            )
