"""Images as the task layer sees them: a numpy array, an axes string and a calibration.

Axes are letters from ``TZCYX`` (plus ``S`` for RGB samples, last) in the array's order, and are
never guessed from shapes. ImageJ orders planes with C fastest, then Z, then T, so the canonical
hyperstack layout is ``TZCYX``; absent axes are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Calibration", "Image", "check_axes", "pixel_values", "to_axes", "rgb_as_channel_axes", "CANONICAL_AXES"]

CANONICAL_AXES = "TZCYXS"


@dataclass(frozen=True)
class Calibration:
    """Physical calibration of an image (ImageJ's ``Calibration`` fields that matter here)."""

    pixel_width: float = 1.0
    pixel_height: float = 1.0
    voxel_depth: float = 1.0
    unit: str = "pixel"
    frame_interval: float = 0.0
    time_unit: str = "sec"

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict | None) -> "Calibration":
        if not values:
            return cls()
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"calibration: unknown keys {sorted(unknown)}; accepted: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)


def rgb_as_channel_axes(axes: str) -> str:
    """Axes with an RGB sample axis ``S`` read as the channel axis ``C`` (red, green, blue: the
    channels ImageJ's Make Composite gives), in place, so the data need no copy (pixel classifiers
    learn from colour this way: H&E tissue types, stains). An image with both ``C`` and ``S`` is
    refused."""
    if "S" not in axes:
        return axes
    if "C" in axes:
        raise ValueError(f"axes={axes!r}: an image with both channels (C) and RGB samples (S) is not supported")
    return axes.replace("S", "C")


def pixel_values(data: np.ndarray) -> np.ndarray:
    """An image's pixels as the tasks take them: integer or float (``TypeError`` otherwise; a boolean
    mask reads as 0/1 ``uint8``), with NaN and ±inf replaced by the lowest finite value (a copy;
    the input is untouched). ImageJ's "NaN background", masked and registered images leave NaN where
    there is no data; left in, one NaN makes every percentile, and so every normalised pixel, NaN.
    An image with no finite value becomes zeros."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise TypeError(f"data has dtype {data.dtype}; expected an integer or float image")
    if not np.issubdtype(data.dtype, np.floating):
        return data
    bad = ~np.isfinite(data)
    if not bad.any():
        return data
    finite = data[~bad]
    out = data.copy()
    out[bad] = finite.min() if finite.size else 0
    return out


def check_axes(axes: str, ndim: int, *, arg_name: str = "axes") -> str:
    """Validate an axes string against an array's dimensionality and return it upper-cased."""
    if not isinstance(axes, str):
        raise TypeError(f"{arg_name} must be a string such as 'YX' or 'TZCYX', got {type(axes).__name__}")
    axes = axes.upper()
    bad = [a for a in axes if a not in CANONICAL_AXES]
    if bad:
        raise ValueError(f"{arg_name}={axes!r}: unknown axis letters {bad}; allowed letters are {CANONICAL_AXES}")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{arg_name}={axes!r}: an axis letter appears twice")
    if len(axes) != ndim:
        raise ValueError(f"{arg_name}={axes!r} has {len(axes)} letters but the array has {ndim} dimensions")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{arg_name}={axes!r}: Y and X are required")
    if "S" in axes and axes[-1] != "S":
        raise ValueError(f"{arg_name}={axes!r}: S (RGB samples) must be the last axis")
    return axes


def to_axes(data: np.ndarray, axes: str, target: str) -> np.ndarray:
    """Reorder ``data`` from ``axes`` to ``target``; missing target axes are added with length 1.

    Axes present in ``axes`` but absent from ``target`` must have length 1 (they are dropped).
    Returns a view where possible.
    """
    axes = check_axes(axes, data.ndim)
    for a in axes:
        if a not in target:
            if data.shape[axes.index(a)] != 1:
                raise ValueError(f"cannot drop axis {a!r} of length {data.shape[axes.index(a)]} going from {axes!r} to {target!r}")
    keep = [i for i, a in enumerate(axes) if a in target]
    data = data.squeeze(axis=tuple(i for i in range(len(axes)) if i not in keep)) if len(keep) < len(axes) else data
    present = "".join(a for a in axes if a in target)
    order = [present.index(a) for a in target if a in present]
    data = np.transpose(data, order)
    shape = [data.shape[[a for a in target if a in present].index(a)] if a in present else 1 for a in target]
    return data.reshape(shape)


@dataclass(frozen=True)
class Image:
    """An image with named axes and calibration, plus free-form metadata (title, source path)."""

    data: np.ndarray
    axes: str
    calibration: Calibration = field(default_factory=Calibration)
    title: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", check_axes(self.axes, self.data.ndim))

    def size(self, axis: str) -> int:
        return self.data.shape[self.axes.index(axis)] if axis in self.axes else 1

    def with_data(self, data: np.ndarray, axes: str | None = None) -> "Image":
        return replace(self, data=data, axes=axes or self.axes)
