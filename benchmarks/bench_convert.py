"""Conversion throughput numpy <-> ImagePlus / ArrayImg, as ratios to a numpy copy in the same run.

Run from the repository root::

    python3 benchmarks/bench_convert.py

Image: a 16-bit 64 x 2048 x 1024 stack (256 MiB). Each figure is the best of ``REPEATS`` runs after
``WARMUP`` runs (the first touch of fresh memory, JVM heap included, is much slower than steady
state on some virtual machines). Two numpy baselines, both on the same bytes:

- ``numpy copy``: ``np.copyto`` into a preallocated array (pure copy speed);
- ``numpy fresh copy``: ``data.copy()``, which like every conversion here also has to get new
  memory from the system (page faults and kernel zeroing).

Results are deleted before the next run so memory can be reused. Not part of ``make test``.
"""

from __future__ import annotations

import gc
import os
import time

os.environ.setdefault("IJTORCH_JAVA_HEAP", "3g")  # read when the JVM starts, below

import numpy as np  # noqa: E402

SHAPE = (64, 2048, 1024)
DTYPE = np.uint16
REPEATS = 5
WARMUP = 2
HEAP_WARMUP = 6


def best_of(fn, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """Best wall time of ``repeats`` calls after ``warmup`` calls; each result is dropped at once."""
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - t0
        del result
        gc.collect()
        if i >= warmup:
            times.append(elapsed)
    return min(times)


def report(name: str, seconds: float, nbytes: int, copy_s: float, fresh_s: float) -> None:
    print(f"{name:<18} {nbytes / seconds / 1e9:6.2f} GB/s  {copy_s / seconds:5.2f}x numpy copy  "
          f"{fresh_s / seconds:5.2f}x numpy fresh copy", flush=True)


def main() -> None:
    from ijtorch import bridge
    from ijtorch.bridge._convert import imageplus_to_numpy, imglib2_to_numpy, numpy_to_imageplus, numpy_to_imglib2

    t0 = time.perf_counter()
    rt = bridge.start()
    print(f"ImageJ {rt.imagej_version}, Java {rt.java_version}, heap -Xmx{os.environ['IJTORCH_JAVA_HEAP']}, "
          f"started in {time.perf_counter() - t0:.1f} s")
    data = np.random.default_rng(0).integers(0, 65536, SHAPE, dtype=DTYPE)
    nbytes = data.nbytes
    print(f"image: {DTYPE.__name__} {'x'.join(map(str, SHAPE))} = {nbytes / 2 ** 20:.0f} MiB; "
          f"best of {REPEATS} after {WARMUP} warm-up runs")

    dst = np.empty_like(data)
    copy_s = best_of(lambda: np.copyto(dst, data))
    del dst
    fresh_s = best_of(lambda: data.copy())
    print(f"{'numpy copy':<18} {nbytes / copy_s / 1e9:6.2f} GB/s  (np.copyto into a preallocated array)")
    print(f"{'numpy fresh copy':<18} {nbytes / fresh_s / 1e9:6.2f} GB/s  (data.copy(): new memory each time)")

    t0 = time.perf_counter()
    for _ in range(HEAP_WARMUP):  # let the JVM heap grow to its working size once, untimed
        numpy_to_imageplus(data, "ZYX")
        numpy_to_imglib2(data)
    print(f"JVM heap warm-up: {2 * HEAP_WARMUP} conversions in {time.perf_counter() - t0:.1f} s (not counted)")

    imp = numpy_to_imageplus(data, "ZYX")
    assert np.array_equal(imageplus_to_numpy(imp).data, data), "ImagePlus round trip is not exact"
    report("numpy->ImagePlus", best_of(lambda: numpy_to_imageplus(data, "ZYX")), nbytes, copy_s, fresh_s)
    report("ImagePlus->numpy", best_of(lambda: imageplus_to_numpy(imp)), nbytes, copy_s, fresh_s)
    del imp

    img = numpy_to_imglib2(data)
    assert np.array_equal(imglib2_to_numpy(img), data), "ArrayImg round trip is not exact"
    report("numpy->ArrayImg", best_of(lambda: numpy_to_imglib2(data)), nbytes, copy_s, fresh_s)
    report("ArrayImg->numpy", best_of(lambda: imglib2_to_numpy(img)), nbytes, copy_s, fresh_s)
    del img

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
