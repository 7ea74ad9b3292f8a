"""Image restoration task: CARE, Noise2Void, Noise2Noise and artificial labelling, with trust maps.

:func:`restore` applies a saved model to a numpy array with an explicit axes string and returns a
frozen :class:`RestorationResult`. Training (:func:`~ijtorch.tasks.restore_train.train_restoration`)
and Noise2Void on the image itself (:func:`~ijtorch.tasks.restore_train.denoise_n2v`) are in
:mod:`ijtorch.tasks.restore_train`; the recipes' defaults are here. None of them touches the JVM.

Intensities
-----------
Every image (2D plane, or 3D volume for 3D models) is percentile-normalised (``low``/``high``
stored with the model) before the network sees it. The restored image is float32 and mapped back
to intensities: with the input's own percentiles for ``care``, ``n2v`` and ``n2n`` (so it lies in
the input's range), and with the median target percentiles seen in training for
``artificial_labelling`` (the input channel says nothing about the target's scale).

Trust
-----
``uncertainty=True``
    Per-pixel standard deviation over the 8 flips/rotations of the YX plane (test-time
    augmentation); ``restored`` is then the mean of the 8 predictions.
``error_map=True``
    In the spirit of SQUIRREL (Culley et al. 2018): the restored image is re-degraded with a
    Gaussian blur whose sigma, together with a scale and offset, is fitted by least squares to the
    input; the map is ``|input - re-degraded|`` in input units. It contains the input's noise as
    well as structured errors (hallucinated or lost structures show up as coherent blobs).
``shift_warning``
    The input's intensity percentiles and noise-to-signal ratio (noise std over the
    percentile range of the smoothed image) are compared with the ranges
    stored with the model at training time; a text warning is returned (and logged) when they fall
    outside (margins: 25 % of the training intensity span, 50 % of the noise-to-signal ratio).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ijtorch.image import check_axes, pixel_values
from ijtorch.core.progress import ProgressCallback, ProgressEvent, emit

__all__ = ["KINDS", "TRAINING_DEFAULTS", "BLINDSPOT_DEFAULTS", "N2V_METHODS", "RestorationResult", "restore",
           "degradation_error_map", "intensity_stats", "check_dataset_shift", "rgb_as_channels", "restored_axes",
           "denoise_training_items"]

log = logging.getLogger(__name__)

KINDS = ("care", "n2v", "n2n", "artificial_labelling")
N2V_METHODS = ("blindspot", "mask")
#: Batch size, U-Net size and learning rate that training (:mod:`ijtorch.tasks.restore_train`, and so
#: Noise2Void on the image itself, the CLI and the ImageJ commands) uses when not given. Noise2Void's recipe comes from
#: ``benchmarks/bench_restore.py`` (real nuclei and cells, simulated Poisson-Gaussian noise): its
#: blind-spot loss sees only 1 % of the pixels, so a short CPU training is limited by the receptive
#: field and the number of patches seen, not by the width of the network. A narrower, deeper U-Net
#: (16 channels, 3 poolings: twice the receptive field at half the cost of 32 channels / 2 poolings)
#: with twice the patches per step and a higher rate gained 0.5 dB over the former 32/2 recipe in the
#: same CPU time (30.4 vs 29.9 dB at peak 10). Its validation loss is mostly the noise of the held-out
#: pixels themselves, too noisy to pick a best epoch (picking one cost up to 0.5 dB), so N2V keeps
#: the last, cosine-annealed weights. N2V models predict with test-time augmentation (the mean over the
#: 8 flips/rotations of the YX plane; recorded as ``prediction.test_time_augmentation`` in the model's
#: config, honoured by :func:`restore` on every surface): +0.25 dB (34.62 -> 34.87) on the benchmark's
#: tune images (issue 23 protocol: Poisson peak 20 + Gaussian 0.03), for 8x the prediction time only.
#: The blind-spot network (``n2v_method="blindspot"``, Laine et al. 2019) trains on every pixel but
#: reached 33.78 dB against the masked recipe's 34.72 dB on those images in the same CPU time, so
#: masking stays the default (see :data:`BLINDSPOT_DEFAULTS`).
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "care": {"batch_size": 8, "base_channels": 32, "depth": 2, "lr": 1e-3},
    "n2n": {"batch_size": 8, "base_channels": 32, "depth": 2, "lr": 1e-3},
    "artificial_labelling": {"batch_size": 8, "base_channels": 32, "depth": 2, "lr": 1e-3},
    "n2v": {"batch_size": 16, "base_channels": 16, "depth": 3, "lr": 4e-3, "test_time_augmentation": True},
}
#: What Noise2Void with ``n2v_method="blindspot"`` (:mod:`ijtorch.models.blindspot`) changes in
#: ``TRAINING_DEFAULTS["n2v"]``. On the benchmark's tune half (10 images; 350 steps of batch 4, about
#: the 71 CPU s of the masked recipe's 500 steps of batch 16): at the masked rate 4e-3 training diverged
#: (27.0 dB), at 1e-3 33.41 dB, at 2e-3 33.78 dB. A step costs about 6x a masked one of the same batch
#: (four rotations of the U-Net), and it stays opt-in: the masked recipe reached 34.72 dB on the same
#: images in 71 CPU s, in the run where CAREamics took 64 CPU s (32.46 dB). CPU seconds measured on a
#: loaded 2-core machine (ratios within one run count).
BLINDSPOT_DEFAULTS: dict[str, Any] = {"batch_size": 4, "lr": 2e-3}
_STAT_PERCENTILES = (1.0, 50.0, 99.8)
_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


@dataclass(frozen=True)
class RestorationResult:
    """Output of :func:`restore`.

    Attributes
    ----------
    restored : ndarray of float32
        Restored image in the input's axes minus ``C``.
    axes : str
        Axes of ``restored`` (and of the maps).
    uncertainty : ndarray of float32 or None
        Per-pixel standard deviation over test-time augmentations (``uncertainty=True``).
    error_map : ndarray of float32 or None
        ``|input - re-degraded restored|`` (``error_map=True``).
    shift_warning : str or None
        Why the input looks unlike the training data, or None.
    model, model_type : str
        Model name and type.
    error_fit : tuple of dict
        Per plane: fitted ``sigma``, ``scale``, ``offset``, ``rse`` (RMS error) and ``rsp``
        (Pearson correlation) of the re-degradation (empty without ``error_map``).
    seconds : float
        Wall time.
    device : str
        Device the network ran on.
    """

    restored: np.ndarray
    axes: str
    uncertainty: np.ndarray | None = None
    error_map: np.ndarray | None = None
    shift_warning: str | None = None
    model: str = ""
    model_type: str = ""
    error_fit: tuple[dict[str, float], ...] = field(default_factory=tuple)
    seconds: float = 0.0
    device: str = "cpu"


# ----------------------------------------------------------------------------- helpers
def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: accepted values are {KINDS}")
    return kind


def _pick_channel(data: np.ndarray, axes: str, channel: int | None) -> tuple[np.ndarray, str]:
    from .segment import _pick_channel as pick

    return pick(data, axes, channel)


def rgb_as_channels(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """An RGB image's samples (``S``, last) as a ``C`` axis in ``TZCYX`` order (R, G, B = channels
    0, 1, 2), for per-channel restoration; other images are returned unchanged."""
    if "S" not in axes:
        return data, axes
    if "C" in axes:
        raise ValueError(f"axes={axes!r}: an image has channels (C) or RGB samples (S), not both")
    from ijtorch.image import to_axes

    named = axes.replace("S", "C")
    target = "".join(a for a in "TZCYX" if a in named)
    return to_axes(data, named, target), target


def restored_axes(axes: str) -> str:
    """Axes of what :func:`restore` and :func:`~ijtorch.tasks.restore_train.denoise_n2v` return for an
    input with ``axes``: one restored channel (``C`` dropped), or the three restored channels of an RGB
    image as ``C``."""
    return rgb_as_channels(np.empty((1,) * len(axes)), axes)[1] if "S" in axes else axes.replace("C", "")


def denoise_training_items(data: np.ndarray, axes: str, channel: int | None) -> tuple[list[np.ndarray], str]:
    """The channel-free images Noise2Void trains on for an input: the picked channel, or each of the
    three channels of an RGB image (one model for all three), and their axes."""
    if "S" in axes:
        data, axes = rgb_as_channels(data, axes)
        ci = axes.index("C")
        return [np.take(data, c, axis=ci) for c in range(data.shape[ci])], axes.replace("C", "")
    picked, picked_axes = _pick_channel(data, axes, channel)
    return [picked], picked_axes


def _spatial_items(data: np.ndarray, axes: str, ndim: int) -> tuple[list[np.ndarray], str, tuple[int, ...], list[int]]:
    """Split ``data`` into spatial items (``YX`` planes or ``ZYX`` volumes).

    Returns the items, the canonical axes, the outer shape and the permutation to canonical order.
    """
    spatial = "YX" if ndim == 2 else "ZYX"
    if ndim == 3 and "Z" not in axes:
        raise ValueError(f"axes={axes!r}: a 3D model needs a Z axis")
    outer = "".join(a for a in "TZ" if a in axes and a not in spatial)
    canonical = outer + spatial
    perm = [axes.index(a) for a in canonical]
    stack = np.transpose(data, perm)
    outer_shape = stack.shape[: len(outer)]
    items = list(stack.reshape((-1,) + stack.shape[len(outer):]))
    return items, canonical, outer_shape, perm


def _noise_level(x: np.ndarray) -> float:
    """Robust noise std of an image (MAD of a Laplacian-like high-pass, Immerkær 1996)."""
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        return float(np.median([_noise_level(p) for p in x[:: max(1, len(x) // 8)]]))
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    from scipy import ndimage as ndi  # imported here: the CLI's parser imports this module for KINDS

    hp = ndi.convolve(x, k, mode="reflect")[1:-1, 1:-1]
    return float(np.median(np.abs(hp)) / 0.6745 / 6.0)


def _noise_to_signal(image: np.ndarray, low: float, high: float) -> float:
    """Noise std divided by the percentile range of the smoothed image (robust to the noise itself)."""
    x = np.asarray(image, np.float32)
    sigma = (0, 2, 2) if x.ndim == 3 else 2
    from scipy import ndimage as ndi

    lo, hi = np.percentile(ndi.gaussian_filter(x, sigma), [low, high])
    return _noise_level(x) / max(float(hi - lo), 1e-12)


def intensity_stats(images: Sequence[np.ndarray], *, low: float = 1.0, high: float = 99.8) -> dict[str, Any]:
    """Ranges over ``images`` of raw percentiles (1, 50, 99.8) and the noise-to-signal ratio."""
    if not images:
        raise ValueError("images is empty")
    pcts = np.array([np.percentile(im, _STAT_PERCENTILES) for im in images], np.float64)
    noise = np.array([_noise_to_signal(im, low, high) for im in images])
    return {"percentiles": list(_STAT_PERCENTILES), "min": pcts.min(0).tolist(), "max": pcts.max(0).tolist(),
            "noise": [float(noise.min()), float(noise.max())], "n_images": len(images)}


def check_dataset_shift(images: Sequence[np.ndarray], stats: dict[str, Any] | None, *, low: float = 1.0,
                        high: float = 99.8, margin: float = 0.25) -> str | None:
    """Text warning when ``images`` fall outside the training ``stats`` (see :func:`intensity_stats`)."""
    if not stats:
        return None
    now = intensity_stats(images, low=low, high=high)
    problems = []

    def outside(name: str, value_lo: float, value_hi: float, lo: float, hi: float, m: float) -> None:
        if value_lo < lo - m or value_hi > hi + m:
            shown = f"{value_lo:.4g}" if value_lo == value_hi else f"{value_lo:.4g}..{value_hi:.4g}"
            problems.append(f"{name} {shown} outside the training range [{lo:.4g}, {hi:.4g}]")

    # intensities: margin relative to the training intensity span; noise: relative to its value
    span = max(float(stats["max"][-1]) - float(stats["min"][0]), 1e-12) if stats.get("percentiles") else 1.0
    for i, p in enumerate(stats.get("percentiles", [])):
        outside(f"intensity percentile {p:g}", now["min"][i], now["max"][i], stats["min"][i], stats["max"][i],
                margin * span)
    if "noise" in stats:
        lo, hi = stats["noise"]
        outside("noise-to-signal ratio", now["noise"][0], now["noise"][1], lo, hi, 2 * margin * hi)
    if not problems:
        return None
    msg = ("input differs from the training data (dataset shift): " + "; ".join(problems)
           + ". The result may be unreliable: check it, or retrain/fine-tune on data like this.")
    log.warning(msg)
    return msg


def degradation_error_map(image: np.ndarray, restored: np.ndarray, *,
                          sigmas: Sequence[float] = _SIGMAS) -> tuple[np.ndarray, dict[str, float]]:
    """SQUIRREL-style error map: ``|image - (a * G_sigma(restored) + b)|`` with a least-squares fit.

    For each sigma the blurred restored image is fitted to ``image`` by scale ``a`` and offset ``b``;
    the sigma with the smallest residual wins.

    Returns
    -------
    error_map : ndarray of float32
        Absolute residual in ``image`` units.
    fit : dict
        ``sigma``, ``scale``, ``offset``, ``rse`` (RMS residual) and ``rsp`` (Pearson correlation).
    """
    if image.shape != restored.shape:
        raise ValueError(f"image shape {image.shape} differs from restored shape {restored.shape}")
    if len(sigmas) == 0:
        raise ValueError("sigmas is empty: give at least one Gaussian sigma (0 = no blur)")
    from scipy import ndimage as ndi

    x = image.astype(np.float64, copy=False)
    best: tuple[float, float, float, float, np.ndarray] | None = None
    for s in sigmas:
        b = ndi.gaussian_filter(restored.astype(np.float64), s) if s > 0 else restored.astype(np.float64)
        bm, xm = b.mean(), x.mean()
        var = ((b - bm) ** 2).mean()
        a = float(((b - bm) * (x - xm)).mean() / var) if var > 0 else 0.0
        c = float(xm - a * bm)
        fit = a * b + c
        rse = float(np.sqrt(((x - fit) ** 2).mean()))
        if best is None or rse < best[3]:
            best = (float(s), a, c, rse, fit)
    s, a, c, rse, fit = best  # type: ignore[misc]
    rsp = float(np.corrcoef(x.ravel(), fit.ravel())[0, 1]) if fit.std() > 0 and x.std() > 0 else 0.0
    return np.abs(x - fit).astype(np.float32), {"sigma": s, "scale": a, "offset": c, "rse": rse, "rsp": rsp}


def _model_label(model: Any) -> str | None:
    """How a model given by name, folder or object is recorded (None for no model)."""
    if model is None:
        return None
    if hasattr(model, "config"):
        return str(model.config.get("name", "")) or None
    return str(model)


# ----------------------------------------------------------------------------- inference
def _load(model: Any, device: str) -> Any:
    from ijtorch.models.restoration import RestorationModel
    from ijtorch.models.store import load_model

    if isinstance(model, RestorationModel):
        return model
    net = load_model(model, device=device)
    if not isinstance(net, RestorationModel) and not getattr(net, "is_bioimageio", False):
        raise ValueError(f"model={str(model)!r} has model_type {net.config.get('model_type')!r}; "
                         f"expected one of {KINDS}")
    return net


def restore(
    data: np.ndarray,
    axes: str,
    *,
    model: Any,
    channel: int | None = None,
    uncertainty: bool = False,
    error_map: bool = False,
    tile_size: int = 256,
    overlap: int = 48,
    tiled: bool = True,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> RestorationResult:
    """Restore (denoise, or predict a label channel for) an image with a saved model.

    Parameters
    ----------
    data : ndarray
        Image of any real dtype.
    axes : str
        Axes of ``data`` from ``TZCYX``, or ``TZYXS`` for RGB. 2D models restore every ``YX`` plane;
        3D models every ``ZYX`` volume. ``C`` needs ``channel=`` unless it has length 1. RGB
        (``S``) images are restored per channel: R, G and B each alone by the same model, returned
        as three float32 channels (axes with ``C`` in place of ``S``, see :func:`restored_axes`);
        ``channel`` is then ignored. Models that take one grey channel only (artificial labelling,
        imported bioimage.io packages) refuse RGB with a ``ValueError``.
    model : str, path or RestorationModel
        Registered model name, model directory, or a loaded model.
    channel : int, optional
        0-based numpy index along the ``C`` axis (the first channel is 0) when ``axes`` contains
        ``C``. The CLI's ``--channel`` and ImageJ's channel numbers count from 1 and subtract 1.
    uncertainty : bool
        Also return the std over 8 flips/rotations (8× slower); ``restored`` is then their mean, as it
        always is for models trained with test-time augmentation (Noise2Void's default, see
        :data:`TRAINING_DEFAULTS`).
    error_map : bool
        Also return the SQUIRREL-style error map (not for ``artificial_labelling``).
    tile_size, overlap : int
        Tiles (pixels) and their overlap; tiles are blended linearly across the overlap. On CPU,
        256-pixel tiles restored a 2048x2048 image 1.4-1.9x faster than 512-pixel tiles or one
        untiled pass (their activations stay in the cache; ``benchmarks/bench_restore.py``).
    tiled : bool
        ``False`` predicts every plane in one piece (needs more memory).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    progress, cancel
        Progress events (phase ``"plane"`` and ``"tile"``); cancel is polled between planes/tiles.

    Returns
    -------
    RestorationResult
        Float32 arrays in ``axes`` minus ``C`` (RGB: ``C`` in place of ``S``).
    """
    t0 = time.monotonic()
    if not isinstance(data, np.ndarray):
        raise TypeError(f"data must be a numpy array, got {type(data).__name__}")
    axes = check_axes(axes, data.ndim)
    data = pixel_values(data)  # NaN / inf: the lowest finite value; TypeError for non-numeric data
    if not isinstance(tile_size, (int, np.integer)) or tile_size < 16:
        raise ValueError(f"tile_size={tile_size!r}: expected an integer >= 16")
    if not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < tile_size:
        raise ValueError(f"overlap={overlap!r}: expected an integer in [0, tile_size)")
    net = _load(model, device)
    if "S" in axes:
        return _restore_rgb(data, axes, net, model=model, uncertainty=uncertainty, error_map=error_map,
                            tile_size=tile_size, overlap=overlap, tiled=tiled, device=device, progress=progress,
                            cancel=cancel, t0=t0)
    if getattr(net, "is_bioimageio", False):  # an imported bioimage.io package (ijtorch.bioimageio.runtime)
        return net.restore(data, axes, channel=channel, tile_size=tile_size, overlap=overlap, tiled=tiled,
                           model=model, progress=progress, cancel=cancel, t0=t0)
    if error_map and net.model_type == "artificial_labelling":
        raise ValueError("error_map=True is not available for artificial_labelling models: the output is another "
                         "channel, so it cannot be re-degraded into the input")
    data, axes = _pick_channel(data, axes, channel)
    items, canonical, outer_shape, perm = _spatial_items(data, axes, net.ndim)
    low = net.config["normalization"].get("low", 1.0)
    high = net.config["normalization"].get("high", 99.8)
    shift = check_dataset_shift(items, net.config.get("input_stats"), low=low, high=high)
    transforms = None
    if uncertainty or (net.config.get("prediction") or {}).get("test_time_augmentation"):
        from ijtorch.models.dihedral import dihedral_transforms

        transforms = dihedral_transforms()
    restored, stds, errs, fits = [], [], [], []
    for k, item in enumerate(items):
        if cancel is not None and cancel():
            raise InterruptedError("restoration cancelled")
        emit(progress, ProgressEvent("plane", k, len(items), f"plane {k + 1}/{len(items)}"))
        x, lo, hi = net.normalize(item)
        if net.model_type == "artificial_labelling" and net.config.get("target_range"):
            lo, hi = net.config["target_range"]
        kw = dict(tile_size=int(tile_size), overlap=int(overlap), tiled=tiled, progress=progress, cancel=cancel)
        if transforms is None:
            preds = [net.predict_normalized(x, **kw)]
        else:
            preds = [t.inverse(net.predict_normalized(np.ascontiguousarray(t.forward(x)), **kw)) for t in transforms]
        stack = np.stack(preds).astype(np.float32) * np.float32(hi - lo) + np.float32(lo)
        out = stack.mean(0)
        restored.append(out)
        if uncertainty:
            stds.append(stack.std(0))
        if error_map:
            emap, fit = degradation_error_map(item.astype(np.float32), out)
            errs.append(emap)
            fits.append(fit)
    emit(progress, ProgressEvent("plane", len(items), len(items), "done"))
    inv_perm = np.argsort(perm)

    def back(arrs: list[np.ndarray]) -> np.ndarray:
        arr = np.stack(arrs).astype(np.float32).reshape(outer_shape + arrs[0].shape)
        return np.ascontiguousarray(np.transpose(arr, inv_perm))

    seconds = time.monotonic() - t0
    name = Path(str(model)).name if not hasattr(model, "config") else str(net.config.get("name", ""))
    log.info("restored %s image with %s model %s in %.2f s on %s", axes, net.model_type, name, seconds, net.device)
    return RestorationResult(restored=back(restored), axes=axes, uncertainty=back(stds) if stds else None,
                             error_map=back(errs) if errs else None, shift_warning=shift, model=name,
                             model_type=net.model_type, error_fit=tuple(fits), seconds=seconds, device=net.device)


def _restore_rgb(data: np.ndarray, axes: str, net: Any, *, model: Any, t0: float, **kw: Any) -> RestorationResult:
    """RGB input: each of R, G and B restored alone by the (single-channel) model, returned as a
    three-channel float32 image (``C`` axis) — a restored RGB image is not 8-bit any more."""
    label = _model_label(model)
    if getattr(net, "is_bioimageio", False) or net.model_type == "artificial_labelling":
        kind = "an imported bioimage.io" if getattr(net, "is_bioimageio", False) else "an artificial labelling"
        raise ValueError(f"model={label!r} is {kind} model, which takes one grey channel, not RGB: convert the "
                         "image to grey (Image > Type > 8-bit) or split its channels first")
    data, axes = rgb_as_channels(data, axes)
    parts = [restore(data, axes, model=net, channel=c, **kw) for c in range(data.shape[axes.index("C")])]
    ci = axes.index("C")

    def stacked(name: str) -> np.ndarray | None:
        arrays = [getattr(r, name) for r in parts]
        return None if arrays[0] is None else np.stack(arrays, axis=ci)

    warnings = [f"{band}: {r.shift_warning}" for band, r in zip("RGB", parts) if r.shift_warning]
    return RestorationResult(restored=stacked("restored"), axes=axes, uncertainty=stacked("uncertainty"),
                             error_map=stacked("error_map"),
                             shift_warning=" ".join(warnings) or None,
                             model=parts[0].model or str(label or ""), model_type=parts[0].model_type,
                             error_fit=tuple(f for r in parts for f in r.error_fit),
                             seconds=time.monotonic() - t0, device=parts[0].device)
