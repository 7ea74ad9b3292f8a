"""Segmentation benchmark: accuracy on held-out DSB nuclei and CPU time for a 2048x2048 image.

Compares (a) the classical baseline (:func:`ijtorch.tasks.classical.segment_classical`, Otsu +
seeded watershed) with (b) the bundled star-convex model (``segment(data, "YX", model="nuclei")``)
on the bundled model's **validation images only** (names from ``training.val_names`` in its
``config.json``), so no image the model was trained on is scored. Reports AP@0.5 and AP@0.75
(DSB ``tp/(tp+fp+fn)``, pooled over images and mean per image), then seconds for one 2048x2048
image (real DSB nuclei tiled to that size) and the ratio to the classical baseline measured in the
same run. A second row scores the model with test-time augmentation (``test_time_augmentation=True``:
averaged over the 8 flips/rotations). A second table resizes the validation images (and their
ground truth) by 0.5 and 2 and compares the model as is with ``scale=`` set to undo the resize.
Nothing is asserted; not part of ``make test``.

Run: ``python benchmarks/bench_segment.py [--limit N] [--threads T]``. The lead adds the ImageJ
end-to-end timing (``add_rows`` hook below).

``--3d`` instead checks the 3D star-convex (polyhedron) model, for which there is no annotated
data: it simulates anisotropic z-stacks of nuclei (:func:`ijtorch.simulate.nuclei.simulate_nuclei_3d`),
trains a small ``stardist3d`` model from scratch for ``--minutes`` on the training volumes (thresholds
tuned on its validation volumes) and reports AP@0.5/0.75 on held-out volumes (other seeds) next to a
classical 3D baseline (Gaussian smoothing, Otsu, anisotropic distance transform, h-maxima seeded
watershed) and the same post-processing fed the *true* maps (what the representation allows), with
seconds per volume. Run it under ``nice``: ``nice -n 10 python benchmarks/bench_segment.py --3d``.
The learning rate (1e-2, constant under the time limit) is ten times the training default: on one
held-out volume of this simulation, 150 steps at 3e-3 left the distances under-fitted (3 of 30
nuclei matched at IoU 0.5), 150 steps at 1e-2 matched 30 of 30.

``--vs-stardist`` times ``segment()`` against StarDist's ``predict_instances`` side by side on the
same images (validation images and 1024²/2048² mosaics) at 1 and 2 threads, forward and NMS in
seconds per megapixel; StarDist runs in its own interpreter (``--stardist-python`` or
``$IJTORCH_STARDIST_PYTHON``): see ``benchmarks/segment_speed.py``.

``--cells`` runs ``benchmarks/bench_segment_cells.py``'s ``main()`` when that file exists; otherwise it scores the bundled U-Net + watershed models on the held-out parts of the shared data
recorded in their ``config.json`` (``held_out``): ``cells_phase`` on the held-out Usiigaci crop,
``bacteria_phase`` on the held-out frames of the bacteria movie; next to the classical pipeline with
its parameters chosen on the same model's training images (``tools/train_bundled_cells.py``
``classical_tuned``). AP@0.5/0.75 pooled, splits, merges (``ijtorch evaluate`` rules), seconds per
megapixel. No Cellpose row yet (see the README).
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
sys.path.insert(0, str(ROOT / "benchmarks"))
import segment_speed  # benchmarks/segment_speed.py, also when this file is loaded by path

DATA = ROOT.parent / "shared" / "data" / "nuclei_dsb2018" / "train"
MORE = DATA.parent / "more"  # the further 381 images: the bundled model holds out some of them too
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


def star_convex_segmenter(model: str = "nuclei", *, test_time_augmentation: bool = False
                          ) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    try:
        from ijtorch.tasks.segment import segment
    except ImportError as e:
        return None, f"ijtorch.tasks.segment not importable: {e}"

    def run(img: np.ndarray) -> np.ndarray:
        out = segment(img, "YX", model=model, test_time_augmentation=test_time_augmentation)
        labels = getattr(out, "labels", out)  # a result dataclass or the label array
        return np.asarray(labels)

    return run, ""


def classical_segmenter() -> Callable[[np.ndarray], np.ndarray]:
    from ijtorch.tasks.classical import segment_classical

    return lambda img: segment_classical(img, "YX")


def score(method: Callable[[np.ndarray], np.ndarray], pairs: list[Any]) -> dict[str, float]:
    """Pooled and per-image-mean AP at THRESHOLDS, plus seconds per image."""
    from ijtorch.metrics.instance import label_overlap, match_labels  # noqa: F401 (label_overlap: warm import)

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


def classical_3d_segmenter(anisotropy: tuple[float, float, float], *, sigma: float = 1.0, h: float = 1.0,
                           min_size: int = 30) -> Callable[[np.ndarray], np.ndarray]:
    """Otsu + h-maxima seeded watershed of the (physical) distance transform, for ZYX volumes."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    aniso = np.asarray(anisotropy, np.float64)

    def run(img: np.ndarray) -> np.ndarray:
        sm = ndi.gaussian_filter(img.astype(np.float32), sigma=sigma / aniso)
        fg = ndi.binary_fill_holes(sm > threshold_otsu(sm))
        dist = ndi.distance_transform_edt(fg, sampling=aniso)
        markers, _ = ndi.label(h_maxima(dist, h).astype(bool) & fg)
        labels = watershed(-dist, markers, mask=fg)
        counts = np.bincount(labels.ravel())
        labels[(counts < min_size)[labels] & (labels > 0)] = 0
        return relabel_sequential(labels)[0].astype(np.int32)

    return run


def true_maps_3d(n_rays: int, anisotropy: tuple[float, float, float] = (2.0, 1.0, 1.0),
                 grid: tuple[int, int, int] = (1, 2, 2)) -> Callable[[np.ndarray], np.ndarray]:
    """Segments a *label volume* through its own StarDist maps (an oracle for the post-processing)."""
    from ijtorch.models.stardist import geometry3d as s3

    rays = s3.fibonacci_rays(n_rays, anisotropy)

    def run(labels: np.ndarray) -> np.ndarray:
        prob = s3.object_probabilities_3d(labels, anisotropy, grid)
        dist = s3.star_distances_3d(labels, rays, grid)
        return s3.instances_from_maps_3d(prob, dist, rays, labels.shape, grid=grid)[0]

    return run


def bench_3d(args: argparse.Namespace) -> int:
    """Synthetic 3D nuclei: a 3D star-convex model trained for ``args.minutes`` vs the classical 3D baseline."""
    import tempfile

    from ijtorch.models.stardist.model3d import StarDist3DModel
    from ijtorch.simulate.nuclei import simulate_nuclei_3d
    from ijtorch.train.data import Pair
    from ijtorch.train.stardist3d_train import train_stardist3d

    shape, sim = (32, 96, 96), dict(n_nuclei=30, radius=(4.0, 8.0), anisotropy=2.0)
    train = [Pair(f"train{s}", v.image, v.labels) for s in range(args.train_volumes)
             for v in [simulate_nuclei_3d(shape, seed=s, **sim)]]
    test = [Pair(f"test{s}", v.image, v.labels) for s in range(1000, 1000 + args.test_volumes)
            for v in [simulate_nuclei_3d(shape, seed=s, **sim)]]
    n_objects = sum(int(p.labels.max()) for p in test)
    rows: list[dict[str, Any]] = []
    classical = classical_3d_segmenter((2.0, 1.0, 1.0))
    rows.append({"method": "classical 3D (Otsu + watershed)", "n_images": len(test), **score(classical, test)})
    rows.append({"method": "star-convex 3D, true maps", "n_images": len(test), **score(true_maps_3d(64), [Pair(p.name, p.labels, p.labels) for p in test]),
                 "note": "ground-truth prob/distances -> NMS -> labels: what the representation allows"})
    with tempfile.TemporaryDirectory() as tmp:
        summary = train_stardist3d(train, output=Path(tmp) / "model", epochs=10_000, steps_per_epoch=10, batch_size=2,
                                   patch_size=(16, 48, 48), n_rays=64, anisotropy=(2.0, 1.0, 1.0), base_channels=8,
                                   lr=1e-2, time_limit_s=args.minutes * 60, val_fraction=0.2, device="cpu",
                                   progress_bar=False, evaluate=False, seed=0)
        model = StarDist3DModel.load(Path(tmp) / "model")

        def star(img: np.ndarray) -> np.ndarray:
            return model.predict_instances(img)[0]

        rows.append({"method": "star-convex 3D (trained here)", "n_images": len(test), **score(star, test),
                     "note": f"{summary['epochs_run']} epochs x 10 steps in {summary['train_seconds']:.0f} s, "
                             f"thresholds {summary['thresholds']}"})
    for row in rows:
        row["x classical"] = row["s/image"] / rows[0]["s/image"]
    print_table(rows, f"synthetic 3D nuclei {shape[0]}x{shape[1]}x{shape[2]} (z step 2x the pixel size): "
                      f"{len(train)} training volumes, {len(test)} held-out volumes with {n_objects} nuclei, CPU")
    print("AP@T = tp/(tp+fp+fn); pooled = counts summed over volumes; mean = average of per-volume values; "
          "'x classical' = time ratio to the classical baseline in this run")
    return 0


def pixel_size_rows(pairs: list[Any], model: str) -> list[dict[str, Any]]:
    """The validation images resized by 0.5 and 2 (nuclei at another pixel size, ground truth
    resized with them): the model as is (``scale=1``) vs told the size change (``scale=1/f``).
    Upsampling by 2 uses only the images of at most 512² pixels, to keep the run short."""
    from scipy import ndimage as ndi

    from ijtorch.tasks.segment import segment
    from ijtorch.train.data import Pair

    rows = []
    for factor in (0.5, 2.0):
        subset = [p for p in pairs if factor < 1 or p.image.size <= 512 * 512]
        scaled = [Pair(p.name, ndi.zoom(p.image.astype(np.float32), factor, order=1),
                       ndi.zoom(p.labels, factor, order=0)) for p in subset]
        for scale in (1.0, 1.0 / factor):
            method = (lambda sc: lambda img: segment(img, "YX", model=model, scale=sc).labels)(scale)
            row = score(method, scaled)
            rows.append({"method": f"images resized x{factor:g}, scale={scale:g}", "n_images": len(subset),
                         **{k: v for k, v in row.items() if k.startswith("AP@0.50")}})
    return rows


def tile_seams(model: str, images: list[np.ndarray], tile: int = 256, overlap: int = 64) -> dict[str, Any]:
    """Objects split or merged by tiling: a 2x2 mosaic of the held-out images segmented in ``tile``-px
    tiles vs as one tile, counted with the ``ijtorch evaluate`` split/merge rules (whole = truth)."""
    from ijtorch.metrics.instance import split_merge_counts
    from ijtorch.tasks.segment import segment

    h, w = min(im.shape[0] for im in images), min(im.shape[1] for im in images)
    crops = [im[:h, :w] for im in (images * 4)[:4]]
    mosaic = np.block([[crops[0], crops[1][:, ::-1]], [crops[2][::-1], crops[3][::-1, ::-1]]])
    whole = segment(mosaic, "YX", model=model, device="cpu", tile_size=int(max(mosaic.shape)) + 64, overlap=0).labels
    tiled = segment(mosaic, "YX", model=model, device="cpu", tile_size=tile, overlap=overlap).labels
    splits, merges = split_merge_counts(whole, tiled)
    n = int(len(np.unique(whole)) - 1)
    return {"seams": f"{splits} split, {merges} merged of {n}"}


def bench_cells(args: argparse.Namespace) -> int:
    """``--cells``: the bundled phase-contrast models on their held-out data vs the classical pipeline."""
    import importlib.util

    from ijtorch.models.store import read_config, resolve_model
    from ijtorch.train.data import load_pairs

    def tool(name: str) -> Any:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        return mod

    cells, bacteria = tool("train_bundled_cells"), tool("train_bundled_bacteria")
    shared = ROOT.parent / "shared" / "data"
    data = {"cells_phase": lambda: load_pairs(shared / "cells_usiigaci_phase" / "train"),
            "bacteria_phase": lambda: bacteria.load_frames(shared / "tracking_bacteria")}
    rows: list[dict[str, Any]] = []
    for model, load in data.items():
        try:
            cfg = read_config(resolve_model(model))
        except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not fail
            rows.append({"method": model, "note": f"skipped: {e}"})
            continue
        held = set(cfg.get("held_out") or [])
        pairs = load()
        test = [p for p in pairs if p.name in held]
        train = [p for p in pairs if p.name not in held]
        if not test:
            rows.append({"method": model, "note": "skipped: no held_out names in its config.json"})
            continue
        ev = cells.evaluate(resolve_model(model), [p.image for p in test], [p.labels for p in test],
                            [p.image for p in train], [p.labels for p in train])
        seams = tile_seams(str(resolve_model(model)), [p.image for p in test])
        for method, r in ((model, ev["model"]), (f"classical ({model} training images)", ev["classical"])):
            rows.append({"method": method, "held out": f"{len(test)} img / {r['n_true']} obj",
                         "AP@0.50": r["ap@0.50"], "AP@0.75": r["ap@0.75"], "splits": r["splits"],
                         "merges": r["merges"], "found": r["n_pred"], "s/Mpx": r["s_per_mpx"],
                         **(seams if method == model else {})})
    print_table(rows, "Bundled phase-contrast U-Net + watershed models on held-out shared data (CPU)")
    print("AP@T = tp/(tp+fp+fn) pooled over the held-out objects; classical = tasks/classical.py with parameters "
          "chosen on the model's training images; s/Mpx = seconds per megapixel (segment(), model loaded)")
    return 0


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
    ap.add_argument("--skip-pixel-size", action="store_true", help="leave out the resized-image (scale=) rows")
    ap.add_argument("--no-tta", action="store_true", help="leave out the test-time augmentation row (8x the time)")
    ap.add_argument("--cells", action="store_true",
                    help="bundled phase-contrast cell and bacteria models on their held-out data vs classical")
    ap.add_argument("--3d", dest="three_d", action="store_true",
                    help="3D check on synthetic nuclei volumes: train a small 3D model, compare with classical 3D")
    ap.add_argument("--minutes", type=float, default=5.0, help="--3d: training time limit in minutes")
    segment_speed.add_arguments(ap)
    ap.add_argument("--train-volumes", type=int, default=8, help="--3d: simulated training volumes")
    ap.add_argument("--test-volumes", type=int, default=4, help="--3d: simulated held-out volumes")
    args, rest = ap.parse_known_args(argv)
    cells_module = ROOT / "benchmarks" / "bench_segment_cells.py"
    if args.cells and cells_module.exists():  # the phase-contrast benchmark lives in its own file
        import importlib.util

        spec = importlib.util.spec_from_file_location("bench_segment_cells", cells_module)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return int(module.main(rest) or 0)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.three_d:
        return bench_3d(args)
    if args.cells:
        return bench_cells(args)

    from ijtorch.train.data import load_pairs

    if not DATA.is_dir():
        print(f"skipped: shared data not found at {DATA}")
        return 0
    pairs = load_pairs(DATA) + (load_pairs(MORE) if MORE.is_dir() else [])
    val_names, why = bundled_val_names(args.model)
    if args.vs_stardist:
        from ijtorch.models.store import read_config, resolve_model

        train_names = (read_config(resolve_model(args.model)).get("training") or {}).get("train_names")
        return segment_speed.main(args, pairs, val_names, train_names, print_table, big_image)
    if val_names is None:
        print(f"note: {why}; scoring the classical baseline on every image instead")
        eval_pairs = pairs
    else:
        eval_pairs = [p for p in pairs if p.name in set(val_names)]
        missing = sorted(set(val_names) - {p.name for p in eval_pairs})
        if missing:
            print(f"note: {len(missing)} validation name(s) not found in {DATA} or {MORE}: {missing[:5]}")
    if args.limit:
        eval_pairs = eval_pairs[: args.limit]
    big = big_image(eval_pairs, args.size)

    classical = classical_segmenter()
    rows: list[dict[str, Any]] = []
    t_classical = time_once(classical, big)
    rows.append({"method": "classical (Otsu + watershed)", "n_images": len(eval_pairs), **score(classical, eval_pairs),
                 "s (2048²)": t_classical, "x classical": 1.0})
    for tta in (False, True)[: 1 if args.no_tta else 2]:
        method = f"star-convex '{args.model}'" + (" + test-time augmentation (8 views)" if tta else "")
        star, why_star = star_convex_segmenter(args.model, test_time_augmentation=tta)
        if star is None or val_names is None:
            rows.append({"method": method, "note": f"skipped: {why_star or why}"})
            break
        try:
            t_star = time_once(star, big)
            rows.append({"method": method, "n_images": len(eval_pairs), **score(star, eval_pairs),
                         "s (2048²)": t_star, "x classical": t_star / t_classical})
        except Exception as e:  # noqa: BLE001
            rows.append({"method": method, "note": f"failed: {type(e).__name__}: {e}"})
    add_rows(rows, eval_pairs, big, args.model)
    split = "validation split of the bundled model" if val_names is not None else "all images (no split found)"
    print_table(rows, f"DSB 2018 nuclei, {len(eval_pairs)} images ({split}); timing on a {args.size}² image, CPU")
    print("AP@T = tp/(tp+fp+fn); pooled = counts summed over images; mean = average of per-image values; "
          "'x classical' = time ratio to the classical baseline in this run")
    if val_names is not None and not args.skip_pixel_size:
        print()
        print_table(pixel_size_rows(eval_pairs, args.model),
                    "Other pixel sizes: the same validation images resized (ground truth resized with them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
