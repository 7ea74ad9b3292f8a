"""Pixel classifiers: scale augmentation (features near the strokes, and of the zoomed plane) and RGB input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ijtorch.models.pixel_classifier import DEFAULT_ENERGY_SIGMAS, DEFAULT_SIGMAS, pixel_features
from ijtorch.tasks.pixels import scribbles_from_classes, train_pixels
from ijtorch.train import pixels_scale
from ijtorch.train.pixels_scale import features_at, zoomed_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plane(shape=(2, 230, 301), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape), (0, 1.5, 1.5)).astype(np.float32) * 3 - 1


@pytest.mark.parametrize("energy", [(), DEFAULT_ENERGY_SIGMAS])  # the edge energy reaches farthest
@pytest.mark.parametrize("n_points", [40, 20000])  # few: per-block features; many: the whole plane
def test_features_at_equal_the_whole_planes_features(n_points, energy):
    plane = _plane()
    rng = np.random.default_rng(1)
    ys, xs = rng.integers(0, 230, n_points), rng.integers(0, 301, n_points)
    ys[:4], xs[:4] = [0, 229, 0, 229], [0, 300, 300, 0]  # the corners: borders reflected as on the whole plane
    whole = pixel_features(plane, DEFAULT_SIGMAS, True, energy)[:, ys, xs].T
    np.testing.assert_array_equal(features_at(plane, ys, xs, DEFAULT_SIGMAS, True, energy), whole)


def test_sparse_strokes_compute_only_blocks(monkeypatch):
    plane = _plane()
    monkeypatch.setattr("ijtorch.models.pixel_classifier.pixel_features",
                        lambda *a, **k: pytest.fail("the whole plane's features were computed for three pixels"))
    rows = features_at(plane, np.array([5, 100, 229]), np.array([7, 150, 300]), DEFAULT_SIGMAS, True)
    assert rows.shape == (3, 50) and np.isfinite(rows).all()


@pytest.mark.parametrize("zoom", [1.0, 2.0, 0.5])
def test_zoomed_rows_are_the_zoomed_planes_features_at_the_pixel_centres(zoom):
    plane = _plane((1, 64, 80), seed=2)
    mask = np.zeros((64, 80), bool)
    mask[10, 3] = mask[40, 70] = mask[63, 79] = mask[0, 0] = True
    zoomed = np.stack([ndi.zoom(c, zoom, order=1, mode="reflect", grid_mode=True) for c in plane])
    assert zoomed.shape[1:] == (round(64 * zoom), round(80 * zoom))
    ys, xs = np.nonzero(mask)
    zy, zx = ((ys + 0.5) * zoom).astype(int), ((xs + 0.5) * zoom).astype(int)
    expected = pixel_features(zoomed, DEFAULT_SIGMAS, True)[:, zy, zx].T
    np.testing.assert_allclose(zoomed_rows(plane, mask, zoom, DEFAULT_SIGMAS, True), expected, rtol=0, atol=1e-6)
    if zoom == 1.0:  # no zoom: the plane's own features
        np.testing.assert_allclose(expected, pixel_features(plane, DEFAULT_SIGMAS, True)[:, mask].T, atol=1e-6)


def test_training_records_its_zooms_and_refuses_bad_ones():
    rng = np.random.default_rng(0)
    truth = np.ones((64, 64), np.uint8)
    truth[20:40, 20:40] = 2
    image = (truth * 50.0 + rng.normal(0, 5, truth.shape)).astype(np.float32)
    ann = scribbles_from_classes(truth, strokes_per_class=2, length=20, width=1, seed=0)
    on = train_pixels([image], [ann], output=None, steps=5, device="cpu")
    off = train_pixels([image], [ann], output=None, steps=5, device="cpu", zooms=())
    assert on["model"].config["training"]["zooms"] == list(pixels_scale.SCALE_ZOOMS)
    assert off["model"].config["training"]["zooms"] == []
    # the standardisation is fitted on the rows the head learns from: with zooms they are other rows
    assert not np.allclose(on["model"].network.mean.numpy(), off["model"].network.mean.numpy())
    with pytest.raises(ValueError, match="zooms"):
        train_pixels([image], [ann], output=None, steps=5, device="cpu", zooms=(0.0,))


def _colour_regions(seed: int, shape=(96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """An RGB (YXS) image of reddish and bluish blobs of the same brightness on a grey background:
    grey values cannot tell the two blob classes apart, colour can. Classes 1 background, 2 red, 3 blue."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.ones(shape, np.uint8)
    for k in range(10):
        cy, cx, r = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(5, 9)
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2 + k % 2
    colours = np.array([[120, 120, 120], [200, 60, 100], [60, 100, 200]], np.float64)  # same channel sum
    rgb = colours[truth - 1] + rng.normal(0, 10, shape + (3,))
    return np.clip(rgb, 0, 255).astype(np.uint8), truth


def test_rgb_images_train_and_classify_by_colour(tmp_path):
    import tifffile

    from ijtorch.tasks.pixels import classify_pixels, dice_per_class

    image, truth = _colour_regions(0)
    ann = scribbles_from_classes(truth, strokes_per_class=3, length=30, width=1, seed=0)
    s = train_pixels([image], [ann], axes="YXS", output=tmp_path / "rgb", steps=150, seed=0, device="cpu",
                     classes=["background", "red", "blue"])
    assert s["model"].n_channels == 3
    test, test_truth = _colour_regions(1)
    r = classify_pixels(test, "YXS", model=tmp_path / "rgb", device="cpu")
    assert r.axes == "YX" and r.classes.shape == test_truth.shape
    assert np.all(dice_per_class(r.classes, test_truth, 3) > 0.8)  # red and blue told apart by colour alone
    # segment() with a pixel model trained on colour classifies the colour, not the grey (no rgb= conversion)
    from ijtorch.tasks.segment import segment

    seg = segment(test, "YXS", model=str(tmp_path / "rgb"), device="cpu")
    np.testing.assert_array_equal(seg.labels, r.classes)
    assert seg.rgb is None
    # the same pixels as channels (CYX) give the same classes: S is read as C
    as_channels = classify_pixels(np.moveaxis(test, -1, 0), "CYX", model=tmp_path / "rgb", device="cpu")
    np.testing.assert_array_equal(as_channels.classes, r.classes)
    # folders of RGB TIFFs (as the CLI's train-pixels reads them)
    (tmp_path / "im").mkdir(), (tmp_path / "ann").mkdir()
    tifffile.imwrite(tmp_path / "im" / "a.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "ann" / "a.tif", ann)
    f = train_pixels(tmp_path / "im", tmp_path / "ann", output=tmp_path / "rgb2", steps=150, seed=0, device="cpu",
                     classes=["background", "red", "blue"])
    assert f["model"].n_channels == 3
    with pytest.raises(ValueError, match="both channels"):
        classify_pixels(np.zeros((2, 8, 8, 3), np.uint8), "CYXS", model=tmp_path / "rgb", device="cpu")
