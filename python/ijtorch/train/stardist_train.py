"""Training pipeline for 2D StarDist models (from scratch or fine-tuning a model directory).

:func:`train_stardist` normalises every image, holds out a seeded validation split (never trained
on), samples augmented foreground-balanced patches, computes StarDist targets per patch, trains with
:class:`~ijtorch.train.trainer.Trainer` (checkpoint every epoch, resumable), tunes the probability
and NMS thresholds on the validation images and saves a model directory whose config records the
split, the augmentation, the training history and the validation metrics.

The steps that do not depend on the geometry (input checks, split, base-model loading, batch
sources, the Trainer run, the ``training`` record, saving, tuning and the summary) are private
helpers here that :mod:`ijtorch.train.stardist3d_train` calls too, so 2D and 3D training cannot
drift apart; rays, grid, anisotropy, tiling and the model classes stay in each training function.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .data import AugmentConfig, Pair, random_patch, split_train_val
from ..core.normalize import percentile_normalize
from ..core.progress import ProgressCallback

__all__ = ["train_stardist", "stardist_targets", "tune_and_evaluate", "split_pairs"]

log = logging.getLogger(__name__)


def stardist_targets(labels: np.ndarray, n_rays: int) -> tuple[np.ndarray, np.ndarray]:
    """``(prob (Y, X), dist (n_rays, Y, X))`` float32 training targets of a 2D label map."""
    from ijtorch.models.stardist import geometry as sd

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


TargetFn = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def _make_batch(spec: tuple, seed: int) -> tuple[np.ndarray, ...]:
    """One batch ``(image (N,1,*patch), prob (N,1,...), dist (N,R,...))`` from its own seed."""
    items, weights, batch_size, patch, targets, augment, fg_fraction = spec
    rng = np.random.default_rng(seed)
    xs, ps, ds = [], [], []
    for _ in range(batch_size):
        img, lab = items[int(rng.choice(len(items), p=weights))]
        pi, pl = random_patch(img, lab, patch, rng, fg_fraction=fg_fraction, augment=augment)
        prob, dist = targets(pl)
        xs.append(pi[None])
        ps.append(prob[None])
        ds.append(dist)
    return np.stack(xs), np.stack(ps), np.stack(ds)


_WORKER_SPEC: tuple | None = None


def _init_batch_worker(spec: tuple) -> None:
    global _WORKER_SPEC
    _WORKER_SPEC = spec


def _worker_batch(seed: int) -> tuple[np.ndarray, ...]:
    assert _WORKER_SPEC is not None, "batch worker not initialised"
    return _make_batch(_WORKER_SPEC, seed)


class _TargetBatches:
    """A sized batch source for :class:`~ijtorch.train.trainer.Trainer`: ``n_batches`` batches of
    ``(image (N,1,*patch), prob (N,1,...), dist (N,R,...))`` from patches drawn with probability
    proportional to the square root of the item size; ``targets`` turns a label patch into
    ``(prob, dist)`` (2D or 3D).

    Every batch is made from a seed of its own (drawn from the epoch's ``rng``), so ``workers``
    changes only the speed, never the batches. With ``workers > 0`` batches are made ahead in
    that many *spawned* processes (augmentation and targets cost about as much as a training step
    on CPU and far more on a GPU); spawn, not fork, because forking a process that hosts a JVM is
    unsafe. :meth:`close` stops them.
    """

    def __init__(self, items: Sequence[tuple[np.ndarray, np.ndarray]], *, n_batches: int, batch_size: int,
                 patch: tuple[int, ...], targets: TargetFn, augment: AugmentConfig | None, fg_fraction: float,
                 workers: int = 0) -> None:
        weights = np.array([lab.size for _, lab in items], np.float64) ** 0.5
        self.spec = (list(items), weights / weights.sum(), batch_size, patch, targets, augment, fg_fraction)
        self.n_batches = n_batches
        self.workers = int(workers)
        self._pool: Any = None

    def __len__(self) -> int:
        return self.n_batches

    def __call__(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        seeds = [int(s) for s in rng.integers(0, 2**63 - 1, size=self.n_batches)]
        if self.workers <= 0:
            return (_make_batch(self.spec, s) for s in seeds)
        return self._parallel(seeds)

    def _parallel(self, seeds: list[int]) -> Iterator[tuple[np.ndarray, ...]]:
        import collections
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_batch_worker, initargs=(self.spec,))
        ahead: collections.deque = collections.deque()
        todo = iter(seeds)
        try:
            for seed in todo:  # keep 2 batches per worker in flight: bounded memory
                ahead.append(self._pool.submit(_worker_batch, seed))
                if len(ahead) >= 2 * self.workers:
                    break
            while ahead:
                batch = ahead.popleft().result()
                seed = next(todo, None)
                if seed is not None:
                    ahead.append(self._pool.submit(_worker_batch, seed))
                yield batch
        finally:
            for f in ahead:
                f.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _patch_batches(items: Sequence[tuple[np.ndarray, np.ndarray]], *, n_batches: int, batch_size: int,
                   patch: int, n_rays: int, augment: AugmentConfig | None, fg_fraction: float,
                   workers: int = 0) -> _TargetBatches:
    return _TargetBatches(items, n_batches=n_batches, batch_size=batch_size, patch=(patch, patch),
                          targets=functools.partial(stardist_targets, n_rays=n_rays), augment=augment,
                          fg_fraction=fg_fraction, workers=workers)


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


@dataclass(frozen=True)
class _Setup:
    """Checked training items, their validation split and the run settings 2D and 3D share."""

    pairs: Sequence[Pair]
    train_idx: list[int]
    val_idx: list[int]
    val_fraction: float
    val_names: Sequence[str] | None
    seed: int
    augment: AugmentConfig
    device: str
    workers: int
    keep: str


def _setup(pairs: Sequence[Pair], *, ndim: int, requirement: str, augment: AugmentConfig | dict | None,
           val_names: Sequence[str] | None, val_fraction: float, seed: int, device: str,
           workers: int | None = None, keep: str = "best") -> _Setup:
    """Check that ``pairs`` is non-empty with ``ndim``-D images (``requirement`` ends the error
    message), resolve the augmentation, the validation split, the device, the number of
    batch-making processes (``None``: one per spare CPU core, at most 8, so the accelerator or
    the training threads are kept busy) and which weights to keep."""
    from ijtorch.models.device import resolve_device

    if keep not in ("best", "final"):
        raise ValueError(f"keep={keep!r}: accepted values are 'best' and 'final'")
    if not pairs:
        raise ValueError("pairs is empty: nothing to train on")
    for p in pairs:
        if p.image.ndim != ndim:
            raise ValueError(f"item {p.name!r} has shape {p.image.shape}; {requirement}")
    aug = AugmentConfig(**augment) if isinstance(augment, dict) else (augment or AugmentConfig())
    train_idx, val_idx = split_pairs(pairs, val_names=val_names, val_fraction=val_fraction, seed=seed)
    if workers is None:
        workers = min(8, max(0, (os.cpu_count() or 1) - 1))
    elif not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers={workers!r}: expected None or an integer >= 0")
    return _Setup(pairs, train_idx, val_idx, val_fraction, val_names, seed, aug, resolve_device(device), int(workers),
                  keep)


def _load_base_model(base_model: str | os.PathLike, model_type: str) -> Any:
    """The model directory to fine-tune; an error unless it holds a ``model_type`` model."""
    from ijtorch.models.store import load_model_dir, resolve_model

    md = load_model_dir(resolve_model(base_model))
    if md.config.get("model_type") != model_type:
        raise ValueError(f"base_model={str(base_model)!r} has model_type {md.config.get('model_type')!r}; "
                         f"expected {model_type!r}")
    return md


def _percentile_normalization(normalization: tuple[float, float]) -> dict[str, Any]:
    return {"method": "percentile", "low": float(normalization[0]), "high": float(normalization[1])}


def _batch_sources(setup: _Setup, norm_cfg: dict[str, Any], batches: Callable[..., Any], *,
                   steps_per_epoch: int, val_batches: int) -> tuple[Any, list | None]:
    """``(train source, fixed validation batches or None)`` from the normalised items;
    ``batches(items, n_batches, augment, workers=0)`` samples patches and targets for the geometry
    at hand (a :class:`_TargetBatches`; ``_fit`` closes the training source).
    The validation batches are drawn once, unaugmented, from a seed of their own."""

    def normalized(indices: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        low, high = norm_cfg.get("low", 1.0), norm_cfg.get("high", 99.8)
        return [(percentile_normalize(setup.pairs[i].image, low, high), setup.pairs[i].labels) for i in indices]

    train_items, val_items = normalized(setup.train_idx), normalized(setup.val_idx)
    train_data = batches(train_items, steps_per_epoch, setup.augment, workers=setup.workers)
    val_data = None
    if val_items:
        vrng = np.random.default_rng([setup.seed, 999])
        val_data = list(batches(val_items, val_batches, None)(vrng))
    return train_data, val_data


def _fit(setup: _Setup, net: Any, train_data: Any, val_data: list | None, *, output: Path,
         checkpoint_dir: str | os.PathLike | None, epochs: int, lr: float, patience: int | None, resume: bool,
         time_limit_s: float | None, progress: ProgressCallback | None, progress_bar: bool | None,
         cancel: Callable[[], bool] | None) -> tuple[Any, Any, float]:
    """Train with the StarDist loss (checkpoints in ``<output>.checkpoints`` unless given);
    ``(trainer, TrainResult, seconds)``."""
    from ijtorch.models.stardist.network import stardist_loss

    from .trainer import Trainer

    t_start = time.monotonic()

    def _cancel() -> bool:
        if cancel is not None and cancel():
            return True
        return time_limit_s is not None and time.monotonic() - t_start > time_limit_s

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else output.with_name(output.name + ".checkpoints")
    trainer = Trainer(net, stardist_loss, train_data, val_data=val_data, monitor="val_loss", mode="min",
                      epochs=epochs, lr=lr, scheduler="cosine", patience=patience, checkpoint_dir=ckpt,
                      resume=resume, seed=setup.seed, device=setup.device, grad_clip=10.0, progress=progress,
                      progress_bar=progress_bar, cancel=_cancel, restore_best=setup.keep == "best")
    try:
        result = trainer.fit()
    finally:
        train_data.close()
    return trainer, result, time.monotonic() - t_start


def _training_record(setup: _Setup, result: Any, *, base_model: str | os.PathLike | None, steps_per_epoch: int,
                     batch_size: int, patch: dict[str, Any], lr: float, fg_fraction: float,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``training`` entry of the model config; ``patch`` (the patch size key and value) and
    ``extra`` are the geometry-specific entries, placed where 2D and 3D configs have them."""
    import torch

    names = [p.name for p in setup.pairs]
    return {
        "items": len(setup.pairs),
        "train_names": [names[i] for i in setup.train_idx],
        "val_names": [names[i] for i in setup.val_idx],
        "split": {"val_fraction": setup.val_fraction, "seed": setup.seed, "explicit": setup.val_names is not None},
        "base_model": str(base_model) if base_model is not None else None,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "weights_of_epoch": result.best_epoch if setup.keep == "best" else result.epochs_run,
        "steps_per_epoch": steps_per_epoch, "batch_size": batch_size, **patch,
        "lr": lr, "seed": setup.seed, "augment": setup.augment.model_dump(), "fg_fraction": fg_fraction,
        **(extra or {}),
        "seconds": round(sum(h.get("seconds", 0.0) for h in result.history), 1),  # all runs incl. resumed
        "device": setup.device, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "history": [{k: round(float(v), 5) for k, v in h.items()} for h in result.history],
        "cancelled_or_time_limited": result.cancelled,
    }


def _save_tuned(setup: _Setup, model: Any, output: Path, result: Any, train_seconds: float, *, method: str,
                optimize_thresholds: bool, evaluate: bool, progress: ProgressCallback | None,
                extra: dict[str, Any] | None = None, shift_kind: str = "training") -> dict[str, Any]:
    """Save the model, tune/evaluate it on the validation items, save again; the summary dict
    (``extra`` holds the geometry-specific entries). ``shift_kind`` names the training images in
    the dataset-shift warnings of a 2D model."""
    model.save(output)  # a usable model exists even if tuning below is interrupted
    tuned, metrics = tune_and_evaluate(model, [setup.pairs[i] for i in setup.val_idx], optimize=optimize_thresholds,
                                       evaluate=evaluate, progress=progress)
    if getattr(model, "model_type", None) == "stardist2d":  # the dataset-shift reference (ijtorch.models.shift)
        from ijtorch.models.shift import fit_reference

        try:
            fit_reference(model, [setup.pairs[i].image for i in setup.train_idx],
                          [setup.pairs[i].image for i in setup.val_idx], kind=shift_kind)
        except Exception as exc:  # noqa: BLE001 - a model without a reference still works (it says so)
            log.warning("no dataset-shift reference for %s: %s", output, exc)
            model.config.pop("shift", None)
    model.save(output)
    return {
        "output": str(output), "method": method, "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "best_val_loss": result.best_metric,
        "train_seconds": round(train_seconds, 1), "n_train": len(setup.train_idx), "n_val": len(setup.val_idx),
        **(extra or {}),
        "thresholds": model.config["thresholds"], "threshold_search": tuned, "metrics": metrics,
        "weights_bytes": (output / "weights.safetensors").stat().st_size,
        "stopped_early": result.stopped_early, "cancelled": result.cancelled,
    }


def _init_matching(net: Any, md: Any, stem: int) -> None:
    """Copy ``md``'s weights into ``net`` wherever name and shape agree (into the old channels' places
    when ``net``'s U-Net or head is wider); a full-resolution source's first U-Net level initialises the stem's
    convolutions of a grid-2 ``net``."""
    source = dict(md.state_dict)
    if stem > 1 and int(md.config["architecture"].get("stem", 1)) == 1:
        first = "unet.encoders.0."
        source.update({"stem.0." + k[len(first):]: v for k, v in md.state_dict.items() if k.startswith(first)})
    target = net.state_dict()
    if any(int(md.config["architecture"].get(k, 0)) < int(net.config[k]) for k in ("base_channels", "head_channels")):
        from .widen import widen_into  # a wider network or head: start computing what the narrow one computes

        copied, widened = widen_into(net, source)
        log.info("init_from %s: %d of %d tensors copied, %d widened", md.path, copied, len(target), widened)
        return
    matched = {k: v for k, v in source.items() if k in target and tuple(target[k].shape) == tuple(v.shape)}
    net.load_state_dict(matched, strict=False)
    log.info("init_from %s: %d of %d tensors copied", md.path, len(matched), len(target))


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
    stem: int = 1,
    init_from: str | os.PathLike | None = None,
    lr: float = 1e-3,
    patience: int | None = None,
    augment: AugmentConfig | dict | None = None,
    fg_fraction: float = 0.85,
    normalization: tuple[float, float] = (1.0, 99.8),
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
    shift_kind: str = "training",
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
    n_rays, grid, base_channels, depth, head_channels, stem
        Architecture (ignored when fine-tuning, except ``grid``). ``stem=2``: StarDist's grid-2
        network (U-Net and heads at half resolution; :class:`~ijtorch.models.stardist.network.StarDistNet`).
    init_from : name or path, optional
        Start a new architecture from another 2D star-convex model's weights wherever a parameter
        has the same name and shape (e.g. a ``stem=2`` network from a full-resolution one: its
        first U-Net level becomes the stem, the deeper levels and heads carry over); the rest
        starts fresh; a wider network (more ``base_channels``) starts computing exactly what the
        narrower one does (:func:`ijtorch.train.widen.widen_into`). Not with ``base_model``.
    lr, patience
        AdamW learning rate (cosine schedule) and early-stopping patience on the validation loss.
    augment : AugmentConfig or dict, optional
        Augmentation settings (defaults of :class:`AugmentConfig`).
    workers : int, optional
        Processes that make augmented training batches ahead of the training step (0: in the
        training process; default: one per spare CPU core, at most 8). Batches do not depend on it.
    time_limit_s : float, optional
        Stop training (gracefully, after the current epoch) once this much time has passed.
    checkpoint_dir, resume
        Per-epoch checkpoints and resuming after a crash (default ``<output>.checkpoints``).
    keep : {"best", "final"}
        Save the weights of the epoch with the lowest validation loss (as StarDist does), or those
        of the last epoch (e.g. at the end of a full cosine schedule).
    optimize_thresholds, evaluate : bool
        Tune thresholds / measure AP@0.5 and AP@0.75 on the validation images after training.
    shift_kind : str
        What the training images are (e.g. ``"fluorescence"``): the dataset-shift warnings of the
        model name it (:mod:`ijtorch.models.shift`; the reference is fitted on the training images
        and calibrated on the validation images).

    Returns
    -------
    dict
        Summary: output path, epochs run, seconds, thresholds, validation metrics, split sizes.
    """
    import torch

    from ijtorch.models.stardist import network
    from ijtorch.models.stardist.model import StarDistModel

    setup = _setup(pairs, ndim=2, requirement="train_stardist needs 2D (YX) images", augment=augment,
                   val_names=val_names, val_fraction=val_fraction, seed=seed, device=device, workers=workers,
                   keep=keep)

    base_cfg: dict[str, Any] = {}
    if stem > 1 and grid % stem:
        raise ValueError(f"grid={grid!r} with stem={stem!r}: the candidate grid must be a multiple of the stem's pooling")
    if base_model is not None and init_from is not None:
        raise ValueError("give base_model (fine-tune that model) or init_from (a new architecture), not both")
    if base_model is not None:
        md = _load_base_model(base_model, "stardist2d")
        base_cfg = md.config
        net = network.StarDistNet(**md.config["architecture"])
        net.load_state_dict(md.state_dict)
        norm_cfg = dict(md.config.get("normalization", {}))
        n_rays = net.n_rays
    else:
        torch.manual_seed(seed)
        net = network.StarDistNet(n_rays, 1, base_channels=base_channels, depth=depth, head_channels=head_channels,
                                  stem=stem)
        norm_cfg = _percentile_normalization(normalization)
        if init_from is not None:
            _init_matching(net, _load_base_model(init_from, "stardist2d"), stem)

    def batches(items: Sequence[tuple[np.ndarray, np.ndarray]], n_batches: int, aug: AugmentConfig | None,
                workers: int = 0) -> Any:
        return _patch_batches(items, n_batches=n_batches, batch_size=batch_size, patch=patch_size, n_rays=n_rays,
                              augment=aug, fg_fraction=fg_fraction, workers=workers)

    train_data, val_data = _batch_sources(setup, norm_cfg, batches, steps_per_epoch=steps_per_epoch,
                                          val_batches=max(2, 32 // batch_size))
    output = Path(output)
    trainer, result, train_seconds = _fit(
        setup, net, train_data, val_data, output=output, checkpoint_dir=checkpoint_dir, epochs=epochs, lr=lr,
        patience=patience, resume=resume, time_limit_s=time_limit_s, progress=progress, progress_bar=progress_bar,
        cancel=cancel)

    config: dict[str, Any] = {
        "model_type": "stardist2d",
        "name": output.name,
        "description": description or base_cfg.get("description", "2D StarDist (star-convex polygons) model"),
        "axes": "YX",
        "grid": int(grid),
        "normalization": norm_cfg,
        "thresholds": dict(base_cfg.get("thresholds", {"prob": 0.5, "nms": 0.4})),
        "training": _training_record(setup, result, base_model=base_model, steps_per_epoch=steps_per_epoch,
                                     batch_size=batch_size, patch={"patch_size": patch_size}, lr=lr,
                                     fg_fraction=fg_fraction),
    }
    if init_from is not None:
        config["training"]["init_from"] = str(init_from)
    model = StarDistModel(trainer.model, config, device=setup.device)
    summary = _save_tuned(setup, model, output, result, train_seconds, method="stardist",
                          optimize_thresholds=optimize_thresholds, evaluate=evaluate, progress=progress,
                          shift_kind=shift_kind)
    log.info("trained StarDist model saved to %s: %s", output, {k: v for k, v in summary.items() if k != "metrics"})
    return summary
