"""Distinct-colour lookup tables for label maps (glasbey-like), pure numpy.

The colours are picked greedily so that each new one is as far as possible, in CIELAB, from all
colours picked before it (Glasbey et al., 2007), starting from black so that entry 0 is the
background; label colours have CIELAB lightness >= 35 so none is near black. The result is deterministic.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["glasbey_lut", "imagej_lut"]

_MIN_LIGHTNESS = 35.0  # CIELAB L* floor for label colours ("glasbey on dark")


def _srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (..., 3) → CIELAB (D65)."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps = 216 / 24389
    f = np.where(xyz > eps, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


@lru_cache(maxsize=4)
def _glasbey(n: int, levels: int) -> np.ndarray:
    grid = np.linspace(0, 255, levels).round().astype(np.uint8)
    cand = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = _srgb_to_lab(cand / 255.0)
    bright = lab[:, 0] >= _MIN_LIGHTNESS  # labels must stand out on the black background
    cand, lab = cand[bright], lab[bright]
    out = np.zeros((n, 3), np.uint8)  # entry 0 stays black: the background
    dist = np.sum((lab - _srgb_to_lab(np.zeros(3))) ** 2, axis=1)
    for i in range(1, n):
        k = int(np.argmax(dist))
        out[i] = cand[k]
        np.minimum(dist, np.sum((lab - lab[k]) ** 2, axis=1), out=dist)
    out.setflags(write=False)
    return out


def glasbey_lut(n: int = 256) -> np.ndarray:
    """A table of ``n`` mutually distinct colours with entry 0 black.

    Parameters
    ----------
    n
        Number of entries, 2 to 4096 (ImageJ LUTs have 256).

    Returns
    -------
    ndarray of uint8, shape (n, 3)
        RGB rows; row 0 is ``(0, 0, 0)``, the others are distinct and not near black.

    Examples
    --------
    >>> lut = glasbey_lut()
    >>> lut.shape, lut[0].tolist(), len({tuple(c) for c in lut})
    ((256, 3), [0, 0, 0], 256)
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 2 <= n <= 4096:
        raise ValueError(f"n must be an integer from 2 to 4096, got {n!r}")
    return _glasbey(int(n), 16 if n <= 1024 else 24).copy()


def imagej_lut(n: int = 256) -> np.ndarray:
    """The glasbey LUT in the ``(3, 256)`` uint8 layout that tifffile's ``LUTs`` metadata takes."""
    return np.ascontiguousarray(glasbey_lut(n).T)
