"""From edges to :class:`~ijtorch.tasks.linking.Tracks`: track ids (connected components), the Cell
Tracking Challenge lineage, the relabelled stack, and gap filling with interpolated detections."""

from __future__ import annotations

import logging
from dataclasses import replace
from itertools import pairwise

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ._linking_model import EDGE_LINK, Detections, TrackingParams, Tracks
from .outlines import outlines

__all__ = ["fill_gaps"]

log = logging.getLogger(__name__)


def _assemble(det: Detections, params: TrackingParams, edges: np.ndarray, cost: np.ndarray,
              kind: np.ndarray, estimated: dict | None = None) -> Tracks:
    s = det.spots
    n = len(det)
    frame = s["frame"]
    if len(edges):
        g = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
        _, comp = connected_components(g, directed=False)
    else:
        comp = np.arange(n)
    has_edge = np.zeros(n, bool)
    has_edge[edges.ravel()] = True
    # Track ids: connected components with edges, numbered by their first spot.
    track_id = np.full(n, -1, np.int64)
    uniq, first = np.unique(comp[has_edge], return_index=True)
    lut = np.full(n, -1, np.int64)
    lut[uniq[np.argsort(first)]] = np.arange(uniq.size)
    track_id[has_edge] = lut[comp[has_edge]]
    ctc_label, ctc = _ctc_lineage(n, frame, edges)
    spots = {"id": np.arange(n, dtype=np.int64), **s, "track_id": track_id, "ctc_label": ctc_label}
    tracked = None
    if det.labels is not None:
        tracked = _relabel(det.labels, frame, s["label"], ctc_label)
    return Tracks(spots=spots, edges=edges, edge_cost=cost, edge_kind=kind, ctc=ctc, n_frames=det.n_frames,
                  ndim=det.ndim, calibration=det.calibration, shape=det.shape, polygons=det.polygons,
                  tracked_labels=tracked, params=params.model_dump(), estimated=dict(estimated or {}))


def fill_gaps(tracks: Tracks) -> Tracks:
    """Replace every gap edge by a chain of interpolated detections, one per skipped frame.

    As TrackMate's "Close gaps by introducing new spots": the new spot lies on the straight line
    between the gap's ends (position and radius interpolated linearly in time). With label input its
    mask is the gap source's mask shifted to the new centre, painted only on background pixels, so
    no observed object loses a pixel; a spot whose mask would be empty (fully occluded or outside
    the image) is not added and that gap edge stays. New spots have ``interpolated`` = True (a
    column added to every spot), ``mean_intensity`` NaN and the painted area.

    Parameters
    ----------
    tracks
        From :func:`track`.

    Returns
    -------
    Tracks
        A new result; ``tracks`` is not modified.
    """
    s = tracks.spots
    n = len(s["id"])
    frame = s["frame"]
    gap = np.flatnonzero(frame[tracks.edges[:, 1]] - frame[tracks.edges[:, 0]] > 1) if len(tracks.edges) else np.zeros(0, np.int64)
    base = {k: v for k, v in s.items() if k not in ("id", "track_id", "ctc_label")}
    base.setdefault("interpolated", np.zeros(n, bool))
    ndim = tracks.ndim
    cal = tracks.calibration
    scale = np.array([cal.pixel_width, cal.pixel_height, cal.voxel_depth][:ndim], np.float64)
    labels = None
    label_col = s["label"]
    if tracks.tracked_labels is not None:
        # The detections' own label stack, rebuilt from the tracked one (CTC labels are unique per frame).
        labels = _relabel(tracks.tracked_labels, frame, s["ctc_label"], s["label"]).astype(np.uint32)
        next_label = np.array([int(labels[t].max(initial=0)) + 1 for t in range(labels.shape[0])], np.int64)
    new_cols: dict[str, list] = {k: [] for k in base}
    new_polys: list[np.ndarray] = []
    chains: list[tuple[int, list[int], int, int]] = []  # (gap edge index, new spot ids, source, target)
    n_new = 0
    for e in gap:
        a, b = (int(v) for v in tracks.edges[e])
        fa, fb = int(frame[a]), int(frame[b])
        pa = np.array([s["x"][a], s["y"][a], s["z"][a]])
        pb = np.array([s["x"][b], s["y"][b], s["z"][b]])
        slots: list[int] = []
        for f in range(fa + 1, fb):
            w = (f - fa) / (fb - fa)
            p = pa + w * (pb - pa)
            area, poly, lab_value = np.nan, None, 0
            if labels is not None:
                shift = np.rint((p[:ndim] - pa[:ndim]) / scale).astype(np.int64)  # x, y[, z] in pixels
                src = np.nonzero(labels[fa] == label_col[a])  # (y, x) or (z, y, x) index arrays
                dst = [src[i] + shift[ndim - 1 - i] for i in range(ndim)]
                inside = np.ones(src[0].size, bool)
                for i, size in enumerate(labels.shape[1:]):
                    inside &= (dst[i] >= 0) & (dst[i] < size)
                dst = tuple(d[inside] for d in dst)
                free = labels[f][dst] == 0
                dst = tuple(d[free] for d in dst)
                if dst[0].size == 0:
                    break
                lab_value = int(next_label[f]); next_label[f] += 1
                labels[f][dst] = lab_value
                area = float(dst[0].size)
                if tracks.polygons is not None:
                    mask = np.zeros(labels.shape[1:], np.uint32)
                    mask[dst] = lab_value
                    poly = outlines(mask, "YX").polygon(0)
            for k, v in (("frame", f), ("x", p[0]), ("y", p[1]), ("z", p[2]), ("label", lab_value),
                         ("area", area), ("mean_intensity", np.nan), ("interpolated", True),
                         ("radius", s["radius"][a] + w * (s["radius"][b] - s["radius"][a]))):
                new_cols[k].append(v)
            for k, col in new_cols.items():
                if k not in ("frame", "x", "y", "z", "label", "area", "mean_intensity", "interpolated", "radius"):
                    col.append(np.nan)  # an extra column (e.g. from a caller): unknown here
            new_polys.append(poly)
            slots.append(n + n_new)
            n_new += 1
        else:
            chains.append((e, slots, a, b))
            continue
        # Could not fill the whole gap: drop the spots just added for it and keep the gap edge.
        for col in new_cols.values():
            del col[len(col) - len(slots):]
        del new_polys[len(new_polys) - len(slots):]
        if labels is not None:
            for f, slot in zip(range(fa + 1, fb), slots):
                labels[f][labels[f] == next_label[f] - 1] = 0
                next_label[f] -= 1
        n_new -= len(slots)
    if not chains:
        return replace(tracks, spots={**tracks.spots, "interpolated": base["interpolated"]})
    cols = {k: np.concatenate([np.asarray(base[k]), np.asarray(new_cols[k], dtype=np.asarray(base[k]).dtype)])
            for k in base}
    order = np.argsort(cols["frame"], kind="stable")
    new_id = np.empty(order.size, np.int64)
    new_id[order] = np.arange(order.size)
    cols = {k: v[order] for k, v in cols.items()}
    filled = np.zeros(len(tracks.edges), bool)
    src, dst, cost, kind = [], [], [], []
    for e, slots, a, b in chains:
        filled[e] = True
        chain = [a, *slots, b]
        for u, v in pairwise(chain):
            src.append(u); dst.append(v)
            cost.append(tracks.edge_cost[e] / (len(chain) - 1)); kind.append(EDGE_LINK)
    keep = ~filled
    src = np.concatenate([tracks.edges[keep, 0], np.asarray(src, np.int64)])
    dst = np.concatenate([tracks.edges[keep, 1], np.asarray(dst, np.int64)])
    cost = np.concatenate([tracks.edge_cost[keep], np.asarray(cost)])
    kind = np.concatenate([tracks.edge_kind[keep], np.asarray(kind, np.int8)])
    src, dst = new_id[src], new_id[dst]
    o = np.lexsort((dst, src))
    edges = np.stack([src[o], dst[o]], axis=1).astype(np.int64)
    polygons = None
    if tracks.polygons is not None:
        all_polys = list(tracks.polygons) + new_polys
        polygons = tuple(all_polys[i] for i in order)
    det = Detections(spots=cols, n_frames=tracks.n_frames, ndim=ndim, calibration=cal, shape=tracks.shape,
                     polygons=polygons, labels=labels)
    log.info("filled %d gaps with %d interpolated spots", len(chains), n_new)
    return _assemble(det, TrackingParams(**tracks.params), edges, cost[o], kind[o], tracks.estimated)


def _ctc_lineage(n: int, frame: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CTC labels: a spot continues its predecessor's track only for a plain 1-to-1 link to the next frame."""
    out_deg = np.bincount(edges[:, 0], minlength=n) if len(edges) else np.zeros(n, np.int64)
    in_deg = np.bincount(edges[:, 1], minlength=n) if len(edges) else np.zeros(n, np.int64)
    if len(edges):
        a, b = edges[:, 0], edges[:, 1]
        cont = (out_deg[a] == 1) & (in_deg[b] == 1) & (frame[b] == frame[a] + 1)
        g = coo_matrix((np.ones(int(cont.sum())), (a[cont], b[cont])), shape=(n, n))
        _, comp = connected_components(g, directed=False)
    else:
        comp = np.arange(n)
    # Number CTC tracks by (start frame, first spot id); spots are in frame order already.
    uniq, first = np.unique(comp, return_index=True)
    rank = np.empty(uniq.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(1, uniq.size + 1)
    label_of_comp = np.zeros(comp.max() + 1 if n else 0, np.int64)
    label_of_comp[uniq] = rank
    label = label_of_comp[comp] if n else np.zeros(0, np.int64)
    m = uniq.size
    b = np.full(m + 1, np.iinfo(np.int64).max); e = np.full(m + 1, -1)
    np.minimum.at(b, label, frame); np.maximum.at(e, label, frame)
    parent = np.zeros(m + 1, np.int64)
    if len(edges):
        a, c = edges[:, 0], edges[:, 1]
        new = label[a] != label[c]
        # A merge has two predecessors; CTC records one parent: keep the first edge's source.
        tgt, idx = np.unique(label[c[new]], return_index=True)
        parent[tgt] = label[a[new]][idx]
    L = np.arange(1, m + 1)
    ctc = np.stack([L, b[1:], e[1:], parent[1:]], axis=1).astype(np.int64)
    return label, ctc


def _relabel(labels: np.ndarray, frame: np.ndarray, orig: np.ndarray, new: np.ndarray) -> np.ndarray:
    dtype = np.uint16 if (new.max(initial=0) <= np.iinfo(np.uint16).max) else np.uint32
    out = np.zeros(labels.shape, dtype)
    top = int(labels.max(initial=0))
    for t in range(labels.shape[0]):
        sel = frame == t
        if not sel.any():
            continue
        lut = np.zeros(top + 1, dtype)
        lut[orig[sel]] = new[sel]
        np.take(lut, labels[t], out=out[t])  # take: faster than fancy indexing on a whole plane
    return out
