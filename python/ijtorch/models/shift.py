"""Dataset-shift check of a model's predictions: a compact reference of what the model saw in
training, a score per image computed from features the forward pass already makes, and a warning
in plain words.

Reference (``config.json`` key ``"shift"``, plain JSON; never unpickled)
-----------------------------------------------------------------------
- ``features``: a Gaussian model of the network's bottleneck features (one ``D``-vector per
  bottleneck position, pooled over the training images), stored as probabilistic PCA: ``mean``
  (D), the ``k`` leading ``components`` (k×D) with their ``variances`` and one ``residual``
  variance for the other ``D - k`` directions (D = 128, k = 32 for the bundled nuclei model).
- ``inputs``: ranges over the training images of the normalised input's median (the background
  level) and of the predicted foreground fraction, used only to say *what* differs.
- ``threshold`` and ``false_alarm_rate``: the score above which a warning is given, chosen on
  held-out images of the training kind (the conformal ``ceil((n + 1)(1 - rate))``-th smallest
  score) so that about ``rate`` of such images are flagged; ``calibration`` says on which images.

Score
-----
The mean over the image's bottleneck positions of the squared Mahalanobis distance to the
reference divided by ``D`` (about 1 for training images, larger when the features are unlike
anything seen in training). It is accumulated by a forward hook during prediction
(:class:`FeatureCollector`), so it costs one small matrix product per tile.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = ["ShiftReport", "FeatureCollector", "MomentCollector", "ShiftHook", "reference_from_moments",
           "calibrate_threshold", "assess", "assess_items", "no_reference", "input_summary", "fit_reference",
           "fit_reference_with", "tiles_of", "input_quantiles", "image_score", "FALSE_ALARM_RATE", "CONFIG_KEY"]

CONFIG_KEY = "shift"
FALSE_ALARM_RATE = 0.05
_COMPONENTS = 32


@dataclass(frozen=True)
class ShiftReport:
    """Dataset-shift check of one prediction.

    ``score`` and ``threshold`` are ``None`` when the model has no reference; ``warning`` is the
    plain-words warning when ``score > threshold``; ``message`` is one line for a log either way.
    """

    score: float | None
    threshold: float | None
    warning: str | None
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def warned(self) -> bool:
        return self.warning is not None


def no_reference(model_name: str) -> ShiftReport:
    return ShiftReport(None, None, None, f"model {model_name} has no dataset-shift reference: its results are not "
                                         "checked against its training images")


class ShiftHook:
    """A forward hook on a module that feeds the collector active in the calling thread (if any).

    Registered once per model; a cached model shared by several threads (the server) keeps each
    thread's prediction separate because hooks run in the thread that calls the network.
    """

    def __init__(self, module: Any) -> None:
        self._local = threading.local()
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: Any, inputs: Any, output: Any) -> None:
        collector = getattr(self._local, "collector", None)
        if collector is not None:
            collector.add(output)

    def active(self, collector: Any) -> "_Active":
        return _Active(self._local, collector)


class _Active:
    def __init__(self, local: threading.local, collector: Any) -> None:
        self.local, self.collector, self.previous = local, collector, None

    def __enter__(self) -> Any:
        self.previous = getattr(self.local, "collector", None)
        self.local.collector = self.collector
        return self.collector

    def __exit__(self, *exc: Any) -> None:
        self.local.collector = self.previous


class FeatureCollector:
    """Accumulates the score of feature maps ``(N, D, *spatial)`` against a reference.

    :attr:`score` is the mean over everything seen (one image, however many tiles);
    :meth:`sample_scores` gives one score per batch item of the last call (a batch of images).
    """

    def __init__(self, reference: dict[str, Any]) -> None:
        f = reference["features"]
        self.mean = np.asarray(f["mean"], np.float32)
        self.components = np.asarray(f["components"], np.float32)  # (k, D)
        self.inv_var = 1.0 / np.asarray(f["variances"], np.float32)
        self.inv_res = 1.0 / float(f["residual"])
        self.dim = self.mean.size
        self.total = 0.0
        self.count = 0
        self._last: tuple[np.ndarray, int] | None = None
        self._torch: dict[str, Any] = {}

    def _on(self, device: Any) -> tuple[Any, Any, Any]:
        import torch

        key = str(device)
        if key not in self._torch:
            self._torch[key] = (torch.as_tensor(self.mean, device=device),
                                torch.as_tensor(self.components, device=device),
                                torch.as_tensor(self.inv_var, device=device))
        return self._torch[key]

    def add(self, features: Any) -> None:
        x = features.detach().float()
        mean, comps, inv_var = self._on(x.device)
        d = x.movedim(1, -1).reshape(-1, x.shape[1]) - mean
        z = d @ comps.T
        z2 = z * z
        maha = (z2 * inv_var).sum(1) + ((d * d).sum(1) - z2.sum(1)).clamp_min(0) * self.inv_res
        per_item = maha.reshape(x.shape[0], -1)
        self._last = (per_item.sum(1).cpu().numpy() / self.dim, per_item.shape[1])
        self.total += float(maha.sum()) / self.dim
        self.count += int(maha.numel())

    def sample_scores(self) -> list[float]:
        """The score of each batch item of the last forward pass."""
        if self._last is None:
            return []
        sums, n = self._last
        return [float(v) / max(n, 1) for v in sums]

    @property
    def score(self) -> float | None:
        return self.total / self.count if self.count else None


class MomentCollector:
    """Accumulates first and second moments of feature maps (to build a reference)."""

    def __init__(self) -> None:
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self.n = 0

    def add(self, features: Any) -> None:
        x = features.detach().double()
        f = x.movedim(1, -1).reshape(-1, x.shape[1])
        s1, s2 = f.sum(0).cpu().numpy(), (f.T @ f).cpu().numpy()
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += f.shape[0]


def reference_from_moments(collectors: Iterable[MomentCollector], input_stats: Sequence[dict[str, float]], *,
                           components: int = _COMPONENTS, kind: str = "", images: int | None = None,
                           layer: str = "unet.bottleneck") -> dict[str, Any]:
    """The reference (without threshold) from per-image :class:`MomentCollector` s and
    :func:`input_summary` s of the training images. Each image weighs by its feature positions."""
    cols = list(collectors)
    n = sum(c.n for c in cols)
    if n < 2:
        raise ValueError("no features were collected")
    s1 = sum(c.s1 for c in cols)
    s2 = sum(c.s2 for c in cols)
    mean = s1 / n
    cov = (s2 - n * np.outer(mean, mean)) / (n - 1)
    w, v = np.linalg.eigh(cov)
    w, v = w[::-1], v[:, ::-1]
    k = min(components, len(w) - 1)
    floor = max(float(w.mean()) * 1e-4, 1e-8)
    residual = max(float(w[k:].mean()), floor)
    keys = sorted(input_stats[0]) if input_stats else []
    ranges = {key: [float(min(s[key] for s in input_stats)), float(max(s[key] for s in input_stats))]
              for key in keys}
    return {
        "method": "bottleneck-features-ppca",
        "features": {"layer": layer, "mean": _rounded(mean), "components": [_rounded(c) for c in v[:, :k].T],
                     "variances": _rounded(np.maximum(w[:k], floor)), "residual": float(f"{residual:.6g}")},
        "inputs": ranges, "kind": kind, "n_images": int(images if images is not None else len(cols)),
    }


def _rounded(values: np.ndarray) -> list[float]:
    return [float(f"{float(x):.5g}") for x in np.asarray(values).ravel()]


def calibrate_threshold(scores: Sequence[float], rate: float = FALSE_ALARM_RATE) -> float:
    """The conformal threshold: the ``ceil((n + 1)(1 - rate))``-th smallest of held-out ``scores``
    of the training kind (a new image of that kind exceeds it with probability at most ``rate``)."""
    s = np.sort(np.asarray(scores, np.float64))
    if s.size == 0:
        raise ValueError("no calibration scores")
    k = min(int(math.ceil((s.size + 1) * (1 - rate))), s.size)
    return float(s[k - 1])


def input_summary(normalized: np.ndarray | None, prob: np.ndarray | None) -> dict[str, float]:
    """What the explanation of a warning compares: the normalised input's median (background level)
    and the foreground fraction of the probability map (``prob > 0.5``), subsampled for speed."""
    out: dict[str, float] = {}
    if normalized is not None:
        step = max(1, int(np.sqrt(normalized.size / 65536)))
        out["median"] = float(np.median(normalized[::step, ::step] if normalized.ndim == 2 else normalized))
    if prob is not None:
        out["foreground"] = float(np.mean(prob > 0.5))
    return out


def assess(reference: dict[str, Any] | None, score: float | None, inputs: dict[str, float], *,
           model_name: str) -> ShiftReport:
    """The report for one prediction: ``score`` against the reference's threshold, and above it a
    warning that says what differs."""
    if not reference or score is None:
        return no_reference(model_name)
    thr = reference.get("threshold")
    if thr is None:
        return ShiftReport(score, None, None, f"shift score {score:.2f} (model {model_name} has no calibrated "
                                              "threshold)", {"inputs": inputs})
    thr = float(thr)
    kind = reference.get("kind") or "training"
    if score <= thr:
        return ShiftReport(score, thr, None, f"shift score {score:.2f} <= threshold {thr:.2f}: the image resembles "
                                             f"the {kind} images model {model_name} was trained on",
                           {"inputs": inputs})
    reasons = []
    ranges = reference.get("inputs", {})
    med, fg = inputs.get("median"), inputs.get("foreground")
    if med is not None and "median" in ranges:
        lo, hi = ranges["median"]
        if med > hi + 0.1:
            reasons.append(f"the image has a bright background with dark objects (background at {100 * med:.0f} % "
                           f"of the intensity range; training images: {100 * lo:.0f}-{100 * hi:.0f} %), as in "
                           "transmitted light (brightfield, H&E)")
        elif med < lo - 0.1:
            reasons.append(f"the image has a dark background (at {100 * med:.0f} % of the intensity range; "
                           f"training images: {100 * lo:.0f}-{100 * hi:.0f} %)")
    if fg is not None and "foreground" in ranges:
        lo, hi = ranges["foreground"]
        if fg > hi * 1.25 + 0.02:
            reasons.append(f"the model sees objects on {100 * fg:.0f} % of the image (training images: at most "
                           f"{100 * hi:.0f} %)")
    if not reasons:
        reasons.append("its textures, contrast or object sizes differ from those of the training images")
    warning = (f"dataset shift: shift score {score:.2f} > threshold {thr:.2f}: {'; '.join(reasons)}, unlike the "
               f"{kind} images model {model_name} was trained on: results are unreliable (check them, or use or "
               "train a model for images like this)")
    return ShiftReport(score, thr, warning, warning, {"inputs": inputs})


INPUT_PERCENTILES = (5.0, 25.0, 50.0, 75.0, 95.0)
_INPUT_STD_FLOOR = 0.1  # 10 % of the normalised intensity range: images of one kind drift that much


def input_quantiles(normalized: np.ndarray) -> list[float]:
    """The :data:`INPUT_PERCENTILES` of a normalised input (subsampled for speed): where its
    background and objects lie in the intensity range."""
    x = np.asarray(normalized, np.float32).ravel()
    step = max(1, x.size // 65536)
    return [float(v) for v in np.percentile(x[::step], INPUT_PERCENTILES)]


def _input_model(quantiles: Sequence[Sequence[float]]) -> dict[str, Any]:
    q = np.asarray(quantiles, np.float64)
    return {"percentiles": list(INPUT_PERCENTILES), "mean": _rounded(q.mean(0)),
            "std": _rounded(np.maximum(q.std(0), _INPUT_STD_FLOOR)), "std_floor": _INPUT_STD_FLOOR}


def image_score(reference: dict[str, Any], feature_score: float | None, summary: dict[str, Any]) -> float | None:
    """The shift score of one image: the feature score plus, for references with an ``input_model``
    (the normalised input's :func:`input_quantiles` over the training images: mean and standard
    deviation per percentile, floored at 10 % of the range), the mean squared z-score of the
    image's quantiles. Both terms are about 1 on training images; the second one rises fast when
    the background or the objects lie elsewhere in the intensity range (fluorescence vs phase
    contrast vs brightfield). References without it (the bundled nuclei model) score features only."""
    if feature_score is None:
        return None
    model = reference.get("input_model")
    if not model or summary.get("quantiles") is None:
        return float(feature_score)
    z = (np.asarray(summary["quantiles"]) - np.asarray(model["mean"])) / np.asarray(model["std"])
    return float(feature_score) + float(np.mean(z * z))


def _spread(items: Sequence[Any], max_images: int) -> list[Any]:
    """At most ``max_images`` of ``items``, evenly spaced."""
    items = list(items)
    if len(items) <= max_images:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, max_images)]


def fit_reference_with(collect: Callable[[Any, Any], dict[str, float]], train_images: Sequence[Any],
                       calibration_images: Sequence[Any], *, kind: str = "training", rate: float = FALSE_ALARM_RATE,
                       max_images: int = 200, layer: str = "unet.bottleneck",
                       calibration_folder: str = "validation split") -> dict[str, Any]:
    """The reference of any model from ``collect(image, collector)``, which runs the model's forward
    pass on one image with ``collector`` receiving the features (a :class:`MomentCollector` for the
    training images, a :class:`FeatureCollector` for the calibration images) and returns that
    image's :func:`input_summary`, with ``"quantiles"`` (:func:`input_quantiles`) for a reference
    that also models the normalised input (see :func:`image_score`). The threshold is calibrated on ``calibration_images`` (none: no
    threshold, so no warnings). At most ``max_images`` of each (evenly spaced) are used."""
    moments, stats, quantiles = [], [], []
    for image in _spread(train_images, max_images):
        col = MomentCollector()
        summary = dict(collect(image, col))
        if "quantiles" in summary:
            quantiles.append(summary.pop("quantiles"))
        stats.append(summary)
        moments.append(col)
    reference = reference_from_moments(moments, stats, kind=kind, images=len(moments), layer=layer)
    if quantiles and len(quantiles) == len(stats):
        reference["input_model"] = _input_model(quantiles)
    calib = _spread(calibration_images, max_images)
    if calib:
        scores = []
        for image in calib:
            col = FeatureCollector(reference)
            summary = collect(image, col)
            scores.append(image_score(reference, col.score, summary))
        reference.update({"threshold": float(f"{calibrate_threshold(scores, rate):.4g}"), "false_alarm_rate": rate,
                          "calibration": {"images": len(calib), "folder": calibration_folder,
                                          "rule": "conformal: the ceil((n+1)(1-rate))-th smallest score of the "
                                                  "validation images (held out from training)",
                                          "score_median": float(f"{np.median(scores):.4g}")}})
    return reference


def fit_reference(model: Any, train_images: Sequence[np.ndarray], calibration_images: Sequence[np.ndarray], *,
                  kind: str = "training", rate: float = FALSE_ALARM_RATE, max_images: int = 200) -> dict[str, Any]:
    """Build the reference of a star-convex ``model`` (2D ``YX`` images or 3D ``ZYX`` volumes) from
    its training images, calibrate its threshold on held-out ``calibration_images`` of the same
    kind (none: no threshold, so no warnings) and store it in ``model.config["shift"]``. Images
    are raw (the model normalises them). At most ``max_images`` of each (evenly spaced) are used."""
    model.config.pop(CONFIG_KEY, None)

    def collect(image: np.ndarray, col: Any) -> dict[str, float]:
        x = model.normalize(image)
        prob, _ = model.predict_maps(x, normalize=False, features=col)
        return input_summary(x, prob)

    reference = fit_reference_with(collect, train_images, calibration_images, kind=kind, rate=rate,
                                   max_images=max_images)
    model.config[CONFIG_KEY] = reference
    return reference


def tiles_of(image: np.ndarray, tile: int) -> list[np.ndarray]:
    """The non-overlapping ``tile``-sized ``YX`` blocks of a 2D image (edge blocks dropped, at least
    the whole image): more calibration scores from few held-out images. A tile's score varies more
    than a whole image's, so a threshold calibrated on tiles errs towards fewer false alarms on
    whole images."""
    h, w = image.shape[:2]
    if h < tile or w < tile:
        return [image]
    return [image[y:y + tile, x:x + tile] for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]


def assess_items(reference: dict[str, Any] | None, scores: Sequence[float], *, model_name: str,
                 unit: str = "items", inputs: dict[str, float] | None = None) -> ShiftReport:
    """The report of a batch of items scored one by one (a classifier's crops): each item's score
    against the per-item threshold; a warning when more items exceed it than a batch of the
    training kind would at the calibrated false-alarm rate (more than the binomial 95th percentile
    of ``n`` items at ``rate``: one item of one, 2 of 10, 9 of 100), so a batch warns about as
    rarely as one item does. ``score`` is the batch's median item score; ``details["flagged"]``
    the items above the threshold."""
    if not reference:
        return no_reference(model_name)
    s = np.asarray(list(scores), np.float64)
    thr = reference.get("threshold")
    if s.size == 0:
        return ShiftReport(None, None if thr is None else float(thr), None, f"no {unit} to check for dataset shift")
    median = float(np.median(s))
    if thr is None:
        return ShiftReport(median, None, None, f"shift score {median:.2f} (model {model_name} has no calibrated "
                                               "threshold)", {"item_scores": s})
    from scipy.stats import binom

    thr = float(thr)
    rate = float(reference.get("false_alarm_rate", FALSE_ALARM_RATE))
    flagged = s > thr
    n_flag, n = int(flagged.sum()), int(s.size)
    allowed = int(binom.ppf(0.95, n, rate))
    kind = reference.get("kind") or "training"
    details = {"item_scores": s, "flagged": flagged, "inputs": inputs or {}}
    if n_flag <= allowed:
        return ShiftReport(median, thr, None, f"shift score {median:.2f} (median of {n} {unit}), {n_flag} of {n} "
                                              f"above the threshold {thr:.2f}: the {unit} resemble the {kind} "
                                              f"{unit} model {model_name} was trained on", details)
    reasons = []
    ranges = reference.get("inputs", {})
    med = (inputs or {}).get("median")
    if med is not None and "median" in ranges:
        lo, hi = ranges["median"]
        if med > hi + 0.1:
            reasons.append(f"they are brighter (median at {100 * med:.0f} % of the training intensity range; training "
                           f"{unit}: {100 * lo:.0f}-{100 * hi:.0f} %)")
        elif med < lo - 0.1:
            reasons.append(f"they are darker (median at {100 * med:.0f} % of the training intensity range; training "
                           f"{unit}: {100 * lo:.0f}-{100 * hi:.0f} %)")
    if not reasons:
        reasons.append("their textures, contrast or sizes differ from those of the training " + unit)
    warning = (f"dataset shift: {n_flag} of {n} {unit} have a shift score above the threshold {thr:.2f} (median "
               f"{median:.2f}; {allowed} expected at most for {unit} like the training ones): {'; '.join(reasons)}, "
               f"unlike the {kind} {unit} model {model_name} was trained on: results are unreliable (check them, or "
               f"train a model for {unit} like these)")
    return ShiftReport(median, thr, warning, warning, details)
