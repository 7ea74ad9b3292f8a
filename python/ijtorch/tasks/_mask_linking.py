"""Frame-to-frame linking of label masks: overlap-, shape- and motion-aware costs, divisions and
merges from masks, every scale estimated from the movie (used by :func:`ijtorch.tasks.linking.track`).

For each pair of consecutive frames:

1. **Motion** (all frame pairs at once, :mod:`._mask_motion`). Masks of frame t are compared with
   frame t+1 after shifting each object by the displacement predicted from its neighbours (the
   median displacement of the ``motion_neighbours``
   nearest *confident* links, the object itself left out). Confident links are mutual best
   overlaps (IoU ≥ 0.3, area ratio 0.7–1.4); the prediction is refined twice, so a colony that
   expands (cells at its edge moving furthest) is followed. A local affine motion fitted to the
   2·``motion_neighbours`` nearest confident links (ridge-regularised) is used instead of the median,
   or no local motion at all, where it predicts the confident links better (left-one-out). When the
   foregrounds of the two frames hardly overlap (a stage jump), a global shift from the
   cross-correlation of the foregrounds comes first. Without motion compensation the prediction is zero.
2. **Link cost** of object i at t to j at t+1, a sum of squared standardised residuals:
   ``(r/σ_d)² + ((log(aⱼ/aᵢ) − g)/σ_a)² + ((1 − IoU)/σ_o)² + e·(Δθ/σ_θ)²`` with ``r`` the
   centroid residual after the predicted motion, ``g`` the typical log growth of the area per frame,
   IoU that of the shifted mask i with mask j (as TrackMate's overlap tracker), ``Δθ`` the angle
   between the long axes (second moments, 2-D and 3-D) and ``e`` the smaller elongation
   ``1 − √(λ₂/λ₁)`` of the two (orientation counts only for elongated objects). The size, overlap and
   orientation terms pass through a Cauchy loss (``9·log(1 + z²/9)``), so one outlying feature (an
   occluded or mis-segmented mask) does not veto a link on its own.
3. **Division** of a mother m into d₁, d₂ (both partly covered by m's shifted mask or near its
   predicted centre): the same terms for m against the union d₁ ∪ d₂ (area sum, IoU with the union,
   area-weighted centroid), with ``Δθ`` the angle between m's long axis and the line d₁ → d₂ (a rod
   divides across its middle, its daughters lie on its axis); the area term stays quadratic: the
   area sum is what tells a division from a link plus a neighbour. **Merges** likewise, two objects
   at t against one at t+1, when enabled.
4. **Assignment.** Leaving an object unlinked costs ``max_cost / 2``; links, divisions and merges
   with a cost below their alternatives are chosen jointly by one integer program (HiGHS, through
   ``scipy.optimize.milp``; each object used at most once as a source and once as a target; groups of
   objects without a division or merge candidate are one sparse LAP; of the others, only those whose
   linear relaxation is fractional reach the integer program, :mod:`._mask_assign`). Objects left over on both sides get a second
   chance among themselves with a 4× wider gate (the tail of the cost distribution: the fastest
   cells at a colony's edge).

The scales ``σ_d, g, σ_a, σ_o, σ_θ`` come from the confident links of the whole movie (robust:
medians and MADs) unless given in :class:`~ijtorch.tasks.linking.TrackingParams`; ``max_cost`` is
the χ² quantile at 1 − 10⁻⁶ for the number of terms. Everything estimated is returned and recorded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ._mask_assign import _assign, _pair_groups, _used
from ._mask_motion import MoviePixels, _unravel, label_runs, motion

log = logging.getLogger(__name__)

__all__ = ["MaskLinks", "link_masks", "object_shapes"]



@dataclass(frozen=True)
class MaskLinks:
    """Frame-to-frame edges from :func:`link_masks` and the values it estimated."""

    src: np.ndarray
    dst: np.ndarray
    cost: np.ndarray
    kind: np.ndarray  # 0 link, 2 split, 3 merge (as linking.EDGE_*)
    estimated: dict


def object_shapes(lab: np.ndarray | None, labels: np.ndarray, scale: np.ndarray, *,
                  runs: tuple | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Long axis (unit vector, x y z), length (√12·σ along the axis) and elongation of each object.

    ``lab`` is one frame (YX or ZYX), ``labels`` the sorted object labels of that frame, ``scale``
    the pixel size per axis of ``lab`` (physical units); ``runs`` = the objects' runs of pixels along
    the last axis if already known: (object = index into ``labels``, coordinates of the first pixel
    per axis, length).
    """
    n = labels.size
    if runs is None:
        first, last, value = label_runs(lab)
        runs = (np.searchsorted(labels, value), _unravel(first, np.asarray(lab.shape)), last - first + 1)
    obj, first, length = runs
    d = len(first)
    # moments in pixel units summed run by run in closed form (exact integers): a run along the last
    # axis from x0 to x1 has Σx = (x0 + x1)·len / 2 and Σx² = S(x1) − S(x0 − 1), S(k) = k(k+1)(2k+1)/6
    x0 = first[-1]
    x1 = x0 + length - 1
    sq = lambda k: k * (k + 1) * (2 * k + 1) // 6
    run_sum = [c * length for c in first[:-1]] + [(x0 + x1) * length // 2]
    cnt = np.maximum(np.bincount(obj, length, minlength=n), 1)
    mean = [np.bincount(obj, v, minlength=n) / cnt for v in run_sum]
    cov = np.zeros((n, 3, 3))
    for a in range(d):
        for b in range(a, d):
            if b < d - 1:
                prod = first[a] * first[b] * length
            elif a < d - 1:
                prod = first[a] * run_sum[-1]
            else:
                prod = sq(x1) - sq(x0 - 1)
            v = (np.bincount(obj, prod, minlength=n) / cnt - mean[a] * mean[b]) * (scale[a] * scale[b])
            # axes of lab are (z,) y, x; store the matrix in x, y, z order
            ia, ib = d - 1 - a, d - 1 - b
            cov[:, ia, ib] = cov[:, ib, ia] = v
    # a pixel is a unit square/cube, not a point: add its own variance so that 1-pixel objects are round
    for a in range(d):
        cov[:, d - 1 - a, d - 1 - a] += scale[a] ** 2 / 12
    w, vec = np.linalg.eigh(cov[:, :d, :d])
    axis = np.zeros((n, 3))
    axis[:, :d] = vec[:, :, -1]
    lam1 = np.maximum(w[:, -1], 1e-12)
    lam2 = np.maximum(w[:, -2], 0.0)
    return axis, np.sqrt(12 * lam1), 1.0 - np.sqrt(lam2 / lam1)


def _global_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer shift (per axis of the arrays) that best aligns the foreground of ``a`` onto ``b``
    (peak of the FFT cross-correlation, zero-padded so that shifts do not wrap)."""
    from scipy import fft

    # on a grid of at most ~96 cells per axis (foreground fraction per block): the local motion
    # estimate refines it afterwards
    f = max(1, int(np.ceil(max(a.shape) / 96)))
    # per axis, never coarser than a quarter of the axis (a 3-D stack with a few planes keeps them)
    fs = np.array([max(1, min(f, n // 4)) for n in a.shape])
    if fs.max() > 1:  # foreground fraction of blocks
        crop = tuple(slice(0, (n // b) * b) for n, b in zip(a.shape, fs))
        new = [n // b for n, b in zip(a.shape, fs)]
        axes = tuple(range(1, 2 * len(new), 2))
        blocks = lambda x: (x[crop] > 0).reshape([v for n, b in zip(new, fs) for v in (n, b)]).sum(axis=axes, dtype=np.int32)
        fa, fb = blocks(a).astype(np.float32), blocks(b).astype(np.float32)
    else:
        fa = (a > 0).astype(np.float32)
        fb = (b > 0).astype(np.float32)
    shape = [fft.next_fast_len(2 * n) for n in fa.shape]
    corr = fft.irfftn(fft.rfftn(fb, shape) * np.conj(fft.rfftn(fa, shape)), shape)
    peak = np.array(np.unravel_index(int(np.argmax(corr)), corr.shape))
    if corr.flat[0] >= corr[tuple(peak)] * (1 - 1e-6):  # no better alignment than none
        return np.zeros(a.ndim, np.int64)
    shape = np.asarray(shape)
    return (fs * np.where(peak > shape // 2, peak - shape, peak)).astype(np.int64)


def _angle(u, v):
    """Angle between undirected axes, in [0, π/2]."""
    nu = np.linalg.norm(u, axis=-1); nv = np.linalg.norm(v, axis=-1)
    c = np.abs(np.sum(u * v, axis=-1)) / np.maximum(nu * nv, 1e-12)
    return np.arccos(np.clip(c, 0.0, 1.0))


def link_masks(det, params, progress=None) -> MaskLinks:
    """Link consecutive frames of a label movie (see the module docstring).

    ``det`` is a :class:`~ijtorch.tasks.linking.Detections` with ``labels``; ``params`` a
    :class:`~ijtorch.tasks.linking.TrackingParams`.
    """
    from ..core.progress import ProgressEvent, emit

    s = det.spots
    lab = det.labels
    ndim = det.ndim
    cal = det.calibration
    scale = np.array([cal.voxel_depth, cal.pixel_height, cal.pixel_width][3 - ndim:], np.float64)  # lab axis order
    frame, area = s["frame"], s["area"].astype(np.float64)
    pos = np.stack([s["x"], s["y"], s["z"]], axis=1)
    nf = det.n_frames
    starts = np.searchsorted(frame, np.arange(nf + 1))
    mp = MoviePixels(lab, frame, s["label"], starts)
    axis, length, elong = object_shapes(None, np.arange(len(frame)), scale, runs=mp.runs)
    radius = float(np.median(s["radius"])) if len(frame) else 1.0
    px = float(scale.max())
    # ---- all frame pairs at once: overlaps after the predicted motion, confident links
    mo = motion(mp, pos, area, ndim, scale, params, lambda t: _global_shift(lab[t], lab[t + 1]), progress)
    ci, cj = mo.i[mo.conf], mo.j[mo.conf]
    r = pos[cj] - pos[ci] - mo.v[ci]
    el = np.minimum(elong[ci], elong[cj]) > 0.3
    cat = {"r": np.sum(r * r, axis=1), "raw": np.linalg.norm(pos[cj] - pos[ci], axis=1),
           "dlog": np.log(mo.ratio[mo.conf]), "iou": mo.iou[mo.conf], "dth": _angle(axis[ci], axis[cj])[el]}
    n_conf = int(cat["r"].size)
    est = _estimate(params, cat, ndim, radius, px)
    est["n_confident_links"] = n_conf
    sd, g, sa, so = (est[k] for k in ("displacement_sigma", "size_growth", "size_sigma", "overlap_sigma"))
    sth = np.deg2rad(est["orientation_sigma"])
    max_cost = est["max_cost"]
    alt = max_cost / 2
    max_d = est["max_distance"]
    # ---- all frame pairs at once (global spot indices; object i of frame t only meets frame t + 1)
    n = len(frame)
    pred = pos + mo.v
    # candidates: overlapping after the shift, or within max_distance of the predicted position. A
    # pair that does not overlap can only matter within the reach of the wide gate (its cost is at
    # least (r/σ_d)², the other terms are ≥ 0) or of a division/merge group (half the longest object
    # + 2σ_d): the search stops there (the same candidates that matter, fewer that do not)
    reach = max(2 * np.sqrt(max_cost) * sd, (float(length.max(initial=0)) / 2 + 2 * sd))
    ki, kj = _near(pred, pos, frame, starts, min(max_d, reach * (1 + 1e-6)))
    key = _unique(np.concatenate([mo.i * n + mo.j, ki * n + kj]))
    ci, cj = key // n, key % n
    ov = np.zeros(key.size)
    ov[np.searchsorted(key, mo.i * n + mo.j)] = mo.o
    u_iou = ov / (area[ci] + area[cj] - ov)
    r = pos[cj] - pred[ci]
    c = (np.sum(r * r, axis=1) / sd ** 2 + _robust(((np.log(area[cj] / area[ci]) - g) / sa) ** 2)
         + _robust(((1 - u_iou) / so) ** 2)
         + np.minimum(elong[ci], elong[cj]) * _robust((_angle(axis[ci], axis[cj]) / sth) ** 2))
    ok = c < max_cost
    L_i, L_j, L_c = ci[ok], cj[ok], c[ok]
    # ---- divisions / merges: groups of two on one side
    shape = (pos, pred, area, axis, elong, g, sd, sa, so, sth)
    dist = np.linalg.norm(r, axis=1)
    D = []
    if params.allow_splitting:  # j partly covered by the shifted mother or near her predicted centre
        near = (ov / area[cj] >= 0.2) | (dist <= length[ci] / 2 + 2 * sd)
        D.append(_groups_cost(*_pair_groups(ci[near], cj[near], ov[near]), True, *shape))
    if params.allow_merging:
        near = (ov / area[ci] >= 0.2) | (dist <= length[cj] / 2 + 2 * sd)
        D.append(_groups_cost(*_pair_groups(cj[near], ci[near], ov[near]), False, *shape))
    D_one, D_x, D_y, D_c, D_split = (np.concatenate([d[k] for d in D]) if D else
                                     np.zeros(0, (np.int64, np.int64, np.int64, np.float64, bool)[k]) for k in range(5))
    keep = D_c < max_cost
    # frame pair by frame pair, divisions before merges (the order of the variables of the integer program)
    t_side = np.where(D_split, D_one, D_x)
    order = np.lexsort((~D_split, frame[t_side]))
    order = order[keep[order]]
    D_one, D_x, D_y, D_c, D_split = D_one[order], D_x[order], D_y[order], D_c[order], D_split[order]
    emit(progress, ProgressEvent("link", 2 * (nf - 1), 2 * (nf - 1)))
    wide = c < 4 * max_cost
    ci, cj, cc = ci[wide], cj[wide], c[wide]
    sel_l, sel_d = _assign(n, n, L_i, L_j, L_c, D_one, D_x, D_y, D_c, D_split, alt)
    # Second chance for what is left on both sides (fast cells at a colony's edge, the tail of the
    # cost distribution): the same choice among the leftovers only, with a 4x wider gate.
    used_a, used_b = _used(n, n, L_i[sel_l], L_j[sel_l], D_one[sel_d], D_x[sel_d], D_y[sel_d], D_split[sel_d])
    lw = ~used_a[ci] & ~used_b[cj]
    if lw.any():
        a_first = np.where(D_split, D_one, D_x); a_second = np.where(D_split, D_one, D_y)
        b_first = np.where(D_split, D_x, D_one); b_second = np.where(D_split, D_y, D_one)
        dw = ~sel_d & ~used_a[a_first] & ~used_a[a_second] & ~used_b[b_first] & ~used_b[b_second]
        s2_l, s2_d = _assign(n, n, ci[lw], cj[lw], cc[lw], D_one[dw], D_x[dw], D_y[dw], D_c[dw],
                             D_split[dw], 4 * alt)
        L_i = np.concatenate([L_i[sel_l], ci[lw][s2_l]]); L_j = np.concatenate([L_j[sel_l], cj[lw][s2_l]])
        L_c = np.concatenate([L_c[sel_l], cc[lw][s2_l]]); sel_l = np.ones(L_i.size, bool)
        sel_d = sel_d.copy(); sel_d[np.flatnonzero(dw)[s2_d]] = True
    src, dst, cost, kind = [L_i[sel_l]], [L_j[sel_l]], [L_c[sel_l]], [np.zeros(int(sel_l.sum()), np.int8)]
    m = sel_d & D_split
    n_div = int(m.sum())
    for d in (D_x, D_y):
        src.append(D_one[m]); dst.append(d[m]); cost.append(D_c[m] / 2); kind.append(np.full(n_div, 2, np.int8))
    m = sel_d & ~D_split
    n_merge = int(m.sum())
    for d in (D_x, D_y):
        src.append(d[m]); dst.append(D_one[m]); cost.append(D_c[m] / 2); kind.append(np.full(n_merge, 3, np.int8))
    cat_i = lambda x, dt: np.concatenate(x).astype(dt) if x else np.zeros(0, dt)
    est["n_divisions"] = n_div
    est["n_merges"] = n_merge
    log.info("mask linking: %d confident links; sigma_d %.3g, growth %.3g, sigma_a %.3g, sigma_o %.3g, "
             "sigma_theta %.3g deg, max cost %.3g, max distance %.3g; %d divisions, %d merges",
             n_conf, sd, g, sa, so, est["orientation_sigma"], max_cost, max_d, n_div, n_merge)
    return MaskLinks(cat_i(src, np.int64), cat_i(dst, np.int64), cat_i(cost, np.float64), cat_i(kind, np.int8), est)


def _unique(a: np.ndarray) -> np.ndarray:
    """np.unique of integers by sorting (np.unique's hash table is several times slower on 10⁵ keys)."""
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if a.size else a


def _robust(z2: np.ndarray, c: float = 9.0) -> np.ndarray:
    """Cauchy loss of a squared standardised residual: z² near 0, c·log(1 + z²/c) beyond ~3σ, so one
    outlying feature (an occluded or mis-segmented mask) does not veto a link on its own."""
    return c * np.log1p(z2 / c)


def _near(pred, pos, frame, starts, r):
    """Pairs (i, j) with object j of frame t + 1 within ``r`` of the predicted position of object i of
    frame t, for all frame pairs at once: one tree per side, frames far apart along a fourth axis."""
    src = np.arange(starts[max(len(starts) - 2, 0)])  # objects of the frames that have a next frame
    dst = np.arange(starts[1] if len(starts) > 1 else 0, len(frame))
    if src.size == 0 or dst.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    both = np.concatenate([pred[src], pos[dst]])
    sep = 2.0 * (np.ptp(both, axis=0).max() + r + 1.0)
    rec = cKDTree(np.c_[pred[src], (frame[src] + 1) * sep]).sparse_distance_matrix(
        cKDTree(np.c_[pos[dst], frame[dst] * sep]), r, output_type="ndarray")
    return src[rec["i"]], dst[rec["j"]]


def _groups_cost(one, two1, two2, o1, o2, split, pos, pred, area, axis, elong, g, sd, sa, so, sth) -> tuple:
    """Cost of each division (``split``: mother ``one`` at t, daughters ``two1``, ``two2`` at t+1) or
    merge (parents ``two1``, ``two2`` at t, child ``one`` at t+1): the link terms of the mother (child)
    against the union of the pair. Returns (one, two1, two2, cost, split)."""
    aU = area[two1] + area[two2]
    if split:
        cU = (area[two1, None] * pos[two1] + area[two2, None] * pos[two2]) / aU[:, None]
        rr = cU - pred[one]
        dl = np.log(aU / area[one]) - g
    else:
        cU = (area[two1, None] * pred[two1] + area[two2, None] * pred[two2]) / aU[:, None]
        rr = pos[one] - cU
        dl = np.log(area[one] / aU) - g
    iouU = (o1 + o2) / (area[one] + aU - o1 - o2)
    th = _angle(axis[one], pos[two2] - pos[two1])
    # the area sum is what tells a division from a link plus a neighbour: kept quadratic
    cd = (np.sum(rr * rr, axis=1) / sd ** 2 + (dl / sa) ** 2 + _robust(((1 - iouU) / so) ** 2)
          + elong[one] * _robust((th / sth) ** 2))
    return one, two1, two2, cd, np.full(one.size, split)


def _estimate(params, cat, ndim, radius, px) -> dict:
    """Cost scales and gates from the confident links (medians, MADs), unless given in params."""
    from scipy.stats import chi2

    enough = cat["r"].size >= 10
    med_chi = chi2.median(ndim)
    out = {}

    def pick(name, value):
        given = getattr(params, name)
        out[name] = float(given) if given is not None else float(value)
        out[f"{name}_estimated"] = given is None

    sd = np.sqrt(np.median(cat["r"]) / med_chi) if enough else radius / 2
    pick("displacement_sigma", max(sd, 0.25 * px))
    g = float(np.median(cat["dlog"])) if enough else 0.0
    pick("size_growth", g)
    dev = np.abs(cat["dlog"] - g)
    sa = max(1.4826 * float(np.median(dev)), float(np.quantile(dev, 0.9)) / 1.645) if enough else 0.2
    pick("size_sigma", max(sa, 0.02))
    so = float(np.median(1 - cat["iou"])) / 0.6745 if enough else 0.3
    pick("overlap_sigma", max(so, 0.05))
    sth = float(np.median(cat["dth"])) / 0.6745 if cat["dth"].size >= 10 else np.deg2rad(20)
    pick("orientation_sigma", np.rad2deg(max(sth, np.deg2rad(2))))  # degrees
    pick("max_cost", chi2.ppf(1 - 1e-6, ndim + 3))
    raw = cat["raw"]
    md = max(1.5 * float(np.quantile(raw, 0.999)) + 4 * out["displacement_sigma"], radius) if enough else 2 * radius
    pick("max_distance", md)
    return out
