"""Applying a command in this ImageJ: its inputs from ImageJ, its outputs into ImageJ objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..commands.annotations import Annotations, Stroke, area_annotations
from ..commands.outputs import CommandInputs, CommandOutputs, remember
from ..image import Image

__all__ = ["imagej_inputs", "apply_outputs", "rois_from_manager", "strokes_from_manager"]


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
    from ._results import add_rois_to_manager, labels_to_imageplus, results_table, roi_manager

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
                            reset=outputs.rois.reset)
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
    if target is not None:
        overlay = JClass("ij.gui.Overlay")()
        for roi in polygons:
            overlay.add(roi)
        target.setOverlay(overlay)
    if folder is not None:
        stem = Path(str(target.getTitle())).stem if target is not None else "rois"
        write_roiset(folder / f"{stem}_RoiSet.zip", ol.polygons, names=names, positions=pos)


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
