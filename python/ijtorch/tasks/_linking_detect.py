"""Detections for tracking: one per object per frame of a label stack (:func:`detect_labels`) or
from a point list (:func:`detect_points`); positions physical (pixel index x pixel size, pixel centres at
integer indices as in TrackMate)."""

from __future__ import annotations

import logging

import numpy as np

from ..core.labels import as_label_array
from ..image import Calibration, check_axes
from ._linking_model import Detections, _calibration
from .outlines import outlines

__all__ = ["detect_labels", "detect_points"]

log = logging.getLogger(__name__)


def detect_labels(labels: np.ndarray, axes: str = "TYX", *, intensity: np.ndarray | None = None,
                  calibration: Calibration | dict | None = None, with_outlines: bool = True) -> Detections:
    """One detection per object per frame of a label stack.

    Parameters
    ----------
    labels
        Label stack (0 = background), integer or whole-number float.
    axes
        Axes of ``labels``: T, Y, X and optionally Z, in any order (no C).
    intensity
        Image of the same shape for ``mean_intensity``.
    calibration
        Pixel sizes (``pixel_width``, ``pixel_height``, ``voxel_depth``); default 1 pixel.
    with_outlines
        2-D only: also trace each object's outline polygon.

    Returns
    -------
    Detections

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((2, 5, 5), np.uint16); lab[0, 1:3, 1:3] = 4; lab[1, 2:4, 1:3] = 4
    >>> d = detect_labels(lab, "TYX")
    >>> d.spots["x"].tolist(), d.spots["y"].tolist(), d.spots["area"].tolist()
    ([1.5, 1.5], [1.5, 2.5], [4.0, 4.0])
    """
    labels = as_label_array(labels)
    axes = check_axes(axes, labels.ndim)
    if "T" not in axes or set(axes) - set("TZYX"):
        raise ValueError(f"axes={axes!r}: a label stack for tracking needs T, Y, X and optionally Z (no C or S)")
    cal = _calibration(calibration)
    target = "TZYX" if "Z" in axes else "TYX"
    order = [axes.index(a) for a in target]
    lab = np.ascontiguousarray(np.transpose(labels, order))
    img = None
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.shape != labels.shape:
            raise ValueError(f"intensity must have the labels' shape {labels.shape}, got {intensity.shape}")
        img = np.transpose(intensity, order)
    ndim = lab.ndim - 1
    scale = np.array([cal.voxel_depth, cal.pixel_height, cal.pixel_width][3 - ndim:], np.float64)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("frame", "x", "y", "z", "label", "area", "mean_intensity")}
    for t in range(lab.shape[0]):
        plane = lab[t]
        idx = np.flatnonzero(plane)
        vals = plane.ravel()[idx]
        u, inv = np.unique(vals, return_inverse=True)
        n = u.size
        area = np.bincount(inv, minlength=n).astype(np.float64)
        coords = np.unravel_index(idx, plane.shape)
        cen = [np.bincount(inv, weights=c, minlength=n) / np.maximum(area, 1) for c in coords]
        cen_xyz = [cen[-1] * scale[-1], cen[-2] * scale[-2], cen[0] * scale[0] if ndim == 3 else np.zeros(n)]
        cols["frame"].append(np.full(n, t, np.int64))
        cols["x"].append(cen_xyz[0]); cols["y"].append(cen_xyz[1]); cols["z"].append(cen_xyz[2])
        cols["label"].append(u.astype(np.int64))
        cols["area"].append(area)
        if img is not None:
            cols["mean_intensity"].append(np.bincount(inv, weights=img[t].ravel()[idx].astype(np.float64), minlength=n) / np.maximum(area, 1))
        else:
            cols["mean_intensity"].append(np.full(n, np.nan))
    spots = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cols.items()}
    spots["radius"] = _radius(spots["area"] * float(np.prod(scale)), ndim)
    polygons = None
    if ndim == 2 and with_outlines and len(spots["frame"]):
        o = outlines(lab, "TYX")
        key_o = o.planes * (int(lab.max()) + 1) + o.labels
        key_s = spots["frame"] * (int(lab.max()) + 1) + spots["label"]
        pos = np.searchsorted(key_o, key_s)
        if not np.array_equal(key_o[np.minimum(pos, key_o.size - 1)], key_s):
            raise RuntimeError("outline tracing and detection disagree on the objects present")
        polys = o.polygons
        polygons = tuple(polys[i] for i in pos)
    log.info("detected %d objects in %d frames", spots["frame"].size, lab.shape[0])
    return Detections(spots=spots, n_frames=int(lab.shape[0]), ndim=ndim, calibration=cal,
                      shape=tuple(int(s) for s in lab.shape[1:]), polygons=polygons, labels=lab)


def _radius(size: np.ndarray, ndim: int) -> np.ndarray:
    return np.sqrt(size / np.pi) if ndim == 2 else np.cbrt(size * 3.0 / (4.0 * np.pi))


def detect_points(points: np.ndarray, axes: str = "TYX", *, calibration: Calibration | dict | None = None,
                  area: np.ndarray | None = None, radius: float = 1.0, n_frames: int | None = None,
                  shape: tuple[int, ...] | None = None) -> Detections:
    """Detections from a point list.

    Parameters
    ----------
    points
        Array of shape ``(n, len(axes))``: one row per point, columns in ``axes`` order, in
        pixels; the T column holds whole 0-based frame numbers.
    axes
        Column letters: T, Y, X and optionally Z, e.g. ``"TYX"`` or ``"TZYX"``.
    calibration
        Pixel sizes for the physical positions.
    area
        Optional object size in pixels/voxels per point (enables area costs).
    radius
        Physical radius reported for every point when ``area`` is not given.
    n_frames
        Number of frames; default last frame + 1.
    shape
        Spatial shape of the movie, if known (used by writers).

    Returns
    -------
    Detections
    """
    pts = np.asarray(points, dtype=np.float64)
    if not isinstance(axes, str) or len(set(axes.upper())) != len(axes) or set(axes.upper()) - set("TZYX") \
            or not set("TYX") <= set(axes.upper()):
        raise ValueError(f"axes={axes!r}: accepted are T, Y, X and optionally Z, each once, e.g. 'TYX' or 'TZYX'")
    axes = axes.upper()
    if pts.ndim != 2 or pts.shape[1] != len(axes):
        raise ValueError(f"points must have shape (n, {len(axes)}) for axes={axes!r}, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points must be finite; got NaN or infinite values")
    t = pts[:, axes.index("T")]
    if np.any(t != np.round(t)) or np.any(t < 0):
        raise ValueError("points: the T column must hold whole, non-negative frame numbers")
    cal = _calibration(calibration)
    ndim = 3 if "Z" in axes else 2
    order = np.argsort(t, kind="stable")
    n = pts.shape[0]
    nf = int(t.max()) + 1 if n else 0
    if n_frames is not None:
        if n_frames < nf:
            raise ValueError(f"n_frames={n_frames} is smaller than the last frame + 1 ({nf}) of the points")
        nf = int(n_frames)
    if area is not None:
        area = np.asarray(area, np.float64)
        if area.shape != (n,):
            raise ValueError(f"area must have shape ({n},), got {area.shape}")
    spots = {
        "frame": t[order].astype(np.int64),
        "x": pts[order, axes.index("X")] * cal.pixel_width,
        "y": pts[order, axes.index("Y")] * cal.pixel_height,
        "z": pts[order, axes.index("Z")] * cal.voxel_depth if ndim == 3 else np.zeros(n),
        "label": np.zeros(n, np.int64),
        "area": area[order] if area is not None else np.full(n, np.nan),
        "mean_intensity": np.full(n, np.nan),
    }
    vox = cal.pixel_width * cal.pixel_height * (cal.voxel_depth if ndim == 3 else 1.0)
    spots["radius"] = _radius(spots["area"] * vox, ndim) if area is not None else np.full(n, float(radius))
    return Detections(spots=spots, n_frames=nf, ndim=ndim, calibration=cal, shape=shape)
