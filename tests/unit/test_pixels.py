"""Pixel classification: sparse loss, training from strokes, model folders, tiling, segment() dispatch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ijtorch.models.pixel_classifier import PixelClassifierModel, pixel_features
from ijtorch.tasks.pixels import (class_areas, classify_pixels, dice_per_class, scribbles_from_classes,
                                  strokes_to_annotation, train_pixels)
from ijtorch.train.pixels_train import sparse_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(seed: int, shape=(128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Bright noisy disks on a dark noisy background; classes 1 background, 2 disk, 3 disk rim."""
    from skimage.segmentation import find_boundaries

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k in range(8):
        cy, cx, r = rng.integers(12, shape[0] - 12), rng.integers(12, shape[1] - 12), rng.integers(6, 11)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k + 1
    image = np.where(labels > 0, 160.0, 40.0) + rng.normal(0, 25, shape)
    classes = np.where(labels > 0, 2, 1).astype(np.uint8)
    classes[find_boundaries(labels, mode="inner")] = 3
    return image.astype(np.float32), classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    image, truth = _blobs(0)
    ann = scribbles_from_classes(truth, strokes_per_class=4, length=40, width=1, seed=0)
    out = tmp_path_factory.mktemp("pixmodel") / "blobs"
    summary = train_pixels([image], [ann], output=out, classes=["background", "disk", "rim"], steps=150, seed=0,
                           device="cpu")
    return out, summary


def test_sparse_loss_gradient_is_exactly_zero_at_unannotated_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    ann = torch.zeros(2, 16, 16, dtype=torch.long)
    ann[0, 3, 2:9] = 1
    ann[1, 10:12, 4] = 3
    ann[1, 0, 0] = 2
    loss = sparse_loss(logits, ann, torch.tensor([1.0, 2.0, 0.5]))
    loss.backward()
    grad = logits.grad.abs().sum(1)  # (N, Y, X)
    assert torch.all(grad[ann == 0] == 0)
    assert torch.all(grad[ann > 0] > 0)
    # and an all-unannotated batch gives a zero loss with zero gradient, not NaN
    logits.grad = None
    loss = sparse_loss(logits, torch.zeros_like(ann))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logits.grad == 0)


def test_training_from_strokes_beats_chance_on_a_new_image(trained):
    out, summary = trained
    assert summary["classes"] == ["background", "disk", "rim"]
    assert summary["annotated_pixels"]["rim"] > 0 and summary["metrics"]["train_accuracy"] > 0.8
    image, truth = _blobs(1)
    result = classify_pixels(image, "YX", model=out, probabilities=True, device="cpu")
    assert result.classes.shape == truth.shape and result.classes.dtype == np.uint8
    assert set(np.unique(result.classes)) <= {1, 2, 3}
    assert result.class_names == ("background", "disk", "rim")
    assert result.probabilities.shape == (3,) + truth.shape
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, atol=1e-5)
    dice = dice_per_class(result.classes, truth, 3)
    assert dice[0] > 0.9 and dice[1] > 0.6, dice  # chance (uniform) would be ~0.5 / 0.2
    assert np.nanmean(dice) > 0.55, dice


def test_save_load_round_trip_gives_identical_predictions(trained, tmp_path):
    from ijtorch.models.store import load_model, load_model_dir, read_config

    out, summary = trained
    cfg = read_config(out)
    assert cfg["model_type"] == "pixel_classifier" and cfg["classes"] == ["background", "disk", "rim"]
    assert (out / "weights.safetensors").is_file()
    image, _ = _blobs(2)
    a = summary["model"].predict_proba(image)
    b = load_model(out, device="cpu").predict_proba(image)
    c = PixelClassifierModel.from_model_dir(load_model_dir(out)).predict_proba(image)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, c, atol=1e-6)


def test_tiled_and_whole_predictions_agree(trained):
    out, _ = trained
    model = PixelClassifierModel.load(out)
    rng = np.random.default_rng(3)
    image = np.concatenate([_blobs(3)[0], _blobs(4)[0][:, :72]], axis=1)[:, :190]  # 128 x 190: not a tile multiple
    image = image + rng.normal(0, 1, image.shape).astype(np.float32)
    whole = model.predict_proba(image, tile_size=1024)
    tiled = model.predict_proba(image, tile_size=96, overlap=64)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    assert np.array_equal(tiled.argmax(0), whole.argmax(0))


def test_warm_start_keeps_knowledge_and_adds_a_class(trained):
    out, _ = trained
    image, truth = _blobs(5)
    ann = scribbles_from_classes(truth, strokes_per_class=1, length=20, width=1, seed=5)
    # one more round with few strokes from the current model (same classes): stays good
    s = train_pixels([image], [ann], output=None, base_model=out, steps=30, device="cpu")
    assert s["classes"] == ["background", "disk", "rim"]
    r = classify_pixels(_blobs(6)[0], "YX", model=s["model"])
    assert dice_per_class(r.classes, _blobs(6)[1], 3)[1] > 0.6
    # a fourth class: the head is re-initialised, the rest reused
    ann4 = ann.copy()
    ann4[:3, :3] = 4
    s4 = train_pixels([image], [ann4], output=None, base_model=out, classes=["bg", "disk", "rim", "corner"], steps=20,
                      device="cpu")
    assert s4["classes"] == ["bg", "disk", "rim", "corner"]
    assert s4["model"].predict_proba(image).shape[0] == 4


def test_dense_class_images_and_multichannel_train(tmp_path):
    image, truth = _blobs(7, shape=(64, 64))
    two = np.stack([image, image[::-1]])  # CYX
    s = train_pixels([two], [truth], axes="CYX", output=tmp_path / "m", steps=20, device="cpu")
    assert s["classes"] == ["class1", "class2", "class3"] and s["model"].n_channels == 2
    r = classify_pixels(np.moveaxis(two, 0, -1), "YXC", model=tmp_path / "m")
    assert r.classes.shape == (64, 64) and r.axes == "YX"


def test_stacks_are_classified_plane_by_plane(trained):
    out, _ = trained
    stack = np.stack([_blobs(8, (64, 64))[0], _blobs(9, (64, 64))[0]])
    r = classify_pixels(stack, "ZYX", model=out)
    assert r.classes.shape == (2, 64, 64) and r.axes == "ZYX"
    single = classify_pixels(stack[1], "YX", model=out)
    assert np.array_equal(r.classes[1], single.classes)


def test_segment_dispatches_pixel_models(trained):
    from ijtorch.tasks.segment import segment

    out, _ = trained
    image, _ = _blobs(10)
    seg = segment(image, "YX", model=str(out), device="cpu")
    direct = classify_pixels(image, "YX", model=out)
    assert seg.labels.dtype == np.uint16 and np.array_equal(seg.labels, direct.classes)
    assert seg.n_objects == len(np.unique(direct.classes))
    with pytest.raises(ValueError, match="pixel classifier: test-time augmentation"):
        segment(image, "YX", model=str(out), test_time_augmentation=True)


def test_bad_annotations_are_refused():
    image, truth = _blobs(11, (32, 32))
    with pytest.raises(ValueError, match="at least 2 classes"):
        train_pixels([image], [(truth == 1).astype(np.uint8)], output=None, steps=2)
    with pytest.raises(ValueError, match="no annotated pixel"):
        train_pixels([image], [np.zeros_like(truth)], output=None, steps=2)
    with pytest.raises(ValueError, match="differs from the image"):
        train_pixels([image], [truth[:10]], output=None, steps=2)
    with pytest.raises(ValueError, match="only 2 class names"):
        train_pixels([image], [truth], output=None, classes=["a", "b"], steps=2)


def test_class_areas_and_calibration():
    from ijtorch.image import Calibration

    classes = np.array([[1, 1, 2], [2, 2, 3]], np.uint8)
    t = class_areas(classes, ["bg", "a", "b"], calibration=Calibration(pixel_width=0.5, pixel_height=0.5, unit="micron"))
    assert list(t["pixels"]) == [2, 3, 1] and list(t["name"]) == ["bg", "a", "b"]
    np.testing.assert_allclose(t["area (micron^2)"], [0.5, 0.75, 0.25])
    np.testing.assert_allclose(t["fraction"], [2 / 6, 3 / 6, 1 / 6])


def test_strokes_become_class_masks():
    # a horizontal line (class 1, 3 px wide), a filled rectangle polygon (class 2), a later stroke wins
    strokes = [(np.array([[2.0, 5.5], [12.0, 5.5]]), 1, False, 3.0),
               (np.array([[20, 2], [26, 2], [26, 8], [20, 8]], float), 2, True, 1.0),
               (np.array([[5.5, 5.5]]), 3, False, 1.0)]
    ann = strokes_to_annotation((12, 30), strokes)
    assert set(np.unique(ann)) == {0, 1, 2, 3}
    assert ann[5, 5] == 3  # the point drawn last
    assert np.all(ann[4:7, 2:13][ann[4:7, 2:13] != 3] == 1) and ann[2, 8] == 0
    assert np.all(ann[2:8, 20:26] == 2) and ann[1, 22] == 0 and ann[2, 27] == 0


def test_features_are_rotation_consistent_and_shaped():
    x = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    f = pixel_features(x)  # 4 scales x (smoothed, gradient, LoG, 2 Hessian eigenvalues, local std) + the image
    assert f.shape == (25, 40, 40) and f.dtype == np.float32
    assert pixel_features(x, (1.0, 2.0, 4.0, 8.0), local_std=False).shape == (21, 40, 40)  # the earlier features
    g = pixel_features(np.rot90(x).copy())
    rotation_invariant = [0, 1, 2, 3, 6, 12]  # image, smoothed, gradient magnitude, LoG, local std (0.5, 1)
    np.testing.assert_allclose(np.rot90(f[rotation_invariant], axes=(1, 2)), g[rotation_invariant], atol=1e-5)


def test_feature_cache_keeps_several_images():
    """Training on two images, then the shift reference and prediction on the same images, reuse
    the features of both (a one-entry cache made them evict each other)."""
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 48, 48)).astype(np.float32)
    fa, fb = pixel_features(a), pixel_features(b)
    assert pixel_features(a.copy()) is fa and pixel_features(b) is fb
    assert pixel_features(a, local_std=False) is not fa and not fa.flags.writeable


def test_local_std_is_the_texture_of_the_neighbourhood():
    """Grainy and flat regions of the same mean: the local standard deviation tells them apart
    (the smoothed image does not), and a gain scales it without an offset."""
    rng = np.random.default_rng(1)
    x = np.full((64, 128), 0.5, np.float32)
    x[:, 64:] += rng.choice([-0.3, 0.3], size=(64, 64)).astype(np.float32)
    f = pixel_features(x)
    std_1 = f[1 + 6 + 5]  # scale 1's local std (scale 0.5 comes first, 6 features each)
    assert std_1[:, 8:56].max() < 1e-3 and std_1[:, 72:120].min() > 0.08 and std_1[:, 72:120].mean() > 0.25
    np.testing.assert_allclose(pixel_features(2 * x + 1)[1 + 6 + 5], 2 * std_1, rtol=1e-3, atol=1e-4)


def test_edge_energy_sees_texture_beyond_the_pixel():
    """A flat pixel 16 px from a grainy region: its own features (scales up to 4) are those of a flat
    region far away, its edge energy at scale 8 is not; the energy scales with a gain and ignores
    an offset (so the feature-space intensity augmentation stays exact)."""
    from ijtorch.models.pixel_classifier import DEFAULT_ENERGY_SIGMAS

    rng = np.random.default_rng(1)
    x = np.full((64, 192), 0.5, np.float32)
    x[:, 96:] += rng.choice([-0.3, 0.3], size=(64, 96)).astype(np.float32)
    f = pixel_features(x, energy_sigmas=DEFAULT_ENERGY_SIGMAS)
    assert f.shape == (27, 64, 192)
    np.testing.assert_array_equal(f[:25], pixel_features(x))  # the energy is appended after the channel's features
    near, far = (32, 80), (32, 20)
    np.testing.assert_allclose(f[:25, near[0], near[1]], f[:25, far[0], far[1]], atol=1e-6)
    assert f[26][far] == 0 and f[26][near] > 1e-3 and f[26][32, 150] > 20 * f[26][near]
    np.testing.assert_allclose(pixel_features(3 * x - 1, energy_sigmas=DEFAULT_ENERGY_SIGMAS)[25:], 3 * f[25:],
                               rtol=1e-4, atol=1e-5)


def test_folders_without_local_std_keep_their_features(trained, tmp_path):
    """A model saved before the local standard deviation existed (config features without
    ``local_std``: scales 1-8, 21 features) loads and predicts with exactly those features."""
    import json

    from ijtorch.models.pixel_classifier import LEGACY_SIGMAS, build_net, normalize_plane
    from ijtorch.models.store import save_model_dir

    out, _ = trained
    model = PixelClassifierModel.load(out)
    assert model.local_std and model.config["features"]["local_std"] is True
    config = json.loads(json.dumps({k: v for k, v in model.config.items() if k != "shift"}))
    config["features"] = {"kind": "multiscale"}  # neither sigmas nor local_std
    config["architecture"]["n_features"] = 21
    torch.manual_seed(0)
    net = build_net(config["architecture"])
    save_model_dir(tmp_path / "legacy", net.state_dict(), config)
    legacy = PixelClassifierModel.load(tmp_path / "legacy")
    assert legacy.sigmas == LEGACY_SIGMAS and not legacy.local_std
    image, _ = _blobs(3)
    normalized = normalize_plane(image[None], legacy.config["normalization"])
    feats = torch.from_numpy(np.array(pixel_features(normalized, LEGACY_SIGMAS, local_std=False)))
    assert feats.shape[0] == 21
    with torch.inference_mode():
        expected = torch.softmax(net.forward_maps(feats[None]), 1)[0].numpy()
    np.testing.assert_allclose(legacy.predict_proba(image), expected, atol=1e-5)


def test_folders_without_edge_energy_keep_their_features(trained, tmp_path):
    """A model saved before the edge energy (features: scales and local std, no ``energy_sigmas``;
    25 features) loads and predicts with exactly those features."""
    import json

    from ijtorch.models.pixel_classifier import DEFAULT_SIGMAS, build_net, normalize_plane
    from ijtorch.models.store import save_model_dir

    out, _ = trained
    model = PixelClassifierModel.load(out)
    assert model.energy_sigmas == (4.0, 8.0) and model.config["architecture"]["n_features"] == 27
    config = json.loads(json.dumps({k: v for k, v in model.config.items() if k != "shift"}))
    config["features"] = {"kind": "multiscale", "sigmas": list(DEFAULT_SIGMAS), "local_std": True}
    config["architecture"]["n_features"] = 25
    torch.manual_seed(0)
    net = build_net(config["architecture"])
    save_model_dir(tmp_path / "before-energy", net.state_dict(), config)
    earlier = PixelClassifierModel.load(tmp_path / "before-energy")
    assert earlier.energy_sigmas == ()
    image, _ = _blobs(3)
    feats = torch.from_numpy(np.array(pixel_features(normalize_plane(image[None], config["normalization"]))))
    with torch.inference_mode():
        expected = torch.softmax(net.forward_maps(feats[None]), 1)[0].numpy()
    np.testing.assert_allclose(earlier.predict_proba(image), expected, atol=1e-5)


# ------------------------------------------------------------------ the auto-context stage
def _dotted(seed: int, shape=(192, 192), block: int = 64, spacing: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Square regions of two classes: class 2 holds small dots on a grid of ``spacing`` px, class 1
    none, both under the same noise. A class-2 pixel between dots looks like class 1 to its own
    filters; the regions around it decide."""
    rng = np.random.default_rng(seed)
    cls = (rng.random((shape[0] // block, shape[1] // block)) < 0.5).astype(np.uint8) + 1
    cls = np.kron(cls, np.ones((block, block), np.uint8))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    oy, ox = rng.integers(spacing, size=2)
    dots = (((yy + oy) % spacing - spacing // 2) ** 2 + ((xx + ox) % spacing - spacing // 2) ** 2 <= 2) & (cls == 2)
    return (rng.normal(0, 0.3, shape) + dots).astype(np.float32), cls


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    image, truth = _dotted(0)
    ann = scribbles_from_classes(truth, strokes_per_class=4, length=40, width=3, seed=0)
    out = tmp_path_factory.mktemp("pixctx") / "blocks"
    summary = train_pixels([image], [ann], output=out, classes=["a", "b"], steps=150, seed=0, device="cpu",
                           context=True)
    return out, summary


def test_context_stage_decides_where_single_pixels_are_ambiguous(two_stage):
    out, summary = two_stage
    model = summary["model"]
    assert model.context_network is not None and summary["steps"] == 150
    for seed in (1, 2, 3):
        image, truth = _dotted(seed)
        first = dice_per_class(model.predict(image, context=False)[0], truth, 2)
        both = dice_per_class(model.predict(image)[0], truth, 2)
        assert np.nanmean(both) > np.nanmean(first) + 0.05, (first, both)
    # the first stage of a two-stage model is the one-stage model trained with the same seed
    image, truth = _dotted(0)
    ann = scribbles_from_classes(truth, strokes_per_class=4, length=40, width=3, seed=0)
    one = train_pixels([image], [ann], output=None, classes=["a", "b"], steps=150, seed=0, device="cpu")
    assert one["model"].context_network is None and "context" not in one["model"].config
    probe = _dotted(4)[0]
    np.testing.assert_allclose(one["model"].predict_proba(probe), model.predict_proba(probe, context=False), atol=1e-6)


def test_two_stage_folder_round_trip_tiling_and_warm_start(two_stage):
    from ijtorch.models.store import load_model_dir, read_config

    out, summary = two_stage
    cfg = read_config(out)
    assert cfg["context"]["sigmas"] == [0.0, 2.0, 4.0, 8.0, 16.0]
    assert cfg["context"]["architecture"]["n_features"] == 27 + 2 * 5
    md = load_model_dir(out)
    assert any(k.startswith("context.") for k in md.state_dict)
    loaded = PixelClassifierModel.load(out)
    rng = np.random.default_rng(4)
    image = np.concatenate([_dotted(4)[0], _dotted(5)[0][:, :62]], axis=1)[:150] + rng.normal(0, 0.01, (150, 254)).astype(np.float32)
    whole = summary["model"].predict_proba(image, tile_size=1024)
    np.testing.assert_allclose(loaded.predict_proba(image, tile_size=1024), whole, atol=1e-6)
    # the context is smoothed over the whole plane, so tiles give the whole-plane answer
    np.testing.assert_allclose(loaded.predict_proba(image, tile_size=96, overlap=64), whole, atol=1e-5)
    # a stack is classified plane by plane through both stages
    stack = classify_pixels(np.stack([image, image[::-1]]), "ZYX", model=out)
    assert np.array_equal(stack.classes[1], classify_pixels(image[::-1].copy(), "YX", model=out).classes)
    # warm start: the next round keeps the context stage (and starts from its weights)
    img, truth = _dotted(6)
    ann = scribbles_from_classes(truth, strokes_per_class=1, length=20, width=3, seed=6)
    nxt = train_pixels([img], [ann], output=None, base_model=out, steps=1, learning_rate=1e-9, device="cpu")
    assert nxt["model"].context_network is not None and nxt["model"].config["training"]["warm_start"]
    np.testing.assert_allclose(nxt["model"].predict_proba(image), whole, atol=1e-3)
    # ... or drops it when asked; a new class count gets a fresh context stage of the right width
    assert train_pixels([img], [ann], output=None, base_model=out, steps=2, context=False,
                        device="cpu")["model"].context_network is None
    ann3 = ann.copy()
    ann3[:2, :2] = 3
    s3 = train_pixels([img], [ann3], output=None, base_model=out, classes=["a", "b", "c"], steps=2, device="cpu")
    assert s3["model"].config["context"]["architecture"]["n_features"] == 27 + 3 * 5
    assert s3["model"].predict_proba(image).shape == (3, 150, 254)


def test_one_stage_folders_load_and_predict_as_before(trained, tmp_path):
    """A folder without the context stage (every pixel model saved before it existed) loads as a
    one-stage model: the same weights, the same probabilities with or without ``context``."""
    import json

    from ijtorch.errors import ModelError
    from ijtorch.models.store import load_model_dir, save_model_dir

    out, summary = trained
    md = load_model_dir(out)
    assert "context" not in md.config and not any(k.startswith("context.") for k in md.state_dict)
    assert set(md.state_dict) == set(summary["model"].network.state_dict())
    model = PixelClassifierModel.load(out)
    assert model.context_network is None and model.context_sigmas is None
    image, _ = _blobs(12)
    np.testing.assert_array_equal(model.predict_proba(image), model.predict_proba(image, context=False))
    np.testing.assert_allclose(model.predict_proba(image), summary["model"].predict_proba(image), atol=1e-6)
    # context weights without the config entry are refused, not silently ignored
    state = dict(md.state_dict, **{"context." + k: v.clone() for k, v in md.state_dict.items()})
    save_model_dir(tmp_path / "odd", state, json.loads(json.dumps({k: v for k, v in md.config.items() if k != "weights"})))
    with pytest.raises(ModelError, match="context-stage weights"):
        PixelClassifierModel.load(tmp_path / "odd")


def test_strokes_are_dealt_to_folds_that_each_hold_every_class():
    from ijtorch.train.pixels_train import stroke_folds

    ann = np.zeros((40, 60), np.uint8)
    ann[5, 2:50] = 1  # one long stroke of class 1: cut in two along its length
    ann[10:12, 5:15] = 2  # three strokes of class 2: dealt whole
    ann[20:22, 5:25] = 2
    ann[30:32, 5:10] = 2
    folds = stroke_folds(ann, 2, np.random.default_rng(0))
    assert np.all((folds >= 0) == (ann > 0))
    for c in (1, 2):
        assert set(np.unique(folds[ann == c])) == {0, 1}
    assert np.all(folds[5, 2:26] == folds[5, 2]) and folds[5, 2] != folds[5, 49]
    for rows in (slice(10, 12), slice(20, 22), slice(30, 32)):
        assert len(np.unique(folds[rows][ann[rows] == 2])) == 1
    # the largest stroke alone, the two smaller ones together
    assert folds[20, 5] != folds[10, 5] and folds[10, 5] == folds[30, 5]
