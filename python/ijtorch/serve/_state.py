"""Server state: admission (bounded queue), long-running jobs and metrics."""

from __future__ import annotations

import logging
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Admission", "QueueFull", "Job", "JobManager", "Metrics", "rss_bytes", "release_free_memory"]

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More work is queued or running than ``--max-queue`` allows (HTTP 503)."""

    def __init__(self, active: int, limit: int, retry_after: int) -> None:
        super().__init__(f"the server is busy: {active} requests queued or running (limit {limit}); "
                         f"retry in {retry_after} s")
        self.retry_after = retry_after


class Admission:
    """A counter of queued + running work with a hard limit (thread-safe)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"max_queue={limit!r}: expected an integer >= 1")
        self.limit = int(limit)
        self._active = 0
        self._lock = threading.Lock()
        self.rejected = 0
        self.admitted = 0  # ever admitted: lets an idle-time task see that work happened since it last looked

    @property
    def active(self) -> int:
        return self._active

    def acquire(self, retry_after: int = 1) -> None:
        with self._lock:
            if self._active >= self.limit:
                self.rejected += 1
                raise QueueFull(self._active, self.limit, retry_after)
            self._active += 1
            self.admitted += 1

    def release(self) -> None:
        with self._lock:
            self._active -= 1


@dataclass
class Job:
    """A long-running request: queued, running, done, failed or cancelled."""

    id: str
    kind: str
    status: str = "queued"
    phase: str = ""
    i: int = 0
    n: int = 0
    message: str = ""
    error: str | None = None
    result: bytes | None = field(default=None, repr=False)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def as_dict(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {"id": self.id, "kind": self.kind, "status": self.status,
                "progress": {"phase": self.phase, "i": self.i, "n": self.n, "message": self.message},
                "error": self.error, "created": self.created,
                "seconds": (end - self.started) if self.started else 0.0}


class JobManager:
    """Runs jobs one at a time on ``executor``; keeps the last ``keep`` finished ones for reading.

    A job function ``fn(progress, cancelled) -> bytes`` gets a progress listener (taking
    :class:`ijtorch.train.progress.ProgressEvent`) and a cancel check to pass to the task.
    """

    FINISHED = ("done", "failed", "cancelled")

    def __init__(self, executor: Executor, admission: Admission, *, keep: int = 256) -> None:
        self._executor = executor
        self._admission = admission
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, fn: Callable[[Callable, Callable[[], bool]], bytes]) -> Job:
        self._admission.acquire(retry_after=5)
        job = Job(id=secrets.token_hex(12), kind=kind)
        with self._lock:
            self._jobs[job.id] = job
            self._evict()
        try:
            self._executor.submit(self._run, job, fn)
        except RuntimeError:  # executor shut down
            self._admission.release()
            raise
        return job

    def _evict(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in self.FINISHED]
        for k in finished[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[k]

    def _run(self, job: Job, fn: Callable) -> None:
        try:
            if job.cancel_event.is_set():
                job.status = "cancelled"
                return
            job.status, job.started = "running", time.time()

            def progress(event: Any) -> None:
                job.phase, job.i, job.n, job.message = event.phase, int(event.i), int(event.n), event.message

            job.result = fn(progress, job.cancel_event.is_set)
            job.status = "cancelled" if job.cancel_event.is_set() else "done"
        except InterruptedError:
            job.status = "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported through GET /jobs/{id}
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.finished = time.time()
            if job.status == "cancelled":
                job.result = None
            self._admission.release()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.status not in self.FINISHED:
            job.cancel_event.set()
        return job

    def counts(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for j in self._jobs.values():
                out[j.status] = out.get(j.status, 0) + 1
            return out


def release_free_memory() -> bool:
    """Return freed heap memory to the operating system (glibc ``malloc_trim``).

    After a burst of requests glibc keeps the freed buffers of its per-thread arenas mapped, so the
    server's resident memory stays at the burst's high-water mark although nothing leaks; trimming
    when the server is idle brings it back to its working set. False where glibc is not available.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; else the peak from ``resource``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


class Metrics:
    """Request counts by route and status, and recent latencies for percentiles."""

    def __init__(self, window: int = 20000) -> None:
        self._lat: dict[str, deque] = {}
        self._status: dict[str, dict[int, int]] = {}
        self._window = window
        self.started = time.time()

    def record(self, route: str, status: int, seconds: float) -> None:
        self._lat.setdefault(route, deque(maxlen=self._window)).append(seconds)
        by = self._status.setdefault(route, {})
        by[status] = by.get(status, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        routes = {}
        for route, lat in self._lat.items():
            a = np.fromiter(lat, float, len(lat))
            p50, p90, p99 = (np.percentile(a, [50, 90, 99]) * 1000).round(2).tolist() if len(a) else (0, 0, 0)
            routes[route] = {"count": sum(self._status[route].values()),
                             "status": {str(k): v for k, v in sorted(self._status[route].items())},
                             "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "window": len(a)}}
        return {"uptime_s": round(time.time() - self.started, 1), "routes": routes}


def gpu_memory() -> dict[str, Any] | None:
    """CUDA memory figures when torch is loaded and CUDA is in use; else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return {"device": torch.cuda.get_device_name(), "allocated_bytes": int(torch.cuda.memory_allocated()),
            "reserved_bytes": int(torch.cuda.memory_reserved()),
            "max_allocated_bytes": int(torch.cuda.max_memory_allocated())}
