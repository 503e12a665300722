"""Reading a training run's checkpoint files back (``seqrec train --resume``).

Weights are read through safetensors, the trainer state through ``torch.load`` with
``weights_only=True`` (tensors and plain Python values, no arbitrary objects). A file that is
cut short, overwritten or not what it should hold is a :class:`SeqrecError` naming it, never a
library's traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from seqrec.errors import SeqrecError

#: what the trainer reads from its state file when it resumes
STATE_KEYS = frozenset(
    {
        "epoch",
        "settings",
        "optimizer",
        "scheduler",
        "torch_rng",
        "gen_rng",
        "numpy_rng",
        "python_rng",
        "best_score",
        "best_epoch",
        "best_valid",
        "bad_epochs",
        "history",
    }
)


def damaged(path: Path, reason: str) -> SeqrecError:
    """The error for a checkpoint file that cannot be used."""
    return SeqrecError(
        f"damaged checkpoint file: {reason}",
        where=str(path),
        hint="rerun without --resume to start the run over (the checkpoint is replaced)",
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors checkpoint file."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise damaged(path, "the file is missing") from None
    except Exception as exc:  # SafetensorError: header cut short, too large, not JSON
        raise damaged(path, f"not a readable safetensors file ({_first_line(exc)})") from None


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state (optimizer, scheduler, RNGs, early stopping) of a checkpoint."""
    try:
        state = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise damaged(path, "the file is missing") from None
    except Exception as exc:  # a zip cut short, garbage, a pickle of something else
        raise damaged(path, f"not a readable trainer state ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise damaged(path, f"holds a {type(state).__name__}, not the trainer state")
    missing = sorted(STATE_KEYS - set(state))
    if missing:
        raise damaged(path, f"the trainer state lacks {', '.join(missing)}")
    return state
