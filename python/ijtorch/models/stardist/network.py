"""The 2D StarDist network (a U-Net with probability and distance heads) and its loss; torch is imported lazily."""

from __future__ import annotations

import functools
from typing import Any

from .geometry import ray_angles

__all__ = ["StarDistNet", "stardist_loss"]

# ------------------------------------------------------------------------------------- network
@functools.lru_cache(maxsize=None)
def _torch_parts() -> Any:
    import torch
    from torch import nn

    from ..unet import UNet

    class StarDistNet(nn.Module):
        """U-Net features → ``3×3`` conv → object-probability logit (1 channel) and distances.

        Parameters
        ----------
        n_rays : int
            Number of radial distances.
        in_channels : int
            Input channels.
        base_channels, depth, norm : see :class:`ijtorch.models.unet.UNet`.
        head_channels : int
            Channels of the shared head convolution.
        """

        def __init__(self, n_rays: int = 32, in_channels: int = 1, *, base_channels: int = 32, depth: int = 3,
                     norm: str = "batch", head_channels: int = 64) -> None:
            super().__init__()
            ray_angles(n_rays)
            self.config = dict(n_rays=int(n_rays), in_channels=in_channels, base_channels=base_channels,
                               depth=depth, norm=norm, head_channels=head_channels)
            self.n_rays = int(n_rays)
            self.unet = UNet(in_channels, None, ndim=2, base_channels=base_channels, depth=depth, norm=norm)
            self.features = nn.Sequential(nn.Conv2d(base_channels, head_channels, 3, padding=1), nn.ReLU())
            self.prob = nn.Conv2d(head_channels, 1, 1)
            self.dist = nn.Conv2d(head_channels, n_rays, 1)
            nn.init.constant_(self.dist.bias, 3.0)

        def size_multiple(self) -> tuple[int, ...]:
            """Spatial sizes must be multiples of these numbers."""
            return self.unet.size_multiple()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """``(N, C, Y, X)`` → ``(N, 1 + n_rays, Y, X)``: probability logit then distances."""
            f = self.features(self.unet(x))
            return torch.cat([self.prob(f), self.dist(f)], dim=1)

    return StarDistNet


def __getattr__(name: str) -> Any:  # lazy torch import (house rule 11)
    if name == "StarDistNet":
        return _torch_parts()
    raise AttributeError(name)


def stardist_loss(model: Any, batch: Any, *, dist_weight: float = 0.2, bg_reg: float = 1e-4) -> Any:
    """StarDist loss: BCE on probabilities plus probability-weighted L1 on distances.

    ``batch = (image (N,1,Y,X), prob_target (N,1,Y,X), dist_target (N,R,Y,X))``. Returns
    ``(loss, {"bce": ..., "dist": ...})``.
    """
    import torch.nn.functional as F

    x, p_t, d_t = batch
    out = model(x)
    logit, d = out[:, :1], out[:, 1:]
    bce = F.binary_cross_entropy_with_logits(logit, p_t)
    l1 = (d - d_t).abs().mean(dim=1, keepdim=True)
    dist = (p_t * l1).sum() / p_t.sum().clamp_min(1e-6)
    bg = (p_t == 0).float()
    reg = (bg * d.abs().mean(dim=1, keepdim=True)).sum() / bg.sum().clamp_min(1.0)
    loss = bce + dist_weight * dist + bg_reg * reg
    return loss, {"bce": float(bce.detach()), "dist": float(dist.detach())}
