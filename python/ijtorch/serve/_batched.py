"""One forward pass over a batch of same-shaped 2D images for a star-convex model.

:func:`segment_batch` gives, for every image, what :func:`ijtorch.tasks.segment.segment` gives for
a ``YX`` image that fits in one tile (``max(Y, X) <= tile_size``): the same normalisation, the
same padding to the network's size multiple, the same thresholds and non-maximum suppression,
the same label dtype rule. Only the network call is shared. Larger images are not batchable and
go through ``segment`` itself.

CPU convolutions may pick a different algorithm for a batch than for one image, so probabilities
can differ in the last float bit (about 1e-6) from a lone ``segment`` call; labels only change
when a value sits that close to a threshold. ``tests/integration/test_serve.py`` and
``benchmarks/bench_serve.py`` compare batched answers with ``segment`` pixel for pixel.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["batchable", "segment_batch"]


def batchable(model: Any, shape: tuple[int, ...], tile_size: int) -> bool:
    """Whether a ``YX`` image of ``shape`` is one tile for ``model`` (then it can join a batch)."""
    if len(shape) != 2 or not hasattr(model, "net") or not hasattr(model, "normalize"):
        return False
    mult = model.net.size_multiple()
    padded = [max(int(np.ceil(s / m) * m), 1) for s, m in zip(shape, mult)]
    tiles = [min(int(np.ceil(tile_size / m) * m), p) for m, p in zip(mult, padded)]
    return tiles == padded


def segment_batch(model: Any, images: Sequence[np.ndarray], thresholds: Sequence[tuple[float | None, float | None]],
                  *, model_name: str, deliver: Callable[[int, Any], None] | None = None) -> list[Any]:
    """Segment same-shaped ``YX`` images in one forward pass; returns a ``SegmentationResult`` each.

    Parameters
    ----------
    model
        A loaded :class:`ijtorch.models.stardist_model.StarDistModel`.
    images
        2D images of one shape, each batchable (see :func:`batchable`).
    thresholds
        ``(prob_threshold, nms_threshold)`` per image; ``None`` takes the model's tuned value.
    model_name
        Name recorded in the results.
    deliver
        Called as ``deliver(k, result)`` as soon as image ``k`` is done (its NMS ran), so a server
        can answer early items of a batch while later ones are post-processed.
    """
    from ijtorch.models import stardist as sd
    from ijtorch.tasks.segment import SegmentationResult

    t0 = time.monotonic()
    shape = images[0].shape
    if any(im.shape != shape for im in images):
        raise ValueError("segment_batch needs images of one shape")
    mult = model.net.size_multiple()
    padded = [max(int(np.ceil(s / m) * m), 1) for s, m in zip(shape, mult)]
    pads = [(0, p - s) for p, s in zip(padded, shape)]
    mode = "reflect" if all(p[1] < s for p, s in zip(pads, shape)) else "constant"
    batch = []
    for im in images:
        x = model.normalize(im)[None]  # (1, Y, X) as predict_tiled sees it
        if any(p[1] for p in pads):
            x = np.pad(x, [(0, 0)] + pads, mode=mode)
        batch.append(x)
    out = model._forward_numpy(np.stack(batch).astype(np.float32, copy=False))
    out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)]
    grid = int(model.config.get("grid", 1))
    seconds_net = time.monotonic() - t0
    results = []
    for k, (pt, nt) in enumerate(thresholds):
        t1 = time.monotonic()
        pt = model.thresholds["prob"] if pt is None else float(pt)
        nt = model.thresholds["nms"] if nt is None else float(nt)
        prob, dist = out[k, 0], np.moveaxis(out[k, 1:], 0, -1)
        lab, _ = sd.instances_from_maps(prob, dist, prob_threshold=pt, nms_threshold=nt, grid=grid, dtype=np.int64)
        n = int(lab.max()) if lab.size else 0
        dtype = np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32
        results.append(SegmentationResult(
            labels=lab.astype(dtype), axes="YX", n_objects=n, model=Path(model_name).name, prob_threshold=pt,
            nms_threshold=nt, seconds=seconds_net / len(images) + time.monotonic() - t1, device=model.device,
            objects_per_plane=(n,)))
        if deliver is not None:
            deliver(k, results[-1])
    return results
