"""Dynamic batching: requests for the same model and image shape run as one forward pass on the
inference thread, and each request's own post-processing runs on a second thread.

The batcher lives on the server's event loop and is a two-stage pipeline:

1. ``run_batch(key, payloads)`` on the inference executor: the work a batch shares (one forward
   pass over all images of one key, e.g. ``(model, shape)``);
2. ``finish(result)`` per request on the post-processing executor: the work batching cannot share
   (non-maximum suppression, label rendering), overlapping the next forward pass.

The window is adaptive: a request that finds the pipeline empty runs at once, alone, so a quiet
server adds no latency; requests that arrive while a forward pass runs form the next batch, so
batches grow with load. A partial batch is also held back while the post-processing stage has
more work queued than a forward pass takes (``backlog x mean finish time > mean batch time``):
running it sooner would only make its results wait in that queue, and holding it lets later
requests join. Requests without a second stage (classification: ``submit`` without ``finish``)
end after stage 1 and are never held for that reason, nor queued behind a held batch of another
key. ``wait_s`` optionally adds a short wait for company while the pipeline is busy.

Hand-written because the serving systems that batch (Triton, TorchServe, Ray Serve) are separate
servers; this is one small asyncio loop inside ours.
"""

from __future__ import annotations

import asyncio
import logging
import math
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


class _Average:
    """Exponentially weighted mean of durations (``None`` until the first one)."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight, self.value = weight, None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)


@dataclass
class _Item:
    payload: Any
    future: asyncio.Future
    arrived: float
    has_finish: bool


class DynamicBatcher:
    """Group concurrent requests by key, run each group as one batch, finish each request alone.

    Parameters
    ----------
    run_batch
        ``run_batch(key, payloads) -> results`` runs on ``executor`` and returns one result per
        payload, in order; an exception instance in that list fails only its own request, an
        exception raised fails the whole batch.
    executor
        Where batches run (one thread: the network runs one batch at a time).
    finish_executor
        Where the ``finish`` callables given to :meth:`submit` run (one thread is enough: the work
        is mostly Python and holds the GIL). ``None``: asyncio's default executor.
    max_batch
        Largest batch; ``1`` switches batching off (every request runs alone, through the same code).
    wait_s
        While other requests are in the pipeline, a partial batch may wait up to this long after
        its oldest request arrived for more company (never when the server is idle). ``0``, the
        default: batches form only from requests that queue while the pipeline is busy.
    """

    def __init__(self, run_batch: Callable[[Hashable, Sequence[Any]], Sequence[Any]], executor: Executor, *,
                 finish_executor: Executor | None = None, max_batch: int = 8, wait_s: float = 0.0) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch!r}: expected an integer >= 1")
        if wait_s < 0:
            raise ValueError(f"wait_s={wait_s!r}: expected a duration >= 0")
        self._run_batch = run_batch
        self._executor = executor
        self._finish_executor = finish_executor
        self.max_batch = int(max_batch)
        self.wait_s = float(wait_s)
        self._pending: OrderedDict[Hashable, list[_Item]] = OrderedDict()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._running: list[asyncio.Future] = []  # the futures of the batch on the executor
        self._backlog = 0  # requests queued or running in the finish stage
        self._batch_seconds = _Average()
        self._finish_seconds = _Average()
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
        waiting = [it.future for items in self._pending.values() for it in items]
        for fut in waiting + self._running:
            if not fut.done():
                fut.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()
        self._running = []

    async def submit(self, key: Hashable, payload: Any, finish: Callable[[Any], Any] | None = None) -> Any:
        """Queue ``payload`` under ``key``; returns ``finish(result)`` (or the batch's result when
        ``finish`` is None) or raises the exception of either stage."""
        self.start()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.setdefault(key, []).append(_Item(payload, fut, time.monotonic(), finish is not None))
        self._notify()
        try:
            result = await fut
        except asyncio.CancelledError:  # the client went away: drop the item if it has not run yet
            if fut.done() and not fut.cancelled() and fut.exception() is None and finish is not None:
                self._finished_one()  # counted into the backlog when its result came, never to be finished
            items = self._pending.get(key)
            if items:
                self._pending[key] = [it for it in items if it.future is not fut]
                if not self._pending[key]:
                    del self._pending[key]
            raise
        if finish is None:
            return result

        def timed() -> Any:
            t0 = time.perf_counter()
            try:
                return finish(result)
            finally:
                self._finish_seconds.add(time.perf_counter() - t0)

        try:
            return await loop.run_in_executor(self._finish_executor, timed)
        finally:
            self._finished_one()

    def _finished_one(self) -> None:
        self._backlog -= 1
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _hold(self, key: Hashable) -> float:
        """How long a batch of ``key`` should wait for company: 0 (run now), or until the next
        arrival or finished request (``inf``), or at most that many seconds."""
        items = self._pending[key]
        if self.max_batch == 1 or len(items) >= self.max_batch or not self._backlog:
            return 0.0  # full, or nothing else in the pipeline: run at once
        finish, batch = self._finish_seconds.value, self._batch_seconds.value
        if (finish is not None and batch is not None and self._backlog * finish > batch
                and any(it.has_finish for it in items)):
            return math.inf  # its results would only queue behind the finish stage's backlog
        return max(0.0, self.wait_s - (time.monotonic() - items[0].arrived))

    def _take(self, key: Hashable) -> list[_Item]:
        """Up to ``max_batch`` live items of ``key``, oldest first; the overflow stays at the front."""
        items = [it for it in self._pending.pop(key) if not it.future.done()]
        batch, rest = items[: self.max_batch], items[self.max_batch:]
        if rest:  # the oldest work: it goes next
            self._pending[key] = rest
            self._pending.move_to_end(key, last=False)
        return batch

    async def _work(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            if not self._pending:
                await self._wake.wait()
                continue
            # the key waiting longest (insertion order) whose batch need not wait: a held batch
            # does not block the keys behind it (e.g. classification behind segmentation's backlog)
            holds = {k: self._hold(k) for k in self._pending}
            key = next((k for k, h in holds.items() if h <= 0), None)
            if key is None:  # a new request or a finished one may change the answer: look again then
                hold = min(holds.values())
                try:
                    await asyncio.wait_for(self._wake.wait(), None if hold == math.inf else hold)
                except asyncio.TimeoutError:
                    pass
                continue
            batch = self._take(key)
            if not batch:
                continue
            self.stats.record(len(batch))
            self._running = [it.future for it in batch]
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch, key, [it.payload for it in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"internal error: a batch of {len(batch)} gave {len(results)} results")
            except Exception as exc:  # noqa: BLE001 - the batch failed: each of its requests gets the error
                log.warning("batch for %r failed: %s", key, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                results = [exc] * len(batch)
            self._batch_seconds.add(time.perf_counter() - t0)
            for it, res in zip(batch, results):
                if it.future.done():  # cancelled while its batch ran
                    continue
                if isinstance(res, BaseException):
                    it.future.set_exception(res)
                else:
                    it.future.set_result(res)
                    # counted here, not when submit() resumes, so that the next _hold() sees it
                    self._backlog += int(it.has_finish)
            self._running = []
