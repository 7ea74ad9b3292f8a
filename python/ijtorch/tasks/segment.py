"""Instance segmentation task: label maps from images with a star-convex (StarDist) model.

:func:`segment` takes a numpy array with an explicit axes string and returns a frozen
:class:`SegmentationResult`; :func:`train_segmentation` trains or fine-tunes a model and returns a
summary dict. Both are used by the CLI and the ImageJ commands; neither touches the JVM.

Axes
----
``YX`` images are segmented directly. With a 2D model, ``ZYX`` stacks are segmented plane by plane
(objects are not linked across planes) and ``T`` axes frame by frame. A ``C`` axis needs
``channel=`` unless it has length 1. Labels are unique across the whole output: plane ``k`` uses
labels after those of planes ``0..k-1``.

Tiling
------
Probability and distance maps are predicted in overlapping tiles that are stitched before
non-maximum suppression, so objects are never split at tile seams (``overlap`` must exceed the
largest object's diameter; the default 96 px suits nuclei at DSB scale).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ijtorch.image import check_axes
from ijtorch.train.progress import ProgressCallback, ProgressEvent, emit

__all__ = ["SegmentationResult", "segment", "train_segmentation", "METHODS"]

log = logging.getLogger(__name__)

METHODS = ("stardist",)


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
        Object counts per 2D plane, in C order of the non-YX axes.
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
    model: str | os.PathLike = "nuclei",
    channel: int | None = None,
    prob_threshold: float | None = None,
    nms_threshold: float | None = None,
    tile_size: int = 512,
    overlap: int = 96,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SegmentationResult:
    """Segment object instances (e.g. nuclei) into a label map.

    Parameters
    ----------
    data : ndarray
        Image of any real dtype; intensities are normalised with the model's stored normalisation.
    axes : str
        Axes of ``data`` from ``TZCYX`` (e.g. ``"YX"``, ``"ZYX"``, ``"TYX"``, ``"TZCYX"``); ``S``
        (RGB) is not supported: pick a channel first.
    model : str or path
        Registered model name (see :func:`ijtorch.models.store.list_models`) or a model directory.
    channel : int, optional
        Channel index when ``axes`` contains ``C`` with more than one channel.
    prob_threshold, nms_threshold : float, optional
        Override the model's tuned thresholds (in [0, 1]).
    tile_size : int
        Tile edge in pixels for tiled prediction (bigger is faster, needs more memory).
    overlap : int
        Tile overlap in pixels; must exceed the largest object's diameter.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
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
    if "S" in axes:
        raise ValueError(f"axes={axes!r}: RGB (S) images are not supported; convert to one channel first")
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise TypeError(f"data has dtype {data.dtype}; expected an integer or float image")
    for arg, v in (("prob_threshold", prob_threshold), ("nms_threshold", nms_threshold)):
        if v is not None and not 0 <= float(v) <= 1:
            raise ValueError(f"{arg}={v!r}: expected None or a float in [0, 1]")
    if not isinstance(tile_size, (int, np.integer)) or tile_size < 32:
        raise ValueError(f"tile_size={tile_size!r}: expected an integer >= 32")
    if not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < tile_size:
        raise ValueError(f"overlap={overlap!r}: expected an integer in [0, tile_size)")
    data, axes = _pick_channel(data, axes, channel)
    net = load_model(model, device=device)
    if net.config.get("axes", "YX") != "YX":
        raise ValueError(f"model={str(model)!r} expects axes {net.config.get('axes')!r}; only 2D (YX) models are supported")
    pt = net.thresholds["prob"] if prob_threshold is None else float(prob_threshold)
    nt = net.thresholds["nms"] if nms_threshold is None else float(nms_threshold)

    outer = "".join(a for a in "TZ" if a in axes)
    canonical = outer + "YX"
    perm = [axes.index(a) for a in canonical]
    stack = np.transpose(data, perm)
    outer_shape = stack.shape[: len(outer)]
    planes = stack.reshape((-1,) + stack.shape[-2:])
    results = []
    offset = 0
    counts = []
    for k, plane in enumerate(planes):
        if cancel is not None and cancel():
            raise InterruptedError("segmentation cancelled")
        emit(progress, ProgressEvent("plane", k, len(planes), f"plane {k + 1}/{len(planes)}"))
        lab, _ = net.predict_instances(plane, prob_threshold=pt, nms_threshold=nt, tile_size=int(tile_size),
                                       overlap=int(overlap), progress=progress, cancel=cancel, dtype=np.int64)
        n = int(lab.max())
        lab[lab > 0] += offset
        offset += n
        counts.append(n)
        results.append(lab)
    emit(progress, ProgressEvent("plane", len(planes), len(planes), "done"))
    dtype = np.uint16 if offset <= np.iinfo(np.uint16).max else np.uint32
    labels = np.stack(results).astype(dtype).reshape(outer_shape + planes.shape[-2:])
    labels = np.transpose(labels, np.argsort(perm))
    name = Path(str(model)).name
    seconds = time.monotonic() - t0
    log.info("segmented %s image with model %s: %d objects in %.2f s", axes, name, offset, seconds)
    return SegmentationResult(labels=labels, axes=axes, n_objects=offset, model=name, prob_threshold=pt,
                              nms_threshold=nt, seconds=seconds, device=net.device, objects_per_plane=tuple(counts))


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
    pairs = []
    for i, (im, lab) in enumerate(zip(images, labels)):
        im, lab = np.asarray(im), np.asarray(lab)
        check_axes(axes, im.ndim, arg_name="axes")
        if axes != "YX":
            raise ValueError(f"axes={axes!r}: training needs 2D images with axes 'YX'")
        if im.shape != lab.shape:
            raise ValueError(f"item {i}: image shape {im.shape} differs from labels shape {lab.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"item {i}: labels must be integers, got {lab.dtype}")
        pairs.append(Pair(f"item{i:04d}", im, lab))
    return pairs


def train_segmentation(
    images: Sequence[np.ndarray] | str | os.PathLike,
    labels: Sequence[np.ndarray] | str | os.PathLike | None,
    *,
    method: str = "stardist",
    output: str | os.PathLike,
    axes: str = "YX",
    base_model: str | os.PathLike | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 100,
    batch_size: int = 8,
    patch_size: int = 128,
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
        ``labels/``), or equal-length sequences of 2D arrays (``axes="YX"``).
    method : {"stardist"}
        Model family.
    output : path
        Model directory to write (e.g. in :func:`ijtorch.models.store.user_models_dir`).
    base_model : name or path, optional
        Fine-tune from this model directory.
    epochs, steps_per_epoch, batch_size, patch_size, val_fraction, seed, device, resume, time_limit_s
        See :func:`ijtorch.train.stardist_train.train_stardist`; ``**options`` are passed through.

    Returns
    -------
    dict
        Summary (output path, epochs, seconds, thresholds, validation metrics).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: accepted values are {METHODS}")
    from ijtorch.train.stardist_train import train_stardist

    pairs = _as_pairs(images, labels, axes)
    return train_stardist(pairs, output=output, base_model=base_model, epochs=epochs, steps_per_epoch=steps_per_epoch,
                          batch_size=batch_size, patch_size=patch_size, val_fraction=val_fraction, seed=seed,
                          device=device, resume=resume, time_limit_s=time_limit_s, progress=progress, cancel=cancel,
                          **options)
