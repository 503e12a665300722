"""``seqrec items``: import item text, embed it, look at it."""

from __future__ import annotations

import json
from pathlib import Path

import click


def register(cli: click.Group) -> None:
    from seqrec.cli import emit_json, project_option, workspace

    @cli.group()
    def items() -> None:
        """Item text (title, description, category) and its embeddings."""

    @items.command("import")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["csv", "recbole"]),
        default="csv",
        show_default=True,
        help="csv: header item_id,title[,description][,category][,...]; recbole: .item file.",
    )
    @click.option(
        "--on-error",
        type=click.Choice(["fail", "skip"]),
        default="fail",
        show_default=True,
        help="fail: a bad row aborts and nothing is written; skip: count and leave it out.",
    )
    @click.option("--delimiter", default=",", show_default=True, help="CSV field delimiter.")
    @project_option
    @click.option("--json", "as_json", is_flag=True)
    def import_(
        file: Path, fmt: str, on_error: str, delimiter: str, project: Path | None, as_json: bool
    ) -> None:
        """Import item text; new items get a vocabulary index (idempotent, one transaction)."""
        from seqrec.data.item_text import import_item_file

        ws = workspace(project)
        report = import_item_file(
            ws.engine,
            file,
            fmt,  # type: ignore[arg-type]
            on_error=on_error,  # type: ignore[arg-type]
            delimiter=delimiter,
        )
        if as_json:
            emit_json(report.to_dict())
            return
        click.echo(
            f"{report.source}: read {report.rows_read:,} rows, added {report.added:,}, "
            f"updated {report.updated:,}, unchanged {report.unchanged:,}, "
            f"skipped {report.skipped:,}; {report.new_in_vocabulary:,} new in the vocabulary"
        )
        if report.skipped:
            click.echo(f"skipped rows (first {len(report.errors)}):")
            for reason in report.errors:
                click.echo(f"  {reason}")

    @items.command()
    @click.option(
        "--checkpoint",
        type=click.Path(path_type=Path),
        default=None,
        help="Local Hugging Face checkpoint directory [default: [text] checkpoint, else the "
        "packaged all-MiniLM-L6-v2].",
    )
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, mps.")
    @project_option
    @click.option("--json", "as_json", is_flag=True)
    def embed(checkpoint: Path | None, device: str, project: Path | None, as_json: bool) -> None:
        """Encode item text whose embedding is not cached yet (new or changed text, new encoder)."""
        from seqrec.text.embed import embed_items

        report = embed_items(
            workspace(project), checkpoint=checkpoint, device=device, progress=not as_json
        )
        if as_json:
            emit_json(report.to_dict())
        else:
            click.echo(
                f"{report.items:,} items: encoded {report.encoded:,}, cached {report.cached:,} "
                f"({report.encoder}, dim {report.dim}) in {report.seconds:.1f} s"
            )

    @items.command()
    @click.argument("item_id")
    @project_option
    def show(item_id: str, project: Path | None) -> None:
        """One item's text, vocabulary index and embeddings."""
        from sqlalchemy import select

        from seqrec.data.schema import (
            create_schema,
            item_embeddings,
            item_meta,
        )
        from seqrec.data.schema import items as items_table
        from seqrec.errors import SeqrecError

        ws = workspace(project)
        engine = ws.engine
        create_schema(engine)
        with engine.connect() as conn:
            meta = conn.execute(select(item_meta).where(item_meta.c.item_id == item_id)).first()
            idx = conn.execute(
                select(items_table.c.item_idx).where(items_table.c.item_id == item_id)
            ).scalar()
            embs = conn.execute(
                select(item_embeddings.c.encoder, item_embeddings.c.text_hash).where(
                    item_embeddings.c.item_id == item_id
                )
            ).all()
        if meta is None and idx is None:
            raise SeqrecError(f"no item {item_id!r}")
        out = {
            "item_id": item_id,
            "item_idx": idx,
            **(
                {
                    "title": meta.title,
                    "description": meta.description,
                    "category": meta.category,
                    "attributes": json.loads(meta.attributes) if meta.attributes else {},
                    "text_hash": meta.text_hash,
                    "updated_at": meta.updated_at,
                }
                if meta is not None
                else {"title": None}
            ),
            "embeddings": [
                {"encoder": e, "current": meta is not None and h == meta.text_hash} for e, h in embs
            ],
        }
        emit_json(out)
