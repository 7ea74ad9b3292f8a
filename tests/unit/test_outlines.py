"""Outline tracing, per-object measurements and the label LUT (no JVM)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import points_in_poly, regionprops_table

import ijtorch.tasks.outlines as outlines_mod
from ijtorch.image import Calibration
from ijtorch.core.colors import glasbey_lut, imagej_lut
from ijtorch.tasks.measure import COLUMNS, measure
from ijtorch.tasks.outlines import Outlines, outlines, polygon_area

EIGHT = np.ones((3, 3), bool)


def blobs(shape=(96, 128), n=25, seed=0) -> np.ndarray:
    """Seeded label map of non-overlapping filled ellipses (hole-free, one piece each)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for _ in range(n * 4):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        a, b, th = rng.uniform(2, 9), rng.uniform(2, 9), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        m = (u / a) ** 2 + (v / b) ** 2 <= 1
        if m.any() and not lab[ndi.binary_dilation(m)].any():
            k += 1
            lab[m] = k
        if k == n:
            break
    return lab


def polygon_mask(xy: np.ndarray, shape) -> np.ndarray:
    """Pixels whose centres lie inside the polygon (what ImageJ's PolygonFiller fills)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], axis=1)
    return points_in_poly(centres, xy).reshape(shape)


def expected_pieces(mask: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The largest 8-connected pieces (ties included) with holes filled, and the piece count."""
    cc, n = ndi.label(mask, structure=EIGHT)
    filled = [ndi.binary_fill_holes(cc == k) for k in range(1, n + 1)]
    top = max(int(f.sum()) for f in filled)
    return [f for f in filled if f.sum() == top], n


# ------------------------------------------------------------------------------------ outlines


def test_rectangle_polygon_is_pixel_corners_clockwise_from_top_left():
    lab = np.zeros((6, 7), np.uint8)
    lab[2:5, 1:4] = 3
    o = outlines(lab, "YX")
    assert o.labels.tolist() == [3]
    assert o.polygon(0).tolist() == [[1, 2], [4, 2], [4, 5], [1, 5]]
    assert o.bboxes.tolist() == [[1, 2, 3, 3]]
    assert o.areas.tolist() == [9.0] and polygon_area(o.polygon(0)) == 9.0
    assert o.positions.tolist() == [[0, 0, 0]] and o.planes.tolist() == [0]


def test_polygon_area_equals_pixel_area_for_simply_connected_objects():
    lab = blobs(n=30, seed=1)
    o = outlines(lab, "YX")
    counts = np.bincount(lab.ravel())
    assert np.array_equal(o.labels, np.flatnonzero(counts[1:]) + 1)
    np.testing.assert_array_equal(o.areas, counts[o.labels])
    for i in range(len(o)):  # and the polygon covers exactly the object's pixels
        assert np.array_equal(polygon_mask(o.polygon(i), lab.shape), lab == o.labels[i])


@pytest.mark.parametrize("seed", range(4))
def test_random_label_maps_match_filled_largest_8_connected_piece(seed):
    rng = np.random.default_rng(seed)
    for trial in range(40):
        h, w = rng.integers(1, 22, 2)
        lab = rng.integers(0, rng.integers(2, 6), (h, w)).astype(np.uint8)
        if trial % 2:
            lab = ndi.zoom(lab, 2, order=0)[:h, :w]
        o = outlines(lab, "YX")
        assert np.array_equal(o.labels, np.unique(lab[lab > 0]))
        for i, value in enumerate(o.labels):
            pieces, n = expected_pieces(lab == value)
            assert o.n_pieces[i] == n
            got = polygon_mask(o.polygon(i), lab.shape)
            assert any(np.array_equal(got, p) for p in pieces), (seed, trial, value)
            assert o.areas[i] == pieces[0].sum()
            xy = o.polygon(i)
            assert o.bboxes[i].tolist() == [xy[:, 0].min(), xy[:, 1].min(), np.ptp(xy[:, 0]), np.ptp(xy[:, 1])]


def test_holes_give_the_outer_boundary_only():
    lab = np.zeros((9, 9), np.uint16)
    lab[1:8, 1:8] = 5
    lab[3:6, 3:6] = 0  # hole
    lab[4, 4] = 6  # an object inside the hole
    o = outlines(lab, "YX")
    assert o.labels.tolist() == [5, 6]
    assert o.polygon(0).tolist() == [[1, 1], [8, 1], [8, 8], [1, 8]]
    assert o.areas.tolist() == [49.0, 1.0]


def test_split_object_keeps_largest_piece_and_diagonals_join():
    lab = np.zeros((8, 10), np.uint8)
    lab[1:3, 1:3] = 2  # small piece, 4 px
    lab[4:7, 5:9] = 2  # large piece, 12 px
    lab[0, 8] = lab[1, 9] = 4  # diagonal neighbours: one 8-connected object
    o = outlines(lab, "YX")
    assert o.labels.tolist() == [2, 4]
    assert o.n_pieces.tolist() == [2, 1]
    assert o.areas.tolist() == [12.0, 2.0]
    assert o.bboxes[0].tolist() == [5, 4, 4, 3]
    assert o.polygon(1).tolist() == [[8, 0], [9, 0], [9, 1], [10, 1], [10, 2], [9, 2], [9, 1], [8, 1]]


def test_objects_touching_the_border_and_single_pixels():
    lab = np.zeros((4, 5), np.int32)
    lab[0, :] = 1
    lab[:, 4] = 1
    lab[3, 0] = 2
    o = outlines(lab, "YX")
    assert o.areas.tolist() == [8.0, 1.0]
    assert o.polygon(1).tolist() == [[0, 3], [1, 3], [1, 4], [0, 4]]


def test_stack_positions_follow_axes():
    lab = np.zeros((2, 3, 10, 12), np.uint16)  # T, Z, Y, X
    lab[0, 1, 2:5, 3:7] = 4
    lab[1, 2, :, :] = 9
    lab[1, 0, 5, 5] = 1
    o = outlines(lab, "TZYX")
    assert o.labels.tolist() == [4, 1, 9]
    assert o.planes.tolist() == [1, 3, 5]
    assert o.positions.tolist() == [[0, 2, 1], [0, 1, 2], [0, 3, 2]]  # C, Z, T 1-based
    assert o.areas.tolist() == [12.0, 1.0, 120.0]
    o2 = outlines(np.moveaxis(lab, 0, -1), "ZYXT")  # same data, other layout: same objects
    assert sorted(map(tuple, o2.positions.tolist())) == sorted(map(tuple, o.positions.tolist()))
    c = outlines(lab[0], "CYX")
    assert c.positions.tolist() == [[2, 0, 0]]


def test_long_cycle_paths_agree_with_lock_step(monkeypatch):
    lab = blobs(shape=(80, 80), n=15, seed=3)
    lab[ndi.binary_dilation(lab == 0, iterations=1) & (lab == 0)] = 0
    ref = outlines(lab, "YX")
    monkeypatch.setattr(outlines_mod, "_LOCKSTEP_LIMIT", 8)
    monkeypatch.setattr(outlines_mod, "_JUMP_ROUNDS", 2)  # forces the connected-components path
    got = outlines(lab, "YX")
    np.testing.assert_array_equal(got.coords, ref.coords)
    np.testing.assert_array_equal(got.offsets, ref.offsets)


def test_float_and_bool_label_maps():
    lab = blobs(shape=(40, 40), n=5, seed=2)
    ref = outlines(lab, "YX")
    np.testing.assert_array_equal(outlines(lab.astype(np.float32), "YX").coords, ref.coords)
    b = outlines(lab > 0, "YX")
    assert set(b.labels.tolist()) == {1}


def test_empty_and_invalid_inputs():
    empty = outlines(np.zeros((5, 6), np.uint16), "YX")
    assert len(empty) == 0 and empty.polygons == [] and empty.offsets.tolist() == [0]
    assert isinstance(empty, Outlines)
    with pytest.raises(ValueError, match="axes='ZYX' has 3 letters"):
        outlines(np.zeros((4, 4), np.uint8), "ZYX")
    with pytest.raises(ValueError, match="labels must be >= 0"):
        outlines(-np.ones((4, 4), np.int16), "YX")
    with pytest.raises(ValueError, match="whole numbers"):
        outlines(np.full((4, 4), 1.5), "YX")
    with pytest.raises(ValueError, match="S"):
        outlines(np.zeros((4, 4, 3), np.uint8), "YXS")
    with pytest.raises(IndexError, match="out of range"):
        empty.polygon(0)


def test_real_nuclei_label_map():
    from ijtorch import samples

    path = samples.sample_labels()[1]  # a bundled real nuclei label map (51 objects)
    import tifffile

    lab = tifffile.imread(path)
    o = outlines(lab, "YX")
    ids = np.unique(lab[lab > 0])
    assert np.array_equal(o.labels, ids)
    counts = np.bincount(lab.ravel())
    for i, value in enumerate(o.labels):
        pieces, n = expected_pieces(lab == value)
        assert o.areas[i] == pieces[0].sum()
        assert np.array_equal(polygon_mask(o.polygon(i), lab.shape), pieces[0]) or len(pieces) > 1
        if n == 1 and pieces[0].sum() == counts[value]:
            assert o.areas[i] == counts[value]


# ------------------------------------------------------------------------------------ measure


def test_measure_matches_regionprops():
    lab = blobs(n=20, seed=4)
    img = np.random.default_rng(5).random(lab.shape).astype(np.float32)
    r = measure(lab, "YX", intensity=img, calibration=Calibration(pixel_width=0.5, pixel_height=0.25, unit="µm"))
    ref = regionprops_table(lab, img, properties=("label", "area", "centroid", "bbox", "intensity_mean",
                                                   "intensity_min", "intensity_max"))
    assert list(r) == [c for c in COLUMNS if c in r]
    assert len({len(v) for v in r.values()}) == 1
    np.testing.assert_array_equal(r["label"], ref["label"])
    np.testing.assert_array_equal(r["area"], ref["area"])
    np.testing.assert_allclose(r["area_cal"], ref["area"] * 0.125)
    np.testing.assert_allclose(r["centroid_x"], ref["centroid-1"] + 0.5)
    np.testing.assert_allclose(r["centroid_y"], ref["centroid-0"] + 0.5)
    np.testing.assert_allclose(r["x"], (ref["centroid-1"] + 0.5) * 0.5)
    np.testing.assert_allclose(r["y"], (ref["centroid-0"] + 0.5) * 0.25)
    np.testing.assert_array_equal(r["bbox_x"], ref["bbox-1"])
    np.testing.assert_array_equal(r["bbox_y"], ref["bbox-0"])
    np.testing.assert_array_equal(r["bbox_width"], ref["bbox-3"] - ref["bbox-1"])
    np.testing.assert_array_equal(r["bbox_height"], ref["bbox-2"] - ref["bbox-0"])
    np.testing.assert_allclose(r["mean"], ref["intensity_mean"], rtol=1e-6)
    np.testing.assert_array_equal(r["min"], ref["intensity_min"])
    np.testing.assert_array_equal(r["max"], ref["intensity_max"])


def test_measure_stack_rows_line_up_with_outlines():
    lab = np.stack([blobs(shape=(50, 60), n=6, seed=s) for s in range(6)]).reshape(2, 3, 50, 60)
    r = measure(lab, "TZYX", calibration={"voxel_depth": 2.0})
    o = outlines(lab, "TZYX")
    np.testing.assert_array_equal(r["label"], o.labels)
    np.testing.assert_array_equal(r["slice"], o.positions[:, 1])
    np.testing.assert_array_equal(r["frame"], o.positions[:, 2])
    np.testing.assert_allclose(r["z"], (o.positions[:, 1] - 1) * 2.0)
    assert "mean" not in r and "channel" not in r
    big = np.zeros((5, 5), np.uint32)
    big[1, 1] = 2**30
    assert measure(big, "YX")["label"].tolist() == [2**30]
    with pytest.raises(ValueError, match="intensity must have the labels' shape"):
        measure(lab, "TZYX", intensity=np.zeros((3, 3)))


# ------------------------------------------------------------------------------------ colours


def test_glasbey_lut_is_distinct_with_black_background():
    lut = glasbey_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in lut.tolist()}) == 256
    assert lut[1:].astype(int).sum(axis=1).min() > 60  # no label is near black
    assert imagej_lut().shape == (3, 256)
    np.testing.assert_array_equal(glasbey_lut(), lut)  # deterministic
    with pytest.raises(ValueError, match="n must be an integer from 2 to 4096"):
        glasbey_lut(1)
