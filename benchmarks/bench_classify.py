"""Classification benchmark: ijtorch CNN vs scikit-learn on hand-crafted features (Jurkat cell cycle).

Data: ``../shared/data/classify_jurkat_cellcycle/train.npz`` (672 cells, brightfield / DNA /
darkfield, 40×40, 7 imbalanced phases). A seeded stratified split
(:func:`ijtorch.tasks.classify.stratified_split`, ``--test-fraction`` per class) holds out test
cells that no method sees during training (the ijtorch model keeps its own 15 % validation split
of the training cells for model selection and temperature scaling).

Compared in the same run:
(a) ``ijtorch.tasks.classify.train_classifier`` (small ResNet, balanced loss, augmentation);
(b) scikit-learn RandomForest (``class_weight="balanced"``) and (c) logistic regression
(standardised, balanced) on per-cell features: per channel intensity statistics (mean, std,
min, max, 10/50/90th percentiles, mean gradient magnitude) and regionprops of the Otsu mask of
the DNA channel (area, perimeter, eccentricity, solidity, axis lengths, per-channel mean
intensity inside the mask).

Prints balanced accuracy, macro F1, ECE and the confusion matrix per method, plus wall-clock
training time and the ratio of ijtorch time to RandomForest time. Nothing is asserted; not part of
``make test``.

Run: ``python benchmarks/bench_classify.py [--epochs 30] [--threads 2] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "classify_jurkat_cellcycle" / "train.npz"


def handcrafted_features(images: np.ndarray) -> np.ndarray:
    """Per-cell intensity statistics per channel + regionprops of the Otsu mask of channel 1 (DNA)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    rows = []
    for cell in images.astype(np.float64):
        f: list[float] = []
        for ch in cell:
            f += [ch.mean(), ch.std(), ch.min(), ch.max(), *np.percentile(ch, (10, 50, 90)),
                  np.hypot(ndi.sobel(ch, 0), ndi.sobel(ch, 1)).mean()]
        dna = cell[1]
        mask = dna > threshold_otsu(dna) if dna.max() > dna.min() else np.zeros(dna.shape, bool)
        lab = label(mask)
        if lab.max():
            biggest = 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
            rp = regionprops((lab == biggest).astype(np.uint8))[0]
            f += [rp.area, rp.perimeter, rp.eccentricity, rp.solidity, rp.axis_major_length, rp.axis_minor_length]
            f += [float(ch[lab == biggest].mean()) for ch in cell]
        else:
            f += [0.0] * (6 + len(cell))
        rows.append(f)
    return np.asarray(rows)


def report(name: str, y_true: np.ndarray, pred: np.ndarray, classes: list[str], proba: np.ndarray | None,
           seconds: float) -> dict:
    from ijtorch.metrics_classification import classification_report

    rep = classification_report(y_true, pred, classes=classes, probabilities=proba)
    ece = f"{rep['ece']:.3f}" if "ece" in rep else "n/a"
    print(f"\n== {name}: balanced accuracy {rep['balanced_accuracy']:.3f}, accuracy {rep['accuracy']:.3f}, "
          f"macro F1 {rep['macro_f1']:.3f}, ECE {ece}, train {seconds:.1f} s")
    width = max(len(c) for c in classes)
    print(" " * (width + 2) + " ".join(f"{c[:5]:>5}" for c in classes) + "   recall")
    for c, row in zip(classes, rep["confusion"]):
        r = rep["per_class"][c]["recall"]
        print(f"{c:>{width}}  " + " ".join(f"{v:5d}" for v in row) + f"   {r if r is None else round(r, 3)}")
    rep["seconds"] = seconds
    return rep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--normalization", choices=("dataset", "item"), default="dataset")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ijtorch.tasks.classify import classify, stratified_split, train_classifier

    torch.set_num_threads(args.threads)
    d = np.load(DATA)
    x, y, classes = d["images"], d["labels"].astype(np.int64), [str(c) for c in d["classes"]]
    train, test = stratified_split(y, val_fraction=args.test_fraction, seed=args.seed)
    print(f"Jurkat cell cycle: {len(y)} cells, {len(classes)} classes; held-out test {len(test)} cells "
          f"(stratified, seed {args.seed}): " + ", ".join(f"{c} {n}" for c, n in zip(classes, np.bincount(y[test]))))
    print(f"torch threads {args.threads}, epochs {args.epochs}, normalization {args.normalization}")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = train_classifier(x[train], y[train], classes=classes, output=Path(tmp) / "jurkat",
                                   epochs=args.epochs, seed=args.seed, device="cpu",
                                   normalization=args.normalization)
        t_cnn = time.perf_counter() - t0
        out = classify(x[test], model=summary["output"], device="cpu")
        results["ijtorch CNN"] = report(f"ijtorch CNN (T={summary['temperature']:.2f}, best epoch "
                                        f"{summary['best_epoch']}/{summary['epochs_run']})", y[test],
                                        out["class_index"], classes, out["probabilities"], t_cnn)

    t0 = time.perf_counter()
    feats = handcrafted_features(x)
    t_feat = time.perf_counter() - t0
    for name, clf in (("RandomForest (500 trees, balanced) on hand-crafted features",
                       RandomForestClassifier(n_estimators=500, class_weight="balanced", random_state=args.seed,
                                              n_jobs=args.threads)),
                      ("LogisticRegression (balanced) on hand-crafted features",
                       make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced")))):
        t0 = time.perf_counter()
        clf.fit(feats[train], y[train])
        secs = time.perf_counter() - t0 + t_feat
        results[name] = report(name, y[test], clf.predict(feats[test]), classes, clf.predict_proba(feats[test]), secs)

    print("\n== summary (same run, same held-out cells)")
    rf = results["RandomForest (500 trees, balanced) on hand-crafted features"]
    for name, rep in results.items():
        print(f"{name[:60]:60s} balanced acc {rep['balanced_accuracy']:.3f}  macro F1 {rep['macro_f1']:.3f}  "
              f"train {rep['seconds']:6.1f} s")
    cnn = results["ijtorch CNN"]
    print(f"ratio ijtorch / RandomForest: balanced accuracy {cnn['balanced_accuracy'] / rf['balanced_accuracy']:.2f}x, "
          f"training time {cnn['seconds'] / rf['seconds']:.1f}x")


if __name__ == "__main__":
    main()
