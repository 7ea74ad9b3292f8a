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
from typing import Any

import numpy as np

from ..core.progress import ProgressCallback, ProgressEvent, emit
from ..image import Calibration
from ._linking_detect import detect_labels, detect_points
from ._linking_gaps import _close_segments
from ._linking_lap import _estimate_max_distance, _link_distance, solve_sparse_lap
from ._linking_model import (
    EDGE_GAP,
    EDGE_LINK,
    EDGE_MERGE,
    EDGE_SPLIT,
    Detections,
    Linking,
    TrackingParams,
    Tracks,
)
from ._linking_result import _assemble, fill_gaps

__all__ = [
    "EDGE_GAP",
    "EDGE_LINK",
    "EDGE_MERGE",
    "EDGE_SPLIT",
    "Detections",
    "Linking",
    "TrackingParams",
    "Tracks",
    "detect_labels",
    "detect_points",
    "fill_gaps",
    "solve_sparse_lap",
    "track",
    "track_labels",
]

log = logging.getLogger(__name__)


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

        ml = link_masks(detections, params, progress)
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
