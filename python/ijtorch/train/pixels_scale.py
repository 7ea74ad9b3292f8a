"""Scale augmentation for pixel classifiers: the strokes' features as if the image were zoomed.

Strokes come from one or two images, so every object the head learns from has one size; on a new
image with larger nuclei (another magnification, another cell line) the texture inside them looks
like the edges it learnt and their interiors come out as background or boundary. Training also on
the features of the annotated pixels in the plane zoomed by ``SCALE_ZOOMS`` (bilinear resampling,
each annotated pixel taken at its zoomed position) shows the head each class at other sizes.
Measured on ``benchmarks/bench_pixels.py`` (seeds 0 and 1, mean per-class Dice on held-out images,
nuclei / cells): zooms 0.7 and 1.4 +0.012 / +0.004; 0.6 and 1.6 +0.012 / +0.002; 0.8 and 1.25
+0.008 / +0.002; 0.5, 0.7, 1.4 and 2 +0.007 / -0.005; 1.4 alone +0.004 / -0.003; 0.7 alone
-0.004 / +0.005; 2 alone -0.002 / -0.008. Cubic instead of bilinear resampling: -0.004 / -0.000.

Only the features near the annotated pixels are computed (:func:`features_at`): strokes cover a
small part of an image, and the zoomed planes are up to twice its size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["SCALE_ZOOMS", "features_at", "zoomed_rows"]

SCALE_ZOOMS: tuple[float, ...] = (0.7, 1.4)
BLOCK = 64  # features are computed per block of this size (plus a margin) that holds an annotated pixel
FULL_PLANE_FRACTION = 0.6  # above this share of the plane the blocks would cover, compute the whole plane


def features_at(plane: np.ndarray, ys: np.ndarray, xs: np.ndarray, sigmas: Sequence[float], local_std: bool,
                energy_sigmas: Sequence[float] = ()) -> np.ndarray:
    """:func:`~ijtorch.models.pixel_classifier.pixel_features` of a ``(C, Y, X)`` plane at the pixels
    ``(ys, xs)``, as ``(n, F)`` rows, computed only on the ``BLOCK``-px blocks that hold them plus a
    margin beyond the filters' reach (:func:`~ijtorch.models.pixel_classifier.feature_reach`), so
    each row equals the whole plane's features there (borders are reflected the same way at the
    plane's edges)."""
    from ijtorch.models.pixel_classifier import _compute_features, feature_reach, n_features, pixel_features

    plane = np.ascontiguousarray(plane, dtype=np.float32)
    ys, xs = np.asarray(ys, np.intp), np.asarray(xs, np.intp)
    H, W = plane.shape[1:]
    margin = feature_reach(sigmas, energy_sigmas)
    n_bx = (W + BLOCK - 1) // BLOCK
    key = (ys // BLOCK) * n_bx + xs // BLOCK
    blocks = np.unique(key)
    if len(blocks) * (BLOCK + 2 * margin) ** 2 >= FULL_PLANE_FRACTION * H * W:
        return pixel_features(plane, sigmas, local_std, energy_sigmas)[:, ys, xs].T
    out = np.empty((len(ys), n_features(plane.shape[0], sigmas, local_std, energy_sigmas)), np.float32)
    order = np.argsort(key, kind="stable")
    starts = np.searchsorted(key[order], blocks)
    for b, lo, hi in zip(blocks, starts, np.append(starts[1:], len(order))):
        sel = order[lo:hi]
        by, bx = divmod(int(b), n_bx)
        y0, x0 = max(by * BLOCK - margin, 0), max(bx * BLOCK - margin, 0)
        y1, x1 = min((by + 1) * BLOCK + margin, H), min((bx + 1) * BLOCK + margin, W)
        f = _compute_features(plane[:, y0:y1, x0:x1], sigmas, local_std, energy_sigmas)
        out[sel] = f[:, ys[sel] - y0, xs[sel] - x0].T
    return out


def zoomed_rows(plane: np.ndarray, mask: np.ndarray, zoom: float, sigmas: Sequence[float], local_std: bool,
                energy_sigmas: Sequence[float] = ()) -> np.ndarray:
    """Feature rows of the annotated pixels (``mask``, in ``np.nonzero`` order) of a normalised
    ``(C, Y, X)`` plane zoomed by ``zoom`` (bilinear, pixel-area aligned): each annotated pixel's
    row is taken where its centre lands in the zoomed plane."""
    from scipy import ndimage as ndi

    zoomed = np.stack([ndi.zoom(c, zoom, order=1, mode="reflect", grid_mode=True) for c in plane])
    ys, xs = np.nonzero(mask)
    zy = np.minimum(((ys + 0.5) * zoomed.shape[1] / plane.shape[1]).astype(np.intp), zoomed.shape[1] - 1)
    zx = np.minimum(((xs + 0.5) * zoomed.shape[2] / plane.shape[2]).astype(np.intp), zoomed.shape[2] - 1)
    return features_at(zoomed, zy, zx, sigmas, local_std, energy_sigmas)
