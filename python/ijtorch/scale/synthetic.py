"""A synthetic 2D nuclei mosaic of any size, rendered window by window (benchmarks and tests).

Nuclei sit on a jittered lattice (``spacing`` px; a cell holds a nucleus with probability
``fill``): ellipses with semi-axes in ``radius``, random orientation and brightness, blurred and
drawn with Poisson noise over a background. Every 256 x 256 tile is a pure function of the seed and
its position, so a mosaic of 16 384² (or more) is written tile by tile in bounded memory and its
ground truth (label = lattice cell index + 1) is known anywhere.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

__all__ = ["TILE", "mosaic_tile", "write_mosaic_tiff"]

TILE = 256


def _cell_params(i: np.ndarray, j: np.ndarray, seed: int, spacing: int, radius: tuple[float, float],
                 fill: float) -> tuple[np.ndarray, ...]:
    """Per lattice cell: present, cy, cx, a, b, angle, brightness (deterministic in (seed, i, j))."""
    h = (i.astype(np.uint64) * np.uint64(73856093)) ^ (j.astype(np.uint64) * np.uint64(19349663)) ^ np.uint64(seed * 83492791 + 1)
    vals = []
    old = np.seterr(over="ignore")
    for k in range(7):
        x = (h + np.uint64(k) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(33)
        x = (x * np.uint64(0xff51afd7ed558ccd)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(33)
        x = (x * np.uint64(0xc4ceb9fe1a85ec53)) & np.uint64(0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(33)
        vals.append((x >> np.uint64(11)).astype(np.float64) / float(1 << 53))
    np.seterr(**old)
    u_present, u_dy, u_dx, u_a, u_b, u_t, u_i = vals
    jitter = spacing * 0.18
    cy = (i + 0.5) * spacing + (u_dy - 0.5) * 2 * jitter
    cx = (j + 0.5) * spacing + (u_dx - 0.5) * 2 * jitter
    a = radius[0] + (radius[1] - radius[0]) * u_a
    b = radius[0] + (radius[1] - radius[0]) * u_b
    return u_present < fill, cy, cx, a, b, u_t * np.pi, 0.6 + 0.4 * u_i


def mosaic_tile(ty: int, tx: int, shape: tuple[int, int], *, seed: int = 0, spacing: int = 26,
                radius: tuple[float, float] = (6.0, 10.0), fill: float = 0.85, photons: float = 80.0,
                background: float = 8.0, blur: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """The image (uint16) and ground-truth labels (uint32) of tile ``(ty, tx)`` (``TILE`` px each) of a
    mosaic of ``shape``; edge tiles are cut to the mosaic."""
    from scipy import ndimage as ndi

    y0, x0 = ty * TILE, tx * TILE
    h, w = min(TILE, shape[0] - y0), min(TILE, shape[1] - x0)
    m = int(radius[1] + 4 * blur + 2)
    Y0, X0, H, W = y0 - m, x0 - m, h + 2 * m, w + 2 * m
    ncols = int(np.ceil(shape[1] / spacing))
    ii, jj = np.meshgrid(np.arange(max(0, (Y0 - m) // spacing), (Y0 + H + m) // spacing + 1),
                         np.arange(max(0, (X0 - m) // spacing), (X0 + W + m) // spacing + 1), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    present, cy, cx, a, b, t, bright = _cell_params(ii, jj, seed, spacing, radius, fill)
    inside = present & (cy >= 0) & (cx >= 0) & (cy < shape[0]) & (cx < shape[1])
    labels = np.zeros((H, W), np.uint32)
    intensity = np.zeros((H, W), np.float32)
    for k in np.flatnonzero(inside):
        r = int(np.ceil(max(a[k], b[k]))) + 1
        py, px = int(np.floor(cy[k])) - Y0, int(np.floor(cx[k])) - X0
        ys, xs = slice(max(py - r, 0), min(py + r + 1, H)), slice(max(px - r, 0), min(px + r + 1, W))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        gy, gx = np.mgrid[ys, xs]
        dy, dx = gy + Y0 - cy[k] + 0.5, gx + X0 - cx[k] + 0.5
        c, s = np.cos(t[k]), np.sin(t[k])
        inside_k = ((c * dy + s * dx) / a[k]) ** 2 + ((-s * dy + c * dx) / b[k]) ** 2 <= 1
        view = labels[ys, xs]
        free = inside_k & (view == 0)
        view[free] = ii[k] * ncols + jj[k] + 1
        intensity[ys, xs][free] = bright[k]
    intensity = ndi.gaussian_filter(intensity, blur)
    rng = np.random.default_rng([seed, ty, tx])
    image = rng.poisson(background + photons * intensity).astype(np.uint16)
    return image[m:m + h, m:m + w], labels[m:m + h, m:m + w]


def write_mosaic_tiff(path: str | os.PathLike, shape: tuple[int, int], *, seed: int = 0,
                      labels_path: str | os.PathLike | None = None, planes: int = 1, **kwargs) -> None:
    """Write the mosaic as a tiled TIFF (256² tiles, written one at a time); ``labels_path``: the ground
    truth too. ``planes`` > 1: a ``ZYX`` z-stack whose plane ``z`` is the mosaic of seed ``seed + z``."""
    import tifffile

    nty, ntx = -(-shape[0] // TILE), -(-shape[1] // TILE)

    def tiles(which: int) -> Iterator[np.ndarray]:
        for z in range(planes):
            for ty in range(nty):
                for tx in range(ntx):
                    out = np.zeros((TILE, TILE), np.uint16 if which == 0 else np.uint32)
                    part = mosaic_tile(ty, tx, shape, seed=seed + z, **kwargs)[which]
                    out[:part.shape[0], :part.shape[1]] = part
                    yield out

    full, axes = ((planes, *shape), "ZYX") if planes > 1 else (tuple(shape), "YX")
    tifffile.imwrite(path, tiles(0), shape=full, dtype=np.uint16, tile=(TILE, TILE), metadata={"axes": axes},
                     bigtiff=True)
    if labels_path is not None:
        tifffile.imwrite(labels_path, tiles(1), shape=full, dtype=np.uint32, tile=(TILE, TILE),
                         metadata={"axes": axes}, bigtiff=True, compression="zlib")
