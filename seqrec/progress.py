"""Progress bars that stay readable in logs: live on a terminal, sparse when piped."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bar(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """tqdm on stderr; on a non-terminal it redraws at most every 10 s instead of constantly."""
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", 10.0)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
