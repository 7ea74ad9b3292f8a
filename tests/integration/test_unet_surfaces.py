"""Issue #20: a bundled U-Net + watershed model (``bacteria_phase``) on every surface, checked pixel
for pixel against ``segment()`` in Python on held-out frames of the shared bacteria movie: the Segment
command from a macro in the embedded ImageJ (in process and, as a Fiji without Python, through the
server), the Segment_Folder Jython script, the server's
``/segment`` route; ``ijtorch models`` lists both bundled U-Net models; fine-tuning from the bundled
model trains (loss falls) and resumes to the same end as a straight run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _serve_util import ServerProcess  # noqa: E402

MODEL = "bacteria_phase"
FRAMES = ("t020", "t022")  # held out from the bundled model's training (its config's held_out)
SCRIPTS = Path(__file__).resolve().parents[2] / "jython_scripts"


@pytest.fixture(scope="module")
def frames(shared_data) -> dict[str, Path]:
    folder = shared_data / "tracking_bacteria" / "01"
    paths = {name: folder / f"{name}.tif" for name in FRAMES}
    if not all(p.is_file() for p in paths.values()):
        pytest.skip(f"bacteria frames {FRAMES} not found in {folder}")
    return paths


@pytest.fixture(scope="module")
def expected(frames, one_torch_thread) -> dict[str, np.ndarray]:
    """``segment()`` in this process: the answer every surface must give."""
    import tifffile

    from ijtorch.tasks.segment import segment

    out = {name: segment(tifffile.imread(p), "YX", model=MODEL, device="cpu").labels for name, p in frames.items()}
    assert all(lab.max() > 10 for lab in out.values()), {n: int(lab.max()) for n, lab in out.items()}
    return out


def test_models_lists_both_bundled_unet_models():
    out = subprocess.run([sys.executable, "-m", "ijtorch.cli", "models"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:3] for line in out.stdout.splitlines() if line.strip()}
    for name in ("bacteria_phase", "cells_phase"):
        assert rows.get(name) == ["bundled", "unet_watershed"], out.stdout


@pytest.mark.jvm
def test_segment_macro_runs_the_bundled_unet_model_and_matches_python(ij, frames, expected):
    from jpype import JClass

    from ijtorch import bridge
    from ijtorch.bridge import imageplus_to_numpy

    name = FRAMES[0]
    log = bridge.run_macro(
        f'open("{frames[name]}"); run("ijtorch Segment", "model={MODEL} output=all");'
        'print(getTitle()); print(roiManager("count")); run("ijtorch Macro Functions"); '
        'Ext.ijtorchObjectCount(n); print(n);').log.splitlines()
    n = int(expected[name].max())
    assert log == [f"{name}-labels", str(n), str(n)]
    labels = imageplus_to_numpy(JClass("ij.WindowManager").getImage(f"{name}-labels")).data
    np.testing.assert_array_equal(labels, expected[name])


@pytest.mark.jvm
def test_segment_folder_jython_script_with_the_bundled_unet_model(ij, frames, expected, tmp_path):
    import shutil

    from ijtorch.bridge import run_jython
    from ijtorch.io.tiff import read_tiff

    (tmp_path / "in").mkdir()
    for p in frames.values():
        shutil.copy(p, tmp_path / "in" / p.name)
    out = run_jython(SCRIPTS / "Segment_Folder.py", input_dir=tmp_path / "in", output_dir=tmp_path / "out",
                     model=MODEL)
    for name, lab in expected.items():
        np.testing.assert_array_equal(read_tiff(tmp_path / "out" / f"{name}.tif").data, lab)
        assert f"{name}.tif: {int(lab.max())} objects" in out["summary"].splitlines()


def test_server_segment_route_with_the_bundled_unet_model(frames, expected, tmp_path):
    pytest.importorskip("httpx", reason="the server tests need httpx (pip install 'ijtorch[serve]')")
    pytest.importorskip("uvicorn", reason="the server tests need uvicorn (pip install 'ijtorch[serve]')")
    import tifffile

    from ijtorch.serve import Client

    images = {name: tifffile.imread(p) for name, p in frames.items()}
    with ServerProcess(tmp_path, "--threads", "1") as srv, Client(srv.url, timeout=120) as client:
        for name, img in images.items():  # one request each: the batched single-tile path
            remote = client.segment(img, "YX", model=MODEL)
            assert remote.n_objects == int(expected[name].max())
            np.testing.assert_array_equal(remote.labels, expected[name])
        # a time-lapse of both frames (plane by plane), tiled: labels unique across planes as in process
        from ijtorch.tasks.segment import segment

        movie = np.stack(list(images.values()))
        local = segment(movie, "TYX", model=MODEL, device="cpu", tile_size=192, overlap=48)
        remote = client.segment(movie, "TYX", model=MODEL, tile_size=192, overlap=48)
        assert remote.objects_per_plane == local.objects_per_plane
        np.testing.assert_array_equal(remote.labels, local.labels)


@pytest.mark.slow
def test_fine_tuning_the_bundled_unet_model_trains_and_resumes(shared_data, tmp_path, monkeypatch, one_torch_thread):
    """``train_segmentation(base_model="bacteria_phase")`` without a method: the bundled model's type
    picks U-Net + watershed; the loss falls on new data (phase-contrast whole cells), a run stopped
    after one epoch resumes from its checkpoint to the same losses as a straight run."""
    from ijtorch.models.store import clear_model_cache, read_config, resolve_model
    from ijtorch.tasks.segment import segment, train_segmentation
    from ijtorch.train.data import load_pairs

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path / "user-models"))
    clear_model_cache()
    pairs = load_pairs(shared_data / "cells_usiigaci_phase" / "train")[:3]
    images, labels = [p.image for p in pairs], [p.labels for p in pairs]
    opts = dict(base_model=MODEL, epochs=3, steps_per_epoch=2, batch_size=2, patch_size=64, augment=False,
                patience=None, val_fraction=0.34, seed=0, device="cpu", lr=1e-3)

    straight = train_segmentation(images, labels, output=tmp_path / "straight", **opts)
    losses = [h["train_loss"] for h in straight["history"]]
    assert straight["method"] == "unet_watershed" and straight["base_model"] == MODEL
    assert losses[-1] < losses[0], losses
    cfg = read_config(tmp_path / "straight")
    base = read_config(resolve_model(MODEL))
    assert cfg["model_type"] == "unet_watershed" and cfg["architecture"] == base["architecture"]
    assert cfg["training"]["runs"][-1]["fine_tuned_from"] == str(resolve_model(MODEL))

    polls = iter([False])  # cancel is polled before each epoch: one epoch, then stop (as a time limit does)
    first = train_segmentation(images, labels, output=tmp_path / "chunked", cancel=lambda: next(polls, True), **opts)
    assert first["cancelled"] and len(first["history"]) == 1
    resumed = train_segmentation(images, labels, output=tmp_path / "chunked", resume=True, **opts)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    np.testing.assert_allclose([h["train_loss"] for h in resumed["history"]], losses, rtol=1e-4)

    # the fine-tuned model is a user model by its folder and segments like any other
    r = segment(images[0][:128, :128], "YX", model=str(tmp_path / "chunked"), device="cpu")
    assert r.labels.shape == (128, 128) and r.labels.dtype == np.uint16
    clear_model_cache()


@pytest.mark.jvm
def test_remote_segment_from_a_fiji_without_python_runs_the_bundled_unet_model(ij, frames, expected, tmp_path):
    """A Fiji without Python sends ``run("ijtorch Segment", "model=bacteria_phase")`` to the server
    (``/imagej/command``): the label image and ROIs it gets back equal the in-process answer."""
    pytest.importorskip("httpx", reason="the server tests need httpx (pip install 'ijtorch[serve]')")
    pytest.importorskip("uvicorn", reason="the server tests need uvicorn (pip install 'ijtorch[serve]')")
    from jpype import JClass

    from ijtorch import bridge
    from ijtorch.bridge import imageplus_to_numpy
    from ijtorch.bridge.registry import _install, registered_commands

    name, command = FRAMES[0], "ijtorch Segment"
    registry, prefs = JClass("ijtorch.IjtorchRegistry"), JClass("ij.Prefs")
    with ServerProcess(tmp_path, "--threads", "1") as srv:
        prefs.set("ijtorch.server", srv.url)
        registry.unregisterCommand(command)  # no Python handler: the shim goes to the server
        try:
            log = bridge.run_macro(f'open("{frames[name]}"); run("{command}", "model={MODEL} output=all");'
                                   'print(getTitle()); print(roiManager("count"));').log.splitlines()
        finally:
            _install(registered_commands()[command])
            prefs.set("ijtorch.server", "")
        time.sleep(0.3)  # the access line is written after the reply
        assert '"POST /imagej/command" 200' in srv.log(), srv.log()[-2000:]
    n = int(expected[name].max())
    assert log[-2:] == [f"{name}-labels", str(n)]
    labels = imageplus_to_numpy(JClass("ij.WindowManager").getImage(f"{name}-labels")).data
    np.testing.assert_array_equal(labels, expected[name])
