"""Helpers for the real-Fiji tests: skipped without IJTORCH_FIJI; each scenario runs in a fresh Python process
(one JVM per process, and the embedded tests already own the pytest process's JVM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


FIJI = os.environ.get("IJTORCH_FIJI")
ROOT = Path(__file__).resolve().parents[2]


def run_in_fiji(code: str, tmp_path: Path, *, env: dict | None = None, timeout: int = 400,
                python: str | None = None) -> dict:
    """Run ``code`` in a new Python process (``python``, default this one) with IJTORCH_FIJI set; it
    reports by calling ``report(**values)``; returns those values. Fails with the process output on error."""
    script = tmp_path / "fiji_scenario.py"
    script.write_text("import json, os, sys\n"
                      "def report(**values):\n"
                      "    print('RESULT ' + json.dumps(values), flush=True)\n"
                      "JAVA_OPTIONS = os.environ.get('IJTORCH_JAVA_OPTIONS', '').split()  # for jpype.startJVM\n"
                      + textwrap.dedent(code))
    home = tmp_path / "home"  # Java's preferences (user.home comes from the password database) and $HOME
    home.mkdir(exist_ok=True)
    full_env = {**os.environ, "IJTORCH_FIJI": FIJI or "", "HOME": str(home),
                "IJTORCH_JAVA_OPTIONS": f"-Duser.home={home}", **(env or {})}
    proc = subprocess.run([python or sys.executable, str(script)], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env=full_env)
    results = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    noise = "\n".join(line for line in proc.stderr.splitlines() if not line.lstrip().startswith("at "))
    assert proc.returncode == 0 and results, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{noise[-4000:]}"
    return json.loads(results[-1])


SHARED_DATA = Path(os.environ.get("IJTORCH_SHARED_DATA", ROOT.parent / "shared" / "data"))
