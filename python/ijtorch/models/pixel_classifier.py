"""Pixel classification (semantic segmentation): a class for every pixel, learnt from a few strokes.

The model sees an image through a fixed stack of multiscale filter responses
(:func:`pixel_features`: the image, and at each of several scales the smoothed image, gradient
magnitude, Laplacian of Gaussian and the two Hessian eigenvalues, the features Trainable Weka
Segmentation, Labkit and ilastik use, plus the local standard deviation; then the edge energy, the
gradient magnitude smoothed at 4 and 8 px), standardised, and a small
multilayer perceptron
(:class:`PixelHead`) maps them to ``C`` class logits per pixel. Training therefore only needs the
features of the annotated pixels, and a few hundred steps take about a second on a CPU core.
A small U-Net (base 16, depth 2) on the same features, trained on 64² patches around the
strokes, was measured too (phase-contrast cells, seed 0): mean Dice 0.578 vs the random forest's
0.574, but 168 s of training on the shared 2-core machine against ~4 s for this head, so the
per-pixel head is the model. Training adds feature-space intensity augmentation
(:mod:`ijtorch.train.pixels_train`), which is what lifts it above the random forest on held-out
images, and scale augmentation (:mod:`ijtorch.train.pixels_scale`: the strokes' features also in the
image zoomed by 0.7 and 1.4), which keeps the interiors of nuclei larger than the annotated ones from
being classified as background or boundary.

Feature choice, measured on ``benchmarks/bench_pixels.py`` (seeds 0 and 1, mean per-class Dice on
held-out images minus the random forest's, nuclei / cells): scales 1, 2, 4, 8 without local standard
deviation (the earlier default) +0.002 / +0.035; adding it +0.017 / +0.040; scales 0.5, 1, 2, 4 with
it +0.029 / +0.043 (with the class-weight change in :mod:`ijtorch.train.pixels_train` +0.032 /
+0.041): the default. Scale 16 (or 8 and 16 beside 0.5) lost 0.03-0.06 on nuclei: strokes on two
images teach a wide context that does not carry over. Structure-tensor eigenvalues, differences of
Gaussians, the second derivative along the gradient, scales √2 apart, a wider head (64×64), twice the
steps, label smoothing, feature dropout, stroke-centre weighting and self-training on confident
unannotated pixels each moved the mean by < 0.01 (within the seed-to-seed noise). The same head
trained on dense labels of the same two images scores +0.087 / +0.080: what limits it is how few and
how unrepresentative the strokes are (none in the background right next to an object), not the
features.

Edge energy (``DEFAULT_ENERGY_SIGMAS``, 4 and 8 px: the gradient magnitude at scale 1 smoothed at
those scales; how much edge and texture surrounds a pixel, which the scales up to 4 do not see: a
phase-contrast cell body is locally as flat as the background), measured on 10 seeds of the
benchmark (0-9, against the model without it: nuclei +0.052, cells +0.029 over the forest):
+0.055 / +0.042; its seeds 0-2 alone: -0.003 / +0.010; checked on seeds 10-19, not used to choose:
+0.043 / +0.021 against +0.039 / +0.015 without it (scales 0.7, 1.4 and 2.8 with the energy, +0.057 /
+0.043 on seeds 0-9, fell to +0.036 / +0.019 there). Variants on the same 10 seeds: energy at 2,
4 and 8 +0.055 / +0.040; at 8 and 16 +0.045 / +0.038; at 4 and 8 on a scale-0.5 gradient +0.053 /
+0.046; with the local standard deviation at 8 beside it +0.054 / +0.041; with the smoothed
absolute LoG at 4 and 8 +0.053 / +0.046, or the maximum gradient magnitude within 9 and 17 px
+0.051 / +0.047 (context wider than 8 px keeps helping the phase-contrast cells and starts to hurt
the nuclei, whose strokes come from two images). Also on those 10 seeds, not kept: class-weight
power 0 or 0.5 without the energy +0.054 / +0.017 and +0.048 / +0.035, with it 0.15 or 0.35
+0.054 / +0.039 and +0.053 / +0.044; smoothing the probabilities at σ 0.7 or 1 +0.057 / +0.044 and
+0.053 / +0.044 (σ 2 costs the thin boundary class: +0.030 / +0.021), an edge-preserving guided
filter of them -0.027 to +0.049 / +0.034 to +0.046; averaging with the prediction of the image
zoomed by 0.7 or 1.4 +0.056 / +0.041 and +0.055 / +0.043; averaging with the scikit-image forest's
probabilities (weight 0.3 or 0.5) +0.059 / +0.038 and +0.059 / +0.031; 200 or 250 steps instead of
300 +0.055 / +0.038 and +0.055 / +0.041.

Auto-context stage (optional, ``train_pixels(..., context=True)``; ilastik's autocontext and Weka's
iterative approach): a second head (:class:`PixelHead`, ``context_network``) takes the pixel's
features plus the first stage's class probabilities smoothed at ``DEFAULT_CONTEXT_SIGMAS`` (0, 2, 4,
8, 16 px; :func:`context_features`), trained on the same strokes from out-of-fold first-stage
probabilities (:mod:`ijtorch.train.pixels_train`). Where one pixel's neighbourhood is ambiguous but
the region around it decides (``tests/unit/test_pixels.py``: dotted vs plain regions) it raises mean
Dice from ~0.76 to ~0.94. On ``benchmarks/bench_pixels.py`` (seeds 0-2, same strokes and splits; with the earlier
features and training recipe) it did not beat the one-stage head: mean per-class Dice on held-out
images, nuclei 0.717 (one-stage
0.785, random forest 0.772), cells 0.551 (0.557, 0.528), and 8-9x the forest's time to the first
prediction (in-sample first-stage probabilities instead of out-of-fold ones: nuclei -0.004, cells
+0.017 vs the forest). The random strokes sample class interiors and background far from objects, and a context
head learns that sampling ("near an object but not in it" = boundary), over-predicting the boundary
class on new images. So the context stage is off by default; a model with it saves its head under
the ``context.`` weight prefix and a ``context`` config entry (``sigmas``, ``architecture``), and
folders without them (every pixel model saved before it existed) load and predict as before.

Class label maps use ``1..C`` for the classes (``0`` is "unannotated" in training annotations and
never predicted). :class:`PixelClassifierModel` is saved as a model directory of
``model_type="pixel_classifier"`` (config: ``classes``, ``channels``, ``features``,
``architecture``, ``normalization``, ``tiling``, optional ``context``; ``features``: ``sigmas``,
``local_std`` and ``energy_sigmas``: folders saved before ``local_std`` get the earlier features,
scales 1-8 without it, and folders saved before ``energy_sigmas`` no edge energy); the builder is registered when this module is imported, and :func:`ijtorch.models.store.load_model` imports it for that model type.

Tiled inference: the image is normalised as a whole, then features and head run on overlapping
tiles stitched with ``blend="crop"`` (each pixel from the tile whose core holds it). The features
reach :func:`feature_reach` px (29 with the edge energy, 15 without it, 27 for models with the
earlier scales) and the head is per pixel, so with the 64-px overlap a tiled prediction equals the
whole-image one. With the context stage, the first stage's
probabilities are stitched over the whole plane, smoothed there, and passed to the tiled context
stage as extra input channels, so it too equals the whole-image prediction.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ijtorch.errors import ModelError

from .folder import ModelDir, load_model_dir, save_model_dir

__all__ = ["MODEL_TYPE", "DEFAULT_SIGMAS", "DEFAULT_ENERGY_SIGMAS", "features_per_sigma", "feature_reach", "offset_mask", "DEFAULT_CONTEXT_SIGMAS", "pixel_features", "n_features", "context_features",
           "n_context_features", "PixelClassifierModel", "PixelHead", "build_net"]

log = logging.getLogger(__name__)

MODEL_TYPE = "pixel_classifier"
DEFAULT_SIGMAS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
LEGACY_SIGMAS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)  # models saved before local_std (config without it)
FEATURES_PER_SIGMA = 5  # smoothed, gradient magnitude, LoG, two Hessian eigenvalues (+1 with local_std)
DEFAULT_ENERGY_SIGMAS: tuple[float, ...] = (4.0, 8.0)  # edge energy; models saved before it have none
ENERGY_BASE_SIGMA = 1.0  # the edge energy smooths the gradient magnitude of the image smoothed at this scale
DEFAULT_CONTEXT_SIGMAS: tuple[float, ...] = (0.0, 2.0, 4.0, 8.0, 16.0)
CONTEXT_PREFIX = "context."  # state-dict keys of the context stage's head


def features_per_sigma(local_std: bool = True) -> int:
    """Feature channels per scale and image channel."""
    return FEATURES_PER_SIGMA + int(bool(local_std))


def n_features(n_channels: int, sigmas: Sequence[float] = DEFAULT_SIGMAS, local_std: bool = True,
               energy_sigmas: Sequence[float] = ()) -> int:
    """Feature channels for an image of ``n_channels`` channels."""
    return n_channels * (1 + features_per_sigma(local_std) * len(sigmas) + len(energy_sigmas))


def offset_mask(n_channels: int, sigmas: Sequence[float], local_std: bool = True,
                energy_sigmas: Sequence[float] = ()) -> np.ndarray:
    """1 for the features that move with an intensity offset (each channel's image and smoothed
    images), 0 for the others (derivatives, local standard deviation, edge energy), in the order of
    :func:`pixel_features`: what the feature-space intensity augmentation adds the offset to."""
    per_sigma = features_per_sigma(local_std)
    per_channel = 1 + per_sigma * len(sigmas) + len(energy_sigmas)
    mask = np.zeros(n_channels * per_channel, np.float32)
    for c in range(n_channels):
        mask[c * per_channel] = 1
        mask[c * per_channel + 1:c * per_channel + 1 + per_sigma * len(sigmas):per_sigma] = 1
    return mask


def feature_reach(sigmas: Sequence[float], energy_sigmas: Sequence[float] = ()) -> int:
    """How far (px) a pixel's features look: the largest Gaussian's radius (truncated at 3 sigma) plus
    the finite differences after it (tiles and blocks need this margin to equal the whole plane)."""
    reach = int(3.0 * max(sigmas) + 0.5) + 3
    if len(energy_sigmas):
        reach = max(reach, int(3.0 * ENERGY_BASE_SIGMA + 0.5) + int(3.0 * max(energy_sigmas) + 0.5) + 2)
    return reach


def pixel_features(image: np.ndarray, sigmas: Sequence[float] = DEFAULT_SIGMAS, local_std: bool = True,
                   energy_sigmas: Sequence[float] = ()) -> np.ndarray:
    """Multiscale filter responses of a normalised ``(C, Y, X)`` (or ``(Y, X)``) plane.

    Per channel: the image itself, then for each ``sigma``: Gaussian smoothing ``G`` (borders
    reflected, truncated at 3 sigma), its gradient magnitude and the ``sigma²``-scaled Laplacian and
    two Hessian eigenvalues (ridges and blobs), the derivatives taken by central differences of
    ``G``, and with ``local_std`` the local standard deviation ``sqrt(G(I²) - G(I)²)`` (texture: it
    tells a grainy region from a flat one of the same mean); then for each of ``energy_sigmas`` the
    edge energy: the gradient magnitude at ``ENERGY_BASE_SIGMA`` smoothed at that scale (how much edge
    and texture there is around the pixel; a phase-contrast cell body is as flat as the background
    right under the pixel but not 10 px around it). Returns float32
    ``(n_features(C, sigmas, local_std, energy_sigmas), Y, X)``, channel-major. The latest results
    (up to ``_CACHE_MAX_BYTES`` together) are cached, keyed by the data's hash, so training, the dataset-shift reference and
    predicting on the same images compute them once (with one entry, two training images evicted
    each other and the reference computed both again: ~0.3 s of a ~2.5 s training).
    """
    x = np.ascontiguousarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"image has shape {np.shape(image)}; expected (Y, X) or (C, Y, X)")
    energy = tuple(float(s) for s in energy_sigmas)
    key = (hashlib.sha1(x.data).hexdigest(), x.shape, tuple(float(s) for s in sigmas), bool(local_std), energy)
    with _CACHE_LOCK:
        hit = _FEATURE_CACHE.pop(key, None)
        if hit is not None:
            _FEATURE_CACHE[key] = hit  # now the newest
    if hit is not None:
        return hit
    out = _compute_features(x, sigmas, bool(local_std), energy)
    out.setflags(write=False)
    if out.nbytes <= _CACHE_MAX_BYTES:
        with _CACHE_LOCK:
            _FEATURE_CACHE[key] = out
            while sum(v.nbytes for v in _FEATURE_CACHE.values()) > _CACHE_MAX_BYTES:
                _FEATURE_CACHE.pop(next(iter(_FEATURE_CACHE)))  # the oldest first (dicts keep insertion order)
    return out


_FEATURE_CACHE: dict[tuple, np.ndarray] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX_BYTES = 512 << 20


def _compute_features(x: np.ndarray, sigmas: Sequence[float], local_std: bool,
                      energy_sigmas: Sequence[float] = ()) -> np.ndarray:
    from scipy import ndimage as ndi

    per_sigma = features_per_sigma(local_std)
    out = np.empty((n_features(x.shape[0], sigmas, local_std, energy_sigmas),) + x.shape[1:], np.float32)
    k = 0
    small = min(x.shape[1:]) < 2
    for plane in x:
        out[k] = plane
        k += 1
        for s in sigmas:
            s = float(s)
            g = ndi.gaussian_filter(plane, s, mode="reflect", truncate=3.0)
            out[k] = g
            if local_std:
                second = ndi.gaussian_filter(plane * plane, s, mode="reflect", truncate=3.0)
                out[k + FEATURES_PER_SIGMA] = np.sqrt(np.maximum(second - g * g, 0.0))
            if small:
                out[k + 1:k + FEATURES_PER_SIGMA] = 0
                k += per_sigma
                continue
            gy, gx = np.gradient(g)
            gyy, gyx = np.gradient(gy)
            gxx = np.gradient(gx, axis=1)
            out[k + 1] = np.sqrt(gy * gy + gx * gx) * s
            s2 = s * s
            tr = (gxx + gyy) * s2
            root = np.sqrt(((gxx - gyy) * 0.5) ** 2 + gyx * gyx) * s2
            out[k + 2] = tr
            out[k + 3] = tr * 0.5 + root
            out[k + 4] = tr * 0.5 - root
            k += per_sigma
        if len(energy_sigmas):
            if small:
                out[k:k + len(energy_sigmas)] = 0
            else:
                gy, gx = np.gradient(ndi.gaussian_filter(plane, ENERGY_BASE_SIGMA, mode="reflect", truncate=3.0))
                magnitude = np.sqrt(gy * gy + gx * gx)
                for j, s in enumerate(energy_sigmas):
                    out[k + j] = ndi.gaussian_filter(magnitude, float(s), mode="reflect", truncate=3.0)
            k += len(energy_sigmas)
    return out


def n_context_features(n_classes: int, sigmas: Sequence[float] = DEFAULT_CONTEXT_SIGMAS) -> int:
    """Context feature channels for ``n_classes`` first-stage probabilities."""
    return int(n_classes) * len(sigmas)


def context_features(prob: np.ndarray, sigmas: Sequence[float] = DEFAULT_CONTEXT_SIGMAS) -> np.ndarray:
    """Auto-context features of first-stage probabilities ``(C, Y, X)``: each class's probability
    smoothed by a Gaussian of each ``sigma`` (``0`` = the probability itself; borders reflected,
    truncated at 3 sigma). Returns float32 ``(C * len(sigmas), Y, X)``, class-major."""
    from scipy import ndimage as ndi

    prob = np.asarray(prob, dtype=np.float32)
    out = np.empty((n_context_features(prob.shape[0], sigmas),) + prob.shape[1:], np.float32)
    k = 0
    for plane in prob:
        for s in sigmas:
            out[k] = plane if float(s) <= 0 else ndi.gaussian_filter(plane, float(s), mode="reflect", truncate=3.0)
            k += 1
    return out


class PixelHead(nn.Module):
    """Standardise per-pixel features, then ``Linear-ReLU`` × ``len(hidden)`` and a linear layer to logits.

    ``forward`` takes ``(N, n_features)`` pixel rows; :meth:`forward_maps` takes ``(B, F, Y, X)``
    maps and returns ``(B, C, Y, X)`` logits. The standardisation (``mean``, ``std``) is a buffer
    saved with the weights, set from the training pixels.
    """

    def __init__(self, n_features: int, n_classes: int, hidden: Sequence[int] = (32, 32)) -> None:
        super().__init__()
        if n_features < 1 or n_classes < 2:
            raise ValueError(f"n_features={n_features!r}, n_classes={n_classes!r}: expected >= 1 and >= 2")
        self.config = dict(n_features=int(n_features), n_classes=int(n_classes), hidden=[int(h) for h in hidden])
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        layers: list[nn.Module] = []
        cin = n_features
        for h in hidden:
            layers += [nn.Linear(cin, int(h)), nn.ReLU()]
            cin = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((x - self.mean) / self.std))

    def forward_maps(self, maps: torch.Tensor) -> torch.Tensor:
        b, f = maps.shape[:2]
        rows = maps.reshape(b, f, -1).transpose(1, 2).reshape(-1, f)
        out = self(rows)
        return out.reshape(b, -1, out.shape[-1]).transpose(1, 2).reshape((b, out.shape[-1]) + tuple(maps.shape[2:]))


def build_net(architecture: dict[str, Any]) -> PixelHead:
    """The head of a pixel classifier from its stored ``architecture``."""
    return PixelHead(**architecture)


def default_architecture(n_in: int, n_classes: int) -> dict[str, Any]:
    """The default head: two hidden layers of 32 units."""
    return dict(n_features=int(n_in), n_classes=int(n_classes), hidden=[32, 32])


def normalize_plane(plane: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """Percentile-normalise a ``(C, Y, X)`` plane per channel as the model's config says."""
    from ijtorch.core.normalize import percentile_normalize

    plane = np.asarray(plane, dtype=np.float32)
    if norm.get("method", "percentile") == "none":
        return plane
    return percentile_normalize(plane, float(norm.get("low", 1.0)), float(norm.get("high", 99.8)),
                                axes=(1, 2), eps=1e-6).astype(np.float32, copy=False)


class PixelClassifierModel:
    """A trained pixel classifier: network(s) + config (classes, features, normalisation, tiling).

    ``network`` is the first stage (features → class logits); ``context_network``, when the config
    has a ``context`` entry, the auto-context stage (features + :func:`context_features` of the
    first stage's probabilities → class logits). Its weights are stored in the same file under the
    ``context.`` prefix; model folders without it load and predict exactly as before.
    The network attribute is ``network`` (not ``net``): the server's dynamic batching is for
    star-convex models only and looks for ``net``.
    """

    def __init__(self, net: PixelHead, config: dict[str, Any], *, device: str = "cpu",
                 context_net: PixelHead | None = None) -> None:
        self.network = net.to(device).eval()
        self.context_network = None if context_net is None else context_net.to(device).eval()
        self.config = config
        self.device = device
        self._shift_local = threading.local()  # the collector of this thread's prediction, if any

    # ------------------------------------------------------------- dataset shift
    # The first stage's standardised filter responses are the features the check models (a
    # Gaussian per pixel, :mod:`ijtorch.models.shift`): they are what the head sees, and the
    # context stage only adds smoothed probabilities of that stage.
    @property
    def shift_reference(self) -> dict[str, Any] | None:
        """The dataset-shift reference stored with the model (config key ``shift``), if any."""
        from . import shift

        return self.config.get(shift.CONFIG_KEY) or None

    def collecting(self, collector: Any) -> Any:
        """Context in which this thread's predictions send the standardised pixel features of every
        tile to ``collector`` (a :class:`~ijtorch.models.shift.FeatureCollector` or ``MomentCollector``)."""
        from . import shift

        return shift._Active(self._shift_local, collector)

    def _standardised(self, feats: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (feats.ndim - 2)
        return (feats - self.network.mean.reshape(shape)) / self.network.std.reshape(shape)

    def fit_shift_reference(self, planes: Sequence[np.ndarray], *, block: int = 64, kind: str = "training",
                            stride: int = 2) -> dict[str, Any]:
        """Build the reference from raw training ``planes`` (``(Y, X)`` or ``(C, Y, X)``) and store it in
        ``config["shift"]``. Pixel models learn from strokes on one or a few images, so held-out
        images are rare: each plane is cut into ``block``-px blocks in a checkerboard, the features
        of the "black" blocks are the reference and the "white" blocks, scored one by one, calibrate
        the threshold (5 % false alarms per block); both read every ``stride``-th pixel per axis
        (a prediction's score reads every 4th), and only those pixels are standardised (the whole
        planes took ~0.06 s of a ~0.8 s training on two 520×696 images). The features are
        computed on the whole plane, so blocks have no edges of their own. A block's score varies
        more than an image's (fewer pixels), so on whole images the threshold errs towards fewer
        false alarms."""
        from . import shift

        self.config.pop(shift.CONFIG_KEY, None)
        train_cols, train_q, held = [], [], []
        for plane in planes:
            x = normalize_plane(np.asarray(plane)[None] if np.ndim(plane) == 2 else plane,
                                self.config.get("normalization", {}))
            f = self._features_of(x)  # cached, read-only
            h, w = x.shape[1:]
            for i, y0 in enumerate(range(0, max(h - block, 0) + 1, block)):
                for j, x0 in enumerate(range(0, max(w - block, 0) + 1, block)):
                    sl = (slice(y0, y0 + block), slice(x0, x0 + block))
                    fb = self._standardised(torch.from_numpy(np.ascontiguousarray(
                        f[:, y0:y0 + block:stride, x0:x0 + block:stride]))[None])
                    xb = x[(slice(None), *sl)]
                    if (i + j) % 2 == 0:
                        col = shift.MomentCollector()
                        col.add(fb)
                        train_cols.append(col)
                        train_q.append(shift.input_quantiles(xb))
                    else:
                        held.append((fb, xb))
        if len(train_cols) < 2:
            raise ValueError(f"the training images are too small for a dataset-shift reference (blocks of {block} px)")
        reference = shift.reference_from_moments(train_cols, [{"median": q[2]} for q in train_q], kind=kind,
                                                 images=len(planes), layer="standardised pixel features",
                                                 components=16)
        reference["input_model"] = shift._input_model(train_q)
        if held:
            scores = []
            for fb, xb in held:
                col = shift.FeatureCollector(reference)
                col.add(fb)
                scores.append(shift.image_score(reference, col.score, {"quantiles": shift.input_quantiles(xb)}))
            reference.update({"threshold": float(f"{shift.calibrate_threshold(scores):.4g}"),
                              "false_alarm_rate": shift.FALSE_ALARM_RATE,
                              "calibration": {"images": len(held), "folder": f"held-out {block}-px blocks of the "
                                                                             "training images (checkerboard)",
                                              "rule": "conformal: the ceil((n+1)(1-rate))-th smallest score of the "
                                                      "held-out blocks",
                                              "score_median": float(f"{np.median(scores):.4g}")}})
        self.config[shift.CONFIG_KEY] = reference
        return reference

    def shift_check(self, plane: np.ndarray, **kwargs: Any) -> tuple[tuple[np.ndarray, np.ndarray], float | None, dict]:
        """:meth:`predict` of one raw plane with the dataset-shift score of its features (``None``
        without a reference) and the input summary that explains a warning."""
        from . import shift

        reference = self.shift_reference
        if not reference:
            return self.predict(plane, **kwargs), None, {}
        col = shift.FeatureCollector(reference)
        with self.collecting(col):
            out = self.predict(plane, **kwargs)
            x = self._shift_local.normalized  # the plane as predict_proba normalised it
        summary = {**shift.input_summary(x[0] if x.shape[0] == 1 else x, None), "quantiles": shift.input_quantiles(x)}
        return out, shift.image_score(reference, col.score, summary), {"median": summary.get("median")}

    # ------------------------------------------------------------------ io
    @classmethod
    def from_model_dir(cls, md: ModelDir, *, device: str = "cpu") -> "PixelClassifierModel":
        if md.config.get("model_type") != MODEL_TYPE:
            raise ModelError(f"{md.path}: model_type={md.config.get('model_type')!r}, expected {MODEL_TYPE!r}")
        net = build_net(md.config["architecture"])
        first = {k: v for k, v in md.state_dict.items() if not k.startswith(CONTEXT_PREFIX)}
        ctx_state = {k[len(CONTEXT_PREFIX):]: v for k, v in md.state_dict.items() if k.startswith(CONTEXT_PREFIX)}
        ctx_cfg = md.config.get("context")
        ctx_net = build_net(ctx_cfg["architecture"]) if ctx_cfg else None
        try:
            net.load_state_dict(first)
            if ctx_net is not None:
                ctx_net.load_state_dict(ctx_state)
            elif ctx_state:
                raise RuntimeError("context-stage weights but no 'context' entry in the config")
        except RuntimeError as e:
            raise ModelError(f"{md.path}: weights do not fit the stored architecture: {e}") from None
        return cls(net, md.config, device=device, context_net=ctx_net)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> "PixelClassifierModel":
        """Load a model directory (uncached; :func:`ijtorch.models.store.load_model` caches)."""
        return cls.from_model_dir(load_model_dir(path), device=device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both stages' weights (the context stage under the ``context.`` prefix)."""
        state = dict(self.network.state_dict())
        if self.context_network is not None:
            state.update({CONTEXT_PREFIX + k: v for k, v in self.context_network.state_dict().items()})
        return state

    def save(self, path: str | Path) -> Path:
        return save_model_dir(path, self.state_dict(), self.config)

    # ----------------------------------------------------------- properties
    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.config["classes"]]

    @property
    def n_channels(self) -> int:
        return int(self.config.get("channels", 1))

    @property
    def sigmas(self) -> tuple[float, ...]:
        features = self.config.get("features", {})
        default = DEFAULT_SIGMAS if features.get("local_std") else LEGACY_SIGMAS
        return tuple(float(s) for s in features.get("sigmas", default))

    @property
    def local_std(self) -> bool:
        """Whether the features include the local standard deviation (models saved before it: no)."""
        return bool(self.config.get("features", {}).get("local_std", False))

    @property
    def energy_sigmas(self) -> tuple[float, ...]:
        """The edge-energy scales (models saved before the edge energy: none)."""
        return tuple(float(s) for s in self.config.get("features", {}).get("energy_sigmas", ()))

    @property
    def context_sigmas(self) -> tuple[float, ...] | None:
        """The context stage's smoothing scales, ``None`` for a one-stage model."""
        ctx = self.config.get("context")
        return None if not ctx else tuple(float(s) for s in ctx.get("sigmas", DEFAULT_CONTEXT_SIGMAS))

    # ------------------------------------------------------------ predict
    def features(self, plane: np.ndarray) -> np.ndarray:
        """Normalised multiscale features ``(F, Y, X)`` of a raw ``(Y, X)`` or ``(C, Y, X)`` plane."""
        x = np.asarray(plane)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] != self.n_channels:
            raise ValueError(f"the model expects {self.n_channels} channel(s) (Y, X) / (C, Y, X); got shape {np.shape(plane)}")
        return self._features_of(normalize_plane(x, self.config.get("normalization", {})))

    def _features_of(self, normalised: np.ndarray) -> np.ndarray:
        """:func:`pixel_features` of a normalised ``(C, Y, X)`` plane with this model's feature settings."""
        return pixel_features(normalised, self.sigmas, self.local_std, self.energy_sigmas)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Normalised ``(B, C, Y, X)`` tiles → class probabilities ``(B, n_classes, Y, X)``."""
        feats = np.stack([self._features_of(t) for t in batch])
        with torch.inference_mode():
            t = torch.from_numpy(feats).to(self.device)
            collector = getattr(self._shift_local, "collector", None)
            if collector is not None:  # every 4th pixel per axis: the score is a mean, 1/16 of the cost
                collector.add(self._standardised(t[..., ::4, ::4]))
            return torch.softmax(self.network.forward_maps(t), dim=1).float().cpu().numpy()

    def _forward_context(self, batch: np.ndarray) -> np.ndarray:
        """Tiles of the normalised image with the context features appended as channels → probabilities."""
        nc = self.n_channels
        feats = np.stack([np.concatenate([self._features_of(np.ascontiguousarray(t[:nc])), t[nc:]]) for t in batch])
        with torch.inference_mode():
            t = torch.from_numpy(feats).to(self.device)
            return torch.softmax(self.context_network.forward_maps(t), dim=1).float().cpu().numpy()

    def predict_proba(self, plane: np.ndarray, *, tile_size: int | None = None, overlap: int | None = None,
                      progress: Callable | None = None, cancel: Callable[[], bool] | None = None,
                      context: bool = True) -> np.ndarray:
        """Class probabilities ``(C, Y, X)`` float32 of one raw plane (tiled; see module docstring).

        A two-stage model runs the first stage over the whole plane, smooths its probabilities
        (:func:`context_features`, on the whole plane, so tiles see the same context) and runs the
        context stage tiled; ``context=False`` returns the first stage's probabilities.
        """
        from ijtorch.core.tiling import predict_tiled

        self.network.eval()
        x = np.asarray(plane)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[0] != self.n_channels:
            raise ValueError(f"the model expects {self.n_channels} channel(s) (Y, X) / (C, Y, X); got shape {np.shape(plane)}")
        x = normalize_plane(x, self.config.get("normalization", {}))
        if getattr(self._shift_local, "collector", None) is not None:
            self._shift_local.normalized = x  # for the shift check's input summary
        tiling = self.config.get("tiling", {})
        tile = int(tile_size or tiling.get("tile_size", 1024))
        ovl = int(overlap if overlap is not None else tiling.get("overlap", 64))
        kw = dict(tile_shape=(tile, tile), overlap=ovl, out_channels=len(self.classes), batch_size=1, blend="crop",
                  progress=progress, cancel=cancel)
        prob = predict_tiled(self._forward, x, **kw)
        if self.context_network is None or not context:
            return prob
        self.context_network.eval()
        stacked = np.concatenate([x, context_features(prob, self.context_sigmas)])
        return predict_tiled(self._forward_context, stacked, **kw)

    def predict(self, plane: np.ndarray, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(class map, probabilities)``: classes ``1..C`` as uint8 (uint16 beyond 255 classes)."""
        prob = self.predict_proba(plane, **kwargs)
        dtype = np.uint8 if len(self.classes) < 255 else np.uint16
        return (np.argmax(prob, axis=0) + 1).astype(dtype), prob
