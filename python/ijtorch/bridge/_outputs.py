"""What a command takes from and hands back to ImageJ, as plain data, and how it is applied.

A command reads :class:`CommandInputs` (the current image, lazily the ROI Manager's ROIs and
other open images by title), computes :class:`CommandOutputs` from numpy data without touching
the JVM (so the server can run the very same computation for a remote Fiji), then
:func:`apply_outputs` turns it into ImageJ objects in-process. The Java shim's remote transport
(``IjtorchRemote``) sends the same inputs and applies the same outputs, received from the server,
with the same rules: label images get the label LUT, the display range ``0..max(255, largest
label)`` and the source calibration; ROIs go to the ROI Manager in bulk; ROI styles colour ROIs
already there; tables fill a ResultsTable by title; files are written into a folder of the
machine that shows the results; ``values`` are remembered for macro functions
(:func:`session_value`).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import IjtorchError
from ..image import Calibration, Image

__all__ = ["CommandInputs", "ImageOutput", "RoiOutput", "RoiStyle", "TableOutput", "FileOutput", "CommandOutputs",
           "apply_outputs", "imagej_inputs", "session_value", "client_session"]


def _no_rois() -> Any:
    raise ValueError("the ROI Manager is empty: outline objects (or add ROIs) before training")


@dataclass(frozen=True)
class CommandInputs:
    """What a command reads from ImageJ: the current image, the file it came from, and, only
    when the command asks for them, the ROI Manager's area ROIs (``rois()``, an
    :class:`~ijtorch.bridge._annotations.Annotations`) and other open images (``open_image(title)``,
    None when no image has that title)."""

    image: Image
    source_path: str | None = None
    rois: Callable[[], Any] = _no_rois
    open_image: Callable[[str], Image | None] = lambda title: None


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
class RoiStyle:
    """Colours (and string properties) for ROIs the ROI Manager holds after ``rois`` is applied:
    ROI ``indices[k]`` (0-based) gets stroke colour ``rgb[k]`` and ``properties[name][k]``."""

    indices: np.ndarray
    rgb: np.ndarray  # (n, 3) uint8
    properties: Mapping[str, Sequence[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TableOutput:
    """Equal-length columns for a ResultsTable shown under ``title``."""

    columns: Mapping[str, np.ndarray]
    title: str = "Results"


@dataclass(frozen=True)
class FileOutput:
    """Files for ``folder`` on the machine that shows the results: ``write(directory)`` writes them
    into ``directory`` (in-process the folder itself; on the server a temporary one whose files
    travel to the shim, which writes them into ``folder``)."""

    folder: str
    write: Callable[[Path], Any]


@dataclass(frozen=True)
class CommandOutputs:
    """Everything a command shows in ImageJ, plus log lines, a status line and values for macro functions."""

    images: tuple[ImageOutput, ...] = ()
    rois: RoiOutput | None = None
    tables: tuple[TableOutput, ...] = ()
    status: str = ""
    values: Mapping[str, Any] = field(default_factory=dict)
    roi_style: RoiStyle | None = None
    files: FileOutput | None = None
    log: tuple[str, ...] = ()


# ------------------------------------------------------------------ values for macro functions
_SESSION: dict[str, Any] = {}  # values of the commands applied in this ImageJ
_CLIENT_SESSION: ContextVar[Mapping[str, Any] | None] = ContextVar("ijtorch_client_session", default=None)


def session_value(key: str, missing: str) -> Any:
    """A value of the commands run in this ImageJ session (e.g. ``n_objects``); ``missing`` is the
    error message when none has set it. On the server: the values the remote shim sent."""
    values = _CLIENT_SESSION.get()
    values = _SESSION if values is None else values
    if key not in values:
        raise IjtorchError(missing)
    return values[key]


@contextmanager
def client_session(values: Mapping[str, Any]) -> Iterator[None]:
    """Let :func:`session_value` read ``values`` (a remote ImageJ's session) in this context."""
    token = _CLIENT_SESSION.set(dict(values))
    try:
        yield
    finally:
        _CLIENT_SESSION.reset(token)


# ------------------------------------------------------------------ in-process
def imagej_inputs(imp: Any) -> CommandInputs:
    """The inputs of a command run on ``imp`` in this ImageJ."""
    from ._annotations import rois_from_manager
    from ._convert import imageplus_to_numpy

    info = imp.getOriginalFileInfo()
    saved = info is not None and info.directory and info.fileName is not None
    source = str(Path(str(info.directory)) / str(info.fileName)) if saved else None

    def open_image(title: str) -> Image | None:
        from jpype import JClass

        other = JClass("ij.WindowManager").getImage(title)
        return None if other is None else imageplus_to_numpy(other)

    return CommandInputs(imageplus_to_numpy(imp), source, rois_from_manager, open_image)


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
    _SESSION.update(outputs.values)
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
