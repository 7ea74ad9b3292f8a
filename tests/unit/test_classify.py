"""Classification: training on data with a clear signal, metrics on hand-computed cases, object
crops, embeddings, clustering and export."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ijtorch.metrics.classification import (  # noqa: E402
    balanced_accuracy,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    write_confusion_png,
)
from ijtorch.tasks.classify import (  # noqa: E402
    classify,
    cluster_embeddings,
    embed,
    object_crops,
    object_ids,
    stratified_split,
    train_classifier,
    write_features,
)

CLASSES = ["disk", "square", "ring"]


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def shapes(n_per_class, size=24, seed=0):
    """Two-channel items: a disk, a square or a ring of random radius/position in noise (uint16)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for k, n in enumerate(n_per_class):
        for _ in range(n):
            cy, cx = rng.uniform(size / 2 - 2, size / 2 + 2, 2)
            r = rng.uniform(5, 8)
            d = np.hypot(yy - cy, xx - cx)
            if k == 0:
                m = d < r
            elif k == 1:
                m = (np.abs(yy - cy) < r * 0.85) & (np.abs(xx - cx) < r * 0.85)
            else:
                m = (d < r) & (d > r - 2.5)
            sig = 200 + 800 * m + rng.normal(0, 60, (size, size))
            other = 300 + rng.normal(0, 60, (size, size))  # uninformative second channel
            images.append(np.stack([sig, other]).clip(0, 65535).astype(np.uint16))
            labels.append(CLASSES[k])
    return np.stack(images), np.asarray(labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    x, y = shapes([40, 40, 16])
    out = tmp_path_factory.mktemp("clf") / "shapes"
    summary = train_classifier(x, y, classes=CLASSES, output=out, epochs=30, lr=5e-3, batch_size=16, widths=(8, 16, 32),
                               seed=0, device="cpu", val_fraction=0.25, members=2)
    return summary, x, y, out


# ----------------------------------------------------------------------------- training

def test_training_beats_chance_on_held_out_items(trained):
    summary, x, y, out = trained
    m = summary["metrics"]
    assert summary["classes"] == CLASSES
    assert summary["n_val"] == 10 + 10 + 4 and summary["n_train"] == 96 - 24
    # chance balanced accuracy is 1/3; shapes are easy
    assert m["balanced_accuracy"] > 0.75, m
    assert m["confusion"] and np.asarray(m["confusion"]).sum() == summary["n_val"]
    assert summary["temperature"] > 0
    assert (out / "confusion_val.png").is_file()


def test_saved_model_reloads_with_split_and_predicts_the_same(trained):
    from ijtorch.models.classifier import ClassifierModel
    from ijtorch.models.store import clear_model_cache, read_config

    summary, x, y, out = trained
    cfg = read_config(out)
    assert cfg["model_type"] == "classifier" and cfg["classes"] == CLASSES
    assert cfg["training"]["val_indices"] == summary["val_indices"]
    assert cfg["input_shape"] == [2, 24, 24] and cfg["axes"] == "CYX"
    norm = cfg["normalization"]  # per-channel percentiles of the training items, stored
    assert norm["method"] == "percentile_dataset" and len(norm["lo"]) == 2 and norm["lo"][0] < norm["hi"][0]
    assert cfg["inference"] == {"tta": "dihedral"} and cfg["architecture"]["norm"] == "batch"
    clear_model_cache()
    r1 = classify(x[:12], model=str(out), device="cpu")
    r2 = classify(x[:12], model=ClassifierModel.load(out), device="cpu")
    np.testing.assert_allclose(r1["probabilities"], r2["probabilities"], atol=1e-5)
    np.testing.assert_allclose(r1["probabilities"].sum(1), 1, atol=1e-5)
    assert r1["probabilities"].dtype == np.float32
    assert set(r1["class"]) <= set(CLASSES)
    val = np.asarray(summary["val_indices"])
    r = classify(x[val], model=str(out), device="cpu")
    assert (r["class"] == y[val]).mean() > 0.7


def test_predictions_do_not_change_when_items_are_rotated_or_flipped(trained):
    # cells have no orientation: the model averages its logits over the 8 dihedral transforms
    from ijtorch.models.classifier import ClassifierModel

    summary, x, y, out = trained
    model = ClassifierModel.load(out)
    assert model.test_time_augmentation
    items = x[::8]
    p = classify(items, model=model, device="cpu")["probabilities"]
    for moved in (np.rot90(items, 1, (2, 3)), items[..., ::-1], np.swapaxes(items, 2, 3)):
        np.testing.assert_allclose(classify(np.ascontiguousarray(moved), model=model, device="cpu")["probabilities"],
                                   p, atol=1e-5)
    f = embed(items, model=model, device="cpu")
    np.testing.assert_allclose(embed(np.ascontiguousarray(np.rot90(items, 3, (2, 3))), model=model, device="cpu"), f,
                               rtol=1e-4, atol=1e-5)
    # without test-time augmentation a rotated item gets other logits (the check above can fail)
    single = ClassifierModel(model.net, {k: v for k, v in model.config.items() if k != "inference"})
    assert not single.test_time_augmentation
    rotated = np.ascontiguousarray(np.rot90(items, 1, (2, 3)))
    assert np.abs(single.logits(rotated) - single.logits(items)).max() > 1e-3


def test_augmentation_draws_every_dihedral_transform_and_keeps_intensities():
    from ijtorch.tasks.classify import _augment

    rng = np.random.default_rng(0)
    item = rng.random((1, 2, 6, 6)).astype(np.float32)
    views = [np.rot90(v, k, (1, 2)) for v in (item[0], item[0][:, :, ::-1]) for k in range(4)]
    seen = set()
    for _ in range(100):
        out = _augment(item, rng, max_shift=0)[0]
        match = [i for i, v in enumerate(views) if np.array_equal(out, v)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(range(8))
    # shifts repeat edge pixels: every value comes from the item, none is rescaled
    shifted = _augment(np.repeat(item, 50, axis=0), rng, max_shift=3)
    assert np.isin(shifted, item).all()
    assert not all(any(np.array_equal(s, v) for v in views) for s in shifted)


def test_classes_that_differ_only_in_brightness_are_told_apart(tmp_path):
    # like G1 vs G2 cells, whose DNA content differs 2x: the classes' items are the same up to a factor 2,
    # so per-item normalisation (or a per-item normalising network) leaves nothing to tell them apart
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:20, :20]
    images, labels = [], []
    for k, level in enumerate((400, 800)):
        for _ in range(40):
            cy, cx = rng.uniform(8, 12, 2)
            disk = np.hypot(yy - cy, xx - cx) < rng.uniform(4, 6)
            images.append((level * (0.25 + disk + rng.normal(0, 0.05, (20, 20)))).astype(np.float32)[None])
            labels.append(k)
    summary = train_classifier(np.stack(images), np.asarray(labels), classes=["dim", "bright"], output=tmp_path / "m",
                               epochs=15, lr=5e-3, batch_size=16, widths=(8, 16), seed=0, device="cpu",
                               val_fraction=0.25)
    assert summary["metrics"]["balanced_accuracy"] >= 0.9, summary["metrics"]


def test_fine_tune_reuses_backbone_with_new_head(trained, tmp_path):
    from ijtorch.models.classifier import ClassifierModel

    _, x, y, out = trained
    keep = y != "ring"
    summary = train_classifier(x[keep], (y[keep] == "disk").astype(np.int64), classes=["other", "round"],
                               output=tmp_path / "ft", base_model=str(out), epochs=1, batch_size=16, seed=1,
                               device="cpu")
    base, ft = ClassifierModel.load(out), ClassifierModel.load(tmp_path / "ft")
    assert len(base.net.members) == len(ft.net.members) == 2  # the fixture's model is an ensemble
    assert all(m.head.out_features == 2 for m in ft.net.members) and base.net.members[0].head.out_features == 3
    # one epoch at a small learning rate: each member's backbone starts from its base member's
    for m_ft, m_base in zip(ft.net.members, base.net.members):
        assert torch.allclose(m_ft.stem[0].weight, m_base.stem[0].weight, atol=0.05)
    assert not torch.allclose(ft.net.members[0].stem[0].weight, ft.net.members[1].stem[0].weight, atol=0.05)
    assert ft.config["architecture"]["widths"] == [8, 16, 32]
    assert ft.config["training"]["base_model"] == str(out)
    assert summary["classes"] == ["other", "round"]


def test_ensemble_averages_member_logits_and_concatenates_embeddings():
    from ijtorch.models.classifier import ClassifierNet

    net = ClassifierNet(2, 3, widths=(4, 8), stem_stride=2, members=3).eval()
    x = torch.rand(5, 2, 16, 16)
    with torch.no_grad():
        member_logits = torch.stack([m(x) for m in net.members])
        np.testing.assert_allclose(net(x).numpy(), member_logits.mean(0).numpy(), atol=1e-6)
        assert net.features(x).shape == (5, 3 * 8) and net.embedding_dim == 24
        np.testing.assert_allclose(net.features(x)[:, 8:16].numpy(), net.members[1].features(x).numpy())
    assert "members.2.head.weight" in net.state_dict()
    assert "head.weight" in ClassifierNet(2, 3, widths=(4, 8)).state_dict()  # one network: the layout as before
    with pytest.raises(ValueError, match="members=0"):
        ClassifierNet(2, 3, members=0)


def test_ensemble_member_is_the_one_network_model_of_its_seed(tmp_path):
    from ijtorch.models.classifier import ClassifierModel

    x, y = shapes([6, 6], size=16)
    common = {"classes": CLASSES[:2], "epochs": 2, "batch_size": 4, "widths": (4, 8), "device": "cpu", "val_fraction": 0}
    train_classifier(x, y, output=tmp_path / "ens", members=2, seed=3, **common)
    train_classifier(x, y, output=tmp_path / "one", members=1, seed=1003, **common)
    ens, one = ClassifierModel.load(tmp_path / "ens"), ClassifierModel.load(tmp_path / "one")
    assert one.net.members is None and one.config["architecture"]["members"] == 1
    second = ens.net.members[1].state_dict()
    for k, v in one.net.state_dict().items():
        torch.testing.assert_close(second[k], v)


def test_cancelled_ensemble_keeps_the_members_trained_to_the_end(tmp_path):
    from ijtorch.models.classifier import ClassifierModel

    x, y = shapes([6, 6], size=16)
    polls = []

    def cancel():  # polled before every epoch: members 1 and 2 train their one epoch, member 3 is cancelled
        polls.append(1)
        return len(polls) > 2

    s = train_classifier(x, y, classes=CLASSES[:2], output=tmp_path / "m", epochs=1, batch_size=4, widths=(4, 8),
                         members=3, device="cpu", val_fraction=0.25, cancel=cancel)
    model = ClassifierModel.load(s["output"])
    assert s["cancelled"] and model.config["architecture"]["members"] == 2 and len(model.net.members) == 2
    assert classify(x, model=model, device="cpu")["probabilities"].shape == (12, 2)


def test_train_from_class_folders(tmp_path):
    import tifffile

    x, y = shapes([4, 4], size=16, seed=3)
    for i, (img, lab) in enumerate(zip(x, y)):
        (tmp_path / "data" / lab).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(tmp_path / "data" / lab / f"{i:02d}.tif", img, imagej=True, metadata={"axes": "CYX"})
    s = train_classifier(tmp_path / "data", output=tmp_path / "m", epochs=1, batch_size=4, widths=(4, 8),
                         device="cpu", val_fraction=0.25)
    assert s["classes"] == ["disk", "square"] and s["n_val"] == 2


def test_train_rejects_bad_arguments(tmp_path):
    x, y = shapes([3, 3], size=16)
    with pytest.raises(ValueError, match="members=0"):
        train_classifier(x, y, output=tmp_path / "m", members=0)
    with pytest.raises(ValueError, match="class_weighting='weird'"):
        train_classifier(x, y, output=tmp_path / "m", class_weighting="weird")
    with pytest.raises(ValueError, match=r"\(N, C, Y, X\)"):
        train_classifier(x[:, 0], y, output=tmp_path / "m")
    with pytest.raises(ValueError, match="normalization='global'"):
        train_classifier(x, y, output=tmp_path / "m", normalization="global")
    with pytest.raises(ValueError, match="not in classes"):
        train_classifier(x, y, classes=["disk"], output=tmp_path / "m")


def test_stratified_split_keeps_every_class_and_is_seeded():
    labels = np.repeat([0, 1, 2], [50, 9, 2])
    tr, va = stratified_split(labels, val_fraction=0.2, seed=4)
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(61))
    assert np.bincount(labels[va]).tolist() == [10, 2, 1]
    tr2, va2 = stratified_split(labels, val_fraction=0.2, seed=4)
    np.testing.assert_array_equal(va, va2)


# ----------------------------------------------------------------------------- metrics

def test_metrics_on_a_hand_computed_confusion_matrix():
    # true:  0 0 0 0 1 1 2 2 2 2 ; pred: 0 0 1 2 1 1 2 2 2 0
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 0, 1, 2, 1, 1, 2, 2, 2, 0])
    cm = confusion_matrix(y_true, y_pred, n_classes=3)
    np.testing.assert_array_equal(cm, [[2, 1, 1], [0, 2, 0], [1, 0, 3]])
    rep = classification_report(y_true, y_pred, classes=["a", "b", "c"])
    # precision: a 2/3, b 2/3, c 3/4; recall: a 2/4, b 2/2, c 3/4
    assert rep["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert rep["per_class"]["b"]["recall"] == pytest.approx(1.0)
    assert rep["per_class"]["a"]["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert rep["per_class"]["c"]["f1"] == pytest.approx(0.75)
    assert rep["accuracy"] == pytest.approx(0.7)
    assert rep["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.75) / 3)
    assert balanced_accuracy(cm) == pytest.approx(0.75)
    # a class never predicted and one never present
    rep2 = classification_report([0, 0, 1], [0, 0, 0], classes=["x", "y", "z"])
    assert rep2["per_class"]["y"]["precision"] is None and rep2["per_class"]["y"]["f1"] == 0
    assert rep2["per_class"]["z"]["recall"] is None
    assert rep2["balanced_accuracy"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"expected \[0, 3\)"):
        confusion_matrix([0, 3], [0, 1], n_classes=3)


def test_expected_calibration_error_by_hand():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    # bins (n_bins=10): 0.9 → bin 8 (acc 0.5, conf 0.9), 0.6 → bin 5 (1, 0.6), 0.7 → bin 6 (1, 0.7)
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert expected_calibration_error(p, y, n_bins=10) == pytest.approx(expected)
    assert expected_calibration_error(np.eye(3), [0, 1, 2]) == pytest.approx(0.0)


def test_temperature_scaling_calibrates_overconfident_logits():
    from ijtorch.models.classifier import _softmax, fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    clean = rng.normal(0, 1, (600, 3))
    clean[np.arange(600), y] += 1.0
    logits = clean * 6  # overconfident
    t = fit_temperature(logits, y)
    assert 3 < t < 12
    before = expected_calibration_error(_softmax(logits), y)
    after = expected_calibration_error(_softmax(logits / t), y)
    assert after < before / 2
    assert (_softmax(logits / t).argmax(1) == logits.argmax(1)).all()


def test_confusion_png(tmp_path):
    from PIL import Image

    path = write_confusion_png(tmp_path / "cm.png", np.array([[5, 1], [0, 3]]), ["mitotic", "interphase"])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 2 * 48 and im.size[1] > 2 * 48
        assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 3
    with pytest.raises(ValueError, match="expected \\(3, 3\\)"):
        write_confusion_png(tmp_path / "x.png", np.eye(2), ["a", "b", "c"])


# ----------------------------------------------------------------------------- crops

def test_object_crops_are_centred_on_objects():
    labels = np.zeros((80, 90), np.uint16)
    labels[20:31, 30:41] = 3  # centre (25, 35)
    labels[0:5, 0:7] = 7  # at the corner: zero padded
    labels[60:70, 70:76] = 5
    image = np.stack([labels.astype(np.float32) * 10, np.full(labels.shape, 2, np.float32)])
    crops = object_crops(image, "CYX", labels, size=21, mask_channel=True)
    assert crops.shape == (3, 3, 21, 21) and crops.dtype == np.float32
    np.testing.assert_array_equal(object_ids(labels), [3, 5, 7])
    c0 = crops[0]
    assert c0[0, 10, 10] == 30  # the centre pixel lies on object 3
    mask = c0[2]
    np.testing.assert_array_equal(mask, mask[::-1, ::-1])  # an 11×11 square centred exactly
    assert mask.sum() == 121 and mask[5:16, 5:16].all()
    corner = crops[2]
    assert corner[1].min() == 0 and corner[1].max() == 2  # padding outside the image
    assert corner[2].sum() == 35
    # YXC input gives the same crops
    np.testing.assert_array_equal(object_crops(np.moveaxis(image, 0, -1), "YXC", labels, size=21), crops[:, :2])
    # scale_by_object: every object fills the crop similarly
    big = object_crops(image, "CYX", labels, size=16, scale_by_object=True, mask_channel=True)
    frac = big[:, 2].mean(axis=(1, 2))
    assert 0.3 < frac[0] < 0.8 and 0.25 < frac[1] < 0.8
    with pytest.raises(ValueError, match="YX or CYX"):
        object_crops(image[None], "ZCYX", labels)
    with pytest.raises(ValueError, match="labels has shape"):
        object_crops(image, "CYX", labels[:10])
    assert object_crops(image, "CYX", np.zeros_like(labels), size=8).shape == (0, 2, 8, 8)


# ----------------------------------------------------------------------------- embeddings

def test_embeddings_cluster_and_export(trained, tmp_path):
    import pandas as pd

    _, x, y, out = trained
    sel = np.concatenate([np.flatnonzero(y == "disk")[:15], np.flatnonzero(y == "ring")[:15]])
    f = embed(x[sel], model=str(out), device="cpu")
    assert f.shape == (30, 2 * 32) and f.dtype == np.float32  # the 2 members' embeddings side by side
    cl = cluster_embeddings(f, k=2, seed=0)
    assert cl.projection.shape == (30, 2) and cl.labels.shape == (30,)
    truth = (y[sel] == "ring").astype(int)
    agreement = max((cl.labels == truth).mean(), (cl.labels != truth).mean())
    assert agreement > 0.8  # embeddings separate the classes without labels
    path = write_features(tmp_path / "features.csv", f, columns={"object": np.arange(30), "cluster": cl.labels})
    table = pd.read_csv(path)
    assert list(table.columns[:3]) == ["object", "cluster", "f0"] and len(table) == 30
    np.testing.assert_allclose(table[[f"f{i}" for i in range(64)]].to_numpy(), f, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"k=31"):
        cluster_embeddings(f, k=31)
    with pytest.raises(ValueError, match=".csv and .parquet"):
        write_features(tmp_path / "f.xlsx", f)


def test_synthetic_cluster_recovery():
    rng = np.random.default_rng(1)
    f = np.concatenate([rng.normal(0, 1, (20, 5)), rng.normal(8, 1, (20, 5))])
    cl = cluster_embeddings(f, k=2)
    assert len(set(cl.labels[:20])) == 1 and len(set(cl.labels[20:])) == 1 and cl.labels[0] != cl.labels[-1]
    assert cl.explained_variance_ratio[0] > 0.5


def test_roi_name_to_class():
    from ijtorch.commands.classify import class_from_roi_name
    from ijtorch.errors import IjtorchError

    assert class_from_roi_name("mitotic_001") == "mitotic"
    assert class_from_roi_name("S_phase_12") == "S_phase"
    assert class_from_roi_name("G2") == "G2"
    assert class_from_roi_name("G2-7") == "G2"
    with pytest.raises(IjtorchError, match="does not start with a class name"):
        class_from_roi_name("0012-0034")
