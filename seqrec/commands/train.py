"""``seqrec train`` and ``seqrec evaluate``."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from seqrec.errors import SeqrecError


def parse_ks(raw: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(k) for k in raw.split(",") if k.strip()}))
    except ValueError:
        raise SeqrecError(f"--k must be comma-separated integers, got {raw!r}") from None
    if not ks or min(ks) < 1:
        raise SeqrecError(f"--k values must be >= 1, got {raw!r}")
    return ks


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.command()
    @project_option
    @click.option(
        "--model",
        "-m",
        "model_name",
        default=None,
        help="Registered model name (see `seqrec models`).",
    )
    @click.option("--epochs", type=click.IntRange(1), default=None)
    @click.option("--seed", type=int, default=None)
    @click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print one JSON object with the tag and validation metrics.",
    )
    def train(
        project: Path | None,
        model_name: str | None,
        epochs: int | None,
        seed: int | None,
        as_json: bool,
    ) -> None:
        """Train a model on the leave-one-out split and save it to the model store."""
        from seqrec.pipeline import train_model

        ws = workspace(project)
        out = train_model(
            ws,
            model_name or ws.config.models.default,
            epochs=epochs,
            seed=seed,
            progress=not as_json,
        )
        if as_json:
            emit_json(
                {
                    "tag": out.tag,
                    **out.valid,
                    "best_epoch": out.best_epoch,
                    "epochs_run": out.epochs_run,
                    "seconds": out.seconds,
                    "seconds_per_epoch": out.seconds_per_epoch,
                }
            )
            return
        v = out.valid
        click.echo(
            f"saved {out.tag}: valid ndcg@10 {v.get('ndcg@10', 0):.4f} recall@10 "
            f"{v.get('recall@10', 0):.4f} (best epoch {out.best_epoch}/{out.epochs_run}, {out.seconds:.1f}s)"
        )
        click.echo(out.tag)

    @cli.command()
    @project_option
    @click.argument("tag", required=False)
    @click.option(
        "--k", "k_raw", default="10,20", show_default=True, help="Cut-offs, comma-separated."
    )
    @click.option(
        "--exclude-seen", is_flag=True, help="Never rank items the user already interacted with."
    )
    @click.option(
        "--split", type=click.Choice(["test", "valid"]), default="test", show_default=True
    )
    @click.option("--json", "as_json", is_flag=True)
    def evaluate(
        project: Path | None,
        tag: str | None,
        k_raw: str,
        exclude_seen: bool,
        split: str,
        as_json: bool,
    ) -> None:
        """Full-ranking Recall@K (= HR@K), NDCG@K, MRR@K of a stored model (default: latest of the default model)."""
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
        )
        if as_json:
            emit_json(res)
            return
        table = Table(
            title=f"{res['tag']} on {res['users']:,} {split} users"
            + (" (seen items excluded)" if exclude_seen else "")
        )
        table.add_column("K")
        for m in ("recall", "ndcg", "mrr"):
            table.add_column(f"{m}@K", justify="right")
        for k in ks:
            table.add_row(str(k), *(f"{res[f'{m}@{k}']:.4f}" for m in ("recall", "ndcg", "mrr")))
        Console().print(table)
