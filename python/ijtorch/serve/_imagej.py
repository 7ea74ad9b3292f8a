"""ImageJ commands and macro functions run on the server for a remote Fiji
(``/imagej/commands``, ``POST /imagej/command``, ``POST /imagej/function``).

The Java shim (``IjtorchRemote``) sends the command name, the macro options, the current image
and, when the command declares them, the ROI Manager's ROIs and the open images that options name;
the server parses the options with the command's own parameter model, runs the command's own
JVM-free computation (e.g. :func:`ijtorch.commands.segment.segment_command`) on
:class:`~ijtorch.commands.outputs.CommandInputs` built from that, and returns its
:class:`~ijtorch.commands.outputs.CommandOutputs` in the wire format, which the shim applies
exactly as :func:`ijtorch.bridge.apply.apply_outputs` does in-process. Macro functions
declared ``remote`` run their own handler here, with the remote ImageJ's session values.

Request header of ``/imagej/command`` (arrays named in it follow in the body)::

    {"command": str, "options": str, "title": str, "axes": "TZCYX", "calibration": {...},
     "image_path": str,                                        # file the image came from, or ""
     "rois": {"names": [str|null], "types": [str], "area": [bool], "groups": [int]} | null,
                                       # arrays roi_x, roi_y (<f4), roi_offsets, roi_c, roi_z, roi_t (<i4)
     "images": {option: {"array": str, "title": str, "axes": "TZCYX", "calibration": {...}}} | null}
     # arrays: "image" plus those named above

Reply header::

    {"status": str, "values": {...}, "log": [str],
     "images": [{"array": "image0", "title": str, "labels": bool, "calibration": {...},
                 "display_min": float, "display_max": float}],   # arrays are TZCYX, 5-D
     "lut": "lut" | null,                                       # (256, 3) uint8 label LUT
     "rois": {"names": [...], "integer": bool, "reset": bool} | null,   # arrays roi_x, roi_y,
                                                                  # roi_offsets, roi_c, roi_z, roi_t
     "roi_style": {"properties": {name: [str]}} | null,           # arrays style_index (<i4), style_rgb (|u1, n x 3)
     "tables": [{"title": str, "columns": [{"name": str, "array": "t0c0"} | {"name": str, "text": [...]}]}],
     "files": {"folder": str, "paths": [relative path]} | null}  # arrays file_bytes (|u1), file_offsets (<i8)

``/imagej/function`` takes ``{"name": str, "args": [str|number], "values": {...}}`` and answers
``{"value": str}`` or ``{"number": float}`` (header-only messages).
"""

from __future__ import annotations

import inspect
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..commands.command import Command, all_commands
from ..image import CANONICAL_AXES, Image, to_axes

__all__ = ["remote_commands", "command_catalog", "command_inputs", "outputs_to_wire",
           "call_function"]

_ROI_ARRAYS = ("roi_x", "roi_y", "roi_offsets", "roi_c", "roi_z", "roi_t")


def remote_commands() -> dict[str, Command]:
    """Commands a remote Fiji may run (those declared ``remote``: their computation needs no JVM)."""
    return {name: cmd for name, cmd in all_commands().items() if cmd.remote}


def command_catalog() -> dict[str, Any]:
    """What ``GET /imagej/commands`` answers: dialog specs, the inputs each command needs, and every
    registered macro function with its argument types and whether the server can run it."""
    from ..commands.functions import all_functions as registered_functions, arg_codes
    from ijtorch.commands.options import dialog_spec
    cmds = remote_commands()
    return {"commands": {n: dialog_spec(c.params) for n, c in cmds.items()},
            "inputs": {n: {"rois": c.rois, "images": list(c.image_options)} for n, c in cmds.items()},
            "functions": {n: {"args": arg_codes(f), "remote": f.remote} for n, f in registered_functions().items()}}


# ------------------------------------------------------------------------------------ request
def _imagej_image(data: np.ndarray, axes: str, calibration: Any, title: str) -> Image:
    """An image as the shim sends it (``TZCYX[S]``) in ImageJ's own layout: length-1 axes dropped,
    as :func:`ijtorch.bridge.imageplus_to_numpy` gives it."""
    from .requests import request_calibration, request_image

    data, axes = request_image({"image": data}, axes)
    keep = [i for i, a in enumerate(axes) if a in "YXS" or data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    return Image(data=data, axes="".join(axes[i] for i in keep), calibration=request_calibration(calibration), title=title)


def command_inputs(req: Any, arrays: dict[str, np.ndarray], spec: Command) -> Any:
    """:class:`~ijtorch.commands.outputs.CommandInputs` from a request (``req`` an ``ImageJRequest``)."""
    from ijtorch.commands.annotations import area_annotations
    from ijtorch.commands.outputs import CommandInputs
    expected = {"image"} | (set(_ROI_ARRAYS) if req.rois is not None else set())
    others: dict[str, Image] = {}
    for option, im in (req.images or {}).items():
        if option not in spec.image_options or not isinstance(im, dict) or not isinstance(im.get("array"), str):
            raise ValueError(f"images: {option!r} names no image option of {spec.name} "
                             f"(those are {list(spec.image_options)}) or lacks an 'array'")
        expected.add(im["array"])
        if im["array"] not in arrays:
            raise ValueError(f"images[{option!r}]: array {im['array']!r} is missing from the message")
        others[str(im.get("title", ""))] = _imagej_image(arrays[im["array"]], str(im.get("axes", "TZCYX")),
                                                         im.get("calibration"), str(im.get("title", "")))
    if set(arrays) != expected:
        raise ValueError(f"expected the arrays {sorted(expected)}, got {sorted(arrays)}")
    image = _imagej_image(arrays["image"], req.axes, req.calibration, req.title)
    # the ROIs' structure is checked now; whether they fit the command (area ROIs), as in-process, when read
    sent = {} if req.rois is None else {"rois": partial(area_annotations, **_request_rois(req.rois, arrays))}
    return CommandInputs(image, req.image_path or None, open_image=others.get, **sent)


def _request_rois(rois: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The arguments of :func:`~ijtorch.commands.annotations.area_annotations` from a request."""
    names = list(rois.get("names") or [])
    n = len(names)
    per_roi = {k: list(rois.get(k) or []) for k in ("groups", "types", "area")}
    per_roi.update({k: np.asarray(arrays[k], np.int64) for k in ("roi_c", "roi_z", "roi_t")})
    wrong = {k: len(v) for k, v in per_roi.items() if len(v) != n or np.ndim(v) != 1}
    if wrong:
        raise ValueError(f"rois: {n} names but {wrong} (one entry per ROI expected)")
    offsets = np.asarray(arrays["roi_offsets"], np.int64)
    x, y = arrays["roi_x"].astype(np.float64), arrays["roi_y"].astype(np.float64)
    if x.ndim != 1 or x.shape != y.shape or offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != x.size \
            or np.any(np.diff(offsets) < 0):
        raise ValueError(f"rois: roi_x and roi_y must be 1-D and equally long, roi_offsets rise from 0 to their "
                         f"length ({x.size}) with one more entry than the {n} names")
    polygons = [np.stack([x[offsets[i]:offsets[i + 1]], y[offsets[i]:offsets[i + 1]]], axis=1) for i in range(n)]
    positions = np.stack([per_roi["roi_c"], per_roi["roi_z"], per_roi["roi_t"]], axis=1).reshape(n, 3)
    return dict(polygons=polygons, names=names, groups=per_roi["groups"], positions=positions,
                types=per_roi["types"], is_area=per_roi["area"])


# ------------------------------------------------------------------------------------ reply
def _imagej_pixels(data: np.ndarray, labels: bool) -> tuple[np.ndarray, float]:
    """Pixels as ImageJ will store them (the rules of ``labels_to_imageplus``) and the display max."""
    if labels:
        from ..core.labels import as_label_array

        lab = as_label_array(data)
        top = int(lab.max()) if lab.size else 0
        if top <= 65535:
            return lab.astype(np.uint16, copy=False), float(max(255, top))
        if top <= 2 ** 24:
            return lab.astype(np.float32), float(top)
        raise ValueError(f"labels: largest label {top} exceeds 2**24, which 32-bit float cannot hold exactly")
    if data.dtype in (np.uint8, np.uint16, np.float32):
        return data, float(data.max()) if data.size else 0.0
    raise ValueError(f"image output of dtype {data.dtype} has no exact ImageJ type here (uint8, uint16, float32)")


def _files(files: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Write ``files`` into a temporary folder and pack what appeared there."""
    with tempfile.TemporaryDirectory(prefix="ijtorch-files-") as tmp:
        files.write(Path(tmp))
        paths = sorted(p for p in Path(tmp).rglob("*") if p.is_file())
        blobs = [p.read_bytes() for p in paths]
        rel = [p.relative_to(tmp).as_posix() for p in paths]
    offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
    return ({"folder": files.folder, "paths": rel},
            {"file_bytes": np.frombuffer(b"".join(blobs), np.uint8), "file_offsets": offsets})


def outputs_to_wire(outputs: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A :class:`~ijtorch.commands.outputs.CommandOutputs` as a reply header and arrays."""
    from ..io.roiset import _check_positions, default_names
    from ..core.colors import glasbey_lut

    header: dict[str, Any] = {"status": outputs.status, "values": dict(outputs.values), "log": list(outputs.log),
                              "images": [], "lut": None, "rois": None, "roi_style": None, "tables": [],
                              "files": None}
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
    if outputs.roi_style is not None:
        style = outputs.roi_style
        header["roi_style"] = {"properties": {k: [str(v) for v in vals] for k, vals in style.properties.items()}}
        arrays.update(style_index=np.asarray(style.indices, np.int32),
                      style_rgb=np.ascontiguousarray(style.rgb, np.uint8).reshape(-1, 3))
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
    if outputs.files is not None:
        header["files"], file_arrays = _files(outputs.files)
        arrays.update(file_arrays)
    return header, arrays


# ------------------------------------------------------------------------------------ functions
def call_function(name: str, args: list[Any], values: dict[str, Any], check_model: Callable[[str], Any]) -> dict:
    """Run the macro function ``Ext.<name>`` as in-process, with the remote ImageJ's session ``values``.

    Raises LookupError (unknown, or not ``remote``: it needs in-process Python) and ValueError
    (bad arguments or the function's own error, with its message).
    """
    from ..commands.functions import all_functions as registered_functions, dispatch_function
    from ijtorch.commands.outputs import client_session
    spec = registered_functions().get(name)
    if spec is None:
        raise LookupError(f"Ext.{name} is not a macro function of this server; it has "
                          f"{sorted(registered_functions())}")
    if not spec.remote:
        raise LookupError(f"Ext.{name} cannot run on this server: it needs in-process Python (a Fiji started "
                          "from Python with ijtorch)")
    if len(args) != len(spec.arg_kinds):
        raise ValueError(f"Ext.{name} takes {len(spec.arg_kinds)} argument(s), got {len(args)}")
    for param, kind, arg in zip(inspect.signature(spec.handler).parameters, spec.arg_kinds, args):
        if (kind == "number") != (isinstance(arg, (int, float)) and not isinstance(arg, bool)):
            raise ValueError(f"Ext.{name}: argument {param!r} must be a {kind}, got {arg!r}")
        if param == "model":
            check_model(arg)  # registered names only, never paths
    with client_session(values):
        text, number, error = dispatch_function(name, list(args))
    if error is not None:
        raise ValueError(error)
    return {"number": number} if spec.returns == "number" else {"value": text}
