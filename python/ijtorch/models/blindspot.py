"""Blind-spot network with a Bayesian posterior mean (after Laine et al., NeurIPS 2019).

Noise2Void hides 1 % of the pixels of a patch and learns only from those. A blind-spot *network*
is built so that every output pixel never sees its own input pixel: four copies of the input,
rotated by 0/90/180/270 degrees, go through one U-Net whose convolutions and poolings only look
at the rows above (and the row itself), and whose output is then shifted down by one row; turned
back and combined by 1x1 convolutions, the four half-planes cover every pixel except the centre.
So the loss (the MSE against the noisy image) is evaluated at *all* pixels of every patch, and no
pixel has to be replaced.

The network predicts the prior mean ``mu`` of the clean value from the surroundings. At
prediction the blind spot is filled back in: with pixel-independent Poisson-Gaussian noise of
variance ``n2 = a * mu + b`` (estimated from the image itself by :func:`estimate_noise_model`) and
a prior variance ``s2``, the posterior mean ``(mu * n2 + y * s2) / (s2 + n2)`` combines the
context's estimate with the pixel's own noisy value ``y``, weighted by their variances. ``s2`` is
read off the image too (empirical Bayes): the local mean of ``(y - mu)^2`` minus that of ``n2``
(Gaussian window, sigma 4 px). A variance head trained by likelihood, as in the paper, stayed far
from calibrated in a CPU-length training and made the posterior worse than the prior mean; the
local estimate gained 0.6 dB over the prior mean on the benchmark's 10 tune images (33.19 -> 33.76).
A model predicts in tiles no larger than its training patches (see
:meth:`ijtorch.models.restoration.RestorationModel.predict_normalized`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["BlindSpotNet", "blindspot_loss", "estimate_noise_model", "noise_variance"]

_MIN_VAR = 1e-6  # floor of every variance in normalised units (0..1 = the 1..99.8 % span)
_PRIOR_SIGMA = 4.0  # px: the window over which the prior variance is read off the residual


def _shift_down(x: torch.Tensor, rows: int = 1) -> torch.Tensor:
    """Move the feature map down by ``rows`` (zeros enter at the top): row i then sees rows < i + 1 - rows."""
    return F.pad(x, (0, 0, rows, 0))[:, :, : x.shape[2]]


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(N, 1, Y, X)`` maps, edges replicated (any size of tile)."""
    r = int(3 * sigma + 0.5)
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) ** 2) / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))


class _UpConv(nn.Conv2d):
    """3x3 convolution that sees only its own row and the rows above (the input padded on top)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(F.pad(x, (1, 1, 2, 0)))


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(_UpConv(cin, cout), nn.LeakyReLU(0.1), _UpConv(cout, cout), nn.LeakyReLU(0.1))


class BlindSpotNet(nn.Module):
    """Four-rotation blind-spot U-Net (2D) that predicts the prior mean, or the posterior mean.

    ``forward(x)`` with ``x`` of shape ``(N, 1, Y, X)`` returns the posterior mean ``(N, 1, Y, X)``
    given the noise model set by :meth:`set_noise` (``(a, b, floor)``: variance ``a * x + b``);
    without one it returns the prior mean. :meth:`prior` returns the prior mean (for training).

    Parameters
    ----------
    base_channels, depth : int
        Channels of the first level (doubling per level) and number of poolings.
    """

    ndim = 2

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ndim: int = 2, base_channels: int = 16,
                 depth: int = 3, **_: Any) -> None:
        super().__init__()
        if in_channels != 1 or out_channels != 1 or ndim != 2:
            raise ValueError("BlindSpotNet takes one 2D channel in and out")
        if not 1 <= int(depth) <= 5:
            raise ValueError(f"depth={depth!r}: expected an integer from 1 to 5")
        self.config = {"type": "blindspot", "in_channels": 1, "out_channels": 1, "ndim": 2,
                       "base_channels": int(base_channels), "depth": int(depth)}
        c = int(base_channels)
        widths = [c * 2 ** k for k in range(int(depth) + 1)]
        self.inc = _Block(1, widths[0])
        self.down = nn.ModuleList(_Block(widths[k], widths[k + 1]) for k in range(int(depth)))
        self.up = nn.ModuleList(_Block(widths[k + 1] + widths[k], widths[k]) for k in reversed(range(int(depth))))
        self.head = nn.Sequential(nn.Conv2d(4 * c, 2 * c, 1), nn.LeakyReLU(0.1), nn.Conv2d(2 * c, c, 1),
                                  nn.LeakyReLU(0.1), nn.Conv2d(c, 1, 1))
        self._noise: torch.Tensor | None = None

    def size_multiple(self) -> tuple[int, int]:
        """Spatial sizes must be multiples of these numbers (one per axis), as for the U-Net."""
        m = 2 ** int(self.config["depth"])
        return (m, m)

    def set_noise(self, a: float | None, b: float = 0.0, floor: float = _MIN_VAR) -> None:
        """Noise variance ``max(a * x + b, floor)`` (normalised units) for the posterior mean; ``a=None``:
        the prior mean."""
        self._noise = None if a is None else torch.tensor([float(a), float(b), float(floor)])

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(_shift_down(skips[-1]), 2)))
        h = skips.pop()
        for block in self.up:
            h = block(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skips.pop()], 1))
        return _shift_down(h)  # row i now sees rows < i only

    def prior(self, x: torch.Tensor) -> torch.Tensor:
        """Prior mean of the clean image at every pixel from its surroundings only."""
        n = x.shape[0]
        if x.shape[2] == x.shape[3]:
            feats = self._trunk(torch.cat([torch.rot90(x, k, (2, 3)) for k in range(4)]))
            parts = [torch.rot90(feats[k * n:(k + 1) * n], -k, (2, 3)) for k in range(4)]
        else:
            parts = [torch.rot90(self._trunk(torch.rot90(x, k, (2, 3))), -k, (2, 3)) for k in range(4)]
        return self.head(torch.cat(parts, 1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        mu = self.prior(x)
        noise = self._noise if noise is None else noise
        if noise is None:
            return mu
        y = x[:, :1]
        n2 = noise_variance(mu, noise.to(x.device, x.dtype))
        s2 = (_gaussian_blur((y - mu) ** 2, _PRIOR_SIGMA) - _gaussian_blur(n2, _PRIOR_SIGMA)).clamp_min(_MIN_VAR)
        return (mu * n2 + y * s2) / (s2 + n2)


def noise_variance(mean: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``max(a * mean + b, floor)`` for ``(N, 1, Y, X)`` means and noise rows ``(a, b, floor)`` (one, or one per sample)."""
    a, b, floor = noise.reshape(-1, 3, 1, 1).unbind(1)
    return torch.maximum(a[:, None] * mean + b[:, None], floor[:, None].clamp_min(_MIN_VAR))


def blindspot_loss(net: Any, batch: Any) -> Any:
    """Training loss for batches ``(noisy,)``: MSE of the prior mean against the noisy pixels (all of
    them: none is seen by its own prediction), whose expectation is the MSE against the clean image
    plus the noise variance."""
    x = batch[0]
    return ((net.prior(x) - x) ** 2).mean()


def estimate_noise_model(image: np.ndarray, *, bins: int = 16) -> tuple[float, float, float]:
    """Poisson-Gaussian noise model ``variance = max(a * x + b, floor)`` of a 2D image, from the image alone.

    A high-pass residual (Immerkaer's 3x3 kernel, which cancels locally linear signal) gives the
    noise at every pixel; the pixels are binned by their local (3x3) mean and a trimmed mean square
    per bin (the top 1 % dropped) is fitted by a line with non-negative slope (Foi et al. 2008, simplified).
    Returns ``(a, b, floor)`` in the image's units; ``floor`` (half the variance of the darkest bin)
    keeps the variance positive where a slightly low mean would take the line below zero.
    """
    from scipy import ndimage as ndi

    x = np.asarray(image, np.float64)
    if x.ndim != 2 or min(x.shape) < 8:
        raise ValueError(f"image has shape {x.shape}; expected a 2D image of at least 8x8 pixels")
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64) / 6.0
    res = ndi.convolve(x, k, mode="reflect")[1:-1, 1:-1].ravel()
    mean = ndi.uniform_filter(x, 3, mode="reflect")[1:-1, 1:-1].ravel()
    edges = np.unique(np.quantile(mean, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, len(edges) - 2)
    # a trimmed mean square, not a MAD: at a few photons per pixel the noise is too discrete for
    # medians; the trimmed 1 % drops edges the high-pass did not cancel (corrected for a Gaussian)
    z = 2.5758  # the two-sided 99 % point of a unit Gaussian
    kept_var = 1.0 - 2.0 * z * np.exp(-z * z / 2.0) / np.sqrt(2.0 * np.pi) / 0.99
    ms, vs, ws = [], [], []
    for i in range(len(edges) - 1):
        r2 = np.sort(res[which == i] ** 2)
        if r2.size < 50:
            continue
        ms.append(float(np.mean(mean[which == i])))
        vs.append(float(r2[: int(r2.size * 0.99)].mean() / kept_var))
        ws.append(r2.size)
    if not ms:
        v = float(np.var(res))
        return 0.0, v, 0.5 * v
    m, v, w = np.array(ms), np.array(vs), np.array(ws, np.float64)
    if len(m) >= 2 and np.ptp(m) > 0:
        a, b = np.polyfit(m, v, 1, w=np.sqrt(w))
        if a < 0:
            a, b = 0.0, float(np.average(v, weights=w))
    else:
        a, b = 0.0, float(v[0])
    return float(a), float(b), float(0.5 * v[0])
