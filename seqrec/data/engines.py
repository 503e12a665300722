"""One SQLAlchemy engine per (workspace, URL) per process: cached, disposed, fork-safe.

Every job of a workspace (training, features, run history, serving) asks
:attr:`seqrec.config.Workspace.engine` for its events database engine and gets the same one, so
a process keeps one connection pool per database instead of one per call site.

- Cache: at most :data:`MAX_ENGINES` engines, least recently used first out (test sessions
  open many workspaces); an engine leaving the cache is disposed. A disposed engine still
  works (SQLAlchemy gives it a fresh pool), so a caller holding one is never broken.
- Exit: every cached engine is disposed, closing its pooled connections.
- Fork: a child process must not share the parent's pooled connections (two processes on one
  socket corrupt the protocol). After ``fork`` the child calls ``engine.dispose(close=False)`` on
  every cached engine, as SQLAlchemy documents: the child drops the pool without closing the
  parent's connections and opens its own on first use.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from pathlib import Path

from sqlalchemy import Engine

from seqrec.data.schema import make_engine

#: engines kept per process; tests make many workspaces, a real process uses one or two
MAX_ENGINES = 8

_CACHE: OrderedDict[tuple[Path, str], Engine] = OrderedDict()
_LOCK = threading.Lock()


def workspace_engine(root: Path, url: str) -> Engine:
    """The cached engine of the workspace at ``root`` for database ``url`` (built on first use)."""
    key = (root, url)
    with _LOCK:
        engine = _CACHE.get(key)
        if engine is not None:
            _CACHE.move_to_end(key)
            return engine
        engine = _CACHE[key] = make_engine(url)
        evicted = _CACHE.popitem(last=False)[1] if len(_CACHE) > MAX_ENGINES else None
    if evicted is not None:
        evicted.dispose()
    return engine


def dispose_engines(root: Path | None = None) -> int:
    """Dispose and forget the cached engines (of the workspace at ``root``, or all); returns
    how many. The next :func:`workspace_engine` call builds a new one."""
    with _LOCK:
        keys = [k for k in _CACHE if root is None or k[0] == root]
        engines = [_CACHE.pop(k) for k in keys]
    for engine in engines:
        engine.dispose()
    return len(engines)


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # the parent may have held it while forking
    for engine in _CACHE.values():
        engine.dispose(close=False)  # leave the parent's connections open, use none of them


atexit.register(dispose_engines)
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
