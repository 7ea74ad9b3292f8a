"""The second LAP of the tracker: segment ends joined to segment starts up to ``max_gap`` missed frames
later (gap closing), starts to a middle point in the previous frame (splitting) and, if enabled, ends to a
middle point in the next frame (merging)."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ._linking_lap import _pairs, _rho, solve_sparse_lap
from ._linking_model import EDGE_GAP, EDGE_MERGE, EDGE_SPLIT, TrackingParams


def _close_segments(params: TrackingParams, frame, pos, area, starts, succ, pred, n_frames):
    """Second LAP: gap closing, splitting and merging between segments."""
    ends = np.flatnonzero(succ < 0)
    begins = np.flatnonzero(pred < 0)
    gap_d = params.gap_max_distance or params.max_distance
    split_d = params.split_max_distance or params.max_distance
    merge_d = params.merge_max_distance or params.max_distance
    rows, cols, costs, kinds = [], [], [], []  # rows: 'e<end>' / 's<middle>'; cols: 'b<begin>' / 'm<middle>'
    by_frame = lambda ids: {int(t): ids[frame[ids] == t] for t in np.unique(frame[ids])}
    ends_f, begins_f = by_frame(ends), by_frame(begins)

    def add(r_spot, c_spot, cost, kind, r_off, c_off):
        rows.append(r_spot); cols.append(c_spot); costs.append(cost); kinds.append(np.full(cost.size, kind, np.int8))

    if params.max_gap > 0:
        for te, e in ends_f.items():
            te_tree = None
            for g in range(2, params.max_gap + 2):
                b = begins_f.get(te + g)
                if b is None:
                    continue
                te_tree = te_tree or cKDTree(pos[e])
                i, j, d = _pairs(te_tree, cKDTree(pos[b]), gap_d)
                add(e[i], b[j], d * d, EDGE_GAP, 0, 0)
    if params.allow_splitting:
        for tb, b in begins_f.items():
            if tb == 0:
                continue
            mid = np.arange(starts[tb - 1], starts[tb])
            mid = mid[succ[mid] >= 0]
            if mid.size == 0:
                continue
            i, j, d = _pairs(cKDTree(pos[mid]), cKDTree(pos[b]), split_d)
            m = mid[i]
            add(m, b[j], d * d * _rho(area[m], area[succ[m]], area[b[j]]), EDGE_SPLIT, 0, 0)
    if params.allow_merging:
        for te, e in ends_f.items():
            if te + 1 >= n_frames:
                continue
            mid = np.arange(starts[te + 1], starts[te + 2])
            mid = mid[pred[mid] >= 0]
            if mid.size == 0:
                continue
            i, j, d = _pairs(cKDTree(pos[e]), cKDTree(pos[mid]), merge_d)
            m = mid[j]
            add(e[i], m, d * d * _rho(area[m], area[pred[m]], area[e[i]]), EDGE_MERGE, 0, 0)
    empty = (np.zeros(0, np.int64),) * 2 + (np.zeros(0), np.zeros(0, np.int8))
    if not rows:
        return empty
    r = np.concatenate(rows); c = np.concatenate(cols); w = np.concatenate(costs); k = np.concatenate(kinds)
    if r.size == 0:  # candidate searches ran but found nothing within the distance gates
        return empty
    # Row objects: gap/merge rows are segment ends, split rows are middles (distinct spots, since a
    # middle has a successor and an end has none). Column objects likewise: begins vs middles.
    ur, ri = np.unique(r, return_inverse=True)
    uc, ci = np.unique(c, return_inverse=True)
    alt = params.alternative_cost_factor * max(float(w.max()), 1e-12)
    match = solve_sparse_lap(ri, ci, w, ur.size, uc.size, row_alt=alt, col_alt=alt)
    # Recover which candidate was chosen for each matched row.
    chosen_r = np.flatnonzero(match >= 0)
    key_cand = ri * uc.size + ci
    key_sel = chosen_r * uc.size + match[chosen_r]
    sel = np.flatnonzero(np.isin(key_cand, key_sel))
    return ur[ri[sel]], uc[ci[sel]], w[sel], k[sel]
