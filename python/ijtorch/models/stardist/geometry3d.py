"""Star-convex polyhedron instance segmentation (StarDist 3D, Weigert et al. 2020).

A 3D U-Net predicts, on a ``grid``-subsampled lattice of voxels, an object probability and
``n_rays`` radial distances along fixed directions (a Fibonacci lattice on the sphere). Prediction
keeps lattice voxels whose probability exceeds a threshold, suppresses overlapping polyhedra
greedily and renders the survivors into a label volume (:func:`instances_from_maps_3d`).

Why hand-written: the StarDist package computes these targets, renders polyhedra and runs the NMS
in compiled C++ that depends on TensorFlow/CSBDeep; nothing in numpy/scipy/scikit-image rasterises a
star-convex polyhedron given as radial distances. Everything here is vectorised numpy; scipy gives
the ray triangulation (:class:`scipy.spatial.ConvexHull`) and the distance transforms.

Conventions
-----------
All coordinates are voxel indices ``(z, y, x)``. ``anisotropy`` is the physical size of a voxel
per axis relative to the smallest (e.g. ``(2, 1, 1)`` when z-steps are twice the pixel size);
rays are spread evenly over the sphere in *physical* space and then expressed as unit vectors in
voxel space (``u / anisotropy``, normalised), as StarDist's ``Rays_GoldenSpiral`` does. A
distance ``d_k`` is measured in voxel units along ray ``k``: vertex ``k`` of the polyhedron centred
at ``c`` is ``c + d_k * rays[k]``. The polyhedron's faces are the triangles of the convex hull of
the unit rays; it is the union of the tetrahedra (centre, three vertices of a face).
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from .geometry import object_probabilities

__all__ = [
    "Rays", "fibonacci_rays", "star_distances_3d", "object_probabilities_3d", "polyhedron_volumes",
    "polyhedron_mask", "polyhedra_to_labels", "polyhedron_nms", "instances_from_maps_3d",
    "anisotropy_from_labels", "grid_from_anisotropy",
]

log = logging.getLogger(__name__)


def _triple(value: Any, name: str, *, integer: bool = False, minimum: float = 0.0) -> tuple:
    vals = (value,) * 3 if np.isscalar(value) else tuple(value)
    if len(vals) != 3:
        raise ValueError(f"{name}={value!r}: expected one number or three (z, y, x)")
    for v in vals:
        if isinstance(v, bool) or (integer and not isinstance(v, (int, np.integer))) or not v > minimum:
            kind = "positive integers" if integer else f"numbers > {minimum}"
            raise ValueError(f"{name}={value!r}: expected {kind}")
    return tuple(int(v) for v in vals) if integer else tuple(float(v) for v in vals)


@dataclass(frozen=True)
class Rays:
    """Ray directions and their triangulation.

    Attributes
    ----------
    vectors : ndarray of float64, shape (n_rays, 3)
        Unit vectors ``(dz, dy, dx)`` in voxel space.
    faces : ndarray of int, shape (n_faces, 3)
        Triangles (indices into ``vectors``) of the convex hull of the unit vectors.
    anisotropy : tuple of float
        Voxel size per axis used to spread the rays.
    """

    vectors: np.ndarray
    faces: np.ndarray
    anisotropy: tuple[float, float, float]

    @property
    def n_rays(self) -> int:
        return int(self.vectors.shape[0])

    @functools.cached_property
    def _face_planes(self) -> tuple[np.ndarray, np.ndarray]:
        """``(normals / offsets (F, 3), inverse vertex matrices (F, 3, 3))`` of the hull faces.

        The ray from the origin in direction ``v`` leaves the hull through the face maximising
        ``n_f . v / b_f`` (plane ``n_f . x = b_f``); ``inv[f] @ v`` are ``v``'s coefficients on
        that face's three ray vectors.
        """
        tri = self.vectors[self.faces]  # (F, 3 vertices, 3 coords)
        normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        offsets = np.einsum("fi,fi->f", normals, tri[:, 0])
        flip = offsets < 0
        normals[flip] *= -1
        offsets[flip] *= -1
        inv = np.linalg.inv(np.transpose(tri, (0, 2, 1)))  # columns are the face's ray vectors
        return normals / offsets[:, None], inv


@functools.lru_cache(maxsize=32)
def _rays_cached(n_rays: int, anisotropy: tuple[float, float, float]) -> Rays:
    from scipy.spatial import ConvexHull

    golden = (3.0 - np.sqrt(5.0)) * np.pi
    phi = golden * np.arange(n_rays)
    z = np.linspace(-1.0, 1.0, n_rays)
    rho = np.sqrt(1.0 - z**2)
    verts = np.stack([z, rho * np.sin(phi), rho * np.cos(phi)], axis=1) / np.asarray(anisotropy)
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    faces = ConvexHull(verts).simplices.astype(np.intp)
    verts.setflags(write=False)
    faces.setflags(write=False)
    return Rays(verts, faces, anisotropy)


def fibonacci_rays(n_rays: int = 96, anisotropy: float | Sequence[float] = (1.0, 1.0, 1.0)) -> Rays:
    """``n_rays`` directions from a golden-spiral (Fibonacci) lattice, corrected for ``anisotropy``."""
    if not isinstance(n_rays, (int, np.integer)) or isinstance(n_rays, bool) or n_rays < 6:
        raise ValueError(f"n_rays={n_rays!r}: expected an integer >= 6")
    return _rays_cached(int(n_rays), _triple(anisotropy, "anisotropy"))


def _grid_positions(labels: np.ndarray, grid: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    sub = labels[::grid[0], ::grid[1], ::grid[2]]
    idx = np.nonzero(sub)
    return idx, tuple(i * g for i, g in zip(idx, grid)), sub.shape


def star_distances_3d(labels: np.ndarray, rays: Rays, grid: int | Sequence[int] = 1) -> np.ndarray:
    """Distance from object voxels to their object's boundary along each ray.

    Each ray is marched from the voxel centre in unit steps (position ``p + rint(t * ray)``); at
    the first step ``t`` that leaves the volume or the object the distance is ``t - 1 + 0.5 /
    max(|ray|)`` (the last step inside plus half a voxel, as the 2D version). Background voxels get
    0. The loop runs over rays and steps; all voxels advance together (every voxel takes the same
    offset at a given step).

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
    rays : Rays
    grid : int or (gz, gy, gx)
        Distances are computed only at voxels ``(i*gz, j*gy, k*gx)``.

    Returns
    -------
    ndarray of float32, shape (Z/gz, Y/gy, X/gx, n_rays) (sizes rounded up)
    """
    if labels.ndim != 3:
        raise ValueError(f"labels has shape {labels.shape}; star_distances_3d needs a 3D (ZYX) label volume")
    g = _triple(grid, "grid", integer=True)
    d, h, w = labels.shape
    (si, sj, sk), (zs, ys, xs), sub_shape = _grid_positions(labels, g)
    out = np.zeros(sub_shape + (rays.n_rays,), np.float32)
    if zs.size == 0:
        return out
    flat = labels.ravel()
    vals = flat[(zs * h + ys) * w + xs]
    for k, ray in enumerate(rays.vectors):
        corr = 0.5 / float(np.abs(ray).max())
        iz, iy, ix, v = zs, ys, xs, vals
        idx = np.arange(zs.size)
        dist = np.zeros(zs.size, np.float32)
        t = 0
        while idx.size:
            t += 1
            oz, oy, ox = (int(o) for o in np.rint(t * ray))
            z2, y2, x2 = iz + oz, iy + oy, ix + ox
            same = (z2 >= 0) & (z2 < d) & (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
            same[same] = flat[((z2 * h + y2) * w + x2)[same]] == v[same]
            dist[idx[~same]] = t - 1 + corr
            idx, iz, iy, ix, v = idx[same], iz[same], iy[same], ix[same], v[same]
        out[si, sj, sk, k] = dist
    return out


def object_probabilities_3d(labels: np.ndarray, anisotropy: float | Sequence[float] = 1.0,
                            grid: int | Sequence[int] = 1) -> np.ndarray:
    """Per-object distance transform (in physical units, ``anisotropy``) over its maximum, at ``grid``."""
    if labels.ndim != 3:
        raise ValueError(f"labels has shape {labels.shape}; object_probabilities_3d needs a 3D (ZYX) label volume")
    g = _triple(grid, "grid", integer=True)
    prob = object_probabilities(labels, sampling=_triple(anisotropy, "anisotropy"))
    return np.ascontiguousarray(prob[::g[0], ::g[1], ::g[2]])


def polyhedron_volumes(dists: np.ndarray, rays: Rays) -> np.ndarray:
    """Exact volumes (voxel units) of star polyhedra: sum over faces of ``|det(d_a r_a, d_b r_b, d_c r_c)| / 6``."""
    tri = rays.vectors[rays.faces]
    det = np.abs(np.linalg.det(tri))  # (F,)
    dd = np.asarray(dists, np.float64)[..., rays.faces]  # (..., F, 3)
    return np.sum(det * dd.prod(-1), axis=-1) / 6.0


def _bbox(center: np.ndarray, dists: np.ndarray, rays: Rays, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    verts = center + dists[:, None] * rays.vectors
    lo = np.maximum(np.floor(np.minimum(verts.min(0), center)).astype(np.intp), 0)
    hi = np.minimum(np.ceil(np.maximum(verts.max(0), center)).astype(np.intp) + 1, np.asarray(shape, np.intp))
    return lo, hi


_CHUNK = 1 << 15
_LUT_BINS = 24  # cube-map bins per cube side for the face lookup
_LUT_SAMPLES = 4  # directions sampled per bin side to list the faces a bin touches


def _cube_bins(v: np.ndarray, n: int) -> np.ndarray:
    """Cube-map bin of each direction: major axis and sign, then the two other coordinates in n x n bins."""
    av = np.abs(v)
    major = np.argmax(av, axis=1)
    rows = np.arange(len(v))
    m = np.maximum(av[rows, major], 1e-300)
    others = np.array([[1, 2], [0, 2], [0, 1]])[major]
    uv = v[rows[:, None], others] / m[:, None]  # in [-1, 1]
    iuv = np.clip(((uv + 1.0) * 0.5 * n).astype(np.intp), 0, n - 1)
    side = 2 * major + (v[rows, major] > 0)
    return (side * n + iuv[:, 0]) * n + iuv[:, 1]


def _exit_faces_exhaustive(v: np.ndarray, planes: np.ndarray) -> np.ndarray:
    return np.argmax(v @ planes.T, axis=1)


def _face_lut(rays: Rays) -> np.ndarray:
    """Faces each cube-map bin's directions can leave through, ``(6 * n * n, max_faces)``.

    Built once per ray set by sampling ``_LUT_SAMPLES**2`` directions per bin (corners and
    interior); a direction in a sliver of a face that no sample hit is caught by the check in
    :func:`_face_coefs` (a negative coefficient) and looked up exhaustively.
    """
    cached = rays.__dict__.get("_lut")
    if cached is not None:
        return cached
    planes, _ = rays._face_planes
    n, k = _LUT_BINS, _LUT_SAMPLES
    t = np.linspace(0.0, 1.0, k)
    frac = ((np.arange(n)[:, None] + t[None, :]) / n * 2.0 - 1.0)  # (n, k) coordinates in [-1, 1]
    fu, fv = np.meshgrid(frac.ravel(), frac.ravel(), indexing="ij")  # (n*k, n*k)
    lists = []
    for major in range(3):
        others = [a for a in range(3) if a != major]
        for sign in (-1.0, 1.0):
            d = np.zeros(fu.shape + (3,))
            d[..., major] = sign
            d[..., others[0]] = fu
            d[..., others[1]] = fv
            face = _exit_faces_exhaustive(d.reshape(-1, 3), planes).reshape(n, k, n, k)
            lists.append(np.transpose(face, (0, 2, 1, 3)).reshape(n * n, k * k))
    table = np.concatenate(lists)  # (6 n n, k k): faces at each bin's sample directions
    table.sort(axis=1)
    width = max(len(np.unique(r)) for r in table)
    lut = np.empty((table.shape[0], width), np.intp)
    for i, row in enumerate(table):
        u = np.unique(row)
        lut[i, : u.size] = u
        lut[i, u.size:] = u[0]
    rays.__dict__["_lut"] = lut
    return lut


def _face_coefs(vecs: np.ndarray, rays: Rays) -> tuple[np.ndarray, np.ndarray]:
    """For offsets ``v`` (P, 3): the rays ``(a, b, c)`` of the face ``v``'s direction leaves the
    unit-ray hull through, and the coefficients with ``v = c_a r_a + c_b r_b + c_c r_c`` (>= 0).

    The face is found among the few its cube-map bin lists (the one whose smallest coefficient is
    largest); directions for which none has all coefficients >= 0 (a sliver no LUT sample hit) fall
    back to the exhaustive search over all faces.
    """
    planes, inv = rays._face_planes
    lut = _face_lut(rays)
    idx = np.empty((len(vecs), 3), np.intp)
    out = np.empty((len(vecs), 3), np.float64)
    for s in range(0, len(vecs), _CHUNK):
        v = np.asarray(vecs[s:s + _CHUNK], np.float64)
        cand = lut[_cube_bins(v, _LUT_BINS)]  # (P, M)
        coef = np.einsum("pmij,pj->pmi", inv[cand], v)  # (P, M, 3)
        best = np.argmax(coef.min(axis=2), axis=1)
        rows = np.arange(len(v))
        face = cand[rows, best]
        c = coef[rows, best]
        miss = c.min(axis=1) < -1e-9 * np.maximum(np.abs(v).max(axis=1), 1.0)
        if miss.any():
            face[miss] = _exit_faces_exhaustive(v[miss], planes)
            c[miss] = np.einsum("pij,pj->pi", inv[face[miss]], v[miss])
        idx[s:s + _CHUNK] = rays.faces[face]
        out[s:s + _CHUNK] = c
    return idx, out


def _inside(vecs: np.ndarray, dists: np.ndarray, rays: Rays) -> np.ndarray:
    """Whether offsets ``vecs`` (P, 3) from the centre lie inside the polyhedron with ``dists``.

    With ``v = sum_i c_i r_i`` on the face ``v``'s direction leaves through, ``v`` is inside the
    tetrahedron (centre, ``d_a r_a``, ``d_b r_b``, ``d_c r_c``) iff ``sum_i c_i / d_i <= 1``.
    """
    idx, coef = _face_coefs(vecs, rays)
    inv_d = 1.0 / np.maximum(np.asarray(dists, np.float64), 1e-6)
    return np.einsum("pi,pi->p", coef, inv_d[idx]) <= 1.0 + 1e-9


_TABLE_MAX_HALF = 40  # offsets tabulated up to this many voxels from the centre per axis (<= 16 MB)


def _offset_table(rays: Rays, half: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(half, ray indices (2h+1, 2h+1, 2h+1, 3) uint16, coefficients float32)`` of integer offsets.

    Candidates sit on voxels, so the face and coefficients of an offset are the same for every
    polyhedron; tabulating them once turns each point-in-polyhedron test into a gather and three
    multiply-adds. Returns None beyond ``_TABLE_MAX_HALF`` (the caller computes directly).
    """
    need = np.asarray(half, np.intp)
    if np.any(need > _TABLE_MAX_HALF):
        return None
    cached = rays.__dict__.get("_offsets")
    if cached is not None and np.all(cached[0] >= need):
        return cached
    grow = np.minimum(np.maximum(need, 0 if cached is None else cached[0]) + 4, _TABLE_MAX_HALF)
    axes = [np.arange(-h, h + 1, dtype=np.float64) for h in grow]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    idx, coef = _face_coefs(grid, rays)
    shape = tuple(int(v) for v in 2 * grow + 1) + (3,)
    table = (grow, idx.astype(np.uint16).reshape(shape), coef.astype(np.float32).reshape(shape))
    rays.__dict__["_offsets"] = table
    return table


def polyhedron_mask(center: Sequence[float], dists: np.ndarray, rays: Rays, shape: Sequence[int], *,
                    stride: int = 1) -> tuple[tuple[slice, ...], np.ndarray]:
    """Voxels of one star polyhedron: ``(bbox slices, boolean mask over the bbox)``.

    With ``stride > 1`` only every ``stride``-th voxel of the bbox along each axis is tested (the
    mask then has the strided shape), which NMS uses to estimate overlaps of large objects.
    """
    c = np.asarray(center, np.float64)
    d = np.maximum(np.asarray(dists, np.float64), 1e-6)
    lo, hi = _bbox(c, d, rays, shape)
    sl = tuple(slice(int(a), int(b), stride) for a, b in zip(lo, hi))
    sizes = [len(range(int(a), int(b), stride)) for a, b in zip(lo, hi)]
    if min(sizes) == 0:
        return sl, np.zeros(sizes, bool)
    ci = np.rint(c).astype(np.intp)
    if np.array_equal(ci, c):
        table = _offset_table(rays, np.maximum(ci - lo, hi - 1 - ci))
        if table is not None:
            h = table[0]
            tsl = tuple(slice(int(a - o + hh), int(b - o + hh), stride) for a, b, o, hh in zip(lo, hi, ci, h))
            idx, coef = table[1][tsl], table[2][tsl]
            inv_d = (1.0 / d).astype(np.float32)
            return sl, np.einsum("...i,...i->...", coef, inv_d[idx]) <= np.float32(1.0 + 1e-6)
    axes = [np.arange(a, b, stride, dtype=np.float64) - cc for a, b, cc in zip(lo, hi, c)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return sl, _inside(grid, d, rays).reshape(sizes)


def _renumber(out: np.ndarray, n: int) -> np.ndarray:
    present = np.unique(out)
    present = present[present > 0]
    if present.size != n:
        lut = np.zeros(n + 1, out.dtype)
        lut[present] = np.arange(1, present.size + 1)
        out = lut[out]
    return out


def polyhedra_to_labels(points: np.ndarray, dists: np.ndarray, rays: Rays, shape: Sequence[int], *,
                        scores: np.ndarray | None = None, dtype: Any = np.int32) -> np.ndarray:
    """Render star polyhedra into a label volume.

    The most probable polyhedron wins overlaps; labels are 1..N in order of decreasing score
    (labels of fully covered polyhedra are dropped and the rest renumbered consecutively).
    """
    shape = tuple(int(s) for s in shape)
    out = np.zeros(shape, dtype)
    n = len(points)
    if n == 0:
        return out
    order = np.arange(n) if scores is None else np.argsort(-np.asarray(scores), kind="stable")
    pts, d = np.asarray(points, np.float64)[order], np.asarray(dists, np.float64)[order]
    for lab in range(1, n + 1):  # best first, each claims only voxels nobody has yet
        sl, m = polyhedron_mask(pts[lab - 1], d[lab - 1], rays, shape)
        region = out[sl]
        region[m & (region == 0)] = lab
    return _renumber(out, n)


def _nms_render(points: np.ndarray, dists: np.ndarray, scores: np.ndarray, rays: Rays, shape: Sequence[int],
                nms_threshold: float, max_samples: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= nms_threshold <= 1:
        raise ValueError(f"nms_threshold={nms_threshold!r}: expected a float in [0, 1]")
    if not isinstance(max_samples, (int, np.integer)) or max_samples < 8:
        raise ValueError(f"max_samples={max_samples!r}: expected an integer >= 8")
    shape = tuple(int(s) for s in shape)
    n = len(scores)
    painted = np.zeros(shape, np.int32)  # kept polyhedra, best first; a voxel belongs to the first that covers it
    if n == 0:
        return np.zeros(0, np.intp), painted.astype(dtype)
    order = np.argsort(-np.asarray(scores), kind="stable")
    pts = np.asarray(points, np.float64)[order]
    d = np.maximum(np.asarray(dists, np.float64)[order], 1e-3)
    radius = d.max(1)
    kept_idx = np.zeros(n, np.intp)
    kept_pts = np.zeros((n, 3))
    kept_r = np.zeros(n)
    kept_vol = np.zeros(n + 1)  # by label; full (unclaimed) voxel count of each kept polyhedron
    k = 0
    for i in range(n):
        near = np.zeros(0, bool)
        if k and nms_threshold < 1:
            near = np.linalg.norm(kept_pts[:k] - pts[i], axis=1) < kept_r[:k] + radius[i]
        if near.any():
            lo, hi = _bbox(pts[i], d[i], rays, shape)
            stride = max(1, math.ceil((float(np.prod(hi - lo)) / max_samples) ** (1 / 3)))
            sl, m = polyhedron_mask(pts[i], d[i], rays, shape, stride=stride)
            labs = painted[sl][m]
            vol_i = m.sum() * stride**3
            if vol_i == 0:
                continue
            inter = np.bincount(labs, minlength=k + 1).astype(np.float64) * stride**3
            cand = np.flatnonzero(near) + 1
            overlap = inter[cand] / np.minimum(vol_i, kept_vol[cand])  # StarDist's 3D measure
            covered = (vol_i - inter[0]) / vol_i  # by all kept polyhedra together
            if overlap.max() > nms_threshold or covered > nms_threshold:
                continue
        sl, m = polyhedron_mask(pts[i], d[i], rays, shape)
        k += 1
        region = painted[sl]
        region[m & (region == 0)] = k
        kept_idx[k - 1], kept_pts[k - 1], kept_r[k - 1], kept_vol[k] = i, pts[i], radius[i], m.sum()
    return order[kept_idx[:k]], _renumber(painted, k).astype(dtype, copy=False)


def polyhedron_nms(points: np.ndarray, dists: np.ndarray, scores: np.ndarray, rays: Rays, shape: Sequence[int], *,
                   nms_threshold: float = 0.4, max_samples: int = 4096) -> np.ndarray:
    """Greedy non-maximum suppression of star polyhedra; indices kept, best first.

    Candidates are visited in order of decreasing score. Each kept polyhedron is rendered into a
    label volume of the image's shape (a voxel goes to the first, i.e. best, kept polyhedron that
    covers it). A candidate is suppressed when, for some kept polyhedron, the voxels of the
    candidate it holds exceed ``nms_threshold`` times the smaller of the two volumes (the overlap
    measure of StarDist's 3D NMS, which also removes small candidates inside a big kept one), or
    when kept polyhedra together hold more than ``nms_threshold`` of the candidate.

    Why not exact polyhedron intersection (StarDist's C++ code intersects convex hulls with qhull
    and renders only undecided pairs): voxel counts are what the rendered labels and the matching
    metrics use, they need only the point-in-polyhedron test (tabulated per voxel offset, see
    :func:`polyhedron_mask`), and one pass over the candidate's bounding box tests it against all
    kept neighbours at once. Approximations: a voxel covered by two kept polyhedra counts for the
    better one only (the second rule catches candidates hidden by several), and candidates with
    more than ``max_samples`` voxels in their bounding box are tested on a regular subsample
    (stride ``s`` per axis, each sample counting ``s**3`` voxels; a few percent of overlap). A
    bounding-sphere test (``|c_i - c_j| < r_i + r_j``, ``r`` the longest ray; one vectorised
    distance per kept polyhedron) skips the voxel test for candidates far from every kept one.
    """
    return _nms_render(points, dists, scores, rays, shape, nms_threshold, max_samples, np.int32)[0]


def instances_from_maps_3d(prob: np.ndarray, dist: np.ndarray, rays: Rays, shape: Sequence[int], *,
                           grid: int | Sequence[int] = 1, prob_threshold: float = 0.5, nms_threshold: float = 0.4,
                           dtype: Any = np.int32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Label volume from probability ``(Zg, Yg, Xg)`` and distances ``(Zg, Yg, Xg, n_rays)`` on the grid.

    Parameters
    ----------
    rays : Rays
        The model's rays.
    shape : (Z, Y, X)
        Shape of the full-resolution volume; grid index ``(i, j, k)`` is voxel ``(i*gz, j*gy, k*gx)``.
    grid : int or (gz, gy, gx)
        Subsampling of the maps.
    prob_threshold, nms_threshold : float
        Candidates have probability above ``prob_threshold``; ``nms_threshold`` is the overlap
        fraction of :func:`polyhedron_nms` (not the IoU of the 2D model).

    Returns
    -------
    labels : ndarray of ``shape``
    details : dict
        ``points`` (N, 3), ``dists`` (N, n_rays) and ``prob`` (N,) of the kept polyhedra, best first.
    """
    g = _triple(grid, "grid", integer=True)
    if prob.ndim != 3 or dist.shape != prob.shape + (rays.n_rays,):
        raise ValueError(f"prob {prob.shape} and dist {dist.shape} do not match (Z, Y, X) and (Z, Y, X, {rays.n_rays})")
    idx = np.nonzero(prob > prob_threshold)
    pts = np.stack(idx, axis=1) * np.asarray(g)
    scores = prob[idx]
    dists = np.maximum(dist[idx].astype(np.float64), 1e-3)
    keep, labels = _nms_render(pts, dists, scores, rays, shape, nms_threshold, 4096, dtype)
    return labels, {"points": pts[keep], "dists": dists[keep].astype(np.float32),
                    "prob": scores[keep].astype(np.float32)}


def anisotropy_from_labels(labels: Sequence[np.ndarray]) -> tuple[float, float, float]:
    """StarDist's estimate: the largest median object extent over each axis's median extent."""
    extents = []
    for lab in labels:
        for sl in ndi.find_objects(np.asarray(lab)):
            if sl is not None:
                extents.append([s.stop - s.start for s in sl])
    if not extents:
        raise ValueError("the label volumes hold no objects: cannot estimate the anisotropy")
    med = np.median(np.asarray(extents, np.float64), axis=0)
    return tuple(float(v) for v in med.max() / med)  # type: ignore[return-value]


def grid_from_anisotropy(anisotropy: Sequence[float]) -> tuple[int, int, int]:
    """StarDist's default grid: subsample by 2 along axes whose voxels are not much coarser (< 1.5)."""
    return tuple(1 if a > 1.5 else 2 for a in anisotropy)  # type: ignore[return-value]
