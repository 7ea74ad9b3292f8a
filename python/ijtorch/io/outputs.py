"""Files a segmentation leaves behind, the same for the CLI, ``make demo`` and the server:

- ``<name>.tif``: the label map (ImageJ TIFF, uint16 or float32 above 65535 labels, calibrated);
- ``<name>_RoiSet.zip``: one polygon ROI per object, which ImageJ's ROI Manager opens;
- ``<name>_measurements.csv``: one row per object (``ijtorch.tasks.measure``);
- ``<name>_overlay.png``: object contours drawn over the image, for a person to look at.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ..image import Image, to_axes
from .atomic import atomic_path, refuse_overwrite

__all__ = ["write_table_csv", "write_overlay_png", "write_segmentation_outputs"]


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
    """Percentile-stretched 8-bit copy for display only (the data itself is never rescaled)."""
    plane = plane.astype(np.float32)
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


def write_segmentation_outputs(output_dir: str | os.PathLike, name: str, image: Image, labels: np.ndarray,
                               labels_axes: str, *, inputs: tuple = ()) -> dict[str, Path]:
    """Write label TIFF, RoiSet.zip, measurements CSV and overlay PNG; return their paths.

    ``inputs`` are the source files: an output that would overwrite one is refused.
    """
    from ..tasks.measure import measure
    from ..tasks.outlines import outlines
    from .roiset import write_roiset
    from .tiff import write_imagej_tiff

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "labels": out / f"{name}.tif",
        "rois": out / f"{name}_RoiSet.zip",
        "measurements": out / f"{name}_measurements.csv",
        "overlay": out / f"{name}_overlay.png",
    }
    for p in paths.values():
        refuse_overwrite(p, list(inputs))
    write_imagej_tiff(paths["labels"], labels, labels_axes, calibration=image.calibration)
    write_roiset(paths["rois"], outlines(labels, labels_axes))
    intensity = image.data if image.axes == labels_axes else None
    write_table_csv(paths["measurements"], measure(labels, labels_axes, intensity=intensity,
                                                   calibration=image.calibration))
    # overlay: the first plane (2-D images are the common case; stacks show their first plane)
    plane_labels = to_axes(labels, labels_axes, "YX") if set(labels_axes) <= set("YX") else \
        labels[tuple(0 if a not in "YX" else slice(None) for a in labels_axes)]
    img = image.data
    keep = "YXS" if "S" in image.axes else "YX"
    img_plane = img[tuple(slice(None) if a in keep else 0 for a in image.axes)]
    write_overlay_png(paths["overlay"], img_plane, plane_labels)
    return paths
