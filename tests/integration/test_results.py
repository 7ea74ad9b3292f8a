"""Results back into the real embedded ImageJ: label images, ROI Manager, RoiSet.zip, TIFF, tables."""

from __future__ import annotations

import time

import numpy as np
import pytest
import roifile
import tifffile

from ijtorch.bridge._convert import imageplus_to_numpy
from ijtorch.bridge.apply import add_rois_to_manager, labels_to_imageplus, results_table, roi_manager
from ijtorch.image import Calibration
from ijtorch.io.roiset import default_names, read_roiset, write_roiset
from ijtorch.io.tiff import read_tiff, write_imagej_tiff
from ijtorch.core.colors import glasbey_lut, imagej_lut
from ijtorch.tasks.measure import measure
from ijtorch.tasks.outlines import outlines

pytestmark = pytest.mark.jvm

CAL = Calibration(pixel_width=0.5, pixel_height=0.25, voxel_depth=2.0, unit="µm", frame_interval=3.0)


def squares(seed: int, shape=(2, 3, 60, 80), n=6) -> np.ndarray:
    """Seeded T, Z stack of non-overlapping rectangles with labels 1..n per plane."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint16)
    for idx in np.ndindex(*shape[:-2]):
        for k in range(n):
            y = 10 * (k % 3) + int(rng.integers(0, 3))
            x = 25 * (k // 3) + int(rng.integers(0, 5))
            lab[idx][y:y + int(rng.integers(2, 8)), x:x + int(rng.integers(2, 15))] = k + 1
    return lab


@pytest.fixture(scope="module")
def nuclei() -> np.ndarray:
    from ijtorch import samples

    path = samples.sample_labels()[1]  # a bundled real nuclei label map (51 objects)
    return tifffile.imread(path)


def roi_bounds(roi) -> tuple[int, int, int, int]:
    b = roi.getBounds()
    return int(b.x), int(b.y), int(b.width), int(b.height)


# ------------------------------------------------------------------------------ labels -> image


def test_labels_to_imageplus_16_bit_exact_with_colour_lut(ij, nuclei):
    imp = labels_to_imageplus(nuclei, "YX", calibration=CAL, title="nuclei labels")
    assert imp.getBitDepth() == 16 and str(imp.getTitle()) == "nuclei labels"
    back = imageplus_to_numpy(imp)
    assert back.axes == "YX"
    np.testing.assert_array_equal(back.data, nuclei)
    assert back.calibration == Calibration(**{**CAL.to_dict(), "unit": "µm"})
    from jpype import JInt

    lut = imp.getProcessor().getLut()
    assert imp.getProcessor().isColorLut() and not imp.getProcessor().isDefaultLut()
    for k in (0, 1, 7, 255):
        rgb = int(lut.getRGB(JInt(k))) & 0xFFFFFF
        assert [(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255] == glasbey_lut()[k].tolist()
    assert (imp.getDisplayRangeMin(), imp.getDisplayRangeMax()) == (0.0, 255.0)


def test_labels_to_imageplus_stack_float_and_java_calibration(ij):
    lab = squares(1)
    imp = labels_to_imageplus(lab, "TZYX", calibration=CAL)
    assert (imp.getNChannels(), imp.getNSlices(), imp.getNFrames()) == (1, 3, 2)
    assert imp.getBitDepth() == 16 and imp.isHyperStack()
    np.testing.assert_array_equal(imageplus_to_numpy(imp).data, lab)
    # More than 65535 labels: 32-bit float, display range up to the largest label.
    big = lab[0, 0].astype(np.int64) * 20000
    imp2 = labels_to_imageplus(big, "YX", calibration=imp)  # copies the source image's calibration
    assert imp2.getBitDepth() == 32
    np.testing.assert_array_equal(imageplus_to_numpy(imp2).data, big.astype(np.float32))
    assert imp2.getDisplayRangeMax() == big.max()
    cal = imp2.getCalibration()
    assert (cal.pixelWidth, cal.pixelHeight, cal.pixelDepth, str(cal.getUnit())) == (0.5, 0.25, 2.0, "µm")
    assert cal is not imp.getCalibration()
    with pytest.raises(ValueError, match="exceeds 2\\*\\*24"):
        labels_to_imageplus(np.full((3, 3), 2**25, np.int64), "YX")


# ------------------------------------------------------------------------------ ROI Manager


def test_rois_reach_the_visible_manager_with_names_bounds_masks(ij, nuclei):
    from jpype import JClass

    o = outlines(nuclei, "YX")
    rm = add_rois_to_manager(o, reset=True)
    assert rm.equals(JClass("ij.plugin.frame.RoiManager").getInstance()) and rm.isVisible()
    assert rm.getCount() == len(o) == len(np.unique(nuclei)) - 1
    names = default_names(o.labels)
    for i in range(len(o)):
        roi = rm.getRoi(i)
        assert str(rm.getName(i)) == names[i] == str(roi.getName())
        assert roi.getType() == JClass("ij.gui.Roi").POLYGON
        assert roi_bounds(roi) == tuple(o.bboxes[i])
        assert not roi.hasHyperStackPosition()
    rng = np.random.default_rng(7)
    for i in rng.choice(len(o), 8, replace=False):
        x, y, w, h = o.bboxes[i]
        mask = rm.getRoi(int(i)).getMask()
        got = np.array(mask.getPixels(), dtype=np.int8).view(np.uint8).reshape(h, w) > 0
        want = nuclei[y:y + h, x:x + w] == o.labels[i]
        if o.n_pieces[i] == 1:
            assert np.array_equal(got, want), f"mask of label {o.labels[i]}"
        assert got.sum() == o.areas[i]
    # Adding again appends; reset=True replaces.
    add_rois_to_manager(o)
    assert rm.getCount() == 2 * len(o)
    assert add_rois_to_manager(o, reset=True).getCount() == len(o)


def test_rois_of_a_stack_carry_czt_positions(ij):
    lab = squares(2)
    o = outlines(lab, "TZYX")
    rm = add_rois_to_manager(o, names=[f"obj{i}" for i in range(len(o))], reset=True)
    assert rm.getCount() == len(o)
    for i in range(len(o)):
        roi = rm.getRoi(i)
        assert roi.hasHyperStackPosition() and str(roi.getName()) == f"obj{i}"
        assert (roi.getCPosition(), roi.getZPosition(), roi.getTPosition()) == tuple(o.positions[i])
        assert roi_bounds(roi) == tuple(o.bboxes[i])


def test_ten_thousand_rois_in_bulk_quickly(ij):
    yy, xx = np.mgrid[0:1000, 0:1000]
    lab = ((yy // 10) * 100 + xx // 10 + 1).astype(np.uint16)
    lab[(yy % 10 == 9) | (xx % 10 == 9)] = 0  # 10 000 9x9 squares
    t0 = time.perf_counter()
    rm = add_rois_to_manager(outlines(lab, "YX"), reset=True)
    elapsed = time.perf_counter() - t0
    assert rm.getCount() == 10_000
    assert roi_bounds(rm.getRoi(9_999)) == (990, 990, 9, 9)
    assert elapsed < 5.0, f"label map -> 10 000 ROIs took {elapsed:.2f} s"  # target 2 s; slack for a busy CI


# ------------------------------------------------------------------------------ RoiSet.zip


def test_roiset_zip_reopened_by_imagej_roi_manager(ij, tmp_path, nuclei):
    o = outlines(nuclei, "YX")
    path = write_roiset(tmp_path / "RoiSet.zip", o)
    rm = roi_manager()
    rm.reset()
    assert rm.runCommand("Open", str(path))
    assert rm.getCount() == len(o) == len(roifile.roiread(path))
    names = default_names(o.labels)
    for i in range(len(o)):
        roi = rm.getRoi(i)
        assert roi_bounds(roi) == tuple(o.bboxes[i])
        assert str(rm.getName(i)) == names[i] == str(roi.getName())
        assert str(roi.getTypeAsString()) == "Polygon"


def test_roiset_zip_of_a_stack_keeps_positions_in_imagej(ij, tmp_path):
    o = outlines(squares(3), "TZYX")
    path = write_roiset(tmp_path / "stack.zip", o)
    rm = roi_manager()
    rm.reset()
    assert rm.runCommand("Open", str(path))
    assert rm.getCount() == len(o)
    for i in range(len(o)):
        roi = rm.getRoi(i)
        assert (roi.getCPosition(), roi.getZPosition(), roi.getTPosition()) == tuple(o.positions[i])
        assert roi_bounds(roi) == tuple(o.bboxes[i])
    np.testing.assert_array_equal(read_roiset(path).positions, o.positions)


# ------------------------------------------------------------------------------ TIFF


@pytest.mark.parametrize("dtype,bits", [(np.uint8, 8), (np.uint16, 16), (np.float32, 32)])
def test_tiff_written_by_us_opens_in_imagej(ij, tmp_path, dtype, bits):
    from jpype import JClass

    rng = np.random.default_rng(11)
    data = (rng.random((2, 3, 2, 9, 13)) * 200).astype(dtype)  # T, Z, C, Y, X
    path = write_imagej_tiff(tmp_path / "hyper.tif", np.moveaxis(data, 2, -1), "TZYXC", calibration=CAL)
    imp = JClass("ij.IJ").openImage(str(path))
    assert imp is not None and imp.getBitDepth() == bits
    assert (imp.getWidth(), imp.getHeight(), imp.getNChannels(), imp.getNSlices(), imp.getNFrames()) == (13, 9, 2, 3, 2)
    cal = imp.getCalibration()
    assert (cal.pixelWidth, cal.pixelHeight, cal.pixelDepth, cal.frameInterval) == (0.5, 0.25, 2.0, 3.0)
    assert str(cal.getUnit()) == "µm"
    back = imageplus_to_numpy(imp)
    assert back.axes == "TZCYX"
    np.testing.assert_array_equal(back.data, data)
    assert read_tiff(path).calibration == CAL


def test_label_tiff_opens_with_colour_lut(ij, tmp_path, nuclei):
    from jpype import JClass, JInt

    path = write_imagej_tiff(tmp_path / "labels.tif", nuclei, "YX", lut=imagej_lut(), display_range=(0, 255))
    imp = JClass("ij.IJ").openImage(str(path))
    assert imp.getBitDepth() == 16 and imp.getProcessor().isColorLut()
    np.testing.assert_array_equal(imageplus_to_numpy(imp).data, nuclei)
    lut = imp.getProcessor().getLut()
    for k in (0, 1, 7, 255):
        rgb = int(lut.getRGB(JInt(k))) & 0xFFFFFF
        assert [(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255] == glasbey_lut()[k].tolist()


# ------------------------------------------------------------------------------ Results table


def test_results_table_equals_measure(ij, nuclei):
    from ijtorch.bridge import run_macro

    rng = np.random.default_rng(3)
    intensity = rng.random(nuclei.shape).astype(np.float32)
    cols = measure(nuclei, "YX", intensity=intensity, calibration=CAL)
    rt = results_table(cols)
    assert rt.size() == len(cols["label"])
    for name, values in cols.items():
        np.testing.assert_allclose(np.array(rt.getColumnAsDoubles(rt.getColumnIndex(name))), values,
                                   rtol=1e-12, err_msg=name)
    # The system table is what macros see.
    n = run_macro('return "" + nResults + " " + getResult("area", 2);').value.split()
    assert int(n[0]) == len(cols["label"]) and float(n[1]) == cols["area"][2]
    other = results_table({"a": np.arange(3), "name": np.array(["x", "y", "z"])}, title="Other")
    assert other.size() == 3 and str(other.getStringValue("name", 1)) == "y"
    with pytest.raises(ValueError, match="has 2 rows, expected 3"):
        results_table({"a": np.arange(3), "b": np.arange(2)})
