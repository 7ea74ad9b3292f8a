"""The 2D StarDist network (a U-Net with probability and distance heads) and its loss; torch is imported lazily."""

from __future__ import annotations

import functools
import itertools
from typing import Any

from .geometry import ray_angles

__all__ = ["StarDistNet", "cpu_bfloat16_enabled", "inference_copy", "stardist_loss", "weights_key"]

# ------------------------------------------------------------------------------------- network
@functools.lru_cache(maxsize=None)
def _torch_parts() -> Any:
    import torch
    from torch import nn

    from ..unet import ConvBlock, UNet

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
        stem : {1, 2}
            2: StarDist's grid-2 network: two convolutions at full resolution, a max pooling, then
            the U-Net and heads at half resolution (a quarter of the pixels: about half the forward
            time of the same U-Net at full resolution). :meth:`forward` returns the maps at full
            resolution (each cell's values at its four pixels, so pixel ``(2i, 2j)`` read by NMS on
            the grid holds cell ``(i, j)``); :meth:`forward_grid` returns the cells, what the loss
            trains against the targets at the grid pixels. 1 (models saved before it): the whole
            U-Net at full resolution.
        """

        def __init__(self, n_rays: int = 32, in_channels: int = 1, *, base_channels: int = 32, depth: int = 3,
                     norm: str = "batch", head_channels: int = 64, stem: int = 1) -> None:
            super().__init__()
            ray_angles(n_rays)
            self.config = dict(n_rays=int(n_rays), in_channels=in_channels, base_channels=base_channels,
                               depth=depth, norm=norm, head_channels=head_channels)
            if int(stem) != 1:  # configs of full-resolution networks stay as they were
                self.config["stem"] = int(stem)
            self.n_rays = int(n_rays)
            self.grid_stem = int(stem)
            if self.grid_stem == 1:
                self.stem = nn.Identity()
                self.unet = UNet(in_channels, None, ndim=2, base_channels=base_channels, depth=depth, norm=norm)
            elif self.grid_stem == 2:  # StarDist's grid=(2, 2) network
                self.stem = nn.Sequential(ConvBlock(in_channels, base_channels, ndim=2, norm=norm, activation="relu"),
                                          nn.MaxPool2d(2))
                self.unet = UNet(base_channels, None, ndim=2, base_channels=base_channels, depth=depth, norm=norm)
            else:
                raise ValueError(f"stem={stem!r}: accepted values are 1 (no stem) and 2 (U-Net at half resolution)")
            self.features = nn.Sequential(nn.Conv2d(base_channels, head_channels, 3, padding=1), nn.ReLU())
            self.prob = nn.Conv2d(head_channels, 1, 1)
            self.dist = nn.Conv2d(head_channels, n_rays, 1)
            nn.init.constant_(self.dist.bias, 3.0)

        def size_multiple(self) -> tuple[int, ...]:
            """Spatial sizes must be multiples of these numbers."""
            return tuple(m * self.grid_stem for m in self.unet.size_multiple())

        def forward_grid(self, x: torch.Tensor) -> torch.Tensor:
            """``(N, C, Y, X)`` → ``(N, 1 + n_rays, Y / stem, X / stem)``: the maps of the grid cells."""
            f = self.features(self.unet(self.stem(x)))
            return torch.cat([self.prob(f), self.dist(f)], dim=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """``(N, C, Y, X)`` → ``(N, 1 + n_rays, Y, X)``: probability logit then distances."""
            return self.to_full_resolution(self.forward_grid(x), self.grid_stem)

        @staticmethod
        def to_full_resolution(maps: torch.Tensor, stem: int) -> torch.Tensor:
            """Maps of the grid cells at every pixel of their cell (nearest neighbour): pixel
            ``(2i, 2j)``, the one NMS reads with grid 2, holds cell ``(i, j)`` exactly."""
            if stem == 1:
                return maps
            return torch.nn.functional.interpolate(maps, scale_factor=stem, mode="nearest")

    class FusedStarDistNet(nn.Module):
        """A 2D :class:`StarDistNet` for inference only: the probability and distance heads in one
        ``1×1`` convolution (no concatenation of the two outputs); same ``unet`` and ``features``."""

        def __init__(self, net: StarDistNet) -> None:
            super().__init__()
            self.config, self.n_rays, self.grid_stem = dict(net.config), net.n_rays, net.grid_stem
            self.stem, self.unet, self.features = net.stem, net.unet, net.features
            self.head = nn.Conv2d(net.prob.in_channels, 1 + net.n_rays, 1)
            self.cpu_bfloat16 = False  # see cpu_bfloat16_enabled
            with torch.no_grad():
                self.head.weight.copy_(torch.cat([net.prob.weight, net.dist.weight]))
                self.head.bias.copy_(torch.cat([net.prob.bias, net.dist.bias]))

        def size_multiple(self) -> tuple[int, ...]:
            return tuple(m * self.grid_stem for m in self.unet.size_multiple())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.cpu_bfloat16 and x.device.type == "cpu":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = self.head(self.features(self.unet(self.stem(x)))).float()
            else:
                out = self.head(self.features(self.unet(self.stem(x))))
            return StarDistNet.to_full_resolution(out, self.grid_stem)

        def forward_sparse(self, x: torch.Tensor) -> torch.Tensor:
            """``(N, C, Y, X)`` → ``(N, 1 + F, Y, X)`` (channels-last): the probability logit, then the
            ``F`` features the distance head reads, for :meth:`distances` at the few points NMS reads
            instead of the head's 32 distances at every pixel (the head is ~10 % of the forward pass)."""
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bfloat16 and x.device.type == "cpu"):
                f = self.features(self.unet(self.stem(x))).permute(0, 2, 3, 1)  # (N, Y, X, F), contiguous in memory
                # two rows of the head, not one: on Intel CPUs the matrix product then rounds as the whole
                # head does (bitwise); elsewhere it may differ in the last bits (3e-7 on an AMD EPYC)
                logit = torch.nn.functional.linear(f, self.head.weight[:2, :, 0, 0], self.head.bias[:2])[..., :1]
                maps = torch.cat([logit, f], dim=-1).float().permute(0, 3, 1, 2)
                return StarDistNet.to_full_resolution(maps, self.grid_stem)

        def distances(self, features: torch.Tensor) -> torch.Tensor:
            """The distance head on ``(M, F)`` features (rows of :meth:`forward_sparse`'s output)."""
            return torch.nn.functional.linear(features, self.head.weight[1:, :, 0, 0], self.head.bias[1:])

    StarDistNet.Fused = FusedStarDistNet
    return StarDistNet


#: ``1`` runs 2D star-convex prediction on CPU in bfloat16 where the CPU has it natively (see
#: :func:`cpu_bfloat16_enabled`); unset or ``0``: float32.
CPU_BFLOAT16_ENV = "IJTORCH_CPU_BFLOAT16"


def cpu_bfloat16_enabled() -> bool:
    """Whether 2D star-convex prediction on CPU runs its convolutions in bfloat16 (float32 sums):
    only when ``$IJTORCH_CPU_BFLOAT16`` is ``1`` and the CPU multiplies bfloat16 natively (AMX
    tiles or AVX512-BF16; ``force`` also without, where it is emulated and slower than float32).

    Opt-in, not the default: on such a CPU the forward pass is 2.5× faster (nuclei model, one core)
    and on 114 held-out DSB images (4 455 nuclei) pooled AP@0.5 went 0.805 → 0.804 and AP@0.75
    0.534 → 0.533 (``benchmarks/bench_segment.py --vs-stardist --precision``), but bfloat16
    rounding turns float-level differences into visible ones: a z-stack segmented block by block
    on a Dask cluster then differs from the in-memory labels in a few pixels (28 of 196 608),
    where float32 gives the same labels.
    """
    import os

    import torch

    setting = os.environ.get(CPU_BFLOAT16_ENV, "").strip().lower()
    if setting == "force":
        return True
    if setting not in ("1", "true", "yes", "on"):
        return False
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    return any(check is not None and bool(check()) for check in checks)


def weights_key(net: Any) -> tuple:
    """Changes whenever a parameter or buffer of ``net`` is replaced, moved or modified in place
    (an optimizer step, ``load_state_dict``, ``.to(device)``): when to rebuild an :func:`inference_copy`."""
    return tuple((t.data_ptr(), t._version, str(t.device)) for t in (*net.parameters(), *net.buffers()))


def inference_copy(net: Any) -> Any:
    """A copy of ``net`` (2D or 3D star-convex network) for fast evaluation-mode prediction.

    Each batch normalisation is folded into the convolution before it
    (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`: the same function of the input up to float
    rounding), ReLUs run in place, a 2D :class:`StarDistNet` gets its two heads merged into one
    convolution, and 2D networks use the channels-last memory layout (oneDNN's fast convolutions
    on CPU; 1.5–2× faster than the default layout here) and, when :func:`cpu_bfloat16_enabled`,
    bfloat16 convolutions. ``net`` itself is left untouched.
    """
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fast = copy.deepcopy(net).eval()
    for module in list(fast.modules()):
        if isinstance(module, nn.Sequential):
            layers = list(module)
            for i, (conv, norm) in enumerate(itertools.pairwise(layers)):
                if isinstance(conv, (nn.Conv2d, nn.Conv3d)) and isinstance(norm, (nn.BatchNorm2d, nn.BatchNorm3d)) \
                        and norm.track_running_stats:
                    module[i], module[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
        elif isinstance(module, nn.ReLU):
            module.inplace = True  # every ReLU here follows a convolution whose output nothing else reads
    if isinstance(fast, _torch_parts()):
        fast = _torch_parts().Fused(fast).eval()
        fast.cpu_bfloat16 = cpu_bfloat16_enabled()
        fast = fast.to(memory_format=torch.channels_last)
    fast.requires_grad_(False)
    return fast


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
    stem = int(getattr(model, "grid_stem", 1))
    if stem > 1:  # a grid-2 network learns its cells from the targets at the grid pixels (as StarDist does)
        out, p_t, d_t = model.forward_grid(x), p_t[..., ::stem, ::stem], d_t[..., ::stem, ::stem]
    else:
        out = model(x)
    logit, d = out[:, :1], out[:, 1:]
    bce = F.binary_cross_entropy_with_logits(logit, p_t)
    l1 = (d - d_t).abs().mean(dim=1, keepdim=True)
    dist = (p_t * l1).sum() / p_t.sum().clamp_min(1e-6)
    bg = (p_t == 0).float()
    reg = (bg * d.abs().mean(dim=1, keepdim=True)).sum() / bg.sum().clamp_min(1.0)
    loss = bce + dist_weight * dist + bg_reg * reg
    return loss, {"bce": float(bce.detach()), "dist": float(dist.detach())}
