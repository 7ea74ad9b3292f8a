"""Conversion throughput numpy <-> ImagePlus / ArrayImg, as ratios to a numpy copy in the same run.

Run from the repository root::

    python3 benchmarks/bench_convert.py

Image: a 16-bit 64 x 2048 x 1024 stack (256 MiB). The JVM gets a fixed 3 GiB heap, touched once
by untimed conversions before anything Java is timed. Each conversion is timed in ``REPEATS``
rounds (after ``WARMUP`` rounds); every round also times two numpy baselines on the same bytes,
so both sides see the same machine load. The best time of each is reported:

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


def _timed(fn) -> float:
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    del result
    gc.collect()
    return elapsed


def compare(name: str, convert, data: np.ndarray) -> None:
    """Time ``convert`` and both numpy baselines in alternating rounds; print best-of GB/s and ratios.

    Alternating rounds put the baselines and the conversion under the same machine load, which
    matters on shared machines. Results are dropped right away so their memory can be reused.
    """
    dst = np.empty_like(data)
    best = {"convert": [], "copy": [], "fresh": []}
    for i in range(WARMUP + REPEATS):
        times = {"copy": _timed(lambda: np.copyto(dst, data)), "fresh": _timed(lambda: data.copy()),
                 "convert": _timed(convert)}
        if i >= WARMUP:
            for key, value in times.items():
                best[key].append(value)
    conv_s, copy_s, fresh_s = (min(best[k]) for k in ("convert", "copy", "fresh"))
    gbs = lambda s: data.nbytes / s / 1e9  # noqa: E731
    print(f"{name:<17} {gbs(conv_s):6.2f} GB/s  {copy_s / conv_s:5.2f}x numpy copy ({gbs(copy_s):5.2f} GB/s)  "
          f"{fresh_s / conv_s:5.2f}x numpy fresh copy ({gbs(fresh_s):5.2f} GB/s)", flush=True)


def main() -> None:
    from ijtorch import bridge
    from ijtorch.bridge._convert import imageplus_to_numpy, imglib2_to_numpy, numpy_to_imageplus, numpy_to_imglib2

    t0 = time.perf_counter()
    rt = bridge.start()
    print(f"ImageJ {rt.imagej_version}, Java {rt.java_version}, heap -Xmx{os.environ['IJTORCH_JAVA_HEAP']} "
          f"{os.environ.get('JAVA_TOOL_OPTIONS', '')}, started in {time.perf_counter() - t0:.1f} s")
    data = np.random.default_rng(0).integers(0, 65536, SHAPE, dtype=DTYPE)
    print(f"image: {DTYPE.__name__} {'x'.join(map(str, SHAPE))} = {data.nbytes / 2 ** 20:.0f} MiB; best of {REPEATS} "
          f"rounds after {WARMUP}, each round timing np.copyto (numpy copy), data.copy() (numpy fresh copy) "
          "and the conversion")

    t0 = time.perf_counter()
    for _ in range(HEAP_WARMUP):  # touch the JVM heap once, untimed
        numpy_to_imageplus(data, "ZYX")
        numpy_to_imglib2(data)
    print(f"JVM heap warm-up: {2 * HEAP_WARMUP} conversions in {time.perf_counter() - t0:.1f} s (not counted)")

    imp = numpy_to_imageplus(data, "ZYX")
    if not np.array_equal(imageplus_to_numpy(imp).data, data):
        raise SystemExit("ImagePlus round trip is not exact")
    compare("numpy->ImagePlus", lambda: numpy_to_imageplus(data, "ZYX"), data)
    compare("ImagePlus->numpy", lambda: imageplus_to_numpy(imp), data)
    del imp

    img = numpy_to_imglib2(data)
    if not np.array_equal(imglib2_to_numpy(img), data):
        raise SystemExit("ArrayImg round trip is not exact")
    compare("numpy->ArrayImg", lambda: numpy_to_imglib2(data), data)
    compare("ArrayImg->numpy", lambda: imglib2_to_numpy(img), data)
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
