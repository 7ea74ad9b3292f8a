"""Training pipeline for 2D StarDist models (from scratch or fine-tuning a model directory).

:func:`train_stardist` normalises every image, holds out a seeded validation split (never trained
on), samples augmented foreground-balanced patches, computes StarDist targets per patch, trains with
:class:`~ijtorch.train.trainer.Trainer` (checkpoint every epoch, resumable), tunes the probability
and NMS thresholds on the validation images and saves a model directory whose config records the
split, the augmentation, the training history and the validation metrics.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .data import AugmentConfig, Pair, percentile_normalize, random_patch, split_train_val
from .progress import ProgressCallback

__all__ = ["train_stardist", "stardist_targets", "tune_and_evaluate", "split_pairs"]

log = logging.getLogger(__name__)


def stardist_targets(labels: np.ndarray, n_rays: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prob (Y, X), dist (n_rays, Y, X))`` float32 training targets of a 2D label map."""
    from ijtorch.models import stardist as sd

    return sd.object_probabilities(labels), np.moveaxis(sd.star_distances(labels, n_rays), -1, 0)


def split_pairs(pairs: Sequence[Pair], *, val_names: Sequence[str] | None, val_fraction: float,
                seed: int) -> tuple[list[int], list[int]]:
    """``(train indices, validation indices)``: the items named in ``val_names``, else a seeded split."""
    names = [p.name for p in pairs]
    if val_names is not None:
        unknown = sorted(set(val_names) - set(names))
        if unknown:
            raise ValueError(f"val_names contains names not in pairs: {unknown[:5]}")
        val_idx = [i for i, n in enumerate(names) if n in set(val_names)]
        train_idx = [i for i in range(len(names)) if i not in set(val_idx)]
    else:
        train_idx, val_idx = split_train_val(len(pairs), val_fraction=val_fraction, seed=seed)
    if not train_idx:
        raise ValueError("no training items left after the validation split")
    return train_idx, val_idx


def _patch_batches(items: Sequence[tuple[np.ndarray, np.ndarray]], *, n_batches: int, batch_size: int,
                   patch: int, n_rays: int, augment: AugmentConfig | None,
                   fg_fraction: float) -> Callable[[np.random.Generator], Iterator[tuple[np.ndarray, ...]]]:
    weights = np.array([lab.size for _, lab in items], np.float64) ** 0.5
    weights /= weights.sum()

    def batches(rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        for _ in range(n_batches):
            xs, ps, ds = [], [], []
            for _ in range(batch_size):
                img, lab = items[int(rng.choice(len(items), p=weights))]
                pi, pl = random_patch(img, lab, (patch, patch), rng, fg_fraction=fg_fraction, augment=augment)
                prob, dist = stardist_targets(pl, n_rays)
                xs.append(pi[None])
                ps.append(prob[None])
                ds.append(dist)
            yield np.stack(xs), np.stack(ps), np.stack(ds)

    class _Sized:
        def __len__(self) -> int:
            return n_batches

        def __call__(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
            return batches(rng)

    return _Sized()


def tune_and_evaluate(model: Any, val_pairs: Sequence[Pair], *, optimize: bool = True, evaluate: bool = True,
                      progress: ProgressCallback | None = None) -> tuple[dict[str, float], dict[str, float]]:
    """Tune thresholds and measure AP@0.5/0.75 on validation pairs; results go into ``model.config``.

    Returns ``(threshold_search, metrics)``; ``model.config["metrics"]`` records the metrics with the
    number of images and objects they were measured on.
    """
    tuned: dict[str, float] = {}
    metrics: dict[str, float] = {}
    if val_pairs and (optimize or evaluate):
        images = [p.image for p in val_pairs]
        labels = [p.labels for p in val_pairs]
        if optimize:
            tuned = model.optimize_thresholds(images, labels, progress=progress)
        if evaluate:
            metrics = model.evaluate(images, labels, iou_thresholds=(0.5, 0.75))
    model.config["metrics"] = {"split": "validation", "n_images": len(val_pairs),
                               "n_objects": int(sum(len(np.unique(p.labels)) - 1 for p in val_pairs)),
                               **{k: round(v, 4) for k, v in metrics.items()}}
    if tuned:
        model.config["metrics"]["threshold_search_score"] = round(tuned["score"], 4)
    return tuned, metrics


def train_stardist(
    pairs: Sequence[Pair],
    *,
    output: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    val_names: Sequence[str] | None = None,
    seed: int = 0,
    epochs: int = 20,
    steps_per_epoch: int = 100,
    batch_size: int = 8,
    patch_size: int = 128,
    n_rays: int = 32,
    grid: int = 2,
    base_channels: int = 24,
    depth: int = 3,
    head_channels: int = 32,
    lr: float = 1e-3,
    patience: int | None = None,
    augment: AugmentConfig | dict | None = None,
    fg_fraction: float = 0.85,
    normalization: tuple[float, float] = (1.0, 99.8),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str = "auto",
    time_limit_s: float | None = None,
    optimize_thresholds: bool = True,
    evaluate: bool = True,
    progress: ProgressCallback | None = None,
    progress_bar: bool | None = None,
    cancel: Callable[[], bool] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """Train a 2D StarDist model and save it as a model directory.

    Parameters
    ----------
    pairs : sequence of Pair
        Training items (``YX`` images and label maps), e.g. from :func:`ijtorch.train.data.load_pairs`.
    output : path
        Model directory to write.
    base_model : name or path, optional
        Fine-tune this model: its architecture, normalisation and weights are reused.
    val_fraction, val_names, seed
        Validation split: ``val_names`` (item names) if given, else
        :func:`~ijtorch.train.data.split_train_val` with ``val_fraction`` and ``seed``.
    epochs, steps_per_epoch, batch_size, patch_size
        Training length and patch sampling.
    n_rays, grid, base_channels, depth, head_channels
        Architecture (ignored when fine-tuning, except ``grid``).
    lr, patience
        AdamW learning rate (cosine schedule) and early-stopping patience on the validation loss.
    augment : AugmentConfig or dict, optional
        Augmentation settings (defaults of :class:`AugmentConfig`).
    time_limit_s : float, optional
        Stop training (gracefully, after the current epoch) once this much time has passed.
    checkpoint_dir, resume
        Per-epoch checkpoints and resuming after a crash (default ``<output>.checkpoints``).
    optimize_thresholds, evaluate : bool
        Tune thresholds / measure AP@0.5 and AP@0.75 on the validation images after training.

    Returns
    -------
    dict
        Summary: output path, epochs run, seconds, thresholds, validation metrics, split sizes.
    """
    import torch

    from ijtorch.models import stardist as sd
    from ijtorch.models.device import resolve_device
    from ijtorch.models.stardist_model import StarDistModel
    from ijtorch.models.store import load_model_dir, resolve_model

    from .trainer import Trainer

    if not pairs:
        raise ValueError("pairs is empty: nothing to train on")
    for p in pairs:
        if p.image.ndim != 2:
            raise ValueError(f"item {p.name!r} has shape {p.image.shape}; train_stardist needs 2D (YX) images")
    aug = AugmentConfig(**augment) if isinstance(augment, dict) else (augment or AugmentConfig())
    names = [p.name for p in pairs]
    train_idx, val_idx = split_pairs(pairs, val_names=val_names, val_fraction=val_fraction, seed=seed)
    dev = resolve_device(device)

    base_cfg: dict[str, Any] = {}
    if base_model is not None:
        md = load_model_dir(resolve_model(base_model))
        if md.config.get("model_type") != "stardist2d":
            raise ValueError(f"base_model={str(base_model)!r} has model_type {md.config.get('model_type')!r}; expected 'stardist2d'")
        base_cfg = md.config
        net = sd.StarDistNet(**md.config["architecture"])
        net.load_state_dict(md.state_dict)
        norm_cfg = dict(md.config.get("normalization", {}))
        n_rays = net.n_rays
    else:
        torch.manual_seed(seed)
        net = sd.StarDistNet(n_rays, 1, base_channels=base_channels, depth=depth, head_channels=head_channels)
        norm_cfg = {"method": "percentile", "low": float(normalization[0]), "high": float(normalization[1])}

    def norm(img: np.ndarray) -> np.ndarray:
        return percentile_normalize(img, norm_cfg.get("low", 1.0), norm_cfg.get("high", 99.8))

    train_items = [(norm(pairs[i].image), pairs[i].labels) for i in train_idx]
    val_items = [(norm(pairs[i].image), pairs[i].labels) for i in val_idx]
    train_data = _patch_batches(train_items, n_batches=steps_per_epoch, batch_size=batch_size, patch=patch_size,
                                n_rays=n_rays, augment=aug, fg_fraction=fg_fraction)
    val_data = None
    if val_items:
        vrng = np.random.default_rng([seed, 999])
        fixed = list(_patch_batches(val_items, n_batches=max(2, 32 // batch_size), batch_size=batch_size,
                                    patch=patch_size, n_rays=n_rays, augment=None, fg_fraction=fg_fraction)(vrng))
        val_data = fixed
    t_start = time.monotonic()

    def _cancel() -> bool:
        if cancel is not None and cancel():
            return True
        return time_limit_s is not None and time.monotonic() - t_start > time_limit_s

    output = Path(output)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else output.with_name(output.name + ".checkpoints")
    trainer = Trainer(net, sd.stardist_loss, train_data, val_data=val_data, monitor="val_loss", mode="min",
                      epochs=epochs, lr=lr, scheduler="cosine", patience=patience, checkpoint_dir=ckpt,
                      resume=resume, seed=seed, device=dev, grad_clip=10.0, progress=progress,
                      progress_bar=progress_bar, cancel=_cancel)
    result = trainer.fit()
    train_seconds = time.monotonic() - t_start

    config: dict[str, Any] = {
        "model_type": "stardist2d",
        "name": output.name,
        "description": description or base_cfg.get("description", "2D StarDist (star-convex polygons) model"),
        "axes": "YX",
        "grid": int(grid),
        "normalization": norm_cfg,
        "thresholds": dict(base_cfg.get("thresholds", {"prob": 0.5, "nms": 0.4})),
        "training": {
            "items": len(pairs),
            "train_names": [names[i] for i in train_idx],
            "val_names": [names[i] for i in val_idx],
            "split": {"val_fraction": val_fraction, "seed": seed, "explicit": val_names is not None},
            "base_model": str(base_model) if base_model is not None else None,
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "steps_per_epoch": steps_per_epoch, "batch_size": batch_size, "patch_size": patch_size,
            "lr": lr, "seed": seed, "augment": aug.model_dump(), "fg_fraction": fg_fraction,
            "seconds": round(sum(h.get("seconds", 0.0) for h in result.history), 1),  # all runs incl. resumed
            "device": dev, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "history": [{k: round(float(v), 5) for k, v in h.items()} for h in result.history],
            "cancelled_or_time_limited": result.cancelled,
        },
    }
    model = StarDistModel(trainer.model, config, device=dev)
    model.save(output)  # a usable model exists even if tuning below is interrupted
    tuned, metrics = tune_and_evaluate(model, [pairs[i] for i in val_idx], optimize=optimize_thresholds,
                                       evaluate=evaluate, progress=progress)
    model.save(output)
    summary = {
        "output": str(output), "method": "stardist", "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "best_val_loss": result.best_metric,
        "train_seconds": round(train_seconds, 1), "n_train": len(train_idx), "n_val": len(val_idx),
        "thresholds": model.config["thresholds"], "threshold_search": tuned, "metrics": metrics,
        "weights_bytes": (output / "weights.safetensors").stat().st_size,
        "stopped_early": result.stopped_early, "cancelled": result.cancelled,
    }
    log.info("trained StarDist model saved to %s: %s", output, {k: v for k, v in summary.items() if k != "metrics"})
    return summary
