"""Label map → ROI Manager: 10 000 objects in a 4096×4096 label map.

Times (a) outline tracing (:func:`ijtorch.tasks.outlines.outlines`), (b) the bulk add into the
visible ROI Manager (:func:`ijtorch.bridge.apply.add_rois_to_manager`) and (c) both, and
compares with the naive path measured in the same run: a Python loop building one PolygonRoi
and calling ``RoiManager.addRoi`` per object. By default the naive loop adds all objects (it
gets slower per ROI as the list grows, so timing the first 1 000 and extrapolating flatters it);
``--naive N`` times the first N and extrapolates linearly. The Swing event queue is drained before each clock stops, so list updates
that ImageJ defers to the event thread are counted.

Run: ``python3 benchmarks/bench_rois.py`` (starts the embedded ImageJ under a private Xvfb).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def synthetic_labels(size: int = 4096, per_side: int = 100, seed: int = 0) -> np.ndarray:
    """Seeded ``size``² uint16 label map with ``per_side``² jittered ellipses (nucleus-like)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.uint16)
    step = size / per_side
    r = int(min(20, step // 2 - 1))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = 0
    for i in range(per_side):
        for j in range(per_side):
            cy = int(np.clip((i + 0.5) * step + rng.uniform(-3, 3), r, size - r - 1))
            cx = int(np.clip((j + 0.5) * step + rng.uniform(-3, 3), r, size - r - 1))
            a, b, th = rng.uniform(0.35 * r, 0.85 * r), rng.uniform(0.35 * r, 0.85 * r), rng.uniform(0, np.pi)
            u = xx * np.cos(th) + yy * np.sin(th)
            v = -xx * np.sin(th) + yy * np.cos(th)
            k += 1
            lab[cy - r:cy + r + 1, cx - r:cx + r + 1][(u / a) ** 2 + (v / b) ** 2 <= 1] = k
    return lab


def _flush_edt() -> None:
    from jpype import JClass, JProxy

    JClass("javax.swing.SwingUtilities").invokeAndWait(JProxy("java.lang.Runnable", dict(run=lambda: None)))


def _naive_add(rm, o, n: int) -> float:
    """Seconds to add the first ``n`` outlines one by one with ``RoiManager.addRoi``."""
    from jpype import JArray, JClass, JInt

    PolygonRoi, Roi = JClass("ij.gui.PolygonRoi"), JClass("ij.gui.Roi")
    rm.reset()
    _flush_edt()
    t0 = time.perf_counter()
    for i in range(n):
        xy = o.polygon(i).astype(np.int32)
        roi = PolygonRoi(JArray(JInt)(xy[:, 0].copy()), JArray(JInt)(xy[:, 1].copy()), len(xy), Roi.POLYGON)
        roi.setName(f"label_{int(o.labels[i]):04d}")
        rm.addRoi(roi)
    _flush_edt()
    elapsed = time.perf_counter() - t0
    if rm.getCount() != n:
        raise RuntimeError(f"naive path: {rm.getCount()} ROIs in the manager, expected {n}")
    return elapsed


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the benchmark, print the figures and return them (seconds, counts, ratios).

    ``argv`` holds command-line style options; None means the defaults (so callers such as
    ``bench_convert.py`` are not affected by their own command line).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--per-side", type=int, default=100, help="objects per row (objects = square of it)")
    parser.add_argument("--naive", type=int, default=0,
                        help="objects added one by one for the comparison (0 = all; fewer = extrapolated)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args([] if argv is None else argv)

    from ijtorch import bridge
    from ijtorch.bridge.apply import add_rois_to_manager, roi_manager
    from ijtorch.tasks.outlines import outlines

    lab = synthetic_labels(args.size, args.per_side)
    n_objects = int(np.count_nonzero(np.bincount(lab.ravel())[1:]))
    t0 = time.perf_counter()
    bridge.start()
    t_start = time.perf_counter() - t0
    rm = roi_manager()

    t_outlines, t_add, t_total = [], [], []
    for _ in range(args.repeat):
        rm.reset()
        _flush_edt()
        t0 = time.perf_counter()
        o = outlines(lab, "YX")
        t1 = time.perf_counter()
        add_rois_to_manager(o, reset=True, manager=rm)
        _flush_edt()
        t2 = time.perf_counter()
        t_outlines.append(t1 - t0)
        t_add.append(t2 - t1)
        t_total.append(t2 - t0)
        if rm.getCount() != len(o) or len(o) != n_objects:
            raise RuntimeError(f"{rm.getCount()} ROIs in the manager for {n_objects} objects")
    n_naive = min(args.naive, len(o)) if args.naive > 0 else len(o)
    _naive_add(rm, o, min(200, n_naive))  # warm-up (JIT, JPype method lookup), not timed
    t_naive = _naive_add(rm, o, n_naive)
    naive_all = t_naive * len(o) / n_naive
    rm.reset()
    _flush_edt()

    res = {
        "objects": float(len(o)), "vertices": float(o.coords.shape[0]), "jvm_start_s": t_start,
        "outlines_s": min(t_outlines), "bulk_add_s": min(t_add), "total_s": min(t_total),
        "outlines_first_s": t_outlines[0], "bulk_add_first_s": t_add[0], "total_first_s": t_total[0],
        "naive_measured_s": t_naive, "naive_n": float(n_naive), "naive_extrapolated_s": naive_all,
    }
    res["add_speedup"] = naive_all / res["bulk_add_s"]
    res["total_speedup"] = (res["outlines_s"] + naive_all) / res["total_s"]
    print(f"bench_rois: {len(o)} objects ({o.coords.shape[0]} polygon vertices) in a {args.size}x{args.size} "
          f"uint16 label map; ImageJ {bridge.runtime().imagej_version}, JVM start {t_start:.2f} s")
    print(f"  (a) outlines            {res['outlines_s']:7.3f} s   (first run {t_outlines[0]:.3f} s, best of {args.repeat})")
    print(f"  (b) ROI Manager bulk    {res['bulk_add_s']:7.3f} s   (first run {t_add[0]:.3f} s)")
    print(f"  (c) total label->ROIs   {res['total_s']:7.3f} s   (first run {t_total[0]:.3f} s; target <= 2 s)")
    if n_naive < len(o):
        print(f"  naive addRoi loop       {t_naive:7.3f} s for {n_naive} ROIs -> {naive_all:.3f} s for {len(o)} (extrapolated)")
    else:
        print(f"  naive addRoi loop       {t_naive:7.3f} s for all {n_naive} ROIs (measured)")
    print(f"  ratio naive/bulk add    {res['add_speedup']:7.1f}x")
    print(f"  ratio naive/bulk total  {res['total_speedup']:7.1f}x   (outlines + naive add vs outlines + bulk add)")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
