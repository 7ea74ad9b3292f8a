"""``ijtorch Train Pixel Classifier`` / ``ijtorch Classify Pixels`` in the embedded ImageJ: ROI Manager
strokes become the right class masks, a tiny model trained from strokes beats chance on a real
image, the dialog is recorded by the Macro Recorder and the recorded line replays."""

from __future__ import annotations

import time

import numpy as np
import pytest

from _dialogs import find_dialog, press_ok
from ijtorch import bridge

pytestmark = [pytest.mark.jvm, pytest.mark.usefixtures("one_torch_thread")]


def _show(data: np.ndarray, title: str, axes: str = "YX"):
    from ijtorch.bridge import numpy_to_imageplus

    imp = numpy_to_imageplus(data, axes, title=title)
    imp.show()
    return imp


def _strokes_to_roi_manager(classes: list[str], image: str, train_options: str) -> None:
    """Each class's strokes in the open "strokes" image (values 1..C) → one composite (brush-like) ROI
    in the ROI Manager named ``<class>_1``; then the Train Pixel Classifier command on ``image``."""
    names = ", ".join(f'"{c}_1"' for c in classes)
    bridge.run_macro(f"""
        roiManager("reset"); names = newArray({names});
        for (k = 1; k <= {len(classes)}; k++) {{ selectImage("strokes"); setThreshold(k, k); run("Create Selection");
            roiManager("add"); roiManager("select", k - 1); roiManager("rename", names[k - 1]); }}
        selectImage("strokes"); close(); selectImage("{image}"); run("Select None"); roiManager("deselect");
        run("ijtorch Train Pixel Classifier", "{train_options}");
    """)


def test_roi_manager_strokes_become_class_masks(ij):
    from jpype import JClass

    from ijtorch.bridge.apply import strokes_from_manager
    from ijtorch.commands.pixels import ClassFrom, annotation_from_strokes

    _show(np.zeros((40, 60), np.uint8), "canvas")
    bridge.run_macro("""
        selectImage("canvas"); roiManager("reset");
        function add(name) { roiManager("add"); roiManager("select", roiManager("count") - 1); roiManager("rename", name); }
        makeLine(2, 5, 20, 5); Roi.setStrokeWidth(3); add("background_1");
        makeLine(2, 30, 10, 30, 10, 38); add("background_2");
        makePolygon(30, 2, 40, 2, 40, 12, 30, 12); add("cell_1");
        makeOval(45, 20, 10, 10); add("cell_2");
        makeRectangle(20, 20, 4, 4); setKeyDown("shift"); makeRectangle(26, 20, 4, 4); setKeyDown("none"); add("edge_1");
        makePoint(58, 38); add("edge_2");
        RoiManager.selectGroup(0); roiManager("deselect"); run("Select None");
    """)
    strokes = strokes_from_manager()
    assert [s.kind for s in strokes] == ["line", "line", "area", "area", "area", "points"]
    ann, names = annotation_from_strokes((40, 60), strokes)
    assert names == ["background", "cell", "edge"]
    # the 3-px straight line: rows 4..6 from x 2 to 20; the polyline 1 px wide
    assert np.all(ann[4:7, 3:20] == 1) and ann[2, 10] == 0 and ann[8, 10] == 0
    assert np.all(ann[30, 2:11] == 1) and np.all(ann[30:39, 10] == 1) and ann[34, 5] == 0
    # areas: exactly ImageJ's own masks (pixel counts as ImageJ measures them)
    rm = JClass("ij.plugin.frame.RoiManager").getInstance()
    imp = JClass("ij.WindowManager").getImage("canvas")
    cell_px = 0
    for i in (2, 3):
        imp.setRoi(rm.getRoi(i))
        cell_px += int(imp.getStatistics().pixelCount)
    assert int((ann == 2).sum()) == cell_px
    assert np.all(ann[2:12, 30:40] == 2) and ann[25, 50] == 2
    assert int((ann[18:26, 18:32] == 3).sum()) == 32 and np.all(ann[20:24, 24:26] == 0)  # composite: two squares
    assert ann[38, 58] == 3
    # classes kept from a base model keep their numbers; new names follow
    ann2, names2 = annotation_from_strokes((40, 60), strokes, classes=["edge", "other"])
    assert names2 == ["edge", "other", "background", "cell"] and ann2[38, 58] == 1 and ann2[5, 10] == 3
    with pytest.raises(Exception, match="has no group"):
        annotation_from_strokes((40, 60), strokes, class_from=ClassFrom.group)


@pytest.fixture
def cells(shared_data):
    import tifffile
    from skimage.segmentation import find_boundaries

    d = shared_data / "cells_usiigaci_phase" / "train"
    names = sorted(p.name for p in (d / "images").iterdir())
    out = []
    for name in names[:2]:
        im = tifffile.imread(d / "images" / name)[:192, :192]
        lab = tifffile.imread(d / "labels" / name)[:192, :192]
        truth = np.where(lab > 0, 2, 1).astype(np.uint8)
        truth[find_boundaries(lab, mode="thick")] = 3
        out.append((im, truth))
    return out


def test_strokes_in_imagej_train_a_model_that_beats_chance_on_a_real_image(ij, cells, tmp_path, monkeypatch):
    from jpype import JClass

    from ijtorch.models.store import read_config
    from ijtorch.tasks.pixels import classify_pixels, dice_per_class, scribbles_from_classes

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    (im, truth), (im2, truth2) = cells
    ann = scribbles_from_classes(truth, strokes_per_class=4, length=50, width=3, seed=0)
    _show(ann.astype(np.uint8), "strokes")
    _show(im, "cells")
    _strokes_to_roi_manager(["background", "cell", "boundary"], "cells", "name=cells-px steps=150 show_result")
    cfg = read_config(tmp_path / "cells-px")
    assert cfg["classes"] == ["background", "cell", "boundary"]
    assert cfg["training"]["annotated_pixels"] == {c: int((ann == k).sum()) for k, c in enumerate(cfg["classes"], 1)}
    shown = JClass("ij.WindowManager").getImage("cells-classes")
    assert shown is not None and str(shown.getProp("ijtorch.classes")) == "background,cell,boundary"
    # held-out image: better than chance (uniform guessing ~0.33 mean Dice; all-background ~0.3)
    r = classify_pixels(im2, "YX", model="cells-px")
    dice = dice_per_class(r.classes, truth2, 3)
    assert dice[0] > 0.6 and np.nanmean(dice) > 0.4, dice
    # another round: more strokes, warm start from the current model, same name
    bridge.run_macro('selectImage("cells"); run("ijtorch Train Pixel Classifier", '
                     '"name=cells-px base_model=cells-px steps=50 seed=1");')
    assert read_config(tmp_path / "cells-px")["training"]["warm_start"] is True


def test_classify_pixels_outputs_from_a_class_label_image_trained_model(ij, cells, tmp_path, monkeypatch):
    from jpype import JClass

    from ijtorch.tasks.pixels import classify_pixels, scribbles_from_classes

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    (im, truth), _ = cells
    _show(scribbles_from_classes(truth, strokes_per_class=3, seed=2).astype(np.uint16), "ann")
    _show(im, "cells")
    bridge.run_macro('selectImage("cells"); run("ijtorch Train Pixel Classifier", "source=[class label image] '
                     'label_image=ann classes=[bg,cell,edge] name=lab-px steps=60");'
                     'selectImage("cells"); run("ijtorch Classify Pixels", "model=lab-px probabilities");')
    WM = JClass("ij.WindowManager")
    classes, probs = WM.getImage("cells-classes"), WM.getImage("cells-probabilities")
    expected = classify_pixels(im, "YX", model="lab-px", probabilities=True)
    from ijtorch.bridge import imageplus_to_numpy

    np.testing.assert_array_equal(imageplus_to_numpy(classes).data, expected.classes)
    assert int(probs.getNChannels()) == 3 and str(probs.getStack().getSliceLabel(2)) == "p_cell"
    np.testing.assert_allclose(imageplus_to_numpy(probs).data, expected.probabilities, atol=1e-6)
    assert "class 2 = cell" in str(classes.getProperty("Info"))
    table = JClass("ij.measure.ResultsTable").getResultsTable()
    pixels = np.asarray(table.getColumn("pixels"))
    assert list(pixels) == [int((expected.classes == k).sum()) for k in (1, 2, 3)]
    assert [str(table.getStringValue("name", i)) for i in range(3)] == ["bg", "cell", "edge"]
    with pytest.raises(Exception, match="not a pixel classifier|is neither"):
        bridge.run_macro('selectImage("cells"); run("ijtorch Classify Pixels", "model=no-such-model");')


def test_classify_pixels_dialog_is_recorded_and_the_line_replays(ij, cells, tmp_path, monkeypatch):
    from jpype import JClass

    from ijtorch.tasks.pixels import scribbles_from_classes, train_pixels

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    (im, truth), _ = cells
    train_pixels([im], [scribbles_from_classes(truth, seed=3)], output=tmp_path / "rec-px", steps=30, device="cpu")
    _show(im, "cells")
    IJ, Recorder = JClass("ij.IJ"), JClass("ij.plugin.frame.Recorder")
    recorder = Recorder(False)
    flag = Recorder.class_.getField("record")
    flag.setBoolean(None, True)
    try:
        IJ.doCommand("ijtorch Classify Pixels")
        dialog = find_dialog("ijtorch Classify Pixels")
        dialog.getStringFields().get(0).setText("rec-px")
        dialog.getCheckboxes().get(0).setState(True)  # probabilities
        press_ok(dialog)
        deadline = time.time() + 60
        while JClass("ij.WindowManager").getImage("cells-probabilities") is None and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        text = str(recorder.getText())
    finally:
        flag.setBoolean(None, False)
        recorder.close()
    lines = [line for line in text.splitlines() if "ijtorch Classify Pixels" in line]
    assert len(lines) == 1 and "model=rec-px" in lines[0] and " probabilities" in lines[0], text
    bridge.run_macro('while (nImages > 1) { selectImage(nImages); close(); } selectImage("cells"); ' + lines[0])
    assert JClass("ij.WindowManager").getImage("cells-probabilities") is not None


def test_rgb_image_trains_and_classifies_by_colour_in_imagej(ij, tmp_path, monkeypatch):
    """An RGB ImagePlus (red and blue blobs of one brightness): strokes in the ROI Manager train a
    3-channel model, and Classify Pixels on an RGB image gives what classify_pixels gives."""
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy
    from ijtorch.models.store import read_config
    from ijtorch.tasks.pixels import classify_pixels, dice_per_class, scribbles_from_classes

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    rng = np.random.default_rng(0)

    def colour_blobs(seed: int):
        r = np.random.default_rng(seed)
        yy, xx = np.mgrid[:96, :96]
        truth = np.ones((96, 96), np.uint8)
        for k in range(10):
            cy, cx, rad = r.integers(10, 86), r.integers(10, 86), r.integers(5, 9)
            truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= rad * rad] = 2 + k % 2
        colours = np.array([[120, 120, 120], [200, 60, 100], [60, 100, 200]], np.float64)
        return np.clip(colours[truth - 1] + rng.normal(0, 10, (96, 96, 3)), 0, 255).astype(np.uint8), truth

    (image, truth), (test, test_truth) = colour_blobs(0), colour_blobs(1)
    ann = scribbles_from_classes(truth, strokes_per_class=3, length=30, width=1, seed=0)
    _show(ann, "strokes")
    rgb = _show(image, "colour", axes="YXS")
    assert int(rgb.getType()) == JClass("ij.ImagePlus").COLOR_RGB
    _strokes_to_roi_manager(["background", "red", "blue"], "colour", "name=rgb-px steps=150")
    cfg = read_config(tmp_path / "rgb-px")
    assert cfg["channels"] == 3 and cfg["classes"] == ["background", "red", "blue"]
    _show(test, "colour-test", axes="YXS")
    bridge.run_macro('selectImage("colour-test"); run("ijtorch Classify Pixels", "model=rgb-px");')
    shown = imageplus_to_numpy(JClass("ij.WindowManager").getImage("colour-test-classes")).data
    expected = classify_pixels(test, "YXS", model="rgb-px")
    np.testing.assert_array_equal(shown, expected.classes)
    assert np.all(dice_per_class(expected.classes, test_truth, 3) > 0.8)
