"""Per-object measurements from a label map (and optionally an intensity image), pure numpy.

One row per object **per plane**: stacks are measured plane by plane (each T, Z, C
combination), so rows line up with :func:`ijtorch.tasks.outlines.outlines`, which also works per
plane. Coordinates follow ImageJ: pixel ``(x, y)`` covers ``[x, x+1] × [y, y+1]``, so the
centroid of a single pixel at column 0 is 0.5, as in ImageJ's Measure.

Columns (all numpy arrays of equal length, in plane order then label order):

================  ====================================================================
``label``         label value (int64)
``area``          pixel count (int64)
``area_cal``      area in calibrated units² (``area · pixel_width · pixel_height``)
``centroid_x/y``  centroid in pixels (ImageJ convention, +0.5)
``x``, ``y``      calibrated centroid (ImageJ's X and Y columns)
``bbox_x/y``      top-left pixel of the bounding box; ``bbox_width/height`` its size
``mean``          mean intensity (float64)          } only with ``intensity``
``min``, ``max``  intensity extremes (float64)      }
``channel``       1-based C position                } only when the axis is present
``slice``, ``z``  1-based Z position; calibrated z = (slice − 1) · voxel_depth
``frame``         1-based T position
``confidence``    the model's confidence in the object      } only with ``confidence``
================  ====================================================================
"""

from __future__ import annotations

import logging

import numpy as np

from ..image import Calibration, check_axes
from ..core.labels import as_label_array

__all__ = ["measure", "COLUMNS"]

log = logging.getLogger(__name__)

COLUMNS = ("label", "area", "area_cal", "centroid_x", "centroid_y", "x", "y", "bbox_x", "bbox_y",
           "bbox_width", "bbox_height", "mean", "min", "max", "channel", "slice", "z", "frame", "confidence")
_DENSE_LIMIT = 1 << 24  # label values up to this use bincount directly; larger ones are compacted


def measure(labels: np.ndarray, axes: str = "YX", *, intensity: np.ndarray | None = None,
            calibration: Calibration | dict | None = None,
            confidence: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Measure every object of a label map.

    Parameters
    ----------
    labels
        Label map (0 = background), integer or whole-number float.
    axes
        Axes of ``labels`` from ``TZCYX``; Y and X required.
    intensity
        Image of the same shape and axes as ``labels``; adds ``mean``, ``min`` and ``max``.
    calibration
        Pixel sizes for ``area_cal``, ``x``, ``y`` and ``z``; default uncalibrated (1 pixel).
    confidence
        Per-object values indexed by label - 1 (``SegmentationResult.confidence``: labels are
        unique over the whole map); adds the ``confidence`` column.

    Returns
    -------
    dict of str to ndarray
        Equal-length columns (see the module docstring), in the order of :data:`COLUMNS`.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((4, 4), np.uint16); lab[1:3, 0:2] = 5
    >>> r = measure(lab, "YX")
    >>> r["label"].tolist(), r["area"].tolist(), r["centroid_x"].tolist(), r["centroid_y"].tolist()
    ([5], [4], [1.0], [2.0])
    """
    labels = as_label_array(labels)
    axes = check_axes(axes, labels.ndim)
    if "S" in axes:
        raise ValueError(f"axes={axes!r}: a label map cannot have an S (RGB samples) axis")
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.shape != labels.shape:
            raise ValueError(f"intensity must have the labels' shape {labels.shape}, got {intensity.shape}")
        if intensity.dtype.kind not in "uifb":
            raise ValueError(f"intensity must be a real-valued array, got dtype {intensity.dtype}")
    cal = calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)
    plane_axes = [a for a in axes if a not in "YX"]
    order = [axes.index(a) for a in plane_axes] + [axes.index("Y"), axes.index("X")]
    lab = np.transpose(labels, order)
    img = np.transpose(intensity, order) if intensity is not None else None
    parts: list[dict[str, np.ndarray]] = []
    for index in (np.ndindex(*lab.shape[:-2]) if plane_axes else [()]):
        cols = _measure_plane(lab[index], None if img is None else img[index])
        n = cols["label"].shape[0]
        for a, i in zip(plane_axes, index):
            cols[{"C": "channel", "Z": "slice", "T": "frame"}[a]] = np.full(n, i + 1, np.int64)
        parts.append(cols)
    keys = [k for k in COLUMNS if k in parts[0] or k == "z" and "Z" in plane_axes]
    out: dict[str, np.ndarray] = {}
    for k in keys:
        if k == "z":
            continue
        out[k] = np.concatenate([p[k] for p in parts])
    out["area_cal"] = out["area"] * (cal.pixel_width * cal.pixel_height)
    out["x"] = out["centroid_x"] * cal.pixel_width
    out["y"] = out["centroid_y"] * cal.pixel_height
    if "Z" in plane_axes:
        out["z"] = (out["slice"] - 1) * cal.voxel_depth
    if confidence is not None:
        conf = np.asarray(confidence, np.float64).ravel()
        ok = (out["label"] >= 1) & (out["label"] <= conf.size)
        out["confidence"] = np.where(ok, conf[np.clip(out["label"] - 1, 0, max(conf.size - 1, 0))] if conf.size
                                     else np.nan, np.nan)
    return {k: out[k] for k in COLUMNS if k in out}


def _measure_plane(lab: np.ndarray, img: np.ndarray | None) -> dict[str, np.ndarray]:
    h, w = lab.shape
    flat = lab.ravel()
    fg = np.flatnonzero(flat)
    values = flat[fg].astype(np.int64)
    if values.size and int(values.max()) > _DENSE_LIMIT:
        ids, idx = np.unique(values, return_inverse=True)
        nbins = ids.shape[0]
    else:
        idx = values
        nbins = int(values.max()) + 1 if values.size else 1
        ids = None
    area = np.bincount(idx, minlength=nbins)
    present = np.flatnonzero(area) if ids is None else np.arange(nbins)
    rows = fg // w
    colsx = fg - rows * w
    cx = np.bincount(idx, weights=colsx, minlength=nbins)[present] / area[present] + 0.5
    cy = np.bincount(idx, weights=rows, minlength=nbins)[present] / area[present] + 0.5
    x0 = _reduce_at(np.minimum, idx, colsx, nbins, w)[present]
    x1 = _reduce_at(np.maximum, idx, colsx, nbins, -1)[present]
    y0 = _reduce_at(np.minimum, idx, rows, nbins, h)[present]
    y1 = _reduce_at(np.maximum, idx, rows, nbins, -1)[present]
    out = {
        "label": (present if ids is None else ids).astype(np.int64),
        "area": area[present].astype(np.int64),
        "centroid_x": cx, "centroid_y": cy,
        "bbox_x": x0.astype(np.int64), "bbox_y": y0.astype(np.int64),
        "bbox_width": (x1 - x0 + 1).astype(np.int64), "bbox_height": (y1 - y0 + 1).astype(np.int64),
    }
    if img is not None:
        vals = img.ravel()[fg].astype(np.float64)
        out["mean"] = np.bincount(idx, weights=vals, minlength=nbins)[present] / area[present]
        out["min"] = _reduce_at(np.minimum, idx, vals, nbins, np.inf)[present]
        out["max"] = _reduce_at(np.maximum, idx, vals, nbins, -np.inf)[present]
    return out


def _reduce_at(ufunc, idx: np.ndarray, vals: np.ndarray, nbins: int, fill) -> np.ndarray:
    out = np.full(nbins, fill, dtype=np.result_type(vals.dtype, np.asarray(fill).dtype))
    ufunc.at(out, idx, vals)
    return out
