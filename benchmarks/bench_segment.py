"""Segmentation benchmark: accuracy on held-out DSB nuclei and CPU time for a 2048x2048 image.

Compares (a) the classical baseline (:func:`ijtorch.tasks.classical.segment_classical`, Otsu +
seeded watershed) with (b) the bundled star-convex model (``segment(data, "YX", model="nuclei")``)
on the bundled model's **validation images only** (names from ``training.val_names`` in its
``config.json``), so no image the model was trained on is scored. Reports AP@0.5 and AP@0.75
(DSB ``tp/(tp+fp+fn)``, pooled over images and mean per image), then seconds for one 2048x2048
image (real DSB nuclei tiled to that size) and the ratio to the classical baseline measured in the
same run. Nothing is asserted; not part of ``make test``.

Run: ``python benchmarks/bench_segment.py [--limit N] [--threads T]``. The lead adds the ImageJ
end-to-end timing (``add_rows`` hook below).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nuclei_dsb2018" / "train"
THRESHOLDS = (0.5, 0.75)


def bundled_val_names(model: str = "nuclei") -> tuple[list[str] | None, str]:
    """Validation names stored by the trainer in the bundled model's config, or (None, reason)."""
    try:
        from ijtorch.models.store import read_config, resolve_model

        cfg = read_config(resolve_model(model))
    except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not fail
        return None, f"model {model!r} not available: {e}"
    names = (cfg.get("training") or {}).get("val_names")
    if not names:
        return None, f"model {model!r} config has no training.val_names"
    return list(names), ""


def star_convex_segmenter(model: str = "nuclei") -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    try:
        from ijtorch.tasks.segment import segment
    except ImportError as e:
        return None, f"ijtorch.tasks.segment not importable: {e}"

    def run(img: np.ndarray) -> np.ndarray:
        out = segment(img, "YX", model=model)
        labels = getattr(out, "labels", out)  # a result dataclass or the label array
        return np.asarray(labels)

    return run, ""


def classical_segmenter() -> Callable[[np.ndarray], np.ndarray]:
    from ijtorch.tasks.classical import segment_classical

    return lambda img: segment_classical(img, "YX")


def score(method: Callable[[np.ndarray], np.ndarray], pairs: list[Any]) -> dict[str, float]:
    """Pooled and per-image-mean AP at THRESHOLDS, plus seconds per image."""
    from ijtorch.metrics import label_overlap, match_labels  # noqa: F401 (label_overlap: warm import)

    counts = {t: np.zeros(3, np.int64) for t in THRESHOLDS}
    per_image = {t: [] for t in THRESHOLDS}
    t0 = time.perf_counter()
    for p in pairs:
        pred = method(p.image)
        for t in THRESHOLDS:
            r = match_labels(p.labels, pred, iou_threshold=t)
            counts[t] += (r.tp, r.fp, r.fn)
            per_image[t].append(r.accuracy)
    seconds = time.perf_counter() - t0
    out: dict[str, float] = {}
    for t in THRESHOLDS:
        tp, fp, fn = counts[t]
        out[f"AP@{t:.2f} pooled"] = tp / (tp + fp + fn) if tp else 0.0
        out[f"AP@{t:.2f} mean"] = float(np.mean(per_image[t]))
    out["s/image"] = seconds / max(len(pairs), 1)
    return out


def big_image(pairs: list[Any], size: int = 2048) -> np.ndarray:
    """A real-content ``size``² image: the largest validation image mirrored/tiled to that size."""
    src = max(pairs, key=lambda p: p.image.size).image
    reps = [int(np.ceil(size / s)) + 1 for s in src.shape]
    tiled = np.tile(np.concatenate([src, src[::-1]], 0), (max(1, reps[0] // 2 + 1), 1))
    tiled = np.tile(np.concatenate([tiled, tiled[:, ::-1]], 1), (1, max(1, reps[1] // 2 + 1)))
    return np.ascontiguousarray(tiled[:size, :size])


def time_once(method: Callable[[np.ndarray], np.ndarray], img: np.ndarray, repeats: int = 1) -> float:
    method(img[:256, :256])  # warm-up (imports, model load, allocator)
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        method(img)
        best = min(best, time.perf_counter() - t0)
    return best


def add_rows(rows: list[dict[str, Any]], pairs: list[Any], big: np.ndarray, model: str = "nuclei") -> None:
    """ImageJ end to end: ``run("ijtorch Segment")`` from a macro vs its parts timed in Python.

    raw = ImagePlus->numpy conversion + ``segment()`` + label map numpy->ImagePlus conversion,
    measured on the same image in the same run; the ratio shows what the bridge adds.
    """
    try:
        from ijtorch import bridge
        from ijtorch.tasks.segment import segment

        bridge.start()
    except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not fail
        rows.append({"method": "ImageJ 'ijtorch Segment'", "note": f"skipped: {type(e).__name__}: {e}"})
        return
    imp = bridge.numpy_to_imageplus(big, "YX", title="bench")
    imp.show()

    def raw() -> None:
        image = bridge.imageplus_to_numpy(imp)
        result = segment(image.data, image.axes, model=model)
        bridge.numpy_to_imageplus(result.labels, result.axes, title="labels")

    def end_to_end(output: str) -> Callable[[], None]:
        def run() -> None:
            bridge.run_macro(f'selectImage("bench"); run("ijtorch Segment", "model={model} output=[{output}]"); close();')
        return run

    def best_of(fn: Callable[[], None], n: int = 2) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    raw()  # warm-up: model load
    t_raw = best_of(raw)
    for output in ("label map", "all"):
        t_e2e = best_of(end_to_end(output))
        rows.append({"method": f"ImageJ 'ijtorch Segment' output={output}", "s (2048²)": t_e2e,
                     "note": f"{t_e2e / t_raw:.3f}x raw (conversion + segment() = {t_raw:.2f} s)"})
    bridge.run_macro('if (isOpen("ROI Manager")) roiManager("reset"); run("Clear Results");')


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    cols = ["method"] + sorted({k for r in rows for k in r if k != "method"}, key=_col_order)
    width = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print(title)
    print("  ".join(c.ljust(width[c]) if c == "method" else c.rjust(width[c]) for c in cols))
    print("  ".join("-" * width[c] for c in cols))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).ljust(width[c]) if c == "method" else _fmt(r.get(c, "")).rjust(width[c])
                        for c in cols))
    print()


def _col_order(c: str) -> tuple[int, str]:
    order = ["n_images", "AP@0.50 pooled", "AP@0.50 mean", "AP@0.75 pooled", "AP@0.75 mean", "s/image",
             "s (2048²)", "x classical", "note"]
    return (order.index(c) if c in order else len(order), c)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="score at most N validation images (0: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--model", default="nuclei", help="bundled/registered star-convex model name")
    ap.add_argument("--size", type=int, default=2048, help="side of the timing image")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from ijtorch.train.data import load_pairs

    if not DATA.is_dir():
        print(f"skipped: shared data not found at {DATA}")
        return 0
    pairs = load_pairs(DATA)
    val_names, why = bundled_val_names(args.model)
    if val_names is None:
        print(f"note: {why}; scoring the classical baseline on every image instead")
        eval_pairs = pairs
    else:
        eval_pairs = [p for p in pairs if p.name in set(val_names)]
        missing = sorted(set(val_names) - {p.name for p in eval_pairs})
        if missing:
            print(f"note: {len(missing)} validation name(s) not found in {DATA}: {missing[:5]}")
    if args.limit:
        eval_pairs = eval_pairs[: args.limit]
    big = big_image(eval_pairs, args.size)

    classical = classical_segmenter()
    rows: list[dict[str, Any]] = []
    t_classical = time_once(classical, big)
    rows.append({"method": "classical (Otsu + watershed)", "n_images": len(eval_pairs), **score(classical, eval_pairs),
                 "s (2048²)": t_classical, "x classical": 1.0})
    star, why_star = star_convex_segmenter(args.model)
    if star is not None and val_names is not None:
        try:
            t_star = time_once(star, big)
            rows.append({"method": f"star-convex '{args.model}'", "n_images": len(eval_pairs),
                         **score(star, eval_pairs), "s (2048²)": t_star, "x classical": t_star / t_classical})
        except Exception as e:  # noqa: BLE001
            rows.append({"method": f"star-convex '{args.model}'", "note": f"failed: {type(e).__name__}: {e}"})
    else:
        rows.append({"method": f"star-convex '{args.model}'", "note": f"skipped: {why_star or why}"})
    add_rows(rows, eval_pairs, big, args.model)
    split = "validation split of the bundled model" if val_names is not None else "all images (no split found)"
    print_table(rows, f"DSB 2018 nuclei, {len(eval_pairs)} images ({split}); timing on a {args.size}² image, CPU")
    print("AP@T = tp/(tp+fp+fn); pooled = counts summed over images; mean = average of per-image values; "
          "'x classical' = time ratio to the classical baseline in this run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
