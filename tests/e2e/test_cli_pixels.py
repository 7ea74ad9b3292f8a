"""``ijtorch train-pixels`` end to end in subprocesses: train from stroke TIFFs, warm-start a second
round, apply with ``ijtorch segment --model`` (class maps reopened with tifffile), a bad input
that fails in one line with exit code 2 and writes nothing; and ``ijtorch serve`` answering a
pixel model with the same class map as ``segment()``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile


def _env(tmp_path: Path) -> dict[str, str]:
    models = tmp_path / "user-models"
    models.mkdir(exist_ok=True)
    return {**os.environ, "IJTORCH_MODELS": str(models), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _cli(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env=_env(tmp_path))


def _scene(seed: int, shape=(96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """Bright disks (class 2) on a dark background (class 1), uint16, and the dense classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    classes = np.ones(shape, np.uint8)
    for _ in range(6):
        cy, cx, r = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(5, 9)
        classes[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
    image = np.where(classes == 2, 3000, 800) + rng.normal(0, 300, shape)
    return image.clip(0, 65535).astype(np.uint16), classes


@pytest.fixture
def strokes(tmp_path):
    from ijtorch.tasks.pixels import scribbles_from_classes

    for sub in ("images", "annotations", "test"):
        (tmp_path / sub).mkdir()
    for i in range(2):
        image, classes = _scene(i)
        tifffile.imwrite(tmp_path / "images" / f"im{i}.tif", image)
        tifffile.imwrite(tmp_path / "annotations" / f"im{i}.tif",
                         scribbles_from_classes(classes, strokes_per_class=3, length=30, width=1, seed=i))
    image, classes = _scene(7)
    tifffile.imwrite(tmp_path / "test" / "held_out.tif", image)
    return tmp_path, classes


def test_train_pixels_warm_start_and_segment_write_class_maps(strokes):
    tmp_path, truth = strokes
    out = _cli(tmp_path, "train-pixels", tmp_path / "images", tmp_path / "annotations", "--output", tmp_path / "px",
               "--classes", "background,disk", "--steps", "80", "--seed", "1", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "model saved to" in out.stdout and "background, disk" in out.stdout
    cfg = json.loads((tmp_path / "px" / "config.json").read_text())
    assert cfg["model_type"] == "pixel_classifier" and cfg["classes"] == ["background", "disk"]
    assert cfg["training"]["items"] == 2 and cfg["training"]["steps"] == 80 and not cfg["training"]["warm_start"]
    # a second round, warm-started from the first model (its class names are kept)
    out = _cli(tmp_path, "train-pixels", tmp_path / "images" / "im0.tif", tmp_path / "annotations" / "im0.tif",
               "--output", tmp_path / "px2", "--base-model", tmp_path / "px", "--steps", "20")
    assert out.returncode == 0, out.stderr
    cfg2 = json.loads((tmp_path / "px2" / "config.json").read_text())
    assert cfg2["classes"] == ["background", "disk"] and cfg2["training"]["warm_start"]
    # apply: ijtorch segment --model writes the class map
    out = _cli(tmp_path, "segment", tmp_path / "test", "--model", tmp_path / "px2", "--output", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    classes = tifffile.imread(tmp_path / "out" / "held_out.tif")
    assert classes.shape == truth.shape and set(np.unique(classes)) <= {1, 2}
    assert (classes == truth).mean() > 0.9


def test_train_pixels_bad_annotations_fail_in_one_line(strokes):
    tmp_path, _ = strokes
    only_one = tmp_path / "one-class"
    only_one.mkdir()
    for f in (tmp_path / "annotations").iterdir():
        a = tifffile.imread(f)
        tifffile.imwrite(only_one / f.name, (a == 1).astype(np.uint8))
    out = _cli(tmp_path, "train-pixels", tmp_path / "images", only_one, "--output", tmp_path / "bad")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and "at least 2 classes" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "bad").exists()
    out = _cli(tmp_path, "train-pixels", tmp_path / "missing", only_one, "--output", tmp_path / "bad")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    out = _cli(tmp_path, "train-pixels", tmp_path / "images", tmp_path / "annotations", "--output", tmp_path / "bad",
               "--steps", "0")
    assert out.returncode == 2 and "positive integer" in out.stderr and not (tmp_path / "bad").exists()


def test_the_server_serves_a_pixel_model_like_segment(strokes):
    """``ijtorch serve``'s /segment answers a pixel model with the same class map as in-process segment()."""
    pytest.importorskip("httpx", reason="the server test needs httpx (pip install 'ijtorch[serve]')")
    pytest.importorskip("uvicorn", reason="the server test needs uvicorn (pip install 'ijtorch[serve]')")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
    from _serve_util import ServerProcess

    from ijtorch.serve.client import Client
    from ijtorch.tasks.pixels import train_pixels
    from ijtorch.tasks.segment import segment

    tmp_path, _ = strokes
    models = tmp_path / "user-models"
    models.mkdir(exist_ok=True)
    image, truth = _scene(3)
    ann = tifffile.imread(tmp_path / "annotations" / "im0.tif")
    train_pixels([tifffile.imread(tmp_path / "images" / "im0.tif")], [ann], output=models / "px", steps=40,
                 classes=["background", "disk"], device="cpu")
    expected = segment(image, "YX", model=str(models / "px"), device="cpu")
    with ServerProcess(models, env={"OMP_NUM_THREADS": "1"}) as server:
        got = Client(server.url).segment(image, "YX", model="px")
    assert np.array_equal(got.labels, expected.labels) and got.n_objects == expected.n_objects
    assert set(np.unique(got.labels)) <= {1, 2}
