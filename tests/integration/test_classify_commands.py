"""``ijtorch Classify`` / ``Train Classifier`` / ``Embed`` from macros in the embedded ImageJ, checked
against the Python task functions on a synthetic image of round and square objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ijtorch import bridge

pytestmark = pytest.mark.jvm
ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["round", "square"]
SIZE = 24


def scene(seed: int, rows: int = 3, cols: int = 4):
    """A YX uint16 image with a grid of disks and squares, its label map and the true classes."""
    rng = np.random.default_rng(seed)
    h, w = rows * 32, cols * 32
    yy, xx = np.mgrid[:h, :w]
    image = 100 + rng.normal(0, 20, (h, w))
    labels = np.zeros((h, w), np.uint16)
    truth = []
    for i in range(rows * cols):
        cy, cx = 16 + 32 * (i // cols) + rng.uniform(-2, 2), 16 + 32 * (i % cols) + rng.uniform(-2, 2)
        r = rng.uniform(6, 9)
        k = int(rng.integers(2)) if i > 1 else i  # both classes present
        m = np.hypot(yy - cy, xx - cx) < r if k == 0 else (np.abs(yy - cy) < 0.85 * r) & (np.abs(xx - cx) < 0.85 * r)
        labels[m] = i + 1
        image[m] += 600
        truth.append(CLASSES[k])
    return image.clip(0, 65535).astype(np.uint16), labels, np.asarray(truth)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from ijtorch.tasks.classify import object_crops, train_classifier

    torch.set_num_threads(1)
    crops, truth = [], []
    for seed in range(6):
        image, labels, t = scene(100 + seed)
        crops.append(object_crops(image, "YX", labels, size=SIZE))
        truth.append(t)
    out = tmp_path_factory.mktemp("models") / "shapes"
    summary = train_classifier(np.concatenate(crops), np.concatenate(truth), classes=CLASSES, output=out,
                               epochs=25, lr=5e-3, batch_size=16, widths=(8, 16, 32), device="cpu",
                               extra_config={"crops": {"size": SIZE, "scale_by_object": False, "mask_channel": False}})
    assert summary["metrics"]["balanced_accuracy"] > 0.7, summary["metrics"]
    return out


@pytest.fixture
def image_with_rois(ij):
    from ijtorch.bridge import add_rois_to_manager, numpy_to_imageplus
    from ijtorch.tasks.outlines import outlines

    image, labels, truth = scene(7)
    imp = numpy_to_imageplus(image, "YX", title="objects")
    imp.show()
    out = outlines(labels, "YX")
    names = [f"{truth[int(lab) - 1]}_{int(lab):03d}" for lab in out.labels]
    add_rois_to_manager(out, names=names, reset=True)
    return image, labels, truth, names


def test_classify_rois_macro_fills_results_and_colours_rois(ij, model_dir, image_with_rois):
    import ijtorch.commands.classify as cc
    from ijtorch.tasks.classify import classify, object_crops

    image, labels, truth, names = image_with_rois
    macro = (ROOT / "fiji_macros" / "classify_rois.ijm").read_text()
    log = bridge.run_macro(macro, f"model={model_dir}").log.splitlines()
    assert len(log) == len(names)
    rows = [line.split("\t") for line in log]
    assert [r[0] for r in rows] == names
    expected = classify(object_crops(image, "YX", labels, size=SIZE), model=str(model_dir), device="cpu")
    got = np.asarray([r[1] for r in rows])
    np.testing.assert_array_equal(got, expected["class"])  # same crops, same answer as Python
    assert (got == truth).mean() >= 0.75
    np.testing.assert_allclose([float(r[2]) for r in rows], expected["confidence"], atol=1e-3)
    from jpype import JClass

    colours = cc.class_colours(len(CLASSES))
    rm = JClass("ij.plugin.frame.RoiManager").getInstance()
    for i, r in enumerate(rows):  # stroke colour is the class colour (the macro sees it too)
        c = rm.getRoi(i).getStrokeColor()
        assert (int(c.getRed()), int(c.getGreen()), int(c.getBlue())) == tuple(int(v) for v in colours[CLASSES.index(r[1])])
        assert r[3] not in ("", "none")
    assert len({rm.getRoi(i).getStrokeColor().getRGB() for i in range(len(rows))}) == len(set(got))
    # per-class probability columns in the ResultsTable

    table = JClass("ij.measure.ResultsTable").getResultsTable()
    p = np.stack([np.asarray(table.getColumn(f"p_{c}")) for c in CLASSES], axis=1)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-4)
    np.testing.assert_allclose(p, expected["probabilities"], atol=1e-4)
    assert str(rm.getRoi(0).getProperty("class")) == rows[0][1]


def test_train_classifier_from_roi_names(ij, image_with_rois, tmp_path, monkeypatch):
    from ijtorch.models.store import read_config

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    bridge.run_macro('selectImage("objects"); run("ijtorch Train Classifier", '
                     f'"name=roi-clf epochs=2 size={SIZE} val_fraction=0");')
    cfg = read_config(tmp_path / "roi-clf")
    assert cfg["classes"] == CLASSES and cfg["crops"]["size"] == SIZE
    assert cfg["training"]["n_items"] == len(image_with_rois[3])
    log = bridge.run_macro('run("ijtorch Macro Functions"); print(Ext.ijtorchClassifierClasses("roi-clf"));').log
    assert log.strip() == "round,square"


def test_embed_label_image_to_table_and_csv(ij, model_dir, tmp_path):
    from jpype import JClass

    from ijtorch.bridge import numpy_to_imageplus
    from ijtorch.tasks.classify import embed, object_crops

    image, labels, truth = scene(9)
    numpy_to_imageplus(labels, "YX", title="objects-labels").show()
    numpy_to_imageplus(image, "YX", title="objects").show()
    csv = tmp_path / "features.csv"
    bridge.run_macro(f'selectImage("objects"); run("ijtorch Embed", "model=[{model_dir}] source=[label image] '
                     f'label_image=objects-labels csv=[{csv}] clusters=2");')
    import pandas as pd

    table = pd.read_csv(csv)
    expected = embed(object_crops(image, "YX", labels, size=SIZE), model=str(model_dir), device="cpu")
    assert len(table) == labels.max() and list(table.columns[:4]) == ["object", "cluster", "pc1", "pc2"]
    np.testing.assert_allclose(table[[f"f{i}" for i in range(expected.shape[1])]].to_numpy(), expected,
                               rtol=1e-4, atol=1e-5)
    win = JClass("ij.WindowManager").getWindow("Embeddings")
    assert win is not None and int(win.getResultsTable().size()) == labels.max()


def test_classify_whole_image_and_bad_model(ij, model_dir):
    from jpype import JClass

    from ijtorch.bridge import numpy_to_imageplus
    from ijtorch.errors import MacroError

    image, labels, truth = scene(3, rows=1, cols=1)
    numpy_to_imageplus(image, "YX", title="one").show()
    bridge.run_macro(f'run("ijtorch Classify", "model=[{model_dir}] source=[whole image]");')
    table = JClass("ij.measure.ResultsTable").getResultsTable()
    assert table.size() == 1 and str(table.getStringValue("class", 0)) in CLASSES
    with pytest.raises(MacroError, match="unknown option"):
        bridge.run_macro(f'run("ijtorch Classify", "model=[{model_dir}] colour=red");')
