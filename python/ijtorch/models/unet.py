"""A small configurable U-Net (Ronneberger et al. 2015) for 2D and 3D images.

The network is shared by every task that needs dense per-pixel outputs (StarDist, boundary
U-Nets, restoration). Convolutions are chosen by ``ndim`` (2 → ``Conv2d``, 3 → ``Conv3d``); all
convolutions use ``same`` padding, so the output has the spatial shape of the input as long as every
spatial size is divisible by ``2 ** depth`` (:meth:`UNet.size_multiple`). Tiled inference pads to
that multiple.

Examples
--------
>>> import torch
>>> from ijtorch.models.unet import UNet
>>> net = UNet(in_channels=1, out_channels=3, ndim=2, base_channels=8, depth=2)
>>> net(torch.zeros(1, 1, 32, 32)).shape
torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["UNet", "ConvBlock"]

_NORMS = ("batch", "instance", "group", "none")
_ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu")


def _conv(ndim: int) -> type[nn.Module]:
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _norm(kind: str, channels: int, ndim: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels) if ndim == 2 else nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True) if ndim == 2 else nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "gelu": nn.GELU}[kind]()


class ConvBlock(nn.Sequential):
    """Two ``3×3`` (or ``3×3×3``) convolutions, each followed by normalisation and activation."""

    def __init__(self, cin: int, cout: int, *, ndim: int, norm: str, activation: str, dropout: float = 0.0) -> None:
        conv = _conv(ndim)
        bias = norm == "none"
        layers: list[nn.Module] = [conv(cin, cout, 3, padding=1, bias=bias), _norm(norm, cout, ndim), _act(activation)]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout) if ndim == 2 else nn.Dropout3d(dropout))
        layers += [conv(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout, ndim), _act(activation)]
        super().__init__(*layers)


class UNet(nn.Module):
    """Configurable U-Net for 2D (``ndim=2``) or 3D (``ndim=3``) inputs.

    Parameters
    ----------
    in_channels : int
        Number of input channels.
    out_channels : int or None
        Number of output channels of a final ``1×1`` convolution. ``None`` returns the decoder
        features (``base_channels`` channels) so a caller can attach its own heads
        (:attr:`out_features` gives their number).
    ndim : {2, 3}
        Spatial dimensionality.
    base_channels : int
        Channels of the first level; level ``k`` has ``base_channels * 2**k``.
    depth : int
        Number of down-sampling steps (1 to 6).
    norm : {"batch", "instance", "group", "none"}
        Normalisation after each convolution.
    activation : {"relu", "leaky_relu", "elu", "gelu"}
        Activation after each convolution.
    dropout : float
        Dropout probability in the bottleneck block.
    pool_z : bool
        For ``ndim=3`` only: also pool along Z (``False`` pools Y and X only, suited to anisotropic
        stacks).

    Notes
    -----
    The constructor arguments are exactly what :func:`ijtorch.models.store.save_model_dir` stores as
    ``architecture`` in ``config.json``; ``UNet(**net.config)`` rebuilds the same network.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = 1,
        *,
        ndim: int = 2,
        base_channels: int = 32,
        depth: int = 3,
        norm: str = "batch",
        activation: str = "relu",
        dropout: float = 0.0,
        pool_z: bool = True,
    ) -> None:
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError(f"ndim={ndim!r}: accepted values are 2 and 3")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels={in_channels!r}: expected a positive integer")
        if out_channels is not None and (not isinstance(out_channels, int) or out_channels < 1):
            raise ValueError(f"out_channels={out_channels!r}: expected a positive integer or None")
        if not isinstance(base_channels, int) or base_channels < 1:
            raise ValueError(f"base_channels={base_channels!r}: expected a positive integer")
        if not isinstance(depth, int) or not 1 <= depth <= 6:
            raise ValueError(f"depth={depth!r}: expected an integer from 1 to 6")
        if norm not in _NORMS:
            raise ValueError(f"norm={norm!r}: accepted values are {_NORMS}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: accepted values are {_ACTIVATIONS}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout={dropout!r}: expected a float in [0, 1)")
        self.config: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, ndim=ndim, base_channels=base_channels,
            depth=depth, norm=norm, activation=activation, dropout=float(dropout), pool_z=bool(pool_z),
        )
        self.ndim = ndim
        self.depth = depth
        kw = dict(ndim=ndim, norm=norm, activation=activation)
        pool_kernel: int | tuple[int, ...] = 2 if (ndim == 2 or pool_z) else (1, 2, 2)
        self._pool_kernel = pool_kernel
        pool = nn.MaxPool2d if ndim == 2 else nn.MaxPool3d
        convt = nn.ConvTranspose2d if ndim == 2 else nn.ConvTranspose3d
        chans = [base_channels * 2**k for k in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for k in range(depth):
            self.encoders.append(ConvBlock(cin, chans[k], **kw))
            cin = chans[k]
        self.pool = pool(pool_kernel)
        self.bottleneck = ConvBlock(chans[depth - 1], chans[depth], dropout=float(dropout), **kw)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for k in reversed(range(depth)):
            self.ups.append(convt(chans[k + 1], chans[k], pool_kernel, stride=pool_kernel))
            self.decoders.append(ConvBlock(2 * chans[k], chans[k], **kw))
        self.out_features = out_channels if out_channels is not None else base_channels
        self.head = _conv(ndim)(base_channels, out_channels, 1) if out_channels is not None else nn.Identity()

    def size_multiple(self) -> tuple[int, ...]:
        """Spatial sizes must be multiples of these numbers (one per spatial axis)."""
        m = 2**self.depth
        if self.ndim == 2:
            return (m, m)
        return (m if self._pool_kernel == 2 else 1, m, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, C_in, *spatial)`` to ``(N, out_features, *spatial)``."""
        if x.ndim != self.ndim + 2:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, C, {'Y, X' if self.ndim == 2 else 'Z, Y, X'})")
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = up(x)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)
