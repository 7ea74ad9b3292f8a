"""RoiSet.zip and ImageJ TIFF writers/readers, checked with roifile and tifffile (no JVM)."""

from __future__ import annotations

import itertools
import zipfile

import numpy as np
import pytest
import roifile
import tifffile

from ijtorch.image import CANONICAL_AXES, Calibration, to_axes
from ijtorch.io.roiset import default_names, read_roiset, write_roiset
from ijtorch.io.tiff import imagej_dtype, read_tiff, write_imagej_tiff
from ijtorch.core.colors import imagej_lut
from ijtorch.tasks.outlines import outlines


def label_stack(seed: int = 0) -> np.ndarray:
    """Seeded T=2, Z=3 stack of rectangles, labels 1..n per plane (a label may repeat across planes)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((2, 3, 40, 50), np.uint16)
    for t, z in itertools.product(range(2), range(3)):
        for k in range(1, 5):
            y, x = rng.integers(0, 30), rng.integers(0, 40)
            lab[t, z, y:y + rng.integers(2, 9), x:x + rng.integers(2, 9)] = k + 4 * z
    return lab


# ------------------------------------------------------------------------------------ RoiSet


def test_roiset_round_trip_with_roifile(tmp_path):
    o = outlines(label_stack(), "TZYX")
    path = write_roiset(tmp_path / "RoiSet.zip", o)
    rois = roifile.roiread(path)
    assert len(rois) == len(o)
    names = default_names(o.labels, o.positions, o.axes)
    with zipfile.ZipFile(path) as zf:
        assert [i.filename for i in zf.infolist()] == [n + ".roi" for n in names]
    for i, roi in enumerate(rois):
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        assert roi.name == names[i]
        assert (roi.c_position, roi.z_position, roi.t_position) == tuple(o.positions[i])
        assert (roi.left, roi.top, roi.right - roi.left, roi.bottom - roi.top) == tuple(o.bboxes[i])
        np.testing.assert_array_equal(roi.coordinates(), o.polygon(i))
        assert not roi.options & roifile.ROI_OPTIONS.SUB_PIXEL_RESOLUTION
    back = read_roiset(path)
    assert back.names == tuple(names) and back.entries == tuple(names)
    np.testing.assert_array_equal(back.bboxes, o.bboxes)
    np.testing.assert_array_equal(back.positions, o.positions)
    assert set(back.roitypes) == {"POLYGON"}
    for got, want in zip(back.polygons, o.polygons):
        np.testing.assert_array_equal(got, want)


def test_roiset_names_positions_and_replacement(tmp_path):
    polys = [np.array([[1.5, 2.25], [9.0, 2.0], [5.0, 8.75]]), np.array([[0, 0], [4, 0], [4, 3], [0, 3]])]
    path = tmp_path / "set.zip"
    write_roiset(path, polys * 2, names=["a", "b", "a", "b"], positions=np.array([[1, 2, 3]] * 4))
    back = read_roiset(path)
    assert back.names == ("a", "b", "a", "b")
    assert back.entries == ("a", "b", "a-1", "b-1")  # unique entries, as ImageJ saves duplicates
    np.testing.assert_allclose(back.polygons[0], polys[0], atol=1e-6)  # sub-pixel kept
    assert back.positions.tolist() == [[1, 2, 3]] * 4
    write_roiset(path, polys)  # replaces, never appends
    back = read_roiset(path)
    assert back.names == ("roi_0001", "roi_0002") and back.positions.tolist() == [[0, 0, 0]] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set.zip"]  # no temporary files left


def test_roiset_rejects_bad_input(tmp_path):
    sq = np.array([[0, 0], [1, 0], [1, 1], [0, 1]])
    with pytest.raises(ValueError, match="path must end in .zip"):
        write_roiset(tmp_path / "x.roi", [sq])
    with pytest.raises(ValueError, match="names: expected 1 names"):
        write_roiset(tmp_path / "x.zip", [sq], names=["a", "b"])
    with pytest.raises(ValueError, match="without '/'"):
        write_roiset(tmp_path / "x.zip", [sq], names=["a/b"])
    with pytest.raises(ValueError, match=r"positions must be an integer array of shape \(1, 3\)"):
        write_roiset(tmp_path / "x.zip", [sq], positions=[[1, 2]])
    with pytest.raises(ValueError, match="m >= 3"):
        write_roiset(tmp_path / "x.zip", [sq[:2]])
    with pytest.raises(ValueError, match="does not exist"):
        write_roiset(tmp_path / "nope" / "x.zip", [sq])
    assert not list(tmp_path.iterdir())


def test_default_names():
    assert default_names(np.array([1, 12345]), None, "YX") == ["label_0001", "label_12345"]
    assert default_names(np.array([7]), np.array([[0, 3, 2]]), "TZYX") == ["label_0007_z003_t002"]
    with pytest.raises(ValueError, match="positions are required"):
        default_names(np.array([7]), None, "ZYX")


# ------------------------------------------------------------------------------------ TIFF

GRAY_AXES = ["YX", "ZYX", "CYX", "TYX", "ZCYX", "TZCYX", "XY", "YXC", "CZTYX", "TXYZ"]
RGB_AXES = ["YXS", "ZYXS", "TCYXS"]
DTYPES = [np.uint8, np.uint16, np.int16, np.float32]


def _random(shape, dtype, rng):
    if np.dtype(dtype).kind == "f":
        return rng.normal(size=shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("axes", GRAY_AXES)
def test_tiff_round_trip_gray(tmp_path, rng, dtype, axes):
    sizes = {"T": 2, "Z": 3, "C": 2, "Y": 5, "X": 7}
    data = _random(tuple(sizes[a] for a in axes), dtype, rng)
    cal = Calibration(pixel_width=0.25, pixel_height=0.5, voxel_depth=1.5, unit="µm", frame_interval=2.0)
    path = write_imagej_tiff(tmp_path / "img.tif", data, axes, calibration=cal)
    img = read_tiff(path)
    target = "".join(a for a in CANONICAL_AXES if a in axes)
    assert img.axes == target
    assert img.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(img.data, to_axes(data, axes, target))
    assert img.calibration == cal
    assert img.title == "img"
    with tifffile.TiffFile(path) as tf:
        assert tf.is_imagej and tf.series[0].axes == target


@pytest.mark.parametrize("axes", RGB_AXES)
def test_tiff_round_trip_rgb(tmp_path, rng, axes):
    sizes = {"T": 2, "Z": 3, "C": 2, "Y": 5, "X": 7, "S": 3}
    data = _random(tuple(sizes[a] for a in axes), np.uint8, rng)
    img = read_tiff(write_imagej_tiff(tmp_path / "rgb.tif", data, axes))
    assert img.axes == axes and img.data.dtype == np.uint8
    np.testing.assert_array_equal(img.data, data)
    assert img.calibration == Calibration()


@pytest.mark.parametrize("dtype,top,stored", [(np.uint32, 65535, np.uint16), (np.int64, 65536, np.float32),
                                              (np.uint64, 2**24, np.float32)])
def test_tiff_label_maps_are_stored_losslessly(tmp_path, dtype, top, stored):
    lab = np.zeros((2, 6, 8), dtype)
    lab[0, 1:3, 2:5] = top
    lab[1, 4, 4] = 3
    assert imagej_dtype(lab) == np.dtype(stored)
    path = write_imagej_tiff(tmp_path / "labels.tif", lab, "ZYX", lut=imagej_lut(), display_range=(0, 255))
    img = read_tiff(path)
    assert img.data.dtype == np.dtype(stored)
    np.testing.assert_array_equal(img.data, lab)
    with tifffile.TiffFile(path) as tf:
        meta = tf.imagej_metadata
        np.testing.assert_array_equal(np.asarray(meta["LUTs"]).reshape(-1, 3, 256)[0], imagej_lut())
        assert meta["min"] == 0 and meta["max"] == 255


def test_tiff_refuses_input_path_and_unsupported_data(tmp_path):
    src = tmp_path / "input.tif"
    data = np.zeros((4, 4), np.uint16)
    write_imagej_tiff(src, data, "YX")
    before = src.read_bytes()
    with pytest.raises(ValueError, match="is the input file"):
        write_imagej_tiff(src, data + 1, "YX", source=src)
    with pytest.raises(ValueError, match="is the input file"):
        write_imagej_tiff(tmp_path / "." / "input.tif", data + 1, "YX", source=[tmp_path / "other.tif", str(src)])
    assert src.read_bytes() == before
    with pytest.raises(FileExistsError, match="overwrite=False"):
        write_imagej_tiff(src, data, "YX", overwrite=False)
    with pytest.raises(ValueError, match="dtype float64 is not supported"):
        write_imagej_tiff(tmp_path / "o.tif", np.zeros((4, 4)), "YX")
    with pytest.raises(ValueError, match="dtype bool is not supported"):
        write_imagej_tiff(tmp_path / "o.tif", np.zeros((4, 4), bool), "YX")
    with pytest.raises(ValueError, match="fit neither uint16 nor exactly in float32"):
        write_imagej_tiff(tmp_path / "o.tif", np.full((4, 4), 2**25, np.int64), "YX")
    with pytest.raises(ValueError, match="axes='ZYX' has 3 letters"):
        write_imagej_tiff(tmp_path / "o.tif", data, "ZYX")
    with pytest.raises(ValueError, match="RGB data"):
        write_imagej_tiff(tmp_path / "o.tif", np.zeros((4, 4, 3), np.uint16), "YXS")
    with pytest.raises(ValueError, match=r"lut must be uint8 of shape \(3, 256\)"):
        write_imagej_tiff(tmp_path / "o.tif", data, "YX", lut=np.zeros((3, 10), np.uint8))
    with pytest.raises(ValueError, match="path must end in .tif"):
        write_imagej_tiff(tmp_path / "o.png", data, "YX")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.tif"]  # nothing half-written


def test_read_plain_multipage_tiff_reports_z(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    tifffile.imwrite(tmp_path / "plain.tif", data, photometric="minisblack")
    img = read_tiff(tmp_path / "plain.tif")
    assert img.axes == "ZYX" and img.calibration.unit == "pixel"
    np.testing.assert_array_equal(img.data, data)


def test_real_label_map_round_trip(tmp_path):
    from ijtorch import samples

    path = samples.sample_labels()[1]  # a bundled real nuclei label map (51 objects)
    lab = tifffile.imread(path)
    with pytest.raises(ValueError, match="is the input file"):
        write_imagej_tiff(path, lab, "YX", source=path)
    out = write_imagej_tiff(tmp_path / "labels.tif", lab, "YX", lut=imagej_lut(), source=path)
    np.testing.assert_array_equal(read_tiff(out).data, lab)
    o = outlines(lab, "YX")
    back = read_roiset(write_roiset(tmp_path / "RoiSet.zip", o))
    assert len(back) == len(o) == len(np.unique(lab)) - 1
    np.testing.assert_array_equal(back.bboxes, o.bboxes)
