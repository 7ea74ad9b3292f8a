"""Export an ijtorch model folder as a bioimage.io model package (``rdf.yaml`` format 0.5).

:func:`export_bioimageio` writes a zip with

- ``rdf.yaml`` built with bioimageio.spec's own classes (``ModelDescr`` 0.5), validated by
  bioimageio.spec on the way;
- ``pytorch_state_dict`` weights (``weights.pt``, tensors only) with the self-contained architecture
  source ``ijtorch_networks.py`` (:mod:`ijtorch.bioimageio.architecture`) and TorchScript weights
  (``weights_torchscript.pt``, what deepImageJ/JDLL run);
- ``test_input.npy`` / ``test_output.npy`` (batch and channel axes included), a cover image, the
  model card as ``README.md`` (with a "How to finish" section where the method's post-processing
  is not expressible in the spec, and a "Validation" section);
- authors, licence, citations, training data, axes with units and pixel sizes, the declared
  preprocessing, and the original ijtorch config under ``config.ijtorch`` (so that
  :func:`ijtorch.bioimageio.package_import.import_bioimageio` restores the very same model).

What each model type exports (the network's maps; post-processing ijtorch does afterwards is
documented in the package README):

=================  ==========================================================================
star-convex 2D/3D  object probability (sigmoid) + ray distances; NMS is documented, as StarDist does
unet_watershed     softmax of background / boundary / interior; the seeded watershed is documented
care / n2n / n2v   restored image in normalised units (percentile 1–99.8 of the input → 0–1)
classifier         calibrated class probabilities ``softmax(logits / T)`` for fixed-size crops
=================  ==========================================================================
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ijtorch.errors import ModelError

from .architecture import ARCHITECTURE_FILE, architecture_source

__all__ = ["export_bioimageio", "ExportResult", "CITATIONS"]

log = logging.getLogger(__name__)

CITATIONS = {
    "stardist": ("Schmidt, Weigert, Broaddus, Myers. Cell Detection with Star-Convex Polygons. MICCAI 2018.",
                 "10.1007/978-3-030-00934-2_30"),
    "stardist3d": ("Weigert, Schmidt, Haase, Sugawara, Myers. Star-convex Polyhedra for 3D Object Detection and "
                   "Segmentation in Microscopy. WACV 2020.", "10.1109/WACV45572.2020.9093435"),
    "unet": ("Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
             "MICCAI 2015.", "10.1007/978-3-319-24574-4_28"),
    "care": ("Weigert et al. Content-aware image restoration: pushing the limits of fluorescence microscopy. "
             "Nature Methods 2018.", "10.1038/s41592-018-0216-7"),
    "n2v": ("Krull, Buchholz, Jug. Noise2Void - Learning Denoising From Single Noisy Images. CVPR 2019.",
            "10.1109/CVPR.2019.00223"),
    "n2n": ("Lehtinen et al. Noise2Noise: Learning Image Restoration without Clean Data. ICML 2018.",
            "10.48550/arXiv.1803.04189"),
    "dsb2018": ("Caicedo et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
                "Nature Methods 2019.", "10.1038/s41592-019-0612-7"),
    "temperature": ("Guo, Pleiss, Sun, Weinberger. On Calibration of Modern Neural Networks. ICML 2017.",
                    "10.48550/arXiv.1706.04599"),
}

_FINISH = {
    "stardist2d": """## How to finish: star-convex non-maximum suppression (not expressible in the spec)

Output `maps` holds, per pixel, channel 0 = object probability and channels 1..{n_rays} = distances
(pixels) from the pixel to the object boundary along ray k at angle 2πk/{n_rays} (vertex
`(y + d_k sin φ_k, x + d_k cos φ_k)`). To get instances, as StarDist does: take the pixels on the
grid {grid} (every {grid}th pixel in y and x) whose probability exceeds **{prob}**, sort them by
probability, greedily suppress polygons whose IoU with an already kept one exceeds **{nms}**, and
render the kept polygons into a label image (later = lower score under earlier). In ijtorch:
`ijtorch.models.stardist.geometry.instances_from_maps(prob, dist, prob_threshold={prob}, nms_threshold={nms}, grid={grid})`,
or import this package (`ijtorch import-bioimageio`) and run `ijtorch segment`.
""",
    "stardist3d": """## How to finish: star-convex polyhedron non-maximum suppression (not expressible in the spec)

Output `maps` lies on the grid {grid} (z, y, x): channel 0 = object probability, channels 1..{n_rays} =
distances (voxels) along {n_rays} Fibonacci rays built for anisotropy {anisotropy}
(`ijtorch.models.stardist.geometry3d.fibonacci_rays({n_rays}, {anisotropy})`). Keep grid points with probability
above **{prob}**, suppress polyhedra overlapping a kept one by IoU above **{nms}**, render the rest:
`ijtorch.models.stardist.geometry3d.instances_from_maps_3d(prob, dist, rays, shape, grid={grid}, prob_threshold={prob}, nms_threshold={nms})`,
or import this package into ijtorch and run `ijtorch segment`.
""",
    "unet_watershed": """## How to finish: seeded watershed (not expressible in the spec)

Output `probabilities` has channels background, boundary, interior (softmax). Foreground =
`1 - p_background > {fg_threshold}`{fill}; seeds = {seeds}; watershed of `1 - p_interior` from the seeds inside the foreground
(scikit-image `segmentation.watershed`); foreground components without a seed become objects; objects
under {min_size} pixels are removed. In ijtorch: `ijtorch.models.unet_watershed.postprocess`, or
import this package and run `ijtorch segment`.
""",
    "restoration": """## Output units

The network sees the input normalised so that its {low} and {high} percentiles map to 0 and 1
(declared preprocessing `scale_range`), and its output `restored` is in those units. To get raw
intensities multiply by `p{high} - p{low}` of the input and add `p{low}` (ijtorch's `restore()` does).
""",
    "classifier": """## Input

One fixed-size crop per batch item, {shape} (channels {channels}); ijtorch resamples other crop
sizes to this one (linear). Output `probabilities` are calibrated with temperature {temperature}
(classes: {classes}).
""",
}


@dataclass
class ExportResult:
    """What :func:`export_bioimageio` returns."""

    path: Path
    model_type: str
    format_status: str
    test_status: str | None
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _synthetic_nuclei(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Blurred random blobs on a dim background with Poisson-like noise (uint16)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    n = max(4, int(np.prod(shape) / (14 ** len(shape)) / 3))
    grids = np.indices(shape, dtype=np.float32)
    for _ in range(n):
        c = [rng.uniform(0, s) for s in shape]
        r = rng.uniform(4, 8)
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c))
        img[d2 < r * r] = rng.uniform(0.5, 1.0)
    img = ndi.gaussian_filter(img, 1.0) * 800 + 60
    return rng.poisson(img).astype(np.uint16)


def _cover(path: Path, left: np.ndarray, right: np.ndarray) -> None:
    """Input | output side by side (2:1), each scaled to its 0.5–99.5 percentiles."""
    from PIL import Image

    def u8(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        while a.ndim > 2:
            a = a[a.shape[0] // 2]
        lo, hi = np.percentile(a, [0.5, 99.5])
        return (np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)

    a, b = u8(left), u8(right)
    size = (256, 256)
    ia = Image.fromarray(a).resize(size, Image.NEAREST)
    ib = Image.fromarray(b).resize(size, Image.NEAREST)
    out = Image.new("L", (512, 256))
    out.paste(ia, (0, 0))
    out.paste(ib, (256, 0))
    out.save(path)


SAMPLE_INPUT, SAMPLE_OUTPUT = "sample_input.tif", "sample_output.tif"


def _sample_tiffs(work: Path, test_input: np.ndarray, test_output: np.ndarray | None) -> None:
    """The test tensors as TIFF sample tensors (what deepImageJ shows as the example image; the
    spec allows no .npy there): batch axis dropped, a single channel dropped. A classifier's output
    (class probabilities, no image) gets none."""
    import tifffile

    for name, tensor in ((SAMPLE_INPUT, test_input), (SAMPLE_OUTPUT, test_output)):
        if tensor is not None:
            image = tensor[0, 0] if tensor.shape[1] == 1 else tensor[0]
            tifffile.imwrite(work / name, np.ascontiguousarray(image, np.float32))


def _config_for_package(cfg: dict[str, Any]) -> dict[str, Any]:
    """The ijtorch config without bulky entries (training history), JSON-clean."""
    out = json.loads(json.dumps(cfg))
    training = out.get("training")
    if isinstance(training, dict):
        training.pop("history", None)
    out.pop("weights", None)
    return out


# --------------------------------------------------------------------------- per model type
@dataclass
class _Plan:
    wrapper: str
    kwargs: dict[str, Any]
    net: Any  # the ijtorch network whose state dict is exported (keys get the "net." prefix)
    spatial: str  # "yx" / "zyx" / "" (classifier: fixed size crop)
    in_channels: list[str]
    out_id: str
    out_channels: list[str]
    test_input: np.ndarray  # raw, without batch axis, (C, *spatial)
    network_input: np.ndarray  # normalised as ijtorch normalises, (C, *spatial)
    size_min: tuple[int, ...] = ()
    size_step: tuple[int, ...] = ()
    fixed_size: tuple[int, ...] = ()
    out_grid: tuple[int, ...] = ()
    halo: tuple[int, ...] = ()
    preprocessing: list[Any] = field(default_factory=list)
    postprocessing: list[Any] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    cite: list[str] = field(default_factory=list)
    finish: str = ""
    task: str = "segment"


_MODALITIES = {"fluorescen": "fluorescence", "brightfield": "brightfield", "transmitted": "brightfield",
               "h&e": "histology", "histolog": "histology", "phase": "phase-contrast"}


def _modality_tags(cfg: dict[str, Any]) -> list[str]:
    """Imaging-modality tags named in the model's description (the bundled models name theirs)."""
    text = f"{cfg.get('name', '')} {cfg.get('description', '')}".lower()
    return sorted({tag for word, tag in _MODALITIES.items() if word in text})


def _percentile_pre(spec: Any, norm: dict[str, Any], axes: list[str], eps: float) -> Any:
    return spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
        axes=[spec.AxisId(a) for a in axes], min_percentile=float(norm.get("low", 1.0)),
        max_percentile=float(norm.get("high", 99.8)), eps=eps))


def _plan(model: Any, cfg: dict[str, Any], test_image: np.ndarray | None, spec: Any) -> _Plan:
    mtype = cfg.get("model_type")
    if mtype == "stardist2d":
        mult = tuple(int(m) for m in model.net.size_multiple())
        img = test_image if test_image is not None else _synthetic_nuclei((128, 128))
        img = _crop_to_multiple(img, mult)
        thr = model.thresholds
        plan = _Plan("StarDistMaps", {"architecture": dict(model.net.config)}, model.net, "yx", ["raw"], "maps",
                     ["prob"] + [f"dist_{k}" for k in range(model.n_rays)], img[None],
                     model.normalize(img)[None], size_min=tuple(max(64, m) for m in mult), size_step=mult,
                     halo=(32, 32), tags=["stardist", "instance-segmentation", "nuclei", "2d"] + _modality_tags(cfg),
                     cite=["stardist", "unet"])
        plan.finish = _FINISH["stardist2d"].format(n_rays=model.n_rays, grid=cfg.get("grid", 1), prob=thr["prob"],
                                                   nms=thr["nms"])
        plan.preprocessing = [_percentile_pre(spec, cfg["normalization"], ["y", "x"], 1e-20)]
        return plan
    if mtype == "stardist3d":
        mult = tuple(int(m) for m in model.net.size_multiple())
        grid = tuple(int(g) for g in model.grid)
        img = test_image if test_image is not None else _synthetic_nuclei((16, 64, 64))
        img = _crop_to_multiple(img, mult)
        thr = model.thresholds
        plan = _Plan("StarDist3DMaps", {"architecture": dict(model.net.config)}, model.net, "zyx", ["raw"], "maps",
                     ["prob"] + [f"dist_{k}" for k in range(model.n_rays)], img[None],
                     model.normalize(img)[None], size_min=mult, size_step=mult, out_grid=grid,
                     tags=["stardist", "instance-segmentation", "nuclei", "3d"], cite=["stardist3d", "unet"])
        plan.finish = _FINISH["stardist3d"].format(n_rays=model.n_rays, grid=list(grid), prob=thr["prob"],
                                                   nms=thr["nms"], anisotropy=list(cfg.get("anisotropy", [1, 1, 1])))
        plan.preprocessing = [_percentile_pre(spec, cfg["normalization"], ["z", "y", "x"], 1e-20)]
        return plan
    if mtype == "unet_watershed":
        from ijtorch.models.unet_watershed import CLASSES, _normalize

        mult = tuple(int(m) for m in model.net.size_multiple())
        img = test_image if test_image is not None else _synthetic_nuclei((128, 128))
        img = _crop_to_multiple(img, mult)
        plan = _Plan("ClassProbabilities", {"architecture": dict(model.net.config)}, model.net, "yx", ["raw"],
                     "probabilities", list(CLASSES), img[None], _normalize(img, model.normalize)[None],
                     size_min=tuple(max(32, m) for m in mult), size_step=mult, halo=(16, 16),
                     tags=["unet", "instance-segmentation", "semantic-segmentation", "watershed", "2d"]
                     + _modality_tags(cfg), cite=["unet"])
        pp = model.postprocess.model_dump()
        seeds = (f"h-maxima (height {pp['seed_h']} px) of the distance transform, Gaussian-smoothed by "
                 f"{pp['seed_sigma']} px, of `p_interior > {pp['seed_threshold']}`" if pp["seed_method"] == "distance"
                 else f"connected components of `p_interior > {pp['seed_threshold']}` with at least "
                      f"{pp['min_seed_size']} pixels")
        plan.finish = _FINISH["unet_watershed"].format(
            **pp, seeds=seeds, fill=" with its holes filled" if pp["fill_holes"] else "")
        norm = {"low": model.normalize.low, "high": model.normalize.high}
        plan.preprocessing = [_percentile_pre(spec, norm, ["y", "x"], 1e-20)]
        return plan
    if mtype in ("care", "n2v", "n2n", "artificial_labelling"):
        if model.net.config.get("type") == "blindspot":  # its posterior needs the image's own noise model
            raise ModelError("a blind-spot Noise2Void model (n2v_method='blindspot') cannot be exported to "
                             "bioimage.io: its output needs a noise model estimated from each image; train with "
                             "n2v_method='mask' to export")
        mult = tuple(int(m) for m in model.net.size_multiple())
        shape = (128, 128) if model.ndim == 2 else (16, 64, 64)
        img = test_image if test_image is not None else _synthetic_nuclei(shape)
        img = _crop_to_multiple(img, mult)
        x, _, _ = model.normalize(img)
        spatial = "yx" if model.ndim == 2 else "zyx"
        plan = _Plan("Restoration", {"architecture": dict(model.net.config), "residual": bool(model.residual)},
                     model.net, spatial, ["raw"], "restored", ["restored"], img[None], x[None],
                     size_min=tuple(max(16, m) for m in mult), size_step=mult, halo=(8,) * len(spatial),
                     tags=["restoration", "denoising", mtype, f"{model.ndim}d"], cite=[mtype if mtype in CITATIONS
                                                                                      else "care", "unet"],
                     task="restore")
        norm = cfg["normalization"]
        plan.finish = _FINISH["restoration"].format(low=norm.get("low", 1.0), high=norm.get("high", 99.8))
        plan.preprocessing = [_percentile_pre(spec, norm, list(spatial), 1e-20)]
        return plan
    if mtype == "classifier":
        if getattr(model, "forest", None) is not None:  # a random forest has no bioimage.io weights format
            log.warning("the package holds the classifier's network only: its feature forest cannot be exported, "
                        "so the package's probabilities are the network's alone (train with feature_forest=False "
                        "for a model that exports exactly)")
        shape = tuple(int(s) for s in cfg["input_shape"])
        spatial = "yx" if len(shape) == 3 else "zyx"
        rng = np.random.default_rng(0)
        if test_image is not None:
            raw = np.asarray(test_image, np.float32).reshape(shape)
        else:
            raw = _synthetic_nuclei(shape[1:], seed=1).astype(np.float32)[None].repeat(shape[0], 0)
            raw = raw * rng.uniform(0.5, 1.5, size=(shape[0],) + (1,) * len(shape[1:])).astype(np.float32)
        x = model.prepare(raw[None])[0]
        classes = [str(c) for c in cfg["classes"]]
        plan = _Plan("ClassifierProbabilities", {"architecture": dict(cfg["architecture"]),
                                                 "temperature": float(model.temperature),
                                                 "tta": bool(model.test_time_augmentation)},
                     model.net, "", [f"channel_{k}" for k in range(shape[0])], "probabilities", classes, raw, x,
                     fixed_size=shape[1:], tags=["classification", f"{len(shape) - 1}d"], cite=["temperature"],
                     task="classify")
        plan.cite = ["temperature"]
        plan.finish = _FINISH["classifier"].format(shape=list(shape), channels=cfg.get("channels", shape[0]),
                                                   temperature=round(float(model.temperature), 4), classes=classes)
        norm = cfg.get("normalization", {"method": "none"})
        if norm.get("method") == "percentile":
            plan.preprocessing = [spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
                axes=[spec.AxisId(a) for a in spatial], min_percentile=float(norm.get("low", 1.0)),
                max_percentile=float(norm.get("high", 99.8)), eps=1e-6))]
        elif norm.get("method") == "percentile_dataset":
            lo = np.asarray(norm["lo"], np.float64)
            hi = np.asarray(norm["hi"], np.float64)
            gain = 1.0 / (hi - lo + 1e-6)
            plan.preprocessing = [spec.ScaleLinearDescr(kwargs=spec.ScaleLinearAlongAxisKwargs(
                axis=spec.AxisId("channel"), gain=[float(g) for g in gain], offset=[float(-low * g) for low, g in
                                                                                   zip(lo, gain)]))]
        elif norm.get("method") != "none":
            raise ModelError(f"classifier normalization {norm.get('method')!r} cannot be exported")
        return plan
    raise ModelError(f"model_type={mtype!r} cannot be exported to bioimage.io; exportable: stardist2d, stardist3d, "
                     "unet_watershed, care, n2v, n2n, artificial_labelling, classifier")


def _crop_to_multiple(img: np.ndarray, mult: tuple[int, ...]) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != len(mult):
        raise ValueError(f"test image has shape {img.shape}; this model needs {len(mult)} spatial axes")
    sl = tuple(slice(0, (s // m) * m) for s, m in zip(img.shape, mult))
    out = img[sl]
    if min(out.shape) == 0:
        raise ValueError(f"test image of shape {img.shape} is smaller than the network's size multiple {mult}")
    return out


# ------------------------------------------------------------------------------------ export
def export_bioimageio(model: str | os.PathLike, output: str | os.PathLike, *, test_image: np.ndarray | None = None,
                      authors: list[str] | None = None, license: str | None = None,
                      pixel_size: tuple[float, ...] | None = None, name: str | None = None,
                      validate: bool = True, run_test: bool = True) -> ExportResult:
    """Write a bioimage.io model package (``.zip``) of an ijtorch model.

    Parameters
    ----------
    model : name or path
        A registered ijtorch model or a model folder.
    output : path
        The ``.zip`` to write (replaced atomically).
    test_image : ndarray, optional
        Raw test image (spatial axes only: ``YX`` or ``ZYX``; a classifier: one ``C, Y, X`` crop);
        default: a synthetic image. Cropped to the network's size multiple.
    authors : list of str, optional
        Author names (default: the config's ``authors``, else "ijtorch").
    license : str, optional
        SPDX licence id (default: the config's ``license``, else ``MIT``).
    pixel_size : tuple of float, optional
        Pixel (voxel) size in micrometres per spatial axis (``y, x`` or ``z, y, x``); default: the
        config's ``pixel_size`` if any, else the axes have no unit.
    validate, run_test : bool
        Check the written package with ``bioimageio.spec.load_description`` and
        ``bioimageio.core.test_model``; a failure raises :class:`~ijtorch.errors.ModelError`.
    """
    import time

    import torch

    from ijtorch.models.store import load_model, read_config, resolve_model

    t0 = time.monotonic()
    try:
        import bioimageio.spec.model.v0_5 as spec
        from bioimageio.spec import save_bioimageio_package
    except ImportError as e:  # pragma: no cover - the extra is part of `test`
        raise ModelError("exporting to bioimage.io needs bioimageio.spec and bioimageio.core: "
                         "pip install 'ijtorch[bioimageio]'") from e
    path = resolve_model(model)
    cfg = read_config(path)
    loaded = load_model(path, device="cpu")
    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise ValueError(f"output={str(output)!r}: give a .zip file name")
    plan = _plan(loaded, cfg, test_image, spec)
    mtype = cfg["model_type"]
    model_name = name or path.name
    if len(model_name) < 5:
        model_name = f"ijtorch {model_name}"

    from ._wrappers import WRAPPERS

    wrapper = WRAPPERS[plan.wrapper](**plan.kwargs)
    missing = wrapper.net.load_state_dict(plan.net.state_dict(), strict=True)
    del missing
    wrapper.eval()
    # The test output is the network on the whole, unpadded test input: what bioimageio.core's
    # test_model reproduces. (bioimageio.core's predict() instead pads the input by the output halo
    # first, symmetric, and crops it after; ijtorch's runtime does the same for imported packages.)
    x = torch.from_numpy(np.ascontiguousarray(plan.network_input[None], dtype=np.float32))
    with torch.inference_mode():
        y = wrapper(x).numpy()

    work = Path(tempfile.mkdtemp(prefix=".ijtorch-bioimageio-", dir=output.parent if output.parent.exists() else None))
    try:
        (work / ARCHITECTURE_FILE).write_text(architecture_source())
        torch.save(wrapper.state_dict(), work / "weights.pt")
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, x, check_trace=False)
        traced.save(str(work / "weights_torchscript.pt"))
        raw_in = np.ascontiguousarray(plan.test_input[None]).astype(np.float32)
        np.save(work / "test_input.npy", raw_in)
        np.save(work / "test_output.npy", y.astype(np.float32))
        _sample_tiffs(work, raw_in, y if plan.spatial else None)
        _cover(work / "cover.png", plan.test_input[0], y[0, 0] if plan.spatial else plan.test_input[0])
        card = path / "README.md"
        doc = card.read_text() if card.is_file() else f"# {model_name}\n\n{cfg.get('description', '')}\n"
        doc += "\n\n" + plan.finish + _validation_section(mtype)
        (work / "README.md").write_text(doc)

        descr = _describe(spec, plan, cfg, work, model_name, authors, license, pixel_size, y, torch.__version__)
        tmp_zip = work / "package.zip"
        # bioimageio.spec writes documentation/covers as {source, sha256} mappings (format 0.5.11+);
        # _deterministic_zip rewrites them as the plain names JDLL reads (format 0.5.10)
        save_bioimageio_package(descr, output_path=tmp_zip)
        _deterministic_zip(tmp_zip, work / "package-fixed.zip")
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work / "package-fixed.zip", output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = ExportResult(output, mtype, "not checked", None)
    if validate:
        from .validate import check_package

        result.format_status, result.test_status, result.details = check_package(output, run_test=run_test)
        if result.format_status != "valid-format" or (run_test and result.test_status != "passed"):
            raise ModelError(f"{output}: the exported package did not pass bioimage.io checks "
                             f"(format {result.format_status}, test {result.test_status}): "
                             + "; ".join(result.details[:5]))
    result.seconds = time.monotonic() - t0
    log.info("exported %s (%s) to %s in %.1f s", path.name, mtype, output, result.seconds)
    return result


# The last 0.5 format version whose documentation and covers are plain file names. JDLL (the
# engine of deepImageJ 3) reads ``documentation`` as a string and ``covers`` as a list of strings:
# the ``{source, sha256}`` mappings of format 0.5.11+ make it fail on the whole model. bioimageio.spec
# reads 0.5.10 and upgrades it on load (its only 0.5.x conversion), so both accept the package.
JDLL_FORMAT_VERSION = "0.5.10"


def _jdll_compatible_rdf(text: str) -> str:
    """``rdf.yaml`` text with plain-string documentation and covers, format 0.5.10 (see above).

    Read as YAML 1.2 (ruyaml, as bioimageio.spec writes it) and written by PyYAML, whose floats
    always have a dot (``eps: 1.0e-20``): YAML 1.1 readers such as JDLL's SnakeYAML would read
    ``1e-20`` as a string.
    """
    import ruyaml
    import yaml

    rdf = ruyaml.YAML(typ="safe", pure=True).load(text)
    doc = rdf.get("documentation")
    if isinstance(doc, dict):
        rdf["documentation"] = doc["source"]
    rdf["covers"] = [c["source"] if isinstance(c, dict) else c for c in rdf.get("covers") or []]
    rdf["format_version"] = JDLL_FORMAT_VERSION

    class Dumper(yaml.SafeDumper):
        """PyYAML quotes strings that YAML 1.1 would take for numbers; this also quotes those
        that only YAML 1.2 would (``1e5``; e.g. a SHA-256 of digits and one ``e``)."""

    def represent_str(dumper: yaml.SafeDumper, value: str) -> Any:
        style = "'" if _YAML12_NUMBER.fullmatch(value) else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)
    return yaml.dump(rdf, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


_YAML12_NUMBER = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


def _deterministic_zip(src: Path, dst: Path) -> None:
    """Copy the package zip ``src`` to ``dst`` with ``rdf.yaml`` made JDLL-compatible and fixed
    entry times and permissions, so that exporting the same model again gives the same bytes
    (bioimageio.spec stamps ``rdf.yaml`` with the time it wrote it). Entry order is kept."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "rdf.yaml":
                data = _jdll_compatible_rdf(data.decode("utf-8")).encode("utf-8")
            entry = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = info.compress_type
            entry.external_attr = 0o644 << 16
            zout.writestr(entry, data)


def _validation_section(mtype: str) -> str:
    return ("\n# Validation\n\nExported by ijtorch (`ijtorch export-bioimageio`); checked with bioimageio.spec "
            "(format) and `bioimageio.core.test_model` (the test output is reproduced from the test input with "
            "both weight formats). ijtorch's own metrics for this model, where it has them, are listed above "
            f"(model type `{mtype}`).\n")


def _describe(spec: Any, plan: _Plan, cfg: dict[str, Any], work: Path, model_name: str, authors: list[str] | None,
              license: str | None, pixel_size: tuple[float, ...] | None, y: np.ndarray, torch_version: str) -> Any:
    in_id = spec.TensorId("raw" if plan.in_channels == ["raw"] else "input")
    pixel = pixel_size if pixel_size is not None else cfg.get("pixel_size")
    if pixel is not None and len(pixel) != len(plan.spatial):
        raise ValueError(f"pixel_size={pixel!r}: give one number per spatial axis ({', '.join(plan.spatial)})")
    unit = {"unit": "micrometer"} if pixel is not None else {}

    in_axes: list[Any] = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in plan.in_channels])]
    out_axes: list[Any] = [spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in plan.out_channels])]
    for k, a in enumerate(plan.spatial):
        scale = float(pixel[k]) if pixel is not None else 1.0
        step = plan.size_step[k]
        halo = plan.halo[k] if plan.halo else 0
        smin = max(plan.size_min[k], -(-(2 * halo + 1) // step) * step)  # the spec wants min > 2 * halo
        size = spec.ParameterizedSize(min=smin, step=step)
        in_axes.append(spec.SpaceInputAxis(id=spec.AxisId(a), size=size, scale=scale, **unit))
        g = plan.out_grid[k] if plan.out_grid else 1
        ref = spec.SizeReference(tensor_id=in_id, axis_id=spec.AxisId(a))
        if plan.halo:
            out_axes.append(spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), size=ref, halo=plan.halo[k],
                                                         scale=scale * g, **unit))
        else:
            out_axes.append(spec.SpaceOutputAxis(id=spec.AxisId(a), size=ref, scale=scale * g, **unit))
    if not plan.spatial:  # classifier: fixed-size crops in, one probability per class out
        for a, s in zip("zyx"[-len(plan.fixed_size):], plan.fixed_size):
            in_axes.append(spec.SpaceInputAxis(id=spec.AxisId(a), size=int(s)))

    def sample(name: str) -> Any:
        return spec.FileDescr(source=work / name) if (work / name).is_file() else None

    inputs = [spec.InputTensorDescr(id=in_id, axes=in_axes, test_tensor=spec.FileDescr(source=work / "test_input.npy"),
                                    sample_tensor=sample(SAMPLE_INPUT),
                                    data=spec.IntervalOrRatioDataDescr(type="float32"),
                                    preprocessing=plan.preprocessing,
                                    description="raw image (any intensity range; normalised by the declared "
                                                "preprocessing)")]
    outputs = [spec.OutputTensorDescr(id=spec.TensorId(plan.out_id), axes=out_axes,
                                      test_tensor=spec.FileDescr(source=work / "test_output.npy"),
                                      sample_tensor=sample(SAMPLE_OUTPUT),
                                      data=spec.IntervalOrRatioDataDescr(type="float32"),
                                      postprocessing=plan.postprocessing,
                                      description=f"{plan.out_id} ({', '.join(plan.out_channels[:4])}"
                                                  f"{', ...' if len(plan.out_channels) > 4 else ''})")]
    tv = spec.Version(torch_version.split("+")[0])
    arch = spec.ArchitectureFromFileDescr(source=work / ARCHITECTURE_FILE, callable=spec.Identifier(plan.wrapper),
                                          kwargs=plan.kwargs)
    weights = spec.WeightsDescr(
        pytorch_state_dict=spec.PytorchStateDictWeightsDescr(source=work / "weights.pt", architecture=arch,
                                                             pytorch_version=tv),
        torchscript=spec.TorchscriptWeightsDescr(source=work / "weights_torchscript.pt", pytorch_version=tv,
                                                 parent="pytorch_state_dict"))
    author_names = authors or cfg.get("authors") or ["ijtorch"]
    cites = [spec.CiteEntry(text=CITATIONS[c][0], doi=spec.Doi(CITATIONS[c][1])) for c in plan.cite]
    training = cfg.get("training", {}) if isinstance(cfg.get("training"), dict) else {}
    training_data = None
    data_descr = cfg.get("training_data") or _training_data_text(cfg, training)
    if data_descr:
        cites.append(spec.CiteEntry(text=f"Training data: {data_descr}"[:1000], doi=spec.Doi(CITATIONS["dsb2018"][1]))
                     if "dsb" in data_descr.lower() or "bbbc038" in data_descr.lower()
                     else spec.CiteEntry(text=f"Training data: {data_descr}"[:1000],
                                         url="https://github.com/ijtorch/ijtorch"))
    ijcfg = _config_for_package(cfg)
    nickname = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in model_name.lower())
    descr = spec.ModelDescr(
        name=model_name,
        description=(cfg.get("description") or f"ijtorch {cfg['model_type']} model")[:1024],
        authors=[spec.Author(name=a) for a in author_names],
        cite=cites,
        license=license or cfg.get("license") or "MIT",
        documentation=spec.FileDescr(source=work / "README.md"),
        covers=[spec.FileDescr(source=work / "cover.png")],
        tags=plan.tags + ["ijtorch", "pytorch"],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        training_data=training_data,
        version="0.1.0",
        config={"ijtorch": ijcfg, "bioimageio": {"nickname": nickname},
                "deepimagej": {"allow_tiling": bool(plan.spatial), "pyramidal_model": False}},
    )
    return descr


def _training_data_text(cfg: dict[str, Any], training: dict[str, Any]) -> str:
    bits = []
    for key in ("data", "dataset", "source"):
        if isinstance(training.get(key), str):
            bits.append(training[key])
    if not bits and "dsb" in str(cfg.get("description", "")).lower():
        bits.append("2018 Data Science Bowl stage-1 training set (BBBC038), fluorescence subset, CC0")
    n_train, n_val = len(training.get("train_names", []) or []), len(training.get("val_names", []) or [])
    if n_train or n_val:
        bits.append(f"{n_train} training / {n_val} validation items (names in config.ijtorch.training)")
    return "; ".join(bits)


def _now() -> str:  # pragma: no cover - kept for the Fiji command's log line
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
