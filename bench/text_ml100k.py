"""MovieLens-100K with item text: text-aware next-item models against id-only ones.

(a) **Next item**, RecBole's protocol as in ``bench/ml100k.py`` (leave-one-out by time, full
    ranking over all items, max length 50, the same cached data): each plugin (gpt2, lstm,
    bert) with its defaults, id-only and with ``item_text=true``, 3 seeds; NDCG@10, Recall@10
    and the ratio text-aware / id-only.
(b) **Cold start**: 10% of the items (seeded) are held out completely: their events are removed
    from the training data and from every input sequence, their text stays. The test examples
    whose target is a held-out item are ranked over the full catalogue: Recall@10 and NDCG@10
    of the text-aware model (which represents a held-out item by its text), the id-only model
    (an untrained row: it can only guess) and popularity.

The titles and genres come from ``ml-100k.item`` in the ``recbole==1.2.1`` wheel (the file
``bench/ml100k.py`` fetches), imported with ``seqrec items import --format recbole`` and
embedded with the packaged all-MiniLM-L6-v2 (``seqrec items embed``). Each full-mode run is a
fresh worker process; finished runs are appended to ``bench/results/text_ml100k_runs.jsonl``
(an interrupted benchmark resumes; delete it to start over). Results:
``bench/results/text_ml100k.json`` and a section of ``docs/benchmarks.md``.

    python bench/text_ml100k.py                  # (a) and (b), 3 seeds (hours on 2 cores)
    python bench/text_ml100k.py --parts b --seeds 0
    python bench/text_ml100k.py --quick          # a tiny slice, 1 epoch: checks that it works

``--quick`` uses a slice of ml-100k (60 users, items 1-300) in ``bench/data/`` and writes
nothing to ``docs/`` or ``bench/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ml100k
import report

DATA = report.ROOT / "bench" / "data"
WS = DATA / "ws-text-ml100k"
QUICK_WS = DATA / "text-ml100k-quick"
MODELS = ("gpt2", "lstm", "bert")
VARIANTS: dict[str, dict[str, Any]] = {"id-only": {}, "text": {"item_text": True}}
HELD_OUT_SHARE, HELD_OUT_SEED = 0.10, 0
STRIDE = ml100k.STRIDE
RUNS = report.RESULTS / "text_ml100k_runs.jsonl"
#: (b) is also measured with this many of the top 10's places for cold-start items
#: (``seqrec evaluate --new-item-slots N``, ``[serve] new_item_slots``)
SLOTS = (1, 2)


def fetch_item_file() -> Path:
    """ml-100k.item (titles, years, genres) from the recbole wheel ml100k.py fetches."""
    target = DATA / "ml-100k" / "ml-100k.item"
    if not target.exists():
        ml100k.fetch_data()  # downloads the wheel once
        with zipfile.ZipFile(sorted(DATA.glob(ml100k.WHEEL_GLOB))[0]) as zf:
            target.write_bytes(zf.read("recbole/dataset_example/ml-100k/ml-100k.item"))
    return target


def quick_slice(root: Path) -> tuple[Path, Path]:
    """A tiny log: users 1-60 and items 1-300 of ml-100k, and those items' text."""
    inter, item = ml100k.fetch_data(), fetch_item_file()
    root.mkdir(parents=True, exist_ok=True)
    lines = inter.read_text().splitlines()
    keep = [
        ln for ln in lines[1:] if int(ln.split("\t")[0]) <= 60 and int(ln.split("\t")[1]) <= 300
    ]
    (root / "slice.inter").write_text("\n".join([lines[0], *keep]) + "\n")
    used = {ln.split("\t")[1] for ln in keep}
    ilines = item.read_text().splitlines()
    ikeep = [ln for ln in ilines[1:] if ln.split("\t")[0] in used]
    (root / "slice.item").write_text("\n".join([ilines[0], *ikeep]) + "\n")
    return root / "slice.inter", root / "slice.item"


def prepare(quick: bool) -> tuple[Path, Path, Path]:
    """(workspace, cache of the next-item data, cache of the cold-start data): events and
    item text imported, embedded, features applied."""
    ws_dir = QUICK_WS / "ws" if quick else WS
    os.environ.setdefault("BENTOML_HOME", str(ws_dir / "models"))
    a_cache, b_cache = ws_dir / "data-next-item.pkl", ws_dir / "data-cold-start.pkl"
    if a_cache.exists() and b_cache.exists():
        return ws_dir, a_cache, b_cache
    from seqrec.commands.project import init_workspace
    from seqrec.config import load_workspace
    from seqrec.data.importers import import_file
    from seqrec.data.item_text import import_item_file
    from seqrec.data.schema import make_engine
    from seqrec.features.repo import apply
    from seqrec.text.embed import embed_items
    from seqrec.training.data import build_next_item_data

    inter, item = quick_slice(QUICK_WS) if quick else (ml100k.fetch_data(), fetch_item_file())
    if not (ws_dir / "seqrec.toml").exists():
        init_workspace(ws_dir)
    ws = load_workspace(ws_dir)
    engine = make_engine(ws.events_url)
    import_file(engine, inter, "recbole", progress=not quick)
    import_item_file(engine, item, "recbole")
    rep = embed_items(ws, engine=engine)
    print(f"embedded {rep.items} items ({rep.encoded} encoded)", file=sys.stderr)
    apply(ws)
    data = build_next_item_data(ws, engine, stride=STRIDE)
    a_cache.write_bytes(pickle.dumps(data))
    b_cache.write_bytes(pickle.dumps(hold_out(data)))
    return ws_dir, a_cache, b_cache


# -- (b): items held out completely ---------------------------------------------------------------


def held_out_items(n_items: int) -> np.ndarray:
    """[n_items] bool: a seeded 10% of the real items (padding 0 never)."""
    rng = np.random.default_rng(HELD_OUT_SEED)
    chosen = rng.choice(np.arange(1, n_items), round(HELD_OUT_SHARE * (n_items - 1)), False)
    held = np.zeros(n_items, dtype=bool)
    held[chosen] = True
    return held


def _without(s: Any, held: np.ndarray, labels: str) -> Any:
    """``s`` with the held-out items' events removed from every input sequence. ``labels``:
    "shift" (training: an example whose target is held out predicts its last kept input
    instead, as if the held-out event never happened), "drop" (examples with a held-out target
    are left out) or "only" (only those are kept: the cold-start test)."""
    from seqrec.training.data import SequenceSet

    n, L = s.items.shape
    items, types, times = (np.zeros_like(a) for a in (s.items, s.types, s.times))
    out_labels = s.labels.copy()
    loss_from = None if s.loss_from is None else s.loss_from.copy()
    keep_rows = np.ones(n, dtype=bool)
    for r in range(n):
        row = s.items[r]
        kept = (row > 0) & ~held[row]
        target_held = bool(held[s.labels[r]])
        if labels == "only":
            keep_rows[r] = target_held
        elif labels == "drop":
            keep_rows[r] = not target_held
        elif target_held:
            cols = np.flatnonzero(kept)
            if len(cols) < 2:
                keep_rows[r] = False
                continue
            out_labels[r] = row[cols[-1]]
            kept[cols[-1]] = False
        cols = np.flatnonzero(kept)
        if len(cols) == 0:
            keep_rows[r] = False
            continue
        m = len(cols)
        items[r, L - m :], types[r, L - m :] = s.items[r, cols], s.types[r, cols]
        times[r, L - m :] = s.times[r, cols]
        if loss_from is not None:
            loss_from[r] = (L - m) + int((cols < s.loss_from[r]).sum())
    k = keep_rows
    return SequenceSet(
        s.user_ids[k],
        items[k],
        types[k],
        times[k],
        out_labels[k],
        None if loss_from is None else loss_from[k],
        None if s.now is None else s.now[k],
    )


def hold_out(data: Any) -> Any:
    """The cold-start data: held-out items never trained on, tested on alone."""
    from dataclasses import replace

    held = held_out_items(data.n_items)
    return replace(
        data,
        train=_without(data.train, held, "shift"),
        valid=_without(data.valid, held, "drop"),
        test=_without(data.test, held, "only"),
    )


# -- runs ---------------------------------------------------------------------------------------


def run_one(
    ws_dir: Path, cache: Path, part: str, model: str, seed: int, variant: str, quick: bool
) -> dict[str, Any]:
    """Train and evaluate one (part, model, seed, variant) in this process."""
    import torch

    from seqrec.config import load_workspace
    from seqrec.pipeline import evaluate_model, train_model

    torch.set_num_threads(2)
    ws = load_workspace(ws_dir)
    data = pickle.loads(cache.read_bytes())
    t0 = time.perf_counter()
    out = train_model(
        ws,
        model,
        seed=seed,
        epochs=1 if quick else None,
        params=dict(VARIANTS[variant]) if model != "popularity" else None,
        overrides={"num_threads": 2},
        data=data,
        progress=False,
        run_dir=ws_dir / "runs" / f"{part}-{model}-{variant}-seed{seed}",
    )
    train_s = time.perf_counter() - t0
    test = evaluate_model(ws, out.tag, ks=(10,), data=data, progress=False, ci=False)
    return {
        "part": part,
        "model": model,
        "seed": seed,
        "variant": variant,
        "tag": out.tag,
        "ndcg@10": test["ndcg@10"],
        "recall@10": test["recall@10"],
        "examples": test["users"],
        "epochs_to_best": out.best_epoch,
        "train_seconds": round(train_s, 1),
        **({"slots": slot_metrics(ws, out.tag, data, warm_test(cache))} if part == "b" else {}),
    }


def warm_test(b_cache: Path) -> Any:
    """The cold-start data with the *other* test examples: targets that are not held out
    (what new-item slots cost the recommendations of known items)."""
    from dataclasses import replace

    full = pickle.loads(b_cache.with_name("data-next-item.pkl").read_bytes())
    data = pickle.loads(b_cache.read_bytes())
    return replace(data, test=_without(full.test, held_out_items(full.n_items), "drop"))


def slot_metrics(ws: Any, tag: str, data: Any, warm: Any) -> dict[str, dict[str, float]]:
    """Recall@10 and NDCG@10 of ``tag`` with each of :data:`SLOTS` new-item slots (places of
    the top 10 for items without training events, the best by the model's score), on the
    cold-start targets and (``warm_``) on the test examples whose target is a known item."""
    from seqrec.pipeline import evaluate_model

    out = {}
    for n in (0, *SLOTS):
        res = evaluate_model(
            ws, tag, ks=(10,), data=data, progress=False, ci=False, new_item_slots=n
        )
        warm_res = evaluate_model(
            ws, tag, ks=(10,), data=warm, progress=False, ci=False, new_item_slots=n
        )
        out[str(n)] = {
            "recall@10": res["recall@10"],
            "ndcg@10": res["ndcg@10"],
            "warm_ndcg@10": warm_res["ndcg@10"],
            "warm_examples": warm_res["users"],
        }
    return out


def slots_worker(ws_dir: Path, cache: Path, tag: str) -> dict[str, Any]:
    """:func:`slot_metrics` of a stored model (a run finished before slots were measured)."""
    from seqrec.config import load_workspace

    data = pickle.loads(cache.read_bytes())
    return slot_metrics(load_workspace(ws_dir), tag, data, warm_test(cache))


def jobs(
    parts: list[str],
    models: list[str],
    seeds: list[int],
    cold_seeds: list[int] | None = None,
    cold_models: tuple[str, ...] = (),
) -> list[tuple[str, str, int, str]]:
    """(part, model, seed, variant) to run; (b) runs ``cold_seeds`` for ``cold_models``."""
    out = [
        (p, m, s, v)
        for p in parts
        for m in models
        for s in (cold_seeds if p == "b" and m in cold_models and cold_seeds else seeds)
        for v in VARIANTS
    ]
    if "b" in parts:
        out.append(("b", "popularity", seeds[0], "id-only"))  # deterministic: one run
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample sd over seeds per (part, model, variant); the text / id-only ratio."""
    rows = []
    for part, model, variant in dict.fromkeys((r["part"], r["model"], r["variant"]) for r in runs):
        rs = [r for r in runs if (r["part"], r["model"], r["variant"]) == (part, model, variant)]
        row: dict[str, Any] = {"part": part, "model": model, "variant": variant, "seeds": len(rs)}
        for key in ("ndcg@10", "recall@10", "train_seconds", "examples"):
            vals = np.array([r[key] for r in rs], dtype=float)
            row[key] = float(vals.mean())
            row[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        for n in (0, *SLOTS):
            if all(str(n) in (r.get("slots") or {}) for r in rs):
                for m in ("recall@10", "ndcg@10", "warm_ndcg@10"):
                    vals = np.array([r["slots"][str(n)].get(m, np.nan) for r in rs], dtype=float)
                    row[f"slots{n}_{m}"] = float(vals.mean())
                    row[f"slots{n}_{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        rows.append(row)
    for row in rows:
        if row["variant"] == "text":
            base = next(
                (
                    r
                    for r in rows
                    if (r["part"], r["model"], r["variant"])
                    == (row["part"], row["model"], "id-only")
                ),
                None,
            )
            if base is not None:
                row["ratio_ndcg@10"] = _ratio(row["ndcg@10"], base["ndcg@10"])
            if base is not None and row["part"] == "b":
                for n in SLOTS:
                    ci = slot_ratio_interval(runs, row["model"], n)
                    if ci is not None:
                        row[f"slots{n}_ratio_ci"] = ci
    return rows


def slot_ratio_interval(
    runs: list[dict[str, Any]], model: str, n: int, draws: int = 10_000
) -> list[float] | None:
    """95% interval of (b)'s text-aware / id-only Recall@10 with ``n`` slots: seeds resampled
    with replacement, each seed's two runs kept together (a percentile bootstrap over seeds)."""
    key = str(n)
    per_seed: dict[int, dict[str, float]] = {}
    for r in runs:
        if (r["part"], r["model"]) == ("b", model) and key in (r.get("slots") or {}):
            per_seed.setdefault(r["seed"], {})[r["variant"]] = r["slots"][key]["recall@10"]
    pairs = np.array([[v["text"], v["id-only"]] for v in per_seed.values() if len(v) == 2])
    if len(pairs) < 5:  # with fewer seeds a resample often has no id-only hit at all
        return None
    idx = np.random.default_rng(0).integers(0, len(pairs), (draws, len(pairs)))
    sums = pairs[idx].sum(axis=1)  # [draws, 2]
    ratios = sums[:, 0] / np.maximum(sums[:, 1], 1e-12)
    return [float(x) for x in np.percentile(ratios, [2.5, 97.5])]


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _fmt(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.4f} ± {r[key + '_std']:.4f}"


def page(payload: dict[str, Any]) -> str:
    summary = payload["summary"]

    def get(part: str, model: str, variant: str) -> dict[str, Any] | None:
        return next(
            (r for r in summary if (r["part"], r["model"], r["variant"]) == (part, model, variant)),
            None,
        )

    def ratio(r: dict[str, Any] | None) -> str:
        x = None if r is None else r.get("ratio_ndcg@10")
        return "n/a (id-only 0)" if x is None else f"{x:.2f}x"

    md = [
        "## MovieLens-100K with item text (`bench/text_ml100k.py`)",
        "",
        report.machine_line(payload["machine"]),
        "",
        ("**QUICK RUN (tiny slice, 1 epoch): not for comparison.** " if payload["quick"] else "")
        + "Text: ml-100k's titles and genres, embedded with the packaged all-MiniLM-L6-v2. "
        "Every model trains with its plugin's defaults, id-only or with `--param "
        f"item_text=true`; mean ± sample sd over seeds {payload['seeds']}"
        + "".join(
            f"; (b) for {m}: seeds {seeds}" for m, seeds in payload.get("cold_seeds", {}).items()
        )
        + ".",
        "",
    ]
    cold_items = payload["held_out"].get("cold_items")
    a_rows = []
    for m in payload["models"]:
        ido, txt = get("a", m, "id-only"), get("a", m, "text")
        if ido is None or txt is None:
            continue
        a_rows.append(
            [
                m,
                _fmt(ido, "ndcg@10"),
                _fmt(txt, "ndcg@10"),
                ratio(txt),
                _fmt(ido, "recall@10"),
                _fmt(txt, "recall@10"),
            ]
        )
    if a_rows:
        md += [
            "### (a) Next item, RecBole's protocol",
            "",
            "Leave-one-out by time, full ranking over all items, max length 50 (the data of "
            "`bench/ml100k.py`).",
            "",
            report.table(
                [
                    "model",
                    "NDCG@10 id-only",
                    "NDCG@10 text-aware",
                    "ratio",
                    "Recall@10 id-only",
                    "Recall@10 text-aware",
                ],
                a_rows,
            ),
            "",
        ]
    b_rows = []
    for m in payload["models"]:
        ido, txt = get("b", m, "id-only"), get("b", m, "text")
        if ido is None or txt is None:
            continue
        b_rows.append(
            [
                m,
                _fmt(txt, "recall@10"),
                _fmt(txt, "ndcg@10"),
                _fmt(ido, "recall@10"),
                _fmt(ido, "ndcg@10"),
                ratio(txt),
            ]
        )
    pop = get("b", "popularity", "id-only")
    if b_rows:
        examples = int(next(r for r in summary if r["part"] == "b")["examples"])
        md += [
            "### (b) Cold start: items never seen in training",
            "",
            f"{HELD_OUT_SHARE:.0%} of the items (seed {HELD_OUT_SEED}) held out completely: "
            "their events removed from training and from every input, their text kept. "
            f"Ranked over the full catalogue on the {examples} test examples whose target is a "
            "held-out item. A text-aware model represents such an item by its text alone; an "
            "id-only model has an untrained row for it."
            + (
                f" Popularity: Recall@10 {pop['recall@10']:.4f}, NDCG@10 {pop['ndcg@10']:.4f} "
                "(held-out items have no training count)."
                if pop
                else ""
            ),
            "",
            report.table(
                [
                    "model",
                    "Recall@10 text-aware",
                    "NDCG@10 text-aware",
                    "Recall@10 id-only",
                    "NDCG@10 id-only",
                    "ratio (NDCG)",
                ],
                b_rows,
            ),
            "",
        ]
    s_rows = []
    for m in payload["models"]:
        ido, txt = get("b", m, "id-only"), get("b", m, "text")
        if ido is None or txt is None:
            continue
        for n in SLOTS:
            key = f"slots{n}_recall@10"
            if key not in txt or key not in ido:
                continue
            hits_t = round(txt[key] * txt["examples"] * txt["seeds"])
            hits_i = round(ido[key] * ido["examples"] * ido["seeds"])
            ratio_s = (
                f"{txt[key] / ido[key]:.1f}x"
                if ido[key] > 0
                else ("no id-only hit" if hits_t else "n/a (no hit)")
            )
            ci = txt.get(f"slots{n}_ratio_ci")
            if ci is not None and ido[key] > 0:
                ratio_s += f" ({ci[0]:.1f}-{ci[1]:.1f})"
            pop_s = f"{pop[key]:.4f}" if pop and key in pop else "-"
            chance = min(n, cold_items) / cold_items if cold_items else None
            warm = (
                f"{txt[f'slots{n}_warm_ndcg@10']:.4f} (0 slots: {txt['slots0_warm_ndcg@10']:.4f})"
                if "slots0_warm_ndcg@10" in txt
                else "-"
            )
            s_rows.append(
                [
                    m,
                    str(n),
                    str(txt["seeds"]),
                    f"{_fmt(txt, key)} ({hits_t} hits)",
                    _fmt(txt, f"slots{n}_ndcg@10"),
                    f"{_fmt(ido, key)} ({hits_i} hits)",
                    pop_s,
                    "-" if chance is None else f"{chance:.4f}",
                    ratio_s,
                    "-" if chance is None else f"{txt[key] / chance:.1f}x",
                    warm,
                ]
            )
    if s_rows:
        md += [
            "With new-item slots (`seqrec evaluate --new-item-slots N`, served with `[serve] "
            "new_item_slots = N`): of every top 10, up to N places go to the items without "
            "training events, the best of them by the model's score (for a text-aware model: "
            "by their text). Same models, same examples; hits summed over seeds; the ratio's 95% "
            "interval resamples seeds. Chance: the "
            "Recall@10 of N places filled at random from the "
            f"{cold_items} items without training events (the held-out ones, and any whose "
            "events all fall after the training split). The last column is what the places "
            "cost: the text-aware model's NDCG@10 on the test examples whose target is a known "
            "item:",
            "",
            report.table(
                [
                    "model",
                    "slots",
                    "seeds",
                    "Recall@10 text-aware",
                    "NDCG@10 text-aware",
                    "Recall@10 id-only",
                    "Recall@10 popularity",
                    "Recall@10 chance",
                    "ratio to id-only (Recall)",
                    "ratio to chance",
                    "NDCG@10 text-aware, known-item targets",
                ],
                s_rows,
            ),
            "",
        ]
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="a,b", help="a (next item), b (cold start) or both")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--cold-seeds",
        default="",
        help="(b): these seeds instead for the models of --cold-models (its hit counts are "
        "small, so more seeds narrow the ratio), e.g. 0,1,2,3,4,5,6,7,8,9",
    )
    ap.add_argument("--cold-models", default="gpt2", help="the models --cold-seeds applies to")
    ap.add_argument("--quick", action="store_true", help="a tiny slice, 1 epoch, in-process")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--slots-of", help=argparse.SUPPRESS)
    args = ap.parse_args()
    ws_dir, a_cache, b_cache = prepare(args.quick)
    if args.slots_of:
        from seqrec import model_store
        from seqrec.config import load_workspace

        try:
            model_store.load(args.slots_of, store=load_workspace(ws_dir).model_store)
        except Exception:
            sys.exit(3)
        print(json.dumps(slots_worker(ws_dir, b_cache, args.slots_of)))
        return
    if args.worker:
        part, model, seed, variant = args.worker
        cache = a_cache if part == "a" else b_cache
        print(json.dumps(run_one(ws_dir, cache, part, model, int(seed), variant, False)))
        return
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    if not args.quick and RUNS.exists():
        for line in RUNS.read_text().splitlines():
            r = json.loads(line)
            done[(r["part"], r["model"], r["seed"], r["variant"])] = r
    runs = []
    cold_seeds = [int(x) for x in args.cold_seeds.split(",") if x.strip()]
    cold_models = tuple(m.strip() for m in args.cold_models.split(",") if m.strip())
    for part, model, seed, variant in jobs(parts, models, seeds, cold_seeds, cold_models):
        key = (part, model, seed, variant)
        if key in done and part == "b" and "0" not in done[key].get("slots", {}):
            # finished before slots were measured: evaluate its stored model again
            proc = subprocess.run(
                [sys.executable, __file__, "--slots-of", done[key]["tag"]],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                done[key]["slots"] = json.loads(proc.stdout.strip().splitlines()[-1])
                with RUNS.open("a") as fh:
                    fh.write(json.dumps(done[key]) + "\n")
            elif proc.returncode == 3:  # its model is gone: train it again
                print(f"{key}: stored model not found, training again", file=sys.stderr)
                del done[key]
            else:
                sys.exit(f"{key}: evaluating with slots failed:\n{proc.stderr[-3000:]}")
        if key in done:
            runs.append(done[key])
            continue
        cache = a_cache if part == "a" else b_cache
        if args.quick:
            run = run_one(ws_dir, cache, part, model, seed, variant, True)
        else:
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", part, model, str(seed), variant],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                sys.exit(f"{key} failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            report.RESULTS.mkdir(parents=True, exist_ok=True)
            with RUNS.open("a") as fh:
                fh.write(json.dumps(run) + "\n")
        runs.append(run)
        print(
            f"({part}) {model:>10} {variant:>7} seed {seed}: ndcg@10 {run['ndcg@10']:.4f} "
            f"recall@10 {run['recall@10']:.4f} on {run['examples']} examples",
            file=sys.stderr,
        )
    from seqrec.pipeline import trained_items

    cold_data = pickle.loads(b_cache.read_bytes())
    payload = {
        "machine": report.machine(),
        "quick": args.quick,
        "parts": parts,
        "models": models,
        "seeds": seeds,
        "cold_seeds": {m: cold_seeds for m in cold_models} if cold_seeds else {},
        "held_out": {
            "share": HELD_OUT_SHARE,
            "seed": HELD_OUT_SEED,
            "items": int(held_out_items(cold_data.n_items).sum()),
            # what an evaluation with slots treats as cold: no event in the training split
            "cold_items": int((~trained_items(cold_data)).sum()),
        },
        "runs": runs,
        "summary": summarize(runs),
    }
    md = page(payload)
    if args.quick:
        (QUICK_WS / "text_ml100k.json").write_text(json.dumps(payload, indent=2, default=str))
    else:
        report.save_json("text_ml100k", payload)
        report.write_section("text_ml100k", md)
    print(md)


if __name__ == "__main__":
    main()
