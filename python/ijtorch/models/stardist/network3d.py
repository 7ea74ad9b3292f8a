"""The 3D StarDist network (a U-Net with probability and distance heads); torch is imported lazily."""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numpy as np

from .geometry3d import _triple

__all__ = ["StarDistNet3D"]

# ------------------------------------------------------------------------------------- network
@functools.lru_cache(maxsize=None)
def _torch_parts() -> Any:
    import torch
    from torch import nn

    from ..unet import UNet

    class StarDistNet3D(nn.Module):
        """3D U-Net features, subsampled to ``grid`` → ``3×3×3`` conv → probability logit and distances.

        Parameters
        ----------
        n_rays : int
            Number of radial distances.
        in_channels : int
            Input channels.
        grid : (gz, gy, gx)
            Output subsampling: output voxel ``(i, j, k)`` is input voxel ``(i*gz, j*gy, k*gx)``.
        base_channels, depth, norm, pool_z : see :class:`ijtorch.models.unet.UNet`.
        head_channels : int
            Channels of the shared head convolution.
        """

        def __init__(self, n_rays: int = 96, in_channels: int = 1, *, grid: Sequence[int] = (1, 2, 2),
                     base_channels: int = 16, depth: int = 2, norm: str = "batch", head_channels: int = 32,
                     pool_z: bool = True) -> None:
            super().__init__()
            if not isinstance(n_rays, (int, np.integer)) or n_rays < 6:
                raise ValueError(f"n_rays={n_rays!r}: expected an integer >= 6")
            g = _triple(tuple(grid), "grid", integer=True)
            self.config = dict(n_rays=int(n_rays), in_channels=in_channels, grid=list(g), base_channels=base_channels,
                               depth=depth, norm=norm, head_channels=head_channels, pool_z=bool(pool_z))
            self.n_rays = int(n_rays)
            self.grid = g
            self.unet = UNet(in_channels, None, ndim=3, base_channels=base_channels, depth=depth, norm=norm,
                             pool_z=pool_z)
            self.features = nn.Sequential(nn.Conv3d(base_channels, head_channels, 3, padding=1), nn.ReLU())
            self.prob = nn.Conv3d(head_channels, 1, 1)
            self.dist = nn.Conv3d(head_channels, n_rays, 1)
            nn.init.constant_(self.dist.bias, 3.0)

        def size_multiple(self) -> tuple[int, ...]:
            """Input sizes must be multiples of these numbers (the U-Net's and the grid's)."""
            return tuple(math.lcm(int(m), int(g)) for m, g in zip(self.unet.size_multiple(), self.grid))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """``(N, C, Z, Y, X)`` → ``(N, 1 + n_rays, Z/gz, Y/gy, X/gx)``: probability logit then distances."""
            gz, gy, gx = self.grid
            f = self.unet(x)[:, :, ::gz, ::gy, ::gx]
            f = self.features(f)
            return torch.cat([self.prob(f), self.dist(f)], dim=1)

    return StarDistNet3D


def __getattr__(name: str) -> Any:  # lazy torch import (house rule 11)
    if name == "StarDistNet3D":
        return _torch_parts()
    raise AttributeError(name)
