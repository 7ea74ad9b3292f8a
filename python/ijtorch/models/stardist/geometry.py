"""Star-convex polygon instance segmentation (StarDist, Schmidt et al. 2018), 2D.

A U-Net predicts, for every pixel, an object probability (sigmoid) and ``n_rays`` radial distances
to the boundary of the object the pixel belongs to. Prediction keeps pixels whose probability
exceeds a threshold (on a ``grid``-subsampled lattice), suppresses overlapping polygons greedily by
IoU in order of probability (:func:`polygon_nms`) and renders the survivors into a label map
(:func:`polygons_to_labels`).

This module is 2D; star-convex polyhedra for 3D volumes are in :mod:`ijtorch.models.stardist.geometry3d`.
With a 2D model, :func:`ijtorch.tasks.segment.segment` segments ``ZYX`` stacks plane by plane.

Conventions: ray ``k`` has angle ``phi_k = 2*pi*k/n_rays``; its vertex is
``(y + d_k * sin(phi_k), x + d_k * cos(phi_k))``.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "ray_angles", "star_distances", "object_probabilities", "polygon_vertices", "polygon_areas",
    "polygon_nms", "polygons_to_labels", "instances_from_maps",
    "match_counts",
]

log = logging.getLogger(__name__)


def ray_angles(n_rays: int) -> np.ndarray:
    """Angles ``2*pi*k/n_rays`` (float64) of the rays."""
    if not isinstance(n_rays, (int, np.integer)) or n_rays < 3:
        raise ValueError(f"n_rays={n_rays!r}: expected an integer >= 3")
    return np.linspace(0, 2 * np.pi, int(n_rays), endpoint=False)


def star_distances(labels: np.ndarray, n_rays: int = 32) -> np.ndarray:
    """Distance from every object pixel to its object's boundary along each ray.

    Each ray is marched from the pixel centre in unit steps (position ``(y + rint(t*sin), x +
    rint(t*cos))``); at the first step ``t`` whose position leaves the image or the object, the distance is ``t - 1 + 0.5 / max(|cos|, |sin|)``
    (the half-pixel correction of the StarDist reference implementation). Background pixels get 0.

    Parameters
    ----------
    labels : ndarray of int, shape (Y, X)
        Label map, 0 is background.
    n_rays : int
        Number of rays.

    Returns
    -------
    ndarray of float32, shape (Y, X, n_rays)
    """
    if labels.ndim != 2:
        raise ValueError(f"labels has shape {labels.shape}; star_distances needs a 2D label map")
    h, w = labels.shape
    out = np.zeros((h, w, n_rays), np.float32)
    ys, xs = np.nonzero(labels)
    if ys.size == 0:
        return out
    flat_lab = labels.ravel()
    vals = flat_lab[ys * w + xs]
    for k, phi in enumerate(ray_angles(n_rays)):
        dy, dx = np.sin(phi), np.cos(phi)
        corr = 0.5 / max(abs(dy), abs(dx))
        iy, ix, v = ys, xs, vals
        idx = np.arange(ys.size)
        dist = np.zeros(ys.size, np.float32)
        t = 0
        while idx.size:
            t += 1
            oy, ox = int(np.rint(t * dy)), int(np.rint(t * dx))  # same offset for every pixel
            ii, jj = iy + oy, ix + ox
            same = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
            same[same] = flat_lab[(ii * w + jj)[same]] == v[same]
            dist[idx[~same]] = t - 1 + corr
            idx, iy, ix, v = idx[same], iy[same], ix[same], v[same]
        out[ys, xs, k] = dist
    return out


def object_probabilities(labels: np.ndarray, sampling: tuple[float, ...] | None = None) -> np.ndarray:
    """Per-object Euclidean distance transform divided by the object's maximum (float32 in [0, 1]).

    Pixels outside the image count as background, so objects cut by the border peak at the border.
    ``sampling`` is the pixel/voxel size per axis (anisotropic 3D volumes); ``None`` means 1.
    """
    out = np.zeros(labels.shape, np.float32)
    for lab, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = labels[sl] == lab
        edt = ndi.distance_transform_edt(np.pad(mask, 1), sampling=sampling)[(slice(1, -1),) * labels.ndim]
        m = edt.max()
        if m > 0:
            out[sl][mask] = (edt[mask] / m).astype(np.float32)
    return out


def polygon_vertices(points: np.ndarray, dists: np.ndarray) -> np.ndarray:
    """Vertices ``(N, 2, n_rays)`` (rows then columns) of polygons centred at ``points`` (N, 2)."""
    phi = ray_angles(dists.shape[-1])
    pts = np.asarray(points, np.float64)
    return np.stack([pts[:, :1] + dists * np.sin(phi), pts[:, 1:2] + dists * np.cos(phi)], axis=1)


def polygon_areas(dists: np.ndarray) -> np.ndarray:
    """Exact areas of star polygons: ``0.5 * sin(2*pi/n) * sum_k d_k * d_{k+1}``."""
    n = dists.shape[-1]
    return 0.5 * np.sin(2 * np.pi / n) * np.sum(dists * np.roll(dists, -1, axis=-1), axis=-1)


def _radii(dists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared radii of the largest disc inside and the smallest disc around each star polygon
    (its nearest edge line and its farthest vertex), shrunk/grown by a relative 1e-9 so that float
    rounding never puts a point inside one disc on the other side of the polygon's edge."""
    n = dists.shape[-1]
    step = 2 * np.pi / n
    d0, d1 = dists, np.roll(dists, -1, axis=-1)
    edge = np.sqrt(np.maximum(d0 * d0 + d1 * d1 - 2 * d0 * d1 * np.cos(step), 1e-24))
    inner = (d0 * d1 * np.sin(step) / edge).min(axis=-1) * (1 - 1e-9)
    outer = dists.max(axis=-1) * (1 + 1e-9)
    return inner * inner, outer * outer


def _inside_star(vy: np.ndarray, vx: np.ndarray, poly: np.ndarray, dists: np.ndarray, inner2: np.ndarray,
                 outer2: np.ndarray) -> np.ndarray:
    """Whether points at offsets ``(vy, vx)`` from the centre of star polygon ``poly`` lie inside it.

    ``vy``, ``vx``, ``poly``: (M,) offsets and polygon indices into ``dists`` (J, n) and its
    :func:`_radii` ``inner2``, ``outer2``. Points inside the polygon's inner disc are inside and
    points beyond its outer disc outside; only those in between are tested exactly: a point in the
    sector between rays k and k+1 is inside when it lies on the centre's side of the edge between
    their vertices, ``d_k * (u_k x v) + d_k+1 * (v x u_k+1) <= d_k * d_k+1 * sin(2*pi/n)`` (u the
    ray directions, x the 2D cross product).
    """
    n = dists.shape[-1]
    step = 2 * np.pi / n
    cos, sin = _ray_table(n)
    r2 = vy * vy + vx * vx
    inside = r2 <= inner2[poly]
    ring = np.flatnonzero(~inside & (r2 <= outer2[poly]))  # the annulus: exact test
    if ring.size:
        y, x, j = vy[ring], vx[ring], poly[ring]
        theta = np.arctan2(y, x)
        theta[theta < 0] += 2 * np.pi
        k = np.minimum((theta / step).astype(np.intp), n - 1)
        k1 = k + 1
        k1[k1 == n] = 0
        d0, d1 = dists[j, k], dists[j, k1]
        inside[ring] = d0 * (cos[k] * y - sin[k] * x) + d1 * (sin[k1] * x - cos[k1] * y) <= d0 * d1 * np.sin(step)
    return inside


@functools.lru_cache(maxsize=1)
def _compiled_nms() -> Any:
    """:func:`~ijtorch.models.stardist.nms_compiled.polygon_nms_compiled`, or None without numba."""
    try:
        from .nms_compiled import polygon_nms_compiled
    except ImportError as exc:
        log.info("numba cannot be imported (%s): star-polygon NMS runs its numpy version", exc)
        return None
    return polygon_nms_compiled


@functools.lru_cache(maxsize=8)
def _ray_table(n: int) -> tuple[np.ndarray, np.ndarray]:
    phi = ray_angles(n)
    return np.cos(phi), np.sin(phi)


def _segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments of the given lengths laid end to end: each element's segment and its position in it."""
    owner = np.repeat(np.arange(counts.size), counts)
    return owner, np.arange(owner.size) - np.repeat(np.cumsum(counts) - counts, counts)


def polygon_nms(points: np.ndarray, dists: np.ndarray, scores: np.ndarray, *, nms_threshold: float = 0.4,
                max_samples: int = 256, batch: int = 64, compiled: bool | None = None) -> np.ndarray:
    """Greedy non-maximum suppression of star polygons by IoU.

    Candidates are visited in order of decreasing score; a kept polygon suppresses every later one
    whose IoU with it exceeds ``nms_threshold``. Intersections are measured by sampling a regular
    grid (about ``max_samples`` points, at most 4 per pixel side) inside the kept polygon and
    testing its neighbours; polygon areas are exact. The IoU estimate is accurate to a few
    percent, which only matters for pairs whose IoU is within that margin of ``nms_threshold``.

    The IoUs of the next candidates not yet suppressed (up to ``batch``, and up to the first that
    could overlap an earlier one of them, so that none of them suppresses another) with their
    neighbours are computed together, in one set of array operations instead of one per candidate;
    the greedy pass then reads them in order: the result is that of visiting one candidate at a time.

    ``compiled`` (default: whenever numba is installed) runs the same algorithm as compiled loops
    (:mod:`~ijtorch.models.stardist.nms_compiled`): the same kept polygons, about 4× faster; ``False``
    runs the numpy version.

    Returns
    -------
    ndarray of int
        Indices of kept candidates, in order of decreasing score.
    """
    from scipy.spatial import cKDTree

    if not 0 <= nms_threshold <= 1:
        raise ValueError(f"nms_threshold={nms_threshold!r}: expected a float in [0, 1]")
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.intp)
    order = np.argsort(-np.asarray(scores), kind="stable")
    pts = np.asarray(points, np.float64)[order]
    d = np.asarray(dists, np.float64)[order]
    areas = polygon_areas(d)
    rmax = d.max(axis=1)
    inner2, outer2 = _radii(d)
    kernel = _compiled_nms() if compiled is not False else None
    if compiled and kernel is None:
        raise ImportError("polygon_nms(compiled=True) needs numba, which cannot be imported here")
    if kernel is not None:
        kept = kernel(pts, d, areas, rmax, inner2, outer2, *_ray_table(d.shape[1]), nms_threshold, max_samples)
        return order[kept]
    big = float(rmax.max())
    tree = cKDTree(pts)
    suppressed = np.zeros(n, bool)
    keep: list[int] = []
    start = 0
    while start < n:
        cand = np.flatnonzero(~suppressed[start:])[:batch] + start
        if cand.size == 0:
            break
        # up to the first candidate that overlaps an earlier one: the others are all kept
        sep = np.hypot(*(pts[cand][:, None] - pts[cand][None, :]).transpose(2, 0, 1))
        clash = np.tril(sep < rmax[cand][:, None] + rmax[cand][None, :], -1).any(axis=1)
        cand = cand[: int(np.argmax(clash)) if clash.any() else cand.size]
        start = int(cand[-1]) + 1
        pair_i, pair_j, iou = _candidate_ious(cand, pts, d, areas, rmax, inner2, outer2, big, tree, suppressed,
                                              max_samples)
        lo, hi = np.searchsorted(pair_i, cand, "left"), np.searchsorted(pair_i, cand, "right")
        for i, a, b in zip(cand.tolist(), lo.tolist(), hi.tolist()):
            if suppressed[i]:
                continue
            keep.append(i)
            if b > a:
                suppressed[pair_j[a:b][iou[a:b] > nms_threshold]] = True
    return order[np.asarray(keep, np.intp)]


def _candidate_ious(cand: np.ndarray, pts: np.ndarray, d: np.ndarray, areas: np.ndarray, rmax: np.ndarray,
                    inner2: np.ndarray, outer2: np.ndarray, big: float, tree: Any, suppressed: np.ndarray,
                    max_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of each candidate in ``cand`` (sorted polygon indices) with each later, not yet suppressed
    neighbour that can overlap it: ``(pair_i, pair_j, iou)``, ordered by ``pair_i``."""
    empty = np.zeros(0, np.intp)
    cand = cand[areas[cand] > 0]  # a degenerate polygon suppresses nothing
    # every neighbour within reach, flattened in one pass (no numpy call per candidate)
    near = tree.query_ball_point(pts[cand], rmax[cand] + big, return_sorted=False)
    sizes = np.fromiter(map(len, near), np.intp, cand.size)
    pj = np.fromiter(itertools.chain.from_iterable(near), np.intp, int(sizes.sum()))
    pc = np.repeat(cand, sizes)
    later = pj > pc
    pc, pj = pc[later], pj[later]
    alive = ~suppressed[pj]
    pc, pj = pc[alive], pj[alive]
    off = pts[pj] - pts[pc]
    close = np.hypot(off[:, 0], off[:, 1]) < rmax[pc] + rmax[pj]
    pc, pj = pc[close], pj[close]
    if pc.size == 0:
        return empty, empty, np.zeros(0)
    owners = np.unique(pc)  # candidates with neighbours: sample their polygons on a grid
    steps = np.maximum(0.25, np.sqrt(areas[owners] / max_samples))  # about max_samples points each
    axes = [np.arange(-r, r + s, s) for r, s in zip(rmax[owners], steps)]
    sizes = np.array([a.size for a in axes])
    owner, pos = _segments(sizes * sizes)
    axis = np.concatenate(axes)
    base = np.repeat(np.cumsum(sizes) - sizes, sizes * sizes)
    gy = axis[base + pos // np.repeat(sizes, sizes * sizes)]  # row-major grid around each centre
    gx = axis[base + pos % np.repeat(sizes, sizes * sizes)]
    inside = _inside_star(gy, gx, owners[owner], d, inner2, outer2)
    gy, gx, owner = gy[inside], gx[inside], owner[inside]
    counts = np.bincount(owner, minlength=owners.size)
    first = np.cumsum(counts) - counts
    # every (owner sample, neighbour) pair: the sample relative to the neighbour's centre
    slot = np.searchsorted(owners, pc)
    pair, k = _segments(counts[slot])
    sample = first[slot][pair] + k
    off = pts[pj] - pts[pc]
    hit = _inside_star(gy[sample] - off[pair, 0], gx[sample] - off[pair, 1], pj[pair], d, inner2, outer2)
    inter = np.bincount(pair, weights=hit, minlength=pc.size) * (steps[slot] ** 2)
    iou = inter / np.maximum(areas[pc] + areas[pj] - inter, 1e-12)
    return pc, pj, iou


def polygons_to_labels(points: np.ndarray, dists: np.ndarray, shape: tuple[int, int], *,
                       scores: np.ndarray | None = None, dtype: Any = np.int32, chunk: int = 1 << 22) -> np.ndarray:
    """Render star polygons into a label map.

    A pixel belongs to a polygon when its centre lies inside it (as :func:`skimage.draw.polygon`
    decides). Where polygons overlap the most probable object wins; labels are 1..N in order of
    decreasing score (labels of fully covered polygons are dropped and the rest renumbered
    consecutively). All polygons are tested at once, ``chunk`` (pixel, polygon) pairs at a time.
    """
    h, w = shape
    n = len(points)
    if n == 0:
        return np.zeros(shape, dtype)
    order = np.arange(n) if scores is None else np.argsort(-np.asarray(scores), kind="stable")
    pts = np.asarray(points, np.float64)[order]
    d = np.asarray(dists, np.float64)[order]
    inner2, outer2 = _radii(d)
    verts = polygon_vertices(pts, d)
    r0 = np.clip(np.ceil(verts[:, 0].min(axis=1)), 0, h).astype(np.intp)  # pixel rows/columns whose centre
    r1 = np.clip(np.floor(verts[:, 0].max(axis=1)) + 1, 0, h).astype(np.intp)  # can be inside
    c0 = np.clip(np.ceil(verts[:, 1].min(axis=1)), 0, w).astype(np.intp)
    c1 = np.clip(np.floor(verts[:, 1].max(axis=1)) + 1, 0, w).astype(np.intp)
    rows, cols = np.maximum(r1 - r0, 0), np.maximum(c1 - c0, 0)
    winner = np.full(h * w, n + 1, np.intp)  # the smallest label (highest score) covering each pixel
    sizes = rows * cols
    ends = np.cumsum(sizes)
    lo = 0
    while lo < n:  # polygons lo..hi-1: about `chunk` pixels of their bounding boxes
        hi = max(lo + 1, int(np.searchsorted(ends, ends[lo] - sizes[lo] + chunk, side="right")))
        poly = np.arange(lo, hi)
        owner, pos = _segments(sizes[poly])
        j = poly[owner]
        y = r0[j] + pos // np.maximum(cols[j], 1)
        x = c0[j] + pos % np.maximum(cols[j], 1)
        hit = _inside_star(y - pts[j, 0], x - pts[j, 1], j, d, inner2, outer2)
        np.minimum.at(winner, y[hit] * w + x[hit], j[hit] + 1)
        lo = hi
    winner[winner > n] = 0
    present = np.flatnonzero(np.bincount(winner, minlength=n + 1)[1:]) + 1
    lut = np.zeros(n + 1, dtype)
    lut[present] = np.arange(1, present.size + 1)
    return lut[winner].reshape(shape)


def instances_from_maps(prob: np.ndarray, dist: np.ndarray, *, prob_threshold: float = 0.5,
                        nms_threshold: float = 0.4, grid: int = 1, dtype: Any = np.int32
                        ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Turn probability ``(Y, X)`` and distance ``(Y, X, n_rays)`` maps into a label map.

    Parameters
    ----------
    prob_threshold : float
        Candidates are lattice points with probability above this.
    nms_threshold : float
        IoU above which a less probable polygon is suppressed.
    grid : int
        Candidate lattice spacing (1 = every pixel; 2 halves both axes).

    Returns
    -------
    labels : ndarray
    details : dict
        ``points`` (N, 2), ``dists`` (N, n_rays) and ``prob`` (N,) of the kept polygons.
    """
    if not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"grid={grid!r}: expected a positive integer")
    sub = prob[::grid, ::grid]
    yy, xx = np.nonzero(sub > prob_threshold)
    pts = np.stack([yy * grid, xx * grid], axis=1)
    scores = prob[pts[:, 0], pts[:, 1]]
    dists = np.maximum(dist[pts[:, 0], pts[:, 1]].astype(np.float64), 1e-3)
    keep = polygon_nms(pts, dists, scores, nms_threshold=nms_threshold)
    pts, dists, scores = pts[keep], dists[keep], scores[keep]
    labels = polygons_to_labels(pts, dists, prob.shape, scores=scores, dtype=dtype)
    return labels, {"points": pts, "dists": dists.astype(np.float32), "prob": scores.astype(np.float32)}


def match_counts(gt: np.ndarray, pred: np.ndarray, thresholds: tuple[float, ...] = (0.5,)) -> dict[float, tuple[int, int, int]]:
    """``{threshold: (tp, fp, fn)}`` of a one-to-one IoU matching between two label maps.

    Uses :func:`ijtorch.metrics.instance.match_labels` when that module is available, else an internal
    implementation (optimal assignment on IoU with :func:`scipy.optimize.linear_sum_assignment`).
    """
    try:
        from ijtorch.metrics.instance import match_labels  # type: ignore[attr-defined]
    except ImportError:
        match_labels = None
    if match_labels is not None:
        out = {}
        for t in thresholds:
            m = match_labels(gt, pred, iou_threshold=t)
            out[t] = (int(m.tp), int(m.fp), int(m.fn))
        return out
    from scipy.optimize import linear_sum_assignment
    from skimage.segmentation import relabel_sequential

    g = relabel_sequential(np.asarray(gt))[0].ravel().astype(np.int64)
    p = relabel_sequential(np.asarray(pred))[0].ravel().astype(np.int64)
    ng, npred = int(g.max()), int(p.max())
    if ng == 0 or npred == 0:
        return {t: (0, npred, ng) for t in thresholds}
    cont = np.bincount(g * (npred + 1) + p, minlength=(ng + 1) * (npred + 1)).reshape(ng + 1, npred + 1)
    inter = cont[1:, 1:].astype(np.float64)
    union = cont[1:, :].sum(1)[:, None] + cont[:, 1:].sum(0)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    out = {}
    for t in thresholds:
        r, c = linear_sum_assignment(-np.where(iou >= t, iou, 0))
        tp = int(np.sum(iou[r, c] >= t)) if t > 0 else int(np.sum(iou[r, c] > 0))
        out[t] = (tp, npred - tp, ng - tp)
    return out
