"""CLI task verbs that need no JVM: denoise, train-classifier / classify / embed, evaluate."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import tifffile


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *args], capture_output=True, text=True, timeout=600)


def test_denoise_writes_float_image_with_calibration_and_keeps_input(tmp_path, shared_data):
    from ijtorch.io.tiff import read_tiff, write_imagej_tiff

    clean = tifffile.imread(shared_data / "nuclei_dsb2018" / "train" / "images" / "0402a81e75262469.tif")[:96, :96]
    rng = np.random.default_rng(0)
    noisy = (rng.poisson(clean.astype(np.float64) / 4) * 4 + rng.normal(0, 5, clean.shape)).astype(np.float32)
    src = tmp_path / "in"
    src.mkdir()
    write_imagej_tiff(src / "noisy.tif", noisy, "YX", calibration={"pixel_width": 0.2, "pixel_height": 0.2, "unit": "micron"})
    before = (src / "noisy.tif").read_bytes()
    out = _cli("denoise", str(src), "--output", str(tmp_path / "out"), "--epochs", "1", "--steps", "3")
    assert out.returncode == 0, out.stderr
    result = read_tiff(tmp_path / "out" / "noisy.tif")
    assert result.data.dtype == np.float32 and result.data.shape == noisy.shape
    assert result.calibration.pixel_width == pytest.approx(0.2)
    assert (src / "noisy.tif").read_bytes() == before  # inputs are never overwritten


def test_classifier_train_classify_embed(tmp_path, shared_data):
    z = np.load(shared_data / "classify_jurkat_cellcycle" / "train.npz")
    idx = np.arange(0, len(z["labels"]), 12)
    data = tmp_path / "cells.npz"
    np.savez(data, images=z["images"][idx], labels=z["labels"][idx], classes=z["classes"])
    model = tmp_path / "clf"
    out = _cli("train-classifier", str(data), "--output", str(model), "--epochs", "1")
    assert out.returncode == 0, out.stderr
    assert (model / "weights.safetensors").is_file() and "balanced_accuracy" in out.stdout
    out = _cli("classify", str(data), "--model", str(model), "--output", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "res" / "classes.csv")))
    assert len(rows) == len(idx)
    classes = [str(c) for c in z["classes"]]
    for row in rows[:5]:
        assert row["class"] in classes
        assert sum(float(row[f"p_{c}"]) for c in classes) == pytest.approx(1.0, abs=1e-4)
    out = _cli("embed", str(data), "--model", str(model), "--output", str(tmp_path / "res"))
    assert out.returncode == 0, out.stderr
    header = next(csv.reader(open(tmp_path / "res" / "features.csv")))
    assert header[0] == "f0" and len(header) >= 16


def test_evaluate_cli_prints_table_and_writes_csv(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    a = np.zeros((40, 40), np.uint16)
    a[2:12, 2:12] = 1
    a[20:35, 20:35] = 2
    b = a.copy()
    b[20:35, 20:35] = 0
    tifffile.imwrite(gt / "x.tif", a)
    tifffile.imwrite(pred / "x.tif", b)
    out = _cli("evaluate", str(pred), str(gt), "--output", str(tmp_path / "ev"))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "ev" / "evaluation.csv")))
    first = rows[0]
    assert int(first["tp"]) == 1 and int(first["fn"]) == 1 and float(first["recall"]) == pytest.approx(0.5)
