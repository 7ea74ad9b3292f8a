"""bioimage.io both ways (issue 22): export → bioimageio.spec validation → bioimageio.core test →
import → outputs equal the original model's; a package built here with bioimageio.spec's own
classes (not ijtorch's exporter) imports and runs within 1e-5 of bioimageio.core's prediction.

Tiny random-weight models of every exportable type keep this fast; the bundled nuclei model
(2 MB) is exported once.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

# bioimageio.* read their cache folder from the environment when first imported: never the home dir
os.environ.setdefault("BIOIMAGEIO_CACHE_PATH", tempfile.mkdtemp(prefix="bioimageio-cache-"))

pytest.importorskip("bioimageio.core")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path / "models"))
    from ijtorch.models.store import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()


def _blobs(shape, seed=0):
    from ijtorch.bioimageio.export import _synthetic_nuclei

    return _synthetic_nuclei(shape, seed=seed)


def _tiny_model(kind: str, folder: Path) -> Path:
    """A small random-weight model folder of ``kind``."""
    torch.manual_seed(0)
    if kind == "stardist2d":
        from ijtorch.models.stardist import network
        from ijtorch.models.stardist.model import StarDistModel

        StarDistModel(network.StarDistNet(n_rays=8, base_channels=4, depth=2, head_channels=8), {}).save(folder)
    elif kind == "stardist3d":
        from ijtorch.models.stardist import network3d
        from ijtorch.models.stardist.model3d import StarDist3DModel

        net = network3d.StarDistNet3D(n_rays=8, grid=(1, 2, 2), base_channels=4, depth=1, head_channels=8)
        StarDist3DModel(net, {"tiling": {"tile_shape": [16, 64, 64], "overlap": [4, 8, 8]}}).save(folder)
    elif kind == "unet_watershed":
        from ijtorch.models.unet import UNet
        from ijtorch.models.unet_watershed import NormalizeConfig, PostprocessConfig, UNetWatershed, save_model

        save_model(UNetWatershed(net=UNet(1, 3, base_channels=4, depth=2), postprocess=PostprocessConfig(),
                                 normalize=NormalizeConfig()), folder)
    elif kind in ("care", "n2v"):
        from ijtorch.models.restoration import RestorationModel
        from ijtorch.models.unet import UNet

        RestorationModel(UNet(1, 1, base_channels=4, depth=2), {"model_type": kind}).save(folder)
    elif kind == "classifier":
        from ijtorch.models.classifier import ClassifierModel, ClassifierNet

        cfg = {"model_type": "classifier", "classes": ["G1", "S", "G2M"], "input_shape": [2, 32, 32], "axes": "CYX",
               "architecture": {"in_channels": 2, "n_classes": 3, "widths": [4, 8]},
               "normalization": {"method": "percentile_dataset", "lo": [50.0, 40.0], "hi": [900.0, 700.0]},
               "calibration": {"temperature": 1.5}, "inference": {"tta": "dihedral"}}
        ClassifierModel(ClassifierNet(2, 3, widths=(4, 8)), cfg).save(folder)
    else:
        raise AssertionError(kind)
    return folder


KINDS = ("stardist2d", "stardist3d", "unet_watershed", "care", "n2v", "classifier")


@pytest.mark.parametrize("kind", KINDS)
def test_export_validate_test_import_equal_outputs(kind, tmp_path):
    from ijtorch.bioimageio.export import export_bioimageio
    from ijtorch.bioimageio.package_import import import_bioimageio
    from ijtorch.models.store import load_model

    src = _tiny_model(kind, tmp_path / f"tiny-{kind}")
    pixel = (0.5, 0.25, 0.25) if kind == "stardist3d" else None if kind == "classifier" else (0.25, 0.25)
    res = export_bioimageio(src, tmp_path / f"{kind}.zip", authors=["Jane Doe"], pixel_size=pixel)
    assert res.format_status == "valid-format", res.details
    assert res.test_status == "passed", res.details
    with zipfile.ZipFile(res.path) as zf:
        names = set(zf.namelist())
        rdf = zf.read("rdf.yaml").decode()
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "ijtorch_networks.py", "test_input.npy",
            "test_output.npy", "cover.png", "README.md"} <= names
    assert "torchscript" in rdf and "pytorch_state_dict" in rdf and "Jane Doe" in rdf
    if pixel:
        assert "micrometer" in rdf
    _check_java_consumer_fields(res.path, tmp_path / "java")

    imp = import_bioimageio(res.path, name=f"back-{kind}")
    assert imp.model_type == kind
    orig, back = load_model(src, device="cpu"), load_model(f"back-{kind}", device="cpu")
    for (k, a), (k2, b) in zip(orig.net.state_dict().items(), back.net.state_dict().items()):
        assert k == k2 and torch.equal(a, b)

    if kind in ("stardist2d", "unet_watershed"):
        from ijtorch.tasks.segment import segment

        img = _blobs((96, 104), seed=2)
        if kind == "stardist2d":
            a, b = segment(img, "YX", model=str(src), device="cpu"), segment(img, "YX", model=f"back-{kind}",
                                                                             device="cpu")
            np.testing.assert_array_equal(a.labels, b.labels)
        else:
            from ijtorch.models.unet_watershed import predict_instances

            np.testing.assert_array_equal(predict_instances(orig, img), predict_instances(back, img))
    elif kind == "stardist3d":
        vol = _blobs((8, 32, 32), seed=2)
        pa, da = orig.predict_maps(vol)
        pb, db = back.predict_maps(vol)
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(da, db)
    elif kind in ("care", "n2v"):
        from ijtorch.tasks.restore import restore

        img = _blobs((64, 64), seed=2)
        a, b = restore(img, "YX", model=str(src), device="cpu"), restore(img, "YX", model=f"back-{kind}", device="cpu")
        np.testing.assert_array_equal(a.restored, b.restored)
    else:
        from ijtorch.tasks.classify import classify

        crops = np.random.default_rng(0).uniform(0, 1000, (3, 2, 32, 32)).astype(np.float32)
        np.testing.assert_array_equal(classify(crops, model=str(src))["probabilities"],
                                      classify(crops, model=f"back-{kind}")["probabilities"])


@pytest.mark.parametrize("kind", ("stardist2d", "care", "classifier"))
def test_exported_package_run_as_foreign_matches_bioimageio_core(kind, tmp_path):
    """The same package through ijtorch's generic runtime (TorchScript, declared preprocessing)."""
    from bioimageio.core import predict
    from bioimageio.spec import load_description

    from ijtorch.bioimageio.export import export_bioimageio
    from ijtorch.bioimageio.package_import import import_bioimageio
    from ijtorch.models.store import load_model

    src = _tiny_model(kind, tmp_path / f"tiny-{kind}")
    res = export_bioimageio(src, tmp_path / f"{kind}.zip", run_test=False)
    task = {"stardist2d": "restore", "care": "restore", "classifier": "classify"}[kind]
    imp = import_bioimageio(res.path, name="generic", task=task)
    assert imp.model_type == "bioimageio" and imp.weights_format == "torchscript"
    m = load_model("generic", device="cpu")
    descr = load_description(res.path, perform_io_checks=False)
    x = np.load(_extract(res.path, "test_input.npy", tmp_path))
    core = predict(model=descr, inputs={descr.inputs[0].id: x}).members[descr.outputs[0].id].data.values
    ours = m.predict_tensor(x)
    assert ours.shape == core.shape
    np.testing.assert_allclose(ours, core, atol=1e-5, rtol=0)


def _extract(zip_path: Path, name: str, folder: Path) -> Path:
    with zipfile.ZipFile(zip_path) as zf:
        zf.extract(name, folder)
    return folder / name


def _spec_built_package(folder: Path) -> Path:
    """A package made with bioimageio.spec's own classes: a tiny TorchScript conv net (not ijtorch's)."""
    import bioimageio.spec.model.v0_5 as spec
    from bioimageio.spec import save_bioimageio_package

    torch.manual_seed(1)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.c2 = torch.nn.Conv2d(4, 1, 3, padding=1)

        def forward(self, x):
            return torch.sigmoid(self.c2(torch.relu(self.c1(x))) * 3.0)

    net = Tiny().eval()
    folder.mkdir(parents=True)
    ts = torch.jit.script(net)
    ts.save(str(folder / "tiny.pt"))
    rng = np.random.default_rng(3)
    x = (rng.poisson(np.kron(rng.uniform(20, 200, (8, 8)), np.ones((8, 8)))).astype(np.float32))[None, None]
    xn = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        y = net(torch.from_numpy(xn.astype(np.float32))).numpy()
    np.save(folder / "in.npy", x)
    np.save(folder / "out.npy", y)
    (folder / "README.md").write_text("# Tiny\n\nA test model.\n")
    in_id, out_id = spec.TensorId("image"), spec.TensorId("foreground")
    descr = spec.ModelDescr(
        name="Tiny foreground net",
        description="two convolutions and a sigmoid",
        authors=[spec.Author(name="Test Author")],
        cite=[spec.CiteEntry(text="Ronneberger et al.", doi=spec.Doi("10.1007/978-3-319-24574-4_28"))],
        license="MIT",
        documentation=spec.FileDescr(source=folder / "README.md"),
        tags=["segmentation"],
        inputs=[spec.InputTensorDescr(
            id=in_id,
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("raw")]),
                  spec.SpaceInputAxis(id=spec.AxisId("y"), size=spec.ParameterizedSize(min=16, step=8)),
                  spec.SpaceInputAxis(id=spec.AxisId("x"), size=spec.ParameterizedSize(min=16, step=8))],
            test_tensor=spec.FileDescr(source=folder / "in.npy"),
            preprocessing=[spec.ZeroMeanUnitVarianceDescr(kwargs=spec.ZeroMeanUnitVarianceKwargs(
                axes=[spec.AxisId("y"), spec.AxisId("x")]))])],
        outputs=[spec.OutputTensorDescr(
            id=out_id,
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("fg")]),
                  spec.SpaceOutputAxis(id=spec.AxisId("y"), size=spec.SizeReference(tensor_id=in_id,
                                                                                   axis_id=spec.AxisId("y"))),
                  spec.SpaceOutputAxis(id=spec.AxisId("x"), size=spec.SizeReference(tensor_id=in_id,
                                                                                   axis_id=spec.AxisId("x")))],
            test_tensor=spec.FileDescr(source=folder / "out.npy"))],
        weights=spec.WeightsDescr(torchscript=spec.TorchscriptWeightsDescr(
            source=folder / "tiny.pt", pytorch_version=spec.Version(torch.__version__.split("+")[0]))),
    )
    out = folder.parent / "tiny-package.zip"
    save_bioimageio_package(descr, output_path=out)
    return out


def test_spec_built_package_imports_and_runs_like_bioimageio_core(tmp_path):
    from bioimageio.core import predict
    from bioimageio.spec import load_description
    from scipy import ndimage as ndi

    from ijtorch.bioimageio.package_import import import_bioimageio
    from ijtorch.tasks.restore import restore
    from ijtorch.tasks.segment import segment

    pkg = _spec_built_package(tmp_path / "tiny")
    img = _blobs((64, 72), seed=5).astype(np.float32)
    descr = load_description(pkg, perform_io_checks=False)
    core = predict(model=descr, inputs={descr.inputs[0].id: img[None, None]}).members[descr.outputs[0].id]
    core = core.data.values[0, 0]

    seg = import_bioimageio(pkg)  # tags say segmentation
    assert (seg.name, seg.model_type, seg.task, seg.weights_format) == ("Tiny-foreground-net", "bioimageio", "segment",
                                                                       "torchscript")
    res = segment(img, "YX", model=seg.name, device="cpu")
    expected, n = ndi.label(core > 0.5)
    assert res.n_objects == n
    np.testing.assert_array_equal(res.labels, expected)

    imp = import_bioimageio(tmp_path / "tiny-package.zip", name="tiny-prob", task="restore")
    prob = restore(img, "YX", model=imp.name, device="cpu").restored
    assert prob.shape == img.shape
    np.testing.assert_allclose(prob, core, atol=1e-5, rtol=0)

    # a stack: plane by plane, the same per plane; a folder works as well as the zip
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(pkg) as zf:
        zf.extractall(folder)
    import_bioimageio(folder, name="tiny-prob", task="restore", overwrite=True)
    stack = restore(np.stack([img, img[::-1]]), "ZYX", model="tiny-prob", device="cpu").restored
    np.testing.assert_allclose(stack[0], core, atol=1e-5, rtol=0)


def test_architecture_names_match_the_wrappers():
    from ijtorch.bioimageio._wrappers import WRAPPERS
    from ijtorch.bioimageio.architecture import ARCHITECTURE_CALLABLES

    assert set(ARCHITECTURE_CALLABLES) == set(WRAPPERS)


def test_import_of_a_torchscript_package_imports_neither_torch_nor_bioimageio(tmp_path):
    """The cold-start path (issue 22: import + first prediction < 5 s): a 0.5 package is read with
    PyYAML, and torch is imported only when the model runs."""
    import json
    import subprocess
    import sys

    pkg = _spec_built_package(tmp_path / "tiny")
    code = ("import json, sys; from ijtorch.bioimageio.package_import import import_bioimageio; "
            "r = import_bioimageio(sys.argv[1], name='cold'); "
            "print(json.dumps([r.weights_format] + sorted(m for m in ('torch', 'scipy', 'bioimageio.spec') "
            "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(pkg)], capture_output=True, text=True, check=True,
                         env=dict(os.environ, IJTORCH_MODELS=str(tmp_path / "cold-models")))
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["torchscript"]


def test_large_image_is_tiled_like_whole(tmp_path):
    from ijtorch.bioimageio.package_import import import_bioimageio
    from ijtorch.models.store import load_model

    pkg = _spec_built_package(tmp_path / "tiny")
    import_bioimageio(pkg, name="tiny", task="restore")
    m = load_model("tiny", device="cpu")
    x = _blobs((200, 184), seed=7).astype(np.float32)[None, None]
    whole = m.predict_tensor(x, tile_size=256)
    tiled = m.predict_tensor(x, tile_size=64, overlap=32)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_refusals(tmp_path):
    import bioimageio.spec.model.v0_5 as spec  # noqa: F401

    from ijtorch.bioimageio.package_import import import_bioimageio
    from ijtorch.errors import ModelError

    with pytest.raises(ModelError, match="no such package"):
        import_bioimageio(tmp_path / "missing.zip")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a zip"):
        import_bioimageio(bad)
    pkg = _spec_built_package(tmp_path / "tiny")
    import_bioimageio(pkg, name="one")
    with pytest.raises(ModelError, match="exists"):
        import_bioimageio(pkg, name="one")
    # a zip entry escaping the package folder is refused before anything is extracted
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(ModelError, match="outside"):
        import_bioimageio(evil)
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.slow
def test_export_tool_reproduces_a_bundled_package_that_passes_bioimageio_core(tmp_path):
    """``tools/export_bundled_bioimageio.py`` (the one command that reproduces the bundled
    packages): bioimageio.core's test passes, and a second run gives the same bytes."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[2] / "tools" / "export_bundled_bioimageio.py"
    runs = []
    for k, extra in enumerate(([], ["--no-test"])):
        out = subprocess.run([sys.executable, str(tool), str(tmp_path / f"run{k}"), "--model", "nuclei"] + extra,
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(out.stdout)
    assert "valid-format; bioimageio.core test_model passed" in runs[0], runs[0]
    first, second = (tmp_path / f"run{k}" / "nuclei.zip" for k in (0, 1))
    assert first.read_bytes() == second.read_bytes()
    _check_java_consumer_fields(first, tmp_path / "java")
    with zipfile.ZipFile(first) as zf:
        readme = zf.read("README.md").decode()
    assert "How to finish" in readme and "non-maximum suppression" in readme and "# Validation" in readme


def _check_java_consumer_fields(package: Path, folder: Path) -> None:
    """What deepImageJ / JDLL read from a package (their Java readers, checked against JDLL's
    source; no deepImageJ jar runs here): rdf.yaml as YAML 1.1 (SnakeYAML) with plain-string
    documentation and covers, numeric axis sizes, scales and halos, named space axes, named
    channels, .npy test tensors, the nickname, and TorchScript weights that ``torch.jit.load``
    runs to the test output."""
    import yaml

    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    rdf = yaml.safe_load((folder / "rdf.yaml").read_text())  # YAML 1.1, as SnakeYAML reads it
    assert str(rdf["format_version"]).startswith("0.5.")
    assert isinstance(rdf["documentation"], str) and (folder / rdf["documentation"]).is_file()
    assert rdf["covers"] and all(isinstance(c, str) and (folder / c).is_file() for c in rdf["covers"])
    assert rdf["config"]["bioimageio"]["nickname"]
    for tensor in rdf["inputs"] + rdf["outputs"]:
        assert tensor["test_tensor"]["source"].endswith(".npy")
        if tensor in rdf["inputs"]:  # the example image deepImageJ shows
            sample = tensor["sample_tensor"]["source"]
            assert sample.endswith(".tif") and (folder / sample).is_file()
        for axis in tensor["axes"]:
            if axis["type"] == "channel":
                assert axis["channel_names"]
            if axis["type"] == "space":
                assert axis["id"] in ("z", "y", "x")
                assert isinstance(axis.get("scale", 1.0), float) and isinstance(axis.get("halo", 0), int)
                size = axis["size"]
                assert isinstance(size, int) or all(isinstance(v, int) for k, v in size.items()
                                                    if k in ("min", "step"))
        for step in tensor.get("preprocessing", []) + tensor.get("postprocessing", []):
            for key in ("eps", "min_percentile", "max_percentile"):
                assert not isinstance(step.get("kwargs", {}).get(key), str), (step, key)
    ts = torch.jit.load(str(folder / rdf["weights"]["torchscript"]["source"]), map_location="cpu")
    from ijtorch.bioimageio.runtime import apply_processing

    x = np.load(folder / rdf["inputs"][0]["test_tensor"]["source"])
    in_axes = [a.get("id", a["type"]) for a in rdf["inputs"][0]["axes"]]
    xn = apply_processing(x, in_axes, rdf["inputs"][0].get("preprocessing", []))
    with torch.no_grad():
        y = ts(torch.from_numpy(np.ascontiguousarray(xn, np.float32))).numpy()
    np.testing.assert_allclose(y, np.load(folder / rdf["outputs"][0]["test_tensor"]["source"]), atol=1e-4, rtol=1e-4)


def test_fiji_commands_export_and_import(tmp_path):
    """The handlers of ``ijtorch Export/Import bioimage.io Model`` (their ImageJ side only logs)."""
    from ijtorch.bridge import registered_commands
    from ijtorch.commands.bioimageio import ExportBioimageioParams, ImportBioimageioParams, export_text, import_text
    from ijtorch.tasks.segment import segment

    assert {"ijtorch Export bioimage.io Model", "ijtorch Import bioimage.io Model"} <= set(registered_commands())
    src = _tiny_model("stardist2d", tmp_path / "tiny")
    text = export_text(ExportBioimageioParams(model=str(src), output=str(tmp_path / "p.zip"), author="A, B",
                                              run_test=False))
    assert "valid-format" in text and (tmp_path / "p.zip").is_file()
    text = import_text(ImportBioimageioParams(package=str(tmp_path / "p.zip"), name="zoo"))
    assert "zoo registered (stardist2d" in text
    assert segment(_blobs((64, 64)), "YX", model="zoo", device="cpu").labels.shape == (64, 64)
