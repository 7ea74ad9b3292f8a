"""Big images read lazily, a region at a time: a TIFF through tifffile's zarr store (only the strips
or tiles a region needs are read) or an OME-Zarr through its multiscales metadata (level 0).

A :class:`Source` says where the image is and how to pick one ``YX`` plane: the channel of a
multi-channel image, and for a z-stack (``Z`` > 1) the plane (:meth:`Source.plane`); it pickles, and
each task opens the file itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Source", "open_source", "read_region", "OME_ZARR_SUFFIXES"]

OME_ZARR_SUFFIXES = (".zarr",)


@dataclass(frozen=True)
class Source:
    """Where a big image is and how to pick its ``YX`` plane (picklable; opened in each task)."""

    kind: str                 # "tiff" or "zarr"
    path: str
    dataset: str              # zarr: the level-0 array's path in the group; tiff: "" (level 0)
    axes: str                 # axes of the stored array, upper case (e.g. "YX", "CYX", "TCZYX")
    index: tuple               # fixed index of every non-YX axis (a z-stack's Z: the plane read, see plane())
    shape: tuple[int, int]    # (Y, X)
    dtype: str
    planes: int = 1           # Z planes of a z-stack (each segmented as a 2D image), else 1

    def plane(self, z: int) -> Source:
        """The same image with plane ``z`` of its Z axis picked."""
        if not 0 <= z < self.planes:
            raise IndexError(f"plane {z}: {self.path} has {self.planes} plane(s)")
        if self.planes == 1:
            return self
        index = list(self.index)
        index[self.axes.index("Z")] = int(z)
        return replace(self, index=tuple(index))

    def array(self) -> Any:
        import zarr

        if self.kind == "tiff":
            import tifffile

            store = tifffile.imread(self.path, aszarr=True, level=0)
            node = zarr.open(store, mode="r")
        else:
            node = zarr.open(self.path, mode="r")
            if self.dataset:
                node = node[self.dataset]
        if hasattr(node, "shape"):
            return node
        return node["0"]


def _multiscales(attrs: dict) -> list:
    ome = attrs.get("ome", attrs)
    return ome.get("multiscales") or attrs.get("multiscales") or []


def open_source(path: str | os.PathLike, *, channel: int | None = None) -> Source:
    """Inspect a big TIFF or OME-Zarr (metadata only) and say how to read its ``YX`` planes.

    ``channel`` is the 0-based channel index when the image has a channel axis of more than one.
    A ``Z`` axis of more than one plane is a z-stack (segmented plane by plane); other axes (T) must
    have length 1.
    """
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in OME_ZARR_SUFFIXES:
        import zarr

        group = zarr.open_group(str(p), mode="r")
        ms = _multiscales(dict(group.attrs))
        if not ms:
            raise ValueError(f"{p}: no OME-Zarr multiscales metadata")
        axes = "".join(a["name"] if isinstance(a, dict) else str(a) for a in ms[0]["axes"]).upper()
        dataset = ms[0]["datasets"][0]["path"]
        arr = group[dataset]
        shape, dtype = tuple(arr.shape), arr.dtype
        kind = "zarr"
    else:
        import tifffile

        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            axes = series.axes.upper().replace("Q", "").replace("I", "Z")
            shape, dtype = tuple(series.shape), series.dtype
        dataset = ""
        kind = "tiff"
    if len(axes) != len(shape):
        raise ValueError(f"{p}: axes {axes!r} do not match the shape {shape}")
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{p}: axes {axes!r}: expected Y and X axes")
    index: list[Any] = []
    planes = 1
    for a, n in zip(axes, shape):
        if a in "YX":
            index.append(slice(None))
        elif a == "C" and n > 1:
            if channel is None:
                raise ValueError(f"{p} has {n} channels: choose one (channel 1..{n})")
            if not 0 <= channel < n:
                raise ValueError(f"channel {channel + 1}: {p} has {n} channel(s)")
            index.append(int(channel))
        elif a == "Z" and n > 1:
            planes = int(n)
            index.append(0)
        elif n == 1:
            index.append(0)
        else:
            raise ValueError(f"{p}: axis {a} has {n} planes; blockwise segmentation takes a 2D (YX) image or a "
                             "z-stack (ZYX)")
    if axes.index("Y") > axes.index("X"):
        raise ValueError(f"{p}: axes {axes!r}: Y must come before X")
    yx = (shape[axes.index("Y")], shape[axes.index("X")])
    return Source(kind, str(p), dataset, axes, tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i
                                                     for i in index), yx, np.dtype(dtype).str, planes)


def read_region(src: Source, y0: int, y1: int, x0: int, x1: int, *, array: Any = None) -> np.ndarray:
    """The ``[y0:y1, x0:x1]`` region of the source's plane (reads only that region)."""
    if array is None:
        array = src.array()
        try:
            return read_region(src, y0, y1, x0, x1, array=array)
        finally:
            close = getattr(getattr(array, "store", None), "close", None)
            if callable(close):
                close()
    idx = []
    for a, i in zip(src.axes, src.index):
        if a == "Y":
            idx.append(slice(y0, y1))
        elif a == "X":
            idx.append(slice(x0, x1))
        else:
            idx.append(i if isinstance(i, int) else slice(*i))
    return np.asarray(array[tuple(idx)])
