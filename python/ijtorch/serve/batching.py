"""Dynamic batching: requests for the same model and image shape that arrive within a short
window run as one batch on the inference thread.

The batcher lives on the server's event loop. :meth:`DynamicBatcher.submit` parks a request under
its key (e.g. ``(model, shape)``) and returns its result when the batch it joined has run. A
single worker takes the oldest waiting key, waits up to ``wait_s`` for more requests of that key
(or until ``max_batch`` are waiting) and hands the batch to ``run_batch`` on the inference
executor, which delivers one result or one exception per payload, so a failing item fails only
its own request. While a batch runs, new requests queue up and form the
next batch, so batches grow with load by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

__all__ = ["DynamicBatcher", "BatchStats"]

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """Counters for ``/metrics``."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def record(self, n: int) -> None:
        self.batches += 1
        self.items += n
        self.largest = max(self.largest, n)
        self.sizes[n] = self.sizes.get(n, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "items": self.items, "largest": self.largest,
                "mean_size": self.items / self.batches if self.batches else 0.0,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class DynamicBatcher:
    """Group concurrent requests by key and run each group as one batch.

    Parameters
    ----------
    run_batch
        ``run_batch(key, payloads, deliver)`` runs on ``executor`` and calls ``deliver(i, result)``
        (a result or an exception instance) for every payload as soon as that one is ready, so
        early items of a batch are answered while later ones are still post-processed.
    executor
        Where batches run (one thread: the network runs one batch at a time).
    max_batch
        Largest batch; ``1`` switches batching off (every request runs alone).
    wait_s
        How long the first request of a batch waits for company.
    """

    def __init__(self, run_batch: Callable[[Hashable, Sequence[Any], Callable[[int, Any], None]], None], executor: Executor, *,
                 max_batch: int = 8, wait_s: float = 0.005) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r}: expected an integer >= 1")
        if wait_s < 0:
            raise ValueError(f"wait_s={wait_s!r}: expected a duration >= 0")
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch = int(max_batch)
        self.wait_s = float(wait_s)
        self._pending: OrderedDict[Hashable, list[tuple[Any, asyncio.Future, float]]] = OrderedDict()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.stats = BatchStats()

    def __len__(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def start(self) -> None:
        """Start the worker on the running event loop (idempotent)."""
        if self._worker is None or self._worker.done():
            self._wake = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="ijtorch-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        for items in self._pending.values():
            for _, fut, _ in items:
                if not fut.done():
                    fut.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()

    async def submit(self, key: Hashable, payload: Any) -> Any:
        """Queue ``payload`` under ``key``; returns its result or raises its exception."""
        self.start()
        fut = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append((payload, fut, time.monotonic()))
        assert self._wake is not None
        self._wake.set()
        try:
            return await fut
        except asyncio.CancelledError:  # the client went away: drop the item if it has not run yet
            items = self._pending.get(key)
            if items:
                self._pending[key] = [it for it in items if it[1] is not fut]
                if not self._pending[key]:
                    del self._pending[key]
            raise

    async def _work(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._pending))  # the key waiting longest (insertion order)
            oldest = self._pending[key][0][2]
            delay = self.wait_s - (time.monotonic() - oldest)
            if self.max_batch > 1 and delay > 0 and len(self._pending[key]) < self.max_batch:
                await asyncio.sleep(delay)
                if key not in self._pending:
                    continue
            items = self._pending.pop(key)
            batch, rest = items[: self.max_batch], items[self.max_batch:]
            if rest:  # keep the overflow at the front: it is the oldest work
                self._pending[key] = rest
                self._pending.move_to_end(key, last=False)
            batch = [it for it in batch if not it[1].done()]
            if not batch:
                continue
            self.stats.record(len(batch))
            futures = [b[1] for b in batch]

            def settle(index: int, res: Any, futures: list = futures) -> None:
                fut = futures[index]
                if fut.done():
                    return
                if isinstance(res, BaseException):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

            def deliver(index: int, res: Any) -> None:  # called on the inference thread
                loop.call_soon_threadsafe(settle, index, res)

            try:
                await loop.run_in_executor(self._executor, self._run_batch, key, [b[0] for b in batch], deliver)
            except Exception as exc:  # noqa: BLE001 - the batch failed: items not yet answered get the error
                log.warning("batch for %r failed: %s", key, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                for i in range(len(batch)):
                    settle(i, exc)
            await asyncio.sleep(0)  # let the deliveries queued by the inference thread run first
            for i, fut in enumerate(futures):
                if not fut.done():
                    settle(i, RuntimeError("internal error: the batch gave no result for this request"))
