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

__all__ = ["SimulatedMovie", "simulate_colony", "simulate_movie"]

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


# ------------------------------------------------------------------------------- dense colonies
# Rod-shaped bacteria (capsules: a segment of half-length h around the centre, radius w/2) that grow
# exponentially in length, divide across their middle into two daughters on their long axis, and
# push each other apart (overlaps relaxed along the contact normal, with the torque turning the
# rods) - a growing micro-colony in which the cells at the edge move furthest per frame.

def _segment_closest(p1, d1, p2, d2):
    """Closest points between segments ``p1 + s d1`` and ``p2 + t d2`` (s, t in [0, 1]), vectorised."""
    r = p1 - p2
    a = np.einsum("ij,ij->i", d1, d1)
    e = np.einsum("ij,ij->i", d2, d2)
    f = np.einsum("ij,ij->i", d2, r)
    c = np.einsum("ij,ij->i", d1, r)
    b = np.einsum("ij,ij->i", d1, d2)
    a = np.maximum(a, 1e-12)
    e = np.maximum(e, 1e-12)
    denom = a * e - b * b
    s = np.where(denom > 1e-9, np.clip((b * f - c * e) / np.where(denom > 1e-9, denom, 1.0), 0, 1), 0.0)
    t = (b * s + f) / e
    low, high = t < 0, t > 1
    t = np.clip(t, 0, 1)
    s = np.where(low, np.clip(-c / a, 0, 1), np.where(high, np.clip((b - c) / a, 0, 1), s))
    return p1 + s[:, None] * d1, p2 + t[:, None] * d2


def _relax(pos, ang, half, width, iterations, tol=0.0):
    """Push overlapping capsules apart (positions and angles updated in place)."""
    from scipy.spatial import cKDTree

    for _ in range(iterations):
        if pos.shape[0] < 2:
            return
        pairs = cKDTree(pos).query_pairs(2 * float(half.max()) + width, output_type="ndarray")
        if pairs.size == 0:
            return
        i, j = pairs[:, 0], pairs[:, 1]
        u = np.stack([np.cos(ang), np.sin(ang)], axis=1)  # (x, y) direction of each rod
        P, Q = _segment_closest(pos[i] - half[i, None] * u[i], 2 * half[i, None] * u[i],
                                pos[j] - half[j, None] * u[j], 2 * half[j, None] * u[j])
        v = P - Q
        dist = np.linalg.norm(v, axis=1)
        overlap = width - dist
        hit = overlap > 1e-3
        if not hit.any() or overlap.max() < tol:
            return
        i, j, P, Q, v, dist, overlap = i[hit], j[hit], P[hit], Q[hit], v[hit], dist[hit], overlap[hit]
        n = v / np.maximum(dist, 1e-9)[:, None]
        n[dist < 1e-9] = np.array([1.0, 0.0])
        push = 0.5 * overlap[:, None] * n
        dpos = np.zeros_like(pos)
        np.add.at(dpos, i, push)
        np.add.at(dpos, j, -push)
        # Torque of the push about each rod's centre turns it (moment of inertia of a rod ~ h^2 / 3).
        cross = lambda a, b: a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
        ti = cross(P - pos[i], push)
        tj = cross(Q - pos[j], -push)
        dang = np.zeros_like(ang)
        np.add.at(dang, i, ti / (half[i] ** 2 / 3 + width ** 2))
        np.add.at(dang, j, tj / (half[j] ** 2 / 3 + width ** 2))
        pos += 0.8 * dpos
        ang += 0.8 * np.clip(dang, -0.3, 0.3)


def simulate_colony(*, n_frames: int = 30, shape: tuple[int, int] = (256, 256), n_cells: int = 12,
                    width: float = 7.0, birth_length: float = 18.0, doubling_time: float = 9.0,
                    spread: float = 0.6, noise: float = 0.1, seed: int = 0) -> SimulatedMovie:
    """Simulate a dense, growing micro-colony of rod-shaped cells with a known lineage.

    Each cell is a capsule of fixed ``width`` whose length grows exponentially (rate varying ±15 %
    between cells); at about twice its birth length (±10 %) it divides across its middle into two
    daughters of half its length on its long axis (angles jitter a few degrees). After every growth
    sub-step overlapping cells push each other apart along their contact normal and the torque turns
    them, so the colony expands and cells near its edge move several pixels per frame. A pixel
    covered by two capsules goes to the one whose axis is nearer. Cells leave the lineage when they
    leave the field.

    Parameters
    ----------
    n_frames
        Number of frames (≥ 2).
    shape
        ``(Y, X)`` in pixels.
    n_cells
        Founder cells, scattered in the middle third of the field.
    width
        Cell width (capsule diameter) in pixels.
    birth_length
        Typical length (tip to tip) of a newborn cell in pixels; cells divide at about twice it.
    doubling_time
        Mean doubling time in frames (controls how many divisions a movie holds).
    spread
        Size of the region founders start in, as a fraction of the field.
    noise
        Standard deviation of the Gaussian noise of the rendered image.
    seed
        Seed of the random generator.

    Returns
    -------
    SimulatedMovie
        ``labels`` and ``truth`` are the same (no missed cells); ``points`` are the centroids of the
        painted masks.

    Examples
    --------
    >>> m = simulate_colony(n_frames=12, shape=(96, 96), n_cells=3, seed=1)
    >>> m.labels.shape, m.n_divisions() > 0
    ((12, 96, 96), True)
    """
    if len(shape) != 2 or any(int(s) < 16 for s in shape):
        raise ValueError(f"shape={shape!r}: accepted is (Y, X) with both sizes >= 16")
    _check("n_frames", n_frames, 2)
    _check("n_cells", n_cells, 1)
    _check("width", width, 2.0)
    _check("birth_length", birth_length, width)
    _check("doubling_time", doubling_time, 1.0)
    _check("spread", spread, 0.05, 1.0)
    _check("noise", noise, 0.0)
    rng = np.random.default_rng(seed)
    hi = np.array([shape[1], shape[0]], np.float64) - 1.0  # x, y
    pos = (0.5 - spread / 2 + spread * rng.random((n_cells, 2))) * hi
    ang = rng.uniform(0, np.pi, n_cells)
    length = birth_length * rng.uniform(1.0, 1.9, n_cells)
    rate = np.log(2) / doubling_time * rng.uniform(0.85, 1.15, n_cells)
    div_len = 2 * birth_length * rng.uniform(0.9, 1.1, n_cells)
    ids = np.arange(1, n_cells + 1)
    parent = {int(i): 0 for i in ids}
    next_id = n_cells + 1
    sub = max(4, int(np.ceil(36 / doubling_time)))  # growth sub-steps per frame: at most ~2 % each
    _relax(pos, ang, np.maximum(length - width, 0) / 2, width, 50)
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for t in range(n_frames):
        if t > 0:
            for _ in range(sub):
                length = length * np.exp(rate / sub)
                ang = ang + rng.normal(0, 0.01, ang.size)
                pos = pos + rng.normal(0, 0.05, pos.shape)
                divide = np.flatnonzero(length >= div_len)
                if divide.size:
                    keep = np.setdiff1d(np.arange(ids.size), divide)
                    u = np.stack([np.cos(ang[divide]), np.sin(ang[divide])], axis=1)
                    q = (length[divide] / 4)[:, None] * u
                    k = divide.size
                    new_ids = np.arange(next_id, next_id + 2 * k)
                    for m, a, b in zip(ids[divide], new_ids[:k], new_ids[k:]):
                        parent[int(a)] = parent[int(b)] = int(m)
                    next_id += 2 * k
                    pos = np.concatenate([pos[keep], pos[divide] + q, pos[divide] - q])
                    ang = np.concatenate([ang[keep], *(ang[divide] + rng.normal(0, 0.05, k) for _ in range(2))])
                    length = np.concatenate([length[keep], length[divide] / 2, length[divide] / 2])
                    rate = np.concatenate([rate[keep], np.log(2) / doubling_time * rng.uniform(0.85, 1.15, 2 * k)])
                    div_len = np.concatenate([div_len[keep], 2 * birth_length * rng.uniform(0.9, 1.1, 2 * k)])
                    ids = np.concatenate([ids[keep], new_ids])
                _relax(pos, ang, np.maximum(length - width, 0) / 2, width, 40, tol=0.05 * width)
            inside = np.all((pos > -width) & (pos < hi + width), axis=1)
            pos, ang, length, rate, div_len, ids = (v[inside] for v in (pos, ang, length, rate, div_len, ids))
        frames.append((ids.copy(), pos.copy(), ang.copy(), length.copy()))
    if next_id - 1 > np.iinfo(np.uint16).max:
        raise ValueError(f"the simulation made {next_id - 1} cells, more than uint16 labels hold")
    labels = np.zeros((n_frames, *shape), np.uint16)
    yy_all, xx_all = np.arange(shape[0]), np.arange(shape[1])
    for t, (ids_t, pos_t, ang_t, len_t) in enumerate(frames):
        best = np.full(shape, np.inf)
        r = width / 2
        for L, c, a, ln in zip(ids_t, pos_t, ang_t, len_t):
            h = max(ln - width, 0) / 2
            reach = h + r + 1
            x0, x1 = max(int(c[0] - reach), 0), min(int(c[0] + reach) + 2, shape[1])
            y0, y1 = max(int(c[1] - reach), 0), min(int(c[1] + reach) + 2, shape[0])
            if x0 >= x1 or y0 >= y1:
                continue
            dx = xx_all[None, x0:x1] - c[0]
            dy = yy_all[y0:y1, None] - c[1]
            along = np.clip(dx * np.cos(a) + dy * np.sin(a), -h, h)
            d = np.hypot(dx - along * np.cos(a), dy - along * np.sin(a))
            win = (d <= r) & (d < best[y0:y1, x0:x1])
            best[y0:y1, x0:x1][win] = d[win]
            labels[t, y0:y1, x0:x1][win] = L
    # Lineage from what is visible: first/last frame a label is painted, parent if visible before.
    t_list, l_list = [], []
    for t in range(n_frames):
        u = np.unique(labels[t])
        u = u[u > 0]
        t_list.append(np.full(u.size, t)); l_list.append(u)
    t_all = np.concatenate(t_list).astype(np.int64); id_all = np.concatenate(l_list).astype(np.int64)
    first = np.full(next_id, n_frames, np.int64); last = np.full(next_id, -1, np.int64)
    np.minimum.at(first, id_all, t_all); np.maximum.at(last, id_all, t_all)
    seen = last >= 0
    lineage = np.array([[L, first[L], last[L], parent[L] if seen[parent[L]] and parent[L] else 0]
                        for L in range(1, next_id) if seen[L]], np.int64).reshape(-1, 4)
    # Observed detections: centroids of the painted masks.
    pts = []
    for t in range(n_frames):
        idx = np.flatnonzero(labels[t])
        lab = labels[t].ravel()[idx]
        u, inv = np.unique(lab, return_inverse=True)
        cnt = np.bincount(inv)
        y, x = np.unravel_index(idx, shape)
        pts.append(np.stack([np.full(u.size, t, np.float64), np.bincount(inv, y) / cnt, np.bincount(inv, x) / cnt], 1))
    points = np.concatenate(pts)
    inner = ndimage.grey_erosion(labels, size=(1, 3, 3)) == ndimage.grey_dilation(labels, size=(1, 3, 3))
    image = (0.1 + ndimage.gaussian_filter(((labels > 0) & inner).astype(np.float32), sigma=(0, 1.0, 1.0))
             + rng.normal(0.0, noise, labels.shape)).astype(np.float32)
    log.info("simulated colony: %d frames, %d cells, %d divisions", n_frames, lineage.shape[0],
             int(np.count_nonzero(lineage[:, 3])) // 2)
    return SimulatedMovie(image=image, labels=labels, truth=labels.copy(), points=points,
                          point_labels=id_all, lineage=lineage, axes="TYX")
