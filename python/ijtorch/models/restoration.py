"""Image restoration networks: CARE, Noise2Void, Noise2Noise and artificial labelling.

All four kinds share one network (:class:`~ijtorch.models.unet.UNet`, 2D or 3D by ``ndim``) and
one model object, :class:`RestorationModel`; they differ in their training targets and losses:

``care``
    Supervised pairs (low SNR → high SNR); residual output ``x + f(x)``; MSE loss.
``n2n``
    Noise2Noise (Lehtinen et al. 2018): pairs of independently noisy images of the same sample;
    residual output, MSE loss. The expectation of the target is the clean image.
``n2v``
    Noise2Void (Krull et al. 2019): single noisy images. A small fraction of pixels of each
    patch is replaced by a random neighbour from a ``(2r+1)^d`` window (centre excluded,
    :func:`n2v_mask`) and the loss is the MSE at those pixels only (blind spot), so the network
    cannot learn the identity. No residual connection (it would leak the noisy centre pixel).
    With ``n2v.method == "blindspot"`` the network is a
    :class:`~ijtorch.models.blindspot.BlindSpotNet` (``architecture.type``) trained on every pixel.
``artificial_labelling``
    Supervised mapping from one channel (e.g. transmitted light) to another (e.g. a fluorescent
    label); no residual connection; MSE loss.

Intensities are percentile-normalised per image (``normalization`` in the config) before the
network sees them; the network works in normalised units. Builders for the four model types are
built by :func:`ijtorch.models.store.load_model` for these model types.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ijtorch.errors import ModelError
from ijtorch.core.normalize import percentile_normalize
from ijtorch.core.progress import ProgressCallback
from ijtorch.core.tiling import predict_tiled

from .folder import ModelDir, load_model_dir, save_model_dir

__all__ = ["MODEL_TYPES", "RESIDUAL_TYPES", "RestorationModel", "n2v_mask", "masked_mse_loss", "mse_loss"]

log = logging.getLogger(__name__)

MODEL_TYPES = ("care", "n2v", "n2n", "artificial_labelling")
RESIDUAL_TYPES = ("care", "n2n")


def build_net(architecture: dict[str, Any]) -> Any:
    """The network described by a config's ``architecture`` entry: a
    :class:`~ijtorch.models.blindspot.BlindSpotNet` for ``type: blindspot``, else a
    :class:`~ijtorch.models.unet.UNet`."""
    if architecture.get("type") == "blindspot":
        from .blindspot import BlindSpotNet

        return BlindSpotNet(**architecture)
    from .unet import UNet

    return UNet(**{k: v for k, v in architecture.items() if k != "type"})


def forward(net: Any, x: Any, residual: bool) -> Any:
    """Network output for a ``(N, 1, *spatial)`` tensor, with the residual connection if asked."""
    out = net(x)
    return out + x[:, :1] if residual else out


class RestorationModel:
    """A trained restoration model: network, config and tiled prediction in normalised units.

    Parameters
    ----------
    net : UNet
        Network with one input and one output channel.
    config : dict
        Model config: ``model_type`` (one of :data:`MODEL_TYPES`), ``axes`` (``"YX"`` or
        ``"ZYX"``), ``normalization`` (``{"method": "percentile", "low", "high"}``),
        ``input_stats`` (training intensity statistics for the dataset-shift check),
        ``target_range`` (median target percentiles, used to de-normalise artificial labels).
    device : str
        Device the network runs on.
    """

    def __init__(self, net: Any, config: dict[str, Any], *, device: str = "cpu") -> None:
        mtype = config.get("model_type")
        if mtype not in MODEL_TYPES:
            raise ModelError(f"model_type={mtype!r}: accepted values are {MODEL_TYPES}")
        self.net = net.to(device).eval()
        self.config = dict(config)
        self.config.setdefault("axes", "YX" if net.ndim == 2 else "ZYX")
        self.config.setdefault("normalization", {"method": "percentile", "low": 1.0, "high": 99.8})
        self.config["architecture"] = dict(net.config)
        self.device = device

    # ------------------------------------------------------------------ store
    @classmethod
    def from_model_dir(cls, md: ModelDir, *, device: str = "cpu") -> "RestorationModel":
        """Build from a loaded :class:`~ijtorch.models.store.ModelDir`."""
        if md.config.get("model_type") not in MODEL_TYPES:
            raise ModelError(f"{md.path}: model_type={md.config.get('model_type')!r}, expected one of {MODEL_TYPES}")
        net = build_net(md.config["architecture"])
        net.load_state_dict(md.state_dict)
        return cls(net, md.config, device=device)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> "RestorationModel":
        """Load a model directory (uncached; :func:`ijtorch.models.store.load_model` caches)."""
        return cls.from_model_dir(load_model_dir(path), device=device)

    def save(self, path: str | Path) -> Path:
        """Save as a model directory (safetensors weights + config.json)."""
        return save_model_dir(path, self.net.state_dict(), self.config)

    # ------------------------------------------------------------- properties
    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    @property
    def ndim(self) -> int:
        return int(self.net.ndim)

    @property
    def residual(self) -> bool:
        return self.model_type in RESIDUAL_TYPES

    def normalize(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Normalised float32 image and the raw values ``(lo, hi)`` mapped to 0 and 1."""
        norm = self.config["normalization"]
        if norm.get("method") != "percentile":
            raise ModelError(f"normalization method {norm.get('method')!r} is unknown")
        lo, hi = np.percentile(image, [norm.get("low", 1.0), norm.get("high", 99.8)])
        return percentile_normalize(image, norm.get("low", 1.0), norm.get("high", 99.8)), float(lo), float(hi)

    # -------------------------------------------------------------- predict
    def _forward_numpy(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            with torch.autocast("cuda", enabled=self.device.startswith("cuda")):
                out = forward(self.net, x, self.residual).float()
            return out.cpu().numpy()

    def predict_normalized(self, x: np.ndarray, *, tile_size: int | Sequence[int] = 256, overlap: int = 48,
                           batch_size: int = 2, tiled: bool = True, progress: ProgressCallback | None = None,
                           cancel: Callable[[], bool] | None = None) -> np.ndarray:
        """Restore a normalised ``YX`` (or ``ZYX`` for 3D models) float image; same shape out.

        Tiles overlap by ``overlap`` pixels and are blended linearly across the overlap, so no
        seams appear; ``tiled=False`` runs the whole image at once (padded to the network's size
        multiple).
        """
        if x.ndim != self.ndim:
            raise ValueError(f"image has shape {x.shape}; this {self.ndim}D model needs {self.ndim} spatial axes")
        if not tiled:
            tiles: tuple[int, ...] = tuple(int(s) for s in x.shape)
        elif np.isscalar(tile_size):
            t = int(tile_size)  # type: ignore[arg-type]
            tiles = (t, t) if self.ndim == 2 else (min(32, t), t, t)
        else:
            tiles = tuple(int(s) for s in tile_size)  # type: ignore[union-attr]
        if hasattr(self.net, "set_noise"):  # blind-spot network: the posterior mean needs this image's noise
            from .blindspot import estimate_noise_model

            self.net.set_noise(*estimate_noise_model(x))
            # and tiles no larger than its training patches: on 256 px tiles a 64 px-trained one fell from
            # 33.8 to 26.9 dB on the benchmark's report images (its half-plane context runs past what it learned)
            patch = (self.config.get("training") or {}).get("patch_size") or [64, 64]
            tiles = tuple(min(t, int(p)) for t, p in zip(tiles, patch))
        ov = [min(int(overlap), t // 2) for t in tiles]
        out = predict_tiled(self._forward_numpy, x[None].astype(np.float32, copy=False), tile_shape=tiles,
                            overlap=ov, out_channels=1, size_multiple=self.net.size_multiple(),
                            batch_size=batch_size, blend="linear", progress=progress, cancel=cancel)
        return out[0]


# ------------------------------------------------------------------ training helpers
_OFFSET_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _neighbour_offsets(ndim: int, radius: int) -> np.ndarray:
    key = (ndim, radius)
    if key not in _OFFSET_CACHE:
        grids = np.meshgrid(*[np.arange(-radius, radius + 1)] * ndim, indexing="ij")
        offs = np.stack([g.ravel() for g in grids], 1)
        _OFFSET_CACHE[key] = offs[np.any(offs != 0, axis=1)]
    return _OFFSET_CACHE[key]


def _reflect(idx: np.ndarray, shape: np.ndarray) -> np.ndarray:
    idx = np.abs(idx)
    return np.clip(np.where(idx >= shape, 2 * (shape - 1) - idx, idx), 0, shape - 1)


def n2v_mask(batch: np.ndarray, rng: np.random.Generator, *, fraction: float = 0.01,
             radius: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Noise2Void blind-spot masking of a ``(B, 1, *spatial)`` batch of noisy patches.

    About ``fraction`` of the pixels of every patch (at least one) are chosen by stratified random
    sampling (one per grid cell of side ``fraction ** (-1/d)``) and replaced by the value of a
    uniformly random neighbour within ``radius`` (the centre excluded; reflected at the border).

    Returns
    -------
    masked : ndarray of float32
        The batch with replaced pixels (input for the network).
    mask : ndarray of float32
        1 at replaced pixels, else 0 (where the loss is evaluated against the original batch).
    """
    if not 0 < fraction < 0.5:
        raise ValueError(f"fraction={fraction!r}: expected a float in (0, 0.5)")
    if not isinstance(radius, (int, np.integer)) or radius < 1:
        raise ValueError(f"radius={radius!r}: expected a positive integer")
    spatial = batch.shape[2:]
    nd = len(spatial)
    step = max(1, int(round(fraction ** (-1.0 / nd))))
    grids = np.meshgrid(*[np.arange(0, s, step) for s in spatial], indexing="ij")
    cells = np.stack([g.ravel() for g in grids], 1)  # (n_cells, nd) cell origins
    masked = batch.astype(np.float32, copy=True)
    mask = np.zeros_like(masked)
    offsets = _neighbour_offsets(nd, int(radius))
    shape = np.asarray(spatial)
    for b in range(batch.shape[0]):
        pos = cells + rng.integers(0, step, size=cells.shape)
        pos = pos[np.all(pos < shape, axis=1)]
        off = offsets[rng.integers(0, len(offsets), size=len(pos))]
        nb = _reflect(pos + off, shape)
        back = np.all(nb == pos, axis=1)  # reflection led back to the centre: take the mirrored offset
        nb[back] = _reflect(pos[back] - off[back], shape)
        src = batch[b, 0][tuple(nb.T)]
        masked[b, 0][tuple(pos.T)] = src
        mask[b, 0][tuple(pos.T)] = 1.0
    return masked, mask


def mse_loss(residual: bool) -> Callable[[Any, Any], Any]:
    """Loss for supervised batches ``(x, y)``: MSE of the network output against ``y``."""

    def loss(net: Any, batch: Any) -> Any:
        import torch

        x, y = batch
        return torch.nn.functional.mse_loss(forward(net, x, residual), y)

    return loss


def masked_mse_loss(net: Any, batch: Any) -> Any:
    """Noise2Void loss for batches ``(masked, original, mask)``: MSE at masked pixels only."""
    x, y, m = batch
    d = (net(x) - y) ** 2 * m
    return d.sum() / m.sum().clamp_min(1.0)
