"""The example macros (``fiji_macros/``) and Fiji scripts (``jython_scripts/``) run in the embedded
ImageJ exactly as a user runs them in Fiji; and a Macro Recorder line of ``ijtorch Segment``
replays to the same label map."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from _dialogs import find_dialog, press_ok

from ijtorch import bridge
from ijtorch.errors import BridgeError

pytestmark = pytest.mark.jvm
ROOT = Path(__file__).resolve().parents[2]
MACROS = ROOT / "fiji_macros"
SCRIPTS = ROOT / "jython_scripts"
NAMES = ("35ca5f142a7d7a3e", "449fe932622db3b4")  # bundled samples (ijtorch.samples): no ../shared needed


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    """Two 96 x 96 crops of the bundled DSB 2018 sample nuclei images plus their ground-truth labels."""
    from ijtorch import samples
    from ijtorch.io.tiff import read_tiff, write_imagej_tiff

    root = tmp_path_factory.mktemp("nuclei")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
        for name in NAMES:
            data = read_tiff(samples.path() / sub / f"{name}.tif").data[:96, :96]
            write_imagej_tiff(root / sub / f"{name}.tif", np.ascontiguousarray(data), "YX")
    return root


def _registered(command: str) -> bool:
    from jpype import JClass

    table = JClass("ij.Menus").getCommands()
    return table is not None and bool(table.containsKey(command))


def _macro(name: str, argument: str = "") -> list[str]:
    return bridge.run_macro((MACROS / name).read_text(), argument).log.splitlines()


def _segment(image_path: Path, model: str, **options) -> np.ndarray:
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    image = read_tiff(image_path)
    return segment(image.data, image.axes, model=model, **options).labels


def test_every_command_has_an_example_macro(ij):
    text = "\n".join(p.read_text() for p in MACROS.glob("*.ijm"))
    for command in bridge.registered_commands():
        if not command.startswith("ijtorch Test"):
            assert f'"{command}"' in text, f"no macro in fiji_macros/ runs {command}"


def test_segment_folder_macro_writes_what_segment_returns(ij, small_images, segmentation_model, tmp_path):
    from ijtorch.io.tiff import read_tiff

    log = _macro("segment_folder.ijm", f"input={small_images / 'images'} output={tmp_path} model={segmentation_model}")
    assert log[-1] == f"2 image(s) segmented into {tmp_path}"
    for name in NAMES:
        expected = _segment(small_images / "images" / f"{name}.tif", segmentation_model)
        np.testing.assert_array_equal(read_tiff(tmp_path / f"{name}.tif").data, expected)
        assert f"{name}.tif: {int(expected.max())} objects" in log
        assert (tmp_path / f"{name}_measurements.csv").is_file()
    # the optional arguments reach the command
    out = tmp_path / "scaled"
    log = _macro("segment_folder.ijm", f"input={small_images / 'images'} output={out} model={segmentation_model} "
                                       "scale=1.5 tta=true")
    assert log[-1] == f"2 image(s) segmented into {out}"
    for name in NAMES:
        expected = _segment(small_images / "images" / f"{name}.tif", segmentation_model, scale=1.5,
                            test_time_augmentation=True)
        np.testing.assert_array_equal(read_tiff(out / f"{name}.tif").data, expected)


def test_evaluate_macro_prints_perfect_scores_for_ground_truth(ij, small_images):
    labels = small_images / "labels"
    log = _macro("evaluate_folders.ijm", f"prediction={labels} ground_truth={labels}")
    rows = [line.split("\t") for line in log]
    assert [r[0] for r in rows] == list(NAMES) + ["mean", "pooled"], log
    assert all(r[1:] == ["F1=1.0000", "AP50=1.0000"] for r in rows), log


def test_track_macro_writes_trackmate_xml(ij, tmp_path):
    from ijtorch.io.tiff import write_imagej_tiff
    from ijtorch.simulate.movies import simulate_movie

    m = simulate_movie(n_frames=5, shape=(64, 64), n_cells=4, division_prob=0.0, miss_prob=0.0, seed=3)
    movie = write_imagej_tiff(tmp_path / "movie.tif", m.labels, "TYX")
    log = _macro("track_movie.ijm", f"movie={movie} output={tmp_path / 'out'} max_distance=8")
    values = {line.split(": ")[0]: line.split(": ")[1] for line in log if line.startswith(("tracks: ", "rois: "))}
    assert int(values["tracks"]) >= 4, log
    n_spots = int(sum(len(np.unique(f[f > 0])) for f in m.labels))
    assert int(values["rois"]) == n_spots
    xml = (tmp_path / "out" / "movie.xml").read_text()
    assert xml.count("<Spot ") == n_spots


def test_normalize_macro_runs(ij):
    log = _macro("normalize_and_version.ijm")
    assert log[0] == "image: ramp-normalized (32-bit)" and log[-1].startswith("ijtorch ")


def test_train_from_rois_macro_adds_a_model(ij, small_images, segmentation_model, tmp_path):
    from ijtorch.io.roiset import write_roiset
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.outlines import outlines

    image = small_images / "images" / f"{NAMES[0]}.tif"
    rois = write_roiset(tmp_path / "RoiSet.zip", outlines(read_tiff(small_images / "labels" / image.name).data).polygons)
    log = _macro("train_from_rois.ijm", f"image={image} rois={rois} name=from-rois base={segmentation_model} "
                                        "epochs=1 steps=1")
    assert log[0].startswith("annotated objects: ") and int(log[0].split(": ")[1]) > 3
    assert "from-rois" in log[-1].split(": ")[1].split(",")


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """Models trained by a test go to a temporary user model folder (bundled ones stay visible)."""
    import os
    import shutil

    folder = tmp_path / "models"
    if os.environ.get("IJTORCH_MODELS"):  # keep the session's stand-in segmentation model reachable
        shutil.copytree(os.environ["IJTORCH_MODELS"], folder)
    monkeypatch.setenv("IJTORCH_MODELS", str(folder))
    return folder


def test_restore_and_denoise_macro(ij, user_models, tmp_path):
    from ijtorch.io.tiff import write_imagej_tiff

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    clean = (100 + 80 * np.sin(xx / 6.0) * np.cos(yy / 9.0)).astype(np.float32)
    noisy = (clean + rng.normal(0, 25, clean.shape)).astype(np.float32)
    a = write_imagej_tiff(tmp_path / "noisy.tif", noisy, "YX")
    b = write_imagej_tiff(tmp_path / "clean.tif", clean, "YX")
    log = _macro("restore_and_denoise.ijm", f"noisy={a} clean={b} epochs=1 steps=2")
    results = [line for line in log if " result: " in line]
    assert results == ["n2v result: noisy-n2v", "example-n2v result: noisy-restored (32-bit)",
                       "example-care result: noisy-restored (32-bit)", "example-label result: noisy-label (32-bit)"], log
    assert {"example-n2v", "example-care", "example-label"} <= {p.name for p in user_models.iterdir()}


def test_train_classifier_and_embed_macro(ij, user_models, tmp_path):
    from ijtorch.io.roiset import write_roiset
    from ijtorch.io.tiff import write_imagej_tiff

    rng = np.random.default_rng(1)
    image = rng.normal(20, 3, (96, 96)).astype(np.float32)
    polygons, names = [], []
    for i, (cy, cx) in enumerate((y, x) for y in (12, 36, 60, 84) for x in (12, 36, 60, 84)):
        bright = i % 2 == 0
        image[cy - 6:cy + 6, cx - 6:cx + 6] += 200 if bright else 40
        polygons.append(np.array([[cx - 6, cy - 6], [cx + 6, cy - 6], [cx + 6, cy + 6], [cx - 6, cy + 6]], float))
        names.append(f"{'bright' if bright else 'dim'}_{i:03d}")
    img = write_imagej_tiff(tmp_path / "objects.tif", image, "YX")
    rois = write_roiset(tmp_path / "RoiSet.zip", polygons, names=names)
    log = _macro("train_classifier_and_embed.ijm", f"image={img} rois={rois} epochs=2")
    values = {line.split(": ")[0]: line.split(": ")[1] for line in log if ": " in line}
    assert values["classified"] == "16" and values["embedded"] == "16", log
    assert sorted(values["classes"].split(",")) == ["bright", "dim"]


def test_segment_recorder_line_replays_to_the_same_label_map(ij, small_images, segmentation_model):
    """Dialog (OK pressed) → Macro Recorder line → replayed: both label maps are equal."""
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy

    IJ, WindowManager = JClass("ij.IJ"), JClass("ij.WindowManager")
    Recorder = JClass("ij.plugin.frame.Recorder")
    imp = IJ.openImage(str(small_images / "images" / f"{NAMES[0]}.tif"))
    imp.show()
    recorder = Recorder(False)
    flag = Recorder.class_.getField("record")
    flag.setBoolean(None, True)
    try:
        IJ.doCommand("ijtorch Segment")
        dialog = find_dialog("ijtorch Segment")
        dialog.getStringFields().get(0).setText(segmentation_model)
        output = [c for c in dialog.getChoices() if "label map" in [c.getItem(i) for i in range(c.getItemCount())]]
        output[0].select("label map")  # the output choice (other choices, e.g. rgb, come before it)
        press_ok(dialog)
        title = f"{NAMES[0]}-labels"
        deadline = time.time() + 60
        while WindowManager.getImage(title) is None and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the Recorder writes the line after the command returns
        text = str(recorder.getText())
    finally:
        flag.setBoolean(None, False)
        recorder.close()
    first = WindowManager.getImage(title)
    assert first is not None, "the dialog run made no label map"
    from_dialog = imageplus_to_numpy(first).data
    first.changes = False
    first.close()
    lines = [line for line in text.splitlines() if "ijtorch Segment" in line]
    assert len(lines) == 1 and f"model={segmentation_model}" in lines[0] and "output=[label map]" in lines[0], text
    bridge.run_macro(f'selectImage("{NAMES[0]}.tif"); ' + lines[0])
    replayed = imageplus_to_numpy(WindowManager.getImage(title)).data
    np.testing.assert_array_equal(replayed, from_dialog)
    np.testing.assert_array_equal(from_dialog, _segment(small_images / "images" / f"{NAMES[0]}.tif", segmentation_model))


# ------------------------------------------------------------------ Jython scripts


def test_segment_folder_script(ij, small_images, segmentation_model, tmp_path):
    from ijtorch.bridge import run_jython
    from ijtorch.io.tiff import read_tiff

    out = run_jython(SCRIPTS / "Segment_Folder.py", input_dir=small_images / "images", output_dir=tmp_path,
                     model=segmentation_model)
    for name in NAMES:
        expected = _segment(small_images / "images" / f"{name}.tif", segmentation_model)
        np.testing.assert_array_equal(read_tiff(tmp_path / f"{name}.tif").data, expected)
        assert f"{name}.tif: {int(expected.max())} objects" in out["summary"].splitlines()
    run_jython(SCRIPTS / "Segment_Folder.py", input_dir=small_images / "images", output_dir=tmp_path / "scaled",
               model=segmentation_model, scale=0.8)
    for name in NAMES:
        np.testing.assert_array_equal(read_tiff(tmp_path / "scaled" / f"{name}.tif").data,
                                      _segment(small_images / "images" / f"{name}.tif", segmentation_model, scale=0.8))


def test_track_movie_script_writes_trackmate_xml(ij, tmp_path):
    from ijtorch.bridge import run_jython
    from ijtorch.io.tiff import write_imagej_tiff
    from ijtorch.simulate.movies import simulate_movie

    m = simulate_movie(n_frames=5, shape=(64, 64), n_cells=4, division_prob=0.0, miss_prob=0.0, seed=3)
    movie = write_imagej_tiff(tmp_path / "cells.tif", m.labels, "TYX")
    out = run_jython(SCRIPTS / "Track_Movie.py", movie=movie, output_dir=tmp_path / "out", is_labels=True,
                     max_distance=8.0)
    xml = Path(out["trackmate_xml"])
    assert xml == tmp_path / "out" / "cells.xml" and "<TrackMate" in xml.read_text()[:400]


def test_train_from_rois_script(ij, small_images, segmentation_model, tmp_path):
    from ijtorch.bridge import run_jython
    from ijtorch.io.roiset import write_roiset
    from ijtorch.io.tiff import read_tiff
    from ijtorch.models.store import list_models
    from ijtorch.tasks.outlines import outlines

    folder = tmp_path / "annotated"
    folder.mkdir()
    for name in NAMES:
        (folder / f"{name}.tif").write_bytes((small_images / "images" / f"{name}.tif").read_bytes())
        write_roiset(folder / f"{name}_RoiSet.zip", outlines(read_tiff(small_images / "labels" / f"{name}.tif").data).polygons)
    out = run_jython(SCRIPTS / "Train_From_ROIs.py", input_dir=folder, name="script-model", base_model=segmentation_model,
                     epochs=1, steps=1, patch_size=64)
    assert out == {"model_name": "script-model"}
    assert "script-model" in [m["name"] for m in list_models()]


def test_denoise_script(ij, tmp_path):
    """Denoises a folder when the command exists; otherwise says clearly that it does not."""
    from ijtorch.bridge import run_jython
    from ijtorch.io.tiff import read_tiff, write_imagej_tiff

    folder = tmp_path / "noisy"
    folder.mkdir()
    rng = np.random.default_rng(5)
    write_imagej_tiff(folder / "a.tif", rng.normal(100, 20, (48, 48)).astype(np.float32), "YX")
    if not _registered("ijtorch Denoise (Noise2Void)"):
        with pytest.raises(BridgeError, match=r"'ijtorch Denoise \(Noise2Void\)' is not available"):
            run_jython(SCRIPTS / "Denoise_Folder.py", input_dir=folder, output_dir=tmp_path / "out")
        return
    out = run_jython(SCRIPTS / "Denoise_Folder.py", input_dir=folder, output_dir=tmp_path / "out", epochs=1, steps=2)
    assert out == {"summary": f"1 image(s) denoised into {tmp_path / 'out'}"}
    result = read_tiff(tmp_path / "out" / "a.tif")
    assert result.data.shape == (48, 48) and result.data.dtype == np.float32
    assert result.data.std() < read_tiff(folder / "a.tif").data.std()


def test_run_jython_checks_parameters(ij, tmp_path):
    from ijtorch.bridge import run_jython

    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['outdir'\]; accepted: "):
        run_jython(SCRIPTS / "Segment_Folder.py", input_dir=tmp_path, outdir=tmp_path)
    with pytest.raises(ValueError, match="parameter 'output_dir' .* is required"):
        run_jython(SCRIPTS / "Segment_Folder.py", input_dir=tmp_path)
    with pytest.raises(ValueError, match=r"max_gap='two': expected an integer|could not convert"):
        run_jython(SCRIPTS / "Track_Movie.py", movie=tmp_path, output_dir=tmp_path, max_gap="two")


def _cli_macro(path: Path, *extra: str, timeout: int = 150):
    import subprocess
    import sys

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ijtorch.cli", "macro", str(path), *extra], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    return done, time.monotonic() - started


@pytest.mark.parametrize("code", [
    'newImage("s", "8-bit ramp", 64, 64, 5); print("made " + nSlices);',
    'newImage("h", "8-bit ramp", 64, 64, 2, 3, 4); print("made " + nSlices);',
], ids=["stack", "hyperstack"])
def test_cli_macro_ends_when_the_macro_leaves_a_stack_window_open(tmp_path, code):
    """A StackWindow starts non-daemon Java threads: the process used to wait for them for ever."""
    macro = tmp_path / "leave_open.ijm"
    macro.write_text(code)
    done, took = _cli_macro(macro)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert done.stdout.startswith("made "), done.stdout
    assert took < 90, f"took {took:.0f} s"  # JVM start included; a hang runs into the subprocess timeout


def test_cli_macro_error_status_survives_the_exit_and_timeout_stops_a_stuck_macro(tmp_path):
    bad = tmp_path / "bad.ijm"
    bad.write_text('newImage("s", "8-bit ramp", 64, 64, 5);\nfor (i = 0; i < 2; i++) {\n'
                   '    run("ijtorch Segment", "model=nucleii output=[label map]");\n}\n')
    done, _ = _cli_macro(bad)
    assert done.returncode == 1 and "model='nucleii' is neither" in done.stderr and "expected" not in done.stderr, done.stderr
    stuck = tmp_path / "stuck.ijm"
    stuck.write_text('newImage("s", "8-bit ramp", 64, 64, 5); wait(600000);')
    done, took = _cli_macro(stuck, "--timeout", "5")
    assert done.returncode == 124 and "timed out after 5 s" in done.stderr, done.stderr
    assert took < 90
