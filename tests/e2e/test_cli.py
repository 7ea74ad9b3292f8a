"""The CLI as a user runs it: ``ijtorch doctor`` and ``ijtorch macro`` in fresh processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.jvm
ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_doctor_reports_every_piece_and_exits_zero():
    out = _cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    for what in ("java", "javac", "jars", "display", "ImageJ", "shim", "commands", "torch"):
        assert f"[ok] {what}:" in out.stdout
    assert "ijtorch Percentile Normalize" in out.stdout
    assert out.stdout.rstrip().endswith("all good")


def test_doctor_exits_nonzero_when_imagej_is_missing(tmp_path):
    import os

    env = {**os.environ, "IJTORCH_IJ_JAR": str(tmp_path / "missing.jar")}
    out = subprocess.run([sys.executable, "-m", "ijtorch.cli", "doctor"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1
    assert "[MISSING] jars: ImageJ 1.x jar not found" in out.stdout and "libij-java" in out.stdout


def test_fiji_macro_runs_python_command_and_ext_function_headless():
    out = _cli("macro", "fiji_macros/normalize_and_version.ijm")
    assert out.returncode == 0, out.stderr
    import ijtorch

    assert out.stdout.splitlines() == [
        "image: ramp-normalized (32-bit)",
        "min=0.0000 max=1.0000 mean=0.4961",
        f"ijtorch {ijtorch.__version__} on cpu",
    ]


def test_macro_error_gives_exit_1_and_message_on_stderr(tmp_path):
    macro = tmp_path / "bad.ijm"
    macro.write_text('print("before the error");\nnewImage("a", "8-bit", 8, 8, 1);\n'
                     'run("ijtorch Percentile Normalize", "low=50 high=10");\nprint("not reached");\n')
    out = _cli("macro", str(macro))
    assert out.returncode == 1
    assert "before the error" in out.stdout and "not reached" not in out.stdout
    assert "ijtorch Percentile Normalize" in out.stderr and "low=50" in out.stderr


def test_macro_arguments_reach_getargument(tmp_path):
    macro = tmp_path / "arg.ijm"
    macro.write_text('print("arg=" + getArgument());\n')
    out = _cli("macro", str(macro), "--arg", "a", "--arg", "b c")
    assert out.returncode == 0 and out.stdout.strip() == "arg=a b c"


def test_missing_macro_file_is_a_clear_error(tmp_path):
    out = _cli("macro", str(tmp_path / "nope.ijm"))
    assert out.returncode == 2 and "no such macro file" in out.stderr
