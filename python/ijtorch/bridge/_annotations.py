"""ROI Manager annotations → polygons (objects to classify, or outlines to train from).

:func:`area_annotations` checks and bundles ROIs given as plain data, so the server can build the
same :class:`Annotations` from what a remote Fiji's shim sends; :func:`rois_from_manager` reads
them from the running ImageJ's ROI Manager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["Annotations", "area_annotations", "rois_from_manager"]


@dataclass(frozen=True)
class Annotations:
    polygons: list[np.ndarray]  # (m, 2) x, y in pixel-corner coordinates
    names: list[str]
    groups: np.ndarray  # ROI Manager group per ROI (0 = none)
    positions: np.ndarray  # (n, 3) C, Z, T, 1-based, 0 = all


def area_annotations(polygons: Sequence[np.ndarray], names: Sequence[str | None], groups: Sequence[int],
                     positions: Sequence[Sequence[int]], *, types: Sequence[str], is_area: Sequence[bool]) -> Annotations:
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
                       np.asarray(groups, dtype=np.int64), np.asarray(positions, dtype=np.int64).reshape(-1, 3))


def rois_from_manager(manager=None) -> Annotations:
    """Area ROIs of the ROI Manager as polygons; line and point ROIs are rejected by name."""
    from jpype import JClass

    RoiManager = JClass("ij.plugin.frame.RoiManager")
    rm = manager if manager is not None else RoiManager.getInstance()
    rois = list(rm.getRoisAsArray()) if rm is not None else []
    polygons, names, groups, positions, types, is_area = [], [], [], [], [], []
    for roi in rois:
        area = bool(roi.isArea())
        xy = np.empty((0, 2), dtype=np.float64)
        if area:
            poly = roi.getFloatPolygon()
            n = int(poly.npoints)
            xy = np.empty((n, 2), dtype=np.float64)
            xy[:, 0] = np.asarray(poly.xpoints[:n], dtype=np.float64)
            xy[:, 1] = np.asarray(poly.ypoints[:n], dtype=np.float64)
        polygons.append(xy)
        names.append(str(roi.getName()) if roi.getName() is not None else None)
        groups.append(int(roi.getGroup()))
        positions.append((int(roi.getCPosition()), int(roi.getZPosition()), int(roi.getTPosition())))
        types.append(str(roi.getTypeAsString()))
        is_area.append(area)
    return area_annotations(polygons, names, groups, positions, types=types, is_area=is_area)
