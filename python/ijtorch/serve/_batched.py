"""Batch functions of the server's dynamic batcher: segmentation and classification.

**Segmentation** — one forward pass over a batch of same-shaped 2D images for a star-convex model.

The server splits segmentation of a small ``YX`` image into the part a batch shares and the part
it cannot: :func:`forward_maps` (normalise, pad, one network call for the whole batch) runs on
the inference thread; :func:`instances` (thresholds, non-maximum suppression, label rendering)
runs per image on another thread, so the next batch's forward pass does not wait behind it.
Together they give what :func:`ijtorch.tasks.segment.segment` gives for a ``YX`` image that fits
in one tile (``max(Y, X) <= tile_size``): the same normalisation, the same padding to the
network's size multiple, the same thresholds and non-maximum suppression, the same label dtype
rule. Larger images are not batchable and go through ``segment`` itself.

CPU convolutions may pick a different algorithm for a batch than for one image, so probabilities
can differ in the last float bit (about 1e-6) from a lone ``segment`` call; labels only change
when a value sits that close to a threshold. ``tests/integration/test_serve.py`` and
``benchmarks/bench_serve.py`` compare batched answers with ``segment`` pixel for pixel.

**Classification** — :func:`classify_batch` concatenates the crops of several ``/classify``
requests (same model, item shape and dtype) into one :func:`ijtorch.tasks.classify.classify`
call and splits its answer back per request. Items are classified independently (the network
runs in eval mode), so each request gets what ``classify`` gives it alone, up to the same
last-bit float differences of a different batch size; small requests (a few cell crops) gain
most, since one call's fixed costs and the network's per-call overhead are shared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["Maps", "batchable", "forward_maps", "instances", "CLASSIFY_BATCHABLE_ITEMS", "classify_batch"]

#: Largest ``/classify`` request (in crops) that joins a batch: a bigger one fills classify's own
#: mini-batches (64 items) by itself and would only delay the small requests batched with it.
CLASSIFY_BATCHABLE_ITEMS = 64


@dataclass(frozen=True)
class Maps:
    """Network output for one image of a batch: probability ``(Y, X)``, distances ``(Y, X, n_rays)``."""

    prob: np.ndarray
    dist: np.ndarray
    seconds: float  # this image's share of the batch's forward pass
    shift: tuple | None = None  # (score, inputs) of the dataset-shift check (ijtorch.models.shift), if any


def batchable(model: Any, shape: tuple[int, ...], tile_size: int) -> bool:
    """Whether a ``YX`` image of ``shape`` is one tile for a star-convex ``model`` (then it can join a
    batch). Other model types (U-Net + watershed) go through ``segment`` itself."""
    from ijtorch.models.stardist.model import StarDistModel

    if len(shape) != 2 or not isinstance(model, StarDistModel):
        return False
    mult = model.net.size_multiple()
    padded = [max(int(np.ceil(s / m) * m), 1) for s, m in zip(shape, mult)]
    tiles = [min(int(np.ceil(tile_size / m) * m), p) for m, p in zip(mult, padded)]
    return tiles == padded


def forward_maps(model: Any, images: Sequence[np.ndarray]) -> list[Maps]:
    """Probability and distance maps of same-shaped ``YX`` images from one forward pass.

    ``model`` is a loaded :class:`ijtorch.models.stardist.model.StarDistModel`; every image must
    be batchable (see :func:`batchable`). The maps are views into the batch's output array.
    """
    t0 = time.monotonic()
    shape = images[0].shape
    if any(im.shape != shape for im in images):
        raise ValueError("forward_maps needs images of one shape")
    mult = model.net.size_multiple()
    padded = [max(int(np.ceil(s / m) * m), 1) for s, m in zip(shape, mult)]
    pads = [(0, p - s) for p, s in zip(padded, shape)]
    mode = "reflect" if all(p[1] < s for p, s in zip(pads, shape)) else "constant"
    batch = np.empty((len(images), 1, *padded), np.float32)
    for k, im in enumerate(images):
        x = model.normalize(im)[None]  # (1, Y, X) as predict_tiled sees it
        batch[k] = np.pad(x, [(0, 0)] + pads, mode=mode) if any(p[1] for p in pads) else x
    reference = getattr(model, "shift_reference", None)
    if reference:  # the dataset-shift check, per image, from this forward pass's own features
        from ijtorch.models.shift import FeatureCollector, input_summary

        collector = FeatureCollector(reference)
        with model.collecting(collector):
            out = model._forward_numpy(batch)
        scores = collector.sample_scores()
    else:
        out = model._forward_numpy(batch)
    out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
    share = (time.monotonic() - t0) / len(images)
    region = tuple(slice(0, s) for s in shape)
    return [Maps(out[k, 0], np.moveaxis(out[k, 1:], 0, -1), share,
                 (scores[k], input_summary(batch[k, 0][region], out[k, 0])) if reference else None)
            for k in range(len(images))]


def instances(model: Any, maps: Maps, prob_threshold: float | None, nms_threshold: float | None,
              model_name: str, min_confidence: float = 0.0) -> Any:
    """The ``SegmentationResult`` of one image's maps (``None`` thresholds take the model's tuned
    values), with per-object confidence and the dataset-shift check as ``segment`` gives them."""
    from ijtorch.models.stardist import geometry as sd
    from ijtorch.tasks.segment import SegmentationResult, _drop_uncertain, object_confidence, shift_report

    t0 = time.monotonic()
    pt = model.thresholds["prob"] if prob_threshold is None else float(prob_threshold)
    nt = model.thresholds["nms"] if nms_threshold is None else float(nms_threshold)
    lab, _ = sd.instances_from_maps(maps.prob, maps.dist, prob_threshold=pt, nms_threshold=nt,
                                    grid=int(model.config.get("grid", 1)), dtype=np.int64)
    conf = object_confidence(lab, maps.prob)
    if min_confidence > 0:
        lab, conf = _drop_uncertain(lab, conf, float(min_confidence))
    n = int(lab.max()) if lab.size else 0
    dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
    name = Path(model_name).name
    report = shift_report(model, [maps.shift] if maps.shift is not None else [], name, 1)
    return SegmentationResult(labels=lab.astype(dtype), axes="YX", n_objects=n, model=name,
                              prob_threshold=pt, nms_threshold=nt, seconds=maps.seconds + time.monotonic() - t0,
                              device=model.device, objects_per_plane=(n,), shift_score=report.score,
                              shift_threshold=report.threshold, shift_warning=report.warning,
                              shift_message=report.message, confidence=conf)



def classify_batch(model_path: str, stacks: Sequence[np.ndarray], device: str) -> list[Any]:
    """``classify()`` answers for several requests' ``(N, C, ...)`` crops from one ``classify`` call.

    All stacks must share their item shape and dtype (the batcher's key), so concatenating them
    changes no value. Returns one ``classify`` result dict per stack, in order. When the joint
    call fails, every request is classified alone, so each gets its own answer or its own error
    (an exception instance in the returned list) as it would without batching.
    """
    from ijtorch.tasks.classify import classify

    if len(stacks) == 1:
        return [classify(stacks[0], model=model_path, device=device)]
    try:
        joint = classify(np.concatenate(stacks), model=model_path, device=device)
    except Exception:  # noqa: BLE001 - find out whose request it was: each one alone
        return [_classify_alone(model_path, s, device) for s in stacks]
    bounds = np.cumsum([0] + [len(s) for s in stacks])
    return [{key: (value[a:b] if isinstance(value, np.ndarray) else value) for key, value in joint.items()}
            for a, b in zip(bounds[:-1], bounds[1:])]


def _classify_alone(model_path: str, stack: np.ndarray, device: str) -> Any:
    from ijtorch.tasks.classify import classify

    try:
        return classify(stack, model=model_path, device=device)
    except Exception as exc:  # noqa: BLE001 - this request's error, reported to it alone
        return exc
