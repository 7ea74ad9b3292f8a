"""ImageJ-hyperstack TIFF files via tifffile (``shared/docs/formats.md`` section 3).

Writing
    Data are reordered from the caller's ``axes`` to ImageJ's plane order ``TZCYX`` (``S`` last
    for RGB), absent axes dropped. Calibration goes to X/YResolution (pixels per unit) and the
    ``unit``, ``spacing``, ``finterval`` and ``tunit`` keys; ``µm`` is written as ``um`` (ASCII),
    which ImageJ reads back as ``µm``.
    Files are written to a temporary file in the same folder and moved into place, and a path
    equal to the ``source`` argument (the image's input file) is refused.

Dtypes, one table (nothing is ever rescaled):

=====================  ======================================================================
numpy dtype            written as
=====================  ======================================================================
uint8, uint16, float32 the same (ImageJ 8-, 16-, 32-bit); uint8 with ``S`` = 3 is RGB
int16                  the same (ImageJ shows 16-bit with a −32768 calibration offset)
other integer dtypes   uint16 if all values lie in 0…65535 (label maps), else float32 if all
                       are whole numbers of magnitude ≤ 2**24, else ValueError
bool, float64, others  ValueError naming the dtype (cast explicitly first)
=====================  ======================================================================

Reading
    :func:`read_tiff` returns an :class:`ijtorch.image.Image` with tifffile's axes (ImageJ
    hyperstacks report ``TZCYX`` subsets). A plain multi-page TIFF without ImageJ metadata has
    its page axis reported as ``Z``, as ImageJ opens such a file as a stack of slices.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .atomic import atomic_path
from ..image import CANONICAL_AXES, Calibration, Image, check_axes

__all__ = ["write_imagej_tiff", "read_tiff", "imagej_dtype"]

log = logging.getLogger(__name__)

_NATIVE = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32), np.dtype(np.int16))
_MICRON = ("µm", "\u00b5m", "\u03bcm", "um", "micron", "microns")


def imagej_dtype(data: np.ndarray) -> np.dtype:
    """The dtype :func:`write_imagej_tiff` stores ``data`` as (see the module's table).

    Raises
    ------
    ValueError
        If ImageJ has no lossless representation for ``data``'s dtype and values.
    """
    dt = np.asarray(data).dtype
    if dt in _NATIVE:
        return dt
    if dt.kind in "ui":
        if data.size == 0:
            return np.dtype(np.uint16)
        lo, hi = int(data.min()), int(data.max())
        if lo >= 0 and hi <= 65535:
            return np.dtype(np.uint16)
        if max(abs(lo), abs(hi)) <= 2**24:
            return np.dtype(np.float32)
        raise ValueError(f"data: integer values {lo}..{hi} (dtype {dt}) fit neither uint16 nor exactly in float32; "
                         "ImageJ TIFF supports uint8, uint16, int16 and float32")
    raise ValueError(f"data: dtype {dt} is not supported by ImageJ TIFF (uint8, uint16, int16, float32, "
                     "and integer label maps); cast it explicitly, e.g. data.astype(np.float32)")


def _ascii_unit(unit: str, arg: str) -> str:
    if unit in _MICRON:
        return "um"  # ImageJ turns "um" into "µm"; 1.53t keeps "micron" as the literal word
    unit = unit.replace("\u00b5", "u").replace("\u03bc", "u")
    if not unit.isascii():
        raise ValueError(f"calibration: {arg}={unit!r} is not ASCII, which the TIFF description requires")
    return unit


def _check_lut(lut, n_channels: int) -> list[np.ndarray]:
    luts = [lut] if isinstance(lut, np.ndarray) or (not isinstance(lut, (list, tuple))) else list(lut)
    if luts and np.asarray(luts[0]).ndim == 1:  # a single (3, 256)-like nested list
        luts = [lut]
    out = []
    for item in luts:
        a = np.asarray(item)
        if a.shape == (256, 3):
            a = a.T
        if a.shape != (3, 256) or a.dtype != np.uint8:
            raise ValueError(f"lut must be uint8 of shape (3, 256) or (256, 3), got {a.dtype} {a.shape}")
        out.append(np.ascontiguousarray(a))
    if len(out) == 1 and n_channels > 1:
        out = out * n_channels
    if len(out) != n_channels:
        raise ValueError(f"lut: expected one LUT or {n_channels} (one per channel), got {len(out)}")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def write_imagej_tiff(path: str | os.PathLike, data: np.ndarray, axes: str, *,
                      calibration: Calibration | dict | None = None, lut=None,
                      display_range: tuple[float, float] | None = None,
                      source: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
                      overwrite: bool = True) -> Path:
    """Write ``data`` as an ImageJ hyperstack TIFF, atomically.

    Parameters
    ----------
    path
        Output file (``.tif``/``.tiff``).
    data
        Image or label map; dtypes as in the module's table.
    axes
        Axes of ``data`` from ``TZCYXS`` (``S`` = RGB samples, last); Y and X required.
    calibration
        Pixel size, z spacing, frame interval and their units (:class:`~ijtorch.image.Calibration`
        or its dict form); omitted = uncalibrated.
    lut
        ``(3, 256)`` or ``(256, 3)`` uint8 colour table, one for all channels or one per channel
        (e.g. :func:`ijtorch.core.colors.imagej_lut` for label maps).
    display_range
        ``(min, max)`` display range stored for every channel.
    source
        Input file(s) the data came from; writing to any of them raises ValueError.
    overwrite
        If False, an existing ``path`` raises FileExistsError.

    Returns
    -------
    Path
        The written file.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"path must end in .tif or .tiff, got {str(path)!r}")
    if source is not None:
        sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        for s in sources:
            if _same_file(path, Path(s)):
                raise ValueError(f"path={str(path)!r} is the input file (source); refusing to overwrite it — "
                                 "choose another output path")
    if not overwrite and path.exists():
        raise FileExistsError(f"path={str(path)!r} exists and overwrite=False")
    if not path.parent.is_dir():
        raise ValueError(f"path: folder {str(path.parent)!r} does not exist")
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    axes = check_axes(axes, data.ndim)
    dtype = imagej_dtype(data)
    if "S" in axes and (dtype != np.uint8 or data.shape[-1] != 3):
        raise ValueError(f"axes={axes!r}: RGB data (S axis) must be uint8 with 3 samples, "
                         f"got {data.dtype} with {data.shape[-1]}")
    target = "".join(a for a in CANONICAL_AXES if a in axes)
    out = np.transpose(data, [axes.index(a) for a in target])
    out = np.ascontiguousarray(out, dtype=dtype)
    cal = calibration if isinstance(calibration, Calibration) else Calibration.from_dict(calibration)
    metadata: dict = {"axes": target}
    kwargs: dict = {}
    if calibration is not None:
        if cal.pixel_width <= 0 or cal.pixel_height <= 0 or cal.voxel_depth <= 0:
            raise ValueError(f"calibration: pixel sizes must be > 0, got {cal}")
        kwargs["resolution"] = (1.0 / cal.pixel_width, 1.0 / cal.pixel_height)
        metadata["unit"] = _ascii_unit(cal.unit, "unit")
        metadata["spacing"] = float(cal.voxel_depth)
        if cal.frame_interval > 0:
            metadata["finterval"] = float(cal.frame_interval)
        metadata["tunit"] = _ascii_unit(cal.time_unit, "time_unit")
    n_channels = out.shape[target.index("C")] if "C" in target else 1
    if lut is not None:
        if "S" in target:
            raise ValueError("lut cannot be used with RGB data (S axis)")
        metadata["LUTs"] = _check_lut(lut, n_channels)
        if n_channels == 1:
            # ImageJ reads per-channel LUTs only for multi-channel (composite) images; a single
            # channel takes its LUT from the TIFF ColorMap tag (768 uint16, high byte used).
            cmap = metadata["LUTs"][0].astype(np.uint16) * 257
            kwargs["extratags"] = [(320, "H", 768, tuple(int(v) for v in cmap.ravel()), True)]
    if display_range is not None:
        lo, hi = map(float, display_range)
        if not hi > lo:
            raise ValueError(f"display_range must be (min, max) with max > min, got {display_range}")
        metadata["Ranges"] = (lo, hi) * n_channels
        metadata["min"], metadata["max"] = lo, hi
    if dtype != data.dtype:
        log.info("writing %s data as %s (lossless; ImageJ TIFF has no %s)", data.dtype, dtype, data.dtype)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, out, imagej=True, metadata=metadata, photometric="rgb" if "S" in target else
                         "minisblack", **kwargs)
    log.info("wrote %s %s %s to %s", target, out.shape, dtype, path)
    return path


def read_tiff(path: str | os.PathLike) -> Image:
    """Read a TIFF (ImageJ hyperstack or plain) into an :class:`~ijtorch.image.Image`.

    Parameters
    ----------
    path
        The file to read; its first series is returned.

    Returns
    -------
    Image
        Data with axes from tifffile (``I``/``Q`` page axes reported as ``Z``), the calibration
        from ImageJ metadata and resolution tags, and the file name stem as title.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: {str(path)!r} is not a file")
    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        data = series.asarray()
        axes = series.axes.upper().replace("I", "Z").replace("Q", "Z")
        ij = tf.imagej_metadata or {}
        page = tf.pages[0]
        unit = _read_unit(page, ij)
        xres = _resolution(page, "XResolution") if unit else None
        yres = _resolution(page, "YResolution") if unit else None
    bad = [a for a in axes if a not in CANONICAL_AXES]
    if bad or len(set(axes)) != len(axes):
        raise ValueError(f"{str(path)!r}: cannot map tifffile axes {series.axes!r} onto TZCYXS")
    if "S" in axes and axes[-1] != "S":  # planar RGB
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    cal = Calibration(
        pixel_width=1.0 / xres if xres else 1.0,
        pixel_height=1.0 / yres if yres else (1.0 / xres if xres else 1.0),
        voxel_depth=float(ij.get("spacing", 1.0)),
        unit=unit or "pixel",
        frame_interval=float(ij.get("finterval", 0.0)),
        time_unit=str(ij.get("tunit", "sec")),
    )
    return Image(data=data, axes=axes, calibration=cal, title=path.stem)


def _resolution(page, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value
    return num / den if num and den else None


def _read_unit(page, ij: dict) -> str | None:
    """The length unit, or None when the file is uncalibrated."""
    if "unit" in ij:
        unit = str(ij["unit"]).replace("\\u00B5", "\u00b5")
        return "\u00b5m" if unit in _MICRON or unit.lower() in ("micron", "microns") else unit
    ru = page.tags.get("ResolutionUnit")
    code = int(ru.value) if ru is not None else 1
    return {2: "inch", 3: "cm"}.get(code)
