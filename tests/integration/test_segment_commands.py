"""``ijtorch Segment`` / ``Train Segmentation`` / ``Evaluate`` from macros in the embedded ImageJ,
checked against the Python task functions on real shared data."""

from __future__ import annotations

import numpy as np
import pytest

from ijtorch import bridge
from ijtorch.errors import MacroError

pytestmark = pytest.mark.jvm
NAME = "0402a81e75262469"


@pytest.fixture
def nuclei_image(ij, shared_data):
    path = shared_data / "nuclei_dsb2018" / "train" / "images" / f"{NAME}.tif"
    return path


def test_segment_macro_matches_python_result(ij, nuclei_image):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.measure import measure
    from ijtorch.tasks.segment import segment

    image = read_tiff(nuclei_image)
    expected = segment(image.data, image.axes, model="nuclei")
    assert expected.n_objects > 5
    log = bridge.run_macro(
        f'open("{nuclei_image}"); run("ijtorch Segment", "model=nuclei output=all");'
        'print(getTitle()); print(bitDepth()); print(roiManager("count")); print(nResults);'
        'run("ijtorch Macro Functions"); Ext.ijtorchObjectCount(n); print(n);').log.splitlines()
    assert log == [f"{NAME}-labels", "16", str(expected.n_objects), str(expected.n_objects), str(expected.n_objects)]
    WindowManager = JClass("ij.WindowManager")
    labels_imp = WindowManager.getImage(f"{NAME}-labels")
    np.testing.assert_array_equal(imageplus_to_numpy(labels_imp).data, expected.labels)
    # the label image keeps the source calibration and shows labels with a colour LUT
    assert not labels_imp.getProcessor().isGrayscale()
    # ROI Manager: one ROI per object whose mask equals the object
    rm = JClass("ij.plugin.frame.RoiManager").getInstance()
    rois = rm.getRoisAsArray()
    for index in (0, len(rois) // 2, len(rois) - 1):
        roi = rois[index]
        b = roi.getBounds()
        mask = np.array(roi.getMask().getPixels(), dtype=np.int8).reshape(b.height, b.width) != 0
        window = expected.labels[b.y:b.y + b.height, b.x:b.x + b.width]
        values, counts = np.unique(window[mask], return_counts=True)
        assert len(values) == 1 and values[0] != 0, "a ROI covers exactly one object"
        np.testing.assert_array_equal(window == values[0], mask)
    # ResultsTable equals measure() of the Python result
    table = JClass("ij.measure.ResultsTable").getResultsTable()
    columns = measure(expected.labels, "YX", intensity=image.data, calibration=image.calibration)
    for key in ("label", "area", "centroid_x", "mean"):
        col = np.array(table.getColumn(table.getColumnIndex(key)) if hasattr(table, "getColumnIndex") else table.getColumn(key))
        np.testing.assert_allclose(col, columns[key], rtol=1e-5)


def test_segment_time_lapse_frame_by_frame(ij, nuclei_image):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy, numpy_to_imageplus
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    plane = read_tiff(nuclei_image).data[:128, :128]
    movie = np.stack([plane, np.roll(plane, 7, axis=1), np.flipud(plane)])
    imp = numpy_to_imageplus(movie, "TYX", title="movie")
    imp.show()
    bridge.run_macro('selectImage("movie"); run("ijtorch Segment", "model=nuclei output=[label map]");')
    out = imageplus_to_numpy(JClass("ij.WindowManager").getImage("movie-labels"))
    assert out.axes == "TYX"
    from skimage.segmentation import relabel_sequential

    for t in range(3):  # labels are unique over the whole movie, so compare each frame's partition
        np.testing.assert_array_equal(relabel_sequential(out.data[t])[0],
                                      relabel_sequential(segment(movie[t], "YX", model="nuclei").labels)[0])


def test_segment_with_test_time_augmentation_and_scale_matches_python(ij, nuclei_image):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    data = read_tiff(nuclei_image).data
    expected = segment(data, "YX", model="nuclei", test_time_augmentation=True, scale=1.5)
    assert not np.array_equal(expected.labels, segment(data, "YX", model="nuclei", scale=1.5).labels)
    assert not np.array_equal(expected.labels, segment(data, "YX", model="nuclei", test_time_augmentation=True).labels)
    bridge.run_macro(f'open("{nuclei_image}"); rename("tta"); '
                     'run("ijtorch Segment", "model=nuclei test_time_augmentation scale=1.5 output=[label map]");')
    np.testing.assert_array_equal(imageplus_to_numpy(JClass("ij.WindowManager").getImage("tta-labels")).data,
                                  expected.labels)


def test_segment_errors_are_macro_errors(ij):
    with pytest.raises(MacroError, match="needs an open image"):
        bridge.run_macro('run("ijtorch Segment", "model=nuclei");')
    with pytest.raises(MacroError, match="no-such-model"):
        bridge.run_macro('newImage("x", "8-bit", 32, 32, 1); run("ijtorch Segment", "model=no-such-model");')


def test_evaluate_two_open_label_images(ij):
    from jpype import JClass

    from ijtorch.bridge import numpy_to_imageplus

    gt = np.zeros((64, 64), np.uint16)
    gt[5:20, 5:20] = 1
    gt[30:50, 30:50] = 2
    pred = gt.copy()
    pred[30:50, 30:50] = 0  # one object missed
    for data, title in ((gt, "gt"), (pred, "pred")):
        numpy_to_imageplus(data, "YX", title=title).show()
    bridge.run_macro('run("ijtorch Evaluate", "prediction=pred ground_truth=gt");')
    window = JClass("ij.WindowManager").getWindow("Evaluation")
    table = window.getResultsTable()
    assert table.getValue("tp", 0) == 1 and table.getValue("fn", 0) == 1 and table.getValue("fp", 0) == 0
    assert table.getValue("recall", 0) == pytest.approx(0.5)


def test_train_from_roi_manager_makes_a_selectable_model(ij, shared_data, tmp_path, monkeypatch):
    from ijtorch.bridge import add_rois_to_manager, numpy_to_imageplus
    from ijtorch.bridge.apply import rois_from_manager
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.outlines import outlines
    from ijtorch.tasks.rasterize import polygons_to_labels

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    img = read_tiff(shared_data / "nuclei_dsb2018" / "train" / "images" / f"{NAME}.tif")
    gt = read_tiff(shared_data / "nuclei_dsb2018" / "train" / "labels" / f"{NAME}.tif")
    numpy_to_imageplus(img.data, "YX", title="annotated").show()
    add_rois_to_manager(outlines(gt.data, "YX"), reset=True)
    # the annotations the command trains on are exactly the ground-truth objects
    ann = rois_from_manager()
    raster = polygons_to_labels(ann.polygons, gt.data.shape)
    from skimage.segmentation import relabel_sequential

    raster, gt_seq = relabel_sequential(raster)[0], relabel_sequential(gt.data)[0]
    np.testing.assert_array_equal(raster[gt_seq > 0], gt_seq[gt_seq > 0])
    # outlines are outer boundaries, so only holes inside objects may differ (28 pixels here)
    assert np.count_nonzero(raster != gt_seq) <= 40
    log = bridge.run_macro(
        'selectImage("annotated"); run("ijtorch Train Segmentation", '
        '"source=[current image + ROI Manager] name=from-rois epochs=1 steps=2 patch_size=64");'
        'run("ijtorch Macro Functions"); print(Ext.ijtorchListModels());'
        'selectImage("annotated"); run("ijtorch Segment", "model=from-rois output=[label map]"); print(getTitle());').log
    lines = log.splitlines()
    assert lines[0].startswith("ijtorch Train Segmentation: model 'from-rois' saved to")
    assert "from-rois" in lines[1].split(",")
    assert lines[2] == "annotated-labels"
    assert (tmp_path / "from-rois" / "weights.safetensors").is_file()


def test_train_needs_annotations(ij):
    with pytest.raises(MacroError, match="ROI Manager is empty"):
        bridge.run_macro('newImage("blank", "8-bit", 64, 64, 1); if (isOpen("ROI Manager")) roiManager("reset");'
                         'run("ijtorch Train Segmentation", "name=x epochs=1 steps=1");')


def test_segment_macro_on_rgb_he_warns_and_reports_confidence(ij, shared_data):
    """Issue #15: an RGB H&E image runs through the menu command (luminance); the warning is in the
    Log and Ext.ijtorchShiftScore/ShiftWarning; the Results table has a confidence column;
    min_confidence drops objects."""
    path = shared_data / "nuclei_dsb2018_brightfield_histology" / "train" / "images" / "718751b439c05bdd.tif"
    log = bridge.run_macro(
        f'open("{path}"); print(bitDepth()); run("ijtorch Segment", "model=nuclei output=all");'
        'n0 = nResults; c = getResult("confidence", 0); print("n=" + n0); print("c=" + c);'
        'run("ijtorch Macro Functions"); Ext.ijtorchShiftScore(s); print("s=" + s); print("w=" + Ext.ijtorchShiftWarning());'
        'run("ijtorch Segment", "model=nuclei output=Results min_confidence=0.95"); print("n95=" + nResults);'
    ).log.splitlines()
    assert log[0] == "24"
    assert any("WARNING dataset shift" in line for line in log)
    values = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in log if line[:2] in ("n=", "c=", "s=", "w=")
              or line.startswith("n95=")}
    assert int(values["n"]) > 0 and 0.5 < float(values["c"]) <= 1
    assert float(values["s"]) > 1.75 and values["w"].startswith("dataset shift")
    assert int(values["n95"]) < int(values["n"])


def test_unet_watershed_model_trains_and_segments_from_macros(ij, shared_data, tmp_path, monkeypatch):
    """Issue #20: Train Segmentation with method=unet_watershed (folders) makes a selectable model;
    ijtorch Segment runs it from a macro (the method follows the model type) and matches Python."""
    import tifffile
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy
    from ijtorch.models.store import clear_model_cache, read_config
    from ijtorch.tasks.segment import segment

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path / "models"))
    clear_model_cache()
    src = shared_data / "cells_usiigaci_phase" / "train"
    for kind in ("images", "labels"):
        (tmp_path / kind).mkdir()
        for name in ("set15", "set24", "set26"):
            tifffile.imwrite(tmp_path / kind / f"{name}.tif", tifffile.imread(src / kind / f"{name}.tif")[:128, :160])
    log = bridge.run_macro(
        f'run("ijtorch Train Segmentation", "source=folders images=[{tmp_path / "images"}] '
        f'labels=[{tmp_path / "labels"}] name=unet-cells method=unet_watershed epochs=1 steps=2 patch_size=64");').log
    assert log.splitlines()[0].startswith("ijtorch Train Segmentation: model 'unet-cells' saved to")
    assert read_config(tmp_path / "models" / "unet-cells")["model_type"] == "unet_watershed"

    image = tmp_path / "cell.tif"
    tifffile.imwrite(image, tifffile.imread(src / "images" / "set41.tif")[:192, :192])
    expected = segment(tifffile.imread(image), "YX", model="unet-cells")
    log = bridge.run_macro(
        f'open("{image}"); run("ijtorch Segment", "model=unet-cells output=all");'
        'print(getTitle()); print(roiManager("count")); run("ijtorch Macro Functions"); Ext.ijtorchObjectCount(n); '
        'print(n);').log.splitlines()
    # a U-Net model reports its dataset-shift check like a star-convex one: the Log has its warning
    # exactly when segment() gives one (a 2-step model warns on most images)
    warnings = [line for line in log if "WARNING dataset shift" in line]
    assert len(warnings) == (1 if expected.shift_warning else 0) and expected.shift_score is not None
    log = [line for line in log if line not in warnings]
    assert log == ["cell-labels", str(expected.n_objects), str(expected.n_objects)]
    labels = imageplus_to_numpy(JClass("ij.WindowManager").getImage("cell-labels")).data
    np.testing.assert_array_equal(labels, expected.labels)
    clear_model_cache()
