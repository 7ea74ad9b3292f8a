"""``ijtorch doctor``: check every piece ijtorch needs and say how to fix what is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import TextIO

__all__ = ["run_doctor"]


def _java_version(java: str) -> str:
    out = subprocess.run([java, "-version"], capture_output=True, text=True)
    # Java prints "Picked up JDK_JAVA_OPTIONS: ..." (or "NOTE: Picked up ...") before its version
    # when such a variable is set; skip those notes.
    lines = [ln for ln in (out.stderr or out.stdout).splitlines()
             if ln.strip() and not ln.removeprefix("NOTE: ").startswith("Picked up")]
    return lines[0] if lines else "unknown"


def run_doctor(*, fiji: str | None = None, stream: TextIO) -> int:
    """Print a report; return 0 when everything works, 1 otherwise."""
    from .bridge._runtime import APT_HINT, embedded_classpath, fiji_classpath, find_java
    from .errors import IjtorchError

    problems = 0

    def line(ok: bool, what: str, detail: str) -> None:
        nonlocal problems
        problems += 0 if ok else 1
        stream.write(f"[{'ok' if ok else 'MISSING'}] {what}: {detail}\n")

    try:
        java = find_java()
        line(True, "java", f"{java} ({_java_version(java)})")
    except IjtorchError as exc:
        line(False, "java", str(exc))
    javac = shutil.which("javac")
    line(javac is not None, "javac", javac or f"not found; install with: {APT_HINT}")
    fiji = fiji or os.environ.get("IJTORCH_FIJI")
    try:
        jars = fiji_classpath(fiji) if fiji else embedded_classpath()
        line(True, "jars", f"{len(jars)} jar(s) ({'Fiji ' + str(fiji) if fiji else 'embedded: ' + ', '.join(str(j) for j in jars)})")
    except IjtorchError as exc:
        line(False, "jars", str(exc))
    display = os.environ.get("DISPLAY")
    xvfb = shutil.which("Xvfb")
    line(bool(display) or xvfb is not None, "display",
         f"DISPLAY={display}" if display else (f"private Xvfb ({xvfb})" if xvfb else "no DISPLAY and no Xvfb; install with: apt-get install -y xvfb"))
    if problems == 0:
        try:
            from . import bridge

            rt = bridge.start(fiji=fiji)
            line(True, "ImageJ", f"{rt.imagej_version} ({rt.mode} mode, Java {rt.java_version}, display {rt.display})")
            line(True, "shim", rt.shim_jar)
            line(True, "commands", ", ".join(sorted(bridge.registered_commands())) or "none")
        except Exception as exc:  # report, don't crash: this is the diagnostic tool
            line(False, "ImageJ", f"failed to start: {exc}")
    try:
        import torch

        from .models.device import default_device

        line(True, "torch", f"{torch.__version__}, default device {default_device()}")
    except ImportError:
        line(False, "torch", "not installed; install the CPU wheel with: pip install torch==2.13.0")
    stream.write("all good\n" if problems == 0 else f"{problems} problem(s) found\n")
    return 0 if problems == 0 else 1
