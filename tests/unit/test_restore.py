"""Restoration (CARE, Noise2Void, Noise2Noise, artificial labelling), trust maps and metrics.

Clean images are real DSB 2018 fluorescence crops (``shared/data/nuclei_dsb2018``); noise is
simulated (Poisson-Gaussian, seeded). Models are tiny and trained for a few seconds on one thread,
so the thresholds below (loss falls, PSNR gain of at least 2 dB on a held-out image) are far below
what longer training reaches (about +7 dB, see benchmarks/bench_restore.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from ijtorch.metrics.restoration import normalize_minmse, nrmse, psnr, ssim
from ijtorch.models.restoration import n2v_mask
from ijtorch.tasks.restore import (BLINDSPOT_DEFAULTS, N2V_METHODS, TRAINING_DEFAULTS, check_dataset_shift,
                                   degradation_error_map, intensity_stats, restore)
from ijtorch.tasks.restore_train import denoise_n2v, train_restoration

torch.set_num_threads(1)
KINDS = ("care", "n2v", "n2n", "artificial_labelling")
TRAIN = dict(epochs=6, steps_per_epoch=15, batch_size=4, patch_size=48, base_channels=16, lr=2e-3,
             device="cpu", progress_bar=False)


def _noisy(clean: np.ndarray, rng: np.random.Generator, peak: float = 10.0, sigma: float = 0.05) -> np.ndarray:
    x = clean / clean.max()
    return (rng.poisson(x * peak) / peak + rng.normal(0, sigma, x.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def data(shared_data):
    import tifffile

    files = sorted((shared_data / "nuclei_dsb2018" / "train" / "images").glob("*.tif"))[:7]
    rng = np.random.default_rng(7)
    clean = [tifffile.imread(f).astype(np.float32)[:96, :96] for f in files]
    noisy = [_noisy(c, rng) for c in clean]
    noisy2 = [_noisy(c, rng) for c in clean]
    # artificial labelling: a blurred, gamma-distorted, noisy "other channel" predicts the clean one
    other = [(ndi.gaussian_filter(c / c.max(), 1.5) ** 0.5 + rng.normal(0, 0.05, c.shape)).astype(np.float32)
             for c in clean]
    return {"clean": clean, "noisy": noisy, "noisy2": noisy2, "other": other}


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("restoration")
    pairs = {"care": (data["noisy"], data["clean"]), "n2v": (data["noisy"], None),
             "n2n": (data["noisy"], data["noisy2"]), "artificial_labelling": (data["other"], data["clean"])}
    out = {}
    for kind in KINDS:
        inputs, targets = pairs[kind]
        summary = train_restoration(kind, inputs[:6], None if targets is None else targets[:6],
                                    output=root / kind, seed=1, **TRAIN)
        out[kind] = (root / kind, summary)
    return out


@pytest.fixture(scope="module")
def n2v_models(trained, data, tmp_path_factory):
    """Noise2Void model and training summary per method: the default one from ``trained``, the other trained here."""
    default = TRAINING_DEFAULTS["n2v"].get("method", "mask")
    out = {default: trained["n2v"]}
    for method in N2V_METHODS:
        if method != default:
            path = tmp_path_factory.mktemp("n2v") / method
            out[method] = (path, train_restoration("n2v", data["noisy"][:6], None, output=path, seed=1,
                                                   n2v_method=method, **TRAIN))
    return out


@pytest.mark.parametrize("method", N2V_METHODS)
def test_both_n2v_methods_denoise_and_keep_their_trust_maps(method, n2v_models, data):
    import json

    from ijtorch.models.restoration import RestorationModel

    path, summary = n2v_models[method]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["n2v"]["method"] == method and cfg["prediction"] == {"test_time_augmentation": True}
    assert (cfg["architecture"].get("type") == "blindspot") == (method == "blindspot")
    assert summary["last_train_loss"] < summary["first_train_loss"]
    gt, x = data["clean"][6], data["noisy"][6]  # never trained on
    r = restore(x, "YX", model=path, uncertainty=True, error_map=True, device="cpu")
    assert psnr(gt, r.restored) > psnr(gt, x) + 2.0, f"{method}: {psnr(gt, x):.2f} -> {psnr(gt, r.restored):.2f} dB"
    assert r.uncertainty.shape == r.error_map.shape == x.shape and r.uncertainty.max() > 0 and r.shift_warning is None
    again = restore(x, "YX", model=RestorationModel.load(path), device="cpu").restored  # reloaded: the same
    np.testing.assert_allclose(again, r.restored, rtol=1e-5, atol=1e-6)
    shifted = restore(x * 40 + 5000, "YX", model=path, device="cpu")
    assert shifted.shift_warning and "dataset shift" in shifted.shift_warning


def test_blindspot_noise_model_is_estimated_in_the_units_the_network_sees(n2v_models, data, monkeypatch):
    """The posterior mean needs the noise model of the normalised image, as in training (not raw units)."""
    from ijtorch.core.normalize import percentile_normalize
    from ijtorch.models import blindspot

    seen = []
    real = blindspot.estimate_noise_model
    monkeypatch.setattr(blindspot, "estimate_noise_model", lambda im, **kw: seen.append(real(im, **kw)) or seen[-1])
    x = data["noisy"][6] * 1000 + 300
    restore(x, "YX", model=n2v_models["blindspot"][0], device="cpu")
    expected = real(percentile_normalize(x, 1.0, 99.8))
    assert len(seen) == 8  # one per test-time augmentation view; the dihedral views share one noise model
    for got in seen:
        np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_blindspot_models_predict_in_tiles_of_their_training_patches(n2v_models, data):
    """Past its training patch the blind-spot prior degrades (33.8 -> 26.9 dB on the benchmark), so larger
    tiles, or none, are cut down to the patch size."""
    import json

    path = n2v_models["blindspot"][0]
    patch = json.loads((path / "config.json").read_text())["training"]["patch_size"][0]
    x = data["noisy"][6]
    small = restore(x, "YX", model=path, tile_size=patch, overlap=patch // 2, device="cpu").restored
    for kw in ({"tile_size": 4 * patch}, {"tiled": False}):
        np.testing.assert_array_equal(restore(x, "YX", model=path, device="cpu", **kw).restored, small)


def test_n2v_method_is_checked_and_kept_when_fine_tuning(n2v_models, data, tmp_path):
    import json

    small = dict(TRAIN, epochs=1, steps_per_epoch=2)
    with pytest.raises(ValueError, match="n2v_method='swap'"):
        train_restoration("n2v", data["noisy"][:2], output=tmp_path / "x", n2v_method="swap", **small)
    with pytest.raises(ValueError, match="2D only"):
        train_restoration("n2v", np.stack(data["noisy"][:2]), output=tmp_path / "x", axes="ZYX", ndim=3,
                          n2v_method="blindspot", **small)
    base = n2v_models["blindspot"][0]
    with pytest.raises(ValueError, match="fine-tuning keeps the network"):
        train_restoration("n2v", data["noisy"][:2], output=tmp_path / "x", base_model=base, n2v_method="mask",
                          **{k: v for k, v in small.items() if k != "base_channels"})
    train_restoration("n2v", data["noisy"][:2], output=tmp_path / "tuned", base_model=base,
                      **{k: v for k, v in small.items() if k != "base_channels"})
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["n2v"] == {"method": "blindspot"}
    # the blind-spot network's own batch size and rate when none is given (it diverged at the masked one's)
    train_restoration("n2v", data["noisy"][:2], output=tmp_path / "bs", n2v_method="blindspot", epochs=1,
                      steps_per_epoch=1, patch_size=32, base_channels=4, device="cpu", progress_bar=False)
    training = json.loads((tmp_path / "bs" / "config.json").read_text())["training"]
    assert (training["batch_size"], training["lr"]) == (BLINDSPOT_DEFAULTS["batch_size"], BLINDSPOT_DEFAULTS["lr"])
    assert BLINDSPOT_DEFAULTS["lr"] < TRAINING_DEFAULTS["n2v"]["lr"]


@pytest.mark.parametrize("kind", KINDS)
def test_training_lowers_loss_and_improves_psnr_on_held_out_image(kind, trained, data):
    path, summary = trained[kind]
    assert summary["kind"] == kind and summary["epochs_run"] == TRAIN["epochs"]
    assert summary["last_train_loss"] < summary["first_train_loss"]
    assert summary["best_val_loss"] < summary["first_val_loss"]
    source = data["other"] if kind == "artificial_labelling" else data["noisy"]
    gt, x = data["clean"][6], source[6]  # image 6 was never trained on
    result = restore(x, "YX", model=path, device="cpu")
    assert result.restored.dtype == np.float32 and result.restored.shape == x.shape
    assert result.model_type == kind
    before, after = psnr(gt, x), psnr(gt, result.restored)
    assert after > before + 2.0, f"{kind}: PSNR {before:.2f} dB -> {after:.2f} dB"
    assert ssim(gt, result.restored) > ssim(gt, x)


def test_model_directory_records_type_normalization_and_training_statistics(trained):
    import json

    cfg = json.loads((trained["care"][0] / "config.json").read_text())
    assert cfg["model_type"] == "care" and cfg["axes"] == "YX"
    assert cfg["normalization"] == {"method": "percentile", "low": 1.0, "high": 99.8}
    assert set(cfg["input_stats"]) >= {"percentiles", "min", "max", "noise"}
    assert len(cfg["weights"]["sha256"]) == 64
    method = TRAINING_DEFAULTS["n2v"].get("method", "mask")
    expected = {"method": "blindspot"} if method == "blindspot" else {"method": "mask", "mask_fraction": 0.01,
                                                                      "mask_radius": 2}
    assert json.loads((trained["n2v"][0] / "config.json").read_text())["n2v"] == expected


def test_n2v_keeps_the_last_epoch_and_care_the_best_validated_epoch(trained):
    """N2V's validation loss is mostly the noise of its held-out pixels, so it keeps its last epoch."""
    from safetensors.torch import load_file

    from ijtorch.models.store import load_model_dir

    for kind, checkpoint in (("n2v", "last.safetensors"), ("care", "best.safetensors")):
        path, summary = trained[kind]
        saved = load_model_dir(path)
        ckpt = load_file(str(path.with_name(path.name + ".checkpoints") / checkpoint))
        for name, tensor in saved.state_dict.items():
            assert torch.equal(tensor, ckpt[f"model.{name}"]), f"{kind}: {name} differs from {checkpoint}"
        expected = summary["epochs_run"] if kind == "n2v" else summary["best_epoch"]
        assert saved.config["training"]["weights_from_epoch"] == expected


def test_tiled_prediction_agrees_with_whole_image(trained, data):
    x = np.tile(data["noisy"][6], (2, 2))[:180, :170]  # 180 x 170: padding and uneven tiles
    whole = restore(x, "YX", model=trained["care"][0], tiled=False, device="cpu").restored
    tiled = restore(x, "YX", model=trained["care"][0], tile_size=64, overlap=40, device="cpu").restored
    span = float(np.percentile(whole, 99.8) - np.percentile(whole, 1))
    err = np.abs(whole - tiled)
    assert err.max() < 0.02 * span, f"max tile seam error {err.max() / span:.4f} of the range"
    assert err.mean() < 0.002 * span


def test_uncertainty_error_map_and_stacks(trained, data):
    movie = np.stack([data["noisy"][6], data["noisy"][5][:96, :96]])
    r = restore(movie, "TYX", model=trained["n2v"][0], uncertainty=True, error_map=True, device="cpu")
    assert r.axes == "TYX" and r.restored.shape == movie.shape
    assert r.uncertainty.shape == movie.shape and r.error_map.shape == movie.shape
    assert (r.uncertainty >= 0).all() and (r.error_map >= 0).all() and r.uncertainty.max() > 0
    assert len(r.error_fit) == 2 and all(0 <= f["sigma"] <= 4 for f in r.error_fit)
    # a C axis needs an explicit channel
    with pytest.raises(ValueError, match="channel"):
        restore(np.stack([movie[0], movie[0]]), "CYX", model=trained["n2v"][0], device="cpu")
    two = restore(np.stack([movie[0], movie[1]]), "CYX", model=trained["n2v"][0], channel=1, device="cpu")
    assert two.axes == "YX" and two.restored.shape == movie[1].shape
    with pytest.raises(ValueError, match="artificial_labelling"):
        restore(movie[0], "YX", model=trained["artificial_labelling"][0], error_map=True, device="cpu")


def test_error_map_highlights_a_hallucinated_structure(data):
    clean = data["clean"][0]
    observed = ndi.gaussian_filter(clean, 1.5)
    hallucinated = clean.copy()
    hallucinated[40:46, 40:46] += clean.max()  # a bright spot that is not in the data
    emap, fit = degradation_error_map(observed, hallucinated)
    assert fit["rsp"] > 0.8
    assert emap[40:46, 40:46].mean() > 5 * np.median(emap)
    good, gfit = degradation_error_map(observed, clean)
    assert 1.0 <= gfit["sigma"] <= 2.0 and gfit["rse"] < fit["rse"]
    with pytest.raises(ValueError, match="shape"):
        degradation_error_map(observed, clean[:10])


def test_dataset_shift_warning(trained, data):
    stats = intensity_stats(data["noisy"][:6])
    assert check_dataset_shift([data["noisy"][6]], stats) is None
    msg = check_dataset_shift([data["noisy"][6] * 50 + 1000], stats)
    assert msg is not None and "percentile" in msg
    noisier = _noisy(data["clean"][6], np.random.default_rng(3), peak=0.5, sigma=0.5)
    assert "noise" in check_dataset_shift([noisier], stats)
    r = restore(data["noisy"][6] * 50 + 1000, "YX", model=trained["care"][0], device="cpu")
    assert r.shift_warning is not None and "dataset shift" in r.shift_warning
    assert restore(data["noisy"][6], "YX", model=trained["care"][0], device="cpu").shift_warning is None


def test_n2v_mask_replaces_pixels_with_neighbours():
    batch = np.arange(2 * 32 * 32, dtype=np.float32).reshape(2, 1, 32, 32)
    masked, mask = n2v_mask(batch, np.random.default_rng(0), fraction=0.02, radius=2)
    assert mask.shape == batch.shape and 0.01 < mask.mean() < 0.03
    changed = masked != batch
    assert (changed <= (mask == 1)).all(), "only masked pixels change"
    assert changed.sum() == mask.sum(), "every masked pixel gets another value (the centre is excluded)"
    ys, xs = np.nonzero(mask[0, 0])
    v = masked[0, 0, ys, xs]
    dy, dx = v // 32 - ys, v % 32 - xs  # the value encodes where it came from (reflected at borders)
    assert (np.abs(dy) <= 4).all() and (np.abs(dx) <= 4).all()
    with pytest.raises(ValueError, match="fraction"):
        n2v_mask(batch, np.random.default_rng(0), fraction=0.7)


def test_denoise_n2v_train_and_apply_then_reuse(data, tmp_path):
    x = np.stack([data["noisy"][6], data["noisy"][5]])
    out = denoise_n2v(x, "ZYX", epochs=1, steps_per_epoch=3, batch_size=2, patch_size=32, base_channels=8,
                      device="cpu", save_to=tmp_path / "n2v-self")
    assert out.shape == x.shape and out.dtype == np.float32
    again = denoise_n2v(x, "ZYX", model=tmp_path / "n2v-self", device="cpu")
    np.testing.assert_allclose(again, out, atol=1e-5)


def test_3d_model_trains_and_restores_a_volume(data, tmp_path):
    vol = np.stack([data["noisy"][k][:32, :32] for k in range(6)] * 3)  # 18 x 32 x 32
    clean = np.stack([data["clean"][k][:32, :32] for k in range(6)] * 3)
    s = train_restoration("care", vol, clean, output=tmp_path / "care3d", axes="ZYX", ndim=3, epochs=1,
                          steps_per_epoch=2, batch_size=1, patch_size=32, base_channels=4, val_fraction=0,
                          device="cpu", progress_bar=False)
    assert s["epochs_run"] == 1
    r = restore(vol, "ZYX", model=tmp_path / "care3d", device="cpu")
    assert r.restored.shape == vol.shape and np.isfinite(r.restored).all()


def test_invalid_arguments_name_the_argument(data, tmp_path):
    with pytest.raises(ValueError, match="kind='denoise'"):
        train_restoration("denoise", data["noisy"], output=tmp_path / "x")
    with pytest.raises(ValueError, match="targets=None"):
        train_restoration("n2v", data["noisy"], data["clean"], output=tmp_path / "x")
    with pytest.raises(ValueError, match="needs targets"):
        train_restoration("care", data["noisy"], output=tmp_path / "x")
    with pytest.raises(ValueError, match="patch_size"):
        train_restoration("n2v", data["noisy"], output=tmp_path / "x", patch_size=50)
    with pytest.raises(ValueError, match="tile_size"):
        restore(data["noisy"][0], "YX", model=tmp_path / "x", tile_size=8)


# ------------------------------------------------------------------------------ metrics
def test_metrics_are_scale_and_offset_invariant():
    rng = np.random.default_rng(0)
    gt = ndi.gaussian_filter(rng.random((64, 64)), 2)
    assert psnr(gt, 3 * gt + 7) > 100
    assert ssim(gt, -2 * gt + 1) == pytest.approx(1.0, abs=1e-6)  # the fit also flips the sign
    assert nrmse(gt, 0.5 * gt - 4) == pytest.approx(0.0, abs=1e-9)


def test_metrics_match_closed_form_and_scikit_image_on_known_noise():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(1)
    gt = ndi.gaussian_filter(rng.random((128, 128)), 3)
    g, _ = normalize_minmse(gt, gt)
    sigma = 0.05
    noise = rng.normal(0, sigma, g.shape)
    pred_n = g + noise
    # least squares shrinks the prediction by v / (v + sigma^2) (v: variance of the normalised gt),
    # leaving a mean squared error of sigma^2 v / (v + sigma^2) against a data range of 1
    v, s2 = g.var(), noise.var()
    expected = -10 * np.log10(s2 * v / (v + s2))
    assert psnr(gt, pred_n) == pytest.approx(expected, abs=0.1)
    gn, xn = normalize_minmse(gt, pred_n)
    assert psnr(gt, pred_n) == pytest.approx(peak_signal_noise_ratio(gn, xn, data_range=1.0), rel=1e-9)
    assert ssim(gt, pred_n) == pytest.approx(structural_similarity(gn, xn, data_range=1.0), rel=1e-9)
    assert nrmse(gt, pred_n) == pytest.approx(np.sqrt(np.mean((gn - xn) ** 2)), rel=1e-9)
    assert psnr(gt, pred_n, normalize=False) == pytest.approx(
        peak_signal_noise_ratio(gt, pred_n, data_range=gt.max() - gt.min()), rel=1e-9)
    with pytest.raises(ValueError, match="shape"):
        psnr(gt, gt[:10])


def test_rgb_is_restored_per_channel_through_the_commands(trained, data, tmp_path):
    """Restore and Denoise (Noise2Void) take RGB images: R, G and B restored each alone by the same
    model, back as a three-channel float32 image; a model that takes one grey channel refuses RGB."""
    from ijtorch.commands.outputs import CommandInputs
    from ijtorch.commands.restore import (ArtificialLabellingParams, DenoiseN2VParams, RestoreParams,
                                          artificial_labelling_command, denoise_n2v_command, restore_command)
    from ijtorch.image import Image

    bands = [data["noisy"][6], data["noisy"][5], data["noisy"][4]]
    rgb = np.stack([np.clip(b / b.max() * 255, 0, 255) for b in bands], -1).astype(np.uint8)  # (Y, X, 3)
    inputs = CommandInputs(image=Image(rgb, "YXS", title="rgb.tif"))
    out = restore_command(inputs, RestoreParams(model=str(trained["care"][0]))).images[0]
    assert out.axes == "CYX" and out.data.shape == (3, 96, 96) and out.data.dtype == np.float32
    for c in range(3):  # each channel exactly as that channel restored alone
        alone = restore(rgb[..., c], "YX", model=trained["care"][0], tile_size=512, overlap=48, device="cpu").restored
        np.testing.assert_allclose(out.data[c], alone, rtol=1e-5, atol=1e-4)
    assert not np.allclose(out.data[0], out.data[1])

    fast = dict(epochs=1, steps=2)
    den = denoise_n2v_command(inputs, DenoiseN2VParams(**fast)).images[0]
    assert den.axes == "CYX" and den.data.shape == (3, 96, 96) and np.isfinite(den.data).all()
    series = np.stack([rgb, rgb[::-1]])  # T, Y, X, S
    res = restore(series, "TYXS", model=trained["n2v"][0], device="cpu")
    assert res.axes == "TCYX" and res.restored.shape == (2, 3, 96, 96)

    with pytest.raises(Exception, match="is an RGB image"):
        artificial_labelling_command(inputs, ArtificialLabellingParams(model=str(trained["artificial_labelling"][0])))
    with pytest.raises(ValueError, match="one grey channel, not RGB"):
        restore(rgb, "YXS", model=trained["artificial_labelling"][0], device="cpu")


def test_n2v_models_predict_with_test_time_augmentation(trained, data):
    """Noise2Void's default recipe records 8-fold test-time augmentation in the model and restore()
    honours it on every call (CARE models predict in one pass)."""
    import json

    from ijtorch.models.restoration import RestorationModel

    n2v, care = trained["n2v"][0], trained["care"][0]
    assert json.loads((n2v / "config.json").read_text())["prediction"] == {"test_time_augmentation": True}
    assert json.loads((care / "config.json").read_text())["prediction"] == {"test_time_augmentation": False}
    x = data["noisy"][6]
    plain = restore(x, "YX", model=n2v, device="cpu").restored
    np.testing.assert_allclose(plain, restore(x, "YX", model=n2v, uncertainty=True, device="cpu").restored,
                               atol=1e-5)
    single = RestorationModel.load(n2v)
    single.config["prediction"] = {"test_time_augmentation": False}
    assert np.abs(restore(x, "YX", model=single, device="cpu").restored - plain).max() > 1e-4


def test_server_restores_rgb_per_channel_and_refuses_it_for_artificial_labelling(trained, data, tmp_path,
                                                                                  monkeypatch):
    import asyncio
    import shutil

    httpx = pytest.importorskip("httpx")
    from ijtorch.serve import ServerConfig
    from ijtorch.serve._wire import MEDIA_TYPE, decode, encode
    from ijtorch.serve.app import create_app

    models = tmp_path / "models"
    for kind in ("care", "artificial_labelling"):
        shutil.copytree(trained[kind][0], models / kind)
    monkeypatch.setenv("IJTORCH_MODELS", str(models))
    bands = [data["noisy"][6], data["noisy"][5], data["noisy"][4]]
    rgb = np.stack([np.clip(b / b.max() * 255, 0, 255) for b in bands], -1).astype(np.uint8)

    async def post(model):
        transport = httpx.ASGITransport(app=create_app(ServerConfig()))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ac:
            return await ac.post("/restore", content=encode({"model": model, "axes": "YXS"}, {"image": rgb}),
                                 headers={"Content-Type": MEDIA_TYPE}, timeout=120)

    reply = asyncio.run(post("care"))
    assert reply.status_code == 200, reply.text
    header, arrays = decode(reply.content)
    assert header["axes"] == "CYX" and arrays["restored"].shape == (3, 96, 96)
    want = restore(rgb[..., 1], "YX", model=trained["care"][0], tile_size=512, overlap=48, device="cpu").restored
    np.testing.assert_allclose(arrays["restored"][1], want, rtol=1e-5, atol=1e-4)
    reply = asyncio.run(post("artificial_labelling"))
    assert 400 <= reply.status_code < 500 and "one grey channel, not RGB" in reply.text


def test_blindspot_models_refuse_bioimageio_export_in_one_line(n2v_models, tmp_path):
    from ijtorch.bioimageio.export import export_bioimageio
    from ijtorch.errors import ModelError

    with pytest.raises(ModelError, match="blind-spot Noise2Void model .* cannot be exported"):
        export_bioimageio(n2v_models["blindspot"][0], tmp_path / "bs.zip")
    assert not (tmp_path / "bs.zip").exists()
