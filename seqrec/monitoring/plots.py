"""The PNG plots of a run report (matplotlib's Agg canvas, no pyplot state).

Each function draws one figure from plain numbers and writes it to ``path``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

WIDTH, HEIGHT, DPI = 6.4, 3.6, 100


def _figure() -> Figure:
    return Figure(figsize=(WIDTH, HEIGHT), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def learning_curves(
    epochs: Sequence[int],
    loss: Sequence[float],
    valid: Sequence[float | None],
    metric: str,
    path: Path,
) -> Path:
    """Training loss (left axis) and the validation metric (right axis) per epoch."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(epochs, loss, "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("train loss", color="tab:blue")
    right = ax.twinx()
    pts = [(e, v) for e, v in zip(epochs, valid, strict=True) if v is not None]
    if pts:
        right.plot(*zip(*pts, strict=True), "s-", color="tab:orange", label=f"valid {metric}")
    right.set_ylabel(f"valid {metric}", color="tab:orange")
    ax.set_title("Learning curves")
    return _save(fig, path)


def metric_across_runs(
    runs: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    metric: str,
    path: Path,
) -> Path:
    """One line per series (candidate, production, baseline) over the retrain runs."""
    fig = _figure()
    ax = fig.add_subplot()
    x = list(range(len(runs)))
    for name, values in series.items():
        pts = [(i, v) for i, v in zip(x, values, strict=True) if v is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=name)
    ax.set_xticks(x, list(runs), rotation=45 if len(runs) > 8 else 0)
    ax.set_xlabel("retrain run")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} across retrains")
    ax.legend()
    return _save(fig, path)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    path: Path,
    *,
    title: str,
    ylabel: str,
    notes: Sequence[str] | None = None,
) -> Path:
    """A bar per label, with an optional note (e.g. a count) above each bar."""
    fig = _figure()
    ax = fig.add_subplot()
    rects = ax.bar(list(labels), list(values), color="tab:blue")
    if notes:
        ax.bar_label(rects, labels=list(notes), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.margins(y=0.15)
    return _save(fig, path)


def grouped_bars(
    labels: Sequence[str], groups: Mapping[str, Sequence[float]], path: Path, *, title: str
) -> Path:
    """Side-by-side bars per label, one colour per group (e.g. train and test shares)."""
    fig = _figure()
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    for g, (name, values) in enumerate(groups.items()):
        ax.bar([i + g * width for i in range(len(labels))], list(values), width, label=name)
    ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(labels))], list(labels))
    ax.set_ylabel("share")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def reliability(
    predicted: Sequence[float], observed: Sequence[float], counts: Sequence[int], path: Path
) -> Path:
    """A reliability diagram: observed frequency against mean predicted probability per bin."""
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(predicted, observed, "o-", color="tab:blue", label="model")
    for p, o, n in zip(predicted, observed, counts, strict=True):
        ax.annotate(str(n), (p, o), textcoords="offset points", xytext=(0, 6), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("Calibration (examples per bin annotated)")
    ax.legend(loc="upper left")
    return _save(fig, path)


def drift_psi(names: Sequence[str], psi: Sequence[float], threshold: float, path: Path) -> Path:
    """PSI per feature as bars (red above ``threshold``) with the threshold as a line."""
    fig = _figure()
    ax = fig.add_subplot()
    colors = ["tab:red" if v > threshold else "tab:green" for v in psi]
    ax.bar(list(names), list(psi), color=colors)
    ax.axhline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_ylabel("PSI")
    ax.set_title("Drift: training window vs newest window")
    ax.legend()
    return _save(fig, path)
