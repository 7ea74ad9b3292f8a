"""Single-particle / cell tracking: detections per frame, then two LAPs (Jaqaman et al. 2008).

1. **Detections** come from a label stack (:func:`detect_labels`: centroid, area, mean
   intensity and, in 2-D, the outline of every object in every frame) or from point lists
   (:func:`detect_points`). Positions are physical: pixel index × pixel size, pixel centres at
   integer indices (TrackMate's convention), z scaled by the voxel depth (anisotropic 3-D).
2. **Frame-to-frame linking**: one sparse LAP per pair of consecutive frames. Candidates are
   gated by ``max_distance``; the cost is ``d² · (1 + area_weight · 3|a₁−a₂|/(a₁+a₂))²``
   (TrackMate's feature penalty); "no link" costs ``alternative_cost_factor × max cost``.
3. **Segment linking**: one sparse LAP over the whole movie joining segment ends to segment
   starts up to ``max_gap`` missed frames later (gap closing), segment starts to a segment's
   middle point in the previous frame (splitting = division) and, if enabled, segment ends to a
   middle point in the next frame (merging). Split and merge costs are multiplied by Jaqaman's
   area ratio factor ``ρ = r if r ≥ 1 else r⁻²`` with ``r = A(mother) / (A(d₁) + A(d₂))``.

The result (:class:`Tracks`) holds the spots table, the edges (source = earlier frame), the
TrackMate-style track id of every spot (one per connected component) and the Cell Tracking
Challenge lineage: a CTC track ends at every gap, division and merge, and the next one records its
parent (``L B E P``). With label input, :attr:`Tracks.tracked_labels` is the relabelled stack.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from ..image import Calibration, check_axes
from ..core.progress import ProgressCallback, ProgressEvent, emit
from ..core.labels import as_label_array
from .outlines import outlines

__all__ = ["Detections", "Linking", "Tracks", "TrackingParams", "detect_labels", "detect_points", "track",
           "track_labels", "fill_gaps", "EDGE_LINK", "EDGE_GAP", "EDGE_SPLIT", "EDGE_MERGE"]

log = logging.getLogger(__name__)

EDGE_LINK, EDGE_GAP, EDGE_SPLIT, EDGE_MERGE = 0, 1, 2, 3


def _calibration(value: Calibration | dict | None) -> Calibration:
    if value is None or isinstance(value, Calibration):
        return value or Calibration()
    if isinstance(value, dict):
        return Calibration.from_dict(value)
    raise TypeError(f"calibration must be a Calibration, a dict or None, got {type(value).__name__}")


@dataclass(frozen=True)
class Detections:
    """Objects found in every frame of a movie.

    Attributes
    ----------
    spots : dict of str to ndarray
        Equal-length columns sorted by frame: ``frame`` (0-based), ``x``, ``y``, ``z`` (physical
        units; ``z`` is 0 in 2-D), ``label`` (label value, 0 for points), ``area`` (pixels or
        voxels; NaN for points), ``mean_intensity`` (NaN without intensity) and ``radius``
        (physical radius of the equal-area disk / equal-volume ball).
    n_frames : int
        Number of frames of the movie (frames without detections count).
    ndim : int
        2 or 3 spatial dimensions.
    calibration : Calibration
        Pixel sizes and units used for the physical positions.
    shape : tuple of int or None
        Spatial shape ``(Y, X)`` or ``(Z, Y, X)`` of the movie, if known.
    polygons : tuple of ndarray or None
        2-D label input only: outline of each spot, ``(m, 2)`` pixel-corner ``(x, y)`` vertices.
    labels : ndarray or None
        Label input only: the stack as ``TYX`` / ``TZYX`` (used to write tracked labels).
    """

    spots: dict[str, np.ndarray]
    n_frames: int
    ndim: int
    calibration: Calibration = field(default_factory=Calibration)
    shape: tuple[int, ...] | None = None
    polygons: tuple[np.ndarray, ...] | None = None
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.spots["frame"].shape[0])


class Linking(str, Enum):
    """Frame-to-frame cost: ``auto`` = ``overlap`` for label input, ``distance`` for points."""

    auto = "auto"
    distance = "distance"
    overlap = "overlap"


class TrackingParams(BaseModel):
    """Parameters of :func:`track` (distances in physical units, as the calibration gives them).

    ``None`` means *estimated from the movie* (see :mod:`ijtorch.tasks._mask_linking`); the values
    used are in :attr:`Tracks.estimated`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    linking: Linking = Field(Linking.auto, description="Frame-to-frame cost: 'overlap' (masks: overlap, motion, size and orientation, divisions from masks), 'distance' (centroids, as TrackMate's LAP tracker) or 'auto' (overlap for label input, distance for points).")
    max_distance: float | None = Field(None, gt=0, description="Largest frame-to-frame displacement that may be linked (overlap linking: from the position predicted by the neighbours' motion); None = estimated from the movie.")
    max_gap: int = Field(2, ge=0, description="Largest number of consecutive missed frames bridged by gap closing (0 = off).")
    gap_max_distance: float | None = Field(None, gt=0, description="Largest displacement across a gap; default max_distance.")
    allow_splitting: bool = Field(True, description="Detect divisions: one parent, two daughters in the next frame.")
    split_max_distance: float | None = Field(None, gt=0, description="Distance linking only: largest parent-to-daughter distance; default max_distance.")
    allow_merging: bool = Field(False, description="Detect merges: two parents, one child in the next frame.")
    merge_max_distance: float | None = Field(None, gt=0, description="Distance linking only: largest parent-to-child distance for merges; default max_distance.")
    area_weight: float = Field(0.0, ge=0, description="Distance linking only: weight of the area-difference penalty in frame-to-frame costs (0 = distance only).")
    alternative_cost_factor: float = Field(1.05, gt=0, description="Distance linking and gap closing: 'no link' cost = this factor times the largest candidate cost of each LAP.")
    fill_gaps: bool = Field(False, description="Insert an interpolated detection in every frame a closed gap skips (TrackMate's 'Close gaps by introducing new spots').")
    motion_compensation: bool = Field(True, description="Overlap linking: shift each mask by the median motion of its nearest confidently linked neighbours before comparing.")
    motion_neighbours: int = Field(7, ge=1, description="Overlap linking: neighbours whose motion predicts an object's displacement.")
    displacement_sigma: float | None = Field(None, gt=0, description="Overlap linking: scale of the centroid residual after the predicted motion (per axis); None = estimated.")
    size_growth: float | None = Field(None, description="Overlap linking: typical log change of an object's area per frame; None = estimated.")
    size_sigma: float | None = Field(None, gt=0, description="Overlap linking: scale of the log area change around size_growth; None = estimated.")
    overlap_sigma: float | None = Field(None, gt=0, description="Overlap linking: scale of 1 - IoU of a true link; None = estimated.")
    orientation_sigma: float | None = Field(None, gt=0, description="Overlap linking: scale of the change of an elongated object's long axis, degrees; None = estimated.")
    max_cost: float | None = Field(None, gt=0, description="Overlap linking: gate on a link's (division's, merge's) cost; leaving an object unlinked costs half of it; None = chi-square quantile at 1 - 1e-6.")


@dataclass(frozen=True)
class Tracks:
    """Result of :func:`track`.

    Attributes
    ----------
    spots : dict of str to ndarray
        The detections' columns plus ``id`` (0..n-1, frame order), ``track_id`` (connected
        component, -1 for spots without edges) and ``ctc_label`` (CTC track label, ≥ 1).
    edges : ndarray of int64, shape (k, 2)
        ``(source id, target id)``, source in the earlier frame.
    edge_cost : ndarray of float64, shape (k,)
        LAP cost of each edge.
    edge_kind : ndarray of int8, shape (k,)
        :data:`EDGE_LINK`, :data:`EDGE_GAP`, :data:`EDGE_SPLIT` or :data:`EDGE_MERGE`.
    ctc : ndarray of int64, shape (n_ctc, 4)
        CTC lineage rows ``L B E P``.
    n_frames, ndim, calibration, shape
        As in :class:`Detections`.
    polygons : tuple of ndarray or None
        Outline per spot (2-D label input only).
    tracked_labels : ndarray or None
        Label input only: the stack (``TYX``/``TZYX``) with every object painted with its
        ``ctc_label``; uint16 when the labels fit, else uint32.
    params : dict
        The :class:`TrackingParams` given.
    estimated : dict
        The values :func:`track` used where ``params`` said None (estimated from the movie), with
        ``<name>_estimated`` = True/False, the linking mode and counts.
    """

    spots: dict[str, np.ndarray]
    edges: np.ndarray
    edge_cost: np.ndarray
    edge_kind: np.ndarray
    ctc: np.ndarray
    n_frames: int
    ndim: int
    calibration: Calibration
    shape: tuple[int, ...] | None
    polygons: tuple[np.ndarray, ...] | None
    tracked_labels: np.ndarray | None
    params: dict[str, Any]
    estimated: dict[str, Any] = field(default_factory=dict)

    @property
    def n_divisions(self) -> int:
        """Number of spots with two or more successors."""
        return int(np.count_nonzero(np.bincount(self.edges[:, 0], minlength=len(self.spots["id"])) >= 2)) if len(self.edges) else 0

    @property
    def track_ids(self) -> np.ndarray:
        """Sorted ids of the tracks (connected components with at least one edge)."""
        t = self.spots["track_id"]
        return np.unique(t[t >= 0])


# --------------------------------------------------------------------------- detections

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


# --------------------------------------------------------------------------- linking

def _penalty(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    if weight == 0:
        return np.ones(a.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 3.0 * weight * np.abs(a - b) / (a + b)
    return (1.0 + np.nan_to_num(p, nan=0.0)) ** 2


def _rho(mother: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        r = mother / (d1 + d2)
        rho = np.where(r >= 1, r, 1.0 / (r * r))
    return np.where(np.isfinite(rho), rho, 1.0)


def _pairs(tree_a: cKDTree, tree_b: cKDTree, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec = tree_a.sparse_distance_matrix(tree_b, r, output_type="ndarray")
    return rec["i"].astype(np.int64), rec["j"].astype(np.int64), rec["v"].astype(np.float64)


def track(detections: Detections, *, params: TrackingParams | dict | None = None,
          progress: ProgressCallback | None = None) -> Tracks:
    """Link detections into tracks with gap closing, divisions and (optionally) merges.

    Parameters
    ----------
    detections
        From :func:`detect_labels` or :func:`detect_points`.
    params
        :class:`TrackingParams` or a dict of its fields; default ``TrackingParams()``.
    progress
        Optional callback receiving :class:`~ijtorch.core.progress.ProgressEvent` (phase
        ``"link"`` per frame pair, then ``"close"``).

    Returns
    -------
    Tracks

    Examples
    --------
    >>> import numpy as np
    >>> pts = np.array([[0, 5, 5], [1, 6, 5], [2, 7, 6]], float)
    >>> tr = track(detect_points(pts, "TYX"), params={"max_distance": 3})
    >>> tr.edges.tolist(), tr.ctc.tolist()
    [[0, 1], [1, 2]], [[1, 0, 2, 0]]
    """
    if not isinstance(detections, Detections):
        raise TypeError(f"detections must be a Detections (from detect_labels/detect_points), got {type(detections).__name__}")
    if params is None:
        params = TrackingParams()
    elif isinstance(params, dict):
        params = TrackingParams(**params)
    elif not isinstance(params, TrackingParams):
        raise TypeError(f"params must be a TrackingParams, a dict or None, got {type(params).__name__}")
    t0 = time.perf_counter()
    s = detections.spots
    n = len(detections)
    frame = s["frame"]
    pos = np.stack([s["x"], s["y"], s["z"]], axis=1)
    area = s["area"]
    starts = np.searchsorted(frame, np.arange(detections.n_frames + 1))
    mode = Linking(params.linking)
    if mode == Linking.auto:
        mode = Linking.overlap if detections.labels is not None else Linking.distance
    if mode == Linking.overlap and detections.labels is None:
        raise ValueError("linking='overlap' needs label input (detect_labels / track_labels); points have no masks: "
                         "use linking='distance' or 'auto'")
    succ = np.full(n, -1, np.int64)
    if mode == Linking.overlap:
        from ._mask_linking import link_masks

        ml = link_masks(detections, params, solve_sparse_lap, progress)
        estimated: dict[str, Any] = {"linking": mode.value, **ml.estimated}
        max_d = estimated["max_distance"]
        f_src, f_dst, f_cost, f_kind = ml.src, ml.dst, ml.cost, ml.kind
        succ[f_src] = f_dst
        pred = np.full(n, -1, np.int64)
        pred[f_dst] = f_src
        close = params.model_copy(update={"max_distance": max_d, "allow_splitting": False, "allow_merging": False})
    else:
        max_d = params.max_distance
        estimated = {"linking": mode.value, "max_distance_estimated": max_d is None}
        if max_d is None:
            max_d = _estimate_max_distance(pos, starts, detections.n_frames, detections.ndim)
        estimated["max_distance"] = float(max_d)
        f_src, f_dst, f_cost, f_kind, pred = _link_distance(detections, params, max_d, pos, area, starts, succ, progress)
        close = params.model_copy(update={"max_distance": max_d})
    t1 = time.perf_counter()
    extra = _close_segments(close, frame, pos, area, starts, succ, pred, detections.n_frames)
    emit(progress, ProgressEvent("close", 1, 1))
    t2 = time.perf_counter()
    src = np.concatenate([f_src, extra[0]])
    dst = np.concatenate([f_dst, extra[1]])
    cost = np.concatenate([f_cost, extra[2]])
    kind = np.concatenate([f_kind, extra[3]])
    order = np.lexsort((dst, src))
    edges = np.stack([src[order], dst[order]], axis=1).astype(np.int64)
    result = _assemble(detections, params, edges, cost[order], kind[order], estimated)
    if params.fill_gaps:
        result = fill_gaps(result)
    log.info("tracked %d spots (%s linking): %d edges (%d gaps, %d splits, %d merges); link %.2fs, close %.2fs",
             n, mode.value, len(edges), int((kind == EDGE_GAP).sum()), int((kind == EDGE_SPLIT).sum()),
             int((kind == EDGE_MERGE).sum()), t1 - t0, t2 - t1)
    return result


def _estimate_max_distance(pos: np.ndarray, starts: np.ndarray, n_frames: int, ndim: int) -> float:
    """Gate for centroid linking from the movie: displacement scale of unambiguous links (mutual nearest
    neighbours whose nearest is under half the second nearest), χ² quantile at 1e-4, × 1.25."""
    from scipy.stats import chi2

    d2, nn_within = [], []
    for t in range(n_frames - 1):
        a, b = pos[starts[t]:starts[t + 1], :ndim], pos[starts[t + 1]:starts[t + 2], :ndim]
        if len(a) < 1 or len(b) < 2:
            continue
        dist, j = cKDTree(b).query(a, k=2)
        back = cKDTree(a).query(b[j[:, 0]])[1]
        ok = (back == np.arange(len(a))) & (dist[:, 0] < 0.5 * dist[:, 1])
        d2.append(dist[ok, 0] ** 2)
        if len(a) >= 2:
            nn_within.append(cKDTree(a).query(a, k=2)[0][:, 1])
    d2 = np.concatenate(d2) if d2 else np.zeros(0)
    if d2.size >= 10:
        sigma = np.sqrt(np.median(d2) / chi2.median(ndim))
        return float(max(1.25 * sigma * np.sqrt(chi2.ppf(1 - 1e-4, ndim)), 1e-6))
    nn = np.concatenate(nn_within) if nn_within else np.zeros(0)
    return float(np.median(nn) / 2) if nn.size else 15.0


def _link_distance(detections, params, max_d, pos, area, starts, succ, progress):
    """First LAP on centroid distances (TrackMate's LAP tracker); fills ``succ``, returns the edges."""
    n = len(detections)
    link_cost = np.zeros(n)
    trees: dict[int, cKDTree] = {}

    def tree(t: int) -> cKDTree:
        if t not in trees:
            trees[t] = cKDTree(pos[starts[t]:starts[t + 1]])
        return trees[t]

    for t in range(detections.n_frames - 1):
        a0, b0 = starts[t], starts[t + 1]
        if a0 == b0 or b0 == starts[t + 2]:
            continue
        i, j, d = _pairs(tree(t), tree(t + 1), max_d)
        trees.pop(t, None)
        if i.size == 0:
            continue
        c = d * d * _penalty(area[a0 + i], area[b0 + j], params.area_weight)
        alt = params.alternative_cost_factor * max(float(c.max()), max_d ** 2 * 1e-6)
        match = solve_sparse_lap(i, j, c, b0 - a0, starts[t + 2] - b0, row_alt=alt, col_alt=alt)
        ok = match >= 0
        src = a0 + np.flatnonzero(ok)
        succ[src] = b0 + match[ok]
        lut = coo_matrix((c, (i, j)), shape=(b0 - a0, starts[t + 2] - b0)).tocsr()
        link_cost[src] = np.asarray(lut[np.flatnonzero(ok), match[ok]]).ravel()
        if t % 20 == 0:
            emit(progress, ProgressEvent("link", t + 1, detections.n_frames - 1))
    trees.clear()
    pred = np.full(n, -1, np.int64)
    has = succ >= 0
    pred[succ[has]] = np.flatnonzero(has)
    return (np.flatnonzero(has), succ[has], link_cost[has], np.full(int(has.sum()), EDGE_LINK, np.int8), pred)


def _close_segments(params: TrackingParams, frame, pos, area, starts, succ, pred, n_frames):
    """Second LAP: gap closing, splitting and merging between segments."""
    ends = np.flatnonzero(succ < 0)
    begins = np.flatnonzero(pred < 0)
    gap_d = params.gap_max_distance or params.max_distance
    split_d = params.split_max_distance or params.max_distance
    merge_d = params.merge_max_distance or params.max_distance
    rows, cols, costs, kinds = [], [], [], []  # rows: 'e<end>' / 's<middle>'; cols: 'b<begin>' / 'm<middle>'
    by_frame = lambda ids: {int(t): ids[frame[ids] == t] for t in np.unique(frame[ids])}  # noqa: E731
    ends_f, begins_f = by_frame(ends), by_frame(begins)

    def add(r_spot, c_spot, cost, kind, r_off, c_off):
        rows.append(r_spot); cols.append(c_spot); costs.append(cost); kinds.append(np.full(cost.size, kind, np.int8))

    if params.max_gap > 0:
        for te, e in ends_f.items():
            te_tree = None
            for g in range(2, params.max_gap + 2):
                b = begins_f.get(te + g)
                if b is None:
                    continue
                te_tree = te_tree or cKDTree(pos[e])
                i, j, d = _pairs(te_tree, cKDTree(pos[b]), gap_d)
                add(e[i], b[j], d * d, EDGE_GAP, 0, 0)
    if params.allow_splitting:
        for tb, b in begins_f.items():
            if tb == 0:
                continue
            mid = np.arange(starts[tb - 1], starts[tb])
            mid = mid[succ[mid] >= 0]
            if mid.size == 0:
                continue
            i, j, d = _pairs(cKDTree(pos[mid]), cKDTree(pos[b]), split_d)
            m = mid[i]
            add(m, b[j], d * d * _rho(area[m], area[succ[m]], area[b[j]]), EDGE_SPLIT, 0, 0)
    if params.allow_merging:
        for te, e in ends_f.items():
            if te + 1 >= n_frames:
                continue
            mid = np.arange(starts[te + 1], starts[te + 2])
            mid = mid[pred[mid] >= 0]
            if mid.size == 0:
                continue
            i, j, d = _pairs(cKDTree(pos[e]), cKDTree(pos[mid]), merge_d)
            m = mid[j]
            add(e[i], m, d * d * _rho(area[m], area[pred[m]], area[e[i]]), EDGE_MERGE, 0, 0)
    empty = (np.zeros(0, np.int64),) * 2 + (np.zeros(0), np.zeros(0, np.int8))
    if not rows:
        return empty
    r = np.concatenate(rows); c = np.concatenate(cols); w = np.concatenate(costs); k = np.concatenate(kinds)
    if r.size == 0:  # candidate searches ran but found nothing within the distance gates
        return empty
    # Row objects: gap/merge rows are segment ends, split rows are middles (distinct spots, since a
    # middle has a successor and an end has none). Column objects likewise: begins vs middles.
    ur, ri = np.unique(r, return_inverse=True)
    uc, ci = np.unique(c, return_inverse=True)
    alt = params.alternative_cost_factor * max(float(w.max()), 1e-12)
    match = solve_sparse_lap(ri, ci, w, ur.size, uc.size, row_alt=alt, col_alt=alt)
    # Recover which candidate was chosen for each matched row.
    chosen_r = np.flatnonzero(match >= 0)
    key_cand = ri * uc.size + ci
    key_sel = chosen_r * uc.size + match[chosen_r]
    sel = np.flatnonzero(np.isin(key_cand, key_sel))
    return ur[ri[sel]], uc[ci[sel]], w[sel], k[sel]


def _assemble(det: Detections, params: TrackingParams, edges: np.ndarray, cost: np.ndarray,
              kind: np.ndarray, estimated: dict | None = None) -> Tracks:
    s = det.spots
    n = len(det)
    frame = s["frame"]
    if len(edges):
        g = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
        _, comp = connected_components(g, directed=False)
    else:
        comp = np.arange(n)
    has_edge = np.zeros(n, bool)
    has_edge[edges.ravel()] = True
    # Track ids: connected components with edges, numbered by their first spot.
    track_id = np.full(n, -1, np.int64)
    uniq, first = np.unique(comp[has_edge], return_index=True)
    lut = np.full(n, -1, np.int64)
    lut[uniq[np.argsort(first)]] = np.arange(uniq.size)
    track_id[has_edge] = lut[comp[has_edge]]
    ctc_label, ctc = _ctc_lineage(n, frame, edges)
    spots = {"id": np.arange(n, dtype=np.int64), **s, "track_id": track_id, "ctc_label": ctc_label}
    tracked = None
    if det.labels is not None:
        tracked = _relabel(det.labels, frame, s["label"], ctc_label)
    return Tracks(spots=spots, edges=edges, edge_cost=cost, edge_kind=kind, ctc=ctc, n_frames=det.n_frames,
                  ndim=det.ndim, calibration=det.calibration, shape=det.shape, polygons=det.polygons,
                  tracked_labels=tracked, params=params.model_dump(), estimated=dict(estimated or {}))


def fill_gaps(tracks: Tracks) -> Tracks:
    """Replace every gap edge by a chain of interpolated detections, one per skipped frame.

    As TrackMate's "Close gaps by introducing new spots": the new spot lies on the straight line
    between the gap's ends (position and radius interpolated linearly in time). With label input its
    mask is the gap source's mask shifted to the new centre, painted only on background pixels, so
    no observed object loses a pixel; a spot whose mask would be empty (fully occluded or outside
    the image) is not added and that gap edge stays. New spots have ``interpolated`` = True (a
    column added to every spot), ``mean_intensity`` NaN and the painted area.

    Parameters
    ----------
    tracks
        From :func:`track`.

    Returns
    -------
    Tracks
        A new result; ``tracks`` is not modified.
    """
    s = tracks.spots
    n = len(s["id"])
    frame = s["frame"]
    gap = np.flatnonzero(frame[tracks.edges[:, 1]] - frame[tracks.edges[:, 0]] > 1) if len(tracks.edges) else np.zeros(0, np.int64)
    base = {k: v for k, v in s.items() if k not in ("id", "track_id", "ctc_label")}
    base.setdefault("interpolated", np.zeros(n, bool))
    ndim = tracks.ndim
    cal = tracks.calibration
    scale = np.array([cal.pixel_width, cal.pixel_height, cal.voxel_depth][:ndim], np.float64)
    labels = None
    label_col = s["label"]
    if tracks.tracked_labels is not None:
        # The detections' own label stack, rebuilt from the tracked one (CTC labels are unique per frame).
        labels = _relabel(tracks.tracked_labels, frame, s["ctc_label"], s["label"]).astype(np.uint32)
        next_label = np.array([int(labels[t].max(initial=0)) + 1 for t in range(labels.shape[0])], np.int64)
    new_cols: dict[str, list] = {k: [] for k in base}
    new_polys: list[np.ndarray] = []
    chains: list[tuple[int, list[int], int, int]] = []  # (gap edge index, new spot ids, source, target)
    n_new = 0
    for e in gap:
        a, b = (int(v) for v in tracks.edges[e])
        fa, fb = int(frame[a]), int(frame[b])
        pa = np.array([s["x"][a], s["y"][a], s["z"][a]])
        pb = np.array([s["x"][b], s["y"][b], s["z"][b]])
        slots: list[int] = []
        for f in range(fa + 1, fb):
            w = (f - fa) / (fb - fa)
            p = pa + w * (pb - pa)
            area, poly, lab_value = np.nan, None, 0
            if labels is not None:
                shift = np.rint((p[:ndim] - pa[:ndim]) / scale).astype(np.int64)  # x, y[, z] in pixels
                src = np.nonzero(labels[fa] == label_col[a])  # (y, x) or (z, y, x) index arrays
                dst = [src[i] + shift[ndim - 1 - i] for i in range(ndim)]
                inside = np.ones(src[0].size, bool)
                for i, size in enumerate(labels.shape[1:]):
                    inside &= (dst[i] >= 0) & (dst[i] < size)
                dst = tuple(d[inside] for d in dst)
                free = labels[f][dst] == 0
                dst = tuple(d[free] for d in dst)
                if dst[0].size == 0:
                    break
                lab_value = int(next_label[f]); next_label[f] += 1
                labels[f][dst] = lab_value
                area = float(dst[0].size)
                if tracks.polygons is not None:
                    mask = np.zeros(labels.shape[1:], np.uint32)
                    mask[dst] = lab_value
                    poly = outlines(mask, "YX").polygon(0)
            for k, v in (("frame", f), ("x", p[0]), ("y", p[1]), ("z", p[2]), ("label", lab_value),
                         ("area", area), ("mean_intensity", np.nan), ("interpolated", True),
                         ("radius", s["radius"][a] + w * (s["radius"][b] - s["radius"][a]))):
                new_cols[k].append(v)
            for k in new_cols:
                if k not in ("frame", "x", "y", "z", "label", "area", "mean_intensity", "interpolated", "radius"):
                    new_cols[k].append(np.nan)  # an extra column (e.g. from a caller): unknown here
            new_polys.append(poly)
            slots.append(n + n_new)
            n_new += 1
        else:
            chains.append((e, slots, a, b))
            continue
        # Could not fill the whole gap: drop the spots just added for it and keep the gap edge.
        for k in new_cols:
            del new_cols[k][len(new_cols[k]) - len(slots):]
        del new_polys[len(new_polys) - len(slots):]
        if labels is not None:
            for f, slot in zip(range(fa + 1, fb), slots):
                labels[f][labels[f] == next_label[f] - 1] = 0
                next_label[f] -= 1
        n_new -= len(slots)
    if not chains:
        return replace(tracks, spots={**tracks.spots, "interpolated": base["interpolated"]})
    cols = {k: np.concatenate([np.asarray(base[k]), np.asarray(new_cols[k], dtype=np.asarray(base[k]).dtype)])
            for k in base}
    order = np.argsort(cols["frame"], kind="stable")
    new_id = np.empty(order.size, np.int64)
    new_id[order] = np.arange(order.size)
    cols = {k: v[order] for k, v in cols.items()}
    filled = np.zeros(len(tracks.edges), bool)
    src, dst, cost, kind = [], [], [], []
    for e, slots, a, b in chains:
        filled[e] = True
        chain = [a, *slots, b]
        for u, v in zip(chain[:-1], chain[1:]):
            src.append(u); dst.append(v)
            cost.append(tracks.edge_cost[e] / (len(chain) - 1)); kind.append(EDGE_LINK)
    keep = ~filled
    src = np.concatenate([tracks.edges[keep, 0], np.asarray(src, np.int64)])
    dst = np.concatenate([tracks.edges[keep, 1], np.asarray(dst, np.int64)])
    cost = np.concatenate([tracks.edge_cost[keep], np.asarray(cost)])
    kind = np.concatenate([tracks.edge_kind[keep], np.asarray(kind, np.int8)])
    src, dst = new_id[src], new_id[dst]
    o = np.lexsort((dst, src))
    edges = np.stack([src[o], dst[o]], axis=1).astype(np.int64)
    polygons = None
    if tracks.polygons is not None:
        all_polys = list(tracks.polygons) + new_polys
        polygons = tuple(all_polys[i] for i in order)
    det = Detections(spots=cols, n_frames=tracks.n_frames, ndim=ndim, calibration=cal, shape=tracks.shape,
                     polygons=polygons, labels=labels)
    log.info("filled %d gaps with %d interpolated spots", len(chains), n_new)
    return _assemble(det, TrackingParams(**tracks.params), edges, cost[o], kind[o], tracks.estimated)


def _ctc_lineage(n: int, frame: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CTC labels: a spot continues its predecessor's track only for a plain 1-to-1 link to the next frame."""
    out_deg = np.bincount(edges[:, 0], minlength=n) if len(edges) else np.zeros(n, np.int64)
    in_deg = np.bincount(edges[:, 1], minlength=n) if len(edges) else np.zeros(n, np.int64)
    if len(edges):
        a, b = edges[:, 0], edges[:, 1]
        cont = (out_deg[a] == 1) & (in_deg[b] == 1) & (frame[b] == frame[a] + 1)
        g = coo_matrix((np.ones(int(cont.sum())), (a[cont], b[cont])), shape=(n, n))
        _, comp = connected_components(g, directed=False)
    else:
        comp = np.arange(n)
    # Number CTC tracks by (start frame, first spot id); spots are in frame order already.
    uniq, first = np.unique(comp, return_index=True)
    rank = np.empty(uniq.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, uniq.size + 1)
    label_of_comp = np.zeros(comp.max() + 1 if n else 0, np.int64)
    label_of_comp[uniq] = rank
    label = label_of_comp[comp] if n else np.zeros(0, np.int64)
    m = uniq.size
    b = np.full(m + 1, np.iinfo(np.int64).max); e = np.full(m + 1, -1)
    np.minimum.at(b, label, frame); np.maximum.at(e, label, frame)
    parent = np.zeros(m + 1, np.int64)
    if len(edges):
        a, c = edges[:, 0], edges[:, 1]
        new = label[a] != label[c]
        # A merge has two predecessors; CTC records one parent: keep the first edge's source.
        tgt, idx = np.unique(label[c[new]], return_index=True)
        parent[tgt] = label[a[new]][idx]
    L = np.arange(1, m + 1)
    ctc = np.stack([L, b[1:], e[1:], parent[1:]], axis=1).astype(np.int64)
    return label, ctc


def _relabel(labels: np.ndarray, frame: np.ndarray, orig: np.ndarray, new: np.ndarray) -> np.ndarray:
    dtype = np.uint16 if (new.max(initial=0) <= np.iinfo(np.uint16).max) else np.uint32
    out = np.zeros(labels.shape, dtype)
    top = int(labels.max(initial=0))
    for t in range(labels.shape[0]):
        sel = frame == t
        if not sel.any():
            continue
        lut = np.zeros(top + 1, dtype)
        lut[orig[sel]] = new[sel]
        np.take(lut, labels[t], out=out[t])  # take: faster than fancy indexing on a whole plane
    return out


def track_labels(labels: np.ndarray, axes: str = "TYX", *, intensity: np.ndarray | None = None,
                 calibration: Calibration | dict | None = None, params: TrackingParams | dict | None = None,
                 progress: ProgressCallback | None = None) -> Tracks:
    """Detect objects in a label stack and track them (:func:`detect_labels` then :func:`track`).

    Parameters
    ----------
    labels, axes, intensity, calibration
        As in :func:`detect_labels`.
    params, progress
        As in :func:`track`.

    Returns
    -------
    Tracks
        With :attr:`Tracks.tracked_labels` in ``TYX``/``TZYX`` order.
    """
    det = detect_labels(labels, axes, intensity=intensity, calibration=calibration)
    return track(det, params=params, progress=progress)


# ------------------------------------------------------------------------ sparse LAP solver
# Sparse linear assignment problems for tracking (Jaqaman et al., Nat. Methods 5:695, 2008).
#
# Both LAPs of the tracker are solved as one augmented, *sparse* cost matrix::
#
#             targets          no-link
#     rows  [ C (n x m)      | D (n x n, diagonal) ]
#     birth [ B (m x m diag) | C' (m x n)          ]
#
# ``C`` holds the gated candidate costs, ``D``/``B`` the alternative ("no link") costs and ``C'``
# is the transposed sparsity pattern of ``C`` at the smallest cost, so that every link chosen in
# ``C`` leaves its two dummies a partner. The matrix always has a full matching (the diagonals), so
# :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` (LAPJVsp) solves it in roughly
# linear time in the number of candidate pairs. All costs are shifted by a constant (> 0) because
# the sparse solver ignores explicit zeros; every full matching has the same size, so the shift does
# not change the optimum.


def solve_sparse_lap(rows: np.ndarray, cols: np.ndarray, costs: np.ndarray, n_rows: int, n_cols: int, *,
                     row_alt: np.ndarray | float, col_alt: np.ndarray | float) -> np.ndarray:
    """Solve a gated assignment with per-row and per-column "no link" costs.

    Parameters
    ----------
    rows, cols, costs
        Candidate pairs ``(rows[k], cols[k])`` with finite, non-negative ``costs[k]``; each pair at
        most once.
    n_rows, n_cols
        Number of row and column objects.
    row_alt, col_alt
        Cost of leaving a row (column) object unassigned; scalars or per-object arrays.

    Returns
    -------
    ndarray of int64, shape (n_rows,)
        Column assigned to each row, or -1 for "no link".
    """
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    costs = np.asarray(costs, np.float64)
    out = np.full(n_rows, -1, np.int64)
    if rows.size == 0 or n_rows == 0 or n_cols == 0:
        return out
    # Only objects with at least one candidate enter the problem; the rest are trivially unlinked.
    ur, r_idx = np.unique(rows, return_inverse=True)
    uc, c_idx = np.unique(cols, return_inverse=True)
    n, m = ur.size, uc.size
    ra = np.broadcast_to(np.asarray(row_alt, np.float64), (n_rows,))[ur]
    ca = np.broadcast_to(np.asarray(col_alt, np.float64), (n_cols,))[uc]
    shift = 1.0
    lowest = float(costs.min())
    ar_n, ar_m = np.arange(n), np.arange(m)
    i = np.concatenate([r_idx, ar_n, n + ar_m, n + c_idx])
    j = np.concatenate([c_idx, m + ar_n, ar_m, m + r_idx])
    w = np.concatenate([costs, ra, ca, np.full(costs.size, lowest)]) + shift
    mat = coo_matrix((w, (i, j)), shape=(n + m, m + n)).tocsr()
    _, match = min_weight_full_bipartite_matching(mat)
    top = match[:n]
    linked = top < m
    out[ur[linked]] = uc[top[linked]]
    return out
