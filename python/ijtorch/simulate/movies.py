"""Seeded simulator of time-lapse movies with moving, dividing, appearing and vanishing cells.

Cells are disks (2-D) or balls (3-D) doing a Gaussian random walk inside the field (reflected at
the border). Each frame a cell older than ``min_division_age`` divides with ``division_prob``
(two daughters, each with half the area, placed on either side of the mother and growing back),
vanishes with ``disappear_prob``, and ``appear_rate`` new cells appear on average (Poisson). A
detection of a cell is *missed* with ``miss_prob`` in interior frames of its life (never twice in
a row, never in a cell's first or last frame), which produces gaps for gap closing.

Outputs: the rendered image (blurred blobs + background + Gaussian noise), the observed label
stack (missed cells left out), the complete truth label stack, the observed point list, the true
lineage in CTC form (``L B E P``; the label value of a cell is its ``L``) and
:meth:`SimulatedMovie.true_edges` between observed detections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SimulatedMovie", "simulate_movie"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulatedMovie:
    """A simulated movie and its ground truth.

    Attributes
    ----------
    image : ndarray of float32 or None
        ``TYX`` / ``TZYX`` rendered movie (None with ``render=False``).
    labels : ndarray of uint16 or None
        Observed label stack: every visible, detected cell painted with its cell label.
    truth : ndarray of uint16 or None
        Label stack with every cell, missed ones included.
    points : ndarray of float64, shape (n, 3 or 4)
        Observed detections ``T, (Z,) Y, X`` in pixels (centres of visible cells in rendered
        movies).
    point_labels : ndarray of int64, shape (n,)
        Cell label of each point.
    lineage : ndarray of int64, shape (n_cells, 4)
        True CTC lineage ``L B E P`` (first and last frame of each cell, parent or 0).
    axes : str
        ``"TYX"`` or ``"TZYX"``.
    """

    image: np.ndarray | None
    labels: np.ndarray | None
    truth: np.ndarray | None
    points: np.ndarray
    point_labels: np.ndarray
    lineage: np.ndarray
    axes: str

    def true_edges(self) -> set[tuple[int, int, int, int]]:
        """Edges ``(frame_a, label_a, frame_b, label_b)`` of the true graph on observed detections.

        Consecutive observations of a cell are joined (across missed frames); the last observation
        of a mother is joined to the first observation of each daughter.
        """
        t = self.points[:, 0].astype(np.int64)
        lab = self.point_labels
        order = np.lexsort((t, lab))
        t, lab = t[order], lab[order]
        same = lab[1:] == lab[:-1]
        edges = {(int(a), int(b), int(c), int(d)) for a, b, c, d in zip(t[:-1][same], lab[:-1][same], t[1:][same], lab[1:][same])}
        first = {int(L): int(tt) for tt, L in zip(t[::-1], lab[::-1])}
        last = {int(L): int(tt) for tt, L in zip(t, lab)}
        for L, _, _, P in self.lineage:
            if P and int(P) in last and int(L) in first:
                edges.add((last[int(P)], int(P), first[int(L)], int(L)))
        return edges

    def n_divisions(self) -> int:
        """Number of mothers with two daughters in the lineage."""
        p = self.lineage[:, 3]
        return int(np.count_nonzero(np.bincount(p[p > 0]) == 2)) if np.any(p > 0) else 0


def _check(name: str, value, low: float, high: float = np.inf) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name}={value!r} is out of range; accepted: {low} <= {name} <= {high}")


def simulate_movie(*, n_frames: int = 30, shape: tuple[int, ...] = (128, 128), n_cells: int = 20,
                   radius: float = 4.0, speed: float = 1.5, division_prob: float = 0.02,
                   min_division_age: int = 5, appear_rate: float = 0.2, disappear_prob: float = 0.005,
                   miss_prob: float = 0.0, noise: float = 0.1, render: bool = True, seed: int = 0) -> SimulatedMovie:
    """Simulate a movie of cells with a known lineage.

    Parameters
    ----------
    n_frames
        Number of frames (≥ 1).
    shape
        Spatial shape ``(Y, X)`` or ``(Z, Y, X)`` in pixels.
    n_cells
        Cells in the first frame (the density).
    radius
        Cell radius in pixels.
    speed
        Standard deviation of the per-frame displacement along each axis, in pixels.
    division_prob
        Per-frame division probability of a cell at least ``min_division_age`` frames old.
    min_division_age
        Frames a cell lives before it may divide.
    appear_rate
        Expected number of cells appearing per frame.
    disappear_prob
        Per-frame probability that a cell vanishes (no daughters).
    miss_prob
        Per-frame probability that a cell's detection is missed (a gap).
    noise
        Standard deviation of the Gaussian noise added to the rendered image (signal 1).
    render
        Render images and label stacks; False gives points only (fast, for large benchmarks).
    seed
        Seed of the random generator.

    Returns
    -------
    SimulatedMovie
    """
    if len(shape) not in (2, 3) or any(int(s) < 4 for s in shape):
        raise ValueError(f"shape={shape!r}: accepted are (Y, X) or (Z, Y, X) with every size >= 4")
    _check("n_frames", n_frames, 1)
    _check("n_cells", n_cells, 0)
    _check("radius", radius, 0.5)
    for name, v in (("division_prob", division_prob), ("disappear_prob", disappear_prob), ("miss_prob", miss_prob)):
        _check(name, v, 0.0, 1.0)
    _check("speed", speed, 0.0)
    _check("appear_rate", appear_rate, 0.0)
    _check("noise", noise, 0.0)
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    hi = np.asarray(shape, np.float64) - 1.0
    margin = min(radius, float(hi.min()) / 4)

    def place(k: int) -> np.ndarray:
        return margin + rng.random((k, ndim)) * (hi - 2 * margin)

    # Per-cell state: position, radius, age, missed-last-frame; records of (t, L, pos, r, missed).
    pos = place(n_cells)
    rad = np.full(n_cells, float(radius))
    age = np.zeros(n_cells, np.int64)
    ids = np.arange(1, n_cells + 1)
    born = {int(i): 0 for i in ids}
    parent = {int(i): 0 for i in ids}
    next_id = n_cells + 1
    rec_t, rec_id, rec_pos, rec_r = [], [], [], []
    for t in range(n_frames):
        if t > 0:
            pos = pos + rng.normal(0.0, speed, pos.shape)
            pos = np.abs(pos)
            pos = hi - np.abs(hi - pos)
            pos = np.clip(pos, 0, hi)
            rad = np.minimum(rad * 1.05, radius)
            age = age + 1
            n = ids.size
            u = rng.random(n)
            divide = (age >= min_division_age) & (u < division_prob)
            vanish = ~divide & (u > 1 - disappear_prob)
            keep = ~divide & ~vanish
            new_pos, new_rad, new_ids = [pos[keep]], [rad[keep]], [ids[keep]]
            for k in np.flatnonzero(divide):
                d = rng.normal(size=ndim)
                d *= 0.6 * rad[k] / max(np.linalg.norm(d), 1e-9)
                for sign in (1, -1):
                    new_pos.append(np.clip(pos[k] + sign * d, 0, hi)[None])
                    new_rad.append(np.array([rad[k] / np.sqrt(2) if ndim == 2 else rad[k] / np.cbrt(2)]))
                    new_ids.append(np.array([next_id]))
                    born[next_id] = t
                    parent[next_id] = int(ids[k])
                    next_id += 1
            k_new = rng.poisson(appear_rate)
            if k_new:
                new_pos.append(place(k_new)); new_rad.append(np.full(k_new, float(radius)))
                new_ids.append(np.arange(next_id, next_id + k_new))
                for i in range(next_id, next_id + k_new):
                    born[i] = t; parent[i] = 0
                next_id += k_new
            pos, rad, ids = np.concatenate(new_pos), np.concatenate(new_rad), np.concatenate(new_ids)
            age = np.array([t - born[int(i)] for i in ids], np.int64)
        rec_t.append(np.full(ids.size, t)); rec_id.append(ids.copy()); rec_pos.append(pos.copy()); rec_r.append(rad.copy())
    if next_id - 1 > np.iinfo(np.uint16).max:
        raise ValueError(f"the simulation made {next_id - 1} cells, more than uint16 labels hold; lower n_frames, n_cells or appear_rate")
    t_all = np.concatenate(rec_t); id_all = np.concatenate(rec_id)
    p_all = np.concatenate(rec_pos); r_all = np.concatenate(rec_r)
    first = np.full(next_id, n_frames, np.int64); last = np.full(next_id, -1, np.int64)
    np.minimum.at(first, id_all, t_all); np.maximum.at(last, id_all, t_all)
    # Missed detections: interior frames only, never two in a row.
    interior = (t_all > first[id_all]) & (t_all < last[id_all])
    missed = interior & (rng.random(t_all.size) < miss_prob)
    order = np.lexsort((t_all, id_all))
    prev_missed = np.zeros(t_all.size, bool)
    same = id_all[order][1:] == id_all[order][:-1]
    prev_missed[order[1:]] = same & missed[order[:-1]]
    missed &= ~prev_missed
    lineage = np.array([[L, first[L], last[L], parent[L]] for L in range(1, next_id)], np.int64).reshape(-1, 4)
    image = labels = truth = None
    observed = ~missed
    axes = "TYX" if ndim == 2 else "TZYX"
    if render:
        truth = np.zeros((n_frames, *shape), np.uint16)
        labels = np.zeros((n_frames, *shape), np.uint16)
        for k in range(t_all.size):
            c, r = p_all[k], r_all[k]
            lo = np.maximum(np.floor(c - r).astype(int), 0)
            up = np.minimum(np.ceil(c + r).astype(int) + 1, shape)
            sl = tuple(slice(a, b) for a, b in zip(lo, up))
            d2 = sum((np.arange(lo[i], up[i]).reshape([-1 if j == i else 1 for j in range(ndim)]) - c[i]) ** 2
                     for i in range(ndim))
            inside = d2 <= r * r
            truth[t_all[k]][sl][inside] = id_all[k]
            if observed[k]:
                labels[t_all[k]][sl][inside] = id_all[k]
        # Occlusion: a cell fully painted over is not observed.
        present = np.zeros(t_all.size, bool)
        for t in range(n_frames):
            sel = np.flatnonzero(t_all == t)
            present[sel] = np.isin(id_all[sel], np.unique(labels[t]))
        observed &= present
        blobs = ndimage.gaussian_filter((truth > 0).astype(np.float32), sigma=[0] + [1.0] * ndim)
        image = (0.1 + blobs + rng.normal(0.0, noise, truth.shape)).astype(np.float32)
    points = np.concatenate([t_all[observed, None].astype(np.float64), p_all[observed]], axis=1)
    log.info("simulated %d frames, %d cells, %d divisions, %d missed detections", n_frames, lineage.shape[0],
             int(np.count_nonzero(lineage[:, 3])) // 2, int(np.count_nonzero(missed)))
    return SimulatedMovie(image=image, labels=labels, truth=truth, points=points,
                          point_labels=id_all[observed].astype(np.int64), lineage=lineage, axes=axes)
