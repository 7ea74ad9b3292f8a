"""Percentile normalization: the function models use before inference and training, and the task."""

from __future__ import annotations

import numpy as np

from ..image import check_axes

__all__ = ["percentile_normalize", "normalize"]


def percentile_normalize(x: np.ndarray, low: float = 1.0, high: float = 99.8, *,
                         axes: int | tuple[int, ...] | None = None, eps: float = 1e-20,
                         clip: bool = False) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles of ``x`` to 0 and 1 (float32).

    Parameters
    ----------
    x : ndarray
        Image of any real dtype.
    low, high : float
        Percentiles in [0, 100] with ``low < high``.
    axes : int or tuple of int, optional
        Axes over which percentiles are computed (``None``: all); e.g. ``axes=(-2, -1)`` normalises
        every plane of a stack separately.
    eps : float
        Added to the denominator.
    clip : bool
        Clip the result to [0, 1].
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array, got {type(x).__name__}")
    if not (0 <= low < high <= 100):
        raise ValueError(f"low={low!r}, high={high!r}: expected 0 <= low < high <= 100")
    xf = x.astype(np.float32, copy=False)
    lo = np.percentile(xf, low, axis=axes, keepdims=True).astype(np.float32)
    hi = np.percentile(xf, high, axis=axes, keepdims=True).astype(np.float32)
    out = (xf - lo) / (hi - lo + np.float32(eps))
    if clip:
        out = np.clip(out, 0, 1)
    return out.astype(np.float32, copy=False)


def normalize(data: np.ndarray, axes: str, *, low: float = 1.0, high: float = 99.8,
              per_plane: bool = False, clip: bool = False) -> np.ndarray:
    """Map the ``low``/``high`` percentiles to 0/1 as float32, per channel (and per plane if asked).

    Channels (``C``) are always normalized separately; ``per_plane`` also separates every Z/T
    plane. RGB (``S``) images are rejected: convert them to channels or grey first.
    """
    axes = check_axes(axes, data.ndim)
    if "S" in axes:
        raise ValueError(f"axes={axes!r}: RGB images cannot be normalized; split channels or convert to grey first")
    keep = [i for i, a in enumerate(axes) if a in ("YX" if per_plane else "ZYXT")]
    return percentile_normalize(data, low, high, axes=tuple(keep), clip=clip)
