"""The hyperparameters of ``itemknn``: defaults, one docstring each, and their validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from seqrec.errors import SeqrecError


@dataclass(frozen=True)
class ItemKNNParams:
    """What ``--param KEY=VALUE`` (or ``[hyperparams.itemknn]`` in seqrec.toml) may set."""

    neighbours: int = 100
    """Most similar items kept per item (the top M of its row); the rest score 0 for it."""

    shrinkage: float = 10.0
    """Added to the cosine's denominator: pairs seen only a few times count less (>= 0)."""

    window: int = 2
    """Two events co-occur when at most this many events apart in a user's sequence;
    0: anywhere in the training window the platform hands the model (``max_len`` events)."""

    decay: float = 0.5
    """Weight of a history item per event of age: the newest counts 1, the one before it
    ``decay``, then ``decay**2`` ... (in (0, 1]; 1: every item of the history counts alike)."""

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ItemKNNParams:
        """The model's share of ``params`` (a model context's), checked: a clear error for a
        value of the wrong type or range, naming the parameter."""
        if params.get("repeat_bias"):
            raise SeqrecError(
                "itemknn has no repeat bias (it is counted, not trained)",
                hint="drop --param repeat_bias=true; --exclude-seen masks seen items instead",
            )
        hp = cls(**{k: params[k] for k in asdict(cls()) if k in params})
        _integer("neighbours", hp.neighbours, 1)
        _integer("window", hp.window, 0)
        _number("shrinkage", hp.shrinkage, "a number >= 0", lambda v: v >= 0)
        _number("decay", hp.decay, "a number in (0, 1]", lambda v: 0 < v <= 1)
        return hp


#: every hyperparameter the model accepts with its default (a counting model has no learned
#: repeat bias, so the platform's one is off)
DEFAULTS: dict[str, Any] = {**asdict(ItemKNNParams()), "repeat_bias": False}


def _integer(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SeqrecError(
            f"itemknn: {name} must be an integer >= {low}, got {value!r}",
            hint=f"e.g. --param {name}={DEFAULTS[name]}",
        )


def _number(name: str, value: Any, what: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise SeqrecError(
            f"itemknn: {name} must be {what}, got {value!r}",
            hint=f"e.g. --param {name}={DEFAULTS[name]}",
        )
