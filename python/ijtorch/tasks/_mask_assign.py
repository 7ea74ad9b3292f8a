"""Choosing among mask links, divisions and merges (:mod:`ijtorch.tasks._mask_linking`): candidate
pairs of daughters (or parents) per object, and one integer program over the whole movie in which each
object is used at most once as a source and once as a target."""

from __future__ import annotations

import logging

import numpy as np

from ._linking_lap import solve_sparse_lap

log = logging.getLogger(__name__)


def _used(na, nb, li, lj, one, x, y, split):
    """Objects of t (rows) and t+1 (columns) taken by links (li, lj) and divisions/merges (one, x, y, split)."""
    ua = np.zeros(na, bool); ub = np.zeros(nb, bool)
    ua[np.asarray(li, np.int64)] = True; ub[np.asarray(lj, np.int64)] = True
    ua[np.where(split, one, x)] = True; ua[np.where(split, one, y)] = True
    ub[np.where(split, x, one)] = True; ub[np.where(split, y, one)] = True
    return ua, ub


def _pair_groups(one, other, ov, top: int = 8):
    """All unordered pairs (x, y) of ``other`` objects sharing the same ``one`` object (at most the
    ``top`` most-overlapping candidates of each ``one``): (one, x, y, overlap x, overlap y)."""
    z = np.zeros(0, np.int64)
    if one.size < 2:
        return z, z, z, np.zeros(0), np.zeros(0)
    order = np.lexsort((-ov, one))
    one, other, ov = one[order], other[order], ov[order]
    start = np.r_[0, np.flatnonzero(np.diff(one)) + 1]
    rank = np.arange(one.size) - np.repeat(start, np.diff(np.r_[start, one.size]))
    keep = rank < top
    one, other, ov = one[keep], other[keep], ov[keep]
    A, X, Y, OX, OY = [], [], [], [], []
    for r in range(1, top):
        p = np.flatnonzero(one[r:] == one[:-r]) if one.size > r else z
        if p.size == 0:
            break
        q = p + r
        A.append(one[p]); X.append(other[p]); Y.append(other[q]); OX.append(ov[p]); OY.append(ov[q])
    if not A:
        return z, z, z, np.zeros(0), np.zeros(0)
    return (np.concatenate(A), np.concatenate(X), np.concatenate(Y), np.concatenate(OX), np.concatenate(OY))


def _assign(na, nb, L_i, L_j, L_c, D_one, D_x, D_y, D_c, D_split, alt):
    """Choose links and divisions/merges: each object of t and of t+1 used at most once, minimum total
    cost where leaving an object unlinked costs ``alt``. Returns boolean selections."""
    if D_one.size == 0:
        match = solve_sparse_lap(L_i, L_j, L_c, na, nb, row_alt=alt, col_alt=alt)
        sel = match[L_i] == L_j
        return sel, np.zeros(0, bool)
    from scipy.sparse import coo_matrix

    nl, nd = L_i.size, D_one.size
    # gain of each variable relative to leaving its objects unlinked
    obj = np.concatenate([L_c - 2 * alt, D_c - 3 * alt])
    useful = obj < 0
    # objects 0..na-1 at t, na..na+nb-1 at t+1; a link uses L_i and na + L_j, a division or merge
    # a_side, b1 and b2
    a_side = np.where(D_split, D_one, D_x)
    b1 = np.where(D_split, na + D_x, na + D_one)
    b2 = np.where(D_split, na + D_y, D_y)  # split: second daughter at t+1; merge: second parent at t
    u = np.flatnonzero(useful)
    # independent groups (connected components of the objects, joined by the variables using them):
    # a group without a division or merge is a plain assignment, solved as a sparse LAP; the integer
    # program gets the groups with one only (most of a dense colony's links are the former)
    from scipy.sparse.csgraph import connected_components

    first_obj = np.concatenate([L_i, a_side])[u]  # every variable joins its first object to the others
    other = [np.concatenate([na + L_j, b1])[u], np.concatenate([na + L_j, b2])[u]]
    joins = coo_matrix((np.ones(2 * u.size), (np.tile(first_obj, 2), np.concatenate(other))), shape=(na + nb,) * 2)
    _, comp = connected_components(joins, directed=False)
    comp_var = comp[first_obj]
    has_div = np.zeros(int(comp.max(initial=-1)) + 1, bool)
    has_div[comp_var[u >= nl]] = True
    hard = has_div[comp_var]
    x = np.zeros(nl + nd, bool)
    easy = u[~hard]  # link variables only
    if easy.size:
        match = solve_sparse_lap(L_i[easy], L_j[easy], L_c[easy], na, nb, row_alt=alt, col_alt=alt)
        x[easy[match[L_i[easy]] == L_j[easy]]] = True
    if hard.any():
        h = u[hard]
        # the objects x variables incidence of the hard variables only (links use 2 objects, divisions 3)
        rows = np.concatenate([L_i, na + L_j, a_side, b1, b2])
        cols = np.concatenate([np.arange(nl)] * 2 + [nl + np.arange(nd)] * 3)
        A = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(na + nb, nl + nd)).tocsc()[:, h]
        sel = _solve_packing(obj[h], A.tocsr(), comp_var[hard])
        if sel is None:  # no solution in time: fall back to the plain LAP on links
            match = solve_sparse_lap(L_i, L_j, L_c, na, nb, row_alt=alt, col_alt=alt)
            return match[L_i] == L_j, np.zeros(nd, bool)
        x[h] = sel
    return x[:nl], x[nl:]


def _solve_packing(cost: np.ndarray, A, group: np.ndarray) -> np.ndarray | None:
    """Minimise ``cost · x`` over binary ``x`` with ``A x ≤ 1`` (A: objects × variables, 0/1).

    The linear relaxation first (one LP, about half the time of the integer program): in a group of
    variables (a connected component) where its optimum is integral it is the integer optimum too;
    only the groups with a fractional value (a few) go to the integer program. None if that does
    not finish in time."""
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp

    A = A[np.flatnonzero(np.diff(A.indptr) > 0)]  # objects no variable uses
    # presolve off: ~20 % faster on these (already reduced) problems
    lp = linprog(cost, A_ub=A, b_ub=np.ones(A.shape[0]), bounds=(0, 1), method="highs-ds",
                 options={"presolve": False})
    if lp.status == 0:
        x = lp.x
        frac = np.isin(group, group[(x > 1e-6) & (x < 1 - 1e-6)])
        sel = x > 0.5
        if not frac.any():
            return sel
        f = np.flatnonzero(frac)
    else:  # the relaxation failed (numerically): the integer program on everything
        sel = np.zeros(cost.size, bool)
        f = np.arange(cost.size)
    Af = A[:, f].tocsr()
    Af = Af[np.flatnonzero(np.diff(Af.indptr) > 0)]
    res = milp(cost[f], constraints=LinearConstraint(Af, -np.inf, 1.0), integrality=np.ones(f.size),
               bounds=Bounds(0, 1), options={"time_limit": 60.0})
    if res.x is None:
        log.warning("division assignment did not finish (%s); linking without divisions", res.message)
        return None
    sel[f] = res.x > 0.5
    return sel
