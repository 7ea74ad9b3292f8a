"""ROI Manager annotations → polygons (for training from an image + its ROIs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Annotations", "rois_from_manager"]


@dataclass(frozen=True)
class Annotations:
    polygons: list[np.ndarray]  # (m, 2) x, y in pixel-corner coordinates
    names: list[str]
    groups: np.ndarray  # ROI Manager group per ROI (0 = none)
    positions: np.ndarray  # (n, 3) C, Z, T, 1-based, 0 = all


def rois_from_manager(manager=None) -> Annotations:
    """Area ROIs of the ROI Manager as polygons; line and point ROIs are rejected by name."""
    from jpype import JClass

    RoiManager = JClass("ij.plugin.frame.RoiManager")
    rm = manager if manager is not None else RoiManager.getInstance()
    if rm is None or rm.getCount() == 0:
        raise ValueError("the ROI Manager is empty: outline objects (or add ROIs) before training")
    polygons, names, groups, positions = [], [], [], []
    for i, roi in enumerate(rm.getRoisAsArray()):
        if not roi.isArea():
            raise ValueError(f"ROI {i + 1} ({roi.getName()}) is a {roi.getTypeAsString()} ROI; only area ROIs can be used as objects")
        poly = roi.getFloatPolygon()
        n = int(poly.npoints)
        xy = np.empty((n, 2), dtype=np.float64)
        xy[:, 0] = np.asarray(poly.xpoints[:n], dtype=np.float64)
        xy[:, 1] = np.asarray(poly.ypoints[:n], dtype=np.float64)
        polygons.append(xy)
        names.append(str(roi.getName()) if roi.getName() is not None else f"roi_{i + 1}")
        groups.append(int(roi.getGroup()))
        positions.append((int(roi.getCPosition()), int(roi.getZPosition()), int(roi.getTPosition())))
    return Annotations(polygons, names, np.asarray(groups, dtype=np.int64),
                       np.asarray(positions, dtype=np.int64).reshape(-1, 3))
