"""``model=auto``: the registered model of a family whose dataset-shift reference fits an image best.

Candidates are the registered models (bundled or user) whose ``config.json`` says
``"auto": {"family": "<family>"}`` and that carry a calibrated dataset-shift reference
(:mod:`ijtorch.models.shift`); a user's own model joins by adding that key. The bundled ``nuclei``
(fluorescence) and ``nuclei-transmitted`` (brightfield, H&E) models are the ``nuclei`` family.

The choice for one 2D plane costs the normalisation and at most one encoder pass per candidate, on
a central crop of at most ``CHECK_SIZE``² pixels (no decoder, no non-maximum suppression):

1. cheap order: each candidate's reference holds the range of its training images' background
   level (the normalised input's median); candidates are tried nearest range first, so a bright
   background (brightfield, H&E as luminance) tries the transmitted-light model first and a dark
   one the fluorescence model. A candidate whose range the image's background misses by more
   than ``BACKGROUND_MARGIN`` does not fit (the margin the shift warning uses to say "bright
   background");
2. when exactly one candidate's background fits, it is chosen without an encoder pass (the rule
   below would choose it whatever the scores); its own shift check on the whole prediction then
   confirms it or warns. Otherwise each candidate's shift score of the crop's bottleneck features
   is divided by its calibrated threshold; the first candidate whose background fits and whose
   ratio is at most 1 (the image resembles its training images) is chosen, so usually one encoder
   pass decides;
3. otherwise every candidate has been scored and the lowest ratio among those whose background
   fits wins (among all when none fits); the segmentation's own shift check then warns, as for an
   explicitly chosen model.

The background rule matters: bottleneck features alone do not separate every pair of kinds — the
transmitted-light model's features of fluorescence images (mostly empty dark background) lie
*closer* to its reference than its own validation images do (``benchmarks/bench_trust.py --auto``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ijtorch.errors import ModelError

from . import shift as _shift

__all__ = ["AUTO", "BACKGROUND_MARGIN", "CHECK_SIZE", "AutoChoice", "is_auto", "candidates", "fit_ratio", "choose_model"]

log = logging.getLogger(__name__)

AUTO = "auto"
CHECK_SIZE = 128
BACKGROUND_MARGIN = 0.1


def is_auto(model: Any) -> bool:
    return isinstance(model, str) and model == AUTO


@dataclass(frozen=True)
class AutoChoice:
    """The model ``model=auto`` chose: ``name``, ``path``, the score/threshold ratio of each
    candidate that was scored (in the order tried) and one line for a log."""

    name: str
    path: str
    ratios: dict[str, float] = field(default_factory=dict)
    message: str = ""


def candidates(family: str) -> list[dict[str, Any]]:
    """Registered models of ``family`` marked for ``model=auto`` (see the module docstring)."""
    from .store import list_models

    found = [m for m in list_models() if (m.get("auto") or {}).get("family") == family]
    if not found:
        raise ModelError(f"model=auto: no registered model is marked as a {family} candidate "
                         f"(config.json \"auto\": {{\"family\": \"{family}\"}}); choose a model by name")
    return found


def _central_crop(x: np.ndarray, size: int, multiple: int) -> np.ndarray:
    """A central crop of at most ``size`` pixels per side, padded (reflect) to ``multiple``."""
    out = x
    for axis, n in enumerate(x.shape):
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
    pad = [(0, (-n) % multiple) for n in out.shape]
    if any(p for _, p in pad):
        out = np.pad(out, pad, mode="reflect" if min(out.shape) > 1 else "edge")
    return np.ascontiguousarray(out, np.float32)


def _background_distance(reference: dict[str, Any], normalized: np.ndarray) -> float:
    lo, hi = (reference.get("inputs") or {}).get("median", (0.0, 1.0))
    step = max(1, int(np.sqrt(normalized.size / 65536)))
    med = float(np.median(normalized[::step, ::step]))
    return max(0.0, float(lo) - med, med - float(hi))


def fit_ratio(model: Any, normalized: np.ndarray, *, scale: float = 1.0) -> float:
    """Shift score / calibrated threshold of a 2D star-convex ``model`` on the central crop of an
    already normalised ``YX`` plane, from one encoder pass (the decoder and heads are skipped)."""
    import torch

    reference = model.shift_reference
    # Crop before resizing (resizing the whole plane would cost more than the check), then crop the
    # resized patch again to the network's size multiple.
    crop = _central_crop(normalized, int(np.ceil(CHECK_SIZE / max(scale, 1e-3))), 1)
    if scale != 1.0:
        from scipy import ndimage as ndi

        crop = ndi.zoom(crop, scale, order=1)
    crop = _central_crop(crop, CHECK_SIZE, int(model.net.size_multiple()[0]))
    collector = _shift.FeatureCollector(reference)
    unet = model.net.unet
    with torch.inference_mode():
        x = model.net.stem(torch.from_numpy(crop[None, None]).to(model.device))  # grid-2 networks: their stem first
        for encoder in unet.encoders:
            x = unet.pool(encoder(x))
        collector.add(unet.bottleneck(x))
    return float(collector.score) / float(reference["threshold"])


def choose_model(plane: np.ndarray, *, family: str = "nuclei", device: str = "auto", scale: float = 1.0) -> AutoChoice:
    """The candidate of ``family`` that fits the ``YX`` ``plane`` (raw intensities) best; see the
    module docstring for the rule."""
    from .store import load_model

    if plane.ndim != 2:
        raise ValueError(f"model=auto decides on a 2D (YX) plane; got shape {plane.shape}")
    usable, normalized = [], {}
    for m in candidates(family):
        if m.get("model_type") != "stardist2d":
            log.info("model=auto: %s is a %s model, not a 2D star-convex one; skipped", m["name"], m.get("model_type"))
            continue
        model = load_model(m["path"], device=device)
        reference = getattr(model, "shift_reference", None)
        if not reference or reference.get("threshold") is None or not hasattr(model, "net"):
            log.info("model=auto: %s has no calibrated dataset-shift reference; skipped", m["name"])
            continue
        key = repr(sorted(model.config.get("normalization", {}).items()))
        if key not in normalized:
            normalized[key] = model.normalize(plane)
        usable.append((_background_distance(reference, normalized[key]), m["name"], m["path"], model, key))
    if not usable:
        raise ModelError(f"model=auto: no {family} candidate has a calibrated dataset-shift reference; "
                         "choose a model by name")
    usable.sort(key=lambda u: (u[0], u[1]))
    if len(usable) == 1:
        _, name, path, _, _ = usable[0]
        return AutoChoice(name, path, {}, f"model=auto: {name} (the only {family} candidate)")
    fitting = [u for u in usable if u[0] <= BACKGROUND_MARGIN]
    if len(fitting) == 1:  # the rule below would choose it whatever the scores: no encoder pass needed
        _, name, path, _, _ = fitting[0]
        return AutoChoice(name, path, {}, f"model=auto: {name} (the only {family} candidate trained on images with "
                                          "this background level; its shift check runs on the prediction)")
    ratios: dict[str, float] = {}
    for distance, name, path, model, key in usable:
        ratios[name] = fit_ratio(model, normalized[key], scale=scale)
        if ratios[name] <= 1.0 and distance <= BACKGROUND_MARGIN:
            break
    background_fits = {u[1] for u in usable if u[0] <= BACKGROUND_MARGIN and u[1] in ratios}
    pool = background_fits or set(ratios)
    name = min(pool, key=ratios.__getitem__)  # the fitting one the loop stopped at, when there is one
    path = next(u[2] for u in usable if u[1] == name)
    scored = ", ".join(f"{n} {r:.2f}" for n, r in ratios.items())
    fits = ratios[name] <= 1.0 and name in background_fits
    verdict = "fits its training images" if fits else "fits no candidate's training images well"
    return AutoChoice(name, path, ratios, f"model=auto: {name} (shift score / threshold on a central crop: {scored}; "
                                          f"the image {verdict})")
