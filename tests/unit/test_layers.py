"""The layering of docs/architecture.md, checked by import-linter (grimp reads every import
statement, function-level ones included) against the contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _lint(config: Path, cwd: Path = ROOT / "python") -> subprocess.CompletedProcess:
    """lint-imports in its own process, with ``cwd`` first on the path (the checkout's package, not an
    installed copy) and no cache written into the checkout."""
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))")
    return subprocess.run([sys.executable, "-c", code, str(config), str(cwd)], cwd=cwd, capture_output=True,
                          text=True)


def test_the_layering_contracts_hold():
    pytest.importorskip("importlinter")
    out = _lint(ROOT / "pyproject.toml")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout and out.stdout.count("KEPT") == 3


def test_a_forbidden_import_breaks_the_contracts(tmp_path):
    """The check can fail: a copy of the package where core imports the bridge is refused."""
    pytest.importorskip("importlinter")
    import shutil

    copy = tmp_path / "python"
    shutil.copytree(ROOT / "python" / "ijtorch", copy / "ijtorch", ignore=shutil.ignore_patterns("__pycache__", "*.jar", "*.tif",
                                                                                                 "bundled"))
    with open(copy / "ijtorch" / "core" / "progress.py", "a") as f:
        f.write("\n\ndef _bad():\n    from ijtorch.bridge import registry  # noqa: F401\n")
    out = _lint(ROOT / "pyproject.toml", cwd=copy)
    assert out.returncode != 0
    assert "layers: surfaces over commands over tasks over train over models over core BROKEN" in out.stdout
    assert "only the bridge touches Java BROKEN" in out.stdout
    assert "ijtorch.core.progress -> ijtorch.bridge.registry" in out.stdout
