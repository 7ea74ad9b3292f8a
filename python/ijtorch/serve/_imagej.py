"""ImageJ commands and macro functions run on the server for a remote Fiji
(``GET /imagej/commands``, ``POST /imagej/command``, ``POST /imagej/function``).

The server parses a command's macro options with the command's own parameter model, runs the
command's own JVM-free computation (e.g. :func:`ijtorch.commands.segment.segment_command`) on
:class:`~ijtorch.commands.outputs.CommandInputs` built from the request, and returns its
:class:`~ijtorch.commands.outputs.CommandOutputs`; macro functions declared ``remote`` run their own
handler here, with the remote ImageJ's session values. Two encodings:

**The Java shim** (``IjtorchRemote``, a Fiji without Python) speaks ImageJ's own files, which it
writes and reads with ImageJ's own classes. Its request is the wire envelope of :mod:`._wire` with
the header ``{"format": "zip"}`` and one uint8 array ``zip`` (so the server's body limits and
checks apply unchanged), a ZIP of::

    request.properties   command, options, image_path, headless, image.position=C,Z,T,
                         image.title and its exact calibration (image.pixel_width … image.time_unit),
                         option.<key>.title (+ calibration) for each open image an option names,
                         roi.<i>.type / roi.<i>.area, group.<g> (ROI group names)
    image.tif            the current image (FileSaver.serialize: ImageJ TIFF, read with tifffile)
    option.<key>.tif     the open images named by the command's image options
    rois.zip             the ROI Manager's ROIs (headless: the overlay's) for commands that read them,
                         a RoiSet (RoiEncoder, read with roifile); area ROIs as their float polygon

and the reply (``application/zip``) holds::

    reply.properties     status, log.<i>, value.<key> (session values as JSON), image<k>.title and
                         exact calibration, rois.reset, style.<index>=#rrggbb and
                         style.<index>.<property> (colours for ROIs already in the ROI Manager),
                         table<k>.title, files.folder
    image<k>.tif         ImageJ hyperstack TIFFs (composite mode for channels; label images with the
                         label LUT and display range), opened with Opener.deserialize
    rois.zip             a RoiSet (ijtorch.io.roiset), decoded with RoiDecoder into the ROI Manager
    table<k>.csv         tables for ResultsTable.open (a row-number column, text quoted)
    files/<path>         files to write under files.folder (headless: also <title>_RoiSet.zip)

Calibrations travel as text because TIFF resolution rationals are not exact. ``function`` requests
carry ``function``, ``arg.<i>`` (strings), ``number.<i>`` and ``value.<key>``; the reply's
``reply.properties`` holds ``value`` or ``number``. The catalog is Properties text when asked with
``Accept: text/plain``: ``command.<name>`` (dialog spec), ``rois.<name>``, ``images.<name>`` and
``function.<name>`` (argument codes).

**Python clients** (:class:`ijtorch.serve.Client`) use the wire format: request header
``{"command", "options", "title", "axes": "TZCYX", "calibration", "image_path", "rois", "images"}``
with the arrays ``image``, ``roi_x``/``roi_y``/``roi_offsets``/``roi_c``/``roi_z``/``roi_t`` and
those ``images`` names; the reply header lists ``images`` (arrays ``image<k>``, TZCYX, with
``lut``), ``rois``, ``roi_style``, ``tables`` and ``files`` (arrays ``file_bytes``/``file_offsets``),
see :func:`outputs_to_wire`; ``/imagej/function`` answers ``{"value"}`` or ``{"number"}``; the
catalog is JSON.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import struct
import tempfile
import zipfile
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..commands.command import Command, all_commands
from ..image import CANONICAL_AXES, Image, to_axes

__all__ = ["remote_commands", "command_catalog", "catalog_text", "command_inputs", "outputs_to_wire",
           "call_function", "read_files", "files_command", "outputs_to_files", "files_function", "ZIP_TYPE"]

#: Media type of the replies to the Java shim (a ZIP of ImageJ files).
ZIP_TYPE = "application/zip"

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


# ------------------------------------------------------------------------------------ ImageJ files
# The Java shim's messages: a ZIP of standard ImageJ files and one ``*.properties`` text (java.util.
# Properties, read and written here with the escapes below). The shim's request travels in the wire
# envelope (one uint8 array "zip", header {"format": "zip"}); the reply is the ZIP itself.
_PROP_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f", "=": "\\=", ":": "\\:",
                 "#": "\\#", "!": "\\!"}
_PROP_UNESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)


def _prop_escape(text: str, key: bool) -> str:
    out = []
    for i, ch in enumerate(str(text)):
        if ch in _PROP_ESCAPES:
            out.append(_PROP_ESCAPES[ch])
        elif ch == " " and (key or i == 0):
            out.append("\\ ")
        elif ord(ch) < 0x20 or ord(ch) > 0x7E:  # ASCII only: the shim reads the text as ISO-8859-1
            out.extend(f"\\u{u:04x}" for u in struct.unpack(f"<{len(ch.encode('utf-16-le')) // 2}H",
                                                              ch.encode("utf-16-le")))
        else:
            out.append(ch)
    return "".join(out)


def properties_text(values: dict[str, Any]) -> bytes:
    """``values`` in java.util.Properties format (what ``Properties.load`` reads back exactly)."""
    return "".join(f"{_prop_escape(k, True)}={_prop_escape(v, False)}\n" for k, v in values.items()).encode("ascii")


def parse_properties(data: bytes) -> dict[str, str]:
    """The keys of a java.util.Properties text as ``Properties.store`` writes it (one line per key)."""
    def unescape(text: str) -> str:
        def one(m: re.Match) -> str:
            c = m.group(1)
            return chr(int(c[1:], 16)) if len(c) == 5 else {"n": "\n", "r": "\r", "t": "\t", "f": "\f"}.get(c, c)
        return _PROP_UNESCAPE.sub(one, text).encode("utf-16", "surrogatepass").decode("utf-16")

    out = {}
    for line in data.decode("latin-1").splitlines():
        line = line.lstrip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"((?:[^\\=: \t]|\\.)*)[ \t]*[=:]?[ \t]*(.*)", line, re.S)
        out[unescape(m.group(1))] = unescape(m.group(2))
    return out


def catalog_text() -> bytes:
    """The catalog for the shim: ``command.<name>`` (dialog spec), ``rois.<name>`` (true when it reads
    the ROI Manager), ``images.<name>`` (image options, comma-separated) and ``function.<name>``
    (argument codes, comma-separated)."""
    catalog = command_catalog()
    values: dict[str, Any] = {}
    for name, spec in catalog["commands"].items():
        inputs = catalog["inputs"][name]
        values.update({f"command.{name}": spec, f"rois.{name}": str(inputs["rois"]).lower(),
                       f"images.{name}": ",".join(inputs["images"])})
    values.update({f"function.{n}": ",".join(map(str, f["args"])) for n, f in catalog["functions"].items()})
    return properties_text(values)


def read_files(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, str], dict[str, bytes]]:
    """The shim's request: its properties and the other files of its ZIP by name."""
    if set(header) != {"format"} or set(arrays) != {"zip"} or arrays["zip"].ndim != 1:
        raise ValueError("a request of format 'zip' holds exactly one 1-D uint8 array 'zip' and no other header keys")
    files = _unzip(arrays["zip"].tobytes(), "the request's 'zip' array")
    for name in [n for n in files if n.endswith(".zip")]:  # a RoiSet: the same bound
        _unzip(files[name], name)
    if "request.properties" not in files:
        raise ValueError("the request ZIP has no request.properties")
    return parse_properties(files.pop("request.properties")), files


def _unzip(data: bytes, what: str) -> dict[str, bytes]:
    """The files of a ZIP; one that expands to much more than its size is refused (no ZIP bombs: the
    shim stores its files uncompressed)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = [info for info in zf.infolist() if not info.is_dir()]
            expanded = sum(info.file_size for info in infos)
            if expanded > 2 * len(data) + (1 << 20):
                raise ValueError(f"{what} expands to {expanded} bytes from {len(data)}; send the files uncompressed")
            return {info.filename: zf.read(info) for info in infos}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise ValueError(f"{what} is not a ZIP file: {exc}") from None


_CAL_KEYS = ("pixel_width", "pixel_height", "voxel_depth", "unit", "frame_interval", "time_unit")


def _file_image(props: dict[str, str], files: dict[str, bytes], prefix: str) -> Image:
    """An image the shim sent as ``<prefix>.tif`` (``FileSaver.serialize``), in ImageJ's own layout
    (``TZCYX`` subset, length-1 axes dropped, as :func:`ijtorch.bridge.imageplus_to_numpy` gives it),
    with the exact calibration of the properties (TIFF resolution rationals are not exact)."""
    import tifffile

    from .requests import request_calibration

    if f"{prefix}.tif" not in files:
        raise ValueError(f"the request ZIP has no {prefix}.tif")
    with tifffile.TiffFile(io.BytesIO(files[f"{prefix}.tif"])) as tf:
        series = tf.series[0]
        data = series.asarray()
        axes = series.axes.upper().replace("I", "Z").replace("Q", "Z")
    if "S" in axes and axes[-1] != "S":
        data, axes = np.moveaxis(data, axes.index("S"), -1), axes.replace("S", "") + "S"
    if any(a not in CANONICAL_AXES for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"{prefix}.tif: cannot map its axes {series.axes!r} onto TZCYXS")
    full = to_axes(data, axes, CANONICAL_AXES if "S" in axes else CANONICAL_AXES[:-1])
    keep = [i for i, a in enumerate(CANONICAL_AXES) if i < full.ndim and (a in "YXS" or full.shape[i] > 1)]
    data = full.reshape([full.shape[i] for i in keep])
    cal = {k: props[f"{prefix}.{k}"] for k in _CAL_KEYS if f"{prefix}.{k}" in props}
    cal = {k: (v if k in ("unit", "time_unit") else float(v)) for k, v in cal.items()}
    return Image(data=np.ascontiguousarray(data), axes="".join(CANONICAL_AXES[i] for i in keep),
                 calibration=request_calibration(cal or None), title=props.get(f"{prefix}.title", ""))


def _file_rois(props: dict[str, str], data: bytes) -> dict[str, Any]:
    """The arguments of :func:`~ijtorch.commands.annotations.area_annotations` from the shim's
    ``rois.zip`` (area ROIs as polygons of their float polygon) and ``roi.<i>.type``/``.area``."""
    from roifile import ImagejRoi

    rois = [ImagejRoi.frombytes(b) for n, b in _unzip(data, "rois.zip").items() if n.endswith(".roi")]
    area = [props.get(f"roi.{i}.area") == "true" for i in range(len(rois))]
    polygons = [np.asarray(r.coordinates(), np.float64).reshape(-1, 2) if a else np.empty((0, 2))
                for r, a in zip(rois, area)]
    groups = [int(r.group) for r in rois]
    return dict(polygons=polygons, names=[r.name or None for r in rois], groups=groups,
                positions=np.asarray([(r.c_position, r.z_position, r.t_position) for r in rois], np.int64).reshape(-1, 3),
                types=[props.get(f"roi.{i}.type", "") for i in range(len(rois))], is_area=area,
                group_names={g: props[f"group.{g}"] for g in set(groups) if f"group.{g}" in props})


def files_command(props: dict[str, str], files: dict[str, bytes], spec: Command) -> Any:
    """:class:`~ijtorch.commands.outputs.CommandInputs` from the shim's request files."""
    from ijtorch.commands.annotations import area_annotations
    from ijtorch.commands.outputs import CommandInputs

    others: dict[str, Image] = {}
    for key in props:
        option = key[len("option."):-len(".title")] if key.startswith("option.") and key.endswith(".title") else None
        if option is not None:
            if option not in spec.image_options:
                raise ValueError(f"images: {option!r} names no image option of {spec.name} "
                                 f"(those are {list(spec.image_options)})")
            others[props[key]] = _file_image(props, files, f"option.{option}")
    sent = {}
    if "rois.zip" in files:
        try:
            sent["rois"] = partial(area_annotations, **_file_rois(props, files["rois.zip"]))
        except (zipfile.BadZipFile, ValueError, struct.error) as exc:
            raise ValueError(f"rois.zip is not a RoiSet: {exc}") from None
    position = tuple(int(v) for v in props.get("image.position", "1,1,1").split(","))
    if len(position) != 3:
        raise ValueError("image.position must be C,Z,T")
    return CommandInputs(_file_image(props, files, "image"), props.get("image_path") or None,
                         open_image=others.get, position=position, **sent)


def _tiff(pixels: np.ndarray, axes: str, *, lut: np.ndarray | None, top: float | None,
          channel_labels: tuple[str, ...], properties: dict[str, str]) -> bytes:
    """An ImageJ hyperstack TIFF as ImageJ's opener turns it into what the in-process command shows:
    composite mode for channels, the label LUT and display range, slice labels, Info."""
    import tifffile

    full = to_axes(pixels, axes, CANONICAL_AXES[:-1])
    keep = [i for i, a in enumerate("TZCYX") if a in "YX" or full.shape[i] > 1]
    target = "".join("TZCYX"[i] for i in keep)
    data = np.ascontiguousarray(full.reshape([full.shape[i] for i in keep]))
    nt, nz, nc = full.shape[:3]
    metadata: dict[str, Any] = {"axes": target}
    kwargs: dict[str, Any] = {}
    if nc > 1:
        metadata["mode"] = "composite"
    if lut is not None:
        metadata.update(LUTs=[lut.T.copy()] * nc, Ranges=(0.0, top) * nc, min=0.0, max=top)
        if nc == 1:  # one channel: ImageJ takes the LUT from the ColorMap tag
            kwargs["extratags"] = [(320, "H", 768, tuple(int(v) * 257 for v in lut.T.ravel()), True)]
    if channel_labels and len(channel_labels) == nc:
        metadata["Labels"] = [channel_labels[c] for _ in range(nt * nz) for c in range(nc)]
    if "Info" in properties:
        metadata["Info"] = properties["Info"]
    props = {k: v for k, v in properties.items() if k != "Info"}
    if props:
        metadata["Properties"] = props
    out = io.BytesIO()
    tifffile.imwrite(out, data, imagej=True, metadata=metadata, photometric="minisblack", **kwargs)
    return out.getvalue()


def _csv(columns: dict[str, Any]) -> bytes:
    """A table as ImageJ's ``ResultsTable.open`` reads it back row for row: a row-number column
    (heading " "), numbers in full precision, text quoted (so "12" stays text)."""
    names = list(columns)
    for name in names:
        if any(c in name for c in ',"\n'):
            raise ValueError(f"table column {name!r}: a comma, quote or line break cannot travel in a CSV heading")
    cols = []
    for name in names:
        a = np.asarray(columns[name])
        if a.dtype.kind in "biuf":
            cols.append([repr(float(v)) if np.isfinite(v) else ("NaN" if np.isnan(v) else
                         ("Infinity" if v > 0 else "-Infinity")) for v in a.astype(np.float64)])
        else:
            text = [str(v) for v in a]
            if any('"' in t or "\n" in t for t in text):
                raise ValueError(f"table column {name!r}: a quote or line break cannot travel in a CSV cell")
            cols.append([f'"{t}"' for t in text])
    rows = [",".join([" ", *names])] + [",".join([str(r + 1), *(c[r] for c in cols)]) for r in range(len(cols[0]) if cols else 0)]
    return ("\n".join(rows) + "\n").encode("utf-8")


def outputs_to_files(outputs: Any, props_in: dict[str, str] | None = None) -> bytes:
    """A :class:`~ijtorch.commands.outputs.CommandOutputs` as the shim's reply ZIP: ``image<k>.tif``,
    ``rois.zip`` (a RoiSet), ``table<k>.csv``, ``files/…`` and ``reply.properties`` (status, log
    lines, session values as JSON, titles and exact calibrations, ROI colours and properties).

    For a headless client (``headless=true`` in its request: no window, no ROI Manager) the ROIs also
    go to ``<title>_RoiSet.zip`` in the command's folder, as in-process, and ROI colours are left out."""
    headless = (props_in or {}).get("headless") == "true"
    from ..core.colors import glasbey_lut
    from ..io.roiset import default_names, write_roiset

    props: dict[str, Any] = {"status": outputs.status}
    props.update({f"log.{i}": line for i, line in enumerate(outputs.log)})
    props.update({f"value.{k}": json.dumps(v) for k, v in outputs.values.items()})
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for k, im in enumerate(outputs.images):
            if "S" in im.axes:
                raise ValueError("RGB image outputs are not sent to remote clients")
            pixels, top = _imagej_pixels(im.data, im.labels)
            zf.writestr(f"image{k}.tif", _tiff(pixels, im.axes, lut=glasbey_lut(256).astype(np.uint8) if im.labels
                                               else None, top=top, channel_labels=tuple(im.channel_labels),
                                               properties=dict(im.properties)))
            props[f"image{k}.title"] = im.title
            cal = im.calibration.to_dict()
            props.update({f"image{k}.{key}": cal[key] for key in _CAL_KEYS})
        if outputs.rois is not None:
            ol = outputs.rois.outlines
            names = list(outputs.rois.names) if outputs.rois.names else default_names(ol.labels, ol.positions, ol.axes)
            with tempfile.TemporaryDirectory(prefix="ijtorch-rois-") as tmp:
                zf.writestr("rois.zip", write_roiset(Path(tmp) / "rois.zip", ol, names=names,
                                                     properties=outputs.rois.properties).read_bytes())
            props["rois.reset"] = str(bool(outputs.rois.reset)).lower()
            if headless and outputs.files is not None and outputs.files.folder:  # the title of the target image
                title = outputs.images[-1].title if outputs.images else (props_in or {}).get("image.title", "rois")
                zf.writestr(f"files/{Path(title).stem}_RoiSet.zip", zf.read("rois.zip"))
        if outputs.roi_style is not None and not headless:
            style = outputs.roi_style
            rgb = np.asarray(style.rgb, np.uint8).reshape(-1, 3)
            for k, i in enumerate(np.asarray(style.indices).tolist()):
                props[f"style.{int(i)}"] = "#%02x%02x%02x" % tuple(int(v) for v in rgb[k])
                props.update({f"style.{int(i)}.{name}": str(values[k]) for name, values in style.properties.items()})
        for k, table in enumerate(outputs.tables):
            zf.writestr(f"table{k}.csv", _csv(dict(table.columns)))
            props[f"table{k}.title"] = table.title
        if outputs.files is not None:
            props["files.folder"] = outputs.files.folder
            with tempfile.TemporaryDirectory(prefix="ijtorch-files-") as tmp:
                outputs.files.write(Path(tmp))
                for p in sorted(p for p in Path(tmp).rglob("*") if p.is_file()):
                    zf.write(p, "files/" + p.relative_to(tmp).as_posix())
        zf.writestr("reply.properties", properties_text(props))
    return out.getvalue()


def files_function(props: dict[str, str], check_model: Callable[[str], Any]) -> bytes:
    """``Ext.<function>`` from the shim's properties (``arg.<i>`` strings, ``number.<i>`` numbers,
    ``value.<key>`` session values as JSON); the reply ZIP holds ``value`` or ``number``."""
    args: list[Any] = []
    for i in range(len(props)):
        if f"arg.{i}" in props:
            args.append(props[f"arg.{i}"])
        elif f"number.{i}" in props:
            args.append(float(props[f"number.{i}"]))
        else:
            break
    values = {k[len("value."):]: json.loads(v) for k, v in props.items() if k.startswith("value.")}
    reply = call_function(props.get("function", ""), args, values, check_model)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("reply.properties", properties_text({k: repr(float(v)) if k == "number" else v
                                                         for k, v in reply.items()}))
    return out.getvalue()
