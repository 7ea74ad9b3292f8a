"""ROI Manager annotations as polygons (objects to classify, or outlines to train from), as plain data.

:func:`area_annotations` checks and bundles ROIs, whether ImageJ's ROI Manager gave them in-process
(:func:`ijtorch.bridge.apply.rois_from_manager`) or a remote Fiji sent them to the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Annotations", "Stroke", "area_annotations"]


@dataclass(frozen=True)
class Annotations:
    polygons: list[np.ndarray]  # (m, 2) x, y in pixel-corner coordinates
    names: list[str]
    groups: np.ndarray  # ROI Manager group per ROI (0 = none)
    positions: np.ndarray  # (n, 3) C, Z, T, 1-based, 0 = all
    group_names: Mapping[int, str] = field(default_factory=dict)  # ImageJ's names of the groups, where set


@dataclass(frozen=True)
class Stroke:
    """One ROI as plain data: ``xy`` points (lines, points), or an area ``mask`` at ``origin`` (x, y)."""

    name: str
    group: int
    kind: str  # "area", "line" or "points"
    xy: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))
    mask: np.ndarray | None = None
    origin: tuple[int, int] = (0, 0)
    width: float = 1.0
    position: int = 0  # 1-based stack slice, 0 = any / the current slice
    group_name: str = ""  # ImageJ's name of the group, where set


def area_annotations(polygons: Sequence[np.ndarray], names: Sequence[str | None], groups: Sequence[int],
                     positions: Sequence[Sequence[int]], *, types: Sequence[str], is_area: Sequence[bool],
                     group_names: Mapping[int, str] | None = None) -> Annotations:
    """ROIs as objects: all must be area ROIs (line and point ROIs are rejected by name).

    ``polygons`` holds each ROI's float polygon (``(m, 2)`` x, y; anything for non-area ROIs),
    ``names`` may hold None (named ``roi_<n>``), ``types`` the ROI type names for messages.
    """
    n = len(names)
    if n == 0:
        raise ValueError("the ROI Manager is empty: outline objects (or add ROIs) before training")
    if not len(polygons) == len(groups) == len(positions) == len(types) == len(is_area) == n:
        raise ValueError(f"ROI data of unequal lengths: {len(polygons)} polygons, {n} names, {len(groups)} groups, "
                         f"{len(positions)} positions, {len(types)} types, {len(is_area)} area flags")
    names = [str(name) if name is not None else f"roi_{i + 1}" for i, name in enumerate(names)]
    for i in range(n):
        if not is_area[i]:
            raise ValueError(f"ROI {i + 1} ({names[i]}) is a {types[i]} ROI; only area ROIs can be used as objects")
    return Annotations([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons], names,
                       np.asarray(groups, dtype=np.int64), np.asarray(positions, dtype=np.int64).reshape(-1, 3),
                       dict(group_names or {}))
