"""The data of tracking: :class:`Detections` (objects per frame), :class:`TrackingParams`,
:class:`Tracks` (the result) and the edge kinds; re-exported by :mod:`ijtorch.tasks.linking`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..image import Calibration

__all__ = ["EDGE_GAP", "EDGE_LINK", "EDGE_MERGE", "EDGE_SPLIT", "Detections", "Linking", "TrackingParams", "Tracks"]

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
