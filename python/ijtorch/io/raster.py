"""PNG, JPEG, BMP, GIF and WebP images (what slide scanners' exports, cameras and web tools write),
read with Pillow into an :class:`~ijtorch.image.Image`: grey as ``YX``, colour as ``YXS`` (RGB; an
alpha channel is dropped, a palette expanded), 16-bit grey PNGs as ``uint16``, the frames of an
animated GIF/WebP/PNG along ``T``. These formats carry no microscope calibration (their DPI is a
printing resolution), so the image is uncalibrated (pixel units), as ImageJ opens them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..image import Image

__all__ = ["RASTER_SUFFIXES", "IMAGE_SUFFIXES", "read_raster", "read_image", "read_array", "image_files"]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
IMAGE_SUFFIXES = (".tif", ".tiff") + RASTER_SUFFIXES  #: what the batch surfaces (CLI, cluster) read

#: Pillow's grey modes and what they are converted to (None: kept, e.g. 16-bit, 32-bit integer or float)
_GREY_MODES = {"1": "L", "L": "L", "LA": "L", "La": "L",
               "I;16": None, "I;16L": None, "I;16B": None, "I": None, "F": None}


def _frame_array(frame) -> np.ndarray:
    """One Pillow frame as grey ``(Y, X)`` or RGB ``(Y, X, 3)``."""
    mode = frame.mode
    if mode in _GREY_MODES:
        target = _GREY_MODES[mode]
        data = np.asarray(frame.convert(target) if target else frame)
        return data.astype(np.uint16) if mode.startswith("I;16") else data
    return np.asarray(frame.convert("RGB"))  # RGBA, P (palette), CMYK, YCbCr, LAB, HSV, ...


def read_raster(path: str | os.PathLike) -> Image:
    """Read a PNG / JPEG / BMP / GIF / WebP file; ``ValueError`` naming the file when Pillow cannot."""
    from PIL import Image as PILImage
    from PIL import ImageSequence, UnidentifiedImageError

    path = Path(path)
    try:
        with PILImage.open(path) as im:
            frames = [_frame_array(f) for f in ImageSequence.Iterator(im)]
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # Pillow raises SyntaxError on broken headers
        raise ValueError(f"{str(path)!r}: not a readable image ({exc})") from None
    if any(f.ndim == 3 for f in frames):  # grey and colour frames: all RGB
        frames = [f if f.ndim == 3 else np.stack([f] * 3, -1) for f in frames]
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"{str(path)!r}: its {len(frames)} frames differ in size")
    data = frames[0] if len(frames) == 1 else np.stack(frames).astype(np.result_type(*frames))
    axes = ("T" if len(frames) > 1 else "") + ("YXS" if frames[0].ndim == 3 else "YX")
    return Image(data=data, axes=axes, title=path.stem)


def read_image(path: str | os.PathLike) -> Image:
    """A TIFF (:func:`ijtorch.io.tiff.read_tiff`) or, by its suffix, a PNG / JPEG / ... file."""
    from .tiff import read_tiff

    return read_raster(path) if Path(path).suffix.lower() in RASTER_SUFFIXES else read_tiff(path)


def read_array(path: str | os.PathLike) -> np.ndarray:
    """The pixels alone: a TIFF's first series as tifffile gives it, or :func:`read_raster`'s data
    (what the training folders read: images, label maps, annotations)."""
    import tifffile

    path = Path(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return read_raster(path).data
    try:
        return tifffile.imread(path)
    except (tifffile.TiffFileError, OSError) as exc:
        raise ValueError(f"{str(path)!r}: not a readable TIFF ({exc})") from None


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder`` (:data:`IMAGE_SUFFIXES`), sorted by name, hidden files left out."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
