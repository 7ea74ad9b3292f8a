"""What a command takes and hands back, as plain data (no JVM).

A command reads :class:`CommandInputs` (the current image, lazily the ROI Manager's ROIs and
other open images by title, a progress listener and a cancel check) and computes
:class:`CommandOutputs` from numpy data. Each surface then applies them its own way, with the same
rules: in ImageJ :func:`ijtorch.bridge.apply.apply_outputs` (label images get the label LUT, the
display range ``0..max(255, largest label)`` and the source calibration; ROIs go to the ROI Manager
in bulk; ROI styles colour ROIs already there; tables fill a ResultsTable by title); for a remote
Fiji the server sends them as ImageJ files; the CLI writes them into its output folder. Files are
written into a folder of the machine that shows the results; ``values`` are remembered for macro
functions (:func:`session_value`).
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
           "session_value", "client_session", "remember"]


def _no_rois() -> Any:
    raise ValueError("the ROI Manager is empty: outline objects (or add ROIs) before training")


def _no_strokes() -> list:
    return []


@dataclass(frozen=True)
class CommandInputs:
    """What a command reads: the current image (None for commands that need none), the file it came
    from, and, only when the command asks for them, the ROI Manager's area ROIs (``rois()``, an
    :class:`~ijtorch.commands.annotations.Annotations`) and other open images (``open_image(title)``,
    None when no image has that title); ``progress`` receives
    :class:`~ijtorch.core.progress.ProgressEvent` s and ``cancel()`` returns True when the user asked
    to stop. ``strokes()`` gives every ROI (lines and points too) as
    :class:`~ijtorch.commands.annotations.Stroke` s; ``position`` is the current (C, Z, T) plane,
    1-based."""

    image: Image | None = None
    source_path: str | None = None
    rois: Callable[[], Any] = _no_rois
    strokes: Callable[[], list] = _no_strokes
    position: tuple[int, int, int] = (1, 1, 1)
    open_image: Callable[[str], Image | None] = lambda title: None
    progress: Callable[[Any], None] | None = None
    cancel: Callable[[], bool] | None = None


@dataclass(frozen=True)
class ImageOutput:
    """A new image to show: ``data`` in ``axes`` (from ``TZCYX``), ``labels`` picks the label LUT."""

    data: np.ndarray
    axes: str
    title: str
    calibration: Calibration = field(default_factory=Calibration)
    labels: bool = False
    properties: Mapping[str, str] = field(default_factory=dict)  # "Info" is ImageJ's Image>Show Info text
    channel_labels: tuple[str, ...] = ()  # a slice label per channel (every Z/T plane of it)


@dataclass(frozen=True)
class RoiOutput:
    """Polygon ROIs for the ROI Manager (``outlines`` is an :class:`ijtorch.tasks.outlines.Outlines`)."""

    outlines: Any
    names: tuple[str, ...] | None = None
    reset: bool = True
    properties: Mapping[str, Sequence[str]] = field(default_factory=dict)  # per ROI: Roi.setProperty(key, value)


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
    tracks: Any = None  # ijtorch Tracks: also opened in TrackMate where ImageJ has it (a real Fiji)


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


def remember(values: Mapping[str, Any]) -> None:
    """Keep the values of a command applied in this ImageJ session for :func:`session_value`."""
    _SESSION.update(values)
