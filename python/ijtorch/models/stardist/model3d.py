"""A trained 3D StarDist model: network + rays + config, tiled prediction on the grid, save/load.

Same interface as :class:`~ijtorch.models.stardist.model.StarDistModel` (thresholds, normalisation,
``optimize_thresholds``, ``evaluate``, model directories), for ``ZYX`` volumes.

Tiled prediction reuses :func:`ijtorch.core.tiling.predict_tiled`, which needs outputs the size
of the input tiles, while the network outputs one value per ``grid`` cell (a full-resolution
output with 96 distance channels would need 400 bytes per voxel). The volume is therefore handed
to the tiler *packed*: each ``gz × gy × gx`` cell becomes one position with ``gz*gy*gx``
channels (space-to-depth); the tile function unpacks its tiles, runs the network and returns
grid-resolution maps, so tiles, overlaps and stitching all work in grid cells.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import numpy as np

from ijtorch.errors import ModelError
from ijtorch.core.progress import ProgressCallback
from ijtorch.core.tiling import predict_tiled

from . import geometry3d as s3
from . import network3d
from .model import StarDistModel

__all__ = ["StarDist3DModel", "MODEL_TYPE_3D"]

log = logging.getLogger(__name__)

MODEL_TYPE_3D = "stardist3d"
DEFAULT_TILE = (48, 160, 160)  # voxels; about 0.5 GB of activations with 16 base channels
DEFAULT_OVERLAP = (16, 32, 32)


def _per_axis(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    vals = (value,) * 3 if np.isscalar(value) else tuple(value)  # type: ignore[arg-type]
    if len(vals) != 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in vals):
        raise ValueError(f"{name}={value!r}: expected a non-negative integer or three (z, y, x)")
    return tuple(int(v) for v in vals)  # type: ignore[return-value]


def space_to_depth(x: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """``(Z, Y, X)`` with sizes divisible by ``grid`` → ``(gz*gy*gx, Z/gz, Y/gy, X/gx)``."""
    gz, gy, gx = grid
    z, y, w = x.shape
    return x.reshape(z // gz, gz, y // gy, gy, w // gx, gx).transpose(1, 3, 5, 0, 2, 4).reshape(gz * gy * gx, z // gz, y // gy, w // gx)


def depth_to_space(x: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`space_to_depth` for a batch: ``(B, G, z, y, x)`` → ``(B, 1, z*gz, y*gy, x*gx)``."""
    gz, gy, gx = grid
    b, _, z, y, w = x.shape
    return x.reshape(b, gz, gy, gx, z, y, w).transpose(0, 4, 1, 5, 2, 6, 3).reshape(b, 1, z * gz, y * gy, w * gx)


class StarDist3DModel(StarDistModel):
    """A 3D star-convex polyhedron instance segmentation model.

    Parameters
    ----------
    net : StarDistNet3D
        The network (its ``config`` is the ``architecture`` entry of the config; it holds ``grid``).
    config : dict
        As the 2D model, plus ``anisotropy`` (voxel size ``z, y, x`` relative to the smallest, the
        one the rays were built for), ``rays`` (``"fibonacci"``) and ``tiling`` (default
        ``tile_shape`` and ``overlap`` in voxels); ``axes`` is ``"ZYX"``.
    device : str
        Device the network runs on.

    Notes
    -----
    Volumes are segmented in voxel units: a volume whose z step differs from the training data's
    (``anisotropy``) should be resampled along z first.
    """

    model_type = MODEL_TYPE_3D
    axes = "ZYX"

    def __init__(self, net: Any, config: dict[str, Any], *, device: str = "cpu") -> None:
        config = dict(config)
        config.setdefault("anisotropy", [1.0, 1.0, 1.0])
        config.setdefault("rays", "fibonacci")
        config.setdefault("tiling", {"tile_shape": list(DEFAULT_TILE), "overlap": list(DEFAULT_OVERLAP)})
        config["grid"] = list(net.grid)
        if config["rays"] != "fibonacci":
            raise ModelError(f"rays={config['rays']!r} is unknown; this ijtorch knows 'fibonacci'")
        super().__init__(net, config, device=device)
        self.rays = s3.fibonacci_rays(self.n_rays, tuple(config["anisotropy"]))

    @staticmethod
    def build_net(architecture: dict[str, Any]) -> Any:
        return network3d.StarDistNet3D(**architecture)

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.net.grid)  # type: ignore[return-value]

    def predict_maps(self, image: np.ndarray, *, normalize: bool = True, tile_size: int | Sequence[int] | None = None,
                     overlap: int | Sequence[int] | None = None, batch_size: int = 1,
                     test_time_augmentation: bool = False, progress: ProgressCallback | None = None,
                     cancel: Callable[[], bool] | None = None, features: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Probability ``(Zg, Yg, Xg)`` and distances ``(Zg, Yg, Xg, n_rays)`` on the grid, predicted in tiles.

        ``tile_size`` and ``overlap`` are voxels (one number for all axes or ``(z, y, x)``;
        default: the model's ``tiling``). The overlap should exceed the largest object's extent
        so that stitched maps equal whole-volume maps around every object. Test-time augmentation
        is not implemented in 3D (the Fibonacci rays do not map onto each other under flips).
        ``features``: a collector that receives the U-Net bottleneck features of every tile (the
        dataset-shift check, :mod:`ijtorch.models.shift`; see :meth:`collecting`).
        """
        if features is not None:
            with self.collecting(features):
                return self.predict_maps(image, normalize=normalize, tile_size=tile_size, overlap=overlap,
                                         batch_size=batch_size, test_time_augmentation=test_time_augmentation,
                                         progress=progress, cancel=cancel)
        if test_time_augmentation:
            raise ValueError("test_time_augmentation=True is available for 2D (YX) models; this is a 3D (ZYX) model")
        if image.ndim != 3:
            raise ValueError(f"image has shape {image.shape}; a 3D model needs a ZYX volume")
        tiling = self.config.get("tiling", {})
        tile = _per_axis(tile_size if tile_size is not None else tiling.get("tile_shape", DEFAULT_TILE), "tile_size")
        ovl = _per_axis(overlap if overlap is not None else tiling.get("overlap", DEFAULT_OVERLAP), "overlap")
        if min(tile) < 1:
            raise ValueError(f"tile_size={tile_size!r}: every entry must be >= 1")
        g = self.grid
        mult = self.net.size_multiple()  # multiples of the grid
        x = self.normalize(image) if normalize else image.astype(np.float32)
        # reflect-pad the full-resolution volume to the network's multiples, then pack grid cells
        pads = [(0, int(math.ceil(s / m) * m) - s) for s, m in zip(x.shape, mult)]
        if any(p[1] for p in pads):
            x = np.pad(x, pads, mode="reflect" if all(p[1] < s for p, s in zip(pads, x.shape)) else "constant")
        packed = space_to_depth(x, g)

        def forward(batch: np.ndarray) -> np.ndarray:
            return self._forward_numpy(depth_to_space(batch, g))

        out = predict_tiled(forward, packed, tile_shape=[max(1, -(-t // gg)) for t, gg in zip(tile, g)],
                            overlap=[-(-o // gg) for o, gg in zip(ovl, g)], out_channels=1 + self.n_rays,
                            size_multiple=[m // gg for m, gg in zip(mult, g)], batch_size=batch_size, blend="crop",
                            progress=progress, cancel=cancel)
        keep = tuple(slice(0, -(-s // gg)) for s, gg in zip(image.shape, g))  # grid points inside the volume
        out = out[(slice(None),) + keep]
        return out[0], np.moveaxis(out[1:], 0, -1)

    def predict_instances(self, image: np.ndarray, *, prob_threshold: float | None = None,
                          nms_threshold: float | None = None, normalize: bool = True,
                          tile_size: int | Sequence[int] | None = None, overlap: int | Sequence[int] | None = None,
                          batch_size: int = 1, test_time_augmentation: bool = False, scale: float = 1.0,
                          progress: ProgressCallback | None = None, cancel: Callable[[], bool] | None = None,
                          dtype: Any = np.int32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Label volume of a ``ZYX`` image; thresholds default to the tuned ones in the config.
        ``test_time_augmentation`` and ``scale`` other than 1 are refused (2D only). With a
        dataset-shift reference, ``details`` holds ``shift_score`` and ``shift_inputs`` as in 2D
        (bottleneck features of the 3D U-Net, pooled over the volume's tiles)."""
        return super().predict_instances(image, prob_threshold=prob_threshold, nms_threshold=nms_threshold,
                                         normalize=normalize, tile_size=tile_size, overlap=overlap,  # type: ignore[arg-type]
                                         batch_size=batch_size, test_time_augmentation=test_time_augmentation,
                                         scale=scale, progress=progress, cancel=cancel, dtype=dtype)

    def instances_from_maps(self, prob: np.ndarray, dist: np.ndarray, shape: tuple[int, ...], *,
                            prob_threshold: float, nms_threshold: float,
                            dtype: Any = np.int32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return s3.instances_from_maps_3d(prob, dist, self.rays, shape, grid=self.grid, prob_threshold=prob_threshold,
                                         nms_threshold=nms_threshold, dtype=dtype)
