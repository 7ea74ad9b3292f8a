"""ImageJ commands run on the server for a remote Fiji (``POST /imagej/command``).

The Java shim (``IjtorchRemote``) sends the command name, the macro options and the current
image; the server parses the options with the command's own parameter model, runs the command's
own JVM-free computation (e.g. :func:`ijtorch.bridge._segment_commands.segment_outputs`) and
returns its :class:`~ijtorch.bridge._outputs.CommandOutputs` in the wire format, which the shim
applies exactly as :func:`~ijtorch.bridge._outputs.apply_outputs` does in-process.

Reply header (arrays named in it follow in the body)::

    {"status": str, "values": {...},
     "images": [{"array": "image0", "title": str, "labels": bool, "calibration": {...},
                 "display_min": float, "display_max": float}],   # arrays are TZCYX, 5-D
     "lut": "lut" | null,                                       # (256, 3) uint8 label LUT
     "rois": {"names": [...], "integer": bool, "reset": bool} | null,   # arrays roi_x, roi_y,
                                                                  # roi_offsets, roi_c, roi_z, roi_t
     "tables": [{"title": str, "columns": [{"name": str, "array": "t0c0"} | {"name": str, "text": [...]}]}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..image import CANONICAL_AXES, to_axes

__all__ = ["RemoteCommand", "remote_commands", "outputs_to_wire"]


@dataclass(frozen=True)
class RemoteCommand:
    """A command the server can run: its parameter model, the option naming a model, and
    ``compute(image, params, progress, cancel) -> CommandOutputs``."""

    name: str
    params: Any
    compute: Callable[..., Any]
    model_option: str | None = "model"


def _segment(image: Any, p: Any, progress: Any = None, cancel: Any = None) -> Any:
    from ..bridge._segment_commands import segment_outputs

    return segment_outputs(image, p, progress=progress, cancel=cancel)[1]


def remote_commands() -> dict[str, RemoteCommand]:
    """Commands a remote Fiji may run (those whose computation needs no JVM)."""
    from ..bridge._segment_commands import SegmentParams

    return {"ijtorch Segment": RemoteCommand("ijtorch Segment", SegmentParams, _segment)}


def _imagej_pixels(data: np.ndarray, labels: bool) -> tuple[np.ndarray, float]:
    """Pixels as ImageJ will store them (the rules of ``labels_to_imageplus``) and the display max."""
    if labels:
        from ..tasks.outlines import _as_label_array

        lab = _as_label_array(data)
        top = int(lab.max()) if lab.size else 0
        if top <= 65535:
            return lab.astype(np.uint16, copy=False), float(max(255, top))
        if top <= 2 ** 24:
            return lab.astype(np.float32), float(top)
        raise ValueError(f"labels: largest label {top} exceeds 2**24, which 32-bit float cannot hold exactly")
    if data.dtype in (np.uint8, np.uint16, np.float32):
        return data, float(data.max()) if data.size else 0.0
    raise ValueError(f"image output of dtype {data.dtype} has no exact ImageJ type here (uint8, uint16, float32)")


def outputs_to_wire(outputs: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A :class:`~ijtorch.bridge._outputs.CommandOutputs` as a reply header and arrays."""
    from ..io.roiset import _check_positions, default_names
    from ..tasks.colors import glasbey_lut

    header: dict[str, Any] = {"status": outputs.status, "values": dict(outputs.values), "images": [], "lut": None,
                              "rois": None, "tables": []}
    arrays: dict[str, np.ndarray] = {}
    for k, im in enumerate(outputs.images):
        if "S" in im.axes:
            raise ValueError("RGB image outputs are not sent to remote clients")
        pixels, top = _imagej_pixels(im.data, im.labels)
        name = f"image{k}"
        arrays[name] = np.ascontiguousarray(to_axes(pixels, im.axes, CANONICAL_AXES[:-1]))
        header["images"].append({"array": name, "title": im.title, "labels": bool(im.labels),
                                 "calibration": im.calibration.to_dict(), "display_min": 0.0,
                                 "display_max": top})
        if im.labels and header["lut"] is None:
            header["lut"] = "lut"
            arrays["lut"] = np.ascontiguousarray(glasbey_lut(256).astype(np.uint8))
    if outputs.rois is not None:
        ol = outputs.rois.outlines
        n = len(ol)
        names = list(outputs.rois.names) if outputs.rois.names else default_names(ol.labels, ol.positions, ol.axes)
        pos = _check_positions(ol.positions, n)
        coords = ol.coords
        integer = bool(n == 0 or (np.all(coords == np.round(coords)) and np.abs(coords).max() < 2 ** 24))
        header["rois"] = {"names": names, "integer": integer, "reset": bool(outputs.rois.reset)}
        arrays.update(roi_x=coords[:, 0].astype(np.float32), roi_y=coords[:, 1].astype(np.float32),
                      roi_offsets=ol.offsets.astype(np.int32), roi_c=pos[:, 0].astype(np.int32),
                      roi_z=pos[:, 1].astype(np.int32), roi_t=pos[:, 2].astype(np.int32))
    for ti, table in enumerate(outputs.tables):
        cols = []
        for ci, (cname, values) in enumerate(table.columns.items()):
            a = np.asarray(values)
            if a.dtype.kind in "biuf":
                arrays[f"t{ti}c{ci}"] = a.astype(np.float64)
                cols.append({"name": cname, "array": f"t{ti}c{ci}"})
            else:
                cols.append({"name": cname, "text": [str(v) for v in a]})
        header["tables"].append({"title": table.title, "columns": cols})
    return header, arrays
