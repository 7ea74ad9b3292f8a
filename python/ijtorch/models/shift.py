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
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["ShiftReport", "FeatureCollector", "MomentCollector", "ShiftHook", "reference_from_moments",
           "calibrate_threshold", "assess", "no_reference", "input_summary", "fit_reference", "FALSE_ALARM_RATE",
           "CONFIG_KEY"]

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
                           components: int = _COMPONENTS, kind: str = "", images: int | None = None
                           ) -> dict[str, Any]:
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
        "features": {"layer": "unet.bottleneck", "mean": _rounded(mean), "components": [_rounded(c) for c in v[:, :k].T],
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


def fit_reference(model: Any, train_images: Sequence[np.ndarray], calibration_images: Sequence[np.ndarray], *,
                  kind: str = "training", rate: float = FALSE_ALARM_RATE, max_images: int = 200) -> dict[str, Any]:
    """Build the reference of a 2D star-convex ``model`` from its training images, calibrate its
    threshold on held-out ``calibration_images`` of the same kind (none: no threshold, so no
    warnings) and store it in ``model.config["shift"]``. Images are ``YX`` arrays, raw (the model
    normalises them). At most ``max_images`` of each (evenly spaced) are used."""
    def spread(items: Sequence[np.ndarray]) -> list[np.ndarray]:
        items = list(items)
        if len(items) <= max_images:
            return items
        return [items[int(i)] for i in np.linspace(0, len(items) - 1, max_images)]

    model.config.pop(CONFIG_KEY, None)
    moments, stats = [], []
    for image in spread(train_images):
        x = model.normalize(image)
        col = MomentCollector()
        prob, _ = model.predict_maps(x, normalize=False, features=col)
        moments.append(col)
        stats.append(input_summary(x, prob))
    reference = reference_from_moments(moments, stats, kind=kind, images=len(moments))
    calib = spread(calibration_images)
    if calib:
        scores = []
        for image in calib:
            col = FeatureCollector(reference)
            model.predict_maps(image, features=col)
            scores.append(col.score)
        reference.update({"threshold": float(f"{calibrate_threshold(scores, rate):.4g}"), "false_alarm_rate": rate,
                          "calibration": {"images": len(calib), "folder": "validation split",
                                          "rule": "conformal: the ceil((n+1)(1-rate))-th smallest score of the "
                                                  "validation images (held out from training)",
                                          "score_median": float(f"{np.median(scores):.4g}")}})
    model.config[CONFIG_KEY] = reference
    return reference
