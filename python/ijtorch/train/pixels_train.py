"""Training a pixel classifier from sparse strokes (or dense class images) in seconds.

Annotations are integer images of the plane's shape: ``0`` = unannotated (ignored by the loss),
``k`` = class ``k`` (``1..C``). The multiscale features
(:func:`ijtorch.models.pixel_classifier.pixel_features`) of the annotated pixels are computed once
(dense class images: at most ``MAX_PIXELS_PER_CLASS`` random pixels of each class per call), and
each step minimises class-weighted cross-entropy over a minibatch of them with a small MLP head
(:func:`sparse_loss`, cross-entropy with ``ignore_index``: unannotated pixels contribute nothing,
their gradient is exactly zero). The class weights (inverse square root of the class's annotated
pixel count) keep a thin boundary stroke from being drowned by a large background stroke.

Warm start (``base_model``): the head starts from a pixel model's weights and keeps its feature
standardisation (a human-in-the-loop round: add strokes, retrain from the current model); when the
class count differs the last layer is re-initialised and the hidden layers are reused.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ijtorch.errors import ModelError

from ..core.progress import ProgressCallback, ProgressEvent, emit

__all__ = ["sparse_loss", "train_pixel_classifier", "class_weights"]

log = logging.getLogger(__name__)

IGNORE = -1
GAIN = 0.7  # intensity augmentation: gain exp(U(-GAIN, GAIN)), offset U(-GAIN/2, GAIN/2) (normalised units)
NOISE = 0.2  # feature noise, in units of each feature's standard deviation over the annotated pixels
MAX_PIXELS_PER_CLASS = 200_000


def sparse_loss(logits: torch.Tensor, annotations: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the annotated pixels of ``(N, C, Y, X)`` logits.

    ``annotations`` is ``(N, Y, X)`` with ``0`` = unannotated and ``1..C`` the classes; unannotated
    pixels contribute nothing (their gradient is exactly zero). Returns 0 (with a gradient path)
    when no pixel is annotated.
    """
    target = annotations.long() - 1  # 0 (unannotated) → -1 = ignore_index
    if not bool((target >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)


def class_weights(counts: np.ndarray, *, power: float = 0.5) -> np.ndarray:
    """Per-class loss weights ``(mean / count) ** power`` (1 for absent classes), mean 1 over present ones."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.ones_like(counts)
    present = counts > 0
    if present.any():
        w[present] = (counts[present].mean() / counts[present]) ** power
        w[present] /= w[present].mean()
    return w.astype(np.float32)


def _as_cyx(image: np.ndarray, axes: str) -> np.ndarray:
    from ijtorch.image import check_axes, to_axes

    axes = check_axes(axes, np.ndim(image))
    if set(axes) - set("CYX"):
        raise ValueError(f"axes={axes!r}: pixel classifiers train on 2D planes (YX or CYX)")
    return to_axes(np.asarray(image), axes, "CYX") if "C" in axes else np.asarray(image)[None]


def _augment(xb: torch.Tensor, offset: torch.Tensor, noise_std: torch.Tensor) -> torch.Tensor:
    """Feature-space intensity augmentation: every filter is linear (or 1-homogeneous) in the image, so
    an image ``a * I + b`` has features ``a * f`` plus ``b`` on the intensity and smoothed channels
    (``offset``); plus Gaussian noise of ``noise_std`` per feature."""
    n = xb.shape[0]
    gain = torch.exp(torch.empty(n, 1, device=xb.device).uniform_(-GAIN, GAIN))
    shift = torch.empty(n, 1, device=xb.device).uniform_(-GAIN / 2, GAIN / 2)
    return xb * gain + shift * offset + torch.randn_like(xb) * noise_std


def _fit(net, opt, sched, Xt, yt, weights, *, steps, batch_size, rng, time_limit_s, progress, cancel,
         offset=None, noise_std=None):
    losses: list[float] = []
    done = 0
    t0 = time.monotonic()
    n = len(Xt)
    for step in range(steps):
        if cancel is not None and cancel():
            raise InterruptedError("pixel classifier training cancelled")
        idx = torch.from_numpy(rng.integers(n, size=min(batch_size, n))).to(Xt.device)
        xb = Xt[idx] if offset is None else _augment(Xt[idx], offset, noise_std)
        loss = sparse_loss(net(xb), yt[idx], weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % 20 == 0 or done == steps:
            emit(progress, ProgressEvent("train", done, steps, f"step {done}/{steps}",
                                         {"loss": float(np.mean(losses[-20:]))}))
        if time_limit_s is not None and time.monotonic() - t0 > time_limit_s:
            log.info("pixel classifier: time limit %.1f s reached after %d steps", time_limit_s, done)
            break
    return done, losses


def train_pixel_classifier(
    images: Sequence[np.ndarray],
    annotations: Sequence[np.ndarray],
    *,
    output: str | os.PathLike | None,
    axes: str = "YX",
    classes: Sequence[str] | None = None,
    base_model: str | os.PathLike | Any | None = None,
    steps: int = 300,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    seed: int = 0,
    device: str = "auto",
    time_limit_s: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    description: str = "",
    augment: bool = True,
) -> dict[str, Any]:
    """Train (or warm-start) a pixel classifier and save it to ``output``.

    Parameters
    ----------
    images : sequence of ndarray
        Planes with ``axes`` (``"YX"`` or ``"CYX"``; same channel count for all).
    annotations : sequence of ndarray
        Integer class images of each plane's ``YX`` shape: 0 = unannotated, ``1..C`` classes.
    output : path or None
        Model directory to write (``None``: do not save; the model is in the summary's ``model``).
    classes : sequence of str, optional
        Class names for ``1..C`` (default: the base model's, else ``class1..classC``); their number
        must be at least the largest annotation value.
    base_model : name, path or PixelClassifierModel, optional
        Warm start from this pixel model.
    steps, batch_size, learning_rate, seed
        Optimisation: Adam on minibatches of ``batch_size`` annotated pixels, learning rate decayed by
        a cosine to 5 % over ``steps``.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    augment : bool
        Intensity augmentation in feature space (random gain and offset per pixel row, feature
        noise; :func:`_augment`): the strokes come from one or two images, and this keeps the model
        from learning their exact brightness (on the benchmark +0.04-0.06 mean Dice on held-out images).
    time_limit_s : float, optional
        Stop early after this many seconds of training (the model is still saved).
    progress, cancel
        ``ProgressEvent("train", step, steps)`` every few steps; ``cancel()`` polled every step
        (raises ``InterruptedError``; nothing is saved).

    Returns
    -------
    dict
        ``output``, ``classes``, ``steps``, ``seconds``, ``annotated_pixels`` per class,
        ``metrics`` (``train_accuracy`` on the annotated pixels, ``loss``) and ``model``.
    """
    from ijtorch.models.device import resolve_device
    from ijtorch.models.pixel_classifier import (DEFAULT_SIGMAS, FEATURES_PER_SIGMA, MODEL_TYPE, PixelClassifierModel,
                                                 build_net, default_architecture, normalize_plane, pixel_features)

    t0 = time.monotonic()
    if len(images) != len(annotations):
        raise ValueError(f"{len(images)} images but {len(annotations)} annotation images")
    if not len(images):
        raise ValueError("no training images given")
    for name, v, lo in (("steps", steps, 1), ("batch_size", batch_size, 1)):
        if not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name}={v!r}: expected an integer >= {lo}")
    planes = [_as_cyx(im, axes) for im in images]
    n_ch = {p.shape[0] for p in planes}
    if len(n_ch) != 1:
        raise ValueError(f"training images have different channel counts {sorted(n_ch)}")
    anns = []
    for i, (p, a) in enumerate(zip(planes, annotations)):
        a = np.asarray(a)
        if a.shape != p.shape[1:]:
            raise ValueError(f"item {i}: annotation shape {a.shape} differs from the image's YX shape {p.shape[1:]}")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.bool_)):
            if not np.all(np.mod(a, 1) == 0):
                raise ValueError(f"item {i}: annotations must be integer class values, got dtype {a.dtype}")
        a = a.astype(np.int64)
        if a.min() < 0:
            raise ValueError(f"item {i}: annotation values must be >= 0 (0 = unannotated), found {int(a.min())}")
        anns.append(a)
    n_max = max(int(a.max()) for a in anns)
    if n_max < 1:
        raise ValueError("the annotations hold no annotated pixel (all 0): draw strokes for at least 2 classes")

    base = None
    if base_model is not None:
        from ijtorch.models.store import load_model

        base = base_model if isinstance(base_model, PixelClassifierModel) else load_model(base_model, device="cpu")
        if not isinstance(base, PixelClassifierModel):
            raise ModelError(f"base_model={str(base_model)!r} is not a pixel classifier")
        if base.n_channels != planes[0].shape[0]:
            raise ValueError(f"base_model has {base.n_channels} channel(s); the images have {planes[0].shape[0]}")
    if classes is None:
        classes = list(base.classes) if base is not None and len(base.classes) >= n_max else [f"class{k}" for k in range(1, n_max + 1)]
    classes = [str(c) for c in classes]
    if len(classes) < n_max:
        raise ValueError(f"annotations use class values up to {n_max} but only {len(classes)} class names were given")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be distinct, got {classes}")
    n_classes = len(classes)
    counts = np.bincount(np.concatenate([a[a > 0].ravel() for a in anns]), minlength=n_classes + 1)[1:]
    if (counts > 0).sum() < 2:
        raise ValueError(f"only class {classes[int(np.argmax(counts))]!r} is annotated; a pixel classifier needs "
                         "strokes of at least 2 classes")

    sigmas = base.sigmas if base is not None else DEFAULT_SIGMAS
    norm = dict(base.config.get("normalization")) if base is not None else {"method": "percentile", "low": 1.0, "high": 99.8}
    # features of the annotated pixels only: (N, F) rows and their classes 1..C
    rows, targets = [], []
    for p, a in zip(planes, anns):
        m = a > 0
        f = pixel_features(normalize_plane(p, norm), sigmas)
        rows.append(f[:, m].T)
        targets.append(a[m])
    X = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
    y = np.concatenate(targets).astype(np.int64)
    del rows, targets
    rng = np.random.default_rng(seed)
    if counts.max() > MAX_PIXELS_PER_CLASS:  # dense class images: a random subset of each large class
        keep = np.concatenate([np.flatnonzero(y == c) if counts[c - 1] <= MAX_PIXELS_PER_CLASS else
                               rng.choice(np.flatnonzero(y == c), MAX_PIXELS_PER_CLASS, replace=False)
                               for c in range(1, n_classes + 1) if counts[c - 1]])
        X, y = X[np.sort(keep)], y[np.sort(keep)]
    dev = resolve_device(device)
    torch.manual_seed(seed)
    arch = default_architecture(X.shape[1], n_classes)
    if base is not None:
        arch = dict(base.config["architecture"], n_classes=n_classes)
    net = build_net(arch)
    if base is not None:
        state = {k: v for k, v in base.network.state_dict().items()
                 if not (k.startswith("head.") and len(base.classes) != n_classes)}
        net.load_state_dict(state, strict=False)
    else:
        net.mean.copy_(torch.from_numpy(X.mean(0)))
        net.std.copy_(torch.from_numpy(X.std(0) + 1e-6))
    net.to(dev).train()
    weights = torch.as_tensor(class_weights(counts), device=dev)
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=learning_rate * 0.05)
    Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    per_channel = 1 + FEATURES_PER_SIGMA * len(sigmas)
    mask = np.zeros(X.shape[1], np.float32)
    for c in range(X.shape[1] // per_channel):  # the raw and smoothed intensities move with an offset
        mask[c * per_channel] = 1
        mask[c * per_channel + 1:(c + 1) * per_channel:FEATURES_PER_SIGMA] = 1
    offset = torch.from_numpy(mask).to(dev)
    noise_std = torch.from_numpy(X.std(0) * NOISE).to(dev)
    emit(progress, ProgressEvent("train", 0, steps, "training pixel classifier"))
    t_train = time.monotonic()
    threads = torch.get_num_threads()
    if dev == "cpu" and threads > 1:  # minibatch matmuls this small run ~5x faster on one thread than on two busy ones
        torch.set_num_threads(1)
    try:
        done, losses = _fit(net, opt, sched, Xt, yt, weights, steps=steps, batch_size=batch_size, rng=rng,
                            time_limit_s=time_limit_s, progress=progress, cancel=cancel,
                            offset=offset if augment else None, noise_std=noise_std)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    train_seconds = time.monotonic() - t_train

    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "description": description or f"pixel classifier ({', '.join(classes)})",
        "classes": classes,
        "channels": int(planes[0].shape[0]),
        "axes": "YX",
        "architecture": arch,
        "features": {"kind": "multiscale", "sigmas": list(sigmas)},
        "normalization": norm,
        "tiling": {"tile_size": 1024, "overlap": 64},
        "training": {"items": len(planes), "steps": done, "batch_size": int(batch_size),
                     "learning_rate": float(learning_rate), "seed": int(seed),
                     "augmentation": {"gain": GAIN, "noise": NOISE} if augment else None,
                     "annotated_pixels": {c: int(n) for c, n in zip(classes, counts)},
                     "warm_start": base is not None, "seconds": round(train_seconds, 3)},
    }
    model = PixelClassifierModel(net, config, device=dev)
    with torch.inference_mode():  # how well the strokes themselves are fitted (a sanity check)
        pred = torch.cat([net(Xt[i:i + 65536]).argmax(1) for i in range(0, len(X), 65536)]).cpu().numpy() + 1
    correct, total = int((pred == y).sum()), len(y)
    metrics = {"train_accuracy": correct / max(total, 1), "loss": float(np.mean(losses[-20:])) if losses else None}
    config["metrics"] = metrics
    if output is not None:
        model.save(output)
    emit(progress, ProgressEvent("train", steps, steps, "done", metrics))
    seconds = time.monotonic() - t0
    log.info("pixel classifier: %d steps in %.2f s (train accuracy %.3f)", done, seconds, metrics["train_accuracy"])
    return {"output": None if output is None else str(Path(output)), "classes": classes, "steps": done,
            "seconds": seconds, "train_seconds": train_seconds,
            "annotated_pixels": {c: int(n) for c, n in zip(classes, counts)}, "metrics": metrics, "model": model}
