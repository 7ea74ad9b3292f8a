"""Start a real ``ijtorch serve`` process on a free loopback port for tests and benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m ijtorch.serve`` in a subprocess; stopped by :meth:`stop` (or ``with``).

    ``launcher`` replaces ``-m ijtorch.serve`` (e.g. a script that registers something first).
    """

    def __init__(self, models_dir: Path, *args: str, startup_s: float = 60.0,
                 launcher: tuple[str, ...] = ("-m", "ijtorch.serve"), env: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, IJTORCH_MODELS=str(models_dir), **(env or {}))
        self.log_path = Path(models_dir) / f"server-{self.port}.log"
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, *launcher, "--port", str(self.port), *args],
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait(startup_s)

    def _wait(self, startup_s: float) -> None:
        import httpx

        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {startup_s} s: {self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no drain, no clean-up (as a crash or an OOM kill)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
