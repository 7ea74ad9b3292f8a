"""U-Net boundary/interior + seeded watershed: targets, post-processing checked independently of
training on ground-truth-derived probabilities of the real phase-contrast cells, a short training
run whose loss falls, save/load/fine-tune round trips and tiled vs whole-image agreement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from ijtorch.metrics.instance import match_labels
from ijtorch.models import unet_watershed as uw
from ijtorch.train import unet_watershed_train as uwt


def gt_probabilities(labels: np.ndarray, *, boundary_width: int = 1, sigma: float = 1.0) -> uw.ProbabilityMaps:
    """One-hot 3-class targets blurred by ``sigma`` px: what a well-trained network would output."""
    t = uw.targets_from_labels(labels, boundary_width=boundary_width)
    p = np.stack([t == k for k in range(3)]).astype(np.float32)
    if sigma > 0:
        p = ndi.gaussian_filter(p, (0, sigma, sigma))
    return uw.ProbabilityMaps(background=p[0], boundary=p[1], interior=p[2])


@pytest.fixture(scope="module")
def cells(shared_data):
    from ijtorch.train.data import load_pairs

    return load_pairs(shared_data / "cells_usiigaci_phase" / "train")


def test_targets_separate_touching_objects():
    lab = np.zeros((10, 12), np.uint16)
    lab[2:8, 1:6] = 1
    lab[2:8, 6:11] = 2  # touching at column 5/6
    t = uw.targets_from_labels(lab)
    assert t.dtype == np.uint8 and set(np.unique(t)) == {0, 1, 2}
    assert (t[lab == 0] == 0).all()
    assert (t[2:8, 5] == 1).all() and (t[2:8, 6] == 1).all()  # both sides of the contact are boundary
    interior, n = ndi.label(t == 2)
    assert n == 2
    assert (uw.targets_from_labels(lab, boundary_width=2) == 2).sum() < (t == 2).sum()


def test_targets_and_postprocess_validate_inputs():
    with pytest.raises(ValueError, match="labels has dtype float32"):
        uw.targets_from_labels(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="boundary_width=0"):
        uw.targets_from_labels(np.zeros((4, 4), np.uint8), boundary_width=0)
    with pytest.raises(TypeError, match="probs must be a ProbabilityMaps"):
        uw.postprocess(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="seed_threshold"):
        uw.PostprocessConfig(seed_threshold=1.5)
    with pytest.raises(ValueError, match="unknown_key"):
        uw.PostprocessConfig(unknown_key=1)


def test_postprocess_on_ground_truth_probabilities_reproduces_cells(cells):
    """The watershed logic alone: GT-derived probabilities must give back the GT instances."""
    aps = []
    for pair in cells:
        pred = uw.postprocess(gt_probabilities(pair.labels))
        assert pred.dtype == np.int32 and pred.shape == pair.labels.shape
        res = match_labels(pair.labels, pred, iou_threshold=0.5)
        aps.append(res.accuracy)
        assert res.accuracy >= 0.9, f"{pair.name}: AP@0.5 {res.accuracy:.3f} (tp {res.tp} fp {res.fp} fn {res.fn})"
    assert np.mean(aps) >= 0.95, f"mean AP@0.5 {np.mean(aps):.3f} over {len(aps)} images"


def test_postprocess_keeps_seedless_components_and_drops_small_objects():
    lab = np.zeros((40, 40), np.uint16)
    lab[5:20, 5:20] = 1
    lab[30:33, 30:40] = 2  # 3 px thick: all boundary, no interior seed -> kept as its own object
    lab[0:2, 38:40] = 3  # 4 px: removed by min_size
    pred = uw.postprocess(gt_probabilities(lab, sigma=0), config=uw.PostprocessConfig(min_size=10))
    assert pred.max() == 2
    assert match_labels(lab, pred).tp == 2


def _dumbbell_probabilities() -> uw.ProbabilityMaps:
    """One foreground region whose interior is two 12-px discs joined by a 3-px neck (two cells
    touching where their boundary is not seen), and a 20 px disc with a 3 px background hole."""
    yy, xx = np.mgrid[:60, :100]
    interior = ((yy - 30) ** 2 + (xx - 20) ** 2 < 12 ** 2) | ((yy - 30) ** 2 + (xx - 50) ** 2 < 12 ** 2)
    interior |= (abs(yy - 30) <= 1) & (xx > 20) & (xx < 50)
    ring = ((yy - 30) ** 2 + (xx - 80) ** 2 < 10 ** 2) & ~((yy - 30) ** 2 + (xx - 80) ** 2 < 3 ** 2)
    interior |= ring
    fg = ndi.binary_dilation(interior, iterations=2)
    p_int = interior.astype(np.float32)
    p_bg = (~fg).astype(np.float32)
    return uw.ProbabilityMaps(background=p_bg, boundary=1 - p_bg - p_int, interior=p_int)


def test_distance_seeds_split_a_neck_that_threshold_seeds_keep_whole():
    probs = _dumbbell_probabilities()
    whole = uw.postprocess(probs)  # the default rule: one connected interior region, one seed
    assert whole[30, 20] == whole[30, 50] != 0
    cfg = uw.PostprocessConfig(seed_method="distance", seed_h=3.0, seed_sigma=1.0)
    split = uw.postprocess(probs, config=cfg)
    assert split[30, 20] != split[30, 50] and split[30, 20] and split[30, 50]
    assert len(np.unique(split[:, :65])) == 3  # background + the 2 discs: the neck makes no fragment
    # a required height above the discs' radius: only the higher peak seeds, the two stay one object
    merged = uw.postprocess(probs, config=cfg.model_copy(update={"seed_h": 20.0}))
    assert merged[30, 20] == merged[30, 50] != 0


def test_fill_holes_puts_the_hole_into_its_cell():
    probs = _dumbbell_probabilities()
    assert uw.postprocess(probs)[30, 80] == 0  # the hole is background by default
    filled = uw.postprocess(probs, config=uw.PostprocessConfig(fill_holes=True))
    assert filled[30, 80] == filled[30, 72] != 0
    with pytest.raises(ValueError, match="seed_method"):
        uw.PostprocessConfig(seed_method="peaks")


def _tiny_train(cells, tmp_path, **kw):
    return uwt.train([p.image for p in cells], [p.labels for p in cells], names=[p.name for p in cells],
                    model_dir=tmp_path / "model", epochs=4, steps_per_epoch=3, batch_size=2, patch_size=64,
                    base_channels=4, depth=2, lr=3e-3, seed=0, device="cpu", **kw)


def test_short_training_lowers_loss_and_round_trips(cells, tmp_path):
    out = _tiny_train(cells, tmp_path, augment=False, patience=None)
    hist = out.result.history
    assert len(hist) == 4
    assert hist[-1]["train_loss"] < hist[0]["train_loss"], [h["train_loss"] for h in hist]
    assert len(out.val_names) == 1 and set(out.val_names).isdisjoint(out.train_names)

    from ijtorch.models.store import read_config

    cfg = read_config(tmp_path / "model")
    assert cfg["model_type"] == "unet_watershed" and cfg["axes"] == "YX"
    assert cfg["training"]["val_names"] == list(out.val_names) and len(cfg["weights"]["sha256"]) == 64

    img = cells[0].image[:96, :128]
    loaded = uw.load_model(tmp_path / "model")
    p1 = uw.predict(out.model, img).interior
    p2 = uw.predict(loaded, img).interior
    np.testing.assert_allclose(p1, p2, atol=1e-6)
    labels = uw.predict_instances(tmp_path / "model", img)
    assert labels.dtype == np.int32 and labels.shape == img.shape

    # fine-tuning continues from the saved weights and keeps the architecture and split record
    tuned = uwt.train([p.image for p in cells], [p.labels for p in cells], names=[p.name for p in cells],
                     model_dir=tmp_path / "tuned", init=tmp_path / "model", epochs=1, steps_per_epoch=1,
                     batch_size=1, patch_size=64, augment=False, seed=1)
    assert tuned.model.net.config == loaded.net.config
    assert len(read_config(tmp_path / "tuned")["training"]["runs"]) == 2


def test_tiled_and_whole_image_predictions_agree(cells, tmp_path):
    out = _tiny_train(cells, tmp_path, patience=None)
    img = cells[1].image[:200, :232]  # not a multiple of the tile or the size multiple
    whole = uw.predict(out.model, img, tile_size=256, overlap=0).interior
    tiled = uw.predict(out.model, img, tile_size=128, overlap=64).interior  # 32 px context > receptive field
    assert whole.shape == img.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_predict_validates_axes_and_model(tmp_path):
    with pytest.raises(ValueError, match="axes='ZYX'"):
        uw.predict_instances(tmp_path, np.zeros((2, 8, 8), np.float32), "ZYX")
    from ijtorch.errors import ModelError

    with pytest.raises(ModelError):
        uw.load_model(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match="images .* and labels .* must be non-empty"):
        uwt.train([np.zeros((8, 8))], [], epochs=1)


# ------------------------------------------------------------- the task: segment / train_segmentation
@pytest.fixture
def user_models(tmp_path, monkeypatch):
    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path / "user-models"))
    from ijtorch.models.store import clear_model_cache

    clear_model_cache()
    yield tmp_path / "user-models"
    clear_model_cache()


def _task_train(cells, output, **kw):
    from ijtorch.tasks.segment import train_segmentation

    opts = dict(method="unet_watershed", output=output, epochs=4, steps_per_epoch=3, batch_size=2, patch_size=64,
                base_channels=4, depth=2, lr=3e-3, seed=0, device="cpu", augment=False, patience=None,
                val_fraction=0.25)
    opts.update(kw)
    return train_segmentation([p.image for p in cells], [p.labels for p in cells], **opts)


def test_train_segmentation_trains_resumes_and_fine_tunes_by_model_type(cells, tmp_path, user_models, one_torch_thread):
    """Issue #20: the task trains a U-Net + watershed model (loss falls), a time-limited run resumes
    from its checkpoint to the same end as a straight run, and a base model's type picks the method."""
    from ijtorch.models.store import read_config

    straight = _task_train(cells, tmp_path / "straight")
    losses = [h["train_loss"] for h in straight["history"]]
    assert straight["method"] == "unet_watershed" and straight["epochs_run"] == 4
    assert losses[-1] < losses[0], losses
    cfg = read_config(tmp_path / "straight")
    assert cfg["model_type"] == "unet_watershed" and cfg["metrics"]["n_images"] == 1
    assert set(straight["thresholds"]) >= {"fg_threshold", "seed_threshold"}

    polls = iter([False])  # cancel is polled before each epoch: one epoch, then stop (as a time limit does)
    first = _task_train(cells, tmp_path / "chunked", cancel=lambda: next(polls, True))
    assert first["cancelled"] and len(first["history"]) == 1
    assert (tmp_path / "chunked_checkpoints" / "last.safetensors").is_file()
    resumed = _task_train(cells, tmp_path / "chunked", resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([h["train_loss"] for h in resumed["history"]], losses, rtol=1e-4)

    # fine-tuning: no method given, the base model's type decides; a star-convex base is refused
    tuned = _task_train(cells, tmp_path / "tuned", method=None, base_model=str(tmp_path / "straight"), epochs=1,
                        steps_per_epoch=1)
    assert tuned["method"] == "unet_watershed" and tuned["base_model"] == str(tmp_path / "straight")
    runs = read_config(tmp_path / "tuned")["training"]["runs"]
    assert len(runs) == 2 and runs[-1]["fine_tuned_from"] == str(tmp_path / "straight")
    with pytest.raises(ValueError, match="fine-tunes only unet_watershed"):
        _task_train(cells, tmp_path / "bad", base_model="nuclei", epochs=1)


def test_segment_runs_a_unet_watershed_model_plane_by_plane(cells, tmp_path, user_models, one_torch_thread):
    """segment() picks the method from the model type: same SegmentationResult as for star-convex
    models, Z/T plane by plane with unique labels, per-object confidence = peak interior probability."""
    from ijtorch.tasks.segment import object_confidence, segment

    _task_train(cells, tmp_path / "m", epochs=2)
    img = cells[0].image[:160, :192]
    model = uw.load_model(tmp_path / "m")
    probs = uw.predict(model, img)
    expected = uw.postprocess(probs, config=model.postprocess)

    r = segment(img, "YX", model=str(tmp_path / "m"), device="cpu")
    np.testing.assert_array_equal(r.labels, expected)
    assert r.labels.dtype == np.uint16 and r.n_objects == int(expected.max()) == len(r.confidence)
    np.testing.assert_allclose(r.confidence, object_confidence(expected, probs.interior), atol=1e-6)
    assert r.prob_threshold == model.postprocess.fg_threshold and r.nms_threshold == model.postprocess.seed_threshold
    # the reference stored at training time reaches segment()'s result (the check runs in the same pass)
    assert r.shift_score is not None and r.shift_threshold is not None and "shift score" in r.shift_message

    stack = segment(np.stack([img, img[::-1]]), "TYX", model=str(tmp_path / "m"), device="cpu")
    n = r.n_objects
    assert stack.objects_per_plane == (n, n) and stack.n_objects == 2 * n
    np.testing.assert_array_equal(stack.labels[0], r.labels)
    if n:
        assert stack.labels[1].max() == 2 * n and stack.labels[1][stack.labels[1] > 0].min() == n + 1

    # thresholds from the surfaces: prob_threshold = foreground, nms_threshold = seed
    low = segment(img, "YX", model=str(tmp_path / "m"), device="cpu", prob_threshold=0.2, nms_threshold=0.9)
    assert (low.prob_threshold, low.nms_threshold) == (0.2, 0.9)
    if n:
        strict = segment(img, "YX", model=str(tmp_path / "m"), device="cpu",
                         min_confidence=float(np.median(r.confidence)) + 1e-6)
        assert strict.n_objects < n and (strict.confidence >= np.median(r.confidence)).all()
    with pytest.raises(ValueError, match="test-time augmentation is not available"):
        segment(img, "YX", model=str(tmp_path / "m"), test_time_augmentation=True)
    with pytest.raises(ValueError, match="scale=2"):
        segment(img, "YX", model=str(tmp_path / "m"), scale=2.0)
