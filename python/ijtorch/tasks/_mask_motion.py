"""Step 1 of mask linking (:mod:`ijtorch.tasks._mask_linking`) for all frame pairs of a movie at once:
the overlaps of every object with the objects of the next frame after shifting it by its predicted
motion, the confident links, and the motion predicted from the confident neighbours, refined twice.

Every array here is indexed by the movie's detections (their global index), so each round is a
handful of numpy calls for the whole movie instead of a few hundred per frame pair (the calls, not
the pixels, were most of the time on dense colonies). Object i of frame t is only ever compared with
frame t + 1, so the movie's pairs stay independent problems. Masks are kept as runs of pixels along
rows (about 9 pixels per run on rod-shaped cells): an overlap is the intersection of a shifted run
with the runs of the next frame, and shapes are moments summed run by run in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

_CONF_IOU = 0.3


class MoviePixels:
    """The foreground of a label movie as runs of pixels of one object along a row (the last axis),
    grouped by detection (global index): overlaps are intersections of runs, several times fewer
    than the pixels."""

    def __init__(self, lab: np.ndarray, frame: np.ndarray, labels: np.ndarray, starts: np.ndarray):
        nf = lab.shape[0]
        n = len(frame)
        self.shape = np.asarray(lab.shape[1:])
        self.row_len = int(lab.shape[-1])
        plane = int(np.prod(self.shape))
        # runs of the whole stack (frame-major, so they come in frame order): flat index of their
        # first and last pixel
        self.run_start, self.run_end, value = label_runs(lab)
        run_frame = self.run_start // plane
        width = int(labels.max()) + 1 if n else 1
        # labels sorted within each frame (detect_labels): (frame, label) keys are sorted
        frame_label = frame * width + labels.astype(np.int64)
        self.run_obj = np.searchsorted(frame_label, run_frame * width + value)
        length = self.run_end - self.run_start + 1
        self.frame_pixels = np.bincount(run_frame, length, minlength=nf).astype(np.int64)  # foreground per frame
        self.run_coords = _unravel(self.run_start % plane, self.shape)  # of the first pixel, within the frame
        self.runs = (self.run_obj, self.run_coords, length)  # for object_shapes
        self.frame, self.starts = frame, starts
        self.n_src = int(np.searchsorted(run_frame, nf - 1))  # runs of the frames that have a next frame
        # (object of t, object of t+1) pairs numbered compactly, pair after pair (small keys sort
        # faster): object i of frame t owns the keys base[i] .. base[i] + count[t+1] - 1
        count = np.diff(starts)
        per_obj = np.append(count[1:], 0)[frame]
        self.base = np.concatenate([[0], np.cumsum(per_obj)[:-1]]).astype(np.int64)

    def overlaps(self, shift_px: np.ndarray, objects: np.ndarray | None = None):
        """(i, j, overlap in pixels), sorted by (i, j): object i (of frame t, shifted by ``shift_px[i]``,
        axis order of the stack) overlapping object j of frame t + 1; only ``objects`` if given."""
        sel = slice(0, self.n_src) if objects is None else np.flatnonzero(objects[self.run_obj[:self.n_src]])
        obj = self.run_obj[sel]
        # the shifted run in the next frame, clipped to it: row (counted through the stack) and x range
        x0 = self.run_coords[-1][sel] + shift_px[:, -1][obj]
        x1 = x0 + (self.run_end[sel] - self.run_start[sel])
        ok = (x1 >= 0) & (x0 < self.row_len)
        row = self.frame[obj] + 1
        for ax in range(self.shape.size - 1):
            c = self.run_coords[ax][sel] + shift_px[:, ax][obj]
            ok &= (c >= 0) & (c < self.shape[ax])
            row = row * self.shape[ax] + c
        obj, row = obj[ok], row[ok]
        first = row * self.row_len + np.maximum(x0[ok], 0)
        last = row * self.row_len + np.minimum(x1[ok], self.row_len - 1)
        # the runs of the next frame it meets: in its row, from the first one ending at or after its
        # start to the last one starting at or before its end
        lo = np.searchsorted(self.run_end, first)
        n_hit = np.maximum(np.searchsorted(self.run_start, last, side="right") - lo, 0)
        src = np.repeat(np.arange(obj.size), n_hit)
        tgt = np.arange(src.size) - np.repeat(np.cumsum(n_hit) - n_hit - lo, n_hit)
        length = np.minimum(self.run_end[tgt], last[src]) - np.maximum(self.run_start[tgt], first[src]) + 1
        # sum the lengths per (object, object of the next frame): one sort of the keys with the length
        # packed into their low bits (a plain sort is ~10x faster than a stable argsort)
        i, j = obj[src], self.run_obj[tgt]
        bits = max(self.row_len.bit_length(), 1)
        packed = np.sort(((self.base[i] + (j - self.starts[self.frame[j]])) << bits) + length)
        key = packed >> bits
        if key.size == 0:
            return key, key, np.zeros(0)
        head = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        o = np.add.reduceat(packed & ((1 << bits) - 1), head)
        key = key[head]
        i = np.searchsorted(self.base, key, side="right") - 1  # the last of equal bases: the one with keys
        return i, self.starts[self.frame[i] + 1] + (key - self.base[i]), o.astype(np.float64)


def label_runs(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal non-zero labels along the last axis of ``lab``: flat index of the first and of the
    last pixel of each run (sorted) and its label."""
    flat = lab.ravel()
    if flat.size == 0:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, lab.dtype)
    # a run starts where the label changes along the raveled array or a row starts; one pass
    change = flat[1:] != flat[:-1]  # change[k]: a run starts at k + 1
    change[lab.shape[-1] - 1::lab.shape[-1]] = True
    start = np.r_[0, np.flatnonzero(change) + 1]
    end = np.append(start[1:], flat.size) - 1
    value = flat[start]
    fg = value != 0
    return start[fg], end[fg], value[fg]


def _unravel(flat: np.ndarray, shape: np.ndarray) -> tuple:
    """np.unravel_index for indices within one frame (integer division in 32 bits where it fits: faster)."""
    dt = np.int32 if int(np.prod(shape)) < 2 ** 31 else np.int64
    rest = flat.astype(dt)
    out = []
    for size in shape[:0:-1]:
        q = rest // dt(size)
        out.append(rest - q * dt(size))
        rest = q
    out.append(rest)
    return tuple(c.astype(np.int64) for c in out[::-1])


@dataclass
class Motion:
    """Result of :func:`motion`: overlaps (global indices, sorted), IoU, area ratio, the confident
    links and each object's predicted displacement ``v`` (n, 3; x, y, z)."""

    i: np.ndarray
    j: np.ndarray
    o: np.ndarray
    iou: np.ndarray
    ratio: np.ndarray
    conf: np.ndarray
    v: np.ndarray


def motion(mp: MoviePixels, pos: np.ndarray, area: np.ndarray, ndim: int, scale: np.ndarray, params,
           global_shift, progress=None) -> Motion:
    """Overlaps, confident links and predicted motion of every frame pair (see the module docstring of
    :mod:`ijtorch.tasks._mask_linking`); ``global_shift(t)`` gives the stage shift of pair t."""
    from ..core.progress import ProgressEvent, emit

    frame, starts = mp.frame, mp.starts
    n = len(frame)
    nf = len(starts) - 1
    n_pairs = max(nf - 1, 0)
    count = np.diff(starts)
    valid = (count[:-1] > 0) & (count[1:] > 0) if n_pairs else np.zeros(0, bool)
    zero = np.zeros((n, ndim), np.int64)
    last = (zero, *mp.overlaps(zero))
    v = np.zeros((n, 3))
    if params.motion_compensation and n_pairs:
        # the foregrounds hardly overlap (a stage jump or drift): one global shift for the pair first
        covered = np.bincount(frame[last[1]], weights=last[3], minlength=nf)[:n_pairs]
        jumps = np.flatnonzero(valid & (covered < 0.5 * mp.frame_pixels[:n_pairs]))
        for t in jumps:
            v[starts[t]:starts[t + 1], :ndim] = (global_shift(t) * scale)[::-1]
    v_global = v.copy()
    active = valid.copy()  # pairs still refining their prediction
    rounds = 3 if params.motion_compensation else 1
    last_keys, last_n_conf = np.zeros(0, np.int64), np.zeros(n_pairs, np.int64)
    for it in range(rounds):
        shift = np.rint(v[:, :ndim][:, ::-1] / scale).astype(np.int64)  # (z,) y, x pixels
        last = _update(mp, shift, last)
        _, i, j, o = last
        iou = o / (area[i] + area[j] - o)
        ratio = area[j] / area[i]
        conf = _mutual_best(i, j, iou, n) & (iou >= _CONF_IOU) & (ratio > 0.7) & (ratio < 1.4)
        emit(progress, ProgressEvent("link", (it + 1) * n_pairs // rounds, 2 * n_pairs))
        if it == rounds - 1:
            break
        ci, cj = i[conf], j[conf]
        n_conf = np.bincount(frame[ci], minlength=nf)[:n_pairs]
        active &= n_conf >= 3
        keys = ci * n + cj
        if it > 0:  # a pair whose confident links did not change would predict the same motion again
            new_link = np.bincount(frame[ci[~np.isin(keys, last_keys)]], minlength=nf)[:n_pairs]
            active &= (n_conf != last_n_conf) | (new_link > 0)
        last_keys, last_n_conf = keys, n_conf
        if not active.any():
            break
        keep = active[frame[ci]]
        ci, cj = ci[keep], cj[keep]
        d = pos[cj] - pos[ci]
        objects = np.flatnonzero(active[np.minimum(frame, n_pairs - 1)] & (frame < n_pairs))
        med, aff = _predict(pos, frame, objects, ci, d, n_conf, params.motion_neighbours)
        # neighbours' motion predicts only where motion is shared (a colony, a flow), not for
        # independent random walkers: per pair, keep the prediction (median or local affine motion)
        # that does best on its confident links, each predicted without itself
        grp = frame[ci]
        err = np.full((n_pairs, 3), np.inf)
        for c, cand in enumerate((v_global, med, aff)):
            err[:, c] = _group_median(np.sum((d - cand[ci]) ** 2, 1), grp, n_pairs)
        err[n_conf < 30, 2] = np.inf  # affine: enough links only
        choice = np.argmin(err, axis=1)[np.minimum(frame, n_pairs - 1)]
        moving = np.zeros(n, bool)
        moving[objects] = True
        v = np.where((moving & (choice == 0))[:, None], v_global,
                     np.where((moving & (choice == 1))[:, None], med, np.where(moving[:, None], aff, v)))
    return Motion(i, j, o, iou, ratio, conf, v)


def _update(mp: MoviePixels, shift: np.ndarray, last: tuple) -> tuple:
    """Overlaps for ``shift``, recomputing only objects whose shift changed since ``last`` = (shift,
    i, j, overlap) (an object's overlaps depend on its own shift only)."""
    prev, i, j, o = last
    changed = np.any(shift != prev, axis=1)
    if not changed.any():
        return (shift, i, j, o)
    ni, nj, no = mp.overlaps(shift, changed)
    keep = ~changed[i]
    i, j, o = np.concatenate([i[keep], ni]), np.concatenate([j[keep], nj]), np.concatenate([o[keep], no])
    order = np.lexsort((j, i))
    return (shift, i[order], j[order], o[order])


def _mutual_best(i, j, score, n):
    """Pairs that are each other's best by ``score`` (higher is better)."""
    if i.size == 0:
        return np.zeros(0, bool)
    best_a = np.full(n, -np.inf); np.maximum.at(best_a, i, score)
    best_b = np.full(n, -np.inf); np.maximum.at(best_b, j, score)
    return (score >= best_a[i]) & (score >= best_b[j])


def _group_median(values, grp, n_groups):
    """np.median of ``values`` per group (NaN for an empty group)."""
    out = np.full(n_groups, np.nan)
    if values.size == 0:
        return out
    order = np.lexsort((values, grp))
    v, g = values[order], grp[order]
    first = np.searchsorted(g, np.arange(n_groups))
    cnt = np.bincount(g, minlength=n_groups)
    has = cnt > 0
    lo = first[has] + (cnt[has] - 1) // 2
    hi = first[has] + cnt[has] // 2
    out[has] = (v[lo] + v[hi]) / 2
    return out


def _predict(pos, frame, objects, conf_i, conf_disp, n_conf, k):
    """Two predictions of the displacement of ``objects`` from their confident neighbours in the same
    frame (not themselves): their median, and a local affine motion (ridge-regularised least squares,
    centred on the object, so that an expanding colony is extrapolated to its edge). Returns (n, 3)
    arrays (zero outside ``objects``)."""
    n = len(frame)
    med = np.zeros((n, 3)); aff = np.zeros((n, 3))
    kk_pair = np.minimum(2 * k + 1, n_conf)  # neighbours asked for in each pair (itself included)
    # one tree for the movie: frames far apart along a fourth axis, so neighbours come from one frame
    sep = 4.0 * (np.ptp(pos, axis=0).max() + 1.0)
    pts = np.c_[pos, frame * sep]
    kmax = int(kk_pair[frame[objects]].max())
    _, nb = cKDTree(pts[conf_i], balanced_tree=False, compact_nodes=False).query(pts[objects], k=kmax)  # faster to build and query here
    nb = nb.reshape(objects.size, kmax)
    kk = kk_pair[frame[objects]]
    for size in np.unique(kk):  # objects whose frame has the same number of confident neighbours
        rows = np.flatnonzero(kk == size)
        obj = objects[rows]
        nbr = nb[rows, :size]
        own = conf_i[nbr] == obj[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), size - 1)  # itself, else the farthest
        keep = np.ones(nbr.shape, bool)
        keep[np.arange(rows.size), drop] = False
        nb2 = nbr[keep].reshape(rows.size, size - 1)  # nearest first
        # the median of k values: the middle one(s) after a partition (as np.median, ~3x faster here)
        m = min(k, size - 1)
        near = np.partition(conf_disp[nb2[:, :k]], ((m - 1) // 2, m // 2), axis=1)[:, [(m - 1) // 2, m // 2]]
        med[obj] = (near[:, 0] + near[:, -1]) / 2
        # inputs: the spatial axes that vary (z only in 3-D: a constant input has no effect on the fit)
        d = 3 if np.ptp(pos[:, 2]) > 0 else 2
        X = pos[conf_i[nb2], :d] - pos[obj][:, None, :d]
        Y = conf_disp[nb2]
        Z = np.ones(X.shape[:2] + (d + 1,))
        Z[..., 1:] = X
        Zt = Z.transpose(0, 2, 1)
        lam = 0.5 * np.sum(X * X, axis=(1, 2)) / max(X.shape[1], 1)  # ridge ~ half the mean squared spread
        reg = np.zeros((1, d + 1, d + 1))
        reg[0, 1:, 1:] = np.eye(d)
        try:
            aff[obj] = np.linalg.solve(Zt @ Z + reg * (lam[:, None, None] + 1e-9), Zt @ Y)[:, 0, :]
        except np.linalg.LinAlgError:
            aff[obj] = med[obj]
    return med, aff
