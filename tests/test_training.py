"""The shared trainer: resume after SIGKILL, classification labels, metrics, evaluation outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sqlalchemy import insert

from seqrec.config import Workspace
from seqrec.data.schema import create_schema, event_types, events, items, make_engine
from seqrec.errors import SeqrecError
from seqrec.evaluation.classification import best_threshold, classification_metrics
from seqrec.features.repo import apply
from seqrec.models import ModelContext, get_spec, sampled_softmax_loss
from seqrec.pipeline import bootstrap_ci, evaluate_model, train_model
from seqrec.testing import load_synth
from seqrec.training.labels import labels_at, parse_label
from seqrec.training.trainer import CHECKPOINT_DIR, STATE_FILE

DAY = 86_400_000


def _seqrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "seqrec.cli", *args]


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(ws: Workspace) -> None:
    load_synth(ws, users=80, items=40)
    apply(ws)
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # same model store as this process
    common = ["train", "--model", "gpt2", "--epochs", "6", "--seed", "5", "--json"]
    common += ["--project", str(ws.root)]
    run_a = ws.root / "run-a"
    proc = subprocess.Popen(
        _seqrec(*common, "--run-dir", str(run_a)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (run_a / CHECKPOINT_DIR / STATE_FILE).exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    state = torch.load(run_a / CHECKPOINT_DIR / STATE_FILE, weights_only=True)
    assert state["epoch"] < 6  # really interrupted
    resumed = subprocess.run(
        _seqrec(*common, "--run-dir", str(run_a), "--resume"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    fresh = subprocess.run(
        _seqrec(*common, "--run-dir", str(ws.root / "run-b")),
        env=env,
        capture_output=True,
        text=True,
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    a, b = json.loads(resumed.stdout), json.loads(fresh.stdout)
    assert a["resumed_from"] >= 1 and b["resumed_from"] == 0
    for key in ("ndcg@10", "recall@10", "mrr@10", "ndcg@20", "best_epoch", "epochs_run"):
        assert a[key] == b[key], key
    # the stored models score identically
    ea = evaluate_model(ws, a["tag"], progress=False, ci=False)
    eb = evaluate_model(ws, b["tag"], progress=False, ci=False)
    assert ea["ndcg@10"] == eb["ndcg@10"] and ea["recall@20"] == eb["recall@20"]


def _load_events(ws: Workspace, rows: list[tuple[str, int, int, str]]) -> None:
    engine = make_engine(ws.events_url)
    create_schema(engine)
    names = ["view", "cart", "purchase"]
    with engine.begin() as c:
        c.execute(insert(items), [{"item_idx": i, "item_id": f"i{i}"} for i in range(1, 10)])
        c.execute(
            insert(event_types), [{"type_idx": i + 1, "name": n} for i, n in enumerate(names)]
        )
        c.execute(
            insert(events),
            [
                {"user_id": u, "item_idx": i, "type_idx": names.index(t) + 1, "ts_ms": ts}
                for u, i, ts, t in rows
            ],
        )


def test_labels_at_cutoff_use_only_the_horizon(ws: Workspace) -> None:
    t = 100 * DAY
    _load_events(
        ws,
        [
            ("buyer", 1, t - DAY, "view"),
            ("buyer", 1, t + DAY, "purchase"),  # inside 7d
            ("late", 2, t - 2 * DAY, "view"),
            ("late", 2, t + 8 * DAY, "purchase"),  # after the horizon
            ("gone", 3, t - 3 * DAY, "cart"),  # no event after t
            ("old", 4, t - 30 * DAY, "view"),  # not active in the week before t
            ("old", 4, t + DAY, "purchase"),
            ("edge", 5, t - 1, "view"),
            ("edge", 5, t, "cart"),  # exactly at t: after the cutoff, first next event
        ],
    )
    engine = make_engine(ws.events_url)
    buy = labels_at(engine, parse_label("purchase-within:7d"), t).set_index("user_id")["label"]
    assert buy.to_dict() == {"buyer": 1, "late": 0, "gone": 0, "edge": 0}
    churn = labels_at(engine, parse_label("churn:7d"), t).set_index("user_id")["label"]
    assert churn.to_dict() == {"buyer": 0, "late": 1, "gone": 1, "edge": 0}
    nxt = labels_at(engine, parse_label("next-event-type:7d"), t).set_index("user_id")["label"]
    assert nxt.to_dict() == {"buyer": 2, "edge": 1}  # purchase, cart (class = type index - 1)


def test_parse_label_errors() -> None:
    assert parse_label("churn:30d").horizon_s == 30 * 86400
    assert parse_label("next-event-type").horizon_s == 7 * 86400
    for bad in ("churn", "purchase-within:0d", "purchase-within:7x", "clicks:7d"):
        with pytest.raises(SeqrecError):
            parse_label(bad)


def test_classification_end_to_end_features_strictly_before_cutoff(ws: Workspace) -> None:
    load_synth(ws, users=150, items=40)
    apply(ws)
    out = train_model(
        ws, "gpt2", task="classify", label="purchase-within:7d", epochs=2, progress=False
    )
    assert out.task == "classify" and set(out.valid) >= {"roc_auc", "f1"}
    res = evaluate_model(ws, out.tag, progress=False)
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc"):
        assert 0.0 <= res[key] <= 1.0, key
    cm = np.array(res["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == res["examples"]


def test_classification_examples_carry_their_cutoff_as_now(ws: Workspace) -> None:
    """``now`` is each example's cutoff (epoch seconds), after every event it sees, and it
    reaches the model's batches."""
    from seqrec.data.schema import make_engine
    from seqrec.training.data import build_classification_data, iter_batches
    from seqrec.training.labels import cutoffs, parse_label

    load_synth(ws, users=150, items=40)
    apply(ws)
    label = "churn:7d"
    data = build_classification_data(ws, label)
    expected = cutoffs(make_engine(ws.events_url), parse_label(label))
    for split in ("train", "valid", "test"):
        part = getattr(data, split)
        assert part.now is not None
        assert set(part.now.tolist()) <= {t // 1000 for t in expected[split]}
        assert (part.times.max(axis=1) <= part.now).all()
    batch = next(iter_batches(data.test.tensors(with_targets=False), 8))
    assert batch.now is not None and batch.now.tolist() == data.test.now[:8].tolist()


def test_classification_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, threshold=0.5)
    pred = (p1 >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["recall"] == pytest.approx(recall_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p1))
    t = best_threshold(y, p1)
    assert f1_score(y, (p1 >= t).astype(int)) >= f1_score(y, pred)

    y3 = rng.integers(0, 3, 300)
    logits = rng.random((300, 3)) + np.eye(3)[y3] * 0.5
    probs3 = logits / logits.sum(1, keepdims=True)
    m3 = classification_metrics(y3, probs3)
    pred3 = probs3.argmax(1)
    assert m3["f1"] == pytest.approx(f1_score(y3, pred3, average="macro"))
    assert m3["precision"] == pytest.approx(precision_score(y3, pred3, average="macro"))
    assert m3["roc_auc"] == pytest.approx(
        roc_auc_score(y3, probs3, multi_class="ovr", average="macro")
    )
    assert np.array(m3["confusion_matrix"]).trace() == (pred3 == y3).sum()


def test_sampled_softmax_trains_with_bounded_memory() -> None:
    torch.manual_seed(0)
    h = torch.randn(64, 16, requires_grad=True)
    emb = torch.randn(5000, 16, requires_grad=True)
    targets = torch.randint(1, 5000, (64,))
    opt = torch.optim.Adam([h, emb], lr=0.05)
    first = None
    for _ in range(40):
        loss = sampled_softmax_loss(h, targets, emb, None, num_negatives=128)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.5 * first
    # and the option reaches models through the platform's hyperparameters
    spec = get_spec("gpt2")
    model = spec.make(ModelContext(30, 3, 8, params={"loss": "sampled", "num_negatives": 8}))
    assert model.ctx.params["loss"] == "sampled"


def test_bootstrap_ci_brackets_the_mean() -> None:
    values = np.random.default_rng(1).random(500)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.1


def test_dump_topk_recomputes_the_metrics(trained_ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "top.jsonl"
    res = evaluate_model(trained_ws, "gpt2", ks=(5, 10), dump_topk=path, progress=False)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == res["users"] and all(len(x["topk"]) == 10 for x in lines)
    hr5 = np.mean([x["target"] in x["topk"][:5] for x in lines])
    assert hr5 == pytest.approx(res["recall@5"])
    assert 0 < res["coverage@10"] <= 1
    lo, hi = res["ndcg@10_ci95"]
    assert lo <= res["ndcg@10"] <= hi


def test_init_from_warm_starts(trained_ws: Workspace) -> None:
    from seqrec import model_store

    _, path = model_store.locate("gpt2", trained_ws.model_store)
    out = train_model(trained_ws, "gpt2", epochs=1, init_from=path, progress=False, seed=9)
    cold = train_model(trained_ws, "gpt2", epochs=1, progress=False, seed=9)
    assert out.valid["ndcg@10"] != cold.valid["ndcg@10"]
    with pytest.raises(SeqrecError):
        train_model(trained_ws, "gpt2", epochs=1, init_from=trained_ws.root, progress=False)


def test_repeat_bias_is_learned_and_offsets_history_items() -> None:
    """The learned repeat bias starts at 0, shifts only history items' scores, matches between
    the full and sampled softmax, and learns to push seen items down where nothing repeats."""
    from seqrec.models import ModelContext, get_spec, newest_distance, prefix_history
    from seqrec.testing import random_batch

    torch.manual_seed(0)
    ctx = ModelContext(n_items=30, n_event_types=3, max_len=8, params={"repeat_bias": True})
    model = get_spec("lstm").make(ctx).eval()
    assert model.repeat_bias is not None and not model.repeat_bias.any()
    batch = random_batch(ctx)
    with torch.no_grad():
        before = model.score(batch)
        model.repeat_bias.fill_(-3.0)
        after = model.score(batch)
    seen = torch.zeros_like(before, dtype=torch.bool).scatter_(1, batch.items, True)
    seen[:, 0] = False
    assert torch.allclose((after - before)[seen], torch.tensor(-3.0))
    assert torch.equal(after[~seen], before[~seen])
    # prefix history: position t sees items[:t + 1], distance t - j
    hist, dist = prefix_history(batch.items)
    assert torch.equal(hist[:, -1], batch.items) and (hist[:, 0, 1:] == 0).all()
    assert dist[0, 3, 1].item() == 2 and newest_distance(batch.items)[0, -1].item() == 0
    # untrained, then trained on sequences that never repeat an item: the bias goes negative
    model.repeat_bias.data.zero_()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert (model.repeat_bias[:3] < 0).all(), model.repeat_bias


def test_repeat_bias_in_sampled_softmax_matches_full_softmax_offsets() -> None:
    from seqrec.models import sampled_softmax_loss

    torch.manual_seed(0)
    hidden, emb = torch.randn(4, 8), torch.randn(10, 8)
    targets = torch.tensor([1, 2, 3, 4])
    hist = torch.stack([targets, torch.zeros_like(targets)], 1)  # each row saw its own target
    vals = torch.full(hist.shape, -2.0) * (hist > 0)
    torch.manual_seed(1)
    plain = sampled_softmax_loss(hidden, targets, emb, None, 64)
    torch.manual_seed(1)
    biased = sampled_softmax_loss(hidden, targets, emb, None, 64, (hist, vals))
    assert torch.isfinite(biased) and biased > plain  # the targets are pushed down
