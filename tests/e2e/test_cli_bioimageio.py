"""End-to-end tests of ``ijtorch export-bioimageio`` and ``ijtorch import-bioimageio`` (registered
in tests/e2e/test_cli_contract.py): each verb in a subprocess with a temporary IJTORCH_MODELS and
bioimageio cache, exit codes, files written, one-line errors without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("bioimageio.core")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _cli(tmp_path: Path, *args: object) -> subprocess.CompletedProcess:
    env = dict(os.environ, IJTORCH_MODELS=str(tmp_path / "models"), BIOIMAGEIO_CACHE_PATH=str(tmp_path / "bcache"),
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "python"))
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)


def _clean_failure(out: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert text in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def _tiny_stardist(folder: Path) -> Path:
    import torch

    from ijtorch.models.stardist import network
    from ijtorch.models.stardist.model import StarDistModel

    torch.manual_seed(0)
    StarDistModel(network.StarDistNet(n_rays=8, base_channels=4, depth=2, head_channels=8), {}).save(folder)
    return folder


def test_export_writes_a_valid_package(tmp_path):
    model = _tiny_stardist(tmp_path / "tiny")
    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "test.tif", rng.poisson(100, (96, 102)).astype(np.uint16))
    out = _cli(tmp_path, "export-bioimageio", model, tmp_path / "pkg.zip", "--test-image", tmp_path / "test.tif",
               "--author", "Jane Doe", "--author", "John Roe", "--license", "CC-BY-4.0", "--pixel-size", "0.3", "0.3",
               "--name", "tiny nuclei")
    assert out.returncode == 0, out.stderr
    assert "valid-format" in out.stdout and "test_model: passed" in out.stdout
    with zipfile.ZipFile(tmp_path / "pkg.zip") as zf:
        rdf = zf.read("rdf.yaml").decode()
        x = np.load(zf.open("test_input.npy"))
    assert "Jane Doe" in rdf and "John Roe" in rdf and "CC-BY-4.0" in rdf and "tiny nuclei" in rdf
    assert "micrometer" in rdf and "0.3" in rdf
    assert x.shape == (1, 1, 96, 100)  # cropped to the network's size multiple
    out = _cli(tmp_path, "export-bioimageio", model, tmp_path / "fast.zip", "--no-test")
    assert out.returncode == 0, out.stderr
    assert "not run (--no-test)" in out.stdout and (tmp_path / "fast.zip").is_file()


def test_export_refuses_an_unknown_model(tmp_path):
    out = _cli(tmp_path, "export-bioimageio", "no-such-model", tmp_path / "x.zip")
    _clean_failure(out, 2, "no-such-model")
    out = _cli(tmp_path, "export-bioimageio", "nuclei", tmp_path / "x.tar")
    _clean_failure(out, 2, ".zip")
    assert not list(tmp_path.glob("x.*"))


def test_import_registers_a_model(tmp_path):
    from ijtorch.bioimageio.export import export_bioimageio

    model = _tiny_stardist(tmp_path / "tiny")
    pkg = export_bioimageio(model, tmp_path / "pkg.zip", run_test=False).path
    out = _cli(tmp_path, "import-bioimageio", pkg, "--name", "from-zoo")
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "models" / "from-zoo" / "config.json").read_text())
    assert cfg["model_type"] == "stardist2d"
    out = _cli(tmp_path, "import-bioimageio", pkg, "--name", "from-zoo", "--task", "restore", "--threshold", "0.4",
               "--overwrite")
    assert out.returncode == 0, out.stderr
    cfg = json.loads((tmp_path / "models" / "from-zoo" / "config.json").read_text())
    assert (cfg["model_type"], cfg["task"], cfg["threshold"]) == ("bioimageio", "restore", 0.4)
    assert (tmp_path / "models" / "from-zoo" / "weights_torchscript.pt").is_file()
    out = _cli(tmp_path, "models")
    assert "from-zoo" in out.stdout


def test_import_refuses_a_bad_package(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    out = _cli(tmp_path, "import-bioimageio", tmp_path / "bad.zip")
    _clean_failure(out, 2, "not a zip")
    out = _cli(tmp_path, "import-bioimageio", tmp_path / "missing")
    _clean_failure(out, 2, "no such package")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
