"""PNG / JPEG / BMP / GIF inputs (ijtorch.io.raster) and the pixel values tasks take (ijtorch.image.pixel_values)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from ijtorch.image import pixel_values
from ijtorch.io.raster import IMAGE_SUFFIXES, read_image, read_raster


@pytest.fixture
def grey() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".gif", ".webp"])
def test_lossless_grey_files_read_back_every_pixel(tmp_path, grey, suffix):
    path = tmp_path / f"g{suffix}"
    PILImage.fromarray(grey).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    image = read_raster(path)
    assert image.title == "g" and image.calibration.unit == "pixel"
    if image.axes == "YXS":  # WebP stores grey as RGB
        assert (image.data == image.data[..., :1]).all()
        image = image.with_data(image.data[..., 0], "YX")
    assert image.axes == "YX"
    np.testing.assert_array_equal(image.data, grey)


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    data = np.random.default_rng(1).integers(0, 65536, (20, 30)).astype(np.uint16)
    PILImage.fromarray(data).save(tmp_path / "deep.png")
    image = read_raster(tmp_path / "deep.png")
    assert image.axes == "YX" and image.data.dtype == np.uint16
    np.testing.assert_array_equal(image.data, data)


def test_colour_alpha_palette_and_bilevel_modes(tmp_path, grey):
    rgb = np.stack([grey, grey[::-1], 255 - grey], -1)
    PILImage.fromarray(np.dstack([rgb, np.full(grey.shape, 7, np.uint8)])).save(tmp_path / "rgba.png")
    image = read_raster(tmp_path / "rgba.png")
    assert image.axes == "YXS" and image.data.shape == (*grey.shape, 3)  # alpha dropped
    np.testing.assert_array_equal(image.data, rgb)
    palette = PILImage.fromarray(rgb).quantize(16)
    palette.save(tmp_path / "palette.png")
    expanded = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(read_raster(tmp_path / "palette.png").data, expanded)
    PILImage.fromarray(grey > 128).save(tmp_path / "mask.png")
    mask = read_raster(tmp_path / "mask.png")
    assert mask.axes == "YX" and set(np.unique(mask.data)) <= {0, 255}
    np.testing.assert_array_equal(mask.data > 0, grey > 128)
    smooth = np.stack([*np.meshgrid(np.arange(53) * 4, np.arange(37) * 6), np.full((37, 53), 90)], -1).astype(np.uint8)
    PILImage.fromarray(smooth).save(tmp_path / "photo.jpg", quality=95)
    photo = read_raster(tmp_path / "photo.jpg")
    assert photo.axes == "YXS" and np.abs(photo.data.astype(int) - smooth).mean() < 3  # lossy


def test_frames_of_an_animation_go_along_t(tmp_path, grey):
    frames = [PILImage.fromarray(np.roll(grey, k, axis=1)) for k in range(3)]
    frames[0].save(tmp_path / "movie.gif", save_all=True, append_images=frames[1:])
    image = read_raster(tmp_path / "movie.gif")
    assert image.axes == "TYX" and image.data.shape == (3, *grey.shape)
    for k in range(3):
        np.testing.assert_array_equal(image.data[k], np.roll(grey, k, axis=1))


def test_broken_or_foreign_files_raise_one_value_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("empty.png", "text.jpg"):
        with pytest.raises(ValueError, match=f"{name}'?: not a readable image"):
            read_raster(tmp_path / name)


def test_read_image_takes_tiffs_and_the_other_formats_by_suffix(tmp_path, grey):
    tifffile.imwrite(tmp_path / "a.tif", grey)
    PILImage.fromarray(grey).save(tmp_path / "b.png")
    for name in ("a.tif", "b.png"):
        np.testing.assert_array_equal(read_image(tmp_path / name).data, grey)
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg"} <= set(IMAGE_SUFFIXES)


def test_pixel_values_fill_non_finite_pixels_and_leave_the_input_alone():
    data = np.arange(12, dtype=np.float32).reshape(3, 4) + 5
    data[0, 0], data[1, 2], data[2, 3] = np.nan, np.inf, -np.inf
    before = data.copy()
    out = pixel_values(data)
    assert np.isfinite(out).all() and out[0, 0] == out[1, 2] == out[2, 3] == 6  # the lowest finite value
    np.testing.assert_array_equal(out[np.isfinite(before)], before[np.isfinite(before)])
    np.testing.assert_array_equal(data, before)  # a copy: the caller's image is unchanged
    assert not pixel_values(np.full((2, 2), np.nan)).any()  # no finite value at all: zeros
    clean = np.ones((2, 2), np.uint16)
    assert pixel_values(clean) is clean  # nothing to fix: no copy
    assert pixel_values(np.eye(2, dtype=bool)).dtype == np.uint8
    with pytest.raises(TypeError, match="dtype complex64; expected an integer or float image"):
        pixel_values(np.ones((2, 2), np.complex64))


def test_training_folders_take_png_images_and_label_maps(tmp_path, grey):
    """train (load_pairs), train-classifier (class folders), train-pixels and train-restoration read
    PNG as they read TIFF."""
    from ijtorch.tasks.classify import load_class_folders
    from ijtorch.tasks.pixels import _read_pairs
    from ijtorch.tasks.restore_train import _read_folder
    from ijtorch.train.data import load_pairs

    labels = np.zeros(grey.shape, np.uint16)
    labels[5:15, 5:20], labels[20:30, 30:50] = 1, 300  # 16-bit label values survive a PNG
    for kind in ("images", "labels"):
        (tmp_path / "seg" / kind).mkdir(parents=True)
    PILImage.fromarray(grey).save(tmp_path / "seg" / "images" / "a.png")
    PILImage.fromarray(labels).save(tmp_path / "seg" / "labels" / "a.png")
    tifffile.imwrite(tmp_path / "seg" / "images" / "b.tif", grey[::-1])
    PILImage.fromarray(labels[::-1]).save(tmp_path / "seg" / "labels" / "b.png")  # a TIFF image, a PNG label map
    (tmp_path / "seg" / "images" / ".a.png").write_bytes(b"macOS resource fork")  # hidden: left out
    pairs = load_pairs(tmp_path / "seg")
    assert [p.name for p in pairs] == ["a", "b"]
    np.testing.assert_array_equal(pairs[0].image, grey)
    np.testing.assert_array_equal(pairs[0].labels, labels)
    np.testing.assert_array_equal(pairs[1].labels, labels[::-1])

    rgb = np.stack([grey, grey // 2, 255 - grey], -1)
    for cls in ("g1", "s"):
        (tmp_path / "cls" / cls).mkdir(parents=True)
        PILImage.fromarray(rgb).save(tmp_path / "cls" / cls / "c.png")
    images, y, classes, names = load_class_folders(tmp_path / "cls")
    assert images.shape == (2, 3, *grey.shape) and classes == ["g1", "s"] and list(y) == [0, 1]
    np.testing.assert_array_equal(images[0], np.moveaxis(rgb, -1, 0))

    strokes = np.zeros(grey.shape, np.uint8)
    strokes[2, 2:9], strokes[30, 10:20] = 1, 2
    (tmp_path / "px" / "im").mkdir(parents=True), (tmp_path / "px" / "an").mkdir()
    PILImage.fromarray(grey).save(tmp_path / "px" / "im" / "p.png")
    PILImage.fromarray(strokes).save(tmp_path / "px" / "an" / "p.png")
    data, annotations, axes = _read_pairs(tmp_path / "px" / "im", tmp_path / "px" / "an")
    assert axes == "YX"
    np.testing.assert_array_equal(data[0], grey)
    np.testing.assert_array_equal(annotations[0], strokes)

    (tmp_path / "noisy").mkdir()
    PILImage.fromarray(grey).save(tmp_path / "noisy" / "n.png")
    assert [k for k, _ in _read_folder(tmp_path / "noisy")] == ["n"]
    np.testing.assert_array_equal(_read_folder(tmp_path / "noisy")[0][1], grey)
