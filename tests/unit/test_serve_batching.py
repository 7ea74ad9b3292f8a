"""The server's dynamic batcher (``ijtorch.serve.batcher``) on a real event loop and real threads.

Batches are made to overlap deterministically by blocking the batch function on events, never by
sleeping: an idle batcher runs a lone request at once, requests that queue while a batch runs
form the next batch (up to ``max_batch``), one item's error stays its own, cancelled requests
are dropped, and partial batches wait while the finish stage has a backlog (requests without a
finish stage do not)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ijtorch.serve.batcher import DynamicBatcher


class Recorder:
    """A batch function that records its batches and can be held at its start."""

    def __init__(self) -> None:
        self.batches: list[list] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, key, payloads):
        self.batches.append(list(payloads))
        self.started.set()
        self.release.wait(30)
        return [ValueError(f"bad {p}") if p == "bad" else (key, p * 10) for p in payloads]


def run(coro_fn, **kwargs):
    """Run ``coro_fn(batcher, recorder)`` with a fresh batcher on one-thread executors."""
    rec = Recorder()

    async def main():
        with ThreadPoolExecutor(1) as infer, ThreadPoolExecutor(1) as post:
            batcher = DynamicBatcher(rec, infer, finish_executor=post, **kwargs)
            try:
                return await asyncio.wait_for(coro_fn(batcher, rec), 60)
            finally:
                await batcher.stop()

    return asyncio.run(main()), rec


async def until(event: threading.Event) -> None:
    await asyncio.get_running_loop().run_in_executor(None, event.wait, 30)
    assert event.is_set()


def test_an_idle_batcher_runs_a_lone_request_at_once_even_with_a_long_wait():
    async def body(batcher, rec):
        return await batcher.submit("k", 1)  # wait_s is an hour: only a busy pipeline may wait

    result, rec = run(body, max_batch=8, wait_s=3600)
    assert result == ("k", 10) and rec.batches == [[1]]


def test_requests_arriving_while_a_batch_runs_form_the_next_batch():
    async def body(batcher, rec):
        rec.release.clear()
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await until(rec.started)  # the lone first request runs at once
        rest = [asyncio.ensure_future(batcher.submit("k", p)) for p in (2, 3, 4)]
        other = asyncio.ensure_future(batcher.submit("other", 5))
        await asyncio.sleep(0)
        rec.release.set()
        return await asyncio.gather(first, *rest, other)

    results, rec = run(body, max_batch=8)
    assert results == [("k", 10), ("k", 20), ("k", 30), ("k", 40), ("other", 50)]
    assert rec.batches == [[1], [2, 3, 4], [5]]  # one batch per key, the oldest key first


def test_batches_are_at_most_max_batch_and_oldest_first():
    async def body(batcher, rec):
        rec.release.clear()
        first = asyncio.ensure_future(batcher.submit("k", 0))
        await until(rec.started)
        rest = [asyncio.ensure_future(batcher.submit("k", p)) for p in range(1, 6)]
        await asyncio.sleep(0)
        rec.release.set()
        return await asyncio.gather(first, *rest)

    results, rec = run(body, max_batch=2)
    assert [r[1] for r in results] == [0, 10, 20, 30, 40, 50]
    assert rec.batches == [[0], [1, 2], [3, 4], [5]]


def test_max_batch_1_runs_every_request_alone():
    async def body(batcher, rec):
        rec.release.clear()
        first = asyncio.ensure_future(batcher.submit("k", 0))
        await until(rec.started)
        rest = [asyncio.ensure_future(batcher.submit("k", p)) for p in range(1, 4)]
        await asyncio.sleep(0)
        rec.release.set()
        return await asyncio.gather(first, *rest)

    results, rec = run(body, max_batch=1)
    assert [r[1] for r in results] == [0, 10, 20, 30] and rec.batches == [[0], [1], [2], [3]]


def test_an_item_error_fails_only_its_request_and_a_batch_error_only_its_batch():
    calls = []

    def flaky(key, payloads):
        calls.append(list(payloads))
        if "boom" in payloads:
            raise RuntimeError("the whole batch failed")
        return [ValueError("bad item") if p == "bad" else p.upper() for p in payloads]

    async def main():
        with ThreadPoolExecutor(1) as infer:
            batcher = DynamicBatcher(flaky, infer, max_batch=8)
            gate = threading.Event()
            blocker = asyncio.get_running_loop().run_in_executor(infer, gate.wait, 30)  # keeps the thread busy
            first = asyncio.ensure_future(batcher.submit("k", "a"))
            await asyncio.sleep(0)
            more = [asyncio.ensure_future(batcher.submit("k", p)) for p in ("bad", "c")]
            gate.set()
            await blocker
            out = await asyncio.gather(first, *more, return_exceptions=True)
            boom = await asyncio.gather(batcher.submit("k", "boom"), return_exceptions=True)
            after = await batcher.submit("k", "d")
            await batcher.stop()
            return out, boom, after

    (out, boom, after) = asyncio.run(main())
    assert out[0] == "A" and out[2] == "C"
    assert isinstance(out[1], ValueError) and "bad item" in str(out[1])
    assert isinstance(boom[0], RuntimeError) and "whole batch" in str(boom[0])
    assert after == "D"  # the batcher keeps serving after a failed batch


def test_a_cancelled_request_is_dropped_before_its_batch_runs():
    async def body(batcher, rec):
        rec.release.clear()
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await until(rec.started)
        gone = asyncio.ensure_future(batcher.submit("k", 2))
        kept = asyncio.ensure_future(batcher.submit("k", 3))
        await asyncio.sleep(0)
        gone.cancel()
        rec.release.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await asyncio.gather(first, kept)

    results, rec = run(body, max_batch=8)
    assert results == [("k", 10), ("k", 30)] and rec.batches == [[1], [3]]


def test_finish_runs_per_request_and_its_error_stays_its_own():
    async def body(batcher, rec):
        def finish(res):
            if res[1] == 20:
                raise KeyError("finish failed")
            return (threading.current_thread().name, res[1] + 1)

        return await asyncio.gather(*(batcher.submit("k", p, finish=finish) for p in (1, 2, 3)),
                                    return_exceptions=True)

    results, rec = run(body, max_batch=8)
    assert results[0][1] == 11 and results[2][1] == 31 and isinstance(results[1], KeyError)
    assert results[0][0] != threading.current_thread().name  # not on the event loop's thread


def test_partial_batches_wait_while_the_finish_stage_has_a_backlog():
    async def body(batcher, rec):
        # one request whose finish takes far longer than its forward pass: the batcher learns so
        await batcher.submit("k", 0, finish=lambda r: time.sleep(0.3) or r)
        gate = threading.Event()
        stuck = asyncio.ensure_future(batcher.submit("k", 1, finish=lambda r: gate.wait(30) and r))
        while len(rec.batches) < 2:  # runs at once: nothing else is in the pipeline
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(batcher.submit("k", p, finish=lambda r: r)) for p in (2, 3, 4)]
        for _ in range(20):
            await asyncio.sleep(0)
        held = len(batcher)  # still queued: their forward pass would finish long before the finish stage
        gate.set()
        results = await asyncio.gather(stuck, *queued)
        return held, results

    (held, results), rec = run(body, max_batch=8)
    assert held == 3
    assert [r[1] for r in results] == [10, 20, 30, 40]
    assert rec.batches == [[0], [1], [2, 3, 4]]


def test_a_request_without_finish_is_not_held_behind_the_finish_stage_backlog():
    async def body(batcher, rec):  # as above; then a request of another key without a second stage
        await batcher.submit("k", 0, finish=lambda r: time.sleep(0.3) or r)
        gate = threading.Event()
        stuck = asyncio.ensure_future(batcher.submit("k", 1, finish=lambda r: gate.wait(30) and r))
        while len(rec.batches) < 2:
            await asyncio.sleep(0.01)
        queued = [asyncio.ensure_future(batcher.submit("k", p, finish=lambda r: r)) for p in (2, 3, 4)]
        for _ in range(20):
            await asyncio.sleep(0)
        plain = await batcher.submit("c", 5)  # its result waits for no finish stage: it runs now
        held = len(batcher)
        gate.set()
        results = await asyncio.gather(stuck, *queued)
        return plain, held, results

    (plain, held, results), rec = run(body, max_batch=8)
    assert plain == ("c", 50) and held == 3
    assert [r[1] for r in results] == [10, 20, 30, 40]
    assert rec.batches == [[0], [1], [5], [2, 3, 4]]


def test_stop_fails_waiting_requests():
    async def body(batcher, rec):
        rec.release.clear()
        first = asyncio.ensure_future(batcher.submit("k", 1))
        await until(rec.started)
        waiting = asyncio.ensure_future(batcher.submit("k", 2))
        await asyncio.sleep(0)
        await batcher.stop()
        rec.release.set()
        return await asyncio.gather(first, waiting, return_exceptions=True)

    results, rec = run(body, max_batch=8)
    assert all(isinstance(r, RuntimeError) and "shutting down" in str(r) for r in results)


@pytest.mark.parametrize("kwargs, message", [({"max_batch": 0}, "max_batch=0"), ({"wait_s": -1}, "wait_s=-1")])
def test_bad_settings_are_refused(kwargs, message):
    with ThreadPoolExecutor(1) as ex, pytest.raises(ValueError, match=message):
        DynamicBatcher(lambda k, p: p, ex, **kwargs)


def test_memory_is_trimmed_only_when_idle_after_work(monkeypatch):
    from ijtorch.serve import app as app_module
    from ijtorch.serve._state import Admission

    calls = []
    monkeypatch.setattr(app_module, "release_free_memory", lambda: calls.append(1) or True)
    admission = Admission(4)

    async def scenario():
        task = asyncio.create_task(app_module._trim_memory_when_idle(admission, interval_s=0.01))
        await asyncio.sleep(0.05)
        assert calls == []                      # nothing served yet: nothing to give back
        ticket = admission.acquire()
        await asyncio.sleep(0.05)
        assert calls == []                      # busy: never trims under load
        ticket.release()
        await asyncio.sleep(0.05)
        assert calls == [1]                     # idle after work: trims once
        await asyncio.sleep(0.05)
        assert calls == [1]                     # and not again until more work happened
        task.cancel()

    asyncio.run(scenario())
