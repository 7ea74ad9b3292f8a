"""Issue #15: dataset-shift warning, per-object confidence, RGB input (ijtorch.models.shift, tasks.segment)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
# validation images of the bundled model (config.json training.val_names) and transmitted-light
# images (one brightfield grey, two H&E RGB) of ../shared/data
VALIDATION = ("1a75e9f15481d110", "29ea4f6eb4545f43", "449fe932622db3b4")
BRIGHTFIELD = "c395870ad9f5a3ae"
HISTOLOGY = ("718751b439c05bdd", "0e4c2e2780de7ec4")


def _tif(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


@pytest.fixture(scope="module")
def fluo(shared_data):
    return shared_data / "nuclei_dsb2018" / "train"


@pytest.fixture(scope="module")
def transmitted(shared_data):
    return shared_data / "nuclei_dsb2018_brightfield_histology" / "train"


# ------------------------------------------------------------------------ the score and its reference
def test_conformal_threshold_and_reference_from_moments():
    import torch

    from ijtorch.models import shift

    assert shift.calibrate_threshold(np.arange(1, 20, dtype=float), 0.05) == 19.0  # ceil(20 * 0.95) = 19th
    assert shift.calibrate_threshold(np.arange(1, 101, dtype=float), 0.05) == 96.0
    rng = np.random.default_rng(0)
    cols = []
    for _ in range(4):
        c = shift.MomentCollector()
        c.add(torch.from_numpy(rng.normal(size=(1, 8, 16, 16))))
        cols.append(c)
    ref = shift.reference_from_moments(cols, [{"median": 0.02, "foreground": 0.1}] * 4, components=3, kind="test")
    assert len(ref["features"]["mean"]) == 8 and len(ref["features"]["components"]) == 3
    json.dumps(ref)  # plain JSON, nothing pickled
    same, other = shift.FeatureCollector(ref), shift.FeatureCollector(ref)
    same.add(torch.from_numpy(rng.normal(size=(1, 8, 16, 16))))
    other.add(torch.from_numpy(rng.normal(3.0, 1.0, size=(1, 8, 16, 16))))
    assert 0.7 < same.score < 1.3 and other.score > 5
    ref["threshold"] = 1.5
    calm = shift.assess(ref, same.score, {"median": 0.02}, model_name="m")
    loud = shift.assess(ref, other.score, {"median": 0.9, "foreground": 0.6}, model_name="m")
    assert not calm.warned and "resembles the test images" in calm.message
    assert loud.warned and "bright background with dark objects" in loud.warning and "unreliable" in loud.warning
    assert "no dataset-shift reference" in shift.assess(None, None, {}, model_name="m").message


def test_bundled_nuclei_model_has_a_calibrated_reference():
    from ijtorch.models.store import resolve_model

    cfg = json.loads((resolve_model("nuclei") / "config.json").read_text())
    ref = cfg["shift"]
    # calibrated on its held-out split (71 images never trained on), not on a handful
    assert ref["false_alarm_rate"] == 0.05 and ref["threshold"] > 1 and ref["calibration"]["images"] >= 50
    assert ref["kind"] == "fluorescence"
    assert not set(cfg["training"]["val_names"]) & set(cfg["training"]["train_names"])


# ------------------------------------------------------------------- the warning on real images
@pytest.mark.parametrize("name", VALIDATION)
def test_no_warning_on_the_models_own_validation_images(fluo, name):
    from ijtorch.tasks.segment import segment

    r = segment(_tif(fluo / "images" / f"{name}.tif"), "YX", model="nuclei", device="cpu")
    assert r.shift_score is not None and r.shift_threshold is not None
    assert r.shift_score < r.shift_threshold and r.shift_warning is None
    assert "resembles the fluorescence images" in r.shift_message


def test_warning_on_brightfield_and_he_images(transmitted):
    from ijtorch.tasks.segment import segment

    r = segment(_tif(transmitted / "images" / f"{BRIGHTFIELD}.tif"), "YX", model="nuclei", device="cpu")
    assert r.shift_score > r.shift_threshold
    assert "bright background with dark objects" in r.shift_warning and "unreliable" in r.shift_warning
    for name in HISTOLOGY:  # RGB, as the user has it: converted by luminance (the default)
        r = segment(_tif(transmitted / "images" / f"{name}.tif"), "YXS", model="nuclei", device="cpu")
        assert r.rgb == "luminance" and r.labels.shape == (256, 320) and r.axes == "YX"
        assert r.shift_warning and r.shift_score > r.shift_threshold


def test_model_without_reference_says_so(tmp_path, fluo):
    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.models.store import resolve_model
    from ijtorch.tasks.segment import segment

    m = StarDistModel.load(resolve_model("nuclei"))
    m.config.pop("shift")
    m.save(tmp_path / "plain")
    r = segment(_tif(fluo / "images" / f"{VALIDATION[0]}.tif"), "YX", model=tmp_path / "plain", device="cpu")
    assert r.shift_score is None and r.shift_warning is None and "no dataset-shift reference" in r.shift_message
    assert r.n_objects > 0


# ------------------------------------------------------------------------ confidence, RGB
def test_confidence_column_and_min_confidence(fluo):
    from ijtorch.tasks.measure import measure
    from ijtorch.tasks.segment import segment

    im = _tif(fluo / "images" / f"{VALIDATION[2]}.tif")
    r = segment(im, "YX", model="nuclei", device="cpu")
    assert r.confidence.shape == (r.n_objects,) and r.n_objects > 5
    assert np.all(r.confidence >= r.prob_threshold - 1e-6) and np.all(r.confidence <= 1)
    table = measure(r.labels, r.axes, intensity=im, confidence=r.confidence)
    assert np.allclose(table["confidence"], r.confidence[table["label"] - 1])
    cut = float(np.median(r.confidence))
    kept = segment(im, "YX", model="nuclei", device="cpu", min_confidence=cut)
    assert 0 < kept.n_objects < r.n_objects and kept.n_objects == int(np.sum(r.confidence >= cut))
    assert np.all(kept.confidence >= cut) and np.array_equal(np.unique(kept.labels)[1:], np.arange(1, kept.n_objects + 1))
    with pytest.raises(ValueError, match="min_confidence"):
        segment(im, "YX", model="nuclei", device="cpu", min_confidence=1.5)


def test_rgb_conversions():
    from ijtorch.tasks.segment import rgb_to_grey

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    grey, axes = rgb_to_grey(rgb, "YXS")
    assert axes == "YX" and np.allclose(grey, 0.299 * 100 + 0.587 * 200 + 0.114 * 50, atol=1e-3)
    inv, _ = rgb_to_grey(rgb, "YXS", "inverted")
    assert np.allclose(inv, 255 - grey, atol=1e-3)
    he = np.zeros((2, 2, 3), np.uint8)
    he[0] = (70, 40, 150)  # hematoxylin-like purple
    he[1] = (240, 200, 220)  # pale eosin background
    hema, _ = rgb_to_grey(he, "YXS", "hematoxylin")
    assert hema[0].min() > hema[1].max()
    with pytest.raises(ValueError, match="rgb="):
        rgb_to_grey(rgb, "YXS", "sepia")


def test_cli_segments_rgb_warns_and_writes_confidence(tmp_path, transmitted, fluo):
    import shutil

    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    rgb = _tif(transmitted / "images" / f"{HISTOLOGY[0]}.tif")
    tifffile.imwrite(folder / "he.tif", rgb, photometric="rgb")
    shutil.copy(fluo / "images" / f"{VALIDATION[2]}.tif", folder / "fluo.tif")
    out = subprocess.run([sys.executable, "-m", "ijtorch.cli", "segment", str(folder), "--output", str(tmp_path / "out"),
                          "--device", "cpu", "--model", "nuclei"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "WARNING he.tif: dataset shift" in out.stderr and "WARNING fluo.tif" not in out.stderr
    assert "1 image(s) with a dataset-shift warning" in out.stdout
    labels = tifffile.imread(tmp_path / "out" / "he.tif")
    assert labels.shape == rgb.shape[:2]
    with open(tmp_path / "out" / "fluo_measurements.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(0 < float(r["confidence"]) <= 1 for r in rows)


def test_command_log_values_and_server_reply(fluo, transmitted):
    from ijtorch.commands.outputs import CommandInputs, client_session
    from ijtorch.commands.segment import SegmentParams, ijtorch_shift_score, ijtorch_shift_warning, segment_compute
    from ijtorch.image import Image
    from ijtorch.serve.app import _segment_reply

    rgb = _tif(transmitted / "images" / f"{HISTOLOGY[1]}.tif")
    p = SegmentParams(model="nuclei", min_confidence=0.0)
    result, outputs = segment_compute(CommandInputs(image=Image(rgb, "YXS", title="he.tif")), p)
    assert outputs.log and "WARNING dataset shift" in outputs.log[0]
    assert outputs.values["shift_score"] > 1 and outputs.values["shift_warning"]
    table = outputs.tables[0].columns
    assert len(table["confidence"]) == result.n_objects and "mean" in table  # intensity of the grey conversion
    with client_session(outputs.values):
        assert ijtorch_shift_score() == outputs.values["shift_score"]
        assert ijtorch_shift_warning().startswith("dataset shift")
    header, arrays = _segment_reply(result)
    assert header["shift_warning"] and header["shift_threshold"] and len(header["confidence"]) == result.n_objects
    json.dumps(header)


def test_training_stores_a_calibrated_reference(shared_data, tmp_path):
    from ijtorch.models.store import load_model_dir
    from ijtorch.tasks.segment import segment
    from ijtorch.train.data import load_pairs
    from ijtorch.train.stardist_train import train_stardist

    pairs = load_pairs(shared_data / "nuclei_dsb2018" / "train")[:6]
    train_stardist(pairs, output=tmp_path / "m", n_rays=8, base_channels=4, depth=2, head_channels=4, epochs=1,
                   steps_per_epoch=2, batch_size=2, patch_size=32, device="cpu", progress_bar=False,
                   optimize_thresholds=False, evaluate=False, seed=0, val_fraction=0.34, shift_kind="fluorescence")
    ref = load_model_dir(tmp_path / "m").config["shift"]
    assert ref["n_images"] == 4 and ref["calibration"]["images"] == 2 and ref["threshold"] > 0
    assert ref["kind"] == "fluorescence"  # what the warnings call the training images
    assert len(ref["features"]["mean"]) == 16  # the bottleneck of base_channels=4, depth=2
    r = segment(pairs[0].image, "YX", model=tmp_path / "m", device="cpu")
    assert r.shift_score is not None and r.shift_threshold == ref["threshold"]


# ---------------------------------------------- every other model type (U-Net + watershed, 3D, pixels, classifier)
BACTERIA_HELD_OUT = ("t020", "t024")  # frames the bundled bacteria_phase model never saw


def test_unet_watershed_bundled_references_warn_on_other_kinds(shared_data, transmitted):
    from ijtorch.models.store import load_model
    from ijtorch.tasks.segment import rgb_to_grey, shift_report

    bacteria = load_model("bacteria_phase", device="cpu")
    ref = bacteria.shift_reference
    assert ref["false_alarm_rate"] == 0.05 and ref["calibration"]["files"] == ["t020", "t021", "t022", "t023", "t024"]
    assert not set(ref["calibration"]["files"]) & {f"t{i:03d}" for i in range(20)}  # held out from training
    for name in BACTERIA_HELD_OUT:
        labels, details = bacteria.predict_instances(_tif(shared_data / "tracking_bacteria" / "01" / f"{name}.tif"))
        report = shift_report(bacteria, [(details["shift_score"], details["shift_inputs"])], "bacteria_phase", 1)
        assert labels.max() > 5 and not report.warned and "phase-contrast bacteria" in report.message
        assert details["prob_map"].shape == labels.shape
    he = rgb_to_grey(_tif(transmitted / "images" / f"{HISTOLOGY[0]}.tif"), "YXS")[0]
    cells = load_model("cells_phase", device="cpu")
    for model in (bacteria, cells):
        _, details = model.predict_instances(he)
        assert details["shift_score"] > model.shift_reference["threshold"]
    _, details = cells.predict_instances(_tif(shared_data / "nuclei_dsb2018" / "train" / "images" / f"{VALIDATION[0]}.tif"))
    report = shift_report(cells, [(details["shift_score"], details["shift_inputs"])], "cells_phase", 1)
    assert report.warned and "dark background" in report.warning
    _, details = cells.predict_instances(_tif(shared_data / "cells_usiigaci_phase" / "train" / "images" / "set41.tif"))
    assert details["shift_score"] < cells.shift_reference["threshold"]


def test_unet_watershed_training_stores_a_reference_and_no_reference_says_so(tmp_path, shared_data):
    from ijtorch.models import unet_watershed as uw
    from ijtorch.train.data import load_pairs
    from ijtorch.train.unet_watershed_train import train_unet_watershed

    pairs = [p for p in load_pairs(shared_data / "nuclei_dsb2018" / "train")[:12] if min(p.image.shape) >= 128][:6]
    sims = [type("Item", (), {"image": p.image[:128, :128]}) for p in pairs]
    train_unet_watershed(pairs, output=tmp_path / "m", epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64,
                         base_channels=4, depth=2, val_fraction=0.34, device="cpu", optimize_thresholds=False)
    model = uw.load_model(tmp_path / "m")
    ref = model.shift_reference
    assert ref["n_images"] == 4 and ref["calibration"]["images"] == 2 and ref["threshold"] > 0
    assert len(ref["features"]["mean"]) == 16 and len(ref["input_model"]["mean"]) == 5
    _, details = model.predict_instances(sims[0].image)
    assert details["shift_score"] is not None and "median" in details["shift_inputs"]
    _, details = model.predict_instances(sims[0].image.max() - sims[0].image)  # bright background, dark objects
    assert details["shift_score"] > ref["threshold"]
    model.meta.pop("shift")
    uw.save_model(model, tmp_path / "plain")
    plain = uw.load_model(tmp_path / "plain")
    _, details = plain.predict_instances(sims[0].image)
    assert plain.shift_reference is None and "shift_score" not in details
    from ijtorch.tasks.segment import shift_report

    assert "no dataset-shift reference" in shift_report(plain, [], "plain", 1).message


def test_3d_star_convex_model_stores_a_reference_and_warns_on_foreign_volumes(tmp_path):
    from ijtorch.models.shift import fit_reference
    from ijtorch.models.stardist.model3d import StarDist3DModel
    from ijtorch.simulate.nuclei import simulate_nuclei_3d
    from ijtorch.tasks.segment import segment, train_segmentation

    vols = [simulate_nuclei_3d((16, 48, 48), n_nuclei=10, radius=(4.0, 7.0), anisotropy=2.0, seed=s) for s in range(6)]
    train_segmentation([v.image for v in vols[:4]], [v.labels for v in vols[:4]], axes="ZYX", output=tmp_path / "m",
                       epochs=1, steps_per_epoch=2, batch_size=2, patch_size=(16, 32, 32), n_rays=16, base_channels=4,
                       head_channels=4, device="cpu", progress_bar=False, optimize_thresholds=False, evaluate=False,
                       seed=0, val_fraction=0.5, workers=0)
    model = StarDist3DModel.load(tmp_path / "m")
    ref = model.shift_reference
    assert ref["n_images"] == 2 and ref["calibration"]["images"] == 2 and len(ref["features"]["mean"]) == 16
    r = segment(vols[4].image, "ZYX", model=tmp_path / "m", device="cpu")
    assert r.shift_score is not None and r.shift_threshold == ref["threshold"]
    # a threshold from more held-out volumes of the kind: new volumes of it pass, inverted ones warn
    calib = [simulate_nuclei_3d((16, 48, 48), n_nuclei=10, radius=(4.0, 7.0), anisotropy=2.0, seed=s).image
             for s in range(10, 29)]
    fit_reference(model, [v.image for v in vols[:4]], calib)
    model.save(tmp_path / "m19")
    fine = segment(vols[5].image, "ZYX", model=tmp_path / "m19", device="cpu")
    foreign = segment(vols[5].image.max() - vols[5].image, "ZYX", model=tmp_path / "m19", device="cpu")
    assert fine.shift_warning is None and fine.shift_score <= fine.shift_threshold
    assert foreign.shift_warning and "bright background with dark objects" in foreign.shift_warning


def _shapes_scene(seed: int, *, background: float = 25.0, contrast: float = 150.0, n: int = 12):
    """A YX uint8 image of disks (class 0) and squares (class 1), its label map and the classes."""
    rng = np.random.default_rng(seed)
    cols = 4
    h, w = 32 * -(-n // cols), 32 * cols
    yy, xx = np.mgrid[:h, :w]
    image = background + rng.normal(0, 5, (h, w))
    labels = np.zeros((h, w), np.uint16)
    truth = []
    for i in range(n):
        cy, cx = 16 + 32 * (i // cols) + rng.uniform(-2, 2), 16 + 32 * (i % cols) + rng.uniform(-2, 2)
        r = rng.uniform(6, 9)
        k = int(rng.integers(2)) if i > 1 else i
        m = np.hypot(yy - cy, xx - cx) < r if k == 0 else (np.abs(yy - cy) < 0.85 * r) & (np.abs(xx - cx) < 0.85 * r)
        labels[m] = i + 1
        image[m] += contrast
        truth.append(k)
    return image.clip(0, 255).astype(np.uint8), labels, np.asarray(truth)


@pytest.fixture(scope="module")
def shapes_classifier(tmp_path_factory):
    from ijtorch.tasks.classify import object_crops, train_classifier

    crops, truth = [], []
    for seed in range(8):
        image, labels, t = _shapes_scene(100 + seed)
        crops.append(object_crops(image, "YX", labels, size=24))
        truth.append(t)
    out = tmp_path_factory.mktemp("models") / "shapes"
    train_classifier(np.concatenate(crops), np.concatenate(truth), classes=["round", "square"], output=out,
                     epochs=15, lr=5e-3, batch_size=16, widths=(8, 16, 32), device="cpu", val_fraction=0.3,
                     extra_config={"crops": {"size": 24, "scale_by_object": False, "mask_channel": False}})
    return out


def test_classifier_shift_per_item_and_per_batch(shapes_classifier):
    from ijtorch.models.classifier import ClassifierModel
    from ijtorch.tasks.classify import classify, object_crops

    model = ClassifierModel.load(shapes_classifier)
    ref = model.shift_reference
    assert ref["calibration"]["images"] >= 20 and ref["threshold"] > 0 and ref["features"]["layer"] == "embedding"
    image, labels, _ = _shapes_scene(7, n=24)  # new items of the training kind
    same = classify(object_crops(image, "YX", labels, size=24), model=shapes_classifier, device="cpu")
    assert same["shift_score"].shape == (24,) and not same["shift"].warned
    assert "resemble the training items" in same["shift"].message
    # dark objects on a bright background: the same shapes, another kind of image
    image, labels, _ = _shapes_scene(8, n=24, background=175.0, contrast=-150.0)
    other = classify(object_crops(image, "YX", labels, size=24), model=shapes_classifier, device="cpu")
    assert other["shift"].warned and "dataset shift" in other["shift"].warning
    assert np.median(other["shift_score"]) > other["shift"].threshold
    model.config.pop("shift")
    plain = classify(object_crops(image, "YX", labels, size=24), model=model, device="cpu")
    assert "shift_score" not in plain and "no dataset-shift reference" in plain["shift"].message


def test_classify_command_takes_rgb_and_reports_the_shift(shapes_classifier, tmp_path):
    """Through the command layer (what the menu, macros and a remote Fiji's server run): RGB images
    become grey for a 1-channel classifier, R/G/B channels for a 3-channel one; a shift score per
    item in the Results, the warning in the Log, the values for Ext. functions."""
    from ijtorch.commands.command import get_command
    from ijtorch.commands.options import params_from_options
    from ijtorch.errors import IjtorchError
    from ijtorch.image import Image
    from ijtorch.commands.outputs import CommandInputs
    from ijtorch.tasks.classify import load_class_folders

    spec = get_command("ijtorch Classify")
    p = params_from_options(spec.params, f"model=[{shapes_classifier}] source=[label image] label_image=labels")
    image, labels, truth = _shapes_scene(5, n=16)
    rgb = np.stack([image, image, image], -1)  # luminance of a grey RGB image = the grey image

    def inputs(data, axes):
        return CommandInputs(image=Image(data, axes, title="cells.tif"),
                             open_image=lambda t: Image(labels, "YX", title="labels") if t == "labels" else None)

    from_rgb = spec.compute(inputs(rgb, "YXS"), p)
    from_grey = spec.compute(inputs(rgb[..., 0], "YX"), p)
    table = from_rgb.tables[0].columns
    assert list(table["class"]) == list(from_grey.tables[0].columns["class"])
    assert np.mean(table["class"] == np.array(["round", "square"])[truth]) > 0.8
    assert table["shift_score"].shape == (16,) and from_rgb.values["shift_warning"] == "" and not from_rgb.log
    dark = (255 - rgb).astype(np.uint8)  # dark objects on a bright background: shift
    shifted = spec.compute(inputs(dark, "YXS"), p)
    assert shifted.values["shift_score"] > 0 and "dataset shift" in shifted.values["shift_warning"]
    assert "WARNING dataset shift" in shifted.log[0] and "WARNING" in shifted.status
    four = np.zeros(rgb.shape[:2] + (4,), np.uint8)
    with pytest.raises(IjtorchError, match="RGB"):
        from ijtorch.commands.classify import rgb_for_model
        from ijtorch.models.classifier import ClassifierModel

        model = ClassifierModel.load(shapes_classifier)
        model.config["input_shape"] = [2, 24, 24]
        rgb_for_model("ijtorch Classify", Image(four[..., :3], "YXS", title="x"), model)
    # class folders of RGB crops (the CLI's input) are three channels
    import tifffile

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        tifffile.imwrite(tmp_path / c / "1.tif", rgb[:24, :24], photometric="rgb")
    items, _, classes, _ = load_class_folders(tmp_path)
    assert items.shape == (2, 3, 24, 24) and np.array_equal(items[0, 1], rgb[:24, :24, 1]) and classes == ["a", "b"]


def test_classify_shift_on_the_cli_and_the_server(shapes_classifier, tmp_path, monkeypatch):
    import asyncio
    import shutil

    import httpx

    from ijtorch.serve import ServerConfig, create_app
    from ijtorch.serve._wire import MEDIA_TYPE, decode, encode
    from ijtorch.tasks.classify import object_crops

    image, labels, _ = _shapes_scene(9, n=16)
    fine = object_crops(image, "YX", labels, size=24)
    image, labels, _ = _shapes_scene(9, n=16, background=175.0, contrast=-150.0)
    foreign = object_crops(image, "YX", labels, size=24)
    np.savez(tmp_path / "fine.npz", images=fine)
    np.savez(tmp_path / "foreign.npz", images=foreign)
    for name in ("foreign",):  # the CLI once (a process start); items like the training ones on the server below
        out = subprocess.run([sys.executable, "-m", "ijtorch.cli", "classify", str(tmp_path / f"{name}.npz"),
                              "--model", str(shapes_classifier), "--output", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        with open(tmp_path / name / "classes.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 16 and all(float(r["shift_score"]) > 0 for r in rows)
        assert ("WARNING foreign.npz: dataset shift" in out.stderr) == (name == "foreign"), out.stderr
    models = tmp_path / "models"
    shutil.copytree(shapes_classifier, models / "shapes")
    monkeypatch.setenv("IJTORCH_MODELS", str(models))

    async def post(items):
        transport = httpx.ASGITransport(app=create_app(ServerConfig()))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ac:
            return await ac.post("/classify", content=encode({"model": "shapes"}, {"images": items}),
                                 headers={"Content-Type": MEDIA_TYPE}, timeout=120)

    for items, warned in ((fine, False), (foreign, True)):
        reply = asyncio.run(post(items))
        assert reply.status_code == 200, reply.text
        header, arrays = decode(reply.content)
        assert arrays["shift_score"].shape == (16,) and header["shift_threshold"] > 0
        assert bool(header["shift_warning"]) == warned and header["shift_message"]


def test_pixel_classifier_shift(tmp_path):
    from ijtorch.models.pixel_classifier import DEFAULT_ENERGY_SIGMAS, DEFAULT_SIGMAS, PixelClassifierModel, n_features
    from ijtorch.tasks.pixels import classify_pixels, scribbles_from_classes, train_pixels

    def blobs(seed, shape=(256, 256), fg=160.0, bg=40.0):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        classes = np.ones(shape, np.uint8)
        for _ in range(30):
            cy, cx, r = rng.integers(12, shape[0] - 12), rng.integers(12, shape[1] - 12), rng.integers(6, 11)
            classes[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
        return (np.where(classes == 2, fg, bg) + rng.normal(0, 25, shape)).astype(np.float32), classes

    image, truth = blobs(0)
    ann = scribbles_from_classes(truth, strokes_per_class=4, length=40, width=1, seed=0)
    train_pixels([image], [ann], output=tmp_path / "m", classes=["background", "disk"], steps=60, seed=0, device="cpu")
    ref = PixelClassifierModel.load(tmp_path / "m").shift_reference
    assert ref["calibration"]["images"] == 8 and ref["threshold"] > 0
    # one statistic per pixel feature of a grey image
    assert len(ref["features"]["mean"]) == n_features(1, DEFAULT_SIGMAS, True, DEFAULT_ENERGY_SIGMAS)
    same = classify_pixels(blobs(1)[0], "YX", model=tmp_path / "m", device="cpu")
    assert same.shift_score is not None and same.shift_warning is None and "resembles" in same.shift_message
    dark = classify_pixels(blobs(2, fg=40.0, bg=160.0)[0], "YX", model=tmp_path / "m", device="cpu")
    assert dark.shift_score > dark.shift_threshold and "bright background" in dark.shift_warning
    stack = classify_pixels(np.stack([blobs(1)[0], blobs(2, fg=40.0, bg=160.0)[0]]), "ZYX", model=tmp_path / "m",
                            device="cpu")
    assert "[1 of 2 planes above the threshold]" in stack.shift_warning
    from ijtorch.commands.pixels import ClassifyPixelsParams, classify_pixels_outputs
    from ijtorch.image import Image

    _, outputs = classify_pixels_outputs(Image(blobs(2, fg=40.0, bg=160.0)[0], "YX", title="dark.tif"),
                                         ClassifyPixelsParams(model=str(tmp_path / "m")))
    assert "WARNING dataset shift" in outputs.log[0] and outputs.values["shift_score"] > 0
    assert outputs.values["shift_warning"].startswith("dataset shift") and "WARNING" in outputs.status
    model = PixelClassifierModel.load(tmp_path / "m")
    model.config.pop("shift")
    plain = classify_pixels(blobs(1)[0], "YX", model=model, device="cpu")
    assert plain.shift_score is None and "no dataset-shift reference" in plain.shift_message


# ------------------------------------------------------------------ confidence as a ROI property
def test_roiset_carries_each_objects_confidence(tmp_path, fluo):
    import roifile

    from ijtorch.commands.outputs import CommandInputs
    from ijtorch.commands.segment import SegmentParams, segment_compute
    from ijtorch.image import Image
    from ijtorch.io.roiset import read_roiset
    from ijtorch.tasks.segmentation_files import write_segmentation_outputs

    im = _tif(fluo / "images" / f"{VALIDATION[2]}.tif")
    result, outputs = segment_compute(CommandInputs(image=Image(im, "YX", title="n.tif")),
                                      SegmentParams(model="nuclei", output="all"))
    ol = outputs.rois.outlines
    conf = outputs.rois.properties["confidence"]
    assert len(conf) == len(ol) == result.n_objects
    assert [float(c) for c in conf] == pytest.approx(result.confidence[ol.labels - 1], abs=5e-4)
    paths = write_segmentation_outputs(tmp_path, "n", Image(im, "YX"), result.labels, result.axes,
                                       confidence=result.confidence)
    rois = roifile.roiread(paths["rois"])  # an independent reader: ImageJ's properties field
    assert len(rois) == result.n_objects and rois[0].name == "label_0001"  # names unchanged
    assert [r.properties["confidence"] for r in rois] == pytest.approx([float(c) for c in conf], abs=1e-9)
    assert read_roiset(paths["rois"]).properties[3] == {"confidence": conf[3]}
    no_conf = write_segmentation_outputs(tmp_path / "plain", "n", Image(im, "YX"), result.labels, result.axes)
    assert read_roiset(no_conf["rois"]).properties[0] == {}
