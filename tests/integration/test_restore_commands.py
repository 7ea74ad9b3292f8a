"""``ijtorch Restore`` / ``Denoise (Noise2Void)`` / ``Train Restoration`` / ``Artificial Labelling``
from macros in the embedded ImageJ: output type, size, calibration and hyperstack axes, and equality
with the Python task function."""

from __future__ import annotations

import numpy as np
import pytest

from ijtorch import bridge

pytestmark = pytest.mark.jvm
NAME = "0402a81e75262469"
FAST = dict(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, base_channels=8, device="cpu",
            progress_bar=False)


@pytest.fixture(scope="module")
def registered():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def clean_noisy(shared_data):
    import tifffile

    clean = tifffile.imread(shared_data / "nuclei_dsb2018" / "train" / "images" / f"{NAME}.tif")[:96, :128]
    rng = np.random.default_rng(0)
    noisy = (rng.poisson(clean.astype(np.float64) / 8) * 8 + rng.normal(0, 4, clean.shape)).astype(np.float32)
    return clean.astype(np.float32), noisy


@pytest.fixture(scope="module")
def models(clean_noisy, tmp_path_factory):
    from ijtorch.tasks.restore_train import train_restoration

    clean, noisy = clean_noisy
    root = tmp_path_factory.mktemp("restore-models")
    train_restoration("care", noisy, clean, output=root / "care", **FAST)
    train_restoration("artificial_labelling", noisy, clean, output=root / "al", **FAST)
    return root


def _show(data, axes, title, calibrated=True):
    from ijtorch.bridge import numpy_to_imageplus
    from ijtorch.image import Calibration

    cal = Calibration(pixel_width=0.25, pixel_height=0.25, voxel_depth=1.5, unit="um", frame_interval=2.0)
    imp = numpy_to_imageplus(data, axes, title=title, calibration=cal if calibrated else None)
    imp.show()
    return imp


def _image(title):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy

    imp = JClass("ij.WindowManager").getImage(title)
    assert imp is not None, f"no image titled {title!r}"
    return imp, imageplus_to_numpy(imp)


def _check_calibration(imp):
    cal = imp.getCalibration()
    assert cal.pixelWidth == pytest.approx(0.25) and cal.pixelHeight == pytest.approx(0.25)
    assert str(cal.getUnit()) in ("µm", "um", "micron")


def test_restore_with_uncertainty_and_error_map_matches_python(ij, registered, models, clean_noisy):
    from ijtorch.tasks.restore import restore

    _, noisy = clean_noisy
    _show(noisy, "YX", "noisy")
    bridge.run_macro(f'selectImage("noisy"); run("ijtorch Restore", "model=[{models / "care"}] '
                     'uncertainty error_map tile_size=64");')
    expected = restore(noisy, "YX", model=models / "care", uncertainty=True, error_map=True, tile_size=64,
                       overlap=16, device="cpu")
    for title, want in (("noisy-restored", expected.restored), ("noisy-uncertainty", expected.uncertainty),
                        ("noisy-error map", expected.error_map)):
        imp, out = _image(title)
        assert imp.getBitDepth() == 32 and out.axes == "YX" and out.data.shape == noisy.shape
        _check_calibration(imp)
        np.testing.assert_allclose(out.data, want, rtol=1e-4, atol=1e-3 * float(np.abs(want).max()))


def test_restore_keeps_hyperstack_axes_and_picks_the_channel(ij, registered, models, clean_noisy):
    _, noisy = clean_noisy
    stack = np.stack([np.stack([noisy, noisy[::-1]]), np.stack([noisy[:, ::-1], noisy])])  # T=2, C=2
    imp = _show(stack, "TCYX", "movie")
    assert imp.getNChannels() == 2 and imp.getNFrames() == 2
    bridge.run_macro(f'selectImage("movie"); run("ijtorch Restore", "model=[{models / "care"}] channel=2");')
    out_imp, out = _image("movie-restored")
    assert out.axes == "TYX" and out.data.shape == (2, *noisy.shape)
    assert out_imp.getNFrames() == 2 and out_imp.getNChannels() == 1
    _check_calibration(out_imp)
    assert out_imp.getCalibration().frameInterval == pytest.approx(2.0)


def test_denoise_n2v_trains_on_the_current_image_and_saves_the_model(ij, registered, clean_noisy, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    _, noisy = clean_noisy
    _show(np.stack([noisy[:64, :64], noisy[32:96, 64:128]]), "ZYX", "zstack")
    bridge.run_macro('selectImage("zstack"); run("ijtorch Denoise (Noise2Void)", '
                     '"mode=[train on this image] epochs=1 steps=2 save_as=n2v-test");')
    imp, out = _image("zstack-n2v")
    assert imp.getBitDepth() == 32 and out.axes == "ZYX" and out.data.shape == (2, 64, 64)
    assert imp.getCalibration().pixelDepth == pytest.approx(1.5)
    _check_calibration(imp)
    assert (tmp_path / "n2v-test" / "config.json").is_file()
    bridge.run_macro('selectImage("zstack"); run("ijtorch Denoise (Noise2Void)", '
                     '"mode=[apply saved model] model=n2v-test");')
    _, again = _image("zstack-n2v")
    assert again.data.shape == (2, 64, 64) and np.isfinite(again.data).all()


def test_train_restoration_from_two_open_images_then_artificial_labelling(ij, registered, models, clean_noisy,
                                                                          tmp_path, monkeypatch):
    import json

    from ijtorch.errors import MacroError

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    clean, noisy = clean_noisy
    _show(noisy, "YX", "low")
    _show(clean.astype(np.uint8), "YX", "high")
    bridge.run_macro('run("ijtorch Train Restoration", "kind=care source=[open images] input=low target=high '
                     'name=care-test epochs=1 steps=2 patch_size=32");')
    cfg = json.loads((tmp_path / "care-test" / "config.json").read_text())
    assert cfg["model_type"] == "care"
    with pytest.raises(MacroError, match="needs target"):
        bridge.run_macro('run("ijtorch Train Restoration", "kind=n2n input=low name=x");')
    bridge.run_macro(f'selectImage("low"); run("ijtorch Artificial Labelling", "model=[{models / "al"}]");')
    imp, out = _image("low-label")
    assert imp.getBitDepth() == 32 and out.data.shape == noisy.shape
    _check_calibration(imp)
    with pytest.raises(MacroError, match="model_type"):
        bridge.run_macro('selectImage("low"); run("ijtorch Artificial Labelling", "model=care-test");')


def test_restore_and_denoise_take_rgb_images_per_channel(ij, registered, models, clean_noisy):
    """An RGB image (ImageJ's 24-bit colour) from a macro: each of R, G and B restored alone by the same
    model, shown as a three-channel 32-bit image that matches restore() on each channel in Python."""
    from ijtorch.errors import MacroError
    from ijtorch.tasks.restore import restore

    _, noisy = clean_noisy
    bands = [noisy, noisy[::-1], noisy[:, ::-1]]
    rgb = np.stack([np.clip(b / b.max() * 255, 0, 255) for b in bands], -1).astype(np.uint8)
    imp = _show(rgb, "YXS", "colour")
    assert imp.getBitDepth() == 24
    bridge.run_macro(f'selectImage("colour"); run("ijtorch Restore", "model=[{models / "care"}] tile_size=64");')
    out_imp, out = _image("colour-restored")
    assert out_imp.getBitDepth() == 32 and out_imp.getNChannels() == 3
    assert out.axes == "CYX" and out.data.shape == (3, *noisy.shape)
    _check_calibration(out_imp)
    for c in range(3):
        want = restore(rgb[..., c], "YX", model=models / "care", tile_size=64, overlap=16, device="cpu").restored
        np.testing.assert_allclose(out.data[c], want, rtol=1e-4, atol=1e-3 * float(np.abs(want).max()))
    bridge.run_macro('selectImage("colour"); run("ijtorch Denoise (Noise2Void)", '
                     '"mode=[train on this image] epochs=1 steps=2");')
    den_imp, den = _image("colour-n2v")
    assert den_imp.getNChannels() == 3 and den.data.shape == (3, *noisy.shape) and np.isfinite(den.data).all()
    with pytest.raises(MacroError, match="RGB"):
        bridge.run_macro(f'selectImage("colour"); run("ijtorch Artificial Labelling", "model=[{models / "al"}]");')
