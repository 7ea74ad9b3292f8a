"""Polygons (e.g. ROI Manager annotations) → a label map, the inverse of ``tasks.outlines``.

Polygons are in ImageJ's pixel-corner coordinates: pixel ``(x, y)`` is inside when its centre
``(x + 0.5, y + 0.5)`` is inside the polygon, which is how ImageJ's ``Roi.getMask()`` decides.
Later polygons overwrite earlier ones where they overlap (as the shared data's README states
for its few overlapping annotations).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["polygons_to_labels"]


def polygons_to_labels(polygons: Sequence[np.ndarray], shape: tuple[int, int], *,
                       labels: Sequence[int] | None = None) -> np.ndarray:
    """Rasterise ``(m, 2)`` ``(x, y)`` polygons into a ``uint16`` (``uint32`` above 65535) label map.

    Parameters
    ----------
    polygons
        Vertices per object, pixel-corner coordinates.
    shape
        ``(height, width)`` of the output.
    labels
        Label value per polygon; default 1..n in order.
    """
    from skimage.draw import polygon as fill_polygon

    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {shape!r}")
    values = np.arange(1, len(polygons) + 1) if labels is None else np.asarray(labels, dtype=np.int64)
    if len(values) != len(polygons):
        raise ValueError(f"labels has {len(values)} values for {len(polygons)} polygons")
    if len(values) and values.min() < 1:
        raise ValueError("labels must be positive (0 is background)")
    dtype = np.uint16 if (len(values) == 0 or values.max() <= 65535) else np.uint32
    out = np.zeros(shape, dtype=dtype)
    for xy, value in zip(polygons, values):
        xy = np.asarray(xy, dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3:
            raise ValueError(f"each polygon must be an (m, 2) array with m >= 3, got shape {xy.shape}")
        # pixel centres are at +0.5: shift the polygon instead of every pixel
        rr, cc = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=shape)
        out[rr, cc] = value
    return out
