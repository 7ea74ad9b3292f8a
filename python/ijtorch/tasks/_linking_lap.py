"""Centroid linking as TrackMate's LAP tracker (Jaqaman et al. 2008): the sparse LAP solver both LAPs
use, the gate estimated from the movie and the frame-to-frame LAP on centroid distances."""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from ..core.progress import ProgressEvent, emit
from ._linking_model import EDGE_LINK

__all__ = ["solve_sparse_lap"]


def _penalty(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    if weight == 0:
        return np.ones(a.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 3.0 * weight * np.abs(a - b) / (a + b)
    return (1.0 + np.nan_to_num(p, nan=0.0)) ** 2


def _rho(mother: np.ndarray, d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        r = mother / (d1 + d2)
        rho = np.where(r >= 1, r, 1.0 / (r * r))
    return np.where(np.isfinite(rho), rho, 1.0)


def _pairs(tree_a: cKDTree, tree_b: cKDTree, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec = tree_a.sparse_distance_matrix(tree_b, r, output_type="ndarray")
    return rec["i"].astype(np.int64), rec["j"].astype(np.int64), rec["v"].astype(np.float64)


def _estimate_max_distance(pos: np.ndarray, starts: np.ndarray, n_frames: int, ndim: int) -> float:
    """Gate for centroid linking from the movie: displacement scale of unambiguous links (mutual nearest
    neighbours whose nearest is under half the second nearest), χ² quantile at 1e-4, × 1.25."""
    from scipy.stats import chi2

    d2, nn_within = [], []
    for t in range(n_frames - 1):
        a, b = pos[starts[t]:starts[t + 1], :ndim], pos[starts[t + 1]:starts[t + 2], :ndim]
        if len(a) < 1 or len(b) < 2:
            continue
        dist, j = cKDTree(b).query(a, k=2)
        back = cKDTree(a).query(b[j[:, 0]])[1]
        ok = (back == np.arange(len(a))) & (dist[:, 0] < 0.5 * dist[:, 1])
        d2.append(dist[ok, 0] ** 2)
        if len(a) >= 2:
            nn_within.append(cKDTree(a).query(a, k=2)[0][:, 1])
    d2 = np.concatenate(d2) if d2 else np.zeros(0)
    if d2.size >= 10:
        sigma = np.sqrt(np.median(d2) / chi2.median(ndim))
        return float(max(1.25 * sigma * np.sqrt(chi2.ppf(1 - 1e-4, ndim)), 1e-6))
    nn = np.concatenate(nn_within) if nn_within else np.zeros(0)
    return float(np.median(nn) / 2) if nn.size else 15.0


def _link_distance(detections, params, max_d, pos, area, starts, succ, progress):
    """First LAP on centroid distances (TrackMate's LAP tracker); fills ``succ``, returns the edges."""
    n = len(detections)
    link_cost = np.zeros(n)
    trees: dict[int, cKDTree] = {}

    def tree(t: int) -> cKDTree:
        if t not in trees:
            trees[t] = cKDTree(pos[starts[t]:starts[t + 1]])
        return trees[t]

    for t in range(detections.n_frames - 1):
        a0, b0 = starts[t], starts[t + 1]
        if a0 == b0 or b0 == starts[t + 2]:
            continue
        i, j, d = _pairs(tree(t), tree(t + 1), max_d)
        trees.pop(t, None)
        if i.size == 0:
            continue
        c = d * d * _penalty(area[a0 + i], area[b0 + j], params.area_weight)
        alt = params.alternative_cost_factor * max(float(c.max()), max_d ** 2 * 1e-6)
        match = solve_sparse_lap(i, j, c, b0 - a0, starts[t + 2] - b0, row_alt=alt, col_alt=alt)
        ok = match >= 0
        src = a0 + np.flatnonzero(ok)
        succ[src] = b0 + match[ok]
        lut = coo_matrix((c, (i, j)), shape=(b0 - a0, starts[t + 2] - b0)).tocsr()
        link_cost[src] = np.asarray(lut[np.flatnonzero(ok), match[ok]]).ravel()
        if t % 20 == 0:
            emit(progress, ProgressEvent("link", t + 1, detections.n_frames - 1))
    trees.clear()
    pred = np.full(n, -1, np.int64)
    has = succ >= 0
    pred[succ[has]] = np.flatnonzero(has)
    return (np.flatnonzero(has), succ[has], link_cost[has], np.full(int(has.sum()), EDGE_LINK, np.int8), pred)


# ------------------------------------------------------------------------ sparse LAP solver
# Sparse linear assignment problems for tracking (Jaqaman et al., Nat. Methods 5:695, 2008).
#
# Both LAPs of the tracker are solved as one augmented, *sparse* cost matrix::
#
#             targets          no-link
#     rows  [ C (n x m)      | D (n x n, diagonal) ]
#     birth [ B (m x m diag) | C' (m x n)          ]
#
# ``C`` holds the gated candidate costs, ``D``/``B`` the alternative ("no link") costs and ``C'``
# is the transposed sparsity pattern of ``C`` at the smallest cost, so that every link chosen in
# ``C`` leaves its two dummies a partner. The matrix always has a full matching (the diagonals), so
# :func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` (LAPJVsp) solves it in roughly
# linear time in the number of candidate pairs. All costs are shifted by a constant (> 0) because
# the sparse solver ignores explicit zeros; every full matching has the same size, so the shift does
# not change the optimum.


def solve_sparse_lap(rows: np.ndarray, cols: np.ndarray, costs: np.ndarray, n_rows: int, n_cols: int, *,
                     row_alt: np.ndarray | float, col_alt: np.ndarray | float) -> np.ndarray:
    """Solve a gated assignment with per-row and per-column "no link" costs.

    Parameters
    ----------
    rows, cols, costs
        Candidate pairs ``(rows[k], cols[k])`` with finite, non-negative ``costs[k]``; each pair at
        most once.
    n_rows, n_cols
        Number of row and column objects.
    row_alt, col_alt
        Cost of leaving a row (column) object unassigned; scalars or per-object arrays.

    Returns
    -------
    ndarray of int64, shape (n_rows,)
        Column assigned to each row, or -1 for "no link".
    """
    rows = np.asarray(rows, np.int64)
    cols = np.asarray(cols, np.int64)
    costs = np.asarray(costs, np.float64)
    out = np.full(n_rows, -1, np.int64)
    if rows.size == 0 or n_rows == 0 or n_cols == 0:
        return out
    # Only objects with at least one candidate enter the problem; the rest are trivially unlinked.
    ur, r_idx = np.unique(rows, return_inverse=True)
    uc, c_idx = np.unique(cols, return_inverse=True)
    n, m = ur.size, uc.size
    ra = np.broadcast_to(np.asarray(row_alt, np.float64), (n_rows,))[ur]
    ca = np.broadcast_to(np.asarray(col_alt, np.float64), (n_cols,))[uc]
    shift = 1.0
    lowest = float(costs.min())
    ar_n, ar_m = np.arange(n), np.arange(m)
    i = np.concatenate([r_idx, ar_n, n + ar_m, n + c_idx])
    j = np.concatenate([c_idx, m + ar_n, ar_m, m + r_idx])
    w = np.concatenate([costs, ra, ca, np.full(costs.size, lowest)]) + shift
    mat = coo_matrix((w, (i, j)), shape=(n + m, m + n)).tocsr()
    _, match = min_weight_full_bipartite_matching(mat)
    top = match[:n]
    linked = top < m
    out[ur[linked]] = uc[top[linked]]
    return out
