"""Training the U-Net + watershed model (:mod:`ijtorch.models.unet_watershed`): three-class
targets from label maps, class-weighted cross-entropy, the shared :class:`~ijtorch.train.trainer.Trainer`,
then post-processing thresholds tuned on the validation images."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ijtorch.models.unet_watershed import (NormalizeConfig, PostprocessConfig, UNetWatershed, _as_model,
                                           _build_net, _check_image, _check_labels2d, _normalize,
                                           class_weighted_loss, class_weights_from_targets, save_model,
                                           targets_from_labels)

if TYPE_CHECKING:
    from ijtorch.core.progress import ProgressEvent
    from ijtorch.train.trainer import TrainResult

__all__ = ["WatershedTrainResult", "train", "tune_thresholds", "train_unet_watershed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatershedTrainResult:
    """What :func:`train` returns: the trained model, the trainer's summary and the saved folder."""

    model: UNetWatershed
    result: "TrainResult"
    model_dir: str | None
    train_names: tuple[str, ...]
    val_names: tuple[str, ...]


# ----------------------------------------------------------------------------------- targets
def _check_training_data(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                         names: Sequence[str] | None) -> list[str]:
    if not isinstance(images, (list, tuple)) or not isinstance(labels, (list, tuple)):
        raise TypeError("images and labels must be lists (or tuples) of 2D numpy arrays")
    if len(images) != len(labels) or not images:
        raise ValueError(f"images ({len(images)}) and labels ({len(labels)}) must be non-empty and of equal length")
    for i, (im, lab) in enumerate(zip(images, labels)):
        _check_image(im, "YX")
        _check_labels2d(lab, f"labels[{i}]")
        if im.shape != lab.shape:
            raise ValueError(f"images[{i}] has shape {im.shape} but labels[{i}] has shape {lab.shape}")
    if names is None:
        names = [f"image{i:03d}" for i in range(len(images))]
    if len(names) != len(images):
        raise ValueError(f"names has {len(names)} entries; expected {len(images)} (one per image)")
    return [str(n) for n in names]


def train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    names: Sequence[str] | None = None,
    model_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    init: "UNetWatershed | str | os.PathLike | None" = None,
    epochs: int = 50,
    steps_per_epoch: int = 50,
    batch_size: int = 4,
    patch_size: int = 256,
    lr: float = 1e-3,
    val_fraction: float = 0.2,
    base_channels: int = 32,
    depth: int = 4,
    boundary_width: int = 1,
    augment: bool = True,
    patience: int | None = 20,
    seed: int = 0,
    device: str | None = "cpu",
    resume: bool = False,
    progress: "Callable[[ProgressEvent], None] | None" = None,
    cancel: Callable[[], bool] | None = None,
) -> WatershedTrainResult:
    """Train (or fine-tune) a boundary/interior U-Net on 2D images with instance label maps.

    Parameters
    ----------
    images, labels : sequence of numpy.ndarray
        2D grayscale images (raw intensities; normalised here with the model's percentiles) and
        integer label maps of the same shapes.
    names : sequence of str, optional
        Item names recorded for the train/validation split (default ``image000``, ...).
    model_dir : path, optional
        Where the trained model folder is written (replaced atomically at the end).
    checkpoint_dir : path, optional
        Per-epoch checkpoints for ``resume``; default ``<model_dir>_checkpoints`` next to
        ``model_dir`` (not inside it, because saving replaces the whole model folder).
    init : UNetWatershed or path, optional
        Fine-tune: start from this model's weights, architecture, normalisation and thresholds
        (``base_channels``, ``depth`` and ``boundary_width`` are then taken from it).
    epochs, steps_per_epoch, batch_size, patch_size, lr : int / float
        Training schedule: ``steps_per_epoch`` batches of ``batch_size`` random patches of
        ``patch_size``² pixels per epoch; AdamW with cosine decay from ``lr``.
    val_fraction : float, default 0.2
        Fraction of the images held out for validation (deterministic split from ``seed``; at
        least one image if there are two or more, none with a single image).
    base_channels, depth : int
        U-Net width and number of down-sampling steps (new models only).
    boundary_width : int, default 1
        Thickness of the boundary class (new models only).
    augment : bool, default True
        Flips, 90° rotations, zoom, elastic and intensity augmentation
        (:class:`ijtorch.train.data.AugmentConfig` defaults).
    patience : int or None, default 20
        Early stopping on the validation loss (training loss without validation images).
    seed : int
        Seeds the split, patch sampling and initialisation.
    device : str or None, default "cpu"
        Training device; ``None``/``"auto"`` picks the best available.
    resume : bool, default False
        Continue an interrupted run from ``checkpoint_dir``.
    progress, cancel : callable, optional
        Progress listener and cancel check (see :class:`ijtorch.train.trainer.Trainer`).

    Returns
    -------
    WatershedTrainResult
        The trained model (best validation weights), the trainer summary, the saved folder and the
        names of training and validation images.
    """
    import torch

    from ijtorch.train.data import AugmentConfig, random_patch, split_train_val
    from ijtorch.train.trainer import Trainer

    names = _check_training_data(images, labels, names)
    for arg, value, lo in (("epochs", epochs, 1), ("steps_per_epoch", steps_per_epoch, 1),
                           ("batch_size", batch_size, 1), ("patch_size", patch_size, 16)):
        if not isinstance(value, (int, np.integer)) or value < lo:
            raise ValueError(f"{arg}={value!r}: expected an integer >= {lo}")
    if checkpoint_dir is None and model_dir is not None:
        checkpoint_dir = Path(model_dir).with_name(Path(model_dir).name + "_checkpoints")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs model_dir or checkpoint_dir (where the checkpoints are)")

    if init is not None:
        model, _ = _as_model(init, "cpu")
        log.info("fine-tuning from %s", init if not isinstance(init, UNetWatershed) else "a loaded model")
    else:
        torch.manual_seed(seed)
        arch = dict(in_channels=1, out_channels=3, ndim=2, base_channels=int(base_channels), depth=int(depth),
                    norm="batch", activation="relu")
        model = UNetWatershed(net=_build_net(arch), postprocess=PostprocessConfig(), normalize=NormalizeConfig(),
                              boundary_width=int(boundary_width), meta={})
    mult = int(model.net.size_multiple()[-1])
    patch = max(mult, (int(patch_size) // mult) * mult)

    tr_idx, val_idx = split_train_val(len(images), val_fraction=val_fraction, seed=seed) if len(images) > 1 \
        else ([0], [])
    norm_images = [_normalize(im, model.normalize) for im in images]
    bw = model.boundary_width
    weights = torch.from_numpy(class_weights_from_targets(
        [targets_from_labels(labels[i], boundary_width=bw) for i in tr_idx]))
    aug = AugmentConfig() if augment else None

    def train_batches(rng: np.random.Generator):
        for _ in range(int(steps_per_epoch)):
            xs, ys = [], []
            for _ in range(int(batch_size)):
                i = tr_idx[int(rng.integers(len(tr_idx)))]
                img, lab = random_patch(norm_images[i], labels[i], (patch, patch), rng, augment=aug)
                xs.append(img[None])
                ys.append(targets_from_labels(lab, boundary_width=bw))
            yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))

    def val_batches(rng: np.random.Generator):
        for i in val_idx:  # whole images, cropped to the size multiple
            h, w = (s // mult * mult for s in labels[i].shape)
            lab = labels[i][:h, :w]
            yield (torch.from_numpy(np.ascontiguousarray(norm_images[i][None, None, :h, :w])),
                   torch.from_numpy(targets_from_labels(np.ascontiguousarray(lab), boundary_width=bw)[None].astype(np.int64)))

    def loss_fn(net: Any, batch: Any) -> Any:
        x, y = batch
        return class_weighted_loss(net(x), y, weights)

    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    trainer = Trainer(model.net, loss_fn, train_batches, val_data=val_batches if val_idx else None,
                      epochs=int(epochs), lr=lr, patience=patience, checkpoint_dir=ckpt, resume=resume,
                      seed=seed, device=device or "auto", progress=progress, cancel=cancel, progress_bar=False)
    result = trainer.fit()
    model.net.to("cpu").eval()
    previous = dict(model.meta or {})
    runs = list((previous.get("training") or {}).get("runs", []))
    runs.append(dict(epochs_run=result.epochs_run, best_epoch=result.best_epoch, best_metric=result.best_metric,
                     monitor=result.monitor, seconds=round(result.seconds, 1), patch_size=patch,
                     batch_size=int(batch_size), steps_per_epoch=int(steps_per_epoch), lr=float(lr), seed=int(seed),
                     augment=bool(augment), class_weights=[float(w) for w in weights],
                     fine_tuned_from=str(init) if isinstance(init, (str, os.PathLike)) else None,
                     history=[{k: round(float(v), 5) for k, v in h.items()} for h in result.history]))
    model.meta = {**previous, "training": {
        "items": len(names), "train_names": [names[i] for i in tr_idx], "val_names": [names[i] for i in val_idx],
        "split": {"val_fraction": val_fraction, "seed": seed}, "runs": runs}}
    if model_dir is not None:
        save_model(model, model_dir)
    return WatershedTrainResult(model=model, result=result, model_dir=str(model_dir) if model_dir else None,
                                train_names=tuple(names[i] for i in tr_idx),
                                val_names=tuple(names[i] for i in val_idx))


# ------------------------------------------------------------------------ thresholds, task
FG_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
SEED_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def tune_thresholds(model: UNetWatershed, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], *,
                    device: str | None = "cpu") -> dict[str, Any]:
    """Grid search of ``fg_threshold`` x ``seed_threshold`` (:data:`FG_GRID` x :data:`SEED_GRID`)
    maximising the mean of AP@0.5 and AP@0.75 pooled over ``images``; sets ``model.postprocess``
    and returns ``{"fg_threshold", "seed_threshold", "ap@0.50", "ap@0.75", "splits", "merges", "n_images"}``.
    The probabilities are predicted once per image; only the watershed runs per grid point."""
    from ijtorch.metrics.instance import evaluate_pair
    from ijtorch.models.unet_watershed import postprocess, predict

    probs = [predict(model, im, "YX", device=device) for im in images]
    best: dict[str, Any] | None = None
    for fg in FG_GRID:
        for seed in SEED_GRID:
            cfg = PostprocessConfig(**{**model.postprocess.model_dump(), "fg_threshold": fg, "seed_threshold": seed})
            rows = [evaluate_pair(np.asarray(lab), postprocess(p, config=cfg), thresholds=(0.5, 0.75))
                    for p, lab in zip(probs, labels)]
            pooled = {}
            for t in ("0.50", "0.75"):
                tp, fp, fn = (sum(r[f"_{k}@{t}"] for r in rows) for k in ("tp", "fp", "fn"))
                pooled[f"ap@{t}"] = round(tp / max(tp + fp + fn, 1), 4)
            score = (pooled["ap@0.50"] + pooled["ap@0.75"]) / 2
            if best is None or score > best["_score"]:
                best = {"_score": score, "fg_threshold": fg, "seed_threshold": seed, **pooled,
                        "splits": int(sum(r["splits"] for r in rows)), "merges": int(sum(r["merges"] for r in rows)),
                        "n_images": len(rows)}
    assert best is not None
    best.pop("_score")
    model.postprocess = PostprocessConfig(**{**model.postprocess.model_dump(), "fg_threshold": best["fg_threshold"],
                                             "seed_threshold": best["seed_threshold"]})
    return best


def train_unet_watershed(
    pairs: Sequence[Any],
    *,
    output: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    epochs: int = 20,
    steps_per_epoch: int = 100,
    batch_size: int = 4,
    patch_size: int = 256,
    base_channels: int = 32,
    depth: int = 4,
    boundary_width: int = 1,
    lr: float = 1e-3,
    patience: int | None = 20,
    augment: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    device: str | None = "auto",
    time_limit_s: float | None = None,
    optimize_thresholds: bool = True,
    description: str = "",
    progress: "Callable[[ProgressEvent], None] | None" = None,
    progress_bar: bool | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """What :func:`ijtorch.tasks.segment.train_segmentation` runs for ``method="unet_watershed"``.

    ``pairs`` are :class:`ijtorch.train.data.Pair` items (2D). ``base_model`` (a registered name or
    folder of type ``unet_watershed``) is fine-tuned; checkpoints go to ``checkpoint_dir`` (default
    ``<output>_checkpoints``) every epoch, so ``resume=True`` continues a killed or time-limited run
    (``time_limit_s``: stop after the epoch that passes it; the model is saved all the same).
    Thresholds are then tuned on the validation images (the training images when there are none)
    and the model folder written to ``output``. Returns a summary dict (``output``, ``method``,
    ``epochs_run``, ``best_epoch``, ``cancelled``, ``seconds``, ``history``, ``thresholds``,
    ``metrics``, ``base_model``, ``train_names``, ``val_names``).
    """
    import time

    del progress_bar  # the Trainer runs without its text bar here; progress events go to ``progress``
    pairs = list(pairs)
    if any(np.asarray(p.image).ndim != 2 for p in pairs):
        raise ValueError("method='unet_watershed' trains 2D models: give YX images (z-stacks: use method='stardist')")
    init = None
    if base_model is not None:
        from ijtorch.models.folder import read_config
        from ijtorch.models.store import resolve_model

        init = resolve_model(base_model)
        mtype = read_config(init).get("model_type")
        if mtype != "unet_watershed":
            raise ValueError(f"base_model={str(base_model)!r} is a {mtype!r} model; method='unet_watershed' "
                             "fine-tunes only unet_watershed models")
    output = Path(output)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else output.with_name(output.name + "_checkpoints")
    stop = cancel
    if time_limit_s is not None:
        deadline = time.monotonic() + float(time_limit_s)
        stop = lambda: (cancel is not None and bool(cancel())) or time.monotonic() > deadline  # noqa: E731
    t0 = time.monotonic()
    r = train([np.asarray(p.image) for p in pairs], [np.asarray(p.labels) for p in pairs],
              names=[p.name for p in pairs], model_dir=None, checkpoint_dir=ckpt, init=init, epochs=int(epochs),
              steps_per_epoch=int(steps_per_epoch), batch_size=int(batch_size), patch_size=int(patch_size), lr=lr,
              val_fraction=val_fraction, base_channels=base_channels, depth=depth, boundary_width=boundary_width,
              augment=augment, patience=patience, seed=seed, device=device, resume=resume, progress=progress,
              cancel=stop)
    model = r.model
    by_name = {p.name: p for p in pairs}
    tune = [by_name[n] for n in (r.val_names or r.train_names)]
    metrics: dict[str, Any] = {}
    if optimize_thresholds:
        metrics = tune_thresholds(model, [np.asarray(p.image) for p in tune], [np.asarray(p.labels) for p in tune])
        metrics["split"] = "validation" if r.val_names else "training"
    model.meta = {**(model.meta or {}), "metrics": metrics,
                  **({"description": description} if description else {})}
    _fit_shift_reference(model, [np.asarray(by_name[n].image) for n in r.train_names],
                         [np.asarray(by_name[n].image) for n in r.val_names], output)
    save_model(model, output)
    log.info("trained U-Net + watershed model saved to %s (%d epochs, thresholds %s)", output,
             r.result.epochs_run, model.postprocess.model_dump())
    return {"output": str(output), "method": "unet_watershed", "epochs_run": r.result.epochs_run,
            "best_epoch": r.result.best_epoch, "cancelled": bool(getattr(r.result, "cancelled", False)),
            "seconds": round(time.monotonic() - t0, 1),
            "history": [{k: round(float(v), 5) for k, v in h.items()} for h in r.result.history],
            "thresholds": model.postprocess.model_dump(), "metrics": metrics,
            "base_model": str(base_model) if base_model is not None else None,
            "train_names": list(r.train_names), "val_names": list(r.val_names)}


def _fit_shift_reference(model: UNetWatershed, train_images: list, val_images: list, output: Path) -> None:
    """The dataset-shift reference (:mod:`ijtorch.models.shift`) from the training images, its threshold
    calibrated on the validation images; a model without one still works (it says so)."""
    from ijtorch.models.unet_watershed import fit_shift_reference

    try:
        fit_shift_reference(model, train_images, val_images)
    except Exception as exc:  # noqa: BLE001 - a fine-tuned base model's old reference must not survive
        log.warning("no dataset-shift reference for %s: %s", output, exc)
        model.meta = {k: v for k, v in (model.meta or {}).items() if k != "shift"}


# ---------------------------------------------------------------------------- save / load
