"""``seqrec events``: import and synthesize behaviour events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click


def _print_report(report: Any) -> None:
    click.echo(
        f"{report.source}: read {report.rows_read:,} rows, added {report.rows_added:,}, "
        f"duplicates {report.rows_duplicate:,}, skipped {report.rows_skipped:,} "
        f"in {report.seconds:.1f} s ({report.rows_per_second:,.0f} rows/s)"
    )
    if report.rows_skipped:
        shown = len(report.errors)
        click.echo(f"skipped rows (first {shown}):")
        for reason in report.errors:
            click.echo(f"  {reason}")


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def register(cli: click.Group) -> None:
    from seqrec.cli import project_option

    @cli.group()
    def events() -> None:
        """Load behaviour events into the SQL events table."""

    @events.command("import")
    @click.argument("file", type=click.Path(path_type=Path))
    @click.option(
        "--format",
        "fmt",
        type=click.Choice(["csv", "movielens", "recbole"]),
        default="csv",
        show_default=True,
        help="csv: header row; movielens: u.data; recbole: atomic .inter file.",
    )
    @click.option("--user-col", default="user_id", show_default=True, help="CSV user column.")
    @click.option("--item-col", default="item_id", show_default=True, help="CSV item column.")
    @click.option("--time-col", default="timestamp", show_default=True, help="CSV time column.")
    @click.option(
        "--type-col",
        default="event_type",
        show_default=True,
        help="CSV event type column (optional in the file).",
    )
    @click.option(
        "--value-col",
        default="value",
        show_default=True,
        help="CSV value column (optional in the file).",
    )
    @click.option(
        "--time-unit",
        type=click.Choice(["auto", "s", "ms", "iso"]),
        default="auto",
        show_default=True,
        help="CSV timestamps: epoch s, epoch ms, ISO-8601 (naive = UTC), or auto-detect.",
    )
    @click.option("--delimiter", default=",", show_default=True, help="CSV field delimiter.")
    @click.option(
        "--event-type",
        default=None,
        help="Event type for rows without one [default: view for csv, rating otherwise].",
    )
    @click.option(
        "--event-type-from",
        type=click.Choice(["rating", "liked"]),
        default=None,
        help="Name each event by its value (a rating): rating: r1..r5; "
        "liked: liked (4 and up) / disliked.",
    )
    @click.option(
        "--on-error",
        type=click.Choice(["fail", "skip"]),
        default="fail",
        show_default=True,
        help="fail: a bad row aborts the import, nothing is written; skip: leave bad rows out.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @project_option
    def import_cmd(
        file: Path,
        fmt: str,
        user_col: str,
        item_col: str,
        time_col: str,
        type_col: str,
        value_col: str,
        time_unit: str,
        delimiter: str,
        event_type: str | None,
        event_type_from: str | None,
        on_error: str,
        as_json: bool,
        project: Path | None,
    ) -> None:
        """Import FILE into the events database (one transaction; re-importing adds nothing)."""
        from seqrec.cli import emit_json, workspace
        from seqrec.data.importers import CsvColumns, import_file

        ws = workspace(project)
        if delimiter in ("\\t", "tab", "TAB"):
            delimiter = "\t"
        engine = ws.engine
        report = import_file(
            engine,
            file,
            fmt,  # type: ignore[arg-type]
            columns=CsvColumns(user_col, item_col, time_col, type_col, value_col),
            time_unit=time_unit,  # type: ignore[arg-type]
            delimiter=delimiter,
            default_event_type=event_type,
            on_error=on_error,  # type: ignore[arg-type]
            event_type_from=event_type_from,  # type: ignore[arg-type]
            batch_size=ws.config.events.batch_size,
            progress=not as_json,
        )
        if as_json:
            emit_json(report.to_dict())
        else:
            _print_report(report)

    @events.command("synth")
    @click.option("--users", type=click.IntRange(min=1), required=True, help="Number of users.")
    @click.option("--items", type=click.IntRange(min=2), required=True, help="Number of items.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
    @click.option(
        "--kind",
        type=click.Choice(["default", "markov-clusters"]),
        default="default",
        show_default=True,
        help="default: categories, drifting interests, sessions, a purchase funnel; "
        "markov-clusters: an item chain mixed with per-user interest clusters (views only).",
    )
    @click.option(
        "--random-event-types",
        is_flag=True,
        help="Control for classification: draw every event's type independently of everything "
        "(next-event-type labels become pure noise).",
    )
    @click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write a CSV file instead of importing into the events database.",
    )
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @project_option
    def synth_cmd(
        users: int,
        items: int,
        seed: int,
        kind: str,
        random_event_types: bool,
        out: Path | None,
        as_json: bool,
        project: Path | None,
    ) -> None:
        """Generate a synthetic event log with sequential structure (deterministic per seed)."""
        from seqrec.cli import emit_json
        from seqrec.data import synth

        if out is not None:
            import time

            t0 = time.perf_counter()
            n = synth.write_csv(
                out, users, items, seed, kind=kind, random_event_types=random_event_types
            )
            info = {"out": str(out), "rows": n, "seconds": round(time.perf_counter() - t0, 3)}
            if as_json:
                emit_json(info)
            else:
                click.echo(f"wrote {n:,} events to {out} in {info['seconds']:.1f} s")
            return

        from seqrec.cli import workspace

        ws = workspace(project)
        engine = ws.engine
        report = synth.import_synth(
            engine,
            users,
            items,
            seed,
            batch_size=ws.config.events.batch_size,
            progress=not as_json,
            kind=kind,
            random_event_types=random_event_types,
        )
        if as_json:
            emit_json(report.to_dict())
        else:
            _print_report(report)

    @events.command("stats")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
    @project_option
    def stats_cmd(as_json: bool, project: Path | None) -> None:
        """Users, items, event types, events and time range in the events database."""
        from sqlalchemy import func, make_url, select

        from seqrec.cli import emit_json, workspace
        from seqrec.data.schema import event_types, events, require_schema

        ws = workspace(project)
        engine = ws.engine
        require_schema(engine)
        with engine.connect() as conn:
            n_events, n_users, n_items, lo, hi = conn.execute(
                select(
                    func.count(),
                    func.count(events.c.user_id.distinct()),
                    func.count(events.c.item_idx.distinct()),
                    func.min(events.c.ts_ms),
                    func.max(events.c.ts_ms),
                )
            ).one()
            by_type = conn.execute(
                select(event_types.c.name, func.count(events.c.event_id))
                .select_from(
                    event_types.outerjoin(events, events.c.type_idx == event_types.c.type_idx)
                )
                .group_by(event_types.c.type_idx, event_types.c.name)
                .order_by(event_types.c.type_idx)
            ).all()
        type_counts = {name: int(c) for name, c in by_type}
        stats: dict[str, Any] = {
            "events_url": make_url(ws.events_url).render_as_string(hide_password=True),
            "events": int(n_events),
            "users": int(n_users),
            "items": int(n_items),
            "event_types": type_counts,
            "first_event": _iso(lo),
            "last_event": _iso(hi),
        }
        if as_json:
            emit_json(stats)
            return
        click.echo(f"events:  {stats['events']:,}")
        click.echo(f"users:   {stats['users']:,}")
        click.echo(f"items:   {stats['items']:,}")
        for name, c in type_counts.items():
            click.echo(f"  {name}: {c:,}")
        click.echo(f"from {stats['first_event']} to {stats['last_event']}")
