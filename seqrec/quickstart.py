"""``seqrec quickstart``: the whole pipeline on synthetic data, with a summary at the end.

synth -> import -> features apply -> materialize -> train gpt2 and popularity -> evaluate both
-> recommendations for one user through the service logic -> summary table.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from seqrec.errors import SeqrecError

MARKER = ".seqrec-quickstart"


def _fresh_dir(path: Path) -> None:
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise SeqrecError(
                f"{path} exists and was not made by quickstart; refusing to overwrite it",
                hint="pass --project to an empty or new directory",
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("created by `seqrec quickstart`; safe to delete\n")


def run_quickstart(
    directory: Path,
    *,
    users: int = 2000,
    items: int = 1000,
    epochs: int | None = None,
    seed: int = 7,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every step in a fresh workspace at ``directory``; returns the summary."""
    import os

    from seqrec.config import load_workspace
    from seqrec.workspace_init import init_workspace

    console = console or Console(stderr=False)
    t_all = time.perf_counter()
    steps: list[tuple[str, float, str]] = []
    directory = directory.resolve()
    _fresh_dir(directory)
    init_workspace(directory, force=True)
    ws = load_workspace(directory)
    os.environ["BENTOML_HOME"] = str(ws.model_store)
    os.environ["SEQREC_PROJECT"] = str(ws.root)

    def step(name: str) -> Any:
        console.rule(f"[bold]{name}")
        return time.perf_counter()

    from seqrec.data.synth import import_synth

    t = step("1. synthesize and import events")
    engine = ws.engine
    report = import_synth(engine, users, items, seed, progress=True)
    steps.append(("import events", time.perf_counter() - t, f"{report.rows_added:,} events"))

    from seqrec.features.materialize import materialize
    from seqrec.features.repo import apply
    from seqrec.features.snapshots import build_snapshot

    t = step("2. features: build in SQL, apply to Feast, materialize online")
    info = build_snapshot(ws, engine)
    apply(ws)
    mat = materialize(ws, engine=engine)
    steps.append(
        (
            "features",
            time.perf_counter() - t,
            f"{info.rows:,} rows, {mat.users_written:,} users online",
        )
    )

    from seqrec.pipeline import evaluate_model, train_model
    from seqrec.training.data import build_next_item_data

    t = step("3. training set from Feast (point in time, leave-one-out)")
    data = build_next_item_data(ws, engine)
    summary = data.summary()
    steps.append(
        (
            "training set",
            time.perf_counter() - t,
            f"{summary['train_positions']:,} train positions, {summary['test_users']:,} test users",
        )
    )

    results: dict[str, dict[str, Any]] = {}
    for name, n_epochs in (("popularity", 1), ("gpt2", epochs or 15)):
        t = step(f"4. train {name}")
        out = train_model(ws, name, epochs=n_epochs, seed=seed, data=data)
        metrics = evaluate_model(ws, out.tag, ks=(10, 20), data=data, progress=True)
        results[name] = {"tag": out.tag, "train": out, "test": metrics}
        steps.append(
            (
                f"train+evaluate {name}",
                time.perf_counter() - t,
                f"{out.tag} (best epoch {out.best_epoch})",
            )
        )

    from seqrec.recommend import Recommender

    t = step("5. recommend through the service logic (online features)")
    rec = Recommender(ws, results["gpt2"]["tag"])
    user = str(data.test.user_ids[0])
    answer = rec.recommend(user, k=5)
    cold = rec.recommend("no-such-user", k=5)
    steps.append(
        ("recommend", time.perf_counter() - t, f"user {user}: {len(answer['items'])} items")
    )

    table = Table(title="test metrics (leave-one-out, full ranking over all items)")
    table.add_column("model")
    for col in ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(
            name,
            *(
                f"{r['test'][c]:.4f}"
                for c in ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "recall@20")
            ),
        )
    console.print(table)

    recs = Table(title=f"top-5 for user {user} ({rec.tag}, fallback={answer['fallback']})")
    recs.add_column("rank", justify="right")
    recs.add_column("item_id")
    recs.add_column("score", justify="right")
    for i, item in enumerate(answer["items"], 1):
        recs.add_row(str(i), item["item_id"], f"{item['score']:.3f}")
    console.print(recs)
    console.print(
        f"unknown user -> fallback={cold['fallback']}, items {[i['item_id'] for i in cold['items']]}"
    )

    timing = Table(title="steps")
    timing.add_column("step")
    timing.add_column("seconds", justify="right")
    timing.add_column("result")
    for name, secs, what in steps:
        timing.add_row(name, f"{secs:.1f}", what)
    total = time.perf_counter() - t_all
    timing.add_row("[bold]total", f"[bold]{total:.1f}", "")
    console.print(timing)
    gain = results["gpt2"]["test"]["ndcg@10"] / max(results["popularity"]["test"]["ndcg@10"], 1e-9)
    console.print(
        f"gpt2 NDCG@10 is {gain:.1f}x popularity's. Workspace: {directory}\n"
        f"next: `seqrec serve --project {directory}` then "
        f"`curl -X POST localhost:3000/recommend -H 'content-type: application/json' "
        f'-d \'{{"user_id": "{user}", "k": 5}}\'`'
    )
    return {
        "results": {n: r["test"] for n, r in results.items()},
        "recommendation": answer,
        "cold_start": cold,
        "seconds": total,
        "user": user,
    }
