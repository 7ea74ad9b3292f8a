"""Training a pixel classifier from sparse strokes (or dense class images) in seconds.

Annotations are integer images of the plane's shape: ``0`` = unannotated (ignored by the loss),
``k`` = class ``k`` (``1..C``). The multiscale features
(:func:`ijtorch.models.pixel_classifier.pixel_features`) of the annotated pixels are computed once
(dense class images: at most ``MAX_PIXELS_PER_CLASS`` random pixels of each class per call), and
each step minimises class-weighted cross-entropy over a minibatch of them with a small MLP head
(:func:`sparse_loss`, cross-entropy with ``ignore_index``: unannotated pixels contribute nothing,
their gradient is exactly zero). The class weights (the class's annotated pixel count to the power
``-CLASS_WEIGHT_POWER``) keep a thin boundary stroke from being drowned by a large background stroke;
on ``benchmarks/bench_pixels.py`` (seeds 0-1, with the default features) power 0.25 scored a mean
per-class Dice on held-out images +0.003 (nuclei) / -0.002 (cells) against 0.5 (the earlier
default), no weights (0) +0.002 / -0.009 (phase-contrast boundary Dice 0.16 against 0.22), and 1.0
(with the earlier features) -0.006 / -0.004: full balancing lets the thin class win too many pixels on
new images, none lets the large classes drown it. 0.25 is the default.

Scale augmentation (``zooms``, :mod:`ijtorch.train.pixels_scale`): the first stage also learns from
the annotated pixels' features in the plane zoomed by 0.7 and 1.4 (the same pixels, at their zoomed
positions), so objects of another size on a new image keep their class.

Warm start (``base_model``): the head starts from a pixel model's weights and keeps its feature
standardisation (a human-in-the-loop round: add strokes, retrain from the current model); when the
class count differs the last layer is re-initialised and the hidden layers are reused.

Auto-context (``context=True``): after the first head, the context head is trained on the same
strokes with, per annotated pixel, its features plus first-stage probabilities of the whole plane
smoothed at several scales (:func:`_context_rows`). Those probabilities are out-of-fold, as in
stacking: the strokes are dealt to ``CONTEXT_FOLDS`` folds (:func:`stroke_folds`) and a stroke's
context comes from a first stage trained (``CONTEXT_FOLD_STEPS`` × ``steps``) without its fold; a
first stage that saw the stroke answers near-certainly there, and a context head trained on that
only learns to copy it (measured: no gain on a synthetic case where context decides, +0.1 Dice with
folds). The first stages also run on ``CONTEXT_COPIES - 1`` gain/offset-augmented versions of each
plane, so the context head sees first-stage probabilities as they vary with brightness. The loss is the same :func:`sparse_loss` on
annotated pixels only; unannotated pixels enter only through the smoothed probabilities, as inputs.
A warm start keeps a base model's context stage (and trains it on) when the class count is the same.
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
from .pixels_scale import SCALE_ZOOMS, zoomed_rows

__all__ = ["sparse_loss", "train_pixel_classifier", "class_weights"]

log = logging.getLogger(__name__)

IGNORE = -1
GAIN = 0.7  # intensity augmentation: gain exp(U(-GAIN, GAIN)), offset U(-GAIN/2, GAIN/2) (normalised units)
NOISE = 0.2  # feature noise, in units of each feature's standard deviation over the annotated pixels
MAX_PIXELS_PER_CLASS = 200_000
CLASS_WEIGHT_POWER = 0.25  # class weights ∝ annotated pixels ** -power (see the module docstring)
CONTEXT_COPIES = 3  # context-stage rows: the first stage run on this many intensity-augmented copies of each plane


CONTEXT_FOLDS = 2  # the context stage learns from out-of-fold first-stage probabilities
CONTEXT_FOLD_STEPS = 0.5  # steps of each fold's first stage, as a fraction of ``steps``


def stroke_folds(annotation: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Deal the strokes of an annotation image to ``n_folds`` folds: ``-1`` unannotated, else the fold.

    A stroke is a connected component (8-connected) of one class; each class's strokes are dealt
    largest first, each to the fold with the fewest pixels of that class so far. A class with fewer
    strokes than folds has its strokes cut into pieces along their longest extent, so every fold
    holds every annotated class."""
    from scipy import ndimage as ndi

    a = np.asarray(annotation)
    out = np.full(a.shape, -1, np.int8)
    for c in np.unique(a[a > 0]):
        comp, n = ndi.label(a == c, structure=np.ones((3, 3), bool))
        if n < n_folds:
            for k in range(1, n + 1):
                yx = np.argwhere(comp == k)
                axis = int(np.argmax(yx.max(0) - yx.min(0)))
                order = np.argsort(yx[:, axis], kind="stable")
                for f, part in enumerate(np.array_split(order, n_folds)):
                    out[yx[part, 0], yx[part, 1]] = f
            continue
        sizes = np.bincount(comp.ravel(), minlength=n + 1)[1:]
        load = np.zeros(n_folds)
        fold_of = np.zeros(n + 1, np.int8)
        for k in np.argsort(-sizes, kind="stable"):
            f = int(np.argmin(load + rng.random(n_folds) * 1e-3))
            fold_of[k + 1] = f
            load[f] += sizes[k]
        out[comp > 0] = fold_of[comp[comp > 0]]
    return out


def _context_rows(nets, feats, anns, folds, keep, offset, sigmas, context_features, *, copies, rng, dev):
    """Training rows of the context stage: for each plane and each of ``copies`` intensity-augmented
    versions of it (copy 0 as it is; then a random gain and offset of the whole plane, applied to
    its features as :func:`_augment` does), first-stage probabilities over the whole plane, smoothed
    (:func:`context_features`), appended to the augmented features of the annotated pixels. The
    probabilities for the pixels of fold ``k`` (``folds``: a fold map per plane) come from
    ``nets[k]``, a first stage trained without that fold's strokes: as on a new image, not the
    near-certain answers of a head that saw those very pixels. Returns ``(X2, y2)``; ``keep`` (the
    dense-image subset) selects the same pixels in each copy."""
    off = offset.cpu().numpy()[:, None]
    rows, targets = [], []
    for j in range(copies):
        rj, tj = [], []
        for f, a, fold in zip(feats, anns, folds):
            if j == 0:
                g, b = 1.0, 0.0
            else:
                g, b = float(np.exp(rng.uniform(-GAIN, GAIN))), float(rng.uniform(-GAIN / 2, GAIN / 2))
            flat = f.reshape(f.shape[0], -1)
            fa = flat * g + b * off if j else flat
            m = (a > 0).ravel()
            ctx = None
            with torch.inference_mode():
                t = torch.from_numpy(np.ascontiguousarray(fa.T)).to(dev)
                for k, net in enumerate(nets):
                    prob = torch.cat([torch.softmax(net(t[i:i + 262144]), 1) for i in range(0, len(t), 262144)])
                    prob = prob.T.reshape((-1,) + f.shape[1:]).float().cpu().numpy()
                    ck = context_features(prob, sigmas).reshape(-1, m.size)[:, m]
                    if ctx is None:
                        ctx = ck
                    else:
                        sel = fold.ravel()[m] == k
                        ctx[:, sel] = ck[:, sel]
            rj.append(np.concatenate([fa[:, m], ctx]).T)
            tj.append(a.ravel()[m])
        X, y = np.concatenate(rj), np.concatenate(tj)
        if keep is not None:
            X, y = X[keep], y[keep]
        rows.append(X)
        targets.append(y)
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32), np.concatenate(targets).astype(np.int64)


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
    from ijtorch.image import check_axes, rgb_as_channel_axes, to_axes

    axes = rgb_as_channel_axes(check_axes(axes, np.ndim(image)))
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


def _adam(net: torch.nn.Module, learning_rate: float, device: str) -> torch.optim.Adam:
    """Adam, fused where torch has a fused kernel for the device: a head this small spends most of a
    step in the optimiser's per-tensor bookkeeping (300 steps: 0.18 s instead of 0.23 s on one core)."""
    fused = str(device).split(":")[0] in ("cpu", "cuda")
    return torch.optim.Adam(net.parameters(), lr=learning_rate, fused=fused or None)


def _fit(net, opt, sched, Xt, yt, weights, *, steps, batch_size, rng, time_limit_s, progress, cancel,
         offset=None, noise_std=None, first=0, total=None):
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
            total_ = total or steps
            emit(progress, ProgressEvent("train", first + done, total_, f"step {first + done}/{total_}",
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
    batch_size: int = 1024,
    learning_rate: float = 1e-2,
    seed: int = 0,
    device: str = "auto",
    time_limit_s: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    description: str = "",
    augment: bool = True,
    zooms: Sequence[float] | None = None,
    context: bool | None = None,
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
        a cosine to 5 % over ``steps``. Learning rate 1e-2 rather than 3e-3 (seeds 0-1 of the
        benchmark: mean Dice on held-out images nuclei +0.000, cells +0.009; 1e-3 under-fits in 300
        steps: -0.032 / -0.022; 2e-2 -0.005 / +0.000; 500 steps at 1e-2 -0.006 / +0.002). Batches of 1024
        pixels rather than 4096: +0.001 / +0.001 at a quarter of the arithmetic per step (2048: +0.000 /
        +0.002; 200 or 150 steps of 4096: -0.001 / -0.003, -0.001 / -0.007).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    augment : bool
        Intensity augmentation in feature space (random gain and offset per pixel row, feature
        noise; :func:`_augment`): the strokes come from one or two images, and this keeps the model
        from learning their exact brightness (on the benchmark +0.04-0.06 mean Dice on held-out images).
    zooms : sequence of float, optional
        Scale augmentation: the first stage also learns from the annotated pixels' features in each
        plane zoomed by these factors (:mod:`ijtorch.train.pixels_scale`; default ``SCALE_ZOOMS``,
        0.7 and 1.4; ``()`` turns it off), so objects of another size on new images keep their
        class. The context stage learns from the planes as they are.
    context : bool, optional
        Add the auto-context stage (:mod:`ijtorch.models.pixel_classifier`): a second head on the
        features plus the first stage's probabilities smoothed at several scales, trained on the same
        strokes for another ``steps`` steps. Default: as ``base_model`` (off without one). Measured
        on ``benchmarks/bench_pixels.py`` it did not beat the one-stage head there (see the model
        type's docstring), so it is not the default; it helps where the evidence of one pixel's
        neighbourhood is ambiguous and regions are large.
    time_limit_s : float, optional
        Stop early after this many seconds of training (the model is still saved; with ``context``
        the two stages share the time).
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
    from ijtorch.models.pixel_classifier import (DEFAULT_ENERGY_SIGMAS, DEFAULT_SIGMAS, MODEL_TYPE, PixelClassifierModel,
                                                 build_net, default_architecture, normalize_plane, offset_mask,
                                                 pixel_features)

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
    if context is None:
        context = base is not None and base.context_network is not None
    context = bool(context)
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
    local_std = base.local_std if base is not None else True  # a warm start keeps the base model's features
    energy = base.energy_sigmas if base is not None else DEFAULT_ENERGY_SIGMAS
    norm = dict(base.config.get("normalization")) if base is not None else {"method": "percentile", "low": 1.0, "high": 99.8}
    # features of the annotated pixels only: (N, F) rows and their classes 1..C
    zooms = SCALE_ZOOMS if zooms is None else tuple(float(z) for z in zooms)
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise ValueError(f"zooms={zooms!r}: expected positive zoom factors")
    y = np.concatenate([a[a > 0] for a in anns]).astype(np.int64)  # every annotated pixel, plane by plane
    rng = np.random.default_rng(seed)
    keep = None  # dense class images: a random subset of each large class (indices into ``y``)
    kept = [a > 0 for a in anns]  # per plane, the pixels whose features are computed
    if counts.max() > MAX_PIXELS_PER_CLASS:
        keep = np.sort(np.concatenate([np.flatnonzero(y == c) if counts[c - 1] <= MAX_PIXELS_PER_CLASS else
                                       rng.choice(np.flatnonzero(y == c), MAX_PIXELS_PER_CLASS, replace=False)
                                       for c in range(1, n_classes + 1) if counts[c - 1]]))
        chosen = np.zeros(len(y), bool)
        chosen[keep] = True
        start = 0
        for m in kept:  # the same pixels in each plane's np.nonzero order
            n = int(m.sum())
            m[m] = chosen[start:start + n]
            start += n
        y = y[keep]
    rows, feats = [], []
    zoom_rows: list[list[np.ndarray]] = [[] for _ in zooms]  # per zoom, the planes' rows in the order of ``rows``
    for p, m in zip(planes, kept):
        pn = normalize_plane(p, norm)
        f = pixel_features(pn, sigmas, local_std, energy)
        if context:
            feats.append(f)  # the whole plane's features: the context stage needs the first stage everywhere
        rows.append(f[:, m].T)
        for z, zr in zip(zooms, zoom_rows):  # only the kept pixels (features_at computes the blocks that hold them)
            zr.append(zoomed_rows(pn, m, z, sigmas, local_std, energy))
    X = np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)
    del rows
    X1, y1 = X, y  # the first stage's rows: the planes as they are, then zoomed
    if zooms:  # the same pixels in each zoom
        Xz = [np.concatenate(zr) for zr in zoom_rows]
        X1 = np.ascontiguousarray(np.concatenate([X, *Xz]), dtype=np.float32)
        y1 = np.tile(y, 1 + len(zooms))
        del Xz
    del zoom_rows
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
        net.mean.copy_(torch.from_numpy(X1.mean(0)))
        net.std.copy_(torch.from_numpy(X1.std(0) + 1e-6))
    init_state = {k: v.clone() for k, v in net.state_dict().items()}  # where each fold's first stage starts
    net.to(dev).train()
    weights = torch.as_tensor(class_weights(counts, power=CLASS_WEIGHT_POWER), device=dev)
    opt = _adam(net, learning_rate, dev)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=learning_rate * 0.05)
    Xt, yt = torch.from_numpy(X).to(dev), torch.from_numpy(y).to(dev)
    Xt1, yt1 = (Xt, yt) if X1 is X else (torch.from_numpy(X1).to(dev), torch.from_numpy(y1).to(dev))
    offset = torch.from_numpy(offset_mask(planes[0].shape[0], sigmas, local_std, energy)).to(dev)
    noise_std = torch.from_numpy(X1.std(0) * NOISE).to(dev)
    total_steps = steps * (2 if context else 1)
    emit(progress, ProgressEvent("train", 0, total_steps, "training pixel classifier"))
    t_train = time.monotonic()
    threads = torch.get_num_threads()
    if dev == "cpu" and threads > 1:  # minibatch matmuls this small run ~5x faster on one thread than on two busy ones
        torch.set_num_threads(1)
    try:
        done, losses = _fit(net, opt, sched, Xt1, yt1, weights, steps=steps, batch_size=batch_size, rng=rng,
                            time_limit_s=time_limit_s, progress=progress, cancel=cancel,
                            offset=offset if augment else None, noise_std=noise_std, total=total_steps)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    del Xt1, yt1, X1, y1
    ctx_net = ctx_config = None
    if context:
        from ijtorch.models.pixel_classifier import DEFAULT_CONTEXT_SIGMAS, context_features

        ctx_sigmas = base.context_sigmas if base is not None and base.context_sigmas else DEFAULT_CONTEXT_SIGMAS
        # first stages that did not see a stroke give its context (as the final first stage on a new image)
        folds = [stroke_folds(a, CONTEXT_FOLDS, rng) for a in anns]
        row_fold = np.concatenate([fd[a > 0] for fd, a in zip(folds, anns)])
        if keep is not None:
            row_fold = row_fold[keep]
        fold_steps = max(1, int(round(steps * CONTEXT_FOLD_STEPS)))
        emit(progress, ProgressEvent("train", done, total_steps, "context stage: first stages without each fold of strokes"))
        nets = []
        for k in range(CONTEXT_FOLDS):
            sel = torch.from_numpy(np.flatnonzero(row_fold != k)).to(dev)
            nk = build_net(arch)
            nk.load_state_dict(init_state)
            nk.to(dev).train()
            ok = _adam(nk, learning_rate, dev)
            sk = torch.optim.lr_scheduler.CosineAnnealingLR(ok, T_max=fold_steps, eta_min=learning_rate * 0.05)
            if dev == "cpu" and threads > 1:
                torch.set_num_threads(1)
            try:
                left = None if time_limit_s is None else max(time_limit_s - (time.monotonic() - t_train), 0.0)
                _fit(nk, ok, sk, Xt[sel], yt[sel], weights, steps=fold_steps, batch_size=batch_size, rng=rng,
                     time_limit_s=left, progress=None, cancel=cancel, offset=offset if augment else None,
                     noise_std=noise_std)
            finally:
                torch.set_num_threads(threads)
            nets.append(nk.eval())
        X2, y2 = _context_rows(nets, feats, anns, folds, keep, offset, ctx_sigmas, context_features,
                               copies=CONTEXT_COPIES if augment else 1, rng=rng, dev=dev)
        del feats
        arch2 = default_architecture(X2.shape[1], n_classes)
        base_ctx = base.context_network if base is not None else None
        if base_ctx is not None and base.config["context"]["architecture"]["n_features"] != X2.shape[1]:
            base_ctx = None  # another class count: other context features, a fresh context stage
        if base_ctx is not None:
            arch2 = dict(base.config["context"]["architecture"], n_classes=n_classes)
        ctx_net = build_net(arch2)
        if base_ctx is not None:
            ctx_net.load_state_dict({k: v for k, v in base_ctx.state_dict().items()
                                     if not (k.startswith("head.") and len(base.classes) != n_classes)}, strict=False)
        else:
            ctx_net.mean.copy_(torch.from_numpy(X2.mean(0)))
            ctx_net.std.copy_(torch.from_numpy(X2.std(0) + 1e-6))
        ctx_net.to(dev).train()
        opt2 = _adam(ctx_net, learning_rate, dev)
        sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=steps, eta_min=learning_rate * 0.05)
        Xt, yt, y = torch.from_numpy(X2).to(dev), torch.from_numpy(y2).to(dev), y2
        left = None if time_limit_s is None else max(time_limit_s - (time.monotonic() - t_train), 0.0)
        if dev == "cpu" and threads > 1:
            torch.set_num_threads(1)
        try:
            done2, losses = _fit(ctx_net, opt2, sched2, Xt, yt, weights, steps=steps, batch_size=batch_size, rng=rng,
                                 time_limit_s=left, progress=progress, cancel=cancel, offset=None,
                                 noise_std=torch.from_numpy(X2.std(0) * NOISE).to(dev) if augment else None,
                                 first=done, total=total_steps)
        finally:
            torch.set_num_threads(threads)
        ctx_net.eval()
        ctx_config = {"sigmas": list(ctx_sigmas), "architecture": arch2, "steps": done2,
                      "copies": CONTEXT_COPIES if augment else 1}
    train_seconds = time.monotonic() - t_train

    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "description": description or f"pixel classifier ({', '.join(classes)})",
        "classes": classes,
        "channels": int(planes[0].shape[0]),
        "axes": "YX",
        "architecture": arch,
        "features": {"kind": "multiscale", "sigmas": list(sigmas), "local_std": bool(local_std),
                     "energy_sigmas": list(energy)},
        "normalization": norm,
        "tiling": {"tile_size": 1024, "overlap": 64},
        "training": {"items": len(planes), "steps": done, "batch_size": int(batch_size),
                     "learning_rate": float(learning_rate), "seed": int(seed),
                     "augmentation": {"gain": GAIN, "noise": NOISE} if augment else None,
                     "zooms": list(zooms),
                     "class_weight_power": CLASS_WEIGHT_POWER,
                     "annotated_pixels": {c: int(n) for c, n in zip(classes, counts)},
                     "warm_start": base is not None, "seconds": round(train_seconds, 3)},
    }
    if ctx_config is not None:
        config["context"] = ctx_config
    model = PixelClassifierModel(net, config, device=dev, context_net=ctx_net)
    final = ctx_net if ctx_net is not None else net
    with torch.inference_mode():  # how well the strokes themselves are fitted (a sanity check)
        pred = torch.cat([final(Xt[i:i + 65536]).argmax(1) for i in range(0, len(Xt), 65536)]).cpu().numpy() + 1
    correct, total = int((pred == y).sum()), len(y)
    metrics = {"train_accuracy": correct / max(total, 1), "loss": float(np.mean(losses[-20:])) if losses else None}
    config["metrics"] = metrics
    try:  # the dataset-shift reference (ijtorch.models.shift): blocks of the training images
        model.fit_shift_reference(planes)
    except ValueError as exc:  # images too small: the model works without one (and says so)
        log.warning("no dataset-shift reference for the pixel classifier: %s", exc)
    if output is not None:
        model.save(output)
    emit(progress, ProgressEvent("train", total_steps, total_steps, "done", metrics))
    seconds = time.monotonic() - t0
    log.info("pixel classifier: %d steps in %.2f s (train accuracy %.3f)", done, seconds, metrics["train_accuracy"])
    return {"output": None if output is None else str(Path(output)), "classes": classes, "steps": done,
            "seconds": seconds, "train_seconds": train_seconds,
            "annotated_pixels": {c: int(n) for c, n in zip(classes, counts)}, "metrics": metrics, "model": model}
