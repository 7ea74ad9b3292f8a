"""Files a segmentation leaves behind, the same for the CLI, ``make demo`` and the server:

- ``<name>.tif``: the label map (ImageJ TIFF, uint16 or float32 above 65535 labels, calibrated);
- ``<name>_RoiSet.zip``: one polygon ROI per object, which ImageJ's ROI Manager opens;
- ``<name>_measurements.csv``: one row per object (``ijtorch.tasks.measure``);
- ``<name>_overlay.png``: object contours drawn over the image, for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..image import Image, to_axes
from ..io.atomic import refuse_overwrite
from ..io.outputs import write_overlay_png, write_table_csv

__all__ = ["write_segmentation_outputs"]


def write_segmentation_outputs(output_dir: str | os.PathLike, name: str, image: Image, labels: np.ndarray,
                               labels_axes: str, *, inputs: tuple = (), confidence: np.ndarray | None = None
                               ) -> dict[str, Path]:
    """Write label TIFF, RoiSet.zip, measurements CSV and overlay PNG; return their paths.

    ``inputs`` are the source files: an output that would overwrite one is refused. ``confidence``
    (``SegmentationResult.confidence``) adds the per-object ``confidence`` column to the CSV and the
    ``confidence`` property to each ROI.
    """
    from ..io.roiset import confidence_properties, write_roiset
    from ..io.tiff import write_imagej_tiff
    from .measure import measure
    from .outlines import outlines

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
    ol = outlines(labels, labels_axes)
    write_roiset(paths["rois"], ol, properties=confidence_properties(ol.labels, confidence))
    intensity = image.data if image.axes == labels_axes else None
    write_table_csv(paths["measurements"], measure(labels, labels_axes, intensity=intensity,
                                                   calibration=image.calibration, confidence=confidence))
    # overlay: the first plane (2-D images are the common case; stacks show their first plane)
    plane_labels = to_axes(labels, labels_axes, "YX") if set(labels_axes) <= set("YX") else \
        labels[tuple(0 if a not in "YX" else slice(None) for a in labels_axes)]
    img = image.data
    keep = "YXS" if "S" in image.axes else "YX"
    img_plane = img[tuple(slice(None) if a in keep else 0 for a in image.axes)]
    write_overlay_png(paths["overlay"], img_plane, plane_labels)
    return paths
