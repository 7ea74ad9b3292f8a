"""Training restoration models: CARE, Noise2Void, Noise2Noise and artificial labelling.

:func:`train_restoration` trains one of the four model kinds on numpy arrays (or folders of TIFFs)
and saves a model directory; :func:`denoise_n2v` trains Noise2Void on an image and applies it in
one step (or applies a saved N2V model). Applying models, the trust maps and the recipes' defaults
(:data:`~ijtorch.tasks.restore.TRAINING_DEFAULTS`) live in :mod:`ijtorch.tasks.restore`. Training
batches are random (augmented) patch pairs, masked for Noise2Void (:func:`_pair_batches`).
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ijtorch.core.progress import ProgressCallback
from ijtorch.image import check_axes

from .restore import (BLINDSPOT_DEFAULTS, N2V_METHODS, TRAINING_DEFAULTS, _check_kind, _load, _model_label,
                      _spatial_items, denoise_training_items, intensity_stats, restore)

__all__ = ["train_restoration", "denoise_n2v"]

log = logging.getLogger(__name__)


def _read_folder(folder: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    from ..io.raster import IMAGE_SUFFIXES, image_files, read_array

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder")
    files = image_files(folder)
    if not files:
        raise ValueError(f"{str(folder)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [(p.stem, read_array(p)) for p in files]


def _as_items(arg: Any, axes: str, ndim: int, name: str) -> list[tuple[str, np.ndarray]]:
    if isinstance(arg, (str, os.PathLike)):
        named = _read_folder(arg)
    elif isinstance(arg, np.ndarray):
        named = [("item0000", arg)]
    elif isinstance(arg, Sequence) and all(isinstance(a, np.ndarray) for a in arg):
        named = [(f"item{i:04d}", a) for i, a in enumerate(arg)]
    else:
        raise TypeError(f"{name} must be an array, a sequence of arrays or a folder, got {type(arg).__name__}")
    out = []
    for key, arr in named:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise TypeError(f"{name} item {key!r} has dtype {arr.dtype}; expected an integer or float image")
        ax = check_axes(axes, arr.ndim, arg_name="axes")
        if "C" in ax or "S" in ax:
            raise ValueError(f"axes={axes!r}: pick one channel per image before training (no C or S axis)")
        planes, *_ = _spatial_items(arr, ax, ndim)
        out += [(f"{key}_{k}" if len(planes) > 1 else key, p) for k, p in enumerate(planes)]
    return out


def _crop(a: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    from ijtorch.train.data import _crop_padded

    return _crop_padded(a, start, size, "reflect")


def _pair_batches(items: Sequence[tuple[np.ndarray, np.ndarray | None]], *, n_batches: int, batch_size: int,
                  patch: tuple[int, ...], augment: bool, n2v: dict[str, Any] | None) -> Any:
    """Callable ``rng -> batches`` of random (augmented) patch pairs; N2V batches are masked, or for
    the blind-spot network (``n2v["method"] == "blindspot"``) the noisy patches alone."""
    from ijtorch.models.restoration import n2v_mask

    weights = np.array([x.size for x, _ in items], np.float64)
    weights /= weights.sum()
    nd = len(patch)

    def batches(rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        for _ in range(n_batches):
            xs, ys = [], []
            for _ in range(batch_size):
                x, y = items[int(rng.choice(len(items), p=weights))]
                start = [int(rng.integers(0, max(d - n, 0) + 1)) for n, d in zip(patch, x.shape)]
                px = _crop(x, start, patch)
                py = _crop(y, start, patch) if y is not None else px
                if augment:
                    for ax in range(nd):
                        if rng.random() < 0.5:
                            px, py = np.flip(px, ax), np.flip(py, ax)
                    if patch[-1] == patch[-2]:
                        k = int(rng.integers(4))
                        px, py = np.rot90(px, k, axes=(nd - 2, nd - 1)), np.rot90(py, k, axes=(nd - 2, nd - 1))
                xs.append(np.ascontiguousarray(px, np.float32)[None])
                ys.append(np.ascontiguousarray(py, np.float32)[None])
            bx, by = np.stack(xs), np.stack(ys)
            if n2v is not None and n2v["method"] == "blindspot":
                yield (bx,)
            elif n2v is not None:
                masked, mask = n2v_mask(bx, rng, fraction=n2v["mask_fraction"], radius=n2v["mask_radius"])
                yield masked, bx, mask
            else:
                yield bx, by

    class _Sized:
        def __len__(self) -> int:
            return n_batches

        def __call__(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
            return batches(rng)

    return _Sized()


def train_restoration(
    kind: str,
    inputs: np.ndarray | Sequence[np.ndarray] | str | os.PathLike,
    targets: np.ndarray | Sequence[np.ndarray] | str | os.PathLike | None = None,
    *,
    output: str | os.PathLike,
    axes: str = "YX",
    ndim: int = 2,
    epochs: int = 20,
    steps_per_epoch: int = 50,
    batch_size: int | None = None,
    patch_size: int = 64,
    val_fraction: float = 0.1,
    base_channels: int | None = None,
    depth: int | None = None,
    lr: float | None = None,
    patience: int | None = None,
    mask_fraction: float = 0.01,
    mask_radius: int = 2,
    n2v_method: str | None = None,
    normalization: tuple[float, float] = (1.0, 99.8),
    augment: bool = True,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    time_limit_s: float | None = None,
    progress: ProgressCallback | None = None,
    progress_bar: bool | None = None,
    cancel: Callable[[], bool] | None = None,
    description: str = "",
    base_model: Any = None,
) -> dict[str, Any]:
    """Train a restoration model and save it as a model directory.

    Parameters
    ----------
    kind : {"care", "n2v", "n2n", "artificial_labelling"}
        ``care``: ``inputs`` low-SNR, ``targets`` high-SNR images. ``n2n``: two noisy images of
        the same sample. ``n2v``: noisy images only (``targets`` must be None).
        ``artificial_labelling``: input channel images and target channel images.
    inputs, targets
        One array, a sequence of arrays (all with ``axes``), or folders of TIFFs (same file names
        in both folders, paired in sorted order).
    output : path
        Model directory to write.
    axes : str
        Axes of every array, from ``TZYX`` (no ``C``: pick the channel first). With ``ndim=2``
        every ``YX`` plane is one training item.
    ndim : {2, 3}
        2D or 3D network (3D needs ``Z`` in ``axes``; patches are ``16 × patch × patch``).
    epochs, steps_per_epoch, batch_size, patch_size
        Training length and patch sampling (random crops, flips and 90° rotations); ``batch_size``
        ``None``: :data:`TRAINING_DEFAULTS` of ``kind``.
    val_fraction : float
        Fraction of items held out for the validation loss; with a single item, the bottom
        ``val_fraction`` of its rows (at least one patch high) is held out instead.
    base_channels, depth
        U-Net size (``None``: :data:`TRAINING_DEFAULTS` of ``kind``).
    lr, patience
        AdamW learning rate (cosine schedule; ``None``: :data:`TRAINING_DEFAULTS` of ``kind``) and
        early-stopping patience on the validation loss. ``n2v`` keeps the weights of the last epoch
        (see :data:`TRAINING_DEFAULTS`), the other kinds those of the epoch with the lowest validation loss.
    mask_fraction, mask_radius
        Noise2Void with ``n2v_method="mask"``: fraction of blind-spot pixels per patch and
        neighbourhood radius.
    n2v_method : {"blindspot", "mask"}, optional
        Noise2Void's training: ``"blindspot"`` (2D only) a blind-spot network trained on every pixel,
        applied as the posterior mean under a noise model and a prior variance read off each image
        (:mod:`ijtorch.models.blindspot`; batch size and rate from :data:`BLINDSPOT_DEFAULTS` when not
        given); ``"mask"`` the original pixel masking (:func:`n2v_mask`). ``None``: the base model's
        method when fine-tuning, else ``"mask"``.
    normalization : (low, high)
        Percentiles mapped to 0 and 1 (per image, inputs and targets separately).
    seed, device, resume, checkpoint_dir, time_limit_s, progress, progress_bar, cancel
        As in :class:`ijtorch.train.trainer.Trainer` (checkpoints default to
        ``<output>.checkpoints``).
    base_model : str, path or RestorationModel, optional
        Fine-tune this saved model instead of starting from random weights: it must be of the same
        ``kind`` and dimensionality; its network size (``base_channels``, ``depth``), normalisation
        percentiles and Noise2Void masking are kept (giving a different ``base_channels`` or
        ``depth`` is an error). Recorded as ``training.base_model`` in the new model's config.

    Returns
    -------
    dict
        Summary: output path, kind, epochs run, losses (first and best), seconds, split sizes,
        ``base_model`` (None when trained afresh).
    """
    import torch

    from ijtorch.models.device import resolve_device
    from ijtorch.models.restoration import RestorationModel, build_net, masked_mse_loss, mse_loss
    from ijtorch.core.normalize import percentile_normalize
    from ijtorch.train.data import split_train_val
    from ijtorch.train.trainer import Trainer

    _check_kind(kind)
    base = _fine_tuning_base(base_model, kind, ndim, base_channels, depth) if base_model is not None else None
    if base is not None:  # the network and its input scaling come from the model being fine-tuned
        base_channels, depth = base.net.config["base_channels"], base.net.config["depth"]
        norm = base.config["normalization"]
        normalization = (norm.get("low", 1.0), norm.get("high", 99.8))
        if kind == "n2v" and base.config.get("n2v"):
            mask_fraction = base.config["n2v"].get("mask_fraction", mask_fraction)
            mask_radius = base.config["n2v"].get("mask_radius", mask_radius)
            base_method = base.config["n2v"].get("method", "mask")
            if n2v_method is not None and n2v_method != base_method:
                raise ValueError(f"n2v_method={n2v_method!r} differs from base_model={_model_label(base_model)!r}'s "
                                 f"{base_method!r}; fine-tuning keeps the network: leave n2v_method out")
            n2v_method = base_method
    defaults = TRAINING_DEFAULTS[kind]
    if n2v_method is None:
        n2v_method = "mask"
    if kind == "n2v" and n2v_method not in N2V_METHODS:
        raise ValueError(f"n2v_method={n2v_method!r}: accepted values are {N2V_METHODS}")
    blindspot = kind == "n2v" and n2v_method == "blindspot"
    if blindspot:
        defaults = {**defaults, **BLINDSPOT_DEFAULTS}
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    base_channels = defaults["base_channels"] if base_channels is None else base_channels
    depth = defaults["depth"] if depth is None else depth
    lr = defaults["lr"] if lr is None else lr
    if not isinstance(depth, (int, np.integer)) or not 1 <= depth <= 6:
        raise ValueError(f"depth={depth!r}: expected an integer from 1 to 6")
    if ndim not in (2, 3):
        raise ValueError(f"ndim={ndim!r}: accepted values are 2 and 3")
    if kind == "n2v" and targets is not None:
        raise ValueError("kind='n2v' trains on noisy images alone: pass targets=None")
    if kind != "n2v" and targets is None:
        raise ValueError(f"kind={kind!r} needs targets (the image paired with each input)")
    for arg, v in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch), ("batch_size", batch_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{arg}={v!r}: expected a positive integer")
    if not isinstance(patch_size, (int, np.integer)) or patch_size < 16 or patch_size % 2**depth:
        raise ValueError(f"patch_size={patch_size!r}: expected an integer >= 16 divisible by 2**depth={2**depth}")
    if blindspot and ndim != 2:
        raise ValueError("n2v_method='blindspot' is 2D only: use n2v_method='mask' for ndim=3")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction!r}: expected a float in [0, 1)")
    low, high = float(normalization[0]), float(normalization[1])
    raw_in = _as_items(inputs, axes, ndim, "inputs")
    raw_tg = _as_items(targets, axes, ndim, "targets") if targets is not None else None
    if raw_tg is not None:
        if len(raw_tg) != len(raw_in):
            raise ValueError(f"inputs have {len(raw_in)} images/planes but targets have {len(raw_tg)}")
        for (n1, a), (n2, b) in zip(raw_in, raw_tg):
            if a.shape != b.shape:
                raise ValueError(f"input {n1!r} has shape {a.shape} but target {n2!r} has shape {b.shape}")
    dev = resolve_device(device)
    patch = (patch_size,) * 2 if ndim == 2 else (16, patch_size, patch_size)

    norm_in = [percentile_normalize(a, low, high) for _, a in raw_in]
    norm_tg = [percentile_normalize(b, low, high) for _, b in raw_tg] if raw_tg is not None else [None] * len(norm_in)
    items: list[tuple[np.ndarray, np.ndarray | None]] = list(zip(norm_in, norm_tg))
    names = [n for n, _ in raw_in]
    val_overlaps = False
    if len(items) >= 2 and val_fraction > 0:
        train_idx, val_idx = split_train_val(len(items), val_fraction=val_fraction, seed=seed)
        train_items, val_items = [items[i] for i in train_idx], [items[i] for i in val_idx]
        split = {"train_names": [names[i] for i in train_idx], "val_names": [names[i] for i in val_idx]}
    elif val_fraction > 0:
        x, y = items[0]
        h = x.shape[-2]
        n_val = max(int(round(h * val_fraction)), patch[-2])
        if h - n_val >= patch[-2]:
            cut = h - n_val
            train_items = [(x[..., :cut, :], None if y is None else y[..., :cut, :])]
            val_items = [(x[..., cut:, :], None if y is None else y[..., cut:, :])]
            split = {"train_rows": [0, cut], "val_rows": [cut, h], "names": names}
        else:
            train_items, val_items, val_overlaps = items, items, True
            split = {"names": names, "val_overlaps_train": True}
            log.warning("image too small to hold out validation rows; the validation loss uses training pixels")
    else:
        train_items, val_items, split = items, [], {"names": names}

    n2v_cfg = None
    if blindspot:
        n2v_cfg = {"method": "blindspot"}
    elif kind == "n2v":
        n2v_cfg = {"method": "mask", "mask_fraction": float(mask_fraction), "mask_radius": int(mask_radius)}
    train_data = _pair_batches(train_items, n_batches=steps_per_epoch, batch_size=batch_size, patch=patch,
                               augment=augment, n2v=n2v_cfg)
    val_data = None
    if val_items:
        vrng = np.random.default_rng([seed, 999])
        val_data = list(_pair_batches(val_items, n_batches=max(2, 32 // batch_size), batch_size=batch_size,
                                      patch=patch, augment=False, n2v=n2v_cfg)(vrng))
    residual = kind in ("care", "n2n")
    torch.manual_seed(seed)
    arch: dict[str, Any] = dict(in_channels=1, out_channels=1, ndim=ndim, base_channels=int(base_channels),
                                depth=int(depth))
    net = build_net({"type": "blindspot", **arch} if blindspot else
                    dict(arch, norm="none", activation="relu", dropout=0.0, pool_z=True))
    if base is not None:
        net.load_state_dict(base.net.state_dict())
    if ndim == 2:  # oneDNN's channels-last convolutions: a training step ~20 % faster on CPU (U-Net 16/3, batch 16)
        net = net.to(memory_format=torch.channels_last)
    if blindspot:
        from ijtorch.models.blindspot import blindspot_loss

        loss = blindspot_loss
    else:
        loss = masked_mse_loss if kind == "n2v" else mse_loss(residual)
    t_start = time.monotonic()

    def _cancel() -> bool:
        if cancel is not None and cancel():
            return True
        return time_limit_s is not None and time.monotonic() - t_start > time_limit_s

    output = Path(output)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else output.with_name(output.name + ".checkpoints")
    trainer = Trainer(net, loss, train_data, val_data=val_data, monitor="val_loss", mode="min", epochs=int(epochs),
                      lr=lr, scheduler="cosine", patience=patience, checkpoint_dir=ckpt, resume=resume, seed=seed,
                      device=dev, grad_clip=10.0, progress=progress, progress_bar=progress_bar, cancel=_cancel,
                      restore_best=kind != "n2v")
    result = trainer.fit()
    seconds = time.monotonic() - t_start
    target_range = None
    if raw_tg is not None:
        tp = np.array([np.percentile(b, [low, high]) for _, b in raw_tg])
        target_range = [float(np.median(tp[:, 0])), float(np.median(tp[:, 1]))]
    config: dict[str, Any] = {
        "model_type": kind,
        "name": output.name,
        "description": description or {
            "care": "CARE content-aware restoration (supervised pairs)", "n2v": "Noise2Void self-supervised denoising",
            "n2n": "Noise2Noise denoising (pairs of noisy images)",
            "artificial_labelling": "artificial labelling (input channel to target channel)"}[kind],
        "axes": "YX" if ndim == 2 else "ZYX",
        "normalization": {"method": "percentile", "low": low, "high": high},
        "input_stats": intensity_stats([a for _, a in raw_in], low=low, high=high),
        "target_range": target_range,
        "output_intensity": "target_range" if kind == "artificial_labelling" else "input_percentiles",
        "n2v": n2v_cfg,
        # restore() averages the 8 flips/rotations of the YX plane for models trained with this set
        "prediction": {"test_time_augmentation": bool(defaults.get("test_time_augmentation", False)) and ndim == 2},
        "training": {
            "items": len(items), **split, "val_overlaps_train": val_overlaps,
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size, "patch_size": list(patch), "lr": lr, "seed": seed, "augment": augment,
            "weights_from_epoch": result.epochs_run if kind == "n2v" else result.best_epoch,
            "seconds": round(seconds, 1), "device": dev, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
            "history": [{k: round(float(v), 6) for k, v in h.items()} for h in result.history],
            "cancelled_or_time_limited": result.cancelled,
            "base_model": _model_label(base_model),
        },
    }
    model = RestorationModel(trainer.model, config, device=dev)
    model.save(output)
    hist = result.history
    summary = {
        "output": str(output), "kind": kind, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "best_val_loss": result.best_metric, "first_train_loss": hist[0]["train_loss"] if hist else float("nan"),
        "last_train_loss": hist[-1]["train_loss"] if hist else float("nan"),
        "first_val_loss": hist[0].get("val_loss", float("nan")) if hist else float("nan"),
        "train_seconds": round(seconds, 1), "n_train": len(train_items), "n_val": len(val_items),
        "stopped_early": result.stopped_early, "cancelled": result.cancelled,
        "base_model": _model_label(base_model),
    }
    log.info("trained %s model saved to %s: %s", kind, output, summary)
    return summary


def _fine_tuning_base(base_model: Any, kind: str, ndim: int, base_channels: int | None, depth: int | None) -> Any:
    """The model to fine-tune, loaded on CPU, after checking it can be fine-tuned as ``kind``."""
    net = _load(base_model, "cpu")
    label = _model_label(base_model)
    if net.model_type != kind:
        raise ValueError(f"base_model={label!r} is a {net.model_type!r} model; fine-tuning keeps the kind, so "
                         f"train kind={net.model_type!r} or leave out base_model")
    if net.ndim != ndim:
        raise ValueError(f"base_model={label!r} is a {net.ndim}D model but ndim={ndim}")
    arch = net.net.config
    for arg, given in (("base_channels", base_channels), ("depth", depth)):
        if given is not None and int(given) != int(arch[arg]):
            raise ValueError(f"{arg}={given!r} differs from base_model={label!r}'s {arch[arg]}; "
                             f"fine-tuning keeps the network: leave {arg} out")
    return net


def denoise_n2v(
    data: np.ndarray,
    axes: str,
    *,
    epochs: int = 10,
    steps_per_epoch: int = 50,
    model: Any = None,
    save_to: str | os.PathLike | None = None,
    channel: int | None = None,
    patch_size: int = 64,
    batch_size: int | None = None,
    base_channels: int | None = None,
    tile_size: int = 256,
    seed: int = 0,
    device: str = "auto",
    time_limit_s: float | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Noise2Void denoising in one step: train on ``data`` itself and apply, or apply ``model``.

    Parameters
    ----------
    data : ndarray
        Noisy image (any real dtype); every ``YX`` plane is a training item.
    axes : str
        Axes from ``TZCYX``; ``C`` needs ``channel`` unless it has length 1. RGB (``TZYXS``): one
        model is trained on the planes of all three channels and restores each alone (as in
        :func:`restore`).
    channel : int, optional
        0-based numpy index along the ``C`` axis (the first channel is 0); the CLI's 1-based
        ``--channel`` subtracts 1.
    epochs, steps_per_epoch, patch_size, batch_size, base_channels, seed
        Training settings (ignored when ``model`` is given); ``None``: Noise2Void's
        :data:`TRAINING_DEFAULTS` (so are the network depth and the learning rate).
    model : str, path or RestorationModel, optional
        Apply this saved ``n2v`` model instead of training.
    save_to : path, optional
        Keep the trained model here (otherwise it is discarded).
    time_limit_s : float, optional
        Stop training after the epoch that passes this many seconds (its weights are used).
    tile_size, device, progress, cancel
        As in :func:`restore`.

    Returns
    -------
    ndarray of float32
        Denoised image in :func:`restored_axes` of ``axes``, in the input's intensity range.
    """
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    axes = check_axes(axes, data.ndim)
    if model is not None:
        net = _load(model, device)
        if net.model_type != "n2v":
            raise ValueError(f"model={str(model)!r} has model_type {net.model_type!r}; expected 'n2v'")
        return restore(data, axes, model=net, channel=channel, tile_size=tile_size, device=device,
                       progress=progress, cancel=cancel).restored
    items, item_axes = denoise_training_items(data, axes, channel)
    with tempfile.TemporaryDirectory(prefix="ijtorch-n2v-") as tmp:
        out = Path(save_to) if save_to is not None else Path(tmp) / "n2v"
        ckpt = Path(tmp) / "checkpoints"
        train_restoration("n2v", items, None, output=out, axes=item_axes, epochs=epochs,
                          steps_per_epoch=steps_per_epoch, patch_size=patch_size, batch_size=batch_size,
                          base_channels=base_channels, seed=seed, device=device, checkpoint_dir=ckpt,
                          time_limit_s=time_limit_s, progress=progress, progress_bar=False, cancel=cancel)
        from ijtorch.models.restoration import RestorationModel
        from ijtorch.models.device import resolve_device

        net = RestorationModel.load(out, device=resolve_device(device))
        return restore(data, axes, model=net, channel=channel, tile_size=tile_size, device=device,
                       progress=progress, cancel=cancel).restored
