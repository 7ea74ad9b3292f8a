"""Tiled inference with overlap for 2D and 3D images larger than a tile.

:func:`predict_tiled` cuts a ``(C, *spatial)`` array into overlapping tiles, runs a batch of tiles
per call of ``fn`` and stitches the outputs. Two stitching modes:

``"crop"``
    Every output pixel comes from exactly one tile: the one whose *core* (the tile minus half the
    overlap on each inner side) contains it. With an overlap larger than the network's effective
    receptive field plus the object size, tiled and whole-image predictions agree, which is what
    instance segmentation needs (objects are never cut at a seam).
``"linear"``
    Outputs are blended with weights that ramp linearly across the overlap (smooth for restoration).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

from .progress import ProgressCallback, ProgressEvent, emit

__all__ = ["balanced_tile", "predict_tiled", "tile_starts"]

log = logging.getLogger(__name__)

_BLENDS = ("crop", "linear")


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``[0, size)`` with at least ``overlap`` overlap."""
    if tile >= size:
        return [0]
    if overlap >= tile:
        raise ValueError(f"overlap={overlap!r} must be smaller than the tile size {tile}")
    n = int(np.ceil((size - overlap) / (tile - overlap)))
    starts = np.linspace(0, size - tile, n).round().astype(int)
    return sorted(set(int(s) for s in starts))


def balanced_tile(size: int, tile: int, overlap: int, multiple: int = 1, *, slack: float = 1.25) -> int:
    """The smallest tile length (a multiple of ``multiple``) that covers ``size`` with as few tiles
    as tiles of up to ``slack * tile`` would, each overlapping the next by at least ``overlap``.

    Tiles of a fixed length waste work: a 1024-px axis in 512-px tiles with 96 px overlap needs 3
    tiles (1536 px of work); 2 tiles of 560 px (1120 px) cover it with the same overlap.
    """
    if size <= 0 or tile <= 0 or multiple <= 0:
        raise ValueError(f"size={size!r}, tile={tile!r}, multiple={multiple!r}: expected positive integers")
    def up(v: float) -> int:
        return int(np.ceil(v / multiple) * multiple)

    size, largest = up(size), up(slack * tile)  # predict_tiled pads the image to the multiple
    if largest >= size:
        return size
    if overlap >= largest:  # predict_tiled clips the overlap to the tile
        return largest
    n = int(np.ceil((size - overlap) / (largest - overlap)))
    return min(up(np.ceil((size - overlap) / n) + overlap), largest)


def _crop_cores(starts: list[int], tile: int, size: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` within each tile of the part it alone contributes in ``"crop"`` mode: the tiles'
    cores partition ``[0, size)`` at the midpoints of the overlaps."""
    cores = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else (starts[i - 1] + tile + s) // 2 - s
        hi = tile if i == len(starts) - 1 else (s + tile + starts[i + 1]) // 2 - s
        cores.append((lo, min(hi, size - s)))
    return cores


def _axis_weights(starts: list[int], tile: int, size: int, blend: str) -> list[np.ndarray]:
    weights = []
    for i, s in enumerate(starts):
        w = np.zeros(tile, np.float32)
        lo = 0 if i == 0 else (starts[i - 1] + tile + s) // 2 - s  # midpoint of the overlap with the previous tile
        hi = tile if i == len(starts) - 1 else (s + tile + starts[i + 1]) // 2 - s
        if blend == "crop":
            w[lo:hi] = 1.0
        else:
            w[:] = 1.0
            if i > 0:
                ov = starts[i - 1] + tile - s
                w[:ov] = (np.arange(ov) + 0.5) / ov
            if i < len(starts) - 1:
                ov = s + tile - starts[i + 1]
                w[tile - ov:] = np.minimum(w[tile - ov:], ((np.arange(ov) + 0.5) / ov)[::-1])
        weights.append(w[: max(0, min(tile, size - s))])
    return weights


def predict_tiled(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, *, tile_shape: Sequence[int],
                  overlap: int | Sequence[int], out_channels: int, size_multiple: Sequence[int] | None = None,
                  batch_size: int = 4, blend: str = "crop", progress: ProgressCallback | None = None,
                  cancel: Callable[[], bool] | None = None, channels_last: bool = False) -> np.ndarray:
    """Apply ``fn`` to overlapping tiles of ``image`` and stitch the results.

    Parameters
    ----------
    fn : callable
        Maps a float32 batch ``(B, C, *tile)`` to ``(B, out_channels, *tile)`` (numpy in and out).
    image : ndarray, shape (C, *spatial)
        Input with 2 or 3 spatial axes.
    tile_shape : sequence of int
        Tile size per spatial axis; clipped to the (padded) image size.
    overlap : int or sequence of int
        Minimum overlap between neighbouring tiles per spatial axis.
    out_channels : int
        Channels returned by ``fn``.
    size_multiple : sequence of int, optional
        The network needs spatial sizes that are multiples of these; the image and the tiles are
        padded (reflect) accordingly and the padding is removed from the output.
    batch_size : int
        Tiles per call of ``fn``.
    blend : {"crop", "linear"}
        Stitching mode (see module docstring).
    progress : callable, optional
        Receives ``ProgressEvent("tile", i, n)`` after each batch.
    cancel : callable, optional
        Polled between batches; raises ``InterruptedError`` when it returns true.
    channels_last : bool
        Keep the output's channels as its last axis in memory (returned as a ``(C, *spatial)``
        view): no transposing copy when ``fn`` returns channels-last arrays, as the star-convex
        models' fast networks do, and their distances come out as contiguous ``(*spatial, C)``.

    Returns
    -------
    ndarray of float32, shape (out_channels, *spatial)
    """
    if blend not in _BLENDS:
        raise ValueError(f"blend={blend!r}: accepted values are {_BLENDS}")
    if image.ndim not in (3, 4):
        raise ValueError(f"image has shape {image.shape}; expected (C, Y, X) or (C, Z, Y, X)")
    spatial = image.shape[1:]
    nd = len(spatial)
    tile_shape = tuple(int(t) for t in tile_shape)
    if len(tile_shape) != nd:
        raise ValueError(f"tile_shape={tile_shape!r} needs {nd} entries")
    ovl = (int(overlap),) * nd if np.isscalar(overlap) else tuple(int(o) for o in overlap)  # type: ignore[arg-type]
    mult = tuple(size_multiple) if size_multiple is not None else (1,) * nd
    # pad the image so every axis is at least one (multiple-aligned) tile or a multiple itself
    padded_size = [max(int(np.ceil(s / m) * m), 1) for s, m in zip(spatial, mult)]
    tiles = [min(int(np.ceil(t / m) * m), p) for t, m, p in zip(tile_shape, mult, padded_size)]
    pads = [(0, p - s) for p, s in zip(padded_size, spatial)]
    if any(p[1] for p in pads):
        mode = "reflect" if all(p[1] < s for p, s in zip(pads, spatial)) else "constant"
        image = np.pad(image, [(0, 0)] + pads, mode=mode)
    starts = [tile_starts(p, t, min(o, t - 1)) for p, t, o in zip(padded_size, tiles, ovl)]
    crop = blend == "crop"
    if crop:  # every output pixel is copied from the one tile whose core holds it: no weights, no sums
        cores = [_crop_cores(st, t, p) for st, t, p in zip(starts, tiles, padded_size)]
    else:
        weights = [_axis_weights(st, t, p, blend) for st, t, p in zip(starts, tiles, padded_size)]
        wsum = np.zeros(padded_size, np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(len(s)) for s in starts], indexing="ij"), -1).reshape(-1, nd)
    if channels_last:
        out = np.moveaxis(np.zeros((*padded_size, out_channels), np.float32), -1, 0)
    else:
        out = np.zeros((out_channels, *padded_size), np.float32)
    n = len(grid)
    log.debug("tiled prediction: %d tiles of %s over %s", n, tiles, padded_size)
    for b0 in range(0, n, batch_size):
        if cancel is not None and cancel():
            raise InterruptedError("tiled prediction cancelled")
        idx = grid[b0:b0 + batch_size]
        slices = [tuple(slice(starts[a][i[a]], starts[a][i[a]] + tiles[a]) for a in range(nd)) for i in idx]
        batch = np.stack([image[(slice(None),) + sl] for sl in slices]).astype(np.float32, copy=False)
        pred = np.asarray(fn(batch), np.float32)
        if pred.shape != (len(idx), out_channels, *tiles):
            raise ValueError(f"fn returned shape {pred.shape}; expected {(len(idx), out_channels, *tiles)}")
        for k, (i, sl) in enumerate(zip(idx, slices)):
            if crop:
                core = [cores[a][i[a]] for a in range(nd)]
                dst = tuple(slice(sl[a].start + lo, sl[a].start + hi) for a, (lo, hi) in enumerate(core))
                out[(slice(None),) + dst] = pred[(k, slice(None)) + tuple(slice(lo, hi) for lo, hi in core)]
                continue
            w = weights[0][i[0]]
            for a in range(1, nd):
                w = np.multiply.outer(w, weights[a][i[a]])
            out[(slice(None),) + sl] += pred[k] * w
            wsum[sl] += w
        emit(progress, ProgressEvent("tile", min(b0 + batch_size, n), n, "predicting tiles"))
    if not crop:
        out /= np.maximum(wsum, 1e-12)
    return out[(slice(None),) + tuple(slice(0, s) for s in spatial)]
