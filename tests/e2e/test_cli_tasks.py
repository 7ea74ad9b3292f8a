"""CLI task verbs that need no JVM: denoise, train-classifier / classify / embed, evaluate."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile


@pytest.fixture(autouse=True)
def _temporary_user_models(tmp_path, monkeypatch):
    """Neither these tests nor their subprocesses touch the user's model folder."""
    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path / "user-models"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_denoise_writes_float_image_with_calibration_and_keeps_input(tmp_path):
    from ijtorch import samples
    from ijtorch.io.tiff import read_tiff, write_imagej_tiff

    clean = tifffile.imread(samples.sample_images()[0])[:96, :96]
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
    # --clusters as the ijtorch Embed command's clusters: a k-means cluster and a 2-D PCA projection
    out = _cli("embed", str(data), "--model", str(model), "--clusters", "2", "--output", str(tmp_path / "clusters"))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(open(tmp_path / "clusters" / "features.csv")))
    assert list(rows[0])[:4] == ["cluster", "pc1", "pc2", "f0"] and len(rows) == len(idx)
    assert {row["cluster"] for row in rows} == {"0", "1"}


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


# ----------------------------------------------------------------------------- regressions of issue 13
def _noisy_planes(n: int = 2) -> list[np.ndarray]:
    from ijtorch import samples

    rng = np.random.default_rng(1)
    files = samples.sample_images()[:n]
    clean = [tifffile.imread(p)[:96, :96].astype(np.float64) for p in files]
    return [(rng.poisson(c / 4) * 4 + rng.normal(0, 5, c.shape)).astype(np.float32) for c in clean]


def test_restoration_fine_tuning_starts_from_the_base_weights(tmp_path, one_torch_thread):
    """Defect 2: train_restoration(base_model=...) fine-tunes (the CLI's --base-model was a TypeError)."""
    from ijtorch.models.restoration import RestorationModel
    from ijtorch.tasks.restore_train import train_restoration

    planes = _noisy_planes()
    tiny = dict(epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2, device="cpu", base_channels=8, depth=2)
    train_restoration("n2v", planes, None, output=tmp_path / "base", **tiny)
    base = RestorationModel.load(tmp_path / "base")
    # a learning rate of ~0 leaves the weights where they start: at the base model's, not at a fresh init
    tiny.pop("base_channels")
    summary = train_restoration("n2v", planes, None, output=tmp_path / "tuned", base_model=tmp_path / "base",
                                lr=1e-12, **tiny)
    tuned = RestorationModel.load(tmp_path / "tuned")
    assert summary["base_model"] == str(tmp_path / "base")
    assert tuned.config["training"]["base_model"] == str(tmp_path / "base")
    for name, weight in base.net.state_dict().items():
        np.testing.assert_allclose(tuned.net.state_dict()[name].numpy(), weight.numpy(), atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="fine-tuning keeps the network"):
        train_restoration("n2v", planes, None, output=tmp_path / "x", base_model=tmp_path / "base", base_channels=32,
                          **tiny)
    with pytest.raises(ValueError, match="is a 'n2v' model; fine-tuning keeps the kind"):
        train_restoration("care", planes, planes, output=tmp_path / "x", base_model=tmp_path / "base", **tiny)


def test_a_failure_after_the_first_output_leaves_none_of_them(tmp_path, one_torch_thread, monkeypatch, capsys):
    """Defect 5: the label TIFF is written, the measurements fail: neither stays, the next file goes on."""
    from ijtorch import cli
    from ijtorch.tasks import segmentation_files as outputs

    src = tmp_path / "in"
    src.mkdir()
    from ijtorch import samples

    for path in samples.sample_images()[:2]:
        tifffile.imwrite(src / path.name, tifffile.imread(path)[:96, :96])
    first = sorted(src.iterdir())[0]
    real = outputs.write_table_csv

    def failing_for_the_first(path, columns):
        if Path(path).name.startswith(first.stem):
            raise OSError(28, "No space left on device", str(path))
        return real(path, columns)

    monkeypatch.setattr(outputs, "write_table_csv", failing_for_the_first)
    assert cli.main(["segment", str(src), "--output", str(tmp_path / "out"), "--device", "cpu"]) == 1
    captured = capsys.readouterr()
    assert f"{first}: No space left on device: " in captured.err and "Traceback" not in captured.err
    assert "1 done, 1 failed, 0 skipped" in captured.out
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written and not [n for n in written if n.startswith(first.stem)], written


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise():
    """Defect 6: tqdm bar when the stream is a terminal; periodic plain lines (no carriage returns) when not."""
    import io

    from ijtorch.core.progress import CountProgress, ProgressEvent, TrainingProgress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    def run(stream, **kw):
        files = CountProgress("segment", 3, stream=stream, **kw)
        for _ in range(3):
            files.update()
        files.close()
        train = TrainingProgress("train", steps_per_epoch=4, stream=stream, **kw)
        for epoch in (1, 2):
            for step in range(1, 5):
                train(ProgressEvent("train", step, 0, "", {"loss": 1.0 / step}))
            train(ProgressEvent("epoch", epoch, 2, f"epoch {epoch}/2 train_loss 0.25"))
        train.close()
        return stream.getvalue()

    bar = run(Terminal())
    assert "\r" in bar and "3/3" in bar and "loss=0.25" in bar and "train: epoch 2/2 train_loss 0.25" in bar
    plain = run(io.StringIO(), interval=3600)  # not a terminal: the first and the last line of each count
    assert "\r" not in plain
    lines = plain.splitlines()
    assert lines[0].startswith("segment:  33% 1/3") and lines[1].startswith("segment: 100% 3/3")
    assert any(line.startswith("train epoch 1: 100% 4/4") and "loss=0.25" in line for line in lines)
    assert "train: epoch 1/2 train_loss 0.25 [00:00, about 00:00 left]" in lines
    from ijtorch.core.progress import PhaseProgress

    stream = io.StringIO()
    frames = PhaseProgress({"link": "link"}, stream=stream, interval=3600)
    frames(ProgressEvent("link", 1, 40))  # the linker reports every 20 frames ...
    frames(ProgressEvent("close", 1, 1))  # ... and the next phase says linking is done
    frames.close()
    assert [line.split(" [")[0] for line in stream.getvalue().splitlines()] == ["link:   2% 1/40", "link: 100% 40/40"]


def test_cli_draws_a_bar_on_a_terminal(tmp_path):
    """A real pseudo-terminal on stderr: tqdm redraws its bar (carriage returns) with files done of n."""
    import pty

    src = tmp_path / "in"
    src.mkdir()
    from ijtorch import samples

    for path in samples.sample_images()[:2]:
        tifffile.imwrite(src / path.name, tifffile.imread(path)[:64, :64])
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen([sys.executable, "-m", "ijtorch.cli", "segment", str(src), "--output", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=slave, env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    proc.wait(120)
    os.close(master)
    assert proc.returncode == 0, seen
    assert b"\r" in seen and b"2/2" in seen and b"segment:" in seen


def test_cli_trains_resumes_fine_tunes_and_segments_with_unet_watershed(tmp_path, shared_data):
    """Issue #20: ``ijtorch train --method unet_watershed`` (then ``--resume``, then ``--base-model``
    with the method taken from the model type) and ``ijtorch segment --model <folder>`` end to end;
    the CLI's label image equals segment() in Python."""
    from ijtorch.io.tiff import read_tiff
    from ijtorch.models.store import read_config
    from ijtorch.tasks.segment import segment

    src = shared_data / "cells_usiigaci_phase" / "train"
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for name in ("set15", "set24", "set26"):  # 128 x 160 crops: a quick run
        tifffile.imwrite(images / f"{name}.tif", tifffile.imread(src / "images" / f"{name}.tif")[:128, :160])
        tifffile.imwrite(labels / f"{name}.tif", tifffile.imread(src / "labels" / f"{name}.tif")[:128, :160])
    model = tmp_path / "unet"
    common = ("--steps", "2", "--patch-size", "64", "--batch-size", "2", "--device", "cpu", "--seed", "3")
    out = _cli("train", str(images), str(labels), "--output", str(model), "--method", "unet_watershed",
               "--epochs", "1", *common)
    assert out.returncode == 0, out.stderr
    assert f"model saved to {model}" in out.stdout and "fg_threshold" in out.stdout
    assert read_config(model)["model_type"] == "unet_watershed"
    out = _cli("train", str(images), str(labels), "--output", str(model), "--method", "unet_watershed",
               "--epochs", "2", "--resume", *common)
    assert out.returncode == 0, out.stderr
    runs = read_config(model)["training"]["runs"]
    assert [h["epoch"] for h in runs[-1]["history"]] == [1, 2]  # epoch 1 from the checkpoint, then epoch 2
    tuned = tmp_path / "tuned"
    out = _cli("train", str(images), str(labels), "--output", str(tuned), "--base-model", str(model),
               "--epochs", "1", *common)
    assert out.returncode == 0, out.stderr
    cfg = read_config(tuned)
    assert cfg["model_type"] == "unet_watershed" and cfg["training"]["runs"][-1]["fine_tuned_from"] == str(model)

    image = tmp_path / "cell.tif"
    tifffile.imwrite(image, tifffile.imread(src / "images" / "set41.tif")[:192, :192])
    out = _cli("segment", str(image), "--model", str(tuned), "--output", str(tmp_path / "seg"))
    assert out.returncode == 0, out.stderr
    expected = segment(tifffile.imread(image), "YX", model=str(tuned), device="cpu")
    np.testing.assert_array_equal(read_tiff(tmp_path / "seg" / "cell.tif").data, expected.labels)
    with open(tmp_path / "seg" / "cell_measurements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == expected.n_objects and (not rows or "confidence" in rows[0])
