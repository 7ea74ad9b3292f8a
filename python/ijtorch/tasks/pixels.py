"""Pixel classification task: class label maps from images, trained from a few strokes.

:func:`classify_pixels` applies a pixel classifier (``model_type="pixel_classifier"``) to a numpy
image with an axes string and returns a :class:`PixelResult` (class map ``1..C``, optional
probabilities, class names); :func:`train_pixels` trains or warm-starts one from images and sparse
annotations (``0`` = unannotated) or dense class images; :func:`class_areas` gives the per-class
area table; :func:`scribbles_from_classes` simulates a user's strokes on a dense class image (for
benchmarks and tests); :func:`strokes_to_annotation` rasterises ROI strokes. None of them touches
the JVM; the CLI, the ImageJ commands and the server call them.

Axes: the model is 2D (``YX`` with ``C`` channels); ``Z`` and ``T`` axes are classified plane by
plane. :func:`ijtorch.tasks.segment.segment` dispatches here for pixel models and returns the
class map as its ``labels``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ijtorch.image import Calibration, check_axes, pixel_values, rgb_as_channel_axes
from ijtorch.core.progress import ProgressCallback, ProgressEvent, emit

__all__ = ["PixelResult", "classify_pixels", "train_pixels", "class_areas", "scribbles_from_classes",
           "strokes_to_annotation", "dice_per_class", "is_pixel_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PixelResult:
    """Output of :func:`classify_pixels`.

    Attributes
    ----------
    classes : ndarray
        Class map (``uint8``): ``k`` = ``class_names[k - 1]``, in the input's axes minus ``C``.
    axes : str
        Axes of ``classes``.
    class_names : tuple of str
        Names of classes ``1..C``.
    probabilities : ndarray or None
        ``(C, ...)`` float32 probabilities when asked for (axes ``"C" + axes``).
    model, device : str
    seconds : float
    shift_score, shift_threshold, shift_warning, shift_message
        The dataset-shift check (:mod:`ijtorch.models.shift`; the highest plane score against the
        model's calibrated threshold, a plain-words warning above it, one log line either way) as
        :class:`ijtorch.tasks.segment.SegmentationResult` has it; scores are ``None`` for models
        without a reference.
    """

    classes: np.ndarray
    axes: str
    class_names: tuple[str, ...]
    probabilities: np.ndarray | None
    model: str
    device: str
    seconds: float
    shift_score: float | None = None
    shift_threshold: float | None = None
    shift_warning: str | None = None
    shift_message: str = ""


def is_pixel_model(model: str | os.PathLike | Any) -> bool:
    """Whether ``model`` (name, folder or loaded model) is a pixel classifier."""
    from ijtorch.models.pixel_classifier import MODEL_TYPE, PixelClassifierModel
    from ijtorch.models.store import read_config, resolve_model

    if isinstance(model, PixelClassifierModel):
        return True
    try:
        return read_config(resolve_model(model)).get("model_type") == MODEL_TYPE
    except Exception:  # noqa: BLE001 - unknown names are reported by the loader that follows
        return False


def _load(model: Any, device: str):
    from ijtorch.errors import ModelError
    from ijtorch.models.pixel_classifier import PixelClassifierModel
    from ijtorch.models.store import load_model

    m = model if isinstance(model, PixelClassifierModel) else load_model(model, device=device)
    if not isinstance(m, PixelClassifierModel):
        raise ModelError(f"model={str(model)!r} is not a pixel classifier (model_type={m.config.get('model_type')!r})")
    return m


def classify_pixels(
    data: np.ndarray,
    axes: str,
    *,
    model: str | os.PathLike | Any,
    channel: int | None = None,
    probabilities: bool = False,
    tile_size: int | None = None,
    overlap: int | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> PixelResult:
    """Classify every pixel of an image with a pixel classifier.

    Parameters
    ----------
    data : ndarray
        Image of any real dtype with ``axes`` from ``TZCYX``.
    model : name, path or PixelClassifierModel
    channel : int, optional
        For a one-channel model and a multi-channel image: the channel to use (0-based). A model
        trained on ``C`` channels takes all ``C`` channels of the image.
    probabilities : bool
        Also return the ``(C, ...)`` probability stack.
    tile_size, overlap : int, optional
        Tiling (default: the model's, 512 / 64).
    """
    from ijtorch.image import to_axes

    t0 = time.monotonic()
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    axes = check_axes(axes, data.ndim)
    axes = rgb_as_channel_axes(axes)  # colour images: red, green and blue are the model's channels
    data = pixel_values(data)  # NaN / inf: the lowest finite value; TypeError for non-numeric data
    if tile_size is not None and (not isinstance(tile_size, (int, np.integer)) or tile_size < 32):
        raise ValueError(f"tile_size={tile_size!r}: expected None or an integer >= 32")
    net = _load(model, device)
    nc = net.n_channels
    if "C" in axes:
        n_img = data.shape[axes.index("C")]
        if nc == 1 and n_img > 1:
            if channel is None:
                raise ValueError(f"the image has {n_img} channels and the model uses one; pass channel=0..{n_img - 1}")
            if not 0 <= int(channel) < n_img:
                raise ValueError(f"channel={channel!r}: expected an integer in 0..{n_img - 1}")
            data, axes = np.take(data, int(channel), axis=axes.index("C")), axes.replace("C", "")
        elif n_img != nc:
            raise ValueError(f"the image has {n_img} channels; the model was trained on {nc}")
    elif nc != 1:
        raise ValueError(f"the model was trained on {nc} channels; the image (axes {axes!r}) has none")
    outer = "".join(a for a in "TZ" if a in axes)
    src = outer + ("C" if "C" in axes else "") + "YX"
    stack = to_axes(data, axes, src)
    outer_shape = stack.shape[: len(outer)]
    planes = stack.reshape((-1,) + stack.shape[len(outer):])
    out_axes = outer + "YX"
    cls_planes, prob_planes, shifts = [], [], []
    for k, plane in enumerate(planes):
        if cancel is not None and cancel():
            raise InterruptedError("pixel classification cancelled")
        emit(progress, ProgressEvent("plane", k, len(planes), f"plane {k + 1}/{len(planes)}"))
        (cls, prob), score, inputs = net.shift_check(plane, tile_size=tile_size, overlap=overlap, progress=progress,
                                                     cancel=cancel)
        if score is not None:
            shifts.append((score, inputs))
        cls_planes.append(cls)
        if probabilities:
            prob_planes.append(prob)
    emit(progress, ProgressEvent("plane", len(planes), len(planes), "done"))
    classes = np.stack(cls_planes).reshape(outer_shape + cls_planes[0].shape)
    probs = None
    if probabilities:
        probs = np.stack(prob_planes, axis=1).reshape((len(net.classes),) + outer_shape + cls_planes[0].shape)
    # back to the input's order of the remaining axes
    order = [a for a in axes if a != "C"]
    classes = to_axes(classes, out_axes, "".join(order))
    if probs is not None:
        probs = to_axes(probs, "C" + out_axes, "C" + "".join(order))
    name = Path(str(model)).name if isinstance(model, (str, os.PathLike)) else "model"
    report = _shift_report(net, shifts, name, len(planes))
    seconds = time.monotonic() - t0
    log.info("classified pixels of a %s image with %s in %.2f s", axes, name, seconds)
    return PixelResult(classes=classes, axes="".join(order), class_names=tuple(net.classes), probabilities=probs,
                       model=name, device=net.device, seconds=seconds, shift_score=report.score,
                       shift_threshold=report.threshold, shift_warning=report.warning, shift_message=report.message)


def _shift_report(net: Any, shifts: list, name: str, n_planes: int) -> Any:
    """The plane with the highest shift score speaks (as in segmentation)."""
    from ijtorch.models.shift import assess, no_reference

    if not shifts or len(shifts) != n_planes:
        return no_reference(name)
    score, inputs = max(shifts, key=lambda s: s[0])
    report = assess(net.shift_reference, score, inputs, model_name=name)
    if n_planes > 1 and report.warning:
        flagged = sum(s > report.threshold for s, _ in shifts)
        text = f"{report.warning} [{flagged} of {n_planes} planes above the threshold]"
        report = type(report)(report.score, report.threshold, text, text, report.details)
    return report


def train_pixels(
    images: Sequence[np.ndarray] | str | os.PathLike,
    annotations: Sequence[np.ndarray] | str | os.PathLike,
    *,
    output: str | os.PathLike | None,
    axes: str = "YX",
    classes: Sequence[str] | None = None,
    base_model: str | os.PathLike | Any | None = None,
    steps: int = 300,
    **options: Any,
) -> dict[str, Any]:
    """Train (or warm-start with ``base_model``) a pixel classifier.

    ``images``/``annotations``: equal-length sequences of arrays, or two folders of same-named
    TIFFs (annotation TIFFs: class values, 0 = unannotated). Other options: see
    :func:`ijtorch.train.pixels_train.train_pixel_classifier`. Returns its summary dict. ``steps``
    defaults to 300 as there and in the ``ijtorch Train Pixel Classifier`` command (the
    benchmarked recipe).
    """
    from ijtorch.train.pixels_train import train_pixel_classifier

    if isinstance(images, (str, os.PathLike)) or isinstance(annotations, (str, os.PathLike)):
        if not (isinstance(images, (str, os.PathLike)) and isinstance(annotations, (str, os.PathLike))):
            raise TypeError("images and annotations must both be folders (or files) or both sequences of arrays")
        images, annotations, axes = _read_pairs(Path(images), Path(annotations))
    return train_pixel_classifier(list(images), list(annotations), output=output, axes=axes, classes=classes,
                                  base_model=base_model, steps=steps, **options)


def _read_pairs(images: Path, annotations: Path) -> tuple[list, list, str]:
    from ijtorch.io.raster import IMAGE_SUFFIXES, image_files, read_image

    def files(p: Path) -> list[Path]:
        if p.is_file():
            return [p]
        if not p.is_dir():
            raise FileNotFoundError(f"{p} does not exist")
        found = image_files(p)
        if not found:
            raise FileNotFoundError(f"folder {p} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return found

    ims, anns = files(images), files(annotations)
    if images.is_dir() != annotations.is_dir():
        raise ValueError("give two folders or two files (images and annotations)")
    if images.is_dir():
        names = {f.stem: f for f in anns}
        missing = [f.name for f in ims if f.stem not in names]
        if missing:
            raise FileNotFoundError(f"no annotation image in {annotations} for {missing[:5]}")
        anns = [names[f.stem] for f in ims]
    data, labels, axes_set = [], [], set()
    for fi, fa in zip(ims, anns):
        im, an = read_image(fi), read_image(fa)
        ax = rgb_as_channel_axes(im.axes)
        if set(ax) - set("CYX"):
            raise ValueError(f"{fi.name}: axes {ax}; train-pixels takes 2D images (YX or CYX)")
        a = np.squeeze(an.data)
        if a.ndim != 2:
            raise ValueError(f"{fa.name}: the annotation must be one 2D plane, got shape {an.data.shape}")
        data.append(im.data)
        labels.append(a)
        axes_set.add(ax)
    if len(axes_set) != 1:
        raise ValueError(f"the images have different axes {sorted(axes_set)}")
    return data, labels, axes_set.pop()


def class_areas(classes: np.ndarray, class_names: Sequence[str], *, calibration: Calibration | None = None
                ) -> dict[str, np.ndarray]:
    """Per-class area table: ``class``, ``name``, ``pixels``, ``area`` (calibrated), ``fraction``."""
    counts = np.bincount(np.asarray(classes).ravel().astype(np.int64), minlength=len(class_names) + 1)
    counts = counts[1:len(class_names) + 1]
    px = 1.0
    unit = "pixel"
    if calibration is not None:
        px = float(calibration.pixel_width) * float(calibration.pixel_height)
        unit = calibration.unit or "pixel"
        if unit == "pixel":
            px = 1.0
    total = max(int(counts.sum()), 1)
    return {"class": np.arange(1, len(class_names) + 1), "name": np.asarray(list(class_names), dtype=object),
            "pixels": counts.astype(np.int64), f"area ({unit}^2)" if unit != "pixel" else "area": counts * px,
            "fraction": counts / total}


def dice_per_class(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """Dice of each class ``1..n_classes`` between two class maps (NaN where a class is in neither)."""
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    out = np.full(n_classes, np.nan)
    for c in range(1, n_classes + 1):
        p, t = pred == c, truth == c
        s = int(p.sum()) + int(t.sum())
        if s:
            out[c - 1] = 2.0 * int((p & t).sum()) / s
    return out


def scribbles_from_classes(truth: np.ndarray, *, strokes_per_class: int = 3, length: int = 60, width: int = 3,
                           seed: int = 0) -> np.ndarray:
    """Simulated user strokes on a dense class map: an annotation image (0 = unannotated).

    For each class ``1..max(truth)``, ``strokes_per_class`` random walks start at a random pixel of
    the class (preferring pixels away from its edge) and go up to ``length`` steps of one pixel,
    turning smoothly and staying inside the class; each is drawn ``width`` pixels wide, clipped to
    the class.
    """
    from scipy import ndimage as ndi

    truth = np.asarray(truth)
    rng = np.random.default_rng(seed)
    out = np.zeros(truth.shape, np.uint8 if truth.max() < 255 else np.uint16)
    H, W = truth.shape
    for c in range(1, int(truth.max()) + 1):
        mask = truth == c
        if not mask.any():
            continue
        inner = ndi.binary_erosion(mask, iterations=max(1, width // 2))
        starts = np.argwhere(inner if inner.any() else mask)
        for _ in range(strokes_per_class):
            y, x = (float(v) for v in starts[int(rng.integers(len(starts)))])
            angle = rng.uniform(0, 2 * np.pi)
            path = [(int(y), int(x))]
            for _ in range(length):
                for attempt in range(8):
                    a = angle + rng.normal(0, 0.3) + (attempt > 0) * rng.uniform(-np.pi, np.pi)
                    ny, nx = y + np.sin(a), x + np.cos(a)
                    iy, ix = int(round(ny)), int(round(nx))
                    if 0 <= iy < H and 0 <= ix < W and mask[iy, ix]:
                        y, x, angle = ny, nx, a
                        path.append((iy, ix))
                        break
                else:
                    break
            stroke = np.zeros(truth.shape, bool)
            ys, xs = np.asarray(path).T
            stroke[ys, xs] = True
            if width > 1:
                stroke = ndi.binary_dilation(stroke, iterations=width // 2)
            out[stroke & mask] = c
    return out


def strokes_to_annotation(shape: tuple[int, int], strokes: Sequence[tuple[np.ndarray, int, bool, float]]) -> np.ndarray:
    """Rasterise strokes into an annotation image (0 = unannotated; later strokes win).

    Each stroke is ``(xy, class_value, is_area, line_width)``: ``xy`` an ``(m, 2)`` polygon or
    polyline in ImageJ pixel-corner coordinates; area ROIs are filled, lines drawn ``line_width``
    pixels wide (at least 1; points mark single pixels).
    """
    from skimage.draw import line as draw_line
    from skimage.draw import polygon as draw_polygon
    from scipy import ndimage as ndi

    H, W = shape
    out = np.zeros(shape, np.uint16)
    for xy, value, is_area, lw in strokes:
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        if not len(xy):
            continue
        m = np.zeros(shape, bool)
        if is_area and len(xy) >= 3:
            rr, cc = draw_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
            m[rr, cc] = True
        px = np.floor(xy).astype(np.int64)
        for (x0, y0), (x1, y1) in zip(px[:-1], px[1:]):
            rr, cc = draw_line(int(y0), int(x0), int(y1), int(x1))
            ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            m[rr[ok], cc[ok]] = True
        for x, y in px:
            if 0 <= y < H and 0 <= x < W:
                m[y, x] = True
        if not is_area and lw > 1.5:
            m = ndi.binary_dilation(m, iterations=int(round(lw / 2 - 0.01)))
        out[m] = int(value)
    return out
