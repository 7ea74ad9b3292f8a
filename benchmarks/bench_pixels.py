"""Pixel classification from a few scribbles: ijtorch vs a random forest on multiscale features.

Real images with dense ground truth turned into classes:

* ``nuclei``: ``../shared/data/nuclei_dsb2018`` (the 520×696 fluorescence images) → background /
  nucleus interior / nucleus boundary (2 px, ``find_boundaries(mode="thick")``);
* ``cells``: ``../shared/data/cells_usiigaci_phase`` (5 phase-contrast crops 512²) → background /
  cell / cell boundary.

Per seed, a few images are "annotated" with simulated strokes (:func:`scribbles_from_classes`, a
few seeded random-walk strokes per class) and both methods learn from exactly those strokes:
ijtorch's pixel classifier (:func:`ijtorch.tasks.pixels.train_pixels`, default recipe) and
scikit-image's ``fit_segmenter`` / ``predict_segmenter`` random forest on
``multiscale_basic_features`` (the Weka/Labkit approach; 50 trees, depth 10, as scikit-image's
example). Scores: per-class Dice on all pixels of held-out images (pooled), mean over classes;
times: to train, to predict, to the first prediction (features + training + one held-out image),
after an untimed warm-up call of each method on a small crop.
Also: Dice vs number of strokes, and a human-in-the-loop round on a 1024² image (warm start from
the previous model, new strokes, retrain, predict the whole image). Beside the default one-stage model
(``ijtorch``) the two-stage auto-context model (``ij+ctx``: ``train_pixels(context=True)``, a second
head on the features + smoothed first-stage probabilities) learns from the same strokes
(``--no-context`` skips it).

Run: ``nice -n 10 python3 benchmarks/bench_pixels.py [--seeds 0 1 2] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "python"))


def to_classes(labels: np.ndarray) -> np.ndarray:
    """Instance labels → 1 background, 2 object interior, 3 boundary (2 px thick)."""
    from skimage.segmentation import find_boundaries

    out = np.where(labels > 0, 2, 1).astype(np.uint8)
    out[find_boundaries(labels, mode="thick")] = 3
    return out


def load(name: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    import tifffile

    items = []
    if name == "nuclei":
        for split in ("train", "more"):
            for f in sorted((DATA / "nuclei_dsb2018" / split / "images").glob("*.tif")):
                im = tifffile.imread(f)
                if im.shape == (520, 696):
                    lab = tifffile.imread(DATA / "nuclei_dsb2018" / split / "labels" / f.name)
                    items.append((f.stem, im, to_classes(lab)))
    else:
        for f in sorted((DATA / "cells_usiigaci_phase" / "train" / "images").glob("*.tif")):
            lab = tifffile.imread(DATA / "cells_usiigaci_phase" / "train" / "labels" / f.name)
            items.append((f.stem, tifffile.imread(f), to_classes(lab)))
    return items


def norm(im: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(im, (1, 99.8))
    return ((im.astype(np.float32) - lo) / (hi - lo + 1e-6)).astype(np.float32)


def rf_features(im: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(norm(im), intensity=True, edges=True, texture=True, sigma_min=1, sigma_max=16)


def run_rf(train: list, scribbles: list, test: list, threads: int, seed: int) -> dict:
    from sklearn.ensemble import RandomForestClassifier
    from skimage.future import fit_segmenter, predict_segmenter

    t0 = time.perf_counter()
    feats = [rf_features(im) for _, im, _ in train]
    # several annotated images: side by side, so fit_segmenter sees one feature image
    h = max(f.shape[0] for f in feats)
    f_all = np.concatenate([np.pad(f, ((0, h - f.shape[0]), (0, 0), (0, 0))) for f in feats], axis=1)
    s_all = np.concatenate([np.pad(s, ((0, h - s.shape[0]), (0, 0))) for s in scribbles], axis=1)
    clf = RandomForestClassifier(n_estimators=50, n_jobs=threads, max_depth=10, max_samples=0.05, random_state=seed)
    clf = fit_segmenter(s_all, f_all, clf)
    t_train = time.perf_counter() - t0
    preds, t_pred = [], []
    for _, im, _ in test:
        t1 = time.perf_counter()
        preds.append(predict_segmenter(rf_features(im), clf))
        t_pred.append(time.perf_counter() - t1)
    return {"pred": preds, "train_s": t_train, "predict_s": float(np.mean(t_pred)), "first_s": t_train + t_pred[0],
            "model": clf}


def run_ijtorch(train: list, scribbles: list, test: list, seed: int, steps: int, base=None, context: bool = False) -> dict:
    from ijtorch.tasks.pixels import classify_pixels, train_pixels

    t0 = time.perf_counter()
    summary = train_pixels([im for _, im, _ in train], scribbles, output=None, classes=["background", "object", "boundary"],
                           steps=steps, seed=seed, device="cpu", base_model=base, context=context)
    t_train = time.perf_counter() - t0
    model = summary["model"]
    preds, t_pred = [], []
    for _, im, _ in test:
        t1 = time.perf_counter()
        preds.append(classify_pixels(im, "YX", model=model, device="cpu").classes)
        t_pred.append(time.perf_counter() - t1)
    return {"pred": preds, "train_s": t_train, "predict_s": float(np.mean(t_pred)), "first_s": t_train + t_pred[0],
            "model": model}


def pooled_dice(preds: list, test: list, n_classes: int = 3) -> np.ndarray:
    from ijtorch.tasks.pixels import dice_per_class

    p = np.concatenate([x.ravel() for x in preds])
    t = np.concatenate([gt.ravel() for _, _, gt in test])
    return dice_per_class(p, t, n_classes)


def split(items: list, n_train: int, n_test: int, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(items))
    return [items[i] for i in order[:n_train]], [items[i] for i in order[n_train:n_train + n_test]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strokes", type=int, default=3, help="strokes per class and annotated image")
    ap.add_argument("--stroke-curve", type=int, nargs="*", default=[1, 2, 4, 8],
                    help="strokes per class for the Dice-vs-strokes table (first seed, nuclei and cells)")
    ap.add_argument("--steps", type=int, default=300, help="ijtorch training steps (the default recipe: 300)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and random-forest jobs")
    ap.add_argument("--datasets", nargs="*", default=["nuclei", "cells"], help="none: only the 1024² round")
    ap.add_argument("--no-round", action="store_true", help="skip the 1024² human-in-the-loop round")
    ap.add_argument("--no-context", action="store_true",
                    help="skip the two-stage (auto-context, train_pixels(context=True)) model beside the default one")
    ap.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = ap.parse_args()

    import torch

    from ijtorch.tasks.pixels import scribbles_from_classes

    torch.set_num_threads(args.threads)
    report: dict = {"args": vars(args), "runs": [], "curve": [], "round": None}
    sizes = {"nuclei": (2, 8), "cells": (2, 3)}
    methods = ("rf", "ijtorch") if args.no_context else ("rf", "ijtorch", "ij+ctx")
    # warm-up, untimed: the first call of each method pays for imports, torch's and the forest's thread
    # pools and first-touch allocations, which would otherwise land on whichever split runs first
    w_items = load((args.datasets or ["cells"])[0])[:1]
    w = [(n, im[:128, :128], gt[:128, :128]) for n, im, gt in w_items]
    w_scr = [scribbles_from_classes(gt, strokes_per_class=1, seed=0) for _, _, gt in w]
    run_rf(w, w_scr, w, args.threads, 0)
    run_ijtorch(w, w_scr, w, 0, 5)
    print(f"torch threads {args.threads}; steps {args.steps}; {args.strokes} strokes per class and image")
    print(f"{'data':<7} {'seed':>4} {'method':<8} {'Dice bg/obj/bnd':<20} {'mean':>6} {'train s':>8} {'pred s':>7} {'first s':>8}")
    for name in args.datasets:
        items = load(name)
        for seed in args.seeds:
            train, test = split(items, *sizes[name], seed)
            scr = [scribbles_from_classes(gt, strokes_per_class=args.strokes, seed=seed * 100 + i)
                   for i, (_, _, gt) in enumerate(train)]
            for method in methods:
                r = run_rf(train, scr, test, args.threads, seed) if method == "rf" else \
                    run_ijtorch(train, scr, test, seed, args.steps, context=method == "ij+ctx")
                d = pooled_dice(r["pred"], test)
                row = {"data": name, "seed": seed, "method": method, "dice": d.tolist(), "mean_dice": float(np.nanmean(d)),
                       "train_s": r["train_s"], "predict_s": r["predict_s"], "first_s": r["first_s"],
                       "annotated_px": int(sum((s > 0).sum() for s in scr))}
                report["runs"].append(row)
                print(f"{name:<7} {seed:>4} {method:<8} {'/'.join(f'{v:.3f}' for v in d):<20} {row['mean_dice']:>6.3f} "
                      f"{r['train_s']:>8.2f} {r['predict_s']:>7.2f} {r['first_s']:>8.2f}", flush=True)
    runs = report["runs"]
    print("\nsummary (mean over seeds):")
    for name in args.datasets:
        m = {meth: [r for r in runs if r["data"] == name and r["method"] == meth] for meth in methods}
        dice = {k: np.mean([r["mean_dice"] for r in v]) for k, v in m.items()}
        first = {k: np.mean([r["first_s"] for r in v]) for k, v in m.items()}
        for meth in methods[1:]:
            print(f"  {name}: mean Dice {meth} {dice[meth]:.3f} vs RF {dice['rf']:.3f} ({dice[meth] - dice['rf']:+.3f}); "
                  f"first prediction {first[meth]:.2f} s vs {first['rf']:.2f} s ({first[meth] / first['rf']:.2f}x)")

    if args.stroke_curve:
        print("\nDice vs strokes per class (seed %d):" % args.seeds[0])
        for name in args.datasets:
            items = load(name)
            train, test = split(items, *sizes[name], args.seeds[0])
            for n in args.stroke_curve:
                scr = [scribbles_from_classes(gt, strokes_per_class=n, seed=args.seeds[0] * 100 + i)
                       for i, (_, _, gt) in enumerate(train)]
                rf = float(np.nanmean(pooled_dice(run_rf(train, scr, test, args.threads, args.seeds[0])["pred"], test)))
                ij = float(np.nanmean(pooled_dice(run_ijtorch(train, scr, test, args.seeds[0], args.steps)["pred"], test)))
                report["curve"].append({"data": name, "strokes": n, "rf": rf, "ijtorch": ij})
                print(f"  {name:<7} {n:>2} strokes/class: ijtorch {ij:.3f}  RF {rf:.3f}", flush=True)

    if not args.no_round:
        # a 1024² image: four phase-contrast crops as one mosaic; round 1 then a warm-started round 2
        items = load("cells")
        mosaic = np.block([[items[0][1], items[1][1]], [items[2][1], items[3][1]]])
        gt = np.block([[items[0][2], items[1][2]], [items[2][2], items[3][2]]])
        s1 = scribbles_from_classes(gt, strokes_per_class=4, seed=1)
        s2 = np.maximum(s1, scribbles_from_classes(gt, strokes_per_class=2, seed=2))
        test = [("mosaic", mosaic, gt)]
        r1 = run_ijtorch(test, [s1], test, 0, args.steps)
        r2 = run_ijtorch(test, [s2], test, 1, args.steps, base=r1["model"])
        rf = run_rf(test, [s2], test, args.threads, 0)
        report["round"] = {"first_train_s": r1["train_s"], "retrain_s": r2["train_s"], "predict_s": r2["predict_s"],
                           "round_s": r2["train_s"] + r2["predict_s"], "rf_round_s": rf["first_s"]}
        print(f"\n1024² round: first training {r1['train_s']:.2f} s; warm-started retraining {r2['train_s']:.2f} s "
              f"+ prediction {r2['predict_s']:.2f} s = {r2['train_s'] + r2['predict_s']:.2f} s per round "
              f"(RF features+fit+predict {rf['first_s']:.2f} s)")
        if not args.no_context:  # the same two rounds with the context stage (warm-started too)
            c1 = run_ijtorch(test, [s1], test, 0, args.steps, context=True)
            c2 = run_ijtorch(test, [s2], test, 1, args.steps, base=c1["model"], context=True)
            report["round_context"] = {"first_train_s": c1["train_s"], "retrain_s": c2["train_s"],
                                       "predict_s": c2["predict_s"], "round_s": c2["train_s"] + c2["predict_s"]}
            print(f"1024² round, two-stage model: first training {c1['train_s']:.2f} s; warm-started retraining "
                  f"{c2['train_s']:.2f} s + prediction {c2['predict_s']:.2f} s = {c2['train_s'] + c2['predict_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
