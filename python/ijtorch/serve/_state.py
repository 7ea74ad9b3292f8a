"""Server state: long-running jobs and metrics (admission by cost is in :mod:`._budget`)."""

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

from ._budget import Admission, QueueFull  # noqa: E402  (re-exported)
from ._jobstore import JobStore  # noqa: E402

log = logging.getLogger(__name__)


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
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    interrupted: bool = False  # stopped by the server's shutdown

    def as_dict(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {"id": self.id, "kind": self.kind, "status": self.status,
                "progress": {"phase": self.phase, "i": self.i, "n": self.n, "message": self.message},
                "error": self.error, "created": self.created,
                "seconds": (end - self.started) if self.started else 0.0}


def _row_dict(row: dict[str, Any]) -> dict[str, Any]:
    end = row["finished"] or time.time()
    return {"id": row["id"], "kind": row["kind"], "status": row["status"],
            "progress": {"phase": "", "i": 0, "n": 0, "message": ""}, "error": row["error"],
            "created": row["created"], "seconds": (end - row["started"]) if row["started"] else 0.0,
            "result_expired": bool(row["result_expired"])}


class JobManager:
    """Runs jobs one at a time on ``executor``; their rows and results live in a :class:`JobStore`.

    A job function ``fn(progress, cancelled) -> bytes`` gets a progress listener (taking
    :class:`ijtorch.core.progress.ProgressEvent`) and a cancel check to pass to the task. A
    queued or running job holds its admission ticket (a slot and its input's reserved bytes);
    its result goes to disk, not memory.
    """

    FINISHED = ("done", "failed", "cancelled")

    def __init__(self, executor: Executor, admission: Admission, store: JobStore, *, keep: int = 256) -> None:
        self._executor = executor
        self._admission = admission
        self.store = store
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # active ones and the last finished (for progress)
        self._lock = threading.Lock()

    def submit(self, kind: str, fn: Callable[[Callable, Callable[[], bool]], bytes], *, client: str = "",
               nbytes: int = 0) -> Job:
        ticket = self._admission.acquire(client, nbytes, retry_after=5)
        job = Job(id=secrets.token_hex(12), kind=kind)
        try:
            self.store.insert(job.id, kind, job.created)
            with self._lock:
                self._jobs[job.id] = job
                self._evict()
            self._executor.submit(self._run, job, fn, ticket)
        except Exception:  # executor shut down, database unwritable
            ticket.release()
            raise
        return job

    def _evict(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in self.FINISHED]
        for k in finished[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[k]

    def _run(self, job: Job, fn: Callable, ticket: Any) -> None:
        try:
            if job.cancel_event.is_set():
                job.status = "cancelled"
                return
            job.status, job.started = "running", time.time()
            self.store.update(job.id, status="running", started=job.started)

            def progress(event: Any) -> None:
                job.phase, job.i, job.n, job.message = event.phase, int(event.i), int(event.n), event.message

            result = fn(progress, job.cancel_event.is_set)
            if job.cancel_event.is_set():
                job.status = "cancelled"
            else:
                self.store.save_result(job.id, result)
                job.status = "done"
        except InterruptedError:
            job.status = "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported through GET /jobs/{id}
            if job.interrupted:
                raise InterruptedError from exc
            log.warning("job %s (%s) failed: %s", job.id, job.kind, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            from .requests import client_message

            job.status, job.error = "failed", client_message(f"{type(exc).__name__}: {exc}")
        finally:
            if job.interrupted and job.status != "done":
                job.status, job.error = "failed", "interrupted by shutdown"
            job.finished = time.time()
            ticket.release()
            try:
                self.store.update(job.id, status=job.status, error=job.error, finished=job.finished)
            except Exception as exc:  # noqa: BLE001 - the database went away (shutting down)
                log.warning("job %s: could not record its status: %s", job.id, exc)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            out = job.as_dict()
            if job.status == "done":
                row = self.store.get(job_id)
                out["result_expired"] = bool(row and row["result_expired"])
            return out
        row = self.store.get(job_id)
        return _row_dict(row) if row else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None and job.status not in self.FINISHED:
            job.cancel_event.set()
        return self.get(job_id)

    def stop(self) -> None:
        """The server shuts down: every queued or running job stops and is recorded as interrupted."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.status not in self.FINISHED]
        for job in jobs:
            job.interrupted = True
            job.cancel_event.set()
            try:
                self.store.update(job.id, status="failed", error="interrupted by shutdown", finished=time.time())
            except Exception:  # noqa: BLE001 - the database is gone: the next start marks it
                pass

    def active(self) -> int:
        with self._lock:
            return sum(j.status not in self.FINISHED for j in self._jobs.values())

    def counts(self) -> dict[str, int]:
        return self.store.counts()


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
    """Request counts by route and status, latencies, disconnects and CPU time, for Prometheus
    (``prometheus_client``, one registry per server) and as the JSON of ``/metrics``.

    A client that hangs up before its reply is counted with status 499 (client closed request),
    not as a server error.
    """

    def __init__(self, window: int = 20000) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._lat: dict[str, deque] = {}
        self._status: dict[str, dict[int, int]] = {}
        self._window = window
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("ijtorch_requests", "HTTP requests by route and status (499: client hung up)",
                                ["route", "status"], registry=r)
        self.latency = Histogram("ijtorch_request_seconds", "request latency by route", ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.cancelled = Counter("ijtorch_requests_cancelled", "requests stopped because their client left or "
                                 "their deadline passed", ["reason"], registry=r)
        self.work_cpu = Counter("ijtorch_work_cpu_seconds", "CPU seconds of request work on the server's threads",
                                registry=r)
        self.abandoned_cpu = Counter("ijtorch_abandoned_cpu_seconds", "CPU seconds spent on work after its "
                                     "client had left or its deadline had passed", registry=r)
        self.gauges = {name: Gauge(f"ijtorch_{name}", doc, registry=r) for name, doc in (
            ("queue_active", "requests admitted and not finished"), ("queue_limit", "--max-queue"),
            ("memory_reserved_bytes", "bytes reserved against --max-memory-gb"),
            ("memory_budget_bytes", "--max-memory-gb in bytes"), ("rss_bytes", "resident memory of the server"),
            ("jobs_active", "jobs queued or running"), ("ready", "1 when /health/ready answers 200"))}

    def record(self, route: str, status: int, seconds: float) -> None:
        self._lat.setdefault(route, deque(maxlen=self._window)).append(seconds)
        by = self._status.setdefault(route, {})
        by[status] = by.get(status, 0) + 1
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def prometheus(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def as_dict(self) -> dict[str, Any]:
        routes = {}
        for route, lat in list(self._lat.items()):
            a = np.fromiter(lat, float, len(lat))
            p50, p90, p99 = (np.percentile(a, [50, 90, 99]) * 1000).round(2).tolist() if len(a) else (0, 0, 0)
            routes[route] = {"count": sum(self._status[route].values()),
                             "status": {str(k): v for k, v in sorted(self._status[route].items())},
                             "latency_ms": {"p50": p50, "p90": p90, "p99": p99, "window": len(a)}}
        return {"uptime_s": round(time.time() - self.started, 1), "routes": routes,
                "cpu_seconds": {"work": round(self.work_cpu._value.get(), 3),
                                "abandoned": round(self.abandoned_cpu._value.get(), 3)}}


def gpu_memory() -> dict[str, Any] | None:
    """CUDA memory figures when torch is loaded and CUDA is in use; else None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return {"device": torch.cuda.get_device_name(), "allocated_bytes": int(torch.cuda.memory_allocated()),
            "reserved_bytes": int(torch.cuda.memory_reserved()),
            "max_allocated_bytes": int(torch.cuda.max_memory_allocated())}
