"""Training pipeline for 3D StarDist models (star-convex polyhedra), from scratch or fine-tuning.

Mirrors :func:`ijtorch.train.stardist_train.train_stardist` for ``ZYX`` volumes: a seeded
validation split, augmented foreground-balanced 3D patches (flips, YX rotations, zoom, elastic,
intensity), StarDist targets per patch on the network's ``grid``, the resumable
:class:`~ijtorch.train.trainer.Trainer` with the same loss as 2D, threshold tuning and validation
metrics, and a model directory (``model_type="stardist3d"``) that records the anisotropy the rays
were built for, the grid and the default tiling. The steps shared with 2D are the private helpers of
:mod:`ijtorch.train.stardist_train`; what is 3D (rays, anisotropy, grid, patch shape, tiling) is here.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .data import AugmentConfig, Pair
from ..core.progress import ProgressCallback
from .stardist_train import (_batch_sources, _fit, _load_base_model, _percentile_normalization, _save_tuned,
                             _setup, _TargetBatches, _training_record)

__all__ = ["train_stardist3d", "stardist3d_targets", "patch_shape_3d"]

log = logging.getLogger(__name__)


def stardist3d_targets(labels: np.ndarray, rays: Any, anisotropy: Sequence[float],
                       grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(prob (Zg, Yg, Xg), dist (n_rays, Zg, Yg, Xg))`` float32 targets of a label volume on ``grid``."""
    from ijtorch.models.stardist import geometry3d as s3

    prob = s3.object_probabilities_3d(labels, anisotropy, grid)
    dist = s3.star_distances_3d(labels, rays, grid)
    return prob, np.ascontiguousarray(np.moveaxis(dist, -1, 0))


def patch_shape_3d(patch_size: int | Sequence[int], anisotropy: Sequence[float],
                   multiple: Sequence[int]) -> tuple[int, int, int]:
    """Patch shape ``(z, y, x)``: a number is the YX edge, with z covering the same physical length
    (``edge / anisotropy_z``); every size is rounded up to the network's ``multiple``."""
    if np.isscalar(patch_size):
        p = int(patch_size)  # type: ignore[arg-type]
        if p < 1:
            raise ValueError(f"patch_size={patch_size!r}: expected a positive integer or (z, y, x)")
        shape = (max(1, round(p * anisotropy[1] / anisotropy[0])), p, p)
    else:
        shape = tuple(int(v) for v in patch_size)  # type: ignore[union-attr]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"patch_size={patch_size!r}: expected a positive integer or (z, y, x)")
    return tuple(int(math.ceil(s / m) * m) for s, m in zip(shape, multiple))  # type: ignore[return-value]


def _object_extents(labels: Sequence[np.ndarray]) -> np.ndarray:
    ext = [[s.stop - s.start for s in sl] for lab in labels for sl in ndi.find_objects(lab) if sl is not None]
    return np.asarray(ext, np.float64).reshape(-1, 3)


def _patch_batches(items: Sequence[tuple[np.ndarray, np.ndarray]], *, n_batches: int, batch_size: int,
                   patch: tuple[int, int, int], rays: Any, anisotropy: Sequence[float], grid: Sequence[int],
                   augment: AugmentConfig | None, fg_fraction: float, workers: int = 0) -> _TargetBatches:
    targets = functools.partial(stardist3d_targets, rays=rays, anisotropy=anisotropy, grid=grid)
    return _TargetBatches(items, n_batches=n_batches, batch_size=batch_size, patch=patch, targets=targets,
                          augment=augment, fg_fraction=fg_fraction, workers=workers)


def train_stardist3d(
    pairs: Sequence[Pair],
    *,
    output: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    val_names: Sequence[str] | None = None,
    seed: int = 0,
    epochs: int = 20,
    steps_per_epoch: int = 100,
    batch_size: int = 2,
    patch_size: int | Sequence[int] = 96,
    n_rays: int = 96,
    anisotropy: float | Sequence[float] | None = None,
    grid: int | Sequence[int] | None = None,
    base_channels: int = 16,
    depth: int = 2,
    head_channels: int = 32,
    pool_z: bool = True,
    lr: float = 1e-3,
    patience: int | None = None,
    augment: AugmentConfig | dict | None = None,
    fg_fraction: float = 0.85,
    normalization: tuple[float, float] = (1.0, 99.8),
    tile_shape: Sequence[int] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str = "auto",
    workers: int | None = None,
    time_limit_s: float | None = None,
    keep: str = "best",
    optimize_thresholds: bool = True,
    evaluate: bool = True,
    progress: ProgressCallback | None = None,
    progress_bar: bool | None = None,
    cancel: Callable[[], bool] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """Train a 3D StarDist model on ``ZYX`` volumes and save it as a model directory.

    Parameters
    ----------
    pairs : sequence of Pair
        ``ZYX`` image volumes and label volumes (e.g. :func:`ijtorch.train.data.load_pairs` of
        folders of 3D TIFFs).
    output : path
        Model directory to write.
    base_model : name or path, optional
        Fine-tune this ``stardist3d`` model: its architecture, rays (``n_rays``, ``anisotropy``),
        normalisation, tiling and weights are reused (``grid`` may be changed: the weights do not
        depend on it).
    patch_size : int or (z, y, x)
        Training patch; a number is the YX edge and z covers the same physical length.
    n_rays : int
        Rays on the sphere (ignored when fine-tuning).
    anisotropy : float or (z, y, x), optional
        Voxel size relative to the smallest; default: estimated from the objects' median extents
        (:func:`ijtorch.models.stardist.geometry3d.anisotropy_from_labels`), as StarDist does.
    grid : int or (z, y, x), optional
        Output subsampling; default: 2 along axes with anisotropy below 1.5, else 1.
    base_channels, depth, head_channels, pool_z
        Architecture (ignored when fine-tuning).
    tile_shape : (z, y, x), optional
        Default prediction tile stored in the model (the overlap is set from the objects' extents).
    val_fraction, val_names, seed, epochs, steps_per_epoch, batch_size, lr, patience, augment,
    fg_fraction, normalization, checkpoint_dir, resume, device, workers, time_limit_s, keep, optimize_thresholds,
    evaluate, progress, progress_bar, cancel, description
        As :func:`ijtorch.train.stardist_train.train_stardist`.

    Returns
    -------
    dict
        Summary: output path, epochs run, seconds, thresholds, validation metrics, split sizes.
    """
    import torch

    from ijtorch.models.stardist import geometry3d as s3
    from ijtorch.models.stardist import network3d
    from ijtorch.models.stardist.model3d import DEFAULT_TILE, StarDist3DModel

    setup = _setup(pairs, ndim=3, requirement="train_stardist3d needs 3D (ZYX) volumes", augment=augment,
                   val_names=val_names, val_fraction=val_fraction, seed=seed, device=device, workers=workers,
                   keep=keep)
    extents = _object_extents([p.labels for p in pairs])
    if extents.size == 0:
        raise ValueError("the label volumes hold no objects: nothing to learn")

    base_cfg: dict[str, Any] = {}
    if base_model is not None:
        md = _load_base_model(base_model, "stardist3d")
        base_cfg = md.config
        arch = dict(md.config["architecture"])
        if grid is not None:
            arch["grid"] = list(s3._triple(grid, "grid", integer=True))
        net = network3d.StarDistNet3D(**arch)
        net.load_state_dict(md.state_dict)
        aniso = tuple(float(a) for a in md.config.get("anisotropy", (1.0, 1.0, 1.0)))
        if anisotropy is not None and s3._triple(anisotropy, "anisotropy") != aniso:
            log.warning("anisotropy=%s ignored: the base model's rays were built for %s", anisotropy, aniso)
        norm_cfg = dict(md.config.get("normalization", {}))
    else:
        aniso = (s3.anisotropy_from_labels([pairs[i].labels for i in setup.train_idx]) if anisotropy is None
                 else s3._triple(anisotropy, "anisotropy"))
        net_grid = s3.grid_from_anisotropy(aniso) if grid is None else s3._triple(grid, "grid", integer=True)
        torch.manual_seed(seed)
        net = network3d.StarDistNet3D(n_rays, 1, grid=net_grid, base_channels=base_channels, depth=depth,
                               head_channels=head_channels, pool_z=pool_z)
        norm_cfg = _percentile_normalization(normalization)
    rays = s3.fibonacci_rays(net.n_rays, aniso)
    g = net.grid
    patch = patch_shape_3d(patch_size, aniso, net.size_multiple())

    def batches(items: Sequence[tuple[np.ndarray, np.ndarray]], n_batches: int, aug: AugmentConfig | None,
                workers: int = 0) -> Any:
        return _patch_batches(items, n_batches=n_batches, batch_size=batch_size, patch=patch, rays=rays,
                              anisotropy=aniso, grid=g, augment=aug, fg_fraction=fg_fraction, workers=workers)

    train_data, val_data = _batch_sources(setup, norm_cfg, batches, steps_per_epoch=steps_per_epoch,
                                          val_batches=max(2, 8 // batch_size))
    output = Path(output)
    trainer, result, train_seconds = _fit(
        setup, net, train_data, val_data, output=output, checkpoint_dir=checkpoint_dir, epochs=epochs, lr=lr,
        patience=patience, resume=resume, time_limit_s=time_limit_s, progress=progress, progress_bar=progress_bar,
        cancel=cancel)

    # overlap: the largest object extent plus a margin, so stitched tiles see every object whole
    overlap = [int(math.ceil(e)) + 8 for e in extents.max(0)]
    if base_cfg.get("tiling"):
        overlap = [max(a, int(b)) for a, b in zip(overlap, base_cfg["tiling"].get("overlap", overlap))]
    tile = list(tile_shape) if tile_shape is not None else list(base_cfg.get("tiling", {}).get("tile_shape", DEFAULT_TILE))
    config: dict[str, Any] = {
        "model_type": "stardist3d",
        "name": output.name,
        "description": description or base_cfg.get("description", "3D StarDist (star-convex polyhedra) model"),
        "axes": "ZYX",
        "anisotropy": [float(a) for a in aniso],
        "rays": "fibonacci",
        "tiling": {"tile_shape": [int(t) for t in tile], "overlap": overlap},
        "normalization": norm_cfg,
        "thresholds": dict(base_cfg.get("thresholds", {"prob": 0.5, "nms": 0.4})),
        "training": _training_record(
            setup, result, base_model=base_model, steps_per_epoch=steps_per_epoch, batch_size=batch_size,
            patch={"patch_shape": list(patch)}, lr=lr, fg_fraction=fg_fraction,
            extra={"median_object_extent": [float(v) for v in np.median(extents, 0)]}),
    }
    model = StarDist3DModel(trainer.model, config, device=setup.device)
    summary = _save_tuned(setup, model, output, result, train_seconds, method="stardist3d",
                          optimize_thresholds=optimize_thresholds, evaluate=evaluate, progress=progress,
                          extra={"anisotropy": list(aniso), "grid": list(g), "patch_shape": list(patch)})
    _fit_shift_reference(model, setup, output)
    log.info("trained 3D StarDist model saved to %s: %s", output, {k: v for k, v in summary.items() if k != "metrics"})
    return summary


def _fit_shift_reference(model: Any, setup: Any, output: Path) -> None:
    """The dataset-shift reference (:mod:`ijtorch.models.shift`: bottleneck features of the training
    volumes, threshold calibrated on the validation volumes), saved with the model; a model without
    one still works (it says so)."""
    from ijtorch.models.shift import CONFIG_KEY, fit_reference

    try:
        fit_reference(model, [setup.pairs[i].image for i in setup.train_idx],
                      [setup.pairs[i].image for i in setup.val_idx])
    except Exception as exc:  # noqa: BLE001 - a fine-tuned base model's old reference must not survive
        log.warning("no dataset-shift reference for %s: %s", output, exc)
        model.config.pop(CONFIG_KEY, None)
    model.save(output)
