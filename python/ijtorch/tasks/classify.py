"""Image and object classification: training, prediction, object crops, embeddings, clustering.

Images for a classifier are a stack ``(N, C, Y, X)`` (or ``(N, C, Z, Y, X)`` for 3-D), one item
per cell or per image; the axes contract is stored in the model (``"CYX"``/``"CZYX"``). The
model normalises items itself (``normalization`` in its config: per-channel percentiles of the
training set by default), so callers pass raw intensities. Per-object stacks come from :func:`object_crops`.

Examples
--------
>>> import numpy as np
>>> from ijtorch.tasks.classify import object_crops
>>> labels = np.zeros((64, 64), np.uint16); labels[10:20, 30:40] = 1
>>> object_crops(np.ones((64, 64), np.float32), "YX", labels, size=16).shape
(1, 1, 16, 16)
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..image import check_axes, to_axes
from ..core.progress import ProgressCallback, ProgressEvent, emit

__all__ = ["CLASS_WEIGHTING", "NORMALIZATION", "train_classifier", "classify", "embed", "object_crops", "object_ids",
           "cluster_embeddings", "Clusters", "write_features", "load_class_folders", "stratified_split"]

log = logging.getLogger(__name__)

CLASS_WEIGHTING = ("balanced", "sampling", "none")
NORMALIZATION = ("dataset", "item")


# ----------------------------------------------------------------------------- data

def load_class_folders(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Load ``folder/<class>/*.tif`` (or ``.png``, ``.jpg``, ...) as ``(images (N, C, Y, X), labels
    (N,), classes, names)``.

    Sub-folder names (sorted) are the classes. Each file is read with its axes (a TIFF's ImageJ
    axes) and must be ``YX``, ``CYX`` (one channel is added to ``YX``) or RGB (its red, green and
    blue become three channels, as the ImageJ Classify command gives them to a 3-channel
    classifier); all must share one shape. Items are ordered by class, then file name; ``names``
    are ``class/file``.
    """
    from ..io.raster import IMAGE_SUFFIXES, image_files, read_image

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"images={str(folder)!r} is not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(class_dirs) < 2:
        raise ValueError(f"images={str(folder)!r}: expected at least 2 class sub-folders, found "
                         f"{[d.name for d in class_dirs]}")
    images, labels, names = [], [], []
    for ci, d in enumerate(class_dirs):
        files = image_files(d)
        if not files:
            raise ValueError(f"class folder {str(d)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            im = read_image(f)
            data, axes = im.data, im.axes
            if "S" in axes and "C" not in axes:  # RGB: red, green and blue are the item's three channels
                data, axes = np.moveaxis(data, axes.index("S"), 0), "C" + axes.replace("S", "")
            if set(axes) - set("CYX"):
                raise ValueError(f"{f}: axes {im.axes!r}; class-folder items must be YX, CYX or RGB (YXS) images")
            images.append(to_axes(data, axes, "CYX"))
            labels.append(ci)
            names.append(f"{d.name}/{f.name}")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"images={str(folder)!r}: items have different shapes {sorted(shapes)}; crop or resize "
                         "them to one size first")
    return np.stack(images), np.asarray(labels, dtype=np.int64), [d.name for d in class_dirs], names


def stratified_split(labels: np.ndarray, *, val_fraction: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class train/validation split (:func:`ijtorch.train.data.split_train_val` per class).

    Every class with at least 2 items puts at least one in validation. Returns sorted index arrays.
    """
    from ..train.data import split_train_val

    labels = np.asarray(labels)
    train, val = [], []
    for k, c in enumerate(np.unique(labels)):
        idx = np.flatnonzero(labels == c)
        tr, va = split_train_val(len(idx), val_fraction=val_fraction, seed=int(seed) * 1000 + k)
        train += idx[tr].tolist()
        val += idx[va].tolist()
    return np.asarray(sorted(train), dtype=np.int64), np.asarray(sorted(val), dtype=np.int64)


def _labels_to_indices(labels: Any, classes: Sequence[str] | None, n: int) -> tuple[np.ndarray, list[str]]:
    lab = np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"labels must have one entry per image ({n}), got shape {lab.shape}")
    if lab.dtype.kind in "UO":
        lab = lab.astype(str)
        names = sorted(set(lab.tolist())) if classes is None else [str(c) for c in classes]
        unknown = sorted(set(lab.tolist()) - set(names))
        if unknown:
            raise ValueError(f"labels holds {unknown} which are not in classes={names}")
        index = {c: i for i, c in enumerate(names)}
        return np.asarray([index[v] for v in lab.tolist()], dtype=np.int64), names
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices or class names, got dtype {lab.dtype}")
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(int(lab.max()) + 1)]
    if lab.size and (lab.min() < 0 or lab.max() >= len(names)):
        raise ValueError(f"labels holds indices in [{lab.min()}, {lab.max()}]; classes has {len(names)} entries")
    return lab.astype(np.int64), names


def _augment(x: np.ndarray, rng: np.random.Generator, *, max_shift: int = 3) -> np.ndarray:
    """Random dihedral transform (flips; 90° rotations of square YX) and YX shift of a normalised batch.

    Cells have no orientation, so all 8 dihedral transforms keep the label. Shifts of up to
    ``max_shift`` pixels repeat the edge pixels. Intensities are left alone on purpose: absolute
    intensity (e.g. the DNA content that separates G1, S and G2) is often what tells classes apart.
    """
    nd = x.ndim - 2
    out = np.empty_like(x)
    for i in range(len(x)):
        a = x[i]
        for ax in range(1, nd + 1):
            if rng.random() < 0.5:
                a = np.flip(a, ax)
        if a.shape[-1] == a.shape[-2]:
            a = np.rot90(a, int(rng.integers(4)), axes=(a.ndim - 2, a.ndim - 1))
        if max_shift > 0:
            dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
            pad = [(0, 0)] * (a.ndim - 2) + [(max(dy, 0), max(-dy, 0)), (max(dx, 0), max(-dx, 0))]
            h, w = a.shape[-2:]
            a = np.pad(a, pad, mode="edge")[..., max(-dy, 0):max(-dy, 0) + h, max(-dx, 0):max(-dx, 0) + w]
        out[i] = a
    return out


# ----------------------------------------------------------------------------- training

def _member_progress(progress: ProgressCallback | None, member: int, n_members: int,
                     epochs: int) -> ProgressCallback | None:
    """Progress of ensemble member ``member``: its epochs counted among all members' epochs."""
    if progress is None or n_members == 1:
        return progress

    def forward(event: ProgressEvent) -> None:
        if event.phase == "epoch":
            event = ProgressEvent("epoch", member * epochs + event.i, n_members * epochs,
                                  f"member {member + 1}/{n_members}: {event.message}", event.metrics)
        emit(progress, event)

    return forward


def _merge_results(results: list) -> Any:
    """One training result for an ensemble: epochs and history of all members (each history entry
    says its ``member``), cancelled when the last member was."""
    from dataclasses import replace

    history = [dict(h, member=j) for j, r in enumerate(results) for h in r.history]
    return replace(results[-1], epochs_run=sum(r.epochs_run for r in results), history=history,
                   best_epoch=results[0].best_epoch)


def train_classifier(
    images: np.ndarray | str | os.PathLike,
    labels: Any = None,
    *,
    classes: Sequence[str] | None = None,
    output: str | os.PathLike,
    base_model: str | os.PathLike | None = None,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float = 2e-3,
    widths: Sequence[int] = (16, 32, 64),
    class_weighting: str = "sampling",
    augment: bool = True,
    members: int = 1,
    feature_forest: bool = True,
    normalization: str = "dataset",
    val_fraction: float = 0.15,
    patience: int | None = None,
    seed: int = 0,
    device: str = "auto",
    names: Sequence[str] | None = None,
    extra_config: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train (or fine-tune) a classifier and save it as a model directory.

    The default recipe was chosen by cross-validation on real imaging-flow-cytometry crops
    (``benchmarks/bench_classify.py``, Jurkat cell cycle, 672 cells, 7 imbalanced classes): a
    small ResNet (stride-2 stem, batch norm, global average pooling; ~78k parameters) on
    dataset-normalised channels, random dihedral transforms and shifts, class-balanced batches,
    AdamW with a cosine schedule for 100 epochs keeping the last epoch's weights, predictions
    averaged over the 8 dihedral transforms of each item and temperature-calibrated on the
    held-out split; for 2D items, averaged with a random forest on hand-crafted features
    (``feature_forest``).

    Parameters
    ----------
    images : ndarray or path
        ``(N, C, Y, X)`` / ``(N, C, Z, Y, X)`` raw images, or a folder of class-named sub-folders
        of TIFFs (see :func:`load_class_folders`; then ``labels`` and ``classes`` must be omitted).
    labels : array-like
        Class index (int) or class name (str) per image.
    classes : sequence of str, optional
        Class names in index order; default the sorted names in ``labels`` (or ``"0".."K-1"``).
    output : path
        Model directory to write (replaced atomically).
    base_model : str or path, optional
        Classifier to fine-tune: its backbone is reused with a new head for ``classes``.
    epochs, batch_size, lr, widths, patience
        Training settings (``widths`` ignored when fine-tuning). Small data sets need many
        epochs: an epoch of a few hundred items is only a dozen optimiser steps. ``patience``
        stops training after that many epochs without a better held-out balanced accuracy.
    class_weighting : {"balanced", "sampling", "none"}
        ``sampling``: batches drawn with equal probability per class (rare classes are seen
        often, in ever new augmented forms); ``balanced``: cross-entropy weighted by
        ``N / (K * n_class)``; ``none``.
    augment : bool
        Random flips, 90° rotations and shifts of up to 3 pixels (no intensity changes).
    members : int
        Networks in the ensemble, trained one after the other on the same items (member ``j``
        initialised and batched with seed ``seed + 1000 * j``); predictions average their logits.
        Training time grows linearly. Fine-tuning keeps the base model's number of members.
        One by default: on the Jurkat cell-cycle benchmark (5-fold CV, seed 0) two members scored
        balanced accuracy 0.859 ± 0.036 and the first member alone 0.863 ± 0.038, for 2.2x the
        training time (``benchmarks/bench_classify.py``).
    feature_forest : bool
        Also fit a random forest (500 trees, class-balanced) on hand-crafted intensity and shape
        features of the training items and average its class-frequency-corrected probabilities with
        the network's, calibrated again by a temperature fitted on the held-out items
        (:mod:`ijtorch.models.feature_forest`; 2D items only). On the Jurkat cell-cycle benchmark
        (5-fold CV, seeds 0-2) it raised balanced accuracy by 0.015 / 0.049 / 0.026.
    normalization : {"dataset", "item"}
        ``dataset``: each channel maps its 1st/99.8th percentiles over the training items to 0/1
        (values stored in the model; absolute intensity, e.g. DNA content, stays informative);
        ``item``: percentiles per item and channel (robust to exposure changes between images).
    val_fraction : float
        Stratified held-out fraction (see :func:`stratified_split`); its indices are saved in the
        config, metrics are computed on it and the temperature is fitted on it.
    seed : int
        Seeds the split, initialisation and batches.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    names : sequence of str, optional
        Item names recorded in the config (e.g. file names).
    extra_config : dict, optional
        Extra JSON-serialisable config entries (e.g. ``{"crops": {...}}`` written by commands).
    progress, cancel
        Progress listener and cancel check (see :class:`ijtorch.train.trainer.Trainer`).

    Returns
    -------
    dict
        ``output``, ``classes``, ``n_train``, ``n_val``, ``val_indices``, ``class_counts``,
        ``metrics`` (report on the held-out items, see
        :func:`ijtorch.metrics.classification.classification_report`, with ``ece_uncalibrated``),
        ``temperature``, ``epochs_run``, ``best_epoch`` (the epoch with the best held-out balanced
        accuracy, for information: the saved model has the last epoch's weights), ``seconds``,
        ``member_seconds`` (the training time of each ensemble member).
    """
    import torch

    from ..metrics.classification import classification_report, write_confusion_png
    from ..models.classifier import MODEL_TYPE, ClassifierModel, ClassifierNet, fit_temperature
    from ..models.store import load_model
    from ..train.trainer import Trainer

    t0 = time.monotonic()
    if isinstance(images, (str, os.PathLike)):
        if labels is not None or classes is not None:
            raise ValueError("images is a folder: class labels come from its sub-folders; omit labels and classes")
        data, y, class_names, names = load_class_folders(images)
    else:
        data = np.asarray(images)
        if labels is None:
            raise ValueError("labels is required when images is an array")
        if data.ndim not in (4, 5):
            raise ValueError(f"images must have shape (N, C, Y, X) or (N, C, Z, Y, X), got {data.shape}")
        y, class_names = _labels_to_indices(labels, classes, data.shape[0])
    if class_weighting not in CLASS_WEIGHTING:
        raise ValueError(f"class_weighting={class_weighting!r}: accepted values are {CLASS_WEIGHTING}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs={epochs!r}: expected a positive integer")
    if not isinstance(members, int) or isinstance(members, bool) or members < 1:
        raise ValueError(f"members={members!r}: expected a positive integer")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
    if len(class_names) < 2:
        raise ValueError(f"classes={class_names}: at least 2 classes are needed")
    if names is not None and len(names) != len(data):
        raise ValueError(f"names has {len(names)} entries for {len(data)} images")
    counts = np.bincount(y, minlength=len(class_names))
    if (counts == 0).any():
        log.warning("classes without training items: %s", [c for c, n in zip(class_names, counts) if n == 0])
    ndim = data.ndim - 2
    config: dict[str, Any] = {
        "model_type": MODEL_TYPE,
        "classes": class_names,
        "axes": "CYX" if ndim == 2 else "CZYX",
        "input_shape": list(data.shape[1:]),
    }
    if normalization not in NORMALIZATION:
        raise ValueError(f"normalization={normalization!r}: accepted values are {NORMALIZATION}")
    if val_fraction > 0:
        tr_idx, va_idx = stratified_split(y, val_fraction=val_fraction, seed=seed)
    else:
        tr_idx, va_idx = np.arange(len(y)), np.zeros(0, dtype=np.int64)
    if normalization == "dataset":
        per_channel = np.moveaxis(data[tr_idx], 1, 0).reshape(data.shape[1], -1).astype(np.float32)
        lo, hi = np.percentile(per_channel, (1.0, 99.8), axis=1)
        config["normalization"] = {"method": "percentile_dataset", "low": 1.0, "high": 99.8,
                                   "lo": lo.tolist(), "hi": hi.tolist(), "per": "channel, over the training items"}
    else:
        config["normalization"] = {"method": "percentile", "low": 1.0, "high": 99.8, "per": "item and channel"}
    if base_model is not None:
        base = load_model(base_model, device="cpu")
        if not isinstance(base, ClassifierModel):
            raise ValueError(f"base_model={str(base_model)!r} is a {type(base).__name__}, not a classifier")
        if base.input_shape[0] != data.shape[1] or len(base.input_shape) != data.ndim - 1:
            raise ValueError(f"base_model={str(base_model)!r} expects items of shape {list(base.input_shape)}; "
                             f"images have {list(data.shape[1:])}")
        arch = dict(base.config["architecture"], n_classes=len(class_names))
        if arch.get("members", 1) != members:
            log.info("fine-tuning keeps the %d member(s) of %s", arch.get("members", 1), base_model)
    else:
        arch = {"in_channels": int(data.shape[1]), "n_classes": len(class_names), "widths": [int(w) for w in widths],
                "ndim": ndim, "norm": "batch", "activation": "relu", "dropout": 0.2, "stem_stride": 2,
                "members": members}
    config["architecture"] = arch
    config["inference"] = {"tta": "dihedral"}
    from ..train.trainer import seed_everything

    n_members = int(arch.get("members", 1))
    member_seeds = [seed + 1000 * j for j in range(n_members)]
    seed_everything(seed)
    net = ClassifierNet(**arch)
    nets = list(net.members) if net.members is not None else [net]
    if n_members > 1:  # member j starts from seed + 1000 j: the same network as a 1-member model of that seed
        single = {k: v for k, v in arch.items() if k != "members"}
        for j, member_seed in enumerate(member_seeds):
            seed_everything(member_seed)
            nets[j] = net.members[j] = ClassifierNet(**single)
    if base_model is not None:
        base_members = list(base.net.members) if base.net.members is not None else [base.net]
        for member, base_member in zip(nets, base_members):
            backbone = {k: v for k, v in base_member.state_dict().items() if not k.startswith("head.")}
            member.load_state_dict(backbone, strict=False)
        log.info("fine-tuning from %s (backbone reused, new head for %d classes)", base_model, len(class_names))
    helper = ClassifierModel(net, config, device="cpu")
    x = helper.prepare(data)  # normalised once; augmentation works on normalised items
    ytr = y[tr_idx]
    tr_counts = np.bincount(ytr, minlength=len(class_names)).astype(np.float64)
    weights = None
    if class_weighting == "balanced":
        weights = np.where(tr_counts > 0, len(ytr) / (len(class_names) * np.maximum(tr_counts, 1)), 0.0)
    loss_weight = torch.as_tensor(weights, dtype=torch.float32) if weights is not None else None
    steps = max(1, int(np.ceil(len(tr_idx) / batch_size)))

    def train_batches(rng: np.random.Generator):
        if class_weighting == "sampling":
            p = (1.0 / np.maximum(tr_counts, 1))[ytr]
            order = rng.choice(len(tr_idx), size=steps * batch_size, p=p / p.sum())
        else:
            order = rng.permutation(len(tr_idx))
        for s in range(steps):
            sel = tr_idx[order[s * batch_size:(s + 1) * batch_size]]
            if len(sel) < 2:  # batch norm needs two items
                continue
            xb = _augment(x[sel], rng) if augment else x[sel]
            yield torch.from_numpy(np.ascontiguousarray(xb)), torch.from_numpy(y[sel])

    def val_batches(rng: np.random.Generator):
        for s in range(0, len(va_idx), 256):
            sel = va_idx[s:s + 256]
            yield torch.from_numpy(x[sel]), torch.from_numpy(y[sel])

    def loss_fn(model, batch):
        xb, yb = batch
        w = loss_weight.to(xb.device) if loss_weight is not None else None
        return torch.nn.functional.cross_entropy(model(xb), yb, weight=w)

    def metric_fn(model) -> dict[str, float]:
        from ..metrics.classification import balanced_accuracy, confusion_matrix

        with torch.no_grad():
            dev = next(model.parameters()).device
            pred = np.concatenate([model(xb.to(dev)).argmax(1).cpu().numpy() for xb, _ in val_batches(None)])
        return {"val_balanced_accuracy": balanced_accuracy(confusion_matrix(y[va_idx], pred, n_classes=len(class_names)))}

    has_val = len(va_idx) > 0
    results = []
    for j, (member, member_seed) in enumerate(zip(nets, member_seeds)):
        trainer = Trainer(member, loss_fn, train_batches, val_data=val_batches if has_val else None,
                          metric_fn=metric_fn if has_val else None,
                          monitor="val_balanced_accuracy" if has_val else "train_loss",
                          mode="max" if has_val else "min", epochs=epochs, lr=lr, scheduler="cosine",
                          patience=patience, seed=member_seed, device=device,
                          progress=_member_progress(progress, j, n_members, epochs), progress_bar=False, cancel=cancel,
                          # keep the last epoch: the cosine schedule ends gently, and the best epoch by the
                          # held-out score was measured to be a noisy pick when the held-out split is small
                          restore_best=False)
        results.append(trainer.fit())
        if results[-1].cancelled and n_members > 1:  # keep the members trained to the end (at least the first)
            keep = max(j, 1)
            log.warning("training cancelled: the model keeps %d of %d members", keep, n_members)
            net = nets[0] if keep == 1 else net
            if keep > 1:
                net.members = torch.nn.ModuleList(nets[:keep])
            config["architecture"] = arch = dict(arch, members=keep)
        if results[-1].cancelled:
            break
    result = results[0] if len(results) == 1 else _merge_results(results)
    dev = trainer.device
    model = ClassifierModel(net, config, device=dev)
    temperature, metrics = 1.0, None
    if has_val:
        logits = model.logits(x[va_idx], prepared=True)
        temperature = fit_temperature(logits, y[va_idx])
    config["calibration"] = {"temperature": temperature, "method": "temperature scaling on held-out items"}
    if feature_forest and ndim == 2:
        from ..models import feature_forest as ff

        emit(progress, ProgressEvent("forest", 0, 1, "fitting the feature forest"))
        model.forest = ff.fit_forest(ff.item_features(x[tr_idx]), y[tr_idx], len(class_names), seed=seed)
        config["feature_forest"] = {"features": ff.FEATURES, "trees": ff.TREES, "class_weight": "balanced",
                                    "items": "training split",
                                    "fusion": "mean of the network's calibrated probabilities and the forest's "
                                              "divided by the training class frequencies"}
    if has_val:  # the saved model's probabilities (with the forest, if any); ECE before calibration: the network's
        from ..models.classifier import _softmax

        p = model.probabilities(logits, x[va_idx])
        if model.forest is not None:  # the mean of two calibrated distributions is not calibrated: its own temperature
            config["feature_forest"]["temperature"] = fit_temperature(np.log(np.maximum(p, 1e-12)), y[va_idx])
            p = model.recalibrate_fused(p)
        metrics = classification_report(y[va_idx], p.argmax(1), classes=class_names, probabilities=p)
        metrics["ece_uncalibrated"] = classification_report(y[va_idx], logits.argmax(1), classes=class_names,
                                                            probabilities=_softmax(logits.astype(np.float64)))["ece"]
    try:  # the dataset-shift reference (ijtorch.models.shift): training items, threshold on the held-out ones
        model.fit_shift_reference(x[tr_idx], x[va_idx])
    except ValueError as exc:  # too few items: the model works without one (and says so)
        log.warning("no dataset-shift reference for %s: %s", output, exc)
        config.pop("shift", None)
    config["training"] = {
        "n_items": int(len(y)), "class_counts": counts.tolist(), "train_indices": tr_idx.tolist(),
        "val_indices": va_idx.tolist(), "val_fraction": val_fraction, "split": "stratified per class",
        "seed": seed, "epochs": epochs, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "class_weighting": class_weighting, "augment": augment, "normalization": normalization, "batch_size": batch_size, "lr": lr,
        "base_model": str(base_model) if base_model is not None else None,
        "val_names": [str(names[i]) for i in va_idx] if names is not None else None,
        "history": result.history,
    }
    config["metrics"] = metrics
    if extra_config:
        config.update(extra_config)
    out = model.save(output)
    if metrics is not None:
        write_confusion_png(Path(out) / "confusion_val.png", np.asarray(metrics["confusion"]), class_names,
                            title=f"held-out, balanced accuracy {metrics['balanced_accuracy']:.3f}")
    emit(progress, ProgressEvent("done", 1, 1, f"saved classifier to {out}"))
    return {
        "output": str(out), "classes": class_names, "n_train": int(len(tr_idx)), "n_val": int(len(va_idx)),
        "val_indices": va_idx.tolist(), "class_counts": counts.tolist(), "metrics": metrics,
        "temperature": temperature, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "cancelled": result.cancelled, "seconds": time.monotonic() - t0,
        "member_seconds": [float(r.seconds) for r in results],
    }


# ----------------------------------------------------------------------------- prediction

def _as_model(model: Any, device: str) -> Any:
    from ..models.classifier import ClassifierModel
    from ..models.store import load_model

    if isinstance(model, ClassifierModel):
        return model
    m = load_model(model, device=device)
    if not isinstance(m, ClassifierModel) and not getattr(m, "is_bioimageio", False):  # or an imported package
        raise ValueError(f"model={str(model)!r} is a {type(m).__name__}, not a classifier")
    return m


def classify(images: np.ndarray, *, model: Any, device: str = "auto", batch_size: int = 64) -> dict[str, Any]:
    """Classify ``(N, C, Y, X)`` (or ``(N, C, Z, Y, X)``) raw images.

    Parameters
    ----------
    images : ndarray
        One item per row; other spatial sizes than the model's are resampled to it.
    model : str, path or ClassifierModel
        Registered name or model folder (cached by :func:`ijtorch.models.store.load_model`).

    Returns
    -------
    dict
        ``class`` (N,) class names, ``class_index`` (N,) int64, ``probabilities`` (N, K) float32
        (temperature-calibrated), ``confidence`` (N,) top probability, ``classes`` list of names,
        ``shift`` the dataset-shift report of the items (:func:`shift_of_items`; "no reference"
        for models without one) and, with a reference, ``shift_score`` (N,) per item.
    """
    from ..models.classifier import ClassifierModel

    m = _as_model(model, device)
    scores = None
    if isinstance(m, ClassifierModel):
        x = m.prepare(images)
        logits, emb = m.logits_and_embeddings(x, batch_size=batch_size)
        p = m.probabilities(logits, x)
        scores = m.shift_scores(x, emb)
    else:  # an imported bioimage.io package
        p = m.predict_proba(images, batch_size=batch_size)
    idx = p.argmax(axis=1).astype(np.int64)
    classes = m.classes
    out = {"class": np.asarray([classes[i] for i in idx], dtype=object), "class_index": idx,
           "probabilities": p, "confidence": p.max(axis=1) if len(p) else np.zeros(0, np.float32),
           "classes": classes}
    name = Path(str(model)).name if isinstance(model, (str, os.PathLike)) else "classifier"
    if scores is not None:
        out["shift_score"] = scores
    out["shift"] = shift_of_items(m, scores, name=name)
    return out


def shift_of_items(model: Any, scores: np.ndarray | None, *, name: str) -> Any:
    """The dataset-shift report (:class:`ijtorch.models.shift.ShiftReport`) of items a classifier
    scored one by one (``classify(...)["shift_score"]``, or a slice of it): per item above the
    threshold calibrated on held-out items, and a warning when more items exceed it than items of
    the training kind would (:func:`ijtorch.models.shift.assess_items`)."""
    from ..models.shift import assess_items, no_reference

    reference = getattr(model, "shift_reference", None)
    if not reference or scores is None:
        return no_reference(name)
    return assess_items(reference, scores, model_name=name, unit="items")


def embed(images: np.ndarray, *, model: Any, device: str = "auto", batch_size: int = 64) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of ``(N, C, ...)`` raw images (the classifier's penultimate layer)."""
    return _as_model(model, device).embed(images, batch_size=batch_size)


# ----------------------------------------------------------------------------- object crops

def object_ids(labels: np.ndarray) -> np.ndarray:
    """Object labels in the order :func:`object_crops` returns them (ascending, 0 excluded)."""
    ids = np.unique(np.asarray(labels))
    return ids[ids != 0]


def object_crops(image: np.ndarray, axes: str, labels: np.ndarray, *, size: int = 40, scale_by_object: bool = False,
                 mask_channel: bool = False, mask_outside: bool = False) -> np.ndarray:
    """Square crops centred on each object of a 2-D label map.

    Parameters
    ----------
    image : ndarray
        ``YX`` or ``CYX``/``YXC`` image (``axes`` says which).
    axes : str
        Axes of ``image``; only ``Y``, ``X`` and ``C`` are accepted.
    labels : ndarray
        Integer ``YX`` label map of the same height and width (0 = background).
    size : int
        Output side length in pixels.
    scale_by_object : bool
        Crop a window of side ``1.25 × max(bounding-box side)`` (at least 4 pixels) around the
        object and resample it to ``size`` (linear), so every object fills the crop similarly;
        otherwise crop ``size × size`` pixels at full resolution.
    mask_channel : bool
        Append the object's binary mask (1 inside, 0 outside) as a last channel.
    mask_outside : bool
        Set pixels of other objects and background to 0 in the intensity channels.

    Returns
    -------
    ndarray
        ``(N, C (+1), size, size)`` float32 in :func:`object_ids` order, centred on each object's
        centroid (windows leaving the image are zero-padded); intensities are not rescaled.
    """
    from scipy import ndimage as ndi

    axes = check_axes(axes, np.asarray(image).ndim, arg_name="axes")
    if set(axes) - set("CYX"):
        raise ValueError(f"axes={axes!r}: object_crops accepts YX or CYX images; take one plane/frame first")
    img = to_axes(np.asarray(image), axes, "CYX").astype(np.float32)
    labels = np.asarray(labels)
    if labels.shape != img.shape[1:]:
        raise ValueError(f"labels has shape {labels.shape}; expected the image's YX shape {img.shape[1:]}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer label map, got dtype {labels.dtype}")
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size={size!r}: expected an integer >= 2")
    ids = object_ids(labels)
    n_ch = img.shape[0] + int(mask_channel)
    out = np.zeros((len(ids), n_ch, size, size), dtype=np.float32)
    if not len(ids):
        return out
    slices = ndi.find_objects(labels.astype(np.int64) if labels.dtype.kind == "u" and labels.dtype.itemsize > 4 else labels)
    centers = ndi.center_of_mass(np.ones(labels.shape), labels, ids)
    for k, (lab, c) in enumerate(zip(ids, centers)):
        sl = slices[int(lab) - 1]
        side = float(size)
        if scale_by_object:
            side = max(4.0, 1.25 * max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start))
        # sample a size×size grid covering [c - side/2, c + side/2] (pixel centres)
        if scale_by_object:  # a size×size grid covering [c - side/2, c + side/2] (pixel centres)
            grid = (np.arange(size, dtype=np.float64) - (size - 1) / 2) * (side / size)
            gy, gx = c[0] + grid, c[1] + grid
        else:  # integer pixel grid: no interpolation at full resolution
            gy = np.floor(c[0] - (size - 1) / 2 + 0.5) + np.arange(size, dtype=np.float64)
            gx = np.floor(c[1] - (size - 1) / 2 + 0.5) + np.arange(size, dtype=np.float64)
        coords = np.stack(np.meshgrid(gy, gx, indexing="ij"))
        order = 0 if not scale_by_object else 1
        mask = ndi.map_coordinates((labels == lab).astype(np.float32), coords, order=order, mode="constant", cval=0)
        for ch in range(img.shape[0]):
            out[k, ch] = ndi.map_coordinates(img[ch], coords, order=order, mode="constant", cval=0)
        if mask_outside:
            out[k, :img.shape[0]] *= mask > 0.5
        if mask_channel:
            out[k, -1] = mask > 0.5
    return out


# ----------------------------------------------------------------------------- embeddings

@dataclass(frozen=True)
class Clusters:
    """k-means clusters of embeddings with a 2-D PCA projection."""

    labels: np.ndarray  # (N,) int64, 0..k-1
    projection: np.ndarray  # (N, 2) float64, PCA of standardised features
    centers: np.ndarray  # (k, D) cluster centres in feature space
    explained_variance_ratio: np.ndarray  # (2,)


def cluster_embeddings(features: np.ndarray, *, k: int, seed: int = 0) -> Clusters:
    """k-means (scikit-learn, ``n_init=10``) on standardised features plus a 2-D PCA projection."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if not isinstance(k, (int, np.integer)) or k < 1 or k > len(f):
        raise ValueError(f"k={k!r}: expected an integer in [1, {len(f)}] (number of items)")
    z = (f - f.mean(0)) / np.where(f.std(0) > 0, f.std(0), 1.0)
    km = KMeans(n_clusters=int(k), n_init=10, random_state=seed).fit(z)
    n_comp = min(2, z.shape[1], len(z))
    pca = PCA(n_components=n_comp, random_state=seed).fit(z)
    proj = np.zeros((len(z), 2))
    proj[:, :n_comp] = pca.transform(z)
    evr = np.zeros(2)
    evr[:n_comp] = pca.explained_variance_ratio_
    centers = km.cluster_centers_ * np.where(f.std(0) > 0, f.std(0), 1.0) + f.mean(0)
    return Clusters(km.labels_.astype(np.int64), proj, centers, evr)


def write_features(path: str | os.PathLike, features: np.ndarray, *,
                   columns: dict[str, Any] | None = None) -> Path:
    """Write features (``f0``..``fD-1``) plus extra columns (e.g. object names, cluster) to a file.

    ``.csv`` always works; ``.parquet`` needs pyarrow. Written atomically.
    """
    f = np.asarray(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    table: dict[str, Any] = {}
    for name, values in (columns or {}).items():
        v = np.asarray(values)
        if v.shape != (len(f),):
            raise ValueError(f"columns[{name!r}] has shape {v.shape}; expected ({len(f)},)")
        table[name] = v
    table.update({f"f{i}": f[:, i] for i in range(f.shape[1])})
    path = Path(path)
    if path.suffix.lower() == ".csv":
        from ..io.outputs import write_table_csv

        return write_table_csv(path, table)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ValueError(f"path={str(path)!r}: writing Parquet needs pyarrow (pip install pyarrow); "
                             "or use a .csv path") from e
        from ..io.atomic import atomic_path

        with atomic_path(path) as tmp:
            pq.write_table(pa.table({k: (v.astype(str) if v.dtype == object else v) for k, v in table.items()}), tmp)
        return path
    raise ValueError(f"path={str(path)!r}: accepted suffixes are .csv and .parquet")
