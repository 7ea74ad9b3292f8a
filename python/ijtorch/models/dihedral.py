"""The 8 flips/90° rotations of the YX plane, for test-time augmentation.

Restoration averages a model's output over them (and reports their spread); star-convex
segmentation averages probability and ray-distance maps over them, which needs to know where each
ray points after the transform (:meth:`DihedralTransform.ray_permutation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DihedralTransform", "dihedral_transforms"]


@dataclass(frozen=True)
class DihedralTransform:
    """``np.rot90`` by ``k`` quarter turns in the last two axes, then (if ``flip``) a mirror of X."""

    k: int
    flip: bool

    def forward(self, a: np.ndarray, axes: tuple[int, int] | None = None) -> np.ndarray:
        ax = axes or (a.ndim - 2, a.ndim - 1)
        a = np.rot90(a, self.k, axes=ax)
        return np.flip(a, ax[1]) if self.flip else a

    def inverse(self, a: np.ndarray, axes: tuple[int, int] | None = None) -> np.ndarray:
        ax = axes or (a.ndim - 2, a.ndim - 1)
        a = np.flip(a, ax[1]) if self.flip else a
        return np.rot90(a, -self.k, axes=ax)

    def ray_permutation(self, n_rays: int) -> np.ndarray:
        """Indices ``p`` such that ray ``r`` of the original image is ray ``p[r]`` of the transformed one.

        Rays are at angles ``2*pi*r/n_rays`` with direction ``(dy, dx) = (sin, cos)`` (as in
        :func:`ijtorch.models.stardist.geometry.ray_angles`): a quarter turn moves every ray by
        ``n_rays / 4``, a mirror of X sends angle ``a`` to ``pi - a``. So maps predicted on
        ``forward(image)`` and brought back with :meth:`inverse` hold ray ``r`` in channel ``p[r]``.
        """
        if (self.k % 2 and n_rays % 4) or ((self.k or self.flip) and n_rays % 2):
            raise ValueError(f"n_rays={n_rays}: this flip/rotation does not map rays onto rays "
                             "(needs n_rays divisible by 4 for quarter turns, by 2 for flips)")
        perm = (np.arange(n_rays) - self.k * n_rays // 4) % n_rays
        return (n_rays // 2 - perm) % n_rays if self.flip else perm


def dihedral_transforms(square: bool = True) -> list[DihedralTransform]:
    """The 8 transforms (identity first), or the 4 that keep Y and X in place when ``square`` is false.

    Quarter turns swap Y and X; fully convolutional networks with tiled prediction accept that for
    any image shape, so callers pass ``square=False`` only where the shape must be kept.
    """
    return [DihedralTransform(k, flip) for k in (range(4) if square else (0, 2)) for flip in (False, True)]
