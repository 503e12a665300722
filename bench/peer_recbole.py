"""RecBole 1.2.1 peer for seqrec's MovieLens-100K benchmark (SASRec, GRU4Rec, BERT4Rec).

What it measures
    * ``--mode speed`` (default): wall-clock seconds of each training epoch
      (``Trainer._train_epoch``, timed inside the RecBole process with ``time.perf_counter``;
      data loading, model construction and evaluation are excluded), averaged over
      ``--epochs`` epochs, plus the process's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``,
      which includes importing torch/RecBole and loading the data set).
      No validation is run: ``trainer.fit`` gets no validation loader (RecBole clamps
      ``eval_step`` to ``epochs``, so a large ``eval_step`` alone would still validate once).
    * ``--mode full``: trains until early stopping on validation NDCG@10
      (``stopping_step: 10``, at most ``--max-epochs`` epochs), reloads the best checkpoint and
      reports test Recall/NDCG/MRR@{10,20}, alongside the same epoch timings.

How
    RecBole pins ``numpy<2`` and so cannot be a dependency of seqrec. This script therefore
    needs only the standard library: it builds ``bench/.venv-recbole`` (idempotent; pinned by
    ``bench/peer_recbole_constraints.txt``) and runs each model in a fresh subprocess of that
    venv's python, executing this same file with the hidden ``--driver`` flag. The driver
    mirrors ``recbole.quick_start.run_recbole`` (Config -> create_dataset -> data_preparation ->
    model -> trainer.fit -> trainer.evaluate) and prints one JSON line. Models run one at a time.

Protocol (matches seqrec's)
    MovieLens-100K as shipped inside the recbole 1.2.1 wheel (``recbole/dataset_example/ml-100k``;
    RecBole always uses that copy for ``dataset="ml-100k"``, so nothing is downloaded), RecBole's
    ml-100k defaults (no user/item filtering), leave-one-out by time per user
    (``split: {LS: valid_and_test}, order: TO, group_by: user``), full ranking over all items,
    ``MAX_ITEM_LIST_LENGTH: 50``, CE loss over all items (``train_neg_sample_args: None``),
    metrics Recall/NDCG/MRR @10 and @20, ``valid_metric: NDCG@10``, CPU with 2 torch threads,
    fixed seed, RecBole's default hyperparameters for every model. Note: for sequential models
    RecBole's full-sort evaluation masks only the padding item, not the user's history items.

Results go to ``--out`` (default ``bench/results/peer_recbole.json``); results of models not run
this time are kept from an existing file unless ``--fresh`` is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv-recbole"
VENV_PYTHON = VENV_DIR / "bin" / "python"
VENV_PIP = VENV_DIR / "bin" / "pip"
CONSTRAINTS = BENCH_DIR / "peer_recbole_constraints.txt"
SETUP_STAMP = VENV_DIR / ".peer_recbole_setup"
WORK_DIR = BENCH_DIR / "data" / "recbole_work"  # RecBole's cwd: log/, log_tensorboard/, saved/
DEFAULT_OUT = BENCH_DIR / "results" / "peer_recbole.json"

RECBOLE_VERSION = "1.2.1"
TORCH_VERSION = "2.13.0"
INSTALL_STEPS: tuple[tuple[str, ...], ...] = (
    (f"torch=={TORCH_VERSION}",),
    (f"recbole=={RECBOLE_VERSION}", "numpy<2", "pandas<3", "setuptools<81"),
)
MODELS = ("SASRec", "GRU4Rec", "BERT4Rec")
DATASET = "ml-100k"
THREADS = 2
SEED = 2020
RESULT_MARKER = "@@PEER_RECBOLE_RESULT@@ "
REPORTED_METRICS = ("ndcg@10", "recall@10", "mrr@10")

# Everything that defines the protocol; model hyperparameters stay at RecBole's defaults.
PROTOCOL_CONFIG: dict[str, Any] = {
    "eval_args": {
        "split": {"LS": "valid_and_test"},
        "order": "TO",
        "group_by": "user",
        "mode": "full",
    },
    "MAX_ITEM_LIST_LENGTH": 50,
    "loss_type": "CE",
    "train_neg_sample_args": None,
    "metrics": ["Recall", "NDCG", "MRR"],
    "topk": [10, 20],
    "valid_metric": "NDCG@10",
    "metric_decimal_place": 6,  # RecBole rounds metrics to 4 places by default
    "seed": SEED,
    "reproducibility": True,
    "use_gpu": False,
    "gpu_id": "",
    "worker": 0,
    "show_progress": False,
}


# --------------------------------------------------------------------------- setup


def _constraints_digest() -> str:
    return hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()


def _run_checked(cmd: list[str]) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def ensure_venv(force: bool = False) -> None:
    """Create and populate bench/.venv-recbole unless a matching setup stamp is present."""
    digest = _constraints_digest()
    if (
        not force
        and VENV_PYTHON.exists()
        and SETUP_STAMP.exists()
        and SETUP_STAMP.read_text().strip() == digest
    ):
        return
    if not VENV_PYTHON.exists():
        _run_checked(["python3", "-m", "venv", str(VENV_DIR)])
    for packages in INSTALL_STEPS:
        _run_checked([str(VENV_PIP), "install", "-q", "-c", str(CONSTRAINTS), *packages])
    # Fail here, not mid-benchmark, if RecBole does not import.
    _run_checked([str(VENV_PYTHON), "-c", "import recbole.quick_start, recbole.data"])
    SETUP_STAMP.write_text(digest + "\n")


def _subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",  # RecBole's torch.load predates weights_only=True
        OMP_NUM_THREADS=str(THREADS),
        MKL_NUM_THREADS=str(THREADS),
        PYTHONUNBUFFERED="1",
        PYTHONWARNINGS="ignore",
    )
    return env


# --------------------------------------------------------------------------- machine info


def cpu_busy(seconds: float = 1.0) -> float | None:
    """Share of all cores busy (0..1) over ``seconds``, from /proc/stat; None if unavailable."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return 1 - (idle1 - idle0) / total if total > 0 else None


_PROBE = (
    "import json, platform, numpy, torch, recbole; "
    "print(json.dumps({'python': platform.python_version(), 'torch': torch.__version__, "
    "'numpy': numpy.__version__, 'recbole': recbole.__version__}))"
)


def machine_info() -> dict[str, Any]:
    """CPU model and core count of this machine; python/torch versions inside the RecBole venv."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    probe = subprocess.run(
        [str(VENV_PYTHON), "-c", _PROBE],
        capture_output=True,
        text=True,
        check=True,
        env=_subprocess_env(),
    )
    versions = json.loads(probe.stdout.strip().splitlines()[-1])
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "torch_threads": THREADS,
        "python": versions["python"],
        "torch": versions["torch"],
        "numpy": versions["numpy"],
        "recbole": versions["recbole"],
    }


# --------------------------------------------------------------------------- driver side


def run_driver(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside bench/.venv-recbole: train one model as run_recbole would, timing each epoch."""
    import resource

    import torch

    torch.set_num_threads(THREADS)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    sys.argv = sys.argv[:1]  # RecBole's Config parses --key=value from sys.argv
    model_name: str = spec["model"]
    config = Config(model=model_name, dataset=DATASET, config_dict=spec["config"])
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)

    inter_file = Path(config["data_path"]) / f"{DATASET}.inter"
    if not inter_file.is_file():  # RecBole would try to download it; there is no network here.
        raise FileNotFoundError(f"RecBole's bundled {inter_file} is missing")
    dataset = create_dataset(config)
    # Counted before data_preparation, which replaces inter_feat by the augmented sequences.
    users, items, interactions = dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num
    history = user_histories(dataset, config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    rss_after_data_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Empirical check of history masking: FullSortEvalDataLoader yields
    # (interaction, history_index, positive_u, positive_i); history_index None = no masking.
    first_test_batch = next(iter(test_data))
    history_masked = first_test_batch[1] is not None

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)

    epoch_seconds: list[float] = []
    epoch_cpu_seconds: list[float] = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args: Any, **kwargs: Any) -> Any:
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = train_epoch(*args, **kwargs)
        epoch_seconds.append(time.perf_counter() - start)
        epoch_cpu_seconds.append(time.process_time() - cpu_start)
        return loss

    trainer._train_epoch = timed_train_epoch

    valid_scores: list[float] = []
    result: dict[str, Any] = {"model": model_name}
    if spec["mode"] == "speed":
        trainer.fit(train_data, None, saved=False, show_progress=False)
    else:
        best_valid, best_valid_result = trainer.fit(
            train_data,
            valid_data,
            saved=True,
            show_progress=False,
            callback_fn=lambda epoch, score: valid_scores.append(float(score)),
        )
        test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
        test = {k: float(v) for k, v in test_result.items()}
        # protocol (b): the same best model, each user's earlier items masked before ranking
        test.update(masked_test_metrics(trainer.model, test_data, history))
        best_epoch = valid_scores.index(max(valid_scores)) + 1 if valid_scores else None
        result.update({k: test[k] for k in REPORTED_METRICS})
        result.update({k: test[k] for k in ("masked_ndcg@10", "masked_recall@10")})
        result.update(
            best_epoch=best_epoch,
            best_valid_ndcg10=float(best_valid),
            valid=(
                {k: float(v) for k, v in best_valid_result.items()} if best_valid_result else None
            ),
            test=test,
        )

    result.update(
        seconds_per_epoch=sum(epoch_seconds) / len(epoch_seconds),
        epochs=len(epoch_seconds),
        epoch_seconds=[round(s, 3) for s in epoch_seconds],
        # CPU time of all threads (~2x wall when both are busy). Not a contention-proof
        # measure: OpenMP threads spinning on a shared core burn CPU time too.
        cpu_seconds_per_epoch=sum(epoch_cpu_seconds) / len(epoch_cpu_seconds),
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        peak_rss_after_data_mb=rss_after_data_mb,
        n_params=sum(p.numel() for p in model.parameters()),
        torch_threads=torch.get_num_threads(),
        dataset={
            "path": str(inter_file),
            "sha256": hashlib.sha256(inter_file.read_bytes()).hexdigest(),
            "users": users,  # user_num/item_num minus RecBole's padding id 0
            "items": items,
            "interactions": interactions,
            "train_sequences": len(train_data._dataset),
            "valid_sequences": len(valid_data._dataset),
            "test_sequences": len(test_data._dataset),
        },
        history_masked_in_eval=history_masked,
        train_batch_size=config["train_batch_size"],
        learning_rate=config["learning_rate"],
    )
    return result


def user_histories(dataset: Any, config: Any) -> dict[int, Any]:
    """Internal user id -> its item ids in time order (ties in file order), all events."""
    import numpy as np

    feat = dataset.inter_feat

    def column(name: str) -> Any:
        """A column as numpy, whether the features are still a DataFrame or already tensors."""
        col = feat[config[name]]
        return col.to_numpy() if hasattr(col, "to_numpy") else col.numpy()

    u, i, t = column("USER_ID_FIELD"), column("ITEM_ID_FIELD"), column("TIME_FIELD")
    order = np.lexsort((np.arange(len(u)), t, u))  # by user, then time, then file order
    u, i = u[order], i[order]
    starts = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    ends = np.r_[starts[1:], len(u)]
    return {int(u[a]): i[a:b] for a, b in zip(starts, ends, strict=True)}


def masked_test_metrics(model: Any, test_data: Any, history: dict[int, Any]) -> dict[str, float]:
    """NDCG@10 and Recall@10 with every item the user rated before the test target masked.

    The test target of leave-one-out is the user's last event, so the items masked are all of
    the user's items but that last one: the same as seqrec's ``--exclude-seen``.
    """
    import numpy as np
    import torch

    model.eval()
    ndcg, hits = [], []
    with torch.no_grad():
        for batch in test_data:
            interaction = batch[0].to(model.device)
            scores = model.full_sort_predict(interaction).view(len(interaction), -1).float()
            scores[:, 0] = -torch.inf  # padding
            users = interaction[model.USER_ID].cpu().numpy()
            targets = interaction[model.POS_ITEM_ID]
            for row, user in enumerate(users):
                seen = history[int(user)][:-1]
                if len(seen):
                    scores[row, torch.as_tensor(seen, dtype=torch.long)] = -torch.inf
            target_scores = scores.gather(1, targets.view(-1, 1))
            ranks = (scores > target_scores).sum(1).cpu().numpy()
            hit = ranks < 10
            hits.append(hit.astype(np.float64))
            ndcg.append(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0))
    return {
        "masked_ndcg@10": float(np.concatenate(ndcg).mean()),
        "masked_recall@10": float(np.concatenate(hits).mean()),
    }


# --------------------------------------------------------------------------- parent side


def model_config(mode: str, epochs: int, max_epochs: int) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(PROTOCOL_CONFIG)
    cfg["checkpoint_dir"] = str(WORK_DIR / "saved")
    if mode == "speed":
        cfg.update(epochs=epochs, eval_step=10**9, stopping_step=10**9)
    else:
        cfg.update(epochs=max_epochs, eval_step=1, stopping_step=10)
    return cfg


def run_model(model: str, mode: str, cfg: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """Train one model in a fresh RecBole-venv process; its full log goes to WORK_DIR/logs/."""
    log_dir = WORK_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{model}-{mode}.log"
    spec = json.dumps({"model": model, "mode": mode, "config": cfg})
    cmd = [str(VENV_PYTHON), str(Path(__file__).resolve()), "--driver"]
    result: dict[str, Any] | None = None
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=WORK_DIR,
            env=_subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(spec)
        proc.stdin.close()
        for line in proc.stdout:
            log.write(line)
            if line.startswith(RESULT_MARKER):
                result = json.loads(line[len(RESULT_MARKER) :])
            elif verbose:
                print("    " + line, end="", flush=True)
        returncode = proc.wait()
    if returncode != 0 or result is None:
        tail = log_path.read_text().splitlines()[-30:]
        raise RuntimeError(
            f"RecBole run of {model} failed (exit {returncode}); log: {log_path}\n"
            + "\n".join(tail)
        )
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    # 1-minute load average before/after: > cores means the timing shared the CPUs.
    result["loadavg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["mode"] = mode
    result["epoch_policy"] = (
        f"{cfg['epochs']} epoch(s), no validation"
        if mode == "speed"
        else f"early stopping after {cfg['stopping_step']} epochs without valid NDCG@10 gain,"
        f" at most {cfg['epochs']} epochs"
    )
    result["log"] = str(log_path.relative_to(REPO_DIR))
    return result


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, int | float):
        return format(value, spec)
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    return "-".rjust(int(width or 0))


def summary_table(results: list[dict[str, Any]]) -> str:
    header = (
        f"{'model':<10} {'mode':<6} {'s/epoch':>8} {'cpu s':>8} {'epochs':>6} {'RSS MB':>7}"
        f" {'NDCG@10':>8} {'Recall@10':>9} {'MRR@10':>7}"
    )
    rows = [header, "-" * len(header)]
    for r in results:
        rows.append(
            f"{r['model']:<10} {r.get('mode', '?'):<6} {_fmt(r['seconds_per_epoch'], '8.2f')}"
            f" {_fmt(r.get('cpu_seconds_per_epoch'), '8.2f')}"
            f" {r['epochs']:>6} {_fmt(r['peak_rss_mb'], '7.0f')}"
            f" {_fmt(r.get('ndcg@10'), '8.4f')} {_fmt(r.get('recall@10'), '9.4f')}"
            f" {_fmt(r.get('mrr@10'), '7.4f')}"
        )
    return "\n".join(rows)


def protocol_description() -> dict[str, Any]:
    """Mode-independent protocol; each result carries its own mode and epoch_policy."""
    return {
        "dataset": f"{DATASET} (copy bundled in the recbole {RECBOLE_VERSION} wheel)",
        "filtering": "none beyond RecBole's ml-100k defaults",
        "split": "leave-one-out by time per user (LS valid_and_test, order TO, group_by user)",
        "ranking": "full (all items); padding masked; history items NOT masked for sequential models",
        "max_seq_len": PROTOCOL_CONFIG["MAX_ITEM_LIST_LENGTH"],
        "loss": "CE over all items (train_neg_sample_args None)",
        "metrics": PROTOCOL_CONFIG["metrics"],
        "topk": PROTOCOL_CONFIG["topk"],
        "valid_metric": PROTOCOL_CONFIG["valid_metric"],
        "hyperparameters": "RecBole defaults per model",
        "device": "cpu",
        "torch_threads": THREADS,
        "seed": SEED,
        "train_batch_size": 2048,
        "epoch": "one pass over RecBole's augmented training set: one example per training "
        "target (every prefix of a user's training events, last 50 items kept), i.e. 97,171 "
        "sequences of up to 50 items, each trained on its last position only",
        "timing": "Trainer._train_epoch wall time (perf_counter) and process CPU time "
        "(process_time), inside the RecBole process; per result, cpu_busy_before is the share "
        "of all cores other processes kept busy just before the run",
        "recbole_config": PROTOCOL_CONFIG,
    }


def load_previous(out: Path) -> list[dict[str, Any]]:
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError):
        return []
    if previous.get("recbole_version") != RECBOLE_VERSION:
        return []
    return [r for r in previous.get("results", []) if isinstance(r, dict) and "model" in r]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark RecBole 1.2.1 (SASRec/GRU4Rec/BERT4Rec) on MovieLens-100K "
        "under seqrec's protocol, in its own venv (bench/.venv-recbole).",
    )
    parser.add_argument(
        "--mode",
        choices=("speed", "full"),
        default="speed",
        help="speed: time --epochs training epochs, no evaluation; "
        "full: train with early stopping and report test metrics (default: speed)",
    )
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help=f"comma-separated RecBole model names (default: {','.join(MODELS)})",
    )
    parser.add_argument(
        "--epochs", type=int, default=1, help="training epochs per model in speed mode (default: 1)"
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=300,
        help="epoch cap in full mode; early stopping after 10 epochs without "
        "validation NDCG@10 gain (default: 300)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="JSON results file (default: bench/results/peer_recbole.json)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="overwrite --out instead of keeping results of models not run this time",
    )
    parser.add_argument(
        "--setup-only", action="store_true", help="only create/check bench/.venv-recbole"
    )
    parser.add_argument(
        "--reinstall", action="store_true", help="re-run the venv installs even if already done"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="echo RecBole's log")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.max_epochs < 1:
        parser.error("--epochs and --max-epochs must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.driver:  # we are the RecBole-venv subprocess
        result = run_driver(json.loads(sys.stdin.read()))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return 0

    ensure_venv(force=args.reinstall)
    if args.setup_only:
        print(f"RecBole venv ready: {VENV_DIR}")
        return 0

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        print("no models given", file=sys.stderr)
        return 2
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(
        f"RecBole {machine['recbole']} / torch {machine['torch']} / python {machine['python']}"
        f" on {machine['cpu']} ({machine['cores']} cores, {THREADS} torch threads)",
        flush=True,
    )
    cfg = model_config(args.mode, args.epochs, args.max_epochs)
    command = shlex.join(sys.orig_argv)
    out: Path = args.out if args.out.is_absolute() else Path.cwd() / args.out
    kept = [] if args.fresh else load_previous(out)

    results: list[dict[str, Any]] = []
    all_results: list[dict[str, Any]] = kept
    for model in models:
        busy = cpu_busy()
        warning = (
            f" (warning: other processes keep {busy:.0%} of the CPUs busy; timings will suffer)"
            if busy is not None and busy > 0.2
            else ""
        )
        print(f"[{model}] training ({args.mode}) ...{warning}", flush=True)
        result = run_model(model, args.mode, cfg, args.verbose)
        result["cpu_busy_before"] = None if busy is None else round(busy, 3)
        result["command"] = command
        result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        results.append(result)
        metrics = "".join(
            f" {k}={result[k]:.4f}" for k in REPORTED_METRICS if result.get(k) is not None
        )
        print(
            f"[{model}] {result['seconds_per_epoch']:.2f} s/epoch over {result['epochs']} epoch(s),"
            f" peak RSS {result['peak_rss_mb']:.0f} MB{metrics}",
            flush=True,
        )

        done = {(r["model"], r.get("mode")) for r in results}
        all_results = [r for r in kept if (r["model"], r.get("mode")) not in done] + results
        report = {
            "machine": machine,
            "recbole_version": RECBOLE_VERSION,
            "command": command,
            "protocol": protocol_description(),
            "results": all_results,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every model: partial is kept

    print()
    print(summary_table(all_results))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
