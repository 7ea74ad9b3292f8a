"""Instance segmentation task: label maps from images with a star-convex (StarDist) model or a
U-Net + seeded watershed model (``unet_watershed``: touching whole cells, bacteria), chosen by the
model's type.

:func:`segment` takes a numpy array with an explicit axes string and returns a frozen
:class:`SegmentationResult`; :func:`train_segmentation` trains or fine-tunes a model and returns a
summary dict. Both are used by the CLI and the ImageJ commands; neither touches the JVM.

Axes
----
The model's ``axes`` decide: a 2D model (``YX``) segments ``YX`` images directly, ``ZYX`` stacks
plane by plane (objects are not linked across planes) and ``T`` axes frame by frame; a 3D model
(``ZYX``, star-convex polyhedra) segments each z-stack as one volume (frame by frame when there is
a ``T`` axis) and refuses images without a ``Z`` axis. A ``C`` axis needs ``channel=`` unless it
has length 1. Labels are unique across the whole output: plane (or volume) ``k`` uses labels after
those of ``0..k-1``.

RGB
---
Images with an ``S`` (RGB samples) axis are converted to one grey channel before the model sees
them (``rgb=``): ``"luminance"`` (default) is ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, the
weights of ImageJ's weighted RGB→8-bit conversion), so transmitted-light images keep their dark
objects on a bright background; ``"inverted"`` is ``max - luminance`` (dark nuclei become bright
on a dark background, fluorescence-like); ``"hematoxylin"`` is the hematoxylin channel of H&E
stains by colour deconvolution (:func:`skimage.color.rgb2hed`, Ruifrok & Johnston 2001): nuclei
bright. Whatever the conversion, the dataset-shift check tells whether the result resembles what
the model was trained on.

Trust
-----
``shift_score``/``shift_threshold``/``shift_warning``: a model with a stored reference
(:mod:`ijtorch.models.shift`; star-convex 2D/3D, U-Net + watershed and pixel models) scores each
plane's bottleneck features against its training images; the result carries the highest plane score, the model's calibrated threshold
(5 % false alarms on held-out images of the training kind) and, above it, a plain-words warning.
``shift_message`` is one log line in every case (models without a reference say so).
``confidence``: each object's peak predicted object probability (for a star-convex model its
centre probability, the object's score; for a U-Net + watershed model its peak interior
probability; label ``k`` at index ``k - 1``); ``min_confidence`` drops
objects below it (labels renumbered).

Model choice
------------
``model="auto"`` (the default) uses, per image, the registered ``nuclei`` model whose dataset-shift
reference fits the image best (:mod:`ijtorch.models.auto`: the bundled ``nuclei`` for
fluorescence, ``nuclei-transmitted`` for brightfield and H&E, and any user model marked as a
candidate in its config). One model segments the whole image, so a stack's planes or a
time-lapse's frames share one model and their labels stay comparable; it is chosen on the middle
plane (middle T, middle Z) of the selected channel, after the RGB conversion, by the background
level each candidate was trained on and, when several fit it, one encoder pass on a central crop
per candidate tried (usually one). ``SegmentationResult.model`` names the model
used and ``model_choice`` says why; the chosen model's own shift check then runs on every plane as
for a model chosen by name.

Tiling
------
Probability and distance maps are predicted in overlapping tiles that are stitched before
non-maximum suppression, so objects are never split at tile seams (``overlap`` must exceed the
largest object's diameter; the 2D default 96 px suits nuclei at DSB scale, 3D models store their
own tile shape and overlap, set at training from the objects' extents).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ijtorch.image import check_axes, pixel_values
from ijtorch.core.progress import ProgressCallback, ProgressEvent, emit

__all__ = ["SegmentationResult", "segment", "train_segmentation", "METHODS", "RGB_CONVERSIONS", "rgb_to_grey",
           "object_confidence", "shift_report", "choose_auto_model"]

log = logging.getLogger(__name__)

METHODS = ("stardist", "unet_watershed")
RGB_CONVERSIONS = ("luminance", "inverted", "hematoxylin")


@dataclass(frozen=True)
class SegmentationResult:
    """Output of :func:`segment`.

    Attributes
    ----------
    labels : ndarray
        Label map (``uint16``, or ``uint32`` beyond 65 535 objects) in the input's axes minus ``C``.
    axes : str
        Axes of ``labels``.
    n_objects : int
        Number of objects (over all planes/frames).
    model : str
        Model name (directory name).
    prob_threshold, nms_threshold : float
        Thresholds used.
    seconds : float
        Wall time of the call.
    device : str
        Device the network ran on.
    objects_per_plane : tuple of int
        Object counts per 2D plane (per volume with a 3D model), in C order of the other axes.
    shift_score, shift_threshold : float or None
        Dataset-shift score (highest over planes) and the model's calibrated threshold; ``None``
        when the model has no reference (see the module docstring).
    shift_warning : str or None
        Plain-words warning when ``shift_score > shift_threshold``.
    shift_message : str
        One line for a log: the score against the threshold, the warning, or "no reference".
    confidence : ndarray or None
        Per-object confidence (peak object probability, the centre probability of a star-convex
        object), label ``k`` at index ``k - 1``; ``None`` for models that give none.
    rgb : str or None
        The RGB conversion used (``None`` for grey input).
    model_choice : str
        With ``model="auto"``: which model was chosen and why (one line; see the module
        docstring); empty for a model chosen by name.
    """

    labels: np.ndarray
    axes: str
    n_objects: int
    model: str
    prob_threshold: float
    nms_threshold: float
    seconds: float
    device: str
    objects_per_plane: tuple[int, ...] = field(default_factory=tuple)
    shift_score: float | None = None
    shift_threshold: float | None = None
    shift_warning: str | None = None
    shift_message: str = ""
    confidence: np.ndarray | None = None
    rgb: str | None = None
    model_choice: str = ""


def rgb_to_grey(data: np.ndarray, axes: str, how: str = "luminance") -> tuple[np.ndarray, str]:
    """One grey channel (float32) from an image with an ``S`` (RGB samples) axis; see the module
    docstring for the conversions. Images without ``S`` are returned unchanged."""
    if "S" not in axes:
        return data, axes
    if how not in RGB_CONVERSIONS:
        raise ValueError(f"rgb={how!r}: accepted values are {RGB_CONVERSIONS}")
    si = axes.index("S")
    rgb = np.moveaxis(np.asarray(data), si, -1)
    if rgb.shape[-1] not in (3, 4):
        raise ValueError(f"axes={axes!r}: the S axis has {rgb.shape[-1]} samples; expected 3 (RGB) or 4 (RGBA)")
    rgb = rgb[..., :3]
    rest = axes.replace("S", "")
    if how == "hematoxylin":
        from skimage.color import rgb2hed

        top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else max(float(rgb.max()), 1.0)
        flat = np.clip(rgb.reshape(-1, 3).astype(np.float32) / top, 0, 1)
        grey = rgb2hed(flat.reshape(-1, 1, 3))[..., 0].reshape(rgb.shape[:-1]).astype(np.float32)
        return grey, rest
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if how == "inverted":
        top = float(np.iinfo(rgb.dtype).max) if np.issubdtype(rgb.dtype, np.integer) else float(grey.max())
        grey = top - grey
    return grey, rest


def object_confidence(labels: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Peak of the object probability map ``prob`` over each object of ``labels`` (1..N): for a
    star-convex model the probability at the object's centre, i.e. its score in non-maximum
    suppression (always above the probability threshold it was found with). Length N, float32."""
    from scipy import ndimage as ndi

    n = int(labels.max()) if labels.size else 0
    if n == 0:
        return np.zeros(0, np.float32)
    return np.asarray(ndi.maximum(prob, labels, index=np.arange(1, n + 1)), np.float32)


def _drop_uncertain(labels: np.ndarray, conf: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    keep = conf >= min_confidence
    if keep.all():
        return labels, conf
    lut = np.zeros(conf.size + 1, labels.dtype)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[labels], conf[keep]


def choose_auto_model(data: np.ndarray, axes: str, *, channel: int | None = None, rgb: str = "luminance",
                      device: str = "auto", scale: float = 1.0) -> Any:
    """The :class:`ijtorch.models.auto.AutoChoice` of ``model="auto"`` for an image (``segment``'s
    arguments; see the module docstring): the nuclei model that fits its middle plane best."""
    from ijtorch.models.auto import choose_model

    data, axes = rgb_to_grey(data, check_axes(axes, data.ndim), rgb)
    choice = choose_model(_middle_plane(data, axes, channel), device=device, scale=float(scale))
    log.info("%s", choice.message)
    return choice


def _middle_plane(data: np.ndarray, axes: str, channel: int | None) -> np.ndarray:
    """The ``YX`` plane ``model=auto`` decides on: the middle T and Z position of ``channel``."""
    for a in "TZ":
        if a in axes:
            i = axes.index(a)
            data, axes = np.take(data, data.shape[i] // 2, axis=i), axes.replace(a, "")
    return _pick_channel(data, axes, channel)[0]


def _pick_channel(data: np.ndarray, axes: str, channel: int | None) -> tuple[np.ndarray, str]:
    if "C" not in axes:
        if channel not in (None, 0):
            raise ValueError(f"channel={channel!r} given but axes={axes!r} has no C axis")
        return data, axes
    ci = axes.index("C")
    nc = data.shape[ci]
    if channel is None:
        if nc != 1:
            raise ValueError(f"channel=None but the C axis has {nc} channels; pass channel=0..{nc - 1}")
        channel = 0
    if not isinstance(channel, (int, np.integer)) or not 0 <= channel < nc:
        raise ValueError(f"channel={channel!r}: expected an integer in 0..{nc - 1}")
    return np.take(data, int(channel), axis=ci), axes.replace("C", "")


def segment(
    data: np.ndarray,
    axes: str,
    *,
    model: str | os.PathLike = "auto",
    channel: int | None = None,
    prob_threshold: float | None = None,
    nms_threshold: float | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    device: str = "auto",
    test_time_augmentation: bool = False,
    scale: float = 1.0,
    min_confidence: float = 0.0,
    rgb: str = "luminance",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SegmentationResult:
    """Segment object instances (e.g. nuclei) into a label map.

    Parameters
    ----------
    data : ndarray
        Image of any real dtype; intensities are normalised with the model's stored normalisation.
    axes : str
        Axes of ``data`` from ``TZCYXS`` (e.g. ``"YX"``, ``"ZYX"``, ``"TYX"``, ``"TZCYX"``,
        ``"YXS"``); an ``S`` (RGB) axis is converted to grey as ``rgb`` says.
    model : str or path
        ``"auto"`` (the registered nuclei model that fits the image best; see the module docstring),
        a registered model name (see :func:`ijtorch.models.store.list_models`) or a model directory.
    channel : int, optional
        0-based numpy index along the ``C`` axis (the first channel is 0), needed when ``axes``
        contains ``C`` with more than one channel. The CLI's ``--channel`` and ImageJ's channel
        numbers count from 1; they subtract 1 before calling.
    prob_threshold, nms_threshold : float, optional
        Override the model's tuned thresholds (in [0, 1]).
    tile_size : int, optional
        Tile edge in pixels (voxels along every axis for a 3D model) for tiled prediction (bigger is
        faster, needs more memory); default: 1024 for 2D models, the model's stored tiling for 3D.
    overlap : int, optional
        Tile overlap in pixels; must exceed the largest object's diameter; default: 96 for 2D
        models, the model's stored overlap for 3D.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    test_time_augmentation : bool
        2D models: average the probability and distance maps predicted on the 8 flips/90°
        rotations of each plane (8× the time; on the bundled model's held-out images AP@0.5 rose
        by 0.025, see the README). Not available for 3D models.
    scale : float
        2D models: resize each plane by this factor before the model sees it (2 when the objects
        are about half the size of those the model was trained on, 0.5 when twice); objects are
        drawn back at the image's own size. In [0.1, 10]; not available for 3D models.
    min_confidence : float
        Star-convex and U-Net + watershed models: drop objects whose confidence (peak object probability, see
        ``SegmentationResult.confidence``) is below this; 0 keeps all. In [0, 1].
    rgb : {"luminance", "inverted", "hematoxylin"}
        Conversion of RGB (``S`` axis) images to grey; see the module docstring.
    progress : callable, optional
        Receives ``ProgressEvent`` (phase ``"plane"``, then ``"tile"``/``"nms"`` per plane).
    cancel : callable, optional
        Polled between planes and tiles; cancellation raises ``InterruptedError``.

    Returns
    -------
    SegmentationResult
    """
    from ijtorch.models.store import load_model

    t0 = time.monotonic()
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    axes = check_axes(axes, data.ndim)
    if not 0 <= float(min_confidence) <= 1:
        raise ValueError(f"min_confidence={min_confidence!r}: expected a float in [0, 1]")
    data = pixel_values(data)  # NaN / inf: the lowest finite value; TypeError for non-numeric data
    rgb_used = rgb if "S" in axes else None
    colour, colour_axes = data, axes  # a pixel model trained on colour classifies the RGB channels themselves
    data, axes = rgb_to_grey(data, axes, rgb)  # float32 grey; unchanged without an S axis
    for arg, v in (("prob_threshold", prob_threshold), ("nms_threshold", nms_threshold)):
        if v is not None and not 0 <= float(v) <= 1:
            raise ValueError(f"{arg}={v!r}: expected None or a float in [0, 1]")
    if tile_size is not None and (not isinstance(tile_size, (int, np.integer)) or tile_size < 32):
        raise ValueError(f"tile_size={tile_size!r}: expected None or an integer >= 32")
    if overlap is not None and (not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < (tile_size or 1024)):
        raise ValueError(f"overlap={overlap!r}: expected None or an integer in [0, tile_size)")
    from dataclasses import replace

    from ijtorch.models.auto import is_auto

    if is_auto(model):
        choice = choose_auto_model(data, axes, channel=channel, device=device, scale=scale)
        r = segment(data, axes, model=choice.path, channel=channel, prob_threshold=prob_threshold,
                    nms_threshold=nms_threshold, tile_size=tile_size, overlap=overlap, device=device,
                    test_time_augmentation=test_time_augmentation, scale=scale, min_confidence=min_confidence,
                    rgb=rgb, progress=progress, cancel=cancel)
        return replace(r, rgb=rgb_used, model_choice=choice.message, seconds=time.monotonic() - t0)
    imported = load_model(model, device=device)

    from ijtorch.models.shift import no_reference

    name = Path(str(model)).name
    if getattr(imported, "is_bioimageio", False):  # an imported bioimage.io package (ijtorch.bioimageio.runtime)
        r = imported.segment(data, axes, channel=channel, prob_threshold=prob_threshold, model=model,
                             progress=progress, cancel=cancel, t0=t0)
        return replace(r, shift_message=no_reference(name).message, rgb=rgb_used) \
            if isinstance(r, SegmentationResult) else r
    from ijtorch.tasks.pixels import is_pixel_model

    if is_pixel_model(model):  # semantic segmentation: the class label map is the result's labels
        if rgb_used is not None and imported.n_channels > 1:  # trained on colour (RGB as 3 channels): no grey
            data, axes, rgb_used = colour, colour_axes, None
        r = _pixel_model_result(data, axes, model=model, channel=channel, tile_size=tile_size, overlap=overlap,
                                device=device, test_time_augmentation=test_time_augmentation, scale=scale,
                                progress=progress, cancel=cancel)
        return replace(r, rgb=rgb_used) if isinstance(r, SegmentationResult) else r
    data, axes = _pick_channel(data, axes, channel)
    net = imported  # a star-convex (2D/3D) or U-Net + watershed model: the same interface
    model_axes = net.config.get("axes", "YX")
    if model_axes not in ("YX", "ZYX"):
        raise ValueError(f"model={str(model)!r} expects axes {model_axes!r}; supported are 2D (YX) and 3D (ZYX) models")
    if model_axes == "ZYX" and "Z" not in axes:
        raise ValueError(f"model={str(model)!r} is a 3D (ZYX) model but axes={axes!r} has no Z axis; "
                         "segment a z-stack or choose a 2D model")
    pt = net.thresholds["prob"] if prob_threshold is None else float(prob_threshold)
    nt = net.thresholds["nms"] if nms_threshold is None else float(nms_threshold)
    tiling = {k: int(v) for k, v in (("tile_size", tile_size), ("overlap", overlap)) if v is not None}

    planes, perm, outer_shape = _split_planes(data, axes, model_axes)
    results = []
    confidences: list[np.ndarray] = []
    shifts: list[tuple[float, dict]] = []
    unit = "volume" if model_axes == "ZYX" else "plane"
    for k, plane in enumerate(planes):
        if cancel is not None and cancel():
            raise InterruptedError("segmentation cancelled")
        emit(progress, ProgressEvent("plane", k, len(planes), f"{unit} {k + 1}/{len(planes)}"))
        lab, details = net.predict_instances(plane, prob_threshold=pt, nms_threshold=nt, progress=progress,
                                             cancel=cancel, test_time_augmentation=test_time_augmentation,
                                             scale=scale, dtype=np.int64, **tiling)
        if details.get("shift_score") is not None:
            shifts.append((float(details["shift_score"]), details.get("shift_inputs", {})))
        prob_map = details.get("prob_map")
        if prob_map is not None and prob_map.shape == lab.shape:
            conf = object_confidence(lab, prob_map)
            if min_confidence > 0:
                lab, conf = _drop_uncertain(lab, conf, float(min_confidence))
            confidences.append(conf)
        elif min_confidence > 0:
            raise ValueError(f"min_confidence={min_confidence!r}: model={str(model)!r} gives no per-object confidence")
        results.append(lab)
    emit(progress, ProgressEvent("plane", len(planes), len(planes), "done"))
    labels, counts = _join_planes(results, outer_shape, perm)
    offset = sum(counts)
    report = shift_report(net, shifts, name, len(planes))
    if report.warning and rgb_used == "luminance":
        hint = (f"{report.warning}. This RGB image was converted to grey by luminance; for H&E-stained tissue "
                "rgb=hematoxylin gives the model bright nuclei on a dark background")
        report = type(report)(report.score, report.threshold, hint, hint, report.details)
    seconds = time.monotonic() - t0
    log.info("segmented %s image with model %s: %d objects in %.2f s", axes, name, offset, seconds)
    if report.warning:  # every surface shows result.shift_warning itself (CLI: stderr, ImageJ: Log)
        log.info("%s", report.warning)
    conf = np.concatenate(confidences) if len(confidences) == len(planes) else None
    return SegmentationResult(labels=labels, axes=axes, n_objects=offset, model=name, prob_threshold=pt,
                              nms_threshold=nt, seconds=seconds, device=net.device, objects_per_plane=tuple(counts),
                              shift_score=report.score, shift_threshold=report.threshold, shift_warning=report.warning,
                              shift_message=report.message, confidence=conf, rgb=rgb_used)



def _split_planes(data: np.ndarray, axes: str, model_axes: str) -> tuple[np.ndarray, list[int], tuple[int, ...]]:
    """The images a model of ``model_axes`` (``YX`` or ``ZYX``) sees, one per T/Z position it does not
    take itself, with the axis order and outer shape :func:`_join_planes` needs to put them back."""
    outer = "".join(a for a in "TZ" if a in axes and a not in model_axes)
    perm = [axes.index(a) for a in outer + model_axes]
    stack = np.transpose(data, perm)
    return stack.reshape((-1,) + stack.shape[len(outer):]), perm, stack.shape[: len(outer)]


def _join_planes(results: list[np.ndarray], outer_shape: tuple[int, ...], perm: list[int]) -> tuple[np.ndarray, list[int]]:
    """Per-plane label maps (each ``1..n``, changed in place) as one label map in the input's axis order,
    labels unique over planes (uint16, uint32 beyond 65535), and the object count of each plane."""
    counts, offset = [], 0
    for lab in results:
        n = int(lab.max()) if lab.size else 0
        lab[lab > 0] += offset
        offset += n
        counts.append(n)
    dtype = np.uint16 if offset <= np.iinfo(np.uint16).max else np.uint32
    labels = np.stack(results).astype(dtype).reshape(tuple(outer_shape) + results[0].shape)
    return np.transpose(labels, np.argsort(perm)), counts


def shift_report(net: Any, shifts: list, name: str, n_planes: int) -> Any:
    """The dataset-shift report of a segmentation from ``(score, inputs)`` per plane (as
    ``predict_instances`` details give them): the plane with the highest score speaks."""
    from ijtorch.models.shift import assess, no_reference

    reference = getattr(net, "shift_reference", None)
    if not reference or len(shifts) != n_planes or not shifts:
        return no_reference(name)
    score, inputs = max(shifts, key=lambda s: s[0])
    report = assess(reference, score, inputs, model_name=name)
    if n_planes > 1 and report.warning:
        flagged = sum(s > (report.threshold or np.inf) for s, _ in shifts)
        text = f"{report.warning} [{flagged} of {n_planes} planes above the threshold]"
        report = type(report)(report.score, report.threshold, text, text, report.details)
    return report


def _pixel_model_result(data: np.ndarray, axes: str, *, model: Any, channel: int | None = None,
                   tile_size: int | None = None, overlap: int | None = None, device: str = "auto",
                   test_time_augmentation: bool = False, scale: float = 1.0,
                   progress: ProgressCallback | None = None, cancel: Callable[[], bool] | None = None) -> Any:
    """:func:`ijtorch.tasks.segment.segment` for a pixel model: the class map as a ``SegmentationResult``.

    ``labels`` holds the class values ``1..C`` (uint16, like instance label maps), ``n_objects``
    the number of classes present, thresholds are 0 (not used). Test-time augmentation and
    ``scale`` are refused (the features are rotation invariant; train at the image's scale).
    """
    from ijtorch.tasks.pixels import classify_pixels

    if test_time_augmentation:
        raise ValueError(f"model={str(model)!r} is a pixel classifier: test-time augmentation is not available for it")
    if float(scale) != 1.0:
        raise ValueError(f"model={str(model)!r} is a pixel classifier: scale={scale!r} is not available for it "
                         "(train it on images at this pixel size)")
    r = classify_pixels(data, axes, model=model, channel=channel, tile_size=tile_size, overlap=overlap,
                        device=device, progress=progress, cancel=cancel)
    labels = r.classes.astype(np.uint16)
    present = tuple(int(v) for v in np.unique(labels) if v)
    return SegmentationResult(labels=labels, axes=r.axes, n_objects=len(present), model=r.model, prob_threshold=0.0,
                              nms_threshold=0.0, seconds=r.seconds, device=r.device,
                              objects_per_plane=(len(present),), shift_score=r.shift_score,
                              shift_threshold=r.shift_threshold, shift_warning=r.shift_warning,
                              shift_message=r.shift_message)

def _as_pairs(images: Any, labels: Any, axes: str) -> list:
    from ijtorch.train.data import Pair, load_pairs

    if isinstance(images, (str, os.PathLike)):
        if labels is not None and not isinstance(labels, (str, os.PathLike)):
            raise TypeError("when images is a folder, labels must be a folder or None")
        return load_pairs(images, labels)
    if not isinstance(images, Sequence) or not isinstance(labels, Sequence):
        raise TypeError("images and labels must both be folders or both be sequences of arrays")
    if len(images) != len(labels):
        raise ValueError(f"images has {len(images)} items but labels has {len(labels)}")
    axes = axes.upper() if isinstance(axes, str) else axes
    pairs = []
    for i, (im, lab) in enumerate(zip(images, labels)):
        im, lab = np.asarray(im), np.asarray(lab)
        check_axes(axes, im.ndim, arg_name="axes")
        if axes not in ("YX", "ZYX"):
            raise ValueError(f"axes={axes!r}: training needs 2D images with axes 'YX' or z-stacks with axes 'ZYX'")
        if im.shape != lab.shape:
            raise ValueError(f"item {i}: image shape {im.shape} differs from labels shape {lab.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"item {i}: labels must be integers, got {lab.dtype}")
        pairs.append(Pair(f"item{i:04d}", im, lab))
    return pairs


def _method_of(base_model: str | os.PathLike) -> str:
    """The training method of a base model's type (``unet_watershed`` or star-convex)."""
    from ijtorch.models.folder import read_config
    from ijtorch.models.store import resolve_model

    mtype = read_config(resolve_model(base_model)).get("model_type")
    return "unet_watershed" if mtype == "unet_watershed" else "stardist"


def train_segmentation(
    images: Sequence[np.ndarray] | str | os.PathLike,
    labels: Sequence[np.ndarray] | str | os.PathLike | None,
    *,
    method: str | None = None,
    output: str | os.PathLike,
    axes: str = "YX",
    base_model: str | os.PathLike | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 100,
    batch_size: int | None = None,
    patch_size: int | Sequence[int] | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    time_limit_s: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train (or fine-tune with ``base_model``) an instance segmentation model.

    Parameters
    ----------
    images, labels
        Folders of same-named TIFFs (``labels=None`` if ``images`` holds ``images/`` and
        ``labels/``), or equal-length sequences of arrays with ``axes`` ``"YX"`` or ``"ZYX"``.
        2D items train a 2D model; 3D items (z-stacks; 3D TIFFs in folders are taken as ``ZYX``)
        train a 3D star-convex polyhedron model
        (:func:`ijtorch.train.stardist3d_train.train_stardist3d`).
    method : {"stardist", "unet_watershed"}, optional
        Model family; default: that of ``base_model``, else ``"stardist"``. ``"unet_watershed"``
        (boundary/interior U-Net + seeded watershed, 2D; touching whole cells, bacteria) runs
        :func:`ijtorch.train.unet_watershed_train.train_unet_watershed` (``batch_size`` and
        ``patch_size`` default to 4 and 256; ``base_channels``, ``depth``, ``lr``... in ``**options``).
    output : path
        Model directory to write (e.g. in :func:`ijtorch.models.store.user_models_dir`).
    base_model : name or path, optional
        Fine-tune from this model directory.
    epochs, steps_per_epoch, batch_size, patch_size, val_fraction, seed, device, resume, time_limit_s
        See :func:`ijtorch.train.stardist_train.train_stardist` (3D: ``train_stardist3d``);
        ``batch_size`` and ``patch_size`` default to the trainer's own (8 and 128 in 2D, 2 and 96
        in 3D); ``**options`` are passed through.

    Returns
    -------
    dict
        Summary (output path, epochs, seconds, thresholds, validation metrics).
    """
    if method is None:
        method = _method_of(base_model) if base_model is not None else "stardist"
    if method not in METHODS:
        raise ValueError(f"method={method!r}: accepted values are {METHODS}")
    from ijtorch.train.stardist3d_train import train_stardist3d
    from ijtorch.train.stardist_train import train_stardist

    pairs = _as_pairs(images, labels, axes)
    if method == "unet_watershed":
        from ijtorch.train.unet_watershed_train import train_unet_watershed

        sizes = {k: v for k, v in (("batch_size", batch_size), ("patch_size", patch_size)) if v is not None}
        return train_unet_watershed(pairs, output=output, base_model=base_model, epochs=epochs,
                                    steps_per_epoch=steps_per_epoch, val_fraction=val_fraction, seed=seed,
                                    device=device, resume=resume, time_limit_s=time_limit_s, progress=progress,
                                    cancel=cancel, **sizes, **options)
    ndims = sorted({p.image.ndim for p in pairs})
    if ndims not in ([2], [3]):
        raise ValueError(f"training items have {ndims} dimensions; give all 2D (YX) images or all 3D (ZYX) z-stacks")
    train = train_stardist if ndims == [2] else train_stardist3d
    sizes = {k: v for k, v in (("batch_size", batch_size), ("patch_size", patch_size)) if v is not None}
    return train(pairs, output=output, base_model=base_model, epochs=epochs, steps_per_epoch=steps_per_epoch,
                 val_fraction=val_fraction, seed=seed, device=device, resume=resume, time_limit_s=time_limit_s,
                 progress=progress, cancel=cancel, **sizes, **options)
