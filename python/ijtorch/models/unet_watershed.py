"""U-Net boundary/interior classifier + seeded watershed, for touching, irregular cells (2D).

StarDist assumes star-convex objects; phase-contrast cells with protrusions are not. This model
predicts three classes per pixel (background, boundary, interior) and turns them into instances:

1. **Targets** (:func:`targets_from_labels`): ``boundary`` = object pixels within
   ``boundary_width`` pixels of another label or of the background (scikit-image
   ``find_boundaries(mode="inner")``, so two touching cells are separated by ``2 * boundary_width``
   boundary pixels), ``interior`` = remaining object pixels.
2. **Loss** (:func:`class_weighted_loss`): class-weighted cross-entropy, weights from the training
   set's class frequencies (``freq ** -0.5``, normalised so that the expected weight is 1), which
   keeps the thin boundary class from being ignored.
3. **Post-processing** (:func:`postprocess`): foreground = ``1 - p_background > fg_threshold``
   (holes filled with ``fill_holes``); seeds (``seed_method``): ``"threshold"`` = connected
   components of ``p_interior > seed_threshold`` with at least ``min_seed_size`` pixels, or
   ``"distance"`` = h-maxima (height ``seed_h`` pixels) of the smoothed distance transform of that
   region, one seed per cell body even where a thin neck or a flat protrusion joins two interior
   blobs; ``skimage.segmentation.watershed`` of ``1 - p_interior`` from the seeds inside the
   foreground; foreground components without a seed become objects of their own; objects below
   ``min_size`` pixels are removed and labels renumbered 1..N. The defaults are the original
   rule; each model's ``config.json`` carries its own choice.

Models are saved as a model folder of type ``"unet_watershed"`` (weights as safetensors, config
with architecture, normalisation and post-processing thresholds). See :func:`train`,
:func:`predict` and :func:`predict_instances`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ijtorch.image import check_axes

if TYPE_CHECKING:  # torch stays a lazy import (house rule 11)
    import torch

    from ijtorch.core.progress import ProgressEvent

__all__ = [
    "MODEL_TYPE", "CLASSES", "PostprocessConfig", "NormalizeConfig", "UNetWatershed", "ProbabilityMaps",
    "targets_from_labels", "class_weights_from_targets", "class_weighted_loss",
    "postprocess", "predict", "predict_instances", "save_model", "load_model", "from_model_dir", "fit_shift_reference",
]

log = logging.getLogger(__name__)

MODEL_TYPE = "unet_watershed"
CLASSES = ("background", "boundary", "interior")


class PostprocessConfig(BaseModel):
    """Thresholds that turn class probabilities into instances (saved with the model)."""

    model_config = ConfigDict(extra="forbid")

    fg_threshold: float = Field(0.5, gt=0, lt=1, description="a pixel is foreground if 1 - p_background exceeds this")
    seed_threshold: float = Field(0.5, gt=0, lt=1, description="seeds are components of p_interior above this")
    min_seed_size: int = Field(5, ge=1, description="'threshold' seeds with fewer pixels are discarded")
    min_size: int = Field(15, ge=0, description="objects with fewer pixels are removed")
    seed_method: Literal["threshold", "distance"] = Field(
        "threshold", description="seeds: components of the thresholded interior ('threshold') or h-maxima of its "
                                 "distance transform ('distance', which splits fewer flat cells into fragments)")
    seed_h: float = Field(3.0, gt=0, description="'distance' seeds: a peak must rise this many pixels of distance "
                                                 "above the saddle to a higher one")
    seed_sigma: float = Field(2.0, ge=0, description="'distance' seeds: Gaussian smoothing (pixels) of the distance "
                                                     "transform before the h-maxima")
    fill_holes: bool = Field(False, description="fill holes of the foreground before the watershed (bright "
                                                "nuclei or vacuoles predicted as background inside a cell)")


class NormalizeConfig(BaseModel):
    """Percentile normalisation applied to every input image (training and prediction)."""

    model_config = ConfigDict(extra="forbid")

    low: float = Field(1.0, ge=0, lt=100, description="percentile mapped to 0")
    high: float = Field(99.8, gt=0, le=100, description="percentile mapped to 1")


@dataclass
class UNetWatershed:
    """A loaded model: the network plus what is needed to use it.

    Attributes
    ----------
    net : torch.nn.Module
        :class:`ijtorch.models.unet.UNet` with 3 output channels (class logits).
    postprocess : PostprocessConfig
        Default thresholds for :func:`postprocess`.
    normalize : NormalizeConfig
        Input normalisation used in training.
    boundary_width : int
        Boundary thickness of the training targets.
    meta : dict
        Everything else from the model config (training summary, validation names, ...).
    """

    net: Any
    postprocess: PostprocessConfig
    normalize: NormalizeConfig
    boundary_width: int = 1
    meta: dict | None = None
    _shift_hook: Any = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------- dataset shift
    # The interface of :class:`ijtorch.models.stardist.model.StarDistModel` that ``segment()`` uses
    # (``config``, ``thresholds``, ``device``, ``shift_reference``, ``predict_instances``), so a
    # U-Net model reports its shift score the same way.
    @property
    def shift_reference(self) -> dict | None:
        """The dataset-shift reference stored with the model (config key ``shift``), if any."""
        from ijtorch.models import shift

        return (self.meta or {}).get(shift.CONFIG_KEY) or None

    def collecting(self, collector: Any) -> Any:
        """Context in which this thread's forward passes send the U-Net's bottleneck features to
        ``collector`` (see :mod:`ijtorch.models.shift`)."""
        from ijtorch.models import shift

        if self._shift_hook is None:
            self._shift_hook = shift.ShiftHook(self.net.bottleneck)
        return self._shift_hook.active(collector)

    @property
    def config(self) -> dict:
        """The model's config as saved (a copy)."""
        return {**(self.meta or {}), "model_type": MODEL_TYPE, "axes": "YX", "classes": list(CLASSES),
                "thresholds": self.postprocess.model_dump(), "boundary_width": int(self.boundary_width)}

    @property
    def thresholds(self) -> dict[str, float]:
        """``prob`` = the foreground threshold, ``nms`` = the seed threshold (the names ``segment()`` uses)."""
        return {"prob": float(self.postprocess.fg_threshold), "nms": float(self.postprocess.seed_threshold)}

    @property
    def device(self) -> str:
        try:
            return str(next(self.net.parameters()).device)
        except StopIteration:  # pragma: no cover - a network without parameters
            return "cpu"

    def predict_instances(self, image: np.ndarray, *, prob_threshold: float | None = None,
                          nms_threshold: float | None = None, tile_size: int = 512, overlap: int = 64,
                          test_time_augmentation: bool = False, scale: float = 1.0,
                          progress: Callable[[ProgressEvent], None] | None = None,
                          cancel: Callable[[], bool] | None = None, dtype: Any = np.int32,
                          **_: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """Labels of a ``YX`` plane and ``details`` as the star-convex model gives them:
        ``prob_map`` (the interior probability: an object's confidence is its peak) and, with a
        reference, ``shift_score`` and ``shift_inputs``. ``prob_threshold``/``nms_threshold`` are
        the foreground/seed thresholds (``None`` or 0: the tuned ones)."""
        from ijtorch.models import shift

        if test_time_augmentation:
            raise ValueError("test-time augmentation is not available for U-Net + watershed models")
        if float(scale) != 1.0:
            raise ValueError(f"scale={scale!r} is not available for U-Net + watershed models (resize the image, "
                             "or train at this pixel size)")
        def clamp(v: float) -> float:  # PostprocessConfig wants (0, 1)
            return min(max(float(v), 1e-3), 1 - 1e-3)

        fg = self.postprocess.fg_threshold if not prob_threshold else clamp(prob_threshold)
        seed = self.postprocess.seed_threshold if not nms_threshold else clamp(nms_threshold)
        cfg = PostprocessConfig(**{**self.postprocess.model_dump(), "fg_threshold": fg, "seed_threshold": seed})
        reference = self.shift_reference
        collector = shift.FeatureCollector(reference) if reference else None
        probs = predict(self, image, "YX", tile_size=int(tile_size), overlap=int(overlap), device=self.device,
                        progress=progress, cancel=cancel, features=collector)
        labels = postprocess(probs, config=cfg).astype(dtype)
        details: dict[str, Any] = {"prob_map": probs.interior}
        if collector is not None:
            summary = _shift_summary(_normalize(image, self.normalize), probs)
            details["shift_score"] = shift.image_score(reference, collector.score, summary)
            details["shift_inputs"] = {k: v for k, v in summary.items() if k != "quantiles"}
        return labels, details


@dataclass(frozen=True)
class ProbabilityMaps:
    """Per-pixel class probabilities (float32, the input's YX shape)."""

    background: np.ndarray
    boundary: np.ndarray
    interior: np.ndarray


def _check_labels2d(labels: Any, name: str = "labels") -> np.ndarray:
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(labels).__name__}")
    if labels.ndim != 2:
        raise ValueError(f"{name} has shape {labels.shape}; expected a 2D (YX) label map")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} has dtype {labels.dtype}; expected integer labels (0 = background)")
    return labels


def targets_from_labels(labels: np.ndarray, *, boundary_width: int = 1) -> np.ndarray:
    """Three-class target map from a label map.

    Parameters
    ----------
    labels : numpy.ndarray
        2D integer label map, 0 = background.
    boundary_width : int, default 1
        Thickness in pixels of the boundary class inside each object.

    Returns
    -------
    numpy.ndarray
        ``uint8`` map with 0 = background, 1 = boundary, 2 = interior.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    labels = _check_labels2d(labels)
    if not isinstance(boundary_width, (int, np.integer)) or boundary_width < 1:
        raise ValueError(f"boundary_width={boundary_width!r}: expected an integer >= 1")
    fg = labels > 0
    boundary = find_boundaries(labels, mode="inner", connectivity=1)
    if boundary_width > 1:
        boundary = ndi.binary_dilation(boundary, iterations=int(boundary_width) - 1) & fg
    out = np.zeros(labels.shape, np.uint8)
    out[fg] = 2
    out[boundary & fg] = 1
    return out


def class_weights_from_targets(targets: Sequence[np.ndarray], *, power: float = 0.5) -> np.ndarray:
    """Class weights ``freq ** -power``, normalised so that ``sum(freq * w) == 1`` (float32, length 3)."""
    counts = np.zeros(3, np.float64)
    for t in targets:
        counts += np.bincount(t.ravel(), minlength=3)[:3]
    freq = np.maximum(counts / max(counts.sum(), 1.0), 1e-4)
    w = freq ** (-float(power))
    return (w / float((freq * w).sum())).astype(np.float32)


def class_weighted_loss(logits: "torch.Tensor", target: "torch.Tensor", weights: "torch.Tensor") -> "torch.Tensor":
    """Class-weighted cross-entropy of ``(N, 3, Y, X)`` logits against ``(N, Y, X)`` class indices."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, target.long(), weight=weights.to(logits.device, logits.dtype))


# ------------------------------------------------------------------------------ postprocess
def _remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or labels.max() == 0:
        return labels
    counts = np.bincount(labels.ravel())
    small = counts < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def _distance_seeds(core: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Seeds at the h-maxima of the (smoothed) distance transform of the interior region ``core``:
    a flat cell whose interior probability has several blobs joined by lower ground gets one seed
    unless its blobs are separated by a neck ``seed_h`` pixels narrower than both."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    dist = ndi.distance_transform_edt(core)
    if cfg.seed_sigma > 0:
        dist = ndi.gaussian_filter(dist, cfg.seed_sigma)
    peaks = h_maxima(dist, cfg.seed_h).astype(bool) & core
    return ndi.label(peaks)[0]


def postprocess(probs: ProbabilityMaps, *, config: PostprocessConfig | None = None) -> np.ndarray:
    """Seeded watershed of class probabilities into an instance label map.

    Parameters
    ----------
    probs : ProbabilityMaps
        Background, boundary and interior probabilities (equal 2D shapes).
    config : PostprocessConfig, optional
        Thresholds; defaults to ``PostprocessConfig()``.

    Returns
    -------
    numpy.ndarray
        ``int32`` label map, 0 = background, objects 1..N.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import relabel_sequential, watershed

    if not isinstance(probs, ProbabilityMaps):
        raise TypeError(f"probs must be a ProbabilityMaps, got {type(probs).__name__}")
    cfg = config or PostprocessConfig()
    p_bg, p_int = probs.background, probs.interior
    if p_bg.shape != p_int.shape or p_bg.ndim != 2:
        raise ValueError(f"probs: background {p_bg.shape} and interior {p_int.shape} must be equal 2D shapes")
    fg = (1.0 - p_bg) > cfg.fg_threshold
    if cfg.fill_holes:
        fg = ndi.binary_fill_holes(fg)
    core = (p_int > cfg.seed_threshold) & fg
    if cfg.seed_method == "distance":  # h-maxima are often single pixels: min_seed_size does not apply
        seeds = _distance_seeds(core, cfg)
    else:
        seeds = _remove_small(ndi.label(core)[0], cfg.min_seed_size)
    labels = watershed(1.0 - p_int, seeds, mask=fg)
    orphan, n_orphan = ndi.label(fg & (labels == 0))
    if n_orphan:
        labels = np.where(orphan > 0, orphan + labels.max(), labels)
    labels = _remove_small(labels, cfg.min_size)
    labels, _, _ = relabel_sequential(labels)
    return labels.astype(np.int32)


# --------------------------------------------------------------------------------- network
def _build_net(architecture: dict) -> Any:
    from ijtorch.models.unet import UNet

    return UNet(**architecture)


def _normalize(image: np.ndarray, cfg: NormalizeConfig) -> np.ndarray:
    from ijtorch.core.normalize import percentile_normalize

    return percentile_normalize(image, cfg.low, cfg.high)


def _check_image(image: Any, axes: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    axes = check_axes(axes, image.ndim)
    if axes != "YX":
        raise ValueError(f"axes={axes!r}: the unet_watershed model accepts only 'YX' (one 2D grayscale plane)")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ValueError(f"image has dtype {image.dtype}; expected an integer or float grayscale image")
    return image


def _forward_tiled(net: Any, image: np.ndarray, *, tile: int, overlap: int, device: str,
                   progress: Callable | None, cancel: Callable[[], bool] | None) -> np.ndarray:
    """Softmax probabilities ``(3, Y, X)`` via :func:`ijtorch.core.tiling.predict_tiled` (crop stitching)."""
    import torch

    from ijtorch.core.tiling import predict_tiled

    def fn(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            return torch.softmax(net(x), dim=1).float().cpu().numpy()

    net.eval()
    return predict_tiled(fn, image[None].astype(np.float32, copy=False), tile_shape=(tile, tile), overlap=overlap,
                         out_channels=3, size_multiple=net.size_multiple(), batch_size=1, blend="crop",
                         progress=progress, cancel=cancel)


def _as_model(model: "UNetWatershed | str | os.PathLike", device: str | None) -> tuple[UNetWatershed, str]:
    from ijtorch.models.device import resolve_device

    dev = resolve_device(device)
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model, device=dev)
    if not isinstance(model, UNetWatershed):
        raise TypeError(f"model must be a UNetWatershed or a model folder path, got {type(model).__name__}")
    model.net.to(dev)
    return model, dev


def predict(
    model: "UNetWatershed | str | os.PathLike",
    image: np.ndarray,
    axes: str = "YX",
    *,
    normalize: bool = True,
    tile_size: int = 512,
    overlap: int = 64,
    device: str | None = "cpu",
    progress: "Callable[[ProgressEvent], None] | None" = None,
    cancel: Callable[[], bool] | None = None,
    features: Any = None,
) -> ProbabilityMaps:
    """Class probabilities of a 2D image.

    Parameters
    ----------
    model : UNetWatershed or path
        A loaded model or a model folder of type ``"unet_watershed"``.
    image : numpy.ndarray
        2D grayscale image.
    axes : str, default "YX"
        Must be ``"YX"``.
    normalize : bool, default True
        Apply the model's percentile normalisation (as in training). ``False`` feeds ``image``
        unchanged (it must then already be normalised the same way); integer input then warns.
    tile_size, overlap : int
        Tile size and minimum overlap of neighbouring tiles in pixels; each output pixel comes from
        the tile whose core contains it (:func:`ijtorch.core.tiling.predict_tiled`, ``"crop"``), so
        with an overlap above the network's receptive field results do not depend on tiling.
    device : str or None, default "cpu"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``None``/``"auto"`` for the best available.
    progress, cancel : callable, optional
        Progress listener (phase ``"tile"``) and cancel check polled between tiles.
    features : collector, optional
        Receives the bottleneck features of every tile (:meth:`UNetWatershed.collecting`; the
        dataset-shift check of :mod:`ijtorch.models.shift`).

    Returns
    -------
    ProbabilityMaps
    """
    image = _check_image(image, axes)
    if not isinstance(tile_size, (int, np.integer)) or tile_size < 16:
        raise ValueError(f"tile_size={tile_size!r}: expected an integer >= 16")
    if not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise ValueError(f"overlap={overlap!r}: expected an integer >= 0")
    model, dev = _as_model(model, device)
    if normalize:
        x = _normalize(image, model.normalize)
    else:
        if np.issubdtype(image.dtype, np.integer):
            log.warning("predict: normalize=False with %s input; did you forget to normalise?", image.dtype)
        x = image.astype(np.float32)
    if features is not None:
        with model.collecting(features):
            p = _forward_tiled(model.net, x, tile=int(tile_size), overlap=int(overlap), device=dev,
                               progress=progress, cancel=cancel)
    else:
        p = _forward_tiled(model.net, x, tile=int(tile_size), overlap=int(overlap), device=dev,
                           progress=progress, cancel=cancel)
    return ProbabilityMaps(background=p[0], boundary=p[1], interior=p[2])


def predict_instances(
    model: "UNetWatershed | str | os.PathLike",
    image: np.ndarray,
    axes: str = "YX",
    *,
    normalize: bool = True,
    fg_threshold: float | None = None,
    seed_threshold: float | None = None,
    min_size: int | None = None,
    tile_size: int = 512,
    overlap: int = 64,
    device: str | None = "cpu",
    progress: "Callable[[ProgressEvent], None] | None" = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Instance label map of a 2D image: :func:`predict` then :func:`postprocess`.

    Thresholds left at ``None`` come from the model's saved :class:`PostprocessConfig`; the other
    parameters are those of :func:`predict`.

    Returns
    -------
    numpy.ndarray
        ``int32`` label map of the image's shape, 0 = background.
    """
    from ijtorch.core.progress import ProgressEvent, emit

    _check_image(image, axes)
    model, dev = _as_model(model, device)
    probs = predict(model, image, axes, normalize=normalize, tile_size=tile_size, overlap=overlap,
                    device=dev, progress=progress, cancel=cancel)
    overrides = {k: v for k, v in (("fg_threshold", fg_threshold), ("seed_threshold", seed_threshold),
                                   ("min_size", min_size)) if v is not None}
    cfg = PostprocessConfig(**{**model.postprocess.model_dump(), **overrides})
    emit(progress, ProgressEvent("watershed", 0, 1, "seeded watershed"))
    labels = postprocess(probs, config=cfg)
    emit(progress, ProgressEvent("watershed", 1, 1, f"{int(labels.max())} objects"))
    return labels


def _shift_summary(x: np.ndarray, probs: ProbabilityMaps) -> dict[str, Any]:
    from ijtorch.models import shift

    return {**shift.input_summary(x, 1.0 - probs.background), "quantiles": shift.input_quantiles(x)}


def fit_shift_reference(model: UNetWatershed, train_images: Sequence[np.ndarray],
                        calibration_images: Sequence[np.ndarray], *, kind: str = "training",
                        calibration_folder: str = "validation split", max_images: int = 200) -> dict:
    """The dataset-shift reference of a U-Net + watershed model (:func:`ijtorch.models.shift.fit_reference_with`:
    bottleneck features and normalised-input quantiles of the raw ``YX`` ``train_images``, threshold
    calibrated on held-out ``calibration_images`` of the same kind), stored in ``model.meta["shift"]``
    (saved with the model)."""
    from ijtorch.models import shift

    meta = dict(model.meta or {})
    meta.pop(shift.CONFIG_KEY, None)
    model.meta = meta

    def collect(image: np.ndarray, col: Any) -> dict[str, Any]:
        probs = predict(model, image, "YX", device=model.device, features=col)
        return _shift_summary(_normalize(image, model.normalize), probs)

    reference = shift.fit_reference_with(collect, train_images, calibration_images, kind=kind,
                                         calibration_folder=calibration_folder, max_images=max_images)
    model.meta = {**meta, shift.CONFIG_KEY: reference}
    return reference


# -------------------------------------------------------------------------------- training
def save_model(model: UNetWatershed, model_dir: str | os.PathLike) -> Path:
    """Write ``model`` as a model folder through :func:`ijtorch.models.store.save_model_dir`.

    ``config.json`` holds ``model_type="unet_watershed"``, the axes contract ``"YX"``, the U-Net
    architecture, the normalisation, the post-processing ``thresholds``, ``boundary_width``, the
    training summary and train/validation names; the store adds ``schema_version``, the ijtorch
    version and the weights' SHA-256.
    """
    from ijtorch.models.folder import save_model_dir

    if not isinstance(model, UNetWatershed):
        raise TypeError(f"model must be a UNetWatershed, got {type(model).__name__}")
    meta = {k: v for k, v in (model.meta or {}).items() if k not in _CONFIG_KEYS}
    config = {
        **meta,
        "model_type": MODEL_TYPE,
        "axes": "YX",
        "classes": list(CLASSES),
        "architecture": dict(model.net.config),
        "boundary_width": int(model.boundary_width),
        "normalization": {"method": "percentile", **model.normalize.model_dump()},
        "thresholds": model.postprocess.model_dump(),
    }
    return save_model_dir(model_dir, model.net.state_dict(), config)


_CONFIG_KEYS = {"schema_version", "ijtorch_version", "model_type", "axes", "classes", "architecture",
                "boundary_width", "normalization", "thresholds", "weights"}


def from_model_dir(md: Any, *, device: str | None = "cpu") -> UNetWatershed:
    """Build a :class:`UNetWatershed` from a loaded :class:`ijtorch.models.store.ModelDir`.

    This is the builder to register with the store:
    ``register_model_type("unet_watershed", lambda md, dev: from_model_dir(md, device=dev))``.
    """
    from ijtorch.errors import ModelError
    from ijtorch.models.device import resolve_device

    config = md.config
    if config.get("model_type") != MODEL_TYPE:
        raise ModelError(f"{md.path}: model_type={config.get('model_type')!r}; this loader reads {MODEL_TYPE!r}")
    try:
        net = _build_net(config["architecture"])
        net.load_state_dict(md.state_dict)
        norm = dict(config.get("normalization", {}))
        if norm.pop("method", "percentile") != "percentile":
            raise ValueError(f"normalization method {config['normalization'].get('method')!r} is unknown")
        model = UNetWatershed(net=net, postprocess=PostprocessConfig(**config.get("thresholds", {})),
                              normalize=NormalizeConfig(**norm), boundary_width=int(config.get("boundary_width", 1)),
                              meta={k: v for k, v in config.items() if k not in _CONFIG_KEYS})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelError(f"{md.path}: malformed {MODEL_TYPE} model folder: {e}") from e
    net.to(resolve_device(device)).eval()
    return model


def load_model(model_dir: str | os.PathLike, *, device: str | None = "cpu") -> UNetWatershed:
    """Load a ``unet_watershed`` model folder (or registered model name) written by :func:`save_model`.

    Raises
    ------
    ijtorch.errors.ModelError
        Missing files, unknown schema version or model type, or weights whose SHA-256 differs.
    """
    from ijtorch.models.folder import load_model_dir

    if not Path(model_dir).is_dir():
        from ijtorch.errors import ModelError

        raise ModelError(f"{model_dir}: no such model folder (load registered names with ijtorch.models.store.load_model)")
    return from_model_dir(load_model_dir(model_dir), device=device)
