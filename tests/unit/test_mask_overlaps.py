"""Mask linking's pixel bookkeeping (issue #17, throughput): overlaps of shifted objects computed as
intersections of runs of pixels, and object shapes from runs in closed form, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from ijtorch.tasks._mask_linking import object_shapes
from ijtorch.tasks._mask_motion import MoviePixels
from ijtorch.tasks.linking import detect_labels


def _random_labels(rng, shape, n_objects):
    """Random blobs (unions of rectangles, so rows hold several runs of one label), labels not
    consecutive, some touching the border."""
    lab = np.zeros(shape, np.uint16)
    for label in rng.choice(np.arange(1, 4 * n_objects), n_objects, replace=False):
        for _ in range(rng.integers(1, 4)):
            lo = [int(rng.integers(-2, s - 1)) for s in shape]
            hi = [a + int(rng.integers(1, max(2, s // 2))) for a, s in zip(lo, shape)]
            lab[tuple(slice(max(a, 0), b) for a, b in zip(lo, hi))] = label
    return lab


def _brute_overlaps(movie, det, shift):
    s = det.spots
    key = {(int(f), int(lab)): i for i, (f, lab) in enumerate(zip(s["frame"], s["label"]))}
    out = {}
    for i, (t, label) in enumerate(zip(s["frame"], s["label"])):
        if t + 1 >= movie.shape[0]:
            continue
        pix = np.argwhere(movie[t] == label) + shift[i]
        inside = np.all((pix >= 0) & (pix < movie.shape[1:]), axis=1)
        hit = movie[t + 1][tuple(pix[inside].T)]
        for j, c in zip(*np.unique(hit[hit > 0], return_counts=True)):
            out[(i, key[(int(t) + 1, int(j))])] = float(c)
    return out


@pytest.mark.parametrize("shape", [(4, 23, 31), (3, 5, 12, 14)])
def test_overlaps_of_shifted_runs_match_brute_force(shape):
    rng = np.random.default_rng(len(shape))
    movie = np.stack([_random_labels(rng, shape[1:], 9) for _ in range(shape[0])])
    det = detect_labels(movie, "TZYX" if len(shape) == 4 else "TYX", with_outlines=False)
    s = det.spots
    starts = np.searchsorted(s["frame"], np.arange(shape[0] + 1))
    mp = MoviePixels(det.labels, s["frame"], s["label"], starts)
    n, ndim = len(s["frame"]), len(shape) - 1
    for shift in (np.zeros((n, ndim), np.int64), rng.integers(-6, 7, (n, ndim))):  # some leave the frame
        i, j, o = mp.overlaps(shift)
        assert np.all(np.diff(i * n + j) > 0)  # sorted by (i, j), each pair once
        assert dict(zip(zip(i.tolist(), j.tolist()), o.tolist())) == _brute_overlaps(movie, det, shift)
        some = rng.random(n) < 0.5
        i2, j2, o2 = mp.overlaps(shift, some)
        keep = some[i]
        assert np.array_equal(i2, i[keep]) and np.array_equal(j2, j[keep]) and np.array_equal(o2, o[keep])


@pytest.mark.parametrize("scale", [np.array([1.0, 1.0]), np.array([0.7, 0.3]), np.array([2.0, 0.5, 0.5])])
def test_object_shapes_from_runs_match_pixel_moments(scale):
    rng = np.random.default_rng(7)
    lab = _random_labels(rng, (6, 30, 40)[3 - scale.size:], 12)
    labels = np.unique(lab)[1:]
    axis, length, elong = object_shapes(lab, labels, scale)
    d = scale.size
    for k, label in enumerate(labels):
        pix = np.argwhere(lab == label) * scale  # (z,) y, x
        cov = np.cov(pix.T, bias=True).reshape(d, d) + np.diag(scale ** 2 / 12)
        w, v = np.linalg.eigh(cov[::-1, ::-1])  # x, y(, z) order, as object_shapes
        assert length[k] == pytest.approx(np.sqrt(12 * w[-1]), rel=1e-9)
        assert elong[k] == pytest.approx(1 - np.sqrt(max(w[-2], 0) / w[-1]), abs=1e-9)
        if w[-1] > w[-2] * (1 + 1e-6):  # the long axis is defined (up to its sign)
            assert abs(abs(axis[k, :d] @ v[:, -1]) - 1) < 1e-6
