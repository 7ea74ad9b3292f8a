"""Applying a command in this ImageJ: its inputs from ImageJ, its outputs into ImageJ objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..commands.annotations import Annotations, area_annotations
from ..commands.outputs import CommandInputs, CommandOutputs, remember
from ..image import Image

__all__ = ["imagej_inputs", "apply_outputs", "rois_from_manager"]


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
    return CommandInputs(image, source, rois_from_manager, open_image, progress, cancel)


def apply_outputs(outputs: CommandOutputs) -> list[Any]:
    """Create the ImageJ objects of ``outputs`` in the running ImageJ; returns the shown ImagePluses."""
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
    return shown


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
    return area_annotations(polygons, names, groups, positions, types=types, is_area=is_area)
