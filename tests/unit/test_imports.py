"""House rule: only ijtorch.bridge may touch Java; everything else imports without a JVM."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import ijtorch


def test_every_non_bridge_module_imports_without_jvm_or_torch_side_effects():
    names = [m.name for m in pkgutil.walk_packages(ijtorch.__path__, "ijtorch.")
             if ".bridge" not in m.name and not m.name.endswith("__main__")]
    assert len(names) > 5
    code = (
        "import importlib, sys\n"
        f"for n in {names!r}: importlib.import_module(n)\n"
        "bad = [m for m in ('jpype', 'scyjava', 'imagej') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok', len(sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_importing_ijtorch_and_bridge_starts_nothing():
    code = ("import sys, ijtorch, ijtorch.bridge as b\n"
            "assert not b.is_started()\n"
            "assert 'torch' not in sys.modules, 'torch imported at import time'\n"
            "import jpype; assert not jpype.isJVMStarted()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
