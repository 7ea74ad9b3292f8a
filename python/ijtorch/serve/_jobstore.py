"""Jobs kept in an embedded SQLite database, their results in files next to it.

A job's row is written when it is queued and at every change of status (queued, running, done,
failed, cancelled); progress lives in memory only. A finished job's reply is a file in
``results/``, written atomically. When the server starts, every job the previous process left
queued or running is marked failed with ``"interrupted by restart"``, so a client polling it learns
what happened instead of getting "unknown job". Results expire by age (``ttl_s``) and by total size
(``max_bytes``, oldest first); the job row then says ``result_expired``.

One server at a time may use a state folder (an ``flock`` on ``jobs.lock``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["JobStore", "INTERRUPTED"]

INTERRUPTED = "interrupted by restart"
_COLUMNS = ("id", "kind", "status", "error", "created", "started", "finished", "result_bytes", "result_expired")


class JobStore:
    def __init__(self, folder: Path, *, ttl_s: float = 24 * 3600.0, max_bytes: int = 2 << 30) -> None:
        self.folder = Path(folder)
        self.results = self.folder / "results"
        self.results.mkdir(parents=True, exist_ok=True)
        self.ttl_s, self.max_bytes = float(ttl_s), int(max_bytes)
        self._lockfile = open(self.folder / "jobs.lock", "w")
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise RuntimeError(f"another ijtorch server uses the state folder {self.folder}; give this one "
                               "its own --state-dir") from None
        self._db = sqlite3.connect(self.folder / "jobs.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT, status TEXT, error TEXT, "
                         "created REAL, started REAL, finished REAL, result_bytes INTEGER DEFAULT 0, "
                         "result_expired INTEGER DEFAULT 0)")
        self._lock = threading.Lock()
        now = time.time()
        with self._lock:
            self.interrupted = self._db.execute(
                "UPDATE jobs SET status='failed', error=?, finished=? WHERE status IN ('queued', 'running')",
                (INTERRUPTED, now)).rowcount
        for f in self.results.glob("*.tmp"):
            f.unlink(missing_ok=True)
        self.expire()

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._lockfile.close()

    # ---- rows
    def insert(self, job_id: str, kind: str, created: float) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, kind, status, created) VALUES (?, ?, 'queued', ?)",
                             (job_id, kind, created))

    def update(self, job_id: str, **fields: Any) -> None:
        keys = [k for k in fields if k in _COLUMNS and k != "id"]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {', '.join(k + '=?' for k in keys)} WHERE id=?",
                             [fields[k] for k in keys] + [job_id])

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return dict(zip(_COLUMNS, row)) if row else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    # ---- results
    def result_path(self, job_id: str) -> Path:
        return self.results / f"{job_id}.bin"

    def save_result(self, job_id: str, data: bytes) -> None:
        tmp = self.results / f"{job_id}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.result_path(job_id))
        self.update(job_id, result_bytes=len(data), status="done", finished=time.time())
        self.expire()

    def expire(self) -> int:
        """Drop results older than ``ttl_s`` and the oldest beyond ``max_bytes``; returns how many."""
        now = time.time()
        with self._lock:
            rows = self._db.execute("SELECT id, finished, result_bytes FROM jobs WHERE status='done' AND "
                                    "result_expired=0 ORDER BY finished DESC").fetchall()
        total, drop = 0, []
        for job_id, finished, nbytes in rows:
            total += nbytes or 0
            if total > self.max_bytes or (finished or now) < now - self.ttl_s:
                drop.append(job_id)
        for job_id in drop:
            self.result_path(job_id).unlink(missing_ok=True)
            self.update(job_id, result_expired=1)
        return len(drop)
