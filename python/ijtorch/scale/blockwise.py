"""Star-convex segmentation of an image larger than memory (2D, or a z-stack plane by plane), block by
block on a Dask cluster.

The image is read lazily, a block at a time: a big TIFF through tifffile's zarr store (only the
strips/tiles a block needs are read), an OME-Zarr through its multiscales metadata (level 0). The
labels are written to an OME-Zarr (metadata by ``ome-zarr``), one chunk per block, with a
measurements CSV and an ImageJ RoiSet.zip of the objects. No process ever holds the whole image.

1. **Normalisation** as the whole-image run: the model's percentiles of the whole image, from a
   histogram summed over the blocks (exact for integer images; a strided sample for float images).
2. **Detection** (one task per block): the block plus a ``halo`` on each side is predicted (tiled, as
   a whole image is); candidates are the model's lattice points with probability above the
   threshold in the block and its halo (less the ``margin`` at the halo's outer edge where the maps
   are unreliable); non-maximum suppression runs over all of them and a block keeps the polygons whose
   *centre* lies in its core. Every object is therefore found by exactly one block, however it lies
   across the seams; its polygon is whole (the halo exceeds the object size).
3. **Seams**: polygons near a block seam found by two blocks (the same nucleus seen from both sides)
   go through one more non-maximum suppression together, so an object on a seam is kept once.
4. **Labels**: objects are numbered 1..N by decreasing score (as the whole-image run numbers them),
   ``uint16`` up to 65 535 objects and ``uint32`` beyond; each block renders the polygons that reach
   into it (the most probable object wins an overlap) and returns per-object sums for the
   measurements, merged here; objects hidden entirely under others are dropped and the rest
   renumbered, as in the whole-image run.

A **z-stack** (``ZYX``, one channel of ``CZYX``) is segmented as :func:`ijtorch.tasks.segment.segment`
runs a 2D model on one: plane by plane (each plane normalised with its own percentiles), labels
numbered plane after plane and unique over the stack, written as a ``ZYX`` OME-Zarr (one chunk per
block of a plane; measurements with the plane ``z``; ROIs on their slice). Blocks never split a
plane's objects across Z, so there are no seams in Z. A 3D (``ZYX``) model is not handled blockwise.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .sources import (  # re-exported: part of this module's API
    Source,
    open_source,
    read_region,
)

__all__ = ["Source", "open_source", "read_region", "segment_blockwise", "BlockwiseResult", "block_grid"]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the grid
def block_grid(shape: tuple[int, int], block: int) -> list[tuple[int, int, int, int]]:
    """Cores ``(y0, y1, x0, x1)`` of ``block``-sized blocks covering ``shape`` (row-major)."""
    return [(y, min(y + block, shape[0]), x, min(x + block, shape[1]))
            for y in range(0, shape[0], block) for x in range(0, shape[1], block)]


def _extended(core: tuple[int, int, int, int], shape: tuple[int, int], halo: int) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = core
    return max(0, y0 - halo), min(shape[0], y1 + halo), max(0, x0 - halo), min(shape[1], x1 + halo)


# ----------------------------------------------------------------------------- tasks (run on workers)
def _exact_histogram(dtype: Any) -> bool:
    """8- and 16-bit integer images: percentiles from an exact histogram (others: a strided sample)."""
    dtype = np.dtype(dtype)
    return bool(np.issubdtype(dtype, np.integer) and dtype.itemsize <= 2)


def _histogram_task(src: Source, core: tuple[int, int, int, int]) -> Any:
    data = read_region(src, *core)
    if _exact_histogram(data.dtype):
        data = data.astype(np.int64).ravel()
        lo = int(data.min())
        return ("int", lo, np.bincount(data - lo))
    return ("float", data.ravel()[::7].astype(np.float64))


def _percentiles(parts: Sequence[Any], low: float, high: float) -> tuple[float, float]:
    """``np.percentile`` (linear) of the whole image at ``low`` and ``high``, from per-block parts."""
    if all(p[0] == "int" for p in parts):
        lo = min(p[1] for p in parts)
        hist = np.zeros(max(p[1] + len(p[2]) for p in parts) - lo, np.int64)
        for _, start, counts in parts:
            hist[start - lo:start - lo + len(counts)] += counts
        cum = np.cumsum(hist)
        n = int(cum[-1])

        def order_stat(k: int) -> float:
            return float(np.searchsorted(cum, k + 1) + lo)

        out = []
        for q in (low, high):
            r = (n - 1) * q / 100.0
            k = int(np.floor(r))
            a, b = order_stat(k), order_stat(min(k + 1, n - 1))
            out.append(a + (b - a) * (r - k))
        return out[0], out[1]
    sample = np.concatenate([p[1] for p in parts])  # every part is a sample: the dtype decides, not the block
    return float(np.percentile(sample, low)), float(np.percentile(sample, high))


def _model(model: Any, device: str) -> Any:
    from ijtorch.models.store import load_model

    net = load_model(model, device=device)
    if getattr(net, "config", {}).get("axes", "YX") != "YX" or not hasattr(net, "predict_maps"):
        raise ValueError(f"model={str(model)!r}: blockwise segmentation needs a 2D star-convex model")
    return net


def _detect_task(src: Source, core: tuple[int, int, int, int], *, model: Any, device: str, lo: float, hi: float,
                 halo: int, margin: int, prob_threshold: float, nms_threshold: float, tile_size: int,
                 overlap: int) -> dict[str, np.ndarray]:
    """One block: maps of the block and its halo, candidates, NMS; the polygons centred in the core."""
    from ijtorch.models.stardist.geometry import polygon_nms

    net = _model(model, device)
    shape = src.shape
    ey0, ey1, ex0, ex1 = _extended(core, shape, halo)
    xf = read_region(src, ey0, ey1, ex0, ex1).astype(np.float32, copy=False)
    x = (xf - np.float32(lo)) / (np.float32(hi) - np.float32(lo) + np.float32(1e-20))
    prob, dist = net.predict_maps(x.astype(np.float32, copy=False), normalize=False, tile_size=tile_size,
                                  overlap=overlap)
    grid = int(net.config.get("grid", 1))
    # candidates: lattice points (global multiples of grid) away from the halo's outer edge
    cy0 = ey0 + (margin if ey0 > 0 else 0)
    cy1 = ey1 - (margin if ey1 < shape[0] else 0)
    cx0 = ex0 + (margin if ex0 > 0 else 0)
    cx1 = ex1 - (margin if ex1 < shape[1] else 0)
    gy = np.arange(-(-cy0 // grid) * grid, cy1, grid)
    gx = np.arange(-(-cx0 // grid) * grid, cx1, grid)
    sub = prob[np.ix_(gy - ey0, gx - ex0)]
    yy, xx = np.nonzero(sub > prob_threshold)
    pts = np.stack([gy[yy], gx[xx]], axis=1).astype(np.int64)
    scores = prob[pts[:, 0] - ey0, pts[:, 1] - ex0]
    dists = np.maximum(dist[pts[:, 0] - ey0, pts[:, 1] - ex0].astype(np.float64), 1e-3)
    keep = polygon_nms(pts, dists, scores, nms_threshold=nms_threshold)
    pts, dists, scores = pts[keep], dists[keep], scores[keep]
    y0, y1, x0, x1 = core
    mine = (pts[:, 0] >= y0) & (pts[:, 0] < y1) & (pts[:, 1] >= x0) & (pts[:, 1] < x1)
    return {"points": pts[mine], "dists": dists[mine], "prob": scores[mine].astype(np.float32)}


def _render_task(src: Source, out_path: str, core: tuple[int, int, int, int], ids: np.ndarray, points: np.ndarray,
                 dists: np.ndarray, dtype: str, plane: int | None = None) -> dict[str, np.ndarray]:
    """Draw the polygons reaching into one block (lowest score first) and write the block (of Z plane
    ``plane`` of a z-stack's labels); per-label sums."""
    import zarr
    from skimage.draw import polygon as draw_polygon

    from ijtorch.models.stardist.geometry import polygon_vertices

    y0, y1, x0, x1 = core
    out = np.zeros((y1 - y0, x1 - x0), np.dtype(dtype))
    if len(ids):
        verts = polygon_vertices(points, dists)
        for k in np.argsort(-ids, kind="stable"):  # largest id (lowest score) first: the best drawn last wins
            rr, cc = draw_polygon(verts[k, 0] - y0, verts[k, 1] - x0, out.shape)
            out[rr, cc] = ids[k]
    arr = zarr.open_array(out_path, mode="r+")
    arr[_where(plane, core)] = out
    return _block_stats(out, read_region(src, y0, y1, x0, x1), y0, x0)


def _where(plane: int | None, core: tuple[int, int, int, int]) -> tuple:
    y0, y1, x0, x1 = core
    return (slice(y0, y1), slice(x0, x1)) if plane is None else (plane, slice(y0, y1), slice(x0, x1))


def _relabel_task(out_path: str, core: tuple[int, int, int, int], lut: np.ndarray, plane: int | None = None) -> None:
    import zarr

    arr = zarr.open_array(out_path, mode="r+")
    where = _where(plane, core)
    arr[where] = lut[np.asarray(arr[where])].astype(arr.dtype)


def _block_stats(labels: np.ndarray, image: np.ndarray, y0: int, x0: int) -> dict[str, np.ndarray]:
    flat = labels.ravel()
    ids, inv = np.unique(flat, return_inverse=True)
    yy, xx = np.divmod(np.arange(flat.size), labels.shape[1])
    n = len(ids)
    stats = {"label": ids.astype(np.int64),
             "area": np.bincount(inv, minlength=n).astype(np.int64),
             "sum_y": np.bincount(inv, weights=yy + y0, minlength=n),
             "sum_x": np.bincount(inv, weights=xx + x0, minlength=n),
             "sum_i": np.bincount(inv, weights=image.ravel().astype(np.float64), minlength=n),
             "min_y": np.full(n, np.iinfo(np.int64).max), "max_y": np.full(n, -1),
             "min_x": np.full(n, np.iinfo(np.int64).max), "max_x": np.full(n, -1)}
    np.minimum.at(stats["min_y"], inv, yy + y0)
    np.maximum.at(stats["max_y"], inv, yy + y0)
    np.minimum.at(stats["min_x"], inv, xx + x0)
    np.maximum.at(stats["max_x"], inv, xx + x0)
    keep = ids > 0
    return {k: v[keep] for k, v in stats.items()}


# ----------------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class BlockwiseResult:
    """What :func:`segment_blockwise` wrote and found."""

    labels: Path                       # the OME-Zarr of labels
    files: dict[str, Path]
    n_objects: int
    dtype: str
    shape: tuple[int, int]
    n_blocks: int
    near_seams: int                    # objects whose polygon reaches across a block seam
    merged_at_seams: int               # duplicates of seam objects found by two blocks, kept once
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def _seam_distance(points: np.ndarray, shape: tuple[int, int], block: int) -> np.ndarray:
    """Distance of each point to the nearest internal block seam (inf where there is none)."""
    d = np.full(len(points), np.inf)
    for axis in (0, 1):
        n_seams = -(-shape[axis] // block) - 1
        if n_seams < 1:
            continue
        p = points[:, axis].astype(np.float64)
        k = np.clip(np.rint(p / block), 1, n_seams)
        d = np.minimum(d, np.abs(p - k * block))
    return d


def segment_blockwise(source: str | os.PathLike | Source, output: str | os.PathLike, *, model: Any = "nuclei",
                      name: str | None = None, channel: int | None = None, block: int = 1024, halo: int = 128,
                      margin: int = 48, prob_threshold: float | None = None, nms_threshold: float | None = None,
                      tile_size: int = 512, overlap: int = 96, device: str = "cpu", rois: bool = True,
                      client: Any = None, dask: Any = None,
                      progress: Callable[[str, int, int], None] | None = None) -> BlockwiseResult:
    """Segment a 2D image or a z-stack larger than memory block by block; write ``<name>.ome.zarr`` (labels),
    ``<name>_measurements.csv`` and ``<name>_RoiSet.zip`` into ``output`` (staged: all or none).

    Parameters
    ----------
    source
        A big TIFF (read lazily through tifffile's zarr store) or an OME-Zarr folder (level 0).
    block
        Block edge in pixels (a multiple of 16): a worker holds one block plus its halo and the
        model's maps of it, so memory per worker depends on ``block``, not on the image size.
    halo
        Context predicted around a block (a multiple of 16); must exceed the receptive field of
        the network (``margin``) plus the diameter of the largest object.
    client, dask
        A ``distributed.Client`` to run on, or :class:`~ijtorch.scale.cluster.DaskOptions` to open
        one (default: a local cluster of worker processes).
    progress
        Called with ``(phase, done, total)`` as blocks finish.
    """
    from ijtorch.models.store import load_model

    t0 = time.monotonic()
    if block % 16 or halo % 16 or block < 64:
        raise ValueError(f"block={block}, halo={halo}: expected multiples of 16 (block >= 64)")
    if not 0 <= margin < halo:
        raise ValueError(f"margin={margin} must be in [0, halo)")
    src = source if isinstance(source, Source) else open_source(source, channel=channel)
    name = name or Path(src.path).name.split(".")[0]
    net = load_model(model, device="cpu")
    if getattr(net, "config", {}).get("axes", "YX") != "YX" or not hasattr(net, "predict_maps"):
        raise ValueError(f"model={str(model)!r}: blockwise segmentation needs a 2D star-convex model")
    pt = net.thresholds["prob"] if prob_threshold is None else float(prob_threshold)
    nt = net.thresholds["nms"] if nms_threshold is None else float(nms_threshold)
    norm = net.config.get("normalization", {})
    if norm.get("method", "percentile") != "percentile":
        raise ValueError(f"model={str(model)!r}: blockwise segmentation needs a percentile-normalised model")
    cores = block_grid(src.shape, block)

    def report(phase: str, i: int, n: int) -> None:
        if progress is not None:
            progress(phase, i, n)

    planes = [src.plane(z) for z in range(src.planes)]
    stack = src.planes > 1  # a z-stack: each plane a 2D image, as segment() runs a 2D model on one
    jobs = [(z, core) for z in range(len(planes)) for core in cores]

    def run(client: Any) -> BlockwiseResult:
        from distributed import as_completed

        def gather(futures: list, phase: str) -> list:
            results: list = [None] * len(futures)
            index = {f.key: i for i, f in enumerate(futures)}
            done = 0
            for fut in as_completed(futures):
                results[index[fut.key]] = fut.result()
                done += 1
                report(phase, done, len(futures))
            return results

        parts = gather(client.map(_histogram_task, [planes[z] for z, _ in jobs], [c for _, c in jobs], pure=False),
                       "normalise")
        bounds = [_percentiles(parts[z * len(cores):(z + 1) * len(cores)], float(norm.get("low", 1.0)),
                               float(norm.get("high", 99.8))) for z in range(len(planes))]  # per plane, as segment()
        found = gather([client.submit(_detect_task, planes[z], c, model=str(model), device=device, lo=bounds[z][0],
                                      hi=bounds[z][1], halo=halo, margin=margin, prob_threshold=pt, nms_threshold=nt,
                                      tile_size=tile_size, overlap=overlap, pure=False) for z, c in jobs], "detect")
        objects = [_plane_objects(found[z * len(cores):(z + 1) * len(cores)], src.shape, block, nt, net.n_rays)
                   for z in range(len(planes))]
        merged = sum(o["merged"] for o in objects)
        near_seams = sum(o["near_seams"] for o in objects)
        # labels: plane by plane (as segment() joins a z-stack's planes), 1..N by decreasing score in each
        plane_of = np.concatenate([np.full(len(o["points"]), z, np.int64) for z, o in enumerate(objects)])
        points = np.concatenate([o["points"] for o in objects])
        dists = np.concatenate([o["dists"] for o in objects])
        rmax = np.concatenate([o["rmax"] for o in objects])
        n = len(points)
        dtype = np.dtype(np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32)
        ids = np.arange(1, n + 1, dtype=np.int64)
        out = Path(output)
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".ijtorch-partial-", dir=out))
        try:
            zpath = staging / f"{name}.ome.zarr"
            arr_path = _create_labels_zarr(zpath, ((src.planes,) if stack else ()) + src.shape, block, dtype)
            lo_y, hi_y = points[:, 0] - rmax - 1, points[:, 0] + rmax + 1
            lo_x, hi_x = points[:, 1] - rmax - 1, points[:, 1] + rmax + 1
            futures = []
            for z, (y0, y1, x0, x1) in jobs:
                sel = np.flatnonzero((plane_of == z) & (hi_y >= y0) & (lo_y < y1) & (hi_x >= x0) & (lo_x < x1))
                futures.append(client.submit(_render_task, planes[z], str(arr_path), (y0, y1, x0, x1), ids[sel],
                                             points[sel], dists[sel], dtype.str, z if stack else None, pure=False))
            merged_stats = _merge_stats(gather(futures, "render"), n)
            present = merged_stats["area"] > 0
            if not present.all():  # objects hidden under more probable ones: drop, renumber 1..M
                lut = np.zeros(n + 1, np.int64)
                lut[1:][present] = np.arange(1, int(present.sum()) + 1)
                gather([client.submit(_relabel_task, str(arr_path), c, lut.astype(dtype), z if stack else None,
                                      pure=False) for z, c in jobs], "renumber")
                merged_stats = {k: v[present] for k, v in merged_stats.items()}
                merged_stats["label"] = np.arange(1, int(present.sum()) + 1)
                keep_rois = np.flatnonzero(present)
            else:
                keep_rois = np.arange(n)
            files = {"labels": out / zpath.name}
            from ijtorch.io.outputs import write_table_csv

            area = merged_stats["area"].astype(np.float64)
            table = {"label": merged_stats["label"], **({"z": plane_of[keep_rois]} if stack else {}),
                     "area": merged_stats["area"],
                     "centroid_y": merged_stats["sum_y"] / np.maximum(area, 1),
                     "centroid_x": merged_stats["sum_x"] / np.maximum(area, 1),
                     "mean_intensity": merged_stats["sum_i"] / np.maximum(area, 1),
                     "bbox_y0": merged_stats["min_y"], "bbox_x0": merged_stats["min_x"],
                     "bbox_y1": merged_stats["max_y"] + 1, "bbox_x1": merged_stats["max_x"] + 1}
            write_table_csv(staging / f"{name}_measurements.csv", table)
            files["measurements"] = out / f"{name}_measurements.csv"
            if rois:
                from ijtorch.io.roiset import write_roiset
                from ijtorch.models.stardist.geometry import polygon_vertices

                verts = polygon_vertices(points[keep_rois], dists[keep_rois]) if len(keep_rois) else \
                    np.zeros((0, 2, net.n_rays))
                polygons = [np.stack([v[1], v[0]], axis=1) for v in verts]
                positions = None  # a z-stack's ROI sits on its slice (ImageJ's C, Z, T position, 1-based)
                if stack:
                    positions = np.zeros((len(keep_rois), 3), np.int64)
                    positions[:, 1] = plane_of[keep_rois] + 1
                write_roiset(staging / f"{name}_RoiSet.zip", polygons,
                             names=[f"label_{int(lab):04d}" for lab in merged_stats["label"]], positions=positions)
                files["rois"] = out / f"{name}_RoiSet.zip"
            for entry in sorted(staging.iterdir()):  # all of them written: move into place
                target = out / entry.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(entry, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        n_final = len(merged_stats["label"])
        return BlockwiseResult(labels=out / f"{name}.ome.zarr", files=files, n_objects=n_final, dtype=dtype.name,
                               shape=((src.planes,) if stack else ()) + src.shape, n_blocks=len(jobs),
                               near_seams=near_seams, merged_at_seams=merged, seconds=time.monotonic() - t0,
                               stats={"percentiles": bounds[0] if not stack else bounds, "prob_threshold": pt,
                                      "nms_threshold": nt})

    if client is not None:
        return run(client)
    from .cluster import DaskOptions, open_client

    with open_client(dask or DaskOptions()) as own:
        return run(own)


def _plane_objects(found: Sequence[dict[str, np.ndarray]], shape: tuple[int, int], block: int, nms_threshold: float,
                   n_rays: int) -> dict[str, Any]:
    """One plane's objects from its blocks: those on a seam found by two blocks kept once, ordered by
    decreasing score (ties: raster order), as the whole-image run numbers them."""
    from ijtorch.models.stardist.geometry import polygon_nms

    points = np.concatenate([f["points"] for f in found]) if found else np.zeros((0, 2), np.int64)
    dists = np.concatenate([f["dists"] for f in found]) if found else np.zeros((0, n_rays))
    scores = np.concatenate([f["prob"] for f in found]) if found else np.zeros(0, np.float32)
    # seams: polygons reaching across a seam, found by two blocks -> one more NMS among them
    rmax = dists.max(axis=1) if len(dists) else np.zeros(0)
    reach = _seam_distance(points, shape, block) <= (rmax + (rmax.max() if len(rmax) else 0))
    near = np.flatnonzero(reach)
    merged = 0
    if len(near):
        kept = polygon_nms(points[near], dists[near], scores[near], nms_threshold=nms_threshold)
        drop = np.setdiff1d(near, near[kept])
        merged = len(drop)
        keep = np.ones(len(points), bool)
        keep[drop] = False
        points, dists, scores, rmax = points[keep], dists[keep], scores[keep], rmax[keep]
    near_seams = int(np.count_nonzero(_seam_distance(points, shape, block) <= rmax))
    order = np.lexsort((points[:, 1], points[:, 0], -scores.astype(np.float64)))
    return {"points": points[order], "dists": dists[order], "scores": scores[order], "rmax": rmax[order],
            "merged": merged, "near_seams": near_seams}


def _merge_stats(parts: Sequence[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    big = np.iinfo(np.int64).max
    m = {"label": np.arange(1, n + 1), "area": np.zeros(n, np.int64), "sum_y": np.zeros(n), "sum_x": np.zeros(n),
         "sum_i": np.zeros(n), "min_y": np.full(n, big), "max_y": np.full(n, -1), "min_x": np.full(n, big),
         "max_x": np.full(n, -1)}
    for s in parts:
        i = s["label"] - 1
        for k in ("area", "sum_y", "sum_x", "sum_i"):
            np.add.at(m[k], i, s[k])
        for k in ("min_y", "min_x"):
            np.minimum.at(m[k], i, s[k])
        for k in ("max_y", "max_x"):
            np.maximum.at(m[k], i, s[k])
    return m


def _create_labels_zarr(path: Path, shape: tuple[int, ...], block: int, dtype: np.dtype) -> Path:
    """An empty OME-Zarr label image, ``YX`` or ``ZYX`` (one chunk per block of a plane; NGFF metadata
    written by ome-zarr)."""
    import warnings

    import zarr

    group = zarr.open_group(str(path), mode="w")
    chunks = (1,) * (len(shape) - 2) + (block, block)
    group.create_array("0", shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscales_metadata

    axes = ["z", "y", "x"][-len(shape):]
    write_multiscales_metadata(group, datasets=[{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * len(shape)}]}], axes=axes, name="labels")
    return path / "0"
