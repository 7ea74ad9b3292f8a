"""A small ResNet-style image classifier with embeddings and temperature scaling.

:class:`ClassifierNet` maps ``(N, C, Y, X)`` (or ``(N, C, Z, Y, X)``) float images to class logits.
Its penultimate layer (global average pooling of the last residual stage) is the *embedding*
returned by :meth:`ClassifierNet.features`. :class:`ClassifierModel` wraps a network with its
config (class names, input shape, normalisation, calibration temperature) and is saved/loaded as a
model directory of ``model_type="classifier"`` through :mod:`ijtorch.models.store` (the builder is
registered when this module is imported).

Probabilities are ``softmax(logits / T)`` with the temperature ``T`` fitted on held-out items
(:func:`fit_temperature`, Guo et al. 2017), which leaves the predicted class unchanged. Models
trained with test-time augmentation average the logits of the 8 dihedral transforms of an item
(cells have no orientation), so predictions do not change when an item is rotated or flipped.
An ensemble (``members > 1``) holds that many networks, trained separately; its logits are the
mean of theirs and its embedding is their embeddings side by side.

A 2D model may also hold a random forest on hand-crafted item features
(:mod:`ijtorch.models.feature_forest`; config ``feature_forest``, arrays under the ``forest.``
prefix of the weights file); its probabilities (:meth:`ClassifierModel.probabilities`) are then the
mean of the network's calibrated ones and the forest's, corrected for the training class
frequencies. Folders without it predict with the network alone, as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ijtorch.errors import ModelError

from .folder import ModelDir, load_model_dir, save_model_dir
from .unet import _act, _conv, _norm

__all__ = ["MODEL_TYPE", "ClassifierNet", "ResidualBlock", "ClassifierModel", "fit_temperature"]

log = logging.getLogger(__name__)

MODEL_TYPE = "classifier"


class ResidualBlock(nn.Module):
    """``conv-norm-act-conv-norm`` plus a (projected) shortcut, then activation."""

    def __init__(self, cin: int, cout: int, *, stride: int, ndim: int, norm: str, activation: str) -> None:
        super().__init__()
        conv = _conv(ndim)
        bias = norm == "none"
        self.body = nn.Sequential(
            conv(cin, cout, 3, stride=stride, padding=1, bias=bias), _norm(norm, cout, ndim), _act(activation),
            conv(cout, cout, 3, padding=1, bias=bias), _norm(norm, cout, ndim))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv(cin, cout, 1, stride=stride, bias=bias), _norm(norm, cout, ndim))
        self.act = _act(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ClassifierNet(nn.Module):
    """Stem convolution, one residual block per stage (stride 2 after the first), global pooling, head.

    Parameters
    ----------
    in_channels : int
        Input channels.
    n_classes : int
        Output classes (>= 2).
    widths : sequence of int
        Channels per stage; the embedding has ``widths[-1]`` features.
    ndim : {2, 3}
        Spatial dimensions.
    norm, activation : str
        As in :class:`ijtorch.models.unet.UNet`. Batch norm keeps absolute intensity informative;
        group/instance norm normalise each item, which erases e.g. the DNA content of a cell.
    dropout : float
        Dropout before the linear head.
    stem_stride : {1, 2}
        Stride of the stem convolution in YX; 2 quarters the cost, enough for small crops of cells.
    members : int
        Networks in an ensemble (each a ``ClassifierNet`` with the arguments above, in
        ``self.members``, trained separately): the logits are the mean of the members' logits
        and the embedding is the concatenation of theirs. 1: a single network (no ``members``).
    """

    def __init__(self, in_channels: int, n_classes: int, *, widths: Sequence[int] = (32, 64, 128), ndim: int = 2,
                 norm: str = "batch", activation: str = "relu", dropout: float = 0.2, stem_stride: int = 1,
                 members: int = 1) -> None:
        super().__init__()
        if not isinstance(members, int) or members < 1:
            raise ValueError(f"members={members!r}: expected a positive integer")
        self.members = None  # an ensemble's nn.ModuleList (no annotation: the bioimage.io export inlines this class)
        if members > 1:
            self.members = nn.ModuleList(
                ClassifierNet(in_channels, n_classes, widths=widths, ndim=ndim, norm=norm, activation=activation,
                              dropout=dropout, stem_stride=stem_stride) for _ in range(members))
            self.embedding_dim = sum(m.embedding_dim for m in self.members)
            return
        if ndim not in (2, 3):
            raise ValueError(f"ndim={ndim!r}: accepted values are 2 and 3")
        if in_channels < 1:
            raise ValueError(f"in_channels={in_channels!r}: expected a positive integer")
        if n_classes < 2:
            raise ValueError(f"n_classes={n_classes!r}: a classifier needs at least 2 classes")
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"widths={widths!r}: expected a non-empty sequence of positive integers")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={stem_stride!r}: accepted values are 1 and 2")
        conv = _conv(ndim)
        stride = stem_stride if ndim == 2 else (1, stem_stride, stem_stride)  # Z stacks are often thin
        self.stem = nn.Sequential(conv(in_channels, widths[0], 3, stride=stride, padding=1, bias=norm == "none"),
                                  _norm(norm, widths[0], ndim), _act(activation))
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(ResidualBlock(cin, w, stride=1 if i == 0 else 2, ndim=ndim, norm=norm, activation=activation))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1) if ndim == 2 else nn.AdaptiveAvgPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], n_classes)
        self.embedding_dim = widths[-1]

    def features(self, x: torch.Tensor, *, dihedral: bool = False) -> torch.Tensor:
        """Penultimate features ``(N, embedding_dim)`` (the embedding; an ensemble's members' one
        after the other). ``dihedral``: averaged over the 8 rotations/reflections of each item."""
        if self.members is not None:
            return torch.cat([m.features(x, dihedral=dihedral) for m in self.members], 1)
        views = _dihedral_views(x) if dihedral else [x]
        return torch.stack([torch.flatten(self.pool(self.stages(self.stem(v))), 1) for v in views]).mean(0)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of :meth:`features` (an ensemble: the mean of its members' logits)."""
        if self.members is None:
            return self.head(self.dropout(features))
        parts = torch.split(features, [m.embedding_dim for m in self.members], 1)
        return torch.stack([m.logits_from_features(f) for m, f in zip(self.members, parts)]).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(x))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    A 1-D search over ``log T`` in [-3, 3] (coarse grid, then a fine grid around the best), so
    it needs no optimiser state and is deterministic. Returns 1.0 for empty input.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
    if logits.shape[0] == 0:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(labels)), labels].mean())

    grid = np.linspace(-3, 3, 61)
    best = grid[int(np.argmin([nll(t) for t in grid]))]
    fine = np.linspace(best - 0.1, best + 0.1, 41)
    best = fine[int(np.argmin([nll(t) for t in fine]))]
    return float(np.exp(best))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _dihedral_views(t: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/reflections of a batch in its last two (YX) axes."""
    views = []
    for flipped in (t, torch.flip(t, (-1,))):
        views += [torch.rot90(flipped, k, (-2, -1)) for k in range(4)]
    return views


class ClassifierModel:
    """A trained classifier: network + config (classes, input shape, normalisation, temperature).

    Config keys used here: ``architecture`` (``ClassifierNet`` arguments), ``classes``,
    ``input_shape`` (``[C, Y, X]`` or ``[C, Z, Y, X]``), ``axes`` (``"CYX"``/``"CZYX"``),
    ``normalization`` (``{"method": "percentile_dataset", "lo": [...], "hi": [...]}``: per-channel
    values fixed from the training set's percentiles, so absolute intensity stays informative;
    ``{"method": "percentile", "low", "high"}``: per item and channel; or ``"none"``), ``calibration``
    (``{"temperature": T}``) and ``inference`` (``{"tta": "dihedral"}``: logits and embeddings are
    averaged over the 8 rotations/reflections of each item, for square YX items; absent: one pass).
    """

    def __init__(self, net: ClassifierNet, config: dict[str, Any], *, device: str = "cpu",
                 forest: dict[str, np.ndarray] | None = None) -> None:
        self.net = net.to(device).eval()
        self.config = config
        self.device = device
        self.forest = forest  # feature_forest arrays (with "prior"), or None: the network alone

    # ------------------------------------------------------------------ io
    @classmethod
    def from_model_dir(cls, md: ModelDir, *, device: str = "cpu") -> "ClassifierModel":
        """Build from a loaded :class:`~ijtorch.models.store.ModelDir`."""
        if md.config.get("model_type") != MODEL_TYPE:
            raise ModelError(f"{md.path}: model_type={md.config.get('model_type')!r}, expected {MODEL_TYPE!r}")
        from .feature_forest import forest_from_tensors

        net = ClassifierNet(**md.config["architecture"])
        state, forest = forest_from_tensors(md.state_dict)
        net.load_state_dict(state)
        return cls(net, md.config, device=device, forest=forest)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> "ClassifierModel":
        """Load a model directory (uncached; use :func:`ijtorch.models.store.load_model` for caching)."""
        return cls.from_model_dir(load_model_dir(path), device=device)

    def save(self, path: str | Path) -> Path:
        """Save as a model directory."""
        from .feature_forest import forest_tensors

        state = dict(self.net.state_dict())
        if self.forest is not None:
            state.update(forest_tensors(self.forest))
        return save_model_dir(path, state, self.config)

    # ----------------------------------------------------------- properties
    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.config["classes"]]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.config["input_shape"])

    @property
    def temperature(self) -> float:
        return float(self.config.get("calibration", {}).get("temperature", 1.0))

    @property
    def embedding_dim(self) -> int:
        return int(self.net.embedding_dim)

    # ------------------------------------------------------------ prepare
    def prepare(self, images: np.ndarray) -> np.ndarray:
        """Check ``(N, C, ...)`` images against the input shape, resample and normalise (float32).

        Items whose spatial size differs from the trained ``input_shape`` are resampled to it
        with linear interpolation (logged); the channel count must match.
        """
        from scipy import ndimage as ndi

        from ijtorch.core.normalize import percentile_normalize

        images = np.asarray(images)
        shape = self.input_shape
        if images.ndim != len(shape) + 1:
            raise ValueError(f"images must have shape (N, {', '.join(self.config['axes'])}) = (N, *{list(shape)}), "
                             f"got shape {images.shape}")
        if images.shape[1] != shape[0]:
            raise ValueError(f"images have {images.shape[1]} channels; the model expects {shape[0]} "
                             f"({self.config.get('channels') or 'channels as in training'})")
        if not np.issubdtype(images.dtype, np.number) or np.issubdtype(images.dtype, np.complexfloating):
            raise TypeError(f"images must be real numbers, got dtype {images.dtype}")
        x = images.astype(np.float32, copy=False)
        if tuple(x.shape[2:]) != shape[1:]:
            log.info("resampling %d images from %s to the model input %s", len(x), x.shape[2:], shape[1:])
            factors = (1, 1) + tuple(t / s for t, s in zip(shape[1:], x.shape[2:]))
            x = ndi.zoom(x, factors, order=1, grid_mode=True, mode="nearest")
        norm = self.config.get("normalization", {"method": "none"})
        if norm.get("method") == "percentile":
            x = percentile_normalize(x, norm.get("low", 1.0), norm.get("high", 99.8),
                                     axes=tuple(range(2, x.ndim)), eps=1e-6)
        elif norm.get("method") == "percentile_dataset":
            lo = np.asarray(norm["lo"], dtype=np.float32).reshape((1, -1) + (1,) * (x.ndim - 2))
            hi = np.asarray(norm["hi"], dtype=np.float32).reshape((1, -1) + (1,) * (x.ndim - 2))
            x = (x - lo) / (hi - lo + np.float32(1e-6))
        elif norm.get("method") != "none":
            raise ModelError(f"normalization method {norm.get('method')!r} is unknown")
        return np.ascontiguousarray(x, dtype=np.float32)

    # ------------------------------------------------------------ predict
    @property
    def test_time_augmentation(self) -> bool:
        """Whether outputs average over the 8 dihedral transforms (``inference.tta == "dihedral"``, square YX)."""
        shape = self.input_shape
        return self.config.get("inference", {}).get("tta") == "dihedral" and shape[-1] == shape[-2]

    def _run(self, x: np.ndarray, what: str, batch_size: int) -> np.ndarray:
        logits, emb = self.logits_and_embeddings(x, batch_size=batch_size)
        return emb if what == "features" else logits

    def logits_and_embeddings(self, x: np.ndarray, *, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Logits ``(N, K)`` and embeddings ``(N, D)`` of prepared items from one forward pass (with
        test-time augmentation both are averaged over the views; the head is linear, so the logits
        are the head of the averaged embedding; an ensemble's logits are the mean of its members')."""
        logits, feats = [], []
        tta = self.test_time_augmentation
        self.net.eval()
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                t = torch.from_numpy(x[i:i + batch_size]).to(self.device)
                f = self.net.features(t, dihedral=tta)
                logits.append(self.net.logits_from_features(f).float().cpu().numpy())
                feats.append(f.float().cpu().numpy())
        if not logits:
            return (np.zeros((0, len(self.classes)), np.float32), np.zeros((0, self.embedding_dim), np.float32))
        return np.concatenate(logits).astype(np.float32), np.concatenate(feats).astype(np.float32)

    # ------------------------------------------------------------- dataset shift
    @property
    def shift_reference(self) -> dict[str, Any] | None:
        """The dataset-shift reference stored with the model (config key ``shift``), if any."""
        from . import shift

        return self.config.get(shift.CONFIG_KEY) or None

    def shift_scores(self, prepared: np.ndarray, embeddings: np.ndarray) -> np.ndarray | None:
        """One dataset-shift score per item (:func:`ijtorch.models.shift.image_score`: the
        embedding's Mahalanobis distance to the training items' embeddings per dimension plus the
        squared z-scores of the item's normalised-input percentiles), ``None`` without a reference."""
        reference = self.shift_reference
        if not reference:
            return None
        return np.asarray(_item_scores(reference, prepared, embeddings), np.float64)

    def fit_shift_reference(self, train_items: np.ndarray, calibration_items: np.ndarray, *, kind: str = "training",
                            batch_size: int = 64) -> dict[str, Any]:
        """Build the reference from prepared training items (their embeddings: PPCA with at most one
        component per 5 items; their normalised-input percentiles), calibrate the per-item threshold
        on prepared held-out items of the same kind (none: no threshold, no warnings) and store it
        in ``config["shift"]``."""
        from . import shift

        self.config.pop(shift.CONFIG_KEY, None)
        if len(train_items) < 2:
            raise ValueError("a dataset-shift reference needs at least 2 training items")
        _, emb = self.logits_and_embeddings(train_items, batch_size=batch_size)
        col = shift.MomentCollector()
        col.add(torch.from_numpy(emb))
        quantiles = _item_quantiles(train_items).tolist()
        reference = shift.reference_from_moments([col], [{"median": q[2]} for q in quantiles], kind=kind,
                                                 images=len(train_items), layer="embedding",
                                                 components=max(1, min(32, len(train_items) // 5)))
        reference["input_model"] = shift._input_model(quantiles)
        reference["unit"] = "items"
        if len(calibration_items):
            _, cal = self.logits_and_embeddings(calibration_items, batch_size=batch_size)
            scores = _item_scores(reference, calibration_items, cal)
            reference.update({"threshold": float(f"{shift.calibrate_threshold(scores):.4g}"),
                              "false_alarm_rate": shift.FALSE_ALARM_RATE,
                              "calibration": {"images": len(calibration_items), "folder": "validation split",
                                              "rule": "conformal: the ceil((n+1)(1-rate))-th smallest score of the "
                                                      "held-out items (per item)",
                                              "score_median": float(f"{np.median(scores):.4g}")}})
        self.config[shift.CONFIG_KEY] = reference
        return reference

    def logits(self, images: np.ndarray, *, batch_size: int = 64, prepared: bool = False) -> np.ndarray:
        """Raw logits ``(N, K)`` (``prepared=True``: ``images`` already went through :meth:`prepare`)."""
        return self._run(images if prepared else self.prepare(images), "logits", batch_size)

    def predict_proba(self, images: np.ndarray, *, batch_size: int = 64, prepared: bool = False) -> np.ndarray:
        """Class probabilities ``(N, K)`` float32 (:meth:`probabilities`)."""
        x = images if prepared else self.prepare(images)
        return self.probabilities(self.logits(x, batch_size=batch_size, prepared=True), x)

    def probabilities(self, logits: np.ndarray, prepared: np.ndarray) -> np.ndarray:
        """The model's class probabilities from its network's ``logits`` of the ``prepared`` items:
        ``softmax(logits / T)``, averaged with the feature forest's when the model has one
        (:func:`ijtorch.models.feature_forest.fuse`) and that mean calibrated again by its own
        temperature (config ``feature_forest.temperature``, fitted on the held-out items)."""
        p = _softmax(np.asarray(logits, dtype=np.float64) / self.temperature)
        if self.forest is None or not len(p):
            return p.astype(np.float32)
        from .feature_forest import forest_proba, fuse, item_features

        fused = fuse(p, forest_proba(self.forest, item_features(prepared)), self.forest["prior"])
        return self.recalibrate_fused(fused)

    def recalibrate_fused(self, fused: np.ndarray) -> np.ndarray:
        """The network + forest mean ``fused`` calibrated by its own temperature (config
        ``feature_forest.temperature``; 1 until training has fitted it): ``softmax(log(fused) / T)``."""
        t_fused = float(self.config.get("feature_forest", {}).get("temperature", 1.0))
        if t_fused == 1.0:
            return fused
        return _softmax(np.log(np.maximum(fused.astype(np.float64), 1e-12)) / t_fused).astype(np.float32)

    def embed(self, images: np.ndarray, *, batch_size: int = 64, prepared: bool = False) -> np.ndarray:
        """Embeddings ``(N, D)`` float32 (penultimate features)."""
        return self._run(images if prepared else self.prepare(images), "features", batch_size)




def _item_quantiles(prepared: np.ndarray) -> np.ndarray:
    """The :data:`ijtorch.models.shift.INPUT_PERCENTILES` of every item at once, ``(N, 5)``, from
    at most ~1 000 evenly strided values per item (percentiles along an axis cost ~50 µs per
    thousand values; training and prediction use the same samples)."""
    from . import shift

    flat = np.asarray(prepared, np.float32).reshape(len(prepared), -1)
    flat = flat[:, :: max(1, flat.shape[1] // 1024)]
    if not flat.size:
        return np.zeros((len(prepared), len(shift.INPUT_PERCENTILES)))
    kth = [int(round(q / 100 * (flat.shape[1] - 1))) for q in shift.INPUT_PERCENTILES]  # nearest rank
    return np.partition(flat, kth, axis=1)[:, kth].astype(np.float64)


def _item_scores(reference: dict[str, Any], prepared: np.ndarray, embeddings: np.ndarray) -> list[float]:
    from . import shift

    col = shift.FeatureCollector(reference)
    col.add(torch.from_numpy(np.ascontiguousarray(embeddings)))
    return [float(shift.image_score(reference, s, {"quantiles": q}))
            for s, q in zip(col.sample_scores(), _item_quantiles(prepared))]
