"""Scale out on Dask (issue 21): throughput with 1 vs 2 workers, memory and seams of blockwise runs.

1. **Files/s**: ``--files`` synthetic 1024² nuclei images (``ijtorch.scale.synthetic``) segmented
   one task per file with the CLI's own step (``ijtorch segment --dask``) on a ``LocalCluster`` of 1
   and of 2 worker processes (one torch thread each), in the same run, after each worker loaded
   the model, alternating 1-2-2-1… (``--repeats``) so that a changing load on a shared machine
   cancels out; with the worker CPU-seconds per file; and the same folder through the plain
   single-process ``ijtorch segment`` (torch's default threads) for reference.
2. **Blockwise**: a synthetic mosaic of each ``--sizes`` edge written as a tiled TIFF (tile by tile),
   segmented by :func:`ijtorch.scale.blockwise.segment_blockwise` (``--block`` px blocks) on 2
   workers restarted before each size; the peak RSS of each worker process (``VmHWM``), of the
   driver, and the wall time.
3. **Seams**: every ground-truth nucleus that crosses a block seam is looked up in the written
   labels (a band around each seam, read lazily): split = two or more labels each covering at least
   20 % of it. For the smallest mosaic, the blockwise labels are also matched against the
   whole-image segmentation.

4. **Z-stack** (``--zstack PLANES:SIZE``): a stack of mosaics segmented block by block, plane by plane.

Run: ``python3 benchmarks/bench_scale.py [--files 8] [--sizes 2048,4096,8192,16384] [--block 1024]
[--zstack 8:2048]``.
State the machine's load when you report figures (the script prints the load average).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: reset by exec, unlike ``ru_maxrss``, which a
    worker process spawned by the nanny inherits from the driver)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> None:
    """Reset this process's VmHWM (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _warm(model: str = "nuclei") -> int:
    from ijtorch.models.store import load_model

    load_model(model, device="cpu")
    return os.getpid()


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def throughput(n_files: int, size: int, work: Path, repeats: int = 1) -> dict:
    from distributed import Client, LocalCluster

    from ijtorch.cli import main as cli_main
    from ijtorch.io.tiff import write_imagej_tiff
    from ijtorch.scale.synthetic import mosaic_tile

    folder = work / "files"
    folder.mkdir()
    for k in range(n_files):  # distinct images: another seed each
        tiles = [[mosaic_tile(ty, tx, (size, size), seed=100 + k)[0] for tx in range(size // 256)]
                 for ty in range(size // 256)]
        write_imagej_tiff(folder / f"img{k:02d}.tif", np.block(tiles), "YX")
    files = sorted(folder.glob("*.tif"))

    out: dict = {"files": n_files, "size": size, "load_before": _load(), "runs": []}
    order = [1, 2] + [w for r in range(1, repeats) for w in ((2, 1) if r % 2 else (1, 2))]  # ABBA: load drift cancels
    for run, workers in enumerate(order):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            from ijtorch.scale._plugin import TorchThreads

            client.register_plugin(TorchThreads(1))
            client.run(_warm)
            cpu0 = sum(client.run(_cpu_seconds).values())
            t0 = time.perf_counter()  # the CLI's own path: ijtorch segment FOLDER --dask tcp://...
            code = cli_main(["segment", str(folder), "--output", str(work / f"out{workers}-{run}"), "--dask",
                             cluster.scheduler_address, "--dask-threads", "1"])
            seconds = time.perf_counter() - t0
            cpu = sum(client.run(_cpu_seconds).values()) - cpu0
            assert code == 0, code
        out["runs"].append({"workers": workers, "seconds": seconds, "worker_cpu_s_per_file": cpu / n_files,
                            "load": _load()})
        print(f"  {workers} worker(s): {seconds:.1f} s, {n_files / seconds:.3f} files/s, "
              f"{cpu / n_files:.1f} worker CPU-s per file, load {_load()}", flush=True)
    for workers in (1, 2):
        total = sum(r["seconds"] for r in out["runs"] if r["workers"] == workers)
        n = sum(1 for r in out["runs"] if r["workers"] == workers)
        out[f"workers_{workers}_s"] = total / n
        out[f"workers_{workers}_files_per_s"] = n_files * n / total
    # the plain single-process CLI (no Dask, torch's default threads), wall time including start-up
    t0 = time.perf_counter()
    import subprocess

    subprocess.run([sys.executable, "-m", "ijtorch.cli", "segment", str(folder), "--output", str(work / "single")],
                   check=True, capture_output=True)
    out["single_process_cli_s"] = time.perf_counter() - t0
    for k in ("out1-0", "out2-1"):  # the same labels, ROIs and overlays as the single-process run (the CSVs'
        for f in sorted((work / "single").glob("[!.]*")):  # per-object probabilities may differ in the last bit)
            if f.suffix != ".csv":
                assert (work / k / f.name).read_bytes() == f.read_bytes(), (k, f.name)
    out["speedup_2_vs_1"] = out["workers_1_s"] / out["workers_2_s"]
    out["load_after"] = _load()
    return out


def _band_split(gt, pred, axis: int, seam: int, shape, halfwidth: int = 40) -> tuple[int, int]:
    """(GT nuclei crossing the seam, of which split) in a band of ``halfwidth`` px around it."""
    lo, hi = max(0, seam - halfwidth), min(shape[axis], seam + halfwidth)
    crossing = split = 0
    step = 4096
    for start in range(0, shape[1 - axis], step):
        stop = min(shape[1 - axis], start + step)
        sl = (slice(lo, hi), slice(start, stop)) if axis == 0 else (slice(start, stop), slice(lo, hi))
        g = np.asarray(gt[sl]).astype(np.int64)
        p = np.asarray(pred[sl]).astype(np.int64)
        line = g[seam - lo - 1:seam - lo + 1, :] if axis == 0 else g[:, seam - lo - 1:seam - lo + 1]
        both = np.intersect1d(line[0] if axis == 0 else line[:, 0], line[1] if axis == 0 else line[:, 1])
        both = both[both > 0]
        for obj in both:
            m = g == obj
            # objects cut by the band's own edges along the seam are counted by their chunk only
            area = int(m.sum())
            labs, counts = np.unique(p[m], return_counts=True)
            big = [(lab, c) for lab, c in zip(labs, counts) if lab > 0 and c >= 0.2 * area]
            crossing += 1
            split += len(big) >= 2
    return crossing, split


def seam_split(gt_path: Path, labels_zarr: Path, shape, block: int) -> dict:
    import tifffile
    import zarr

    gt = zarr.open(tifffile.imread(gt_path, aszarr=True), mode="r")
    pred = zarr.open_group(str(labels_zarr), mode="r")["0"]
    crossing = split = 0
    for axis in (0, 1):
        for seam in range(block, shape[axis], block):
            c, s = _band_split(gt, pred, axis, seam, shape)
            crossing, split = crossing + c, split + s
    return {"gt_crossing_seams": crossing, "split": split, "split_fraction": split / max(crossing, 1)}


def _worker_peak() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _phase_printer(client, size: int):
    """Progress lines with the workers' peak RSS so far (a long run killed early still says something)."""
    t0 = time.perf_counter()
    last = {"t": -1e9}

    def progress(phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last["t"] >= 60 or done == total:
            last["t"] = now
            peaks = " / ".join(f"{v:.0f}" for v in sorted(client.run(_worker_peak).values()))
            print(f"  {size}²: {phase} {done}/{total} blocks, {now - t0:.0f} s, worker peak RSS {peaks} MB, "
                  f"load {_load()}", flush=True)

    return progress


def blockwise(sizes: list[int], block: int, work: Path, whole_check: bool = True) -> list[dict]:
    from distributed import Client, LocalCluster

    from ijtorch.scale._plugin import TorchThreads
    from ijtorch.scale.blockwise import segment_blockwise
    from ijtorch.scale.synthetic import write_mosaic_tiff

    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        for size in sizes:
            client.restart()
            client.register_plugin(TorchThreads(1))
            big, gt = work / f"mosaic{size}.tif", work / f"mosaic{size}_gt.tif"
            t0 = time.perf_counter()
            write_mosaic_tiff(big, (size, size), seed=7, labels_path=gt)
            written = time.perf_counter() - t0
            _reset_peak_rss()  # the driver's own peak during this run (not the mosaic writer's or an earlier size's)
            t0 = time.perf_counter()
            res = segment_blockwise(big, work / f"bw{size}", block=block, client=client, rois=size <= 8192,
                                    progress=_phase_printer(client, size))
            seconds = time.perf_counter() - t0
            peaks = client.run(_worker_peak)
            driver = _peak_rss_mb()
            row = {"size": size, "block": block, "objects": res.n_objects, "dtype": res.dtype, "blocks": res.n_blocks,
                   "seconds": seconds, "mpx_per_s": size * size / 1e6 / seconds, "mosaic_write_s": written,
                   "worker_peak_rss_mb": sorted(peaks.values()), "driver_peak_rss_mb": driver,
                   "near_seams": res.near_seams, "merged_at_seams": res.merged_at_seams, "load": _load(),
                   **seam_split(gt, res.labels, (size, size), block)}
            if whole_check and size == min(sizes) and size <= 4096:  # the whole image must fit in memory here
                import tifffile
                import zarr

                from ijtorch.metrics.instance import evaluate_pair
                from ijtorch.tasks.segment import segment

                whole = segment(tifffile.imread(big), "YX", model="nuclei").labels.astype(np.int64)
                labels = np.asarray(zarr.open_group(str(res.labels), mode="r")["0"][:]).astype(np.int64)
                m = evaluate_pair(whole, labels, thresholds=(0.5, 0.9))
                row["vs_whole_image"] = {k: m[k] for k in ("n_true", "n_pred", "tp", "fp", "fn", "splits", "merges")}
                row["vs_whole_image"]["identical_pixels"] = float((whole == labels).mean())
            rows.append(row)
            print(row, flush=True)
            for p in (big, gt):
                p.unlink()
            shutil.rmtree(work / f"bw{size}", ignore_errors=True)
    return rows


def zstack(planes: int, size: int, block: int, work: Path) -> dict:
    """A ``planes`` x ``size``² z-stack segmented block by block (plane by plane, a 2D model) on 2
    workers: seconds, peak RSS per worker, objects, nuclei split at block seams (summed over planes)."""
    import tifffile
    import zarr
    from distributed import Client, LocalCluster

    from ijtorch.scale._plugin import TorchThreads
    from ijtorch.scale.blockwise import segment_blockwise
    from ijtorch.scale.synthetic import write_mosaic_tiff

    big, gt = work / f"zstack{planes}x{size}.tif", work / f"zstack{planes}x{size}_gt.tif"
    write_mosaic_tiff(big, (size, size), seed=11, labels_path=gt, planes=planes)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.register_plugin(TorchThreads(1))
        _reset_peak_rss()
        t0 = time.perf_counter()
        res = segment_blockwise(big, work / "zs", block=block, client=client,
                                progress=_phase_printer(client, size))
        seconds = time.perf_counter() - t0
        peaks = client.run(_worker_peak)
    crossing = split = 0
    labels = zarr.open_group(str(res.labels), mode="r")["0"]
    truth = zarr.open(tifffile.imread(gt, aszarr=True), mode="r")
    for z in range(planes):
        for axis in (0, 1):
            for seam in range(block, size, block):
                c, s_ = _band_split(_Plane(truth, z), _Plane(labels, z), axis, seam, (size, size))
                crossing, split = crossing + c, split + s_
    row = {"planes": planes, "size": size, "block": block, "objects": res.n_objects, "dtype": res.dtype,
           "blocks": res.n_blocks, "seconds": seconds, "mpx_per_s": planes * size * size / 1e6 / seconds,
           "worker_peak_rss_mb": sorted(peaks.values()), "driver_peak_rss_mb": _peak_rss_mb(),
           "gt_crossing_seams": crossing, "split": split, "split_fraction": split / max(crossing, 1), "load": _load()}
    print(row, flush=True)
    return row


class _Plane:
    """Plane ``z`` of a lazily read ``ZYX`` array, indexed as a 2D one."""

    def __init__(self, array, z: int) -> None:
        self.array, self.z = array, z

    def __getitem__(self, index):
        return self.array[(self.z, *index)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--file-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2, help="throughput runs of each worker count (ABBA order)")
    ap.add_argument("--sizes", default="2048,4096,8192")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-blockwise", action="store_true")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--zstack", default="", metavar="PLANES:SIZE", help="also a z-stack of PLANES mosaics of SIZE²")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("distributed").setLevel(logging.ERROR)
    print(f"machine: {os.cpu_count()} cores, load average {_load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ijtorch-bench-scale-", dir=args.work) as tmp:
        work = Path(tmp)
        if not args.skip_throughput:
            t = throughput(args.files, args.file_size, work, args.repeats)
            print(f"throughput: {t}", flush=True)
            print(f"  {args.files} files of {args.file_size}²: 1 worker {t['workers_1_files_per_s']:.3f} files/s, "
                  f"2 workers {t['workers_2_files_per_s']:.3f} files/s -> {t['speedup_2_vs_1']:.2f}x; "
                  f"single-process CLI {t['single_process_cli_s']:.1f} s", flush=True)
        if not args.skip_blockwise:
            rows = blockwise([int(s) for s in args.sizes.split(",")], args.block, work)
            print("| mosaic | objects | blocks | s | Mpx/s | peak RSS per worker (MB) | driver (MB) | "
                  "GT crossing seams | split | load |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['size']}² | {r['objects']} ({r['dtype']}) | {r['blocks']} | {r['seconds']:.0f} | "
                      f"{r['mpx_per_s']:.2f} | {' / '.join(f'{v:.0f}' for v in r['worker_peak_rss_mb'])} | "
                      f"{r['driver_peak_rss_mb']:.0f} | {r['gt_crossing_seams']} | {r['split']} "
                      f"({100 * r['split_fraction']:.2f} %) | {r['load']} |")
        if args.zstack:
            planes, size = (int(v) for v in args.zstack.split(":"))
            r = zstack(planes, size, args.block, work)
            print(f"| {planes} × {size}² z-stack | {r['objects']} ({r['dtype']}) | {r['blocks']} | {r['seconds']:.0f} | "
                  f"{r['mpx_per_s']:.2f} | {' / '.join(f'{v:.0f}' for v in r['worker_peak_rss_mb'])} | "
                  f"{r['driver_peak_rss_mb']:.0f} | {r['gt_crossing_seams']} | {r['split']} "
                  f"({100 * r['split_fraction']:.2f} %) | {r['load']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
