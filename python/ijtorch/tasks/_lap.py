"""Sparse linear assignment problems for tracking (Jaqaman et al., Nat. Methods 5:695, 2008).

Both LAPs of the tracker are solved as one augmented, *sparse* cost matrix::

            targets          no-link
    rows  [ C (n x m)      | D (n x n, diagonal) ]
    birth [ B (m x m diag) | C' (m x n)          ]

``C`` holds the gated candidate costs, ``D``/``B`` the alternative ("no link") costs and ``C'``
is the transposed sparsity pattern of ``C`` at the smallest cost, so that every link chosen in
``C`` leaves its two dummies a partner. The matrix always has a full matching (the diagonals), so
:func:`scipy.sparse.csgraph.min_weight_full_bipartite_matching` (LAPJVsp) solves it in roughly
linear time in the number of candidate pairs. All costs are shifted by a constant (> 0) because
the sparse solver ignores explicit zeros; every full matching has the same size, so the shift does
not change the optimum.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

__all__ = ["solve_sparse_lap"]


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
