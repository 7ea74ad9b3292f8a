"""ImageJ2 ``Dataset`` / ``ImgPlus`` ⇄ numpy, through the ImgLib2 image and its axes.

ImgLib2 dimension ``d`` is numpy axis ``ndim - 1 - d``. Axis types map onto ijtorch letters by
their label: ``X``, ``Y``, ``Z``, ``Channel`` → ``C``, ``Time`` → ``T``; any other axis type is
refused (ijtorch never guesses what an axis means). The result is reordered to ``TZCYX``
order like ``imageplus_to_numpy``. Calibration comes from each axis' ``averageScale`` and unit.

:func:`to_image` accepts an ``ImagePlus``, a ``Dataset`` or an ``ImgPlus``; :func:`like_input`
returns a result in the kind the caller passed (``Dataset`` in → ``Dataset`` out).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..image import Calibration, Image, to_axes

__all__ = ["to_image", "imgplus_to_numpy", "numpy_to_imgplus", "numpy_to_dataset", "like_input", "is_imagej2"]

_LETTER = {"X": "X", "Y": "Y", "Z": "Z", "Channel": "C", "Time": "T"}
_AXIS_NAME = {v: k for k, v in _LETTER.items()}


def _cls(name: str):
    from jpype import JClass

    return JClass(name)


def _is(obj: Any, name: str) -> bool:
    try:
        return isinstance(obj, _cls(name))
    except Exception:  # class not on the class path (embedded ImageJ has no ImageJ2)
        return False


def is_imagej2(obj: Any) -> bool:
    """True for an ImageJ2 ``Dataset`` or ``ImgPlus``."""
    return _is(obj, "net.imagej.Dataset") or _is(obj, "net.imagej.ImgPlus")


def imgplus_to_numpy(obj: Any) -> Image:
    """Copy a ``Dataset`` or ``ImgPlus`` into an :class:`ijtorch.image.Image` (axes from its metadata)."""
    from ._convert import imglib2_to_numpy

    imgplus = obj.getImgPlus() if _is(obj, "net.imagej.Dataset") else obj
    if not _is(imgplus, "net.imagej.ImgPlus"):
        raise TypeError(f"expected an ImageJ2 Dataset or ImgPlus, got {type(obj).__name__}")
    n = int(imgplus.numDimensions())
    letters, scales, units = [], {}, {}
    for d in range(n):
        axis = imgplus.axis(d)
        label = str(axis.type().getLabel())
        if label not in _LETTER:
            raise ValueError(f"ImgPlus {imgplus.getName()}: axis {d} has type {label!r}; ijtorch accepts "
                             f"{sorted(_LETTER)} (set the axis types, ijtorch does not guess them)")
        letters.append(_LETTER[label])
        try:
            scales[_LETTER[label]] = float(axis.averageScale(0.0, 1.0))
            units[_LETTER[label]] = "" if axis.unit() is None else str(axis.unit())
        except Exception:
            pass
    data = imglib2_to_numpy(imgplus.getImg())  # numpy shape = reversed ImgLib2 dimensions
    axes = "".join(reversed(letters))
    target = "".join(a for a in "TZCYX" if a in axes)
    data = to_axes(data, axes, target) if axes != target else data
    cal = Calibration(pixel_width=scales.get("X", 1.0), pixel_height=scales.get("Y", 1.0),
                      voxel_depth=scales.get("Z", 1.0), unit=units.get("X") or "pixel",
                      frame_interval=scales.get("T", 0.0) if "T" in scales else 0.0,
                      time_unit=units.get("T") or "sec")
    return Image(data=np.ascontiguousarray(data), axes=target, calibration=cal, title=str(imgplus.getName()))


def numpy_to_imgplus(data: np.ndarray, axes: str, *, name: str = "", calibration: Calibration | None = None) -> Any:
    """Wrap ``data`` (axes letters from ``TZCYX``) as a new ImgPlus with typed, calibrated axes."""
    from jpype import JArray, JClass

    from ..image import check_axes
    from ._convert import numpy_to_imglib2

    axes = check_axes(axes, data.ndim)
    if "S" in axes:
        raise ValueError(f"axes={axes!r}: RGB samples (S) have no ImgPlus axis type; split the channels first")
    img = numpy_to_imglib2(np.ascontiguousarray(data))
    Axes = JClass("net.imagej.axis.Axes")
    DefaultLinearAxis = JClass("net.imagej.axis.DefaultLinearAxis")
    cal = calibration or Calibration()
    scale = {"X": cal.pixel_width, "Y": cal.pixel_height, "Z": cal.voxel_depth, "T": cal.frame_interval or 1.0, "C": 1.0}
    unit = {"X": cal.unit, "Y": cal.unit, "Z": cal.unit, "T": cal.time_unit, "C": None}
    axis_list = []
    for letter in reversed(axes):  # ImgLib2 order = reversed numpy order
        kind = {"X": Axes.X, "Y": Axes.Y, "Z": Axes.Z, "C": Axes.CHANNEL, "T": Axes.TIME}[letter]
        axis = DefaultLinearAxis(kind, scale[letter])
        if unit[letter] and unit[letter] != "pixel":
            axis.setUnit(unit[letter])
        axis_list.append(axis)
    CalibratedAxis = JClass("net.imagej.axis.CalibratedAxis")
    return JClass("net.imagej.ImgPlus")(img, name, JArray(CalibratedAxis)(axis_list))


def numpy_to_dataset(data: np.ndarray, axes: str, *, context_of: Any, name: str = "",
                     calibration: Calibration | None = None) -> Any:
    """A new Dataset in the SciJava context of ``context_of`` (a Dataset or gateway)."""
    imgplus = numpy_to_imgplus(data, axes, name=name, calibration=calibration)
    context = context_of.context() if hasattr(context_of, "context") else context_of.getContext()
    service = context.service(_cls("net.imagej.DatasetService"))
    return service.create(imgplus)


def to_image(obj: Any) -> Image:
    """An ``ImagePlus``, ``Dataset`` or ``ImgPlus`` as an :class:`ijtorch.image.Image`."""
    if is_imagej2(obj):
        return imgplus_to_numpy(obj)
    from ._convert import imageplus_to_numpy

    return imageplus_to_numpy(obj)


def like_input(data: np.ndarray, axes: str, like: Any, *, name: str = "",
               calibration: Calibration | None = None) -> Any:
    """``data`` as the same kind of object as ``like``: Dataset, ImgPlus or ImagePlus."""
    if _is(like, "net.imagej.Dataset"):
        return numpy_to_dataset(data, axes, context_of=like, name=name, calibration=calibration)
    if _is(like, "net.imagej.ImgPlus"):
        return numpy_to_imgplus(data, axes, name=name, calibration=calibration)
    from ._convert import numpy_to_imageplus

    return numpy_to_imageplus(data, axes, title=name, calibration=calibration)
