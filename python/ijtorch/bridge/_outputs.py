"""What a command hands back to ImageJ, as plain data, and how it is applied.

A command computes :class:`CommandOutputs` from numpy data without touching the JVM (so the
server can run the very same computation for a remote Fiji), then :func:`apply_outputs` turns it
into ImageJ objects in-process. The Java shim's remote transport (``IjtorchRemote``) applies the
same outputs, received from the server, with the same rules: label images get the label LUT, the
display range ``0..max(255, largest label)`` and the source calibration; ROIs go to the ROI
Manager in bulk; tables fill a ResultsTable by title.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..image import Calibration

__all__ = ["ImageOutput", "RoiOutput", "TableOutput", "CommandOutputs", "apply_outputs"]


@dataclass(frozen=True)
class ImageOutput:
    """A new image to show: ``data`` in ``axes`` (from ``TZCYX``), ``labels`` picks the label LUT."""

    data: np.ndarray
    axes: str
    title: str
    calibration: Calibration = field(default_factory=Calibration)
    labels: bool = False


@dataclass(frozen=True)
class RoiOutput:
    """Polygon ROIs for the ROI Manager (``outlines`` is an :class:`ijtorch.tasks.outlines.Outlines`)."""

    outlines: Any
    names: tuple[str, ...] | None = None
    reset: bool = True


@dataclass(frozen=True)
class TableOutput:
    """Equal-length columns for a ResultsTable shown under ``title``."""

    columns: Mapping[str, np.ndarray]
    title: str = "Results"


@dataclass(frozen=True)
class CommandOutputs:
    """Everything a command shows in ImageJ, plus a status line and values for macro functions."""

    images: tuple[ImageOutput, ...] = ()
    rois: RoiOutput | None = None
    tables: tuple[TableOutput, ...] = ()
    status: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)


def apply_outputs(outputs: CommandOutputs) -> list[Any]:
    """Create the ImageJ objects of ``outputs`` in the running ImageJ; returns the shown ImagePluses."""
    from ._convert import numpy_to_imageplus
    from ._results import add_rois_to_manager, labels_to_imageplus, results_table

    shown = []
    for im in outputs.images:
        if im.labels:
            imp = labels_to_imageplus(im.data, im.axes, calibration=im.calibration, title=im.title)
        else:
            imp = numpy_to_imageplus(im.data, im.axes, title=im.title, calibration=im.calibration)
            imp.resetDisplayRange()
        imp.show()
        shown.append(imp)
    if outputs.rois is not None:
        add_rois_to_manager(outputs.rois.outlines, names=list(outputs.rois.names) if outputs.rois.names else None,
                            reset=outputs.rois.reset)
    for table in outputs.tables:
        results_table(table.columns, title=table.title)
    return shown
