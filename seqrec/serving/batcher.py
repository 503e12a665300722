"""Coalescing concurrent requests into one online lookup and one model call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Coalesce concurrent calls into batches of at most ``max_batch`` for ``fn``.

    ``fn`` runs on ``executor`` (one thread): one batch at a time; whatever queued up meanwhile
    becomes the next batch. An idle batcher starts a batch on the next turn of the event loop:
    no added delay at low load, and requests that arrived together are scored together.

    ``lock`` serializes every call of ``fn`` with whatever else uses the model. While
    ``inline()`` says so (the online store answers quickly), a batch of one runs on the event
    loop itself when the lock is free: the hop to the worker thread and back costs more than it
    saves when nothing else is waiting. A slow or failing store never blocks the event loop for
    more than the one lookup that showed it (health probes stay answered).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        executor: ThreadPoolExecutor,
        max_batch: int,
        lock: threading.Lock,
        inline: Callable[[], bool] = lambda: True,
    ):
        self.fn, self.executor, self.max_batch = fn, executor, max_batch
        self.lock, self.inline = lock, inline
        self.pending: list[tuple[T, asyncio.Future[R]]] = []
        self.running = False
        self.task: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        self.pending.append((item, fut))
        if not self.running:
            self.running = True
            self.task = loop.create_task(self._drain(loop))
        return await fut

    async def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while self.pending:
                batch = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
                items = [item for item, _ in batch]
                try:
                    if len(items) == 1 and self.inline() and self.lock.acquire(blocking=False):
                        try:
                            results = self.fn(items)
                        finally:
                            self.lock.release()
                    else:
                        results = await loop.run_in_executor(self.executor, self._locked, items)
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for (_, fut), res in zip(batch, results, strict=True):
                        if not fut.done():
                            fut.set_result(res)
        finally:
            self.running = False

    def _locked(self, items: list[T]) -> list[R]:
        with self.lock:
            return self.fn(items)
