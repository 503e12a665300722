"""How far any model can get on seqrec's default synthetic log: the generator's own scorer.

The default log (:mod:`seqrec.data.synth`) draws each next view from a known distribution:
with probability ``P_SUCCESSOR`` one of the previous view's ``N_SUCCESSORS`` successors
(uniformly), otherwise an item of the user's interest category by popularity, and the interest
is the previous view's category unless it drifted at a session start. Ranking every item by
that probability, given the newest item, is close to the best any model can do (it does not
know the rare drifts). This script scores the test split of ``bench/synthetic_nextitem.py``
that way, with the same protocol (leave-one-out, full ranking, items already in the user's
history excluded, ties counted against), and trains ``markov`` on it for comparison.

It also counts the test targets no model can rank, because they are items the user already has
in their history (a cart or purchase of the viewed item, a second view) and the protocol
excludes those.

    python bench/synthetic_ceiling.py

It takes seconds (markov's fit included). Writes bench/results/synthetic_ceiling.json and the
section of docs/benchmarks.md after the synthetic benchmark's.
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any

import numpy as np
import report
import synthetic_nextitem as bench
import torch

NAME = "synthetic_ceiling"
KIND = "default"
KS = (10,)


def generator_scores(ws: Any, test: Any, items: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, V] the generator's probability of each item after each test sequence's newest item,
    and [B] whether each target is one of the newest item's successors."""
    from seqrec.data.synth import N_SUCCESSORS, P_SUCCESSOR, catalog
    from seqrec.model_store import read_vocab

    vocab, _ = read_vocab(ws.engine)
    index = {iid: i for i, iid in enumerate(vocab)}
    cat = catalog(items, bench.DATA_SEED)
    to_vocab = np.array([index.get(f"i{k + 1:05d}", 0) for k in range(items)])
    within = np.zeros(items)  # popularity within the item's category
    for members in cat.cat_items:
        p = cat.popularity[members]
        within[members] = p / p.sum()
    newest = np.array([int(vocab[i][1:]) - 1 for i in test.items[:, -1]])
    scores = np.zeros((len(test), len(vocab)))
    for r, k in enumerate(newest):
        members = np.array(cat.cat_items[cat.category[k]])
        scores[r, to_vocab[members]] += (1 - P_SUCCESSOR) * within[members]
        scores[r, to_vocab[cat.successors[k]]] += P_SUCCESSOR / N_SUCCESSORS
    # ties (items outside the category) broken by a fixed random draw
    scores += 1e-9 * np.random.default_rng(0).random(scores.shape)
    is_successor = np.array(
        [t in to_vocab[cat.successors[k]] for t, k in zip(test.labels, newest, strict=True)]
    )
    return scores, is_successor


def main() -> None:
    from seqrec.config import load_workspace
    from seqrec.evaluation.metrics import mask_scores, ranking_metrics, target_ranks
    from seqrec.pipeline import evaluate_model, seen_items, train_model

    torch.set_num_threads(2)
    facts = bench.prepare(KIND, **bench.SIZES)
    root = bench.workspace_dir(KIND, **bench.SIZES)
    ws = load_workspace(root)
    data = pickle.loads((root / "data.pkl").read_bytes())
    test = data.test
    scores, is_successor = generator_scores(ws, test, bench.SIZES["items"])
    seen = seen_items(ws, test, scores.shape[1], 0)(np.arange(len(test)))
    exclude = torch.zeros(scores.shape, dtype=torch.bool).scatter_(1, seen, True)
    exclude[:, 0] = False
    targets = torch.from_numpy(test.labels)
    unreachable = exclude.gather(1, targets[:, None]).squeeze(1).numpy()
    ranks = target_ranks(mask_scores(torch.from_numpy(scores), exclude), targets).numpy()
    ceiling = ranking_metrics(ranks, KS)
    by_group = {
        "successor": ranking_metrics(ranks[is_successor], KS)["ndcg@10"],
        "other": ranking_metrics(ranks[~is_successor], KS)["ndcg@10"],
    }
    markov = train_model(ws, "markov", data=data, progress=False)
    markov_test = evaluate_model(
        ws, markov.tag, ks=KS, exclude_seen=True, data=data, progress=False
    )
    previous = report.RESULTS / f"{bench.NAME}.json"
    gpt2 = None
    if previous.exists():  # the synthetic benchmark's default gpt2, for the table
        summary = json.loads(previous.read_text())["summary"]
        gpt2 = next((r for r in summary if r["kind"] == KIND and r["model"] == "gpt2"), None)
    payload = {
        "machine": report.machine(),
        "log": KIND,
        "items": bench.SIZES["items"],
        "dataset": facts,
        "test_users": len(test),
        "ceiling": ceiling,
        "ceiling_ndcg@10_by_target": by_group,
        "share_successor_targets": float(is_successor.mean()),
        "share_unreachable_targets": float(unreachable.mean()),
        "markov": {k: markov_test[k] for k in ("ndcg@10", "recall@10", "mrr@10")},
        "gpt2_from_synthetic_nextitem": gpt2,
    }
    report.save_json(NAME, payload)
    report.write_section(NAME, page(payload))
    print(page(payload))


def page(p: dict[str, Any]) -> str:
    c, m, g = p["ceiling"], p["markov"], p["gpt2_from_synthetic_nextitem"]
    rows = [
        ["the generator's scorer", f"{c['ndcg@10']:.4f}", f"{c['recall@10']:.4f}", "1.000"],
        [
            "markov",
            f"{m['ndcg@10']:.4f}",
            f"{m['recall@10']:.4f}",
            f"{m['ndcg@10'] / c['ndcg@10']:.3f}",
        ],
    ]
    if g:
        rows.append(
            [
                f"gpt2, defaults ({g['seeds']} seed{'s' if g['seeds'] > 1 else ''}, "
                "`bench/synthetic_nextitem.py`)",
                f"{g['ndcg@10']:.4f}",
                f"{g['recall@10']:.4f}",
                f"{g['ndcg@10'] / c['ndcg@10']:.3f}",
            ]
        )
    by = p["ceiling_ndcg@10_by_target"]
    per_item = p["dataset"]["train_positions"] / p["items"]
    return "\n".join(
        [
            f"### How far a model can get on the default log (`bench/{NAME}.py`)",
            "",
            report.machine_line(p["machine"]),
            "",
            "The default log draws each next view from a known distribution: one of the previous "
            "view's 3 successors (probability 0.6, uniformly), else an item of the user's "
            "interest category by popularity. The generator's scorer ranks every item by that "
            "probability given the newest item (it does not see the rare interest drifts), on "
            "the same test split and protocol as `bench/synthetic_nextitem.py` (items already in the "
            "history excluded, ties against).",
            "",
            report.table(["scorer", "NDCG@10", "Recall@10", "of the generator's"], rows),
            "",
            f"- {p['share_unreachable_targets']:.1%} of the {p['test_users']:,} test targets are "
            "items already in the user's history (a cart or purchase of the viewed item, a "
            "second view): the protocol excludes them, so no scorer ranks them.",
            f"- {p['share_successor_targets']:.1%} of the targets are a successor of the newest "
            f"item; the generator's scorer gets NDCG@10 {by['successor']:.4f} on those and "
            f"{by['other']:.4f} on the rest.",
            f"- markov counts the successor table from about {per_item:.0f} training "
            "transitions per item and gets "
            f"within {1 - m['ndcg@10'] / c['ndcg@10']:.1%} of the generator's scorer: beating it "
            "leaves a model that margin.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
