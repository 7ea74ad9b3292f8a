"""Percentile normalization as a task (the same function models use before inference)."""

from __future__ import annotations

import numpy as np

from ..image import check_axes

__all__ = ["normalize"]


def normalize(data: np.ndarray, axes: str, *, low: float = 1.0, high: float = 99.8,
              per_plane: bool = False, clip: bool = False) -> np.ndarray:
    """Map the ``low``/``high`` percentiles to 0/1 as float32, per channel (and per plane if asked).

    Channels (``C``) are always normalized separately; ``per_plane`` also separates every Z/T
    plane. RGB (``S``) images are rejected: convert them to channels or grey first.
    """
    from ..train.data import percentile_normalize

    axes = check_axes(axes, data.ndim)
    if "S" in axes:
        raise ValueError(f"axes={axes!r}: RGB images cannot be normalized; split channels or convert to grey first")
    keep = [i for i, a in enumerate(axes) if a in ("YX" if per_plane else "ZYXT")]
    return percentile_normalize(data, low, high, axes=tuple(keep), clip=clip)
