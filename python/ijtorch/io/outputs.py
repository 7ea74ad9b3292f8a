"""Table and picture files: a CSV of equal-length columns, contours drawn over an image as PNG
(used by :mod:`ijtorch.tasks.segmentation_files`)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..image import pixel_values
from .atomic import atomic_path

__all__ = ["write_table_csv", "write_overlay_png"]


def write_table_csv(path: str | os.PathLike, columns: Mapping[str, np.ndarray]) -> Path:
    """Write equal-length columns as a CSV file (header row, one row per object), atomically."""
    names = list(columns)
    lengths = {len(np.asarray(columns[k])) for k in names}
    if len(lengths) > 1:
        raise ValueError(f"columns must have equal lengths, got {sorted(lengths)}")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        writer.writerows(zip(*(np.asarray(columns[k]).tolist() for k in names)))
    return path


def _display_uint8(plane: np.ndarray) -> np.ndarray:
    """Percentile-stretched 8-bit copy for display only (the data itself is never rescaled); NaN and
    inf pixels (no data) are shown black."""
    plane = pixel_values(plane).astype(np.float32)
    lo, hi = np.percentile(plane, (1.0, 99.8))
    scaled = np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1)
    return (scaled * 255).astype(np.uint8)


def write_overlay_png(path: str | os.PathLike, image2d: np.ndarray, labels2d: np.ndarray) -> Path:
    """Draw each object's contour in a distinct colour over the (grey or RGB) image."""
    from PIL import Image as PILImage
    from skimage.segmentation import find_boundaries

    from ..core.colors import glasbey_lut

    if image2d.ndim == 3 and image2d.shape[-1] == 3:
        rgb = np.stack([_display_uint8(image2d[..., i]) for i in range(3)], axis=-1)
    else:
        grey = _display_uint8(image2d)
        rgb = np.stack([grey] * 3, axis=-1)
    lut = glasbey_lut(256)
    edges = find_boundaries(labels2d, mode="inner")
    colours = lut[(labels2d[edges].astype(np.int64) - 1) % 255 + 1]
    rgb[edges] = colours
    path = Path(path)
    with atomic_path(path) as tmp:
        PILImage.fromarray(rgb).save(tmp, format="PNG")
    return path
