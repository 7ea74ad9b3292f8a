"""Conversion throughput numpy <-> ImagePlus / ArrayImg, as ratios to a numpy copy in the same run.

Run from the repository root::

    python3 benchmarks/bench_convert.py [--repeats N]

Image: a 16-bit 64 x 2048 x 1024 stack (256 MiB). The JVM gets a fixed 3 GiB heap, touched once
by untimed conversions before anything Java is timed. Each conversion is timed in ``REPEATS``
rounds (after ``WARMUP`` rounds); every round also times two numpy baselines on the same bytes,
so both sides see the same machine load. The best time of each is reported:

- ``np.copyto`` into a preallocated array (pure copy speed): the baseline of the ``out=`` rows,
  which copy into an existing ImagePlus / ArrayImg / numpy array (target: >= 0.8x);
- ``numpy fresh copy``: ``data.copy()``, which like the allocating conversions also has to get
  new memory from the system (page faults, kernel zeroing, Java zero-filling new arrays): the
  baseline of the allocating rows.

Results are deleted before the next run so memory can be reused. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

os.environ.setdefault("IJTORCH_JAVA_HEAP", "3g")  # read when the JVM starts, below
# A fixed-size heap (-Xms = -Xmx): otherwise G1 gives memory back after each concurrent mark and
# takes it again later, and first touches of memory dominate (very slow on some VMs). The JVM
# reports this setting on stderr ("Picked up JAVA_TOOL_OPTIONS").
os.environ.setdefault("JAVA_TOOL_OPTIONS", f"-Xms{os.environ['IJTORCH_JAVA_HEAP']}")

import numpy as np  # noqa: E402

SHAPE = (64, 2048, 1024)
DTYPE = np.uint16
REPEATS = 5
WARMUP = 2
HEAP_WARMUP = 6
TARGET = 0.8  # preallocated conversions: at least this fraction of np.copyto's speed


def _timed(fn) -> float:
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    del result
    gc.collect()
    return elapsed


def compare(name: str, convert, data: np.ndarray, *, preallocated: bool, repeats: int) -> None:
    """Time ``convert`` and both numpy baselines in alternating rounds; print best-of GB/s and ratios.

    Alternating rounds put the baselines and the conversion under the same machine load, which
    matters on shared machines. Results are dropped right away so their memory can be reused.
    A preallocated conversion is compared with ``np.copyto`` (both write into existing memory),
    an allocating one with ``data.copy()`` (both get new memory).
    """
    dst = np.empty_like(data)
    best = {"convert": [], "copy": [], "fresh": []}
    for i in range(WARMUP + repeats):
        times = {"copy": _timed(lambda: np.copyto(dst, data)), "fresh": _timed(lambda: data.copy()),
                 "convert": _timed(convert)}
        if i >= WARMUP:
            for key, value in times.items():
                best[key].append(value)
    conv_s, copy_s, fresh_s = (min(best[k]) for k in ("convert", "copy", "fresh"))
    gbs = lambda s: data.nbytes / s / 1e9  # noqa: E731
    if preallocated:
        verdict = "target met" if copy_s / conv_s >= TARGET else f"below the {TARGET}x target"
        print(f"{name:<21} {gbs(conv_s):6.2f} GB/s  {copy_s / conv_s:5.2f}x np.copyto ({gbs(copy_s):5.2f} GB/s)"
              f"  [{verdict}]", flush=True)
    else:
        print(f"{name:<21} {gbs(conv_s):6.2f} GB/s  {fresh_s / conv_s:5.2f}x numpy fresh copy "
              f"({gbs(fresh_s):5.2f} GB/s)  ({copy_s / conv_s:4.2f}x np.copyto, {gbs(copy_s):5.2f} GB/s)",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed rounds per row (best is reported)")
    repeats = parser.parse_args().repeats
    from ijtorch import bridge
    from ijtorch.bridge._convert import imageplus_to_numpy, imglib2_to_numpy, numpy_to_imageplus, numpy_to_imglib2

    t0 = time.perf_counter()
    rt = bridge.start()
    print(f"ImageJ {rt.imagej_version}, Java {rt.java_version}, heap -Xmx{os.environ['IJTORCH_JAVA_HEAP']} "
          f"{os.environ.get('JAVA_TOOL_OPTIONS', '')}, started in {time.perf_counter() - t0:.1f} s")
    data = np.random.default_rng(0).integers(0, 65536, SHAPE, dtype=DTYPE)
    print(f"image: {DTYPE.__name__} {'x'.join(map(str, SHAPE))} = {data.nbytes / 2 ** 20:.0f} MiB; best of {repeats} "
          f"rounds after {WARMUP}, each round timing np.copyto, data.copy() (numpy fresh copy) and the conversion; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    t0 = time.perf_counter()
    for _ in range(HEAP_WARMUP):  # touch the JVM heap once, untimed
        numpy_to_imageplus(data, "ZYX")
        numpy_to_imglib2(data)
    print(f"JVM heap warm-up: {2 * HEAP_WARMUP} conversions in {time.perf_counter() - t0:.1f} s (not counted)")

    print("-- allocating (new ImagePlus / ArrayImg / numpy array each time), vs numpy fresh copy")
    imp = numpy_to_imageplus(data, "ZYX")
    if not np.array_equal(imageplus_to_numpy(imp).data, data):
        raise SystemExit("ImagePlus round trip is not exact")
    compare("numpy->ImagePlus", lambda: numpy_to_imageplus(data, "ZYX"), data, preallocated=False, repeats=repeats)
    compare("ImagePlus->numpy", lambda: imageplus_to_numpy(imp), data, preallocated=False, repeats=repeats)
    img = numpy_to_imglib2(data)
    if not np.array_equal(imglib2_to_numpy(img), data):
        raise SystemExit("ArrayImg round trip is not exact")
    compare("numpy->ArrayImg", lambda: numpy_to_imglib2(data), data, preallocated=False, repeats=repeats)
    compare("ArrayImg->numpy", lambda: imglib2_to_numpy(img), data, preallocated=False, repeats=repeats)

    print("-- preallocated (out=: into an existing ImagePlus / ArrayImg / numpy array), vs np.copyto")
    out = np.empty_like(data)
    out.fill(0)  # touched once, as np.copyto's destination is
    compare("numpy->ImagePlus out=", lambda: numpy_to_imageplus(data, "ZYX", out=imp), data, preallocated=True,
            repeats=repeats)
    compare("ImagePlus->numpy out=", lambda: imageplus_to_numpy(imp, out=out), data, preallocated=True,
            repeats=repeats)
    if not np.array_equal(out, data):
        raise SystemExit("ImagePlus round trip into existing memory is not exact")
    compare("numpy->ArrayImg out=", lambda: numpy_to_imglib2(data, out=img), data, preallocated=True, repeats=repeats)
    out.fill(0)
    compare("ArrayImg->numpy out=", lambda: imglib2_to_numpy(img, out=out), data, preallocated=True, repeats=repeats)
    if not np.array_equal(out, data):
        raise SystemExit("ArrayImg round trip into existing memory is not exact")
    del imp, img, out

    run_roi_benchmark()


def run_roi_benchmark() -> None:
    """ROI Manager timings: ``benchmarks/bench_rois.py`` (another engineer's), skipped when absent."""
    # ---- ROI-manager timing hook -------------------------------------------------------------
    try:
        from bench_rois import main as bench_rois
    except ImportError as exc:
        absent = isinstance(exc, ModuleNotFoundError) and exc.name == "bench_rois"
        print("ROI Manager timing skipped: " + ("benchmarks/bench_rois.py is not there yet" if absent else repr(exc)))
        return
    bench_rois()
    # ------------------------------------------------------------------------------------------


if __name__ == "__main__":
    main()
