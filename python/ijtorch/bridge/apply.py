"""Applying a command in this ImageJ: its inputs from ImageJ, its outputs into ImageJ objects.

Inputs: the current image as numpy (:func:`imagej_inputs`), the ROI Manager's ROIs and strokes
(read only when the command asks). Outputs (:func:`apply_outputs`):

- :func:`labels_to_imageplus`: a label map as a 16-bit image (32-bit float beyond 65535
  labels) with a distinct-colour LUT, the source calibration and a display range that shows
  the labels.
- :func:`add_rois_to_manager`: one POLYGON roi per object into the (visible) ROI Manager, in
  bulk through ``ijtorch.IjtorchRois`` (10 000 ROIs in well under a second, where
  ``RoiManager.addRoi`` one by one takes many seconds).
- :func:`results_table`: equal-length numpy columns into a ``ResultsTable``, shown by title.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..commands.annotations import Annotations, Stroke, area_annotations
from ..commands.outputs import CommandInputs, CommandOutputs, remember
from ..core.colors import glasbey_lut
from ..core.labels import as_label_array
from ..image import Calibration, Image, check_axes
from ..tasks.outlines import Outlines
from ._convert import numpy_to_imageplus
from ._runtime import runtime

__all__ = ["imagej_inputs", "apply_outputs", "rois_from_manager", "strokes_from_manager", "labels_to_imageplus",
           "add_rois_to_manager", "roi_manager", "results_table", "label_lut"]



def imagej_inputs(imp: Any, *, progress: Callable[[Any], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> CommandInputs:
    """The inputs of a command run on ``imp`` (None: no image is open) in this ImageJ."""
    from ._convert import imageplus_to_numpy

    info = imp.getOriginalFileInfo() if imp is not None else None
    saved = info is not None and info.directory and info.fileName is not None
    source = str(Path(str(info.directory)) / str(info.fileName)) if saved else None

    def open_image(title: str) -> Image | None:
        from jpype import JClass

        other = JClass("ij.WindowManager").getImage(title)
        return None if other is None else imageplus_to_numpy(other)

    image = imageplus_to_numpy(imp) if imp is not None else None
    position = (int(imp.getC()), int(imp.getZ()), int(imp.getT())) if imp is not None else (1, 1, 1)
    return CommandInputs(image, source, rois=rois_from_manager, strokes=strokes_from_manager, position=position,
                         open_image=open_image, progress=progress, cancel=cancel)


def apply_outputs(outputs: CommandOutputs, source: Any = None) -> list[Any]:
    """Create the ImageJ objects of ``outputs`` in the running ImageJ; returns the shown ImagePluses.

    ``source``: the image the command ran on (tracks open in TrackMate on it)."""
    from jpype import JClass

    from ._convert import numpy_to_imageplus

    # Headless (java.awt.headless=true: Fiji --headless, a node without X) no window can exist: images
    # become ImageJ's current, non-displayed images; ROIs go onto the result's overlay and into
    # <title>_RoiSet.zip, tables stay ImageJ objects and are saved as <title>.csv, next to the
    # command's other files when it writes any.
    headless = bool(JClass("java.awt.GraphicsEnvironment").isHeadless())
    folder = Path(outputs.files.folder) if outputs.files is not None and outputs.files.folder else None
    shown = []
    for im in outputs.images:
        if im.labels:
            imp = labels_to_imageplus(im.data, im.axes, calibration=im.calibration, title=im.title)
        else:
            imp = numpy_to_imageplus(im.data, im.axes, title=im.title, calibration=im.calibration)
            imp.resetDisplayRange()
        _label_image(imp, im)
        _show(imp, headless)
        shown.append(imp)
    if outputs.rois is not None and headless:
        _rois_headless(outputs.rois, shown[-1] if shown else JClass("ij.WindowManager").getCurrentImage(), folder)
    elif outputs.rois is not None:
        add_rois_to_manager(outputs.rois.outlines, names=list(outputs.rois.names) if outputs.rois.names else None,
                            reset=outputs.rois.reset, properties=getattr(outputs.rois, "properties", None))
    if outputs.roi_style is not None and not headless:
        style, rm, Color = outputs.roi_style, roi_manager(), JClass("java.awt.Color")
        for k, i in enumerate(np.asarray(style.indices).tolist()):
            roi = rm.getRoi(int(i))
            roi.setStrokeColor(Color(*(int(v) for v in style.rgb[k])))
            for name, values in style.properties.items():
                roi.setProperty(name, str(values[k]))
        current = JClass("ij.WindowManager").getCurrentImage()
        if current is not None:
            current.updateAndDraw()
    for table in outputs.tables:
        rt = results_table(table.columns, title=table.title, show=not headless)
        if headless and folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            rt.saveAs(str(folder / f"{table.title}.csv"))
    if outputs.files is not None:
        outputs.files.write(Path(outputs.files.folder))
    IJ = JClass("ij.IJ")
    for line in outputs.log:
        IJ.log(line)
    if outputs.status:
        IJ.showStatus(outputs.status)
    remember(outputs.values)
    if outputs.tracks is not None and source is not None:
        from ._trackmate import open_in_trackmate

        open_in_trackmate(outputs.tracks, source)  # in a Fiji with TrackMate the model opens there; else a no-op
    return shown


def _label_image(imp, im) -> None:
    """An output's properties (``Info``: Image>Show Info) and per-channel slice labels."""
    for key, value in im.properties.items():
        imp.setProperty("Info", value) if key == "Info" else imp.setProp(key, value)
    if im.channel_labels and int(imp.getNChannels()) == len(im.channel_labels):
        stack = imp.getStack()
        for c, label in enumerate(im.channel_labels, start=1):
            for z in range(1, int(imp.getNSlices()) + 1):
                for t in range(1, int(imp.getNFrames()) + 1):
                    stack.setSliceLabel(label, int(imp.getStackIndex(c, z, t)))


def _show(imp, headless: bool) -> None:
    """``imp.show()``; headless, ImageJ's current image without a window (as batch mode keeps it)."""
    from jpype import JClass

    if headless and JClass("ij.IJ").getInstance() is None:
        JClass("ij.WindowManager").setTempCurrentImage(imp)
        if not JClass("ij.macro.Interpreter").isBatchMode():
            JClass("ij.macro.Interpreter").addBatchModeImage(imp)
    else:
        imp.show()


def _rois_headless(rois, target, folder: Path | None) -> None:
    """Headless ROIs: polygons on ``target``'s overlay (what ``Overlay``/``roiManager`` macros can
    still reach) and, with a folder, ``<title>_RoiSet.zip`` in it."""
    from jpype import JArray, JClass, JFloat, JInt, JString

    from ..io.roiset import _check_names, _check_positions, default_names, write_roiset

    ol = rois.outlines
    n = len(ol)
    names = _check_names(default_names(ol.labels, ol.positions, ol.axes) if not rois.names else list(rois.names), n)
    pos = _check_positions(ol.positions, n)
    coords = ol.coords
    integer = bool(n == 0 or (np.all(coords == np.round(coords)) and np.abs(coords).max() < 2 ** 24))
    polygons = JClass("ijtorch.IjtorchRois").polygons(
        JArray(JFloat)(np.ascontiguousarray(coords[:, 0], dtype=np.float32)),
        JArray(JFloat)(np.ascontiguousarray(coords[:, 1], dtype=np.float32)),
        JArray(JInt)(ol.offsets.astype(np.int32)), JArray(JString)(names),
        *(JArray(JInt)(np.ascontiguousarray(pos[:, k], dtype=np.int32)) for k in range(3)), integer)
    properties = dict(getattr(rois, "properties", None) or {})
    _set_properties(list(polygons), properties)
    if target is not None:
        overlay = JClass("ij.gui.Overlay")()
        for roi in polygons:
            overlay.add(roi)
        target.setOverlay(overlay)
    if folder is not None:
        stem = Path(str(target.getTitle())).stem if target is not None else "rois"
        write_roiset(folder / f"{stem}_RoiSet.zip", ol.polygons, names=names, positions=pos, properties=properties)


def _set_properties(rois: Sequence[Any], properties: Mapping[str, Sequence[str]] | None) -> None:
    """``Roi.setProperty(key, values[k])`` on ``rois[k]`` (what ``Roi.getProperty(key)`` reads in a
    macro and the RoiEncoder saves), e.g. each segmented object's ``confidence``."""
    for key, values in (properties or {}).items():
        if len(values) != len(rois):
            raise ValueError(f"properties[{key!r}]: {len(values)} values for {len(rois)} ROIs")
        for roi, value in zip(rois, values):
            roi.setProperty(key, str(value))


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
    return area_annotations(polygons, names, groups, positions, types=types, is_area=is_area,
                            group_names={g: _group_name(g) for g in set(groups) if g and _group_name(g)})


def _group_name(g: int) -> str:
    """ImageJ's name of ROI group ``g`` ("" where none is set, or in an ImageJ without group names)."""
    from jpype import JClass

    try:
        name = JClass("ij.gui.Roi").getGroupName(g)
    except Exception:  # noqa: BLE001 - older ImageJ has no group names
        name = None
    return str(name) if name else ""


def strokes_from_manager(manager=None) -> list[Stroke]:
    """Every ROI of the ROI Manager as a :class:`~ijtorch.commands.annotations.Stroke`: areas as
    ImageJ's own masks, straight lines by their end points, other lines and points by their points."""
    from jpype import JClass

    RoiManager, Roi = JClass("ij.plugin.frame.RoiManager"), JClass("ij.gui.Roi")
    rm = manager if manager is not None else RoiManager.getInstance()
    rois = list(rm.getRoisAsArray()) if rm is not None else []
    strokes = []
    for i, roi in enumerate(rois):
        name = str(roi.getName()) if roi.getName() is not None else f"roi_{i + 1}"
        group = int(roi.getGroup())
        common = dict(name=name, group=group, position=int(roi.getPosition()),
                      group_name=_group_name(group) if group else "")
        t = int(roi.getType())
        if roi.isArea():
            b = roi.getBounds()
            mp = roi.getMask()
            if mp is None:
                mask = np.ones((int(b.height), int(b.width)), bool)
            else:
                mask = (np.asarray(mp.getPixels(), dtype=np.int8).reshape(int(mp.getHeight()), int(mp.getWidth())) != 0)
            strokes.append(Stroke(kind="area", mask=mask, origin=(int(b.x), int(b.y)), **common))
        elif t == int(Roi.LINE):
            xy = np.array([[roi.x1d, roi.y1d], [roi.x2d, roi.y2d]], dtype=np.float64)
            strokes.append(Stroke(kind="line", xy=xy, width=float(roi.getStrokeWidth()), **common))
        else:
            poly = roi.getFloatPolygon()
            n = int(poly.npoints)
            xy = np.column_stack([np.asarray(poly.xpoints[:n], np.float64), np.asarray(poly.ypoints[:n], np.float64)])
            kind = "points" if t == int(Roi.POINT) else "line"
            strokes.append(Stroke(kind=kind, xy=xy, width=float(roi.getStrokeWidth()), **common))
    return strokes


# ------------------------------------------------------------------- ImageJ objects from results
log = logging.getLogger(__name__)

_FLOAT32_EXACT_INT = 2 ** 24


def label_lut() -> Any:
    """The glasbey-like label LUT as an ``ij.process.LUT`` (entry 0 black)."""
    runtime()
    from jpype import JArray, JByte, JClass

    rgb = glasbey_lut(256).astype(np.int8)  # Java bytes are signed; the bits are what matter
    return JClass("ij.process.LUT")(*(JArray(JByte)(np.ascontiguousarray(rgb[:, k])) for k in range(3)))


def _java_calibration(calibration: Any) -> Any | None:
    """An ``ij.measure.Calibration`` given as one, or from an ``ImagePlus``; else None."""
    if calibration is None or isinstance(calibration, (Calibration, dict)):
        return None
    if hasattr(calibration, "getCalibration"):
        return calibration.getCalibration()
    if hasattr(calibration, "pixelWidth") and hasattr(calibration, "getUnit"):
        return calibration
    raise TypeError(f"calibration must be an ijtorch.image.Calibration, a dict, an ij.measure.Calibration "
                    f"or an ImagePlus, got {type(calibration).__name__}")


def labels_to_imageplus(labels: np.ndarray, axes: str, *, calibration: Any = None, title: str = "labels") -> Any:
    """A label map as an ImageJ image with distinct label colours.

    Parameters
    ----------
    labels
        Label map (0 = background), integer or whole-number float, values >= 0.
    axes
        Axes of ``labels`` from ``TZCYX``.
    calibration
        :class:`~ijtorch.image.Calibration` (or dict), or the source image's
        ``ij.measure.Calibration`` / ``ImagePlus``, whose calibration is copied.
    title
        Image title.

    Returns
    -------
    ij.ImagePlus
        16-bit when the largest label is <= 65535, else 32-bit float (exact up to 2**24);
        glasbey LUT; display range 0..max(255, largest label) so label ``k`` <= 255 gets LUT
        entry ``k``. Not shown.
    """
    labels = as_label_array(labels)
    axes = check_axes(axes, labels.ndim)
    if "S" in axes:
        raise ValueError(f"axes={axes!r}: a label map cannot have an S (RGB samples) axis")
    top = int(labels.max()) if labels.size else 0
    if top <= 65535:
        data = labels.astype(np.uint16, copy=False)
    elif top <= _FLOAT32_EXACT_INT:
        data = labels.astype(np.float32)
    else:
        raise ValueError(f"labels: largest label {top} exceeds 2**24, which 32-bit float cannot hold exactly")
    java_cal = _java_calibration(calibration)
    imp = numpy_to_imageplus(data, axes, title=title, calibration=None if java_cal is not None else calibration)
    if java_cal is not None:
        imp.setCalibration(java_cal.copy())
    lut = label_lut()
    hi = float(max(255, top))
    if imp.isComposite():
        for c in range(1, imp.getNChannels() + 1):
            imp.setChannelLut(lut, c)
            imp.setC(c)
            imp.setDisplayRange(0.0, hi)
        imp.setC(1)
    else:
        imp.setLut(lut)
        imp.setDisplayRange(0.0, hi)
    return imp


def roi_manager() -> Any:
    """The ROI Manager ImageJ's own commands use: the open window's, else a new visible one."""
    runtime()
    from jpype import JClass

    RoiManager = JClass("ij.plugin.frame.RoiManager")
    rm = RoiManager.getInstance()
    return rm if rm is not None else RoiManager()


def add_rois_to_manager(outlines: Outlines, *, names: Sequence[str] | None = None,
                        positions: np.ndarray | None = None, reset: bool = False,
                        manager: Any = None, properties: Mapping[str, Sequence[str]] | None = None) -> Any:
    """Add one POLYGON roi per outline to the ROI Manager, in bulk.

    Parameters
    ----------
    outlines
        Polygons from :func:`ijtorch.tasks.outlines.outlines`.
    names
        One name per ROI (also the ROI Manager label); default
        :func:`ijtorch.io.roiset.default_names` (``label_0001``; plane suffixes on stacks).
    positions
        ``(n, 3)`` C, Z, T positions, 1-based, 0 = unset; default ``outlines.positions``. ROIs
        with any position set get ``Roi.setPosition(c, z, t)``.
    reset
        Empty the manager first.
    manager
        A ``RoiManager`` to fill; default :func:`roi_manager` (the visible one).
    properties
        ``{key: one string per ROI}`` set with ``Roi.setProperty`` (e.g. ``confidence``, see
        :func:`ijtorch.io.roiset.confidence_properties`); macros read them with ``Roi.getProperty``.

    Returns
    -------
    ij.plugin.frame.RoiManager
        The manager, holding the new ROIs after any it held before.
    """
    from ..io.roiset import _check_names, _check_positions, default_names

    if not isinstance(outlines, Outlines):
        raise TypeError(f"outlines must be an ijtorch.tasks.outlines.Outlines, got {type(outlines).__name__}")
    n = len(outlines)
    names = _check_names(default_names(outlines.labels, outlines.positions, outlines.axes)
                         if names is None else names, n)
    pos = _check_positions(outlines.positions if positions is None else positions, n)
    rm = roi_manager() if manager is None else manager
    from jpype import JArray, JClass, JInt, JFloat, JString

    coords = outlines.coords
    integer = bool(n == 0 or (np.all(coords == np.round(coords)) and np.abs(coords).max() < 2 ** 24))
    xs = JArray(JFloat)(np.ascontiguousarray(coords[:, 0], dtype=np.float32))
    ys = JArray(JFloat)(np.ascontiguousarray(coords[:, 1], dtype=np.float32))
    offsets = JArray(JInt)(outlines.offsets.astype(np.int32))
    c, z, t = (JArray(JInt)(np.ascontiguousarray(pos[:, k], dtype=np.int32)) for k in range(3))
    jnames = JArray(JString)(names)
    before = 0 if reset else int(rm.getCount())
    after = int(JClass("ijtorch.IjtorchRois").addPolygons(rm, xs, ys, offsets, jnames, c, z, t, integer, reset))
    if after != before + n:
        raise RuntimeError(f"ROI Manager holds {after} ROIs after adding {n} to {before}")
    if properties:
        _set_properties([rm.getRoi(i) for i in range(before, after)], properties)
    log.debug("added %d polygon ROIs to the ROI Manager (%d in total)", n, after)
    return rm


def results_table(columns: Mapping[str, Any], title: str = "Results", *, show: bool = True) -> Any:
    """Put equal-length columns into an ImageJ ``ResultsTable`` and show it.

    Parameters
    ----------
    columns
        Column name → 1-D array (numbers, or strings for text columns), all the same length,
        e.g. the output of :func:`ijtorch.tasks.measure.measure`.
    title
        Window title. ``"Results"`` fills ImageJ's system table (what Measure and
        ``nResults``/``getResult`` in macros use), replacing its content.
    show
        Show the table window.

    Returns
    -------
    ij.measure.ResultsTable
    """
    if not isinstance(title, str) or not title:
        raise ValueError(f"title must be a non-empty string, got {title!r}")
    if not columns:
        raise ValueError("columns must hold at least one column")
    arrays = {}
    n = None
    for name, values in columns.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"columns: column names must be non-empty strings, got {name!r}")
        a = np.asarray(values)
        if a.ndim != 1:
            raise ValueError(f"columns[{name!r}] must be 1-D, got shape {a.shape}")
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise ValueError(f"columns[{name!r}] has {a.shape[0]} rows, expected {n} like the first column")
        if a.dtype.kind not in "biufUSO":
            raise ValueError(f"columns[{name!r}]: dtype {a.dtype} is neither numeric nor text")
        arrays[name] = a
    runtime()
    from jpype import JArray, JClass, JDouble

    ResultsTable = JClass("ij.measure.ResultsTable")
    rt = ResultsTable.getResultsTable() if title == "Results" else ResultsTable()
    rt.reset()
    for name, a in arrays.items():
        if a.dtype.kind in "biuf":
            rt.setValues(name, JArray(JDouble)(np.ascontiguousarray(a, dtype=np.float64)))
        else:
            for row, text in enumerate(a.astype(str)):
                rt.setValue(name, row, str(text))
    if show:
        rt.show(title)
    return rt
