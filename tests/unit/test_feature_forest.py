"""The feature forest beside a classifier's network: stored as arrays, evaluated as scikit-learn does."""

from __future__ import annotations

import numpy as np
import pytest

from ijtorch.models import feature_forest as ff

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cells(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two channels, 24² items: class 0 small dim disks, class 1 large bright ones, class 2 two blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    items, labels = np.zeros((n, 2, 24, 24), np.float32), rng.integers(0, 3, n)
    for i, c in enumerate(labels):
        cy, cx = rng.uniform(9, 15, 2)
        r = rng.uniform(3, 4.5) if c == 0 else rng.uniform(6, 8)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if c == 2:
            disk = ((yy - cy + 5) ** 2 + (xx - cx) ** 2 <= 9) | ((yy - cy - 5) ** 2 + (xx - cx) ** 2 <= 9)
        items[i, 0] = np.where(disk, 60.0 if c == 0 else 120.0, 10.0) + rng.normal(0, 6, (24, 24))
        items[i, 1] = np.where(disk, 30.0, 5.0) + rng.normal(0, 3, (24, 24))
    return items, labels


def test_forest_arrays_predict_exactly_as_scikit_learn():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 7))
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(int) + (x[:, 5] > 1.2).astype(int) * 2  # 4 classes, one rare
    rf = RandomForestClassifier(n_estimators=25, class_weight="balanced", random_state=0, n_jobs=1)
    rf.fit(x.astype(np.float32), y)
    arrays = ff._arrays(rf, 5)  # a fifth class without training items: probability 0
    test = rng.normal(size=(200, 7))
    got = ff.forest_proba(arrays, test)
    np.testing.assert_allclose(got[:, :4], rf.predict_proba(test.astype(np.float32)), rtol=0, atol=1e-6)  # float32 leaves
    assert np.array_equal(got.argmax(1), rf.predict_proba(test.astype(np.float32)).argmax(1))
    assert np.all(got[:, 4] == 0)


def test_fit_forest_and_tensor_round_trip():
    items, labels = _cells(90, 0)
    feats = ff.item_features(items)
    assert feats.shape == (90, 32) and np.isfinite(feats).all()
    arrays = ff.fit_forest(feats, labels, 3, seed=0, trees=20)
    np.testing.assert_allclose(arrays["prior"], np.bincount(labels, minlength=3) / 90)
    net_state, back = ff.forest_from_tensors(ff.forest_tensors(arrays))
    assert net_state == {} and set(back) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
    test_items, test_labels = _cells(60, 1)
    p = ff.forest_proba(back, ff.item_features(test_items))
    assert (p.argmax(1) == test_labels).mean() > 0.9  # the shapes tell the classes apart


def test_blank_items_give_finite_features():
    feats = ff.item_features(np.zeros((2, 3, 16, 16), np.float32))
    assert feats.shape == (2, 48) and np.isfinite(feats).all()
    with pytest.raises(ValueError, match="N, C, Y, X"):
        ff.item_features(np.zeros((2, 3, 4, 16, 16)))


def test_fusion_corrects_the_forest_for_class_frequencies():
    net = np.array([[0.5, 0.5]])
    forest = np.array([[0.6, 0.4]])
    fused = ff.fuse(net, forest, np.array([0.8, 0.2]))  # the forest's 0.4 for a 20 % class is strong evidence
    np.testing.assert_allclose(fused, [[0.5 * (0.5 + 0.75 / 2.75), 0.5 * (0.5 + 2.0 / 2.75)]], rtol=1e-6)
    assert fused.dtype == np.float32 and abs(float(fused.sum()) - 1) < 1e-6


def test_trained_classifier_keeps_its_forest_through_save_and_load(tmp_path):
    from ijtorch.models.classifier import ClassifierModel, _softmax
    from ijtorch.tasks.classify import classify, train_classifier

    items, labels = _cells(120, 2)
    with_forest = train_classifier(items, labels, classes=["small", "large", "pair"], output=tmp_path / "f",
                                   epochs=2, seed=0, device="cpu")
    without = train_classifier(items, labels, classes=["small", "large", "pair"], output=tmp_path / "n",
                               epochs=2, seed=0, device="cpu", feature_forest=False)
    test, _ = _cells(30, 3)
    m = ClassifierModel.load(with_forest["output"])
    assert m.forest is not None and m.config["feature_forest"]["trees"] == ff.TREES
    x = m.prepare(test)
    logits = m.logits(x, prepared=True)
    network_alone = _softmax(logits.astype(np.float64) / m.temperature)
    fused = ff.fuse(network_alone, ff.forest_proba(m.forest, ff.item_features(x)), m.forest["prior"]).astype(np.float64)
    t_fused = m.config["feature_forest"]["temperature"]  # fitted on the held-out items
    assert t_fused > 0
    expected = _softmax(np.log(np.maximum(fused, 1e-12)) / t_fused).astype(np.float32)
    np.testing.assert_array_equal(classify(test, model=with_forest["output"], device="cpu")["probabilities"], expected)
    np.testing.assert_array_equal(m.predict_proba(test), expected)
    n = ClassifierModel.load(without["output"])
    assert n.forest is None and "feature_forest" not in n.config
    np.testing.assert_allclose(classify(test, model=without["output"], device="cpu")["probabilities"],
                               _softmax(n.logits(test).astype(np.float64) / n.temperature), rtol=1e-6)
