"""Classification benchmark: ijtorch (network + feature forest) vs scikit-learn on hand-crafted features (Jurkat cell cycle).

Data: ``../shared/data/classify_jurkat_cellcycle/train.npz`` (672 cells, brightfield / DNA /
darkfield, 40×40, 7 imbalanced phases: Anaphase 9, Telophase 18). A single held-out split
would hold 1-2 anaphase cells, so every method is scored by seeded stratified k-fold
cross-validation on **identical folds**: each cell is a test cell exactly once, and no method
sees its test cells during training (the ijtorch model carves its own stratified validation
split, for model selection and temperature scaling, out of the training fold only).

Compared in the same run:
(a) ``ijtorch.tasks.classify.train_classifier`` with its default recipe (what the CLI
``train-classifier`` and the Fiji command use), predictions by ``ijtorch.tasks.classify.classify``;
the same model's network alone (without its feature forest, :mod:`ijtorch.models.feature_forest`:
the network's calibrated probabilities); when the recipe is an ensemble, also its first member alone (the same network trained with the
same seed as a 1-member model, i.e. the single-network recipe; its time is that member's training);
(b) scikit-learn on per-cell hand-crafted features: per channel intensity statistics (mean,
std, min, max, 10/50/90th percentiles, mean gradient magnitude) and regionprops of the Otsu mask
of the DNA channel (area, perimeter, eccentricity, solidity, axis lengths, per-channel mean and
integrated intensity inside the mask), standardised where the model needs it, all with
``class_weight="balanced"``: logistic regression (``C`` picked by inner stratified CV on the
training fold), RBF SVM and RandomForest (500 trees).

Prints per-fold and mean ± sd balanced accuracy per method, the pooled (all folds) confusion
matrix, macro F1 and ECE, wall-clock training time, and the ratio of ijtorch to the best
baseline. Nothing is asserted; not part of ``make test``. 5 folds took 3.5-5 minutes on a shared
2-core machine with one torch thread; ``--run-folds 1`` is a quick check. ``--seed`` draws other
folds (and training seeds), to see how much the ranking depends on which cells land in a fold.

Run: ``nice -n 10 python benchmarks/bench_classify.py [--folds 5] [--run-folds N] [--epochs N] [--threads 1]
[--seed 0]``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "classify_jurkat_cellcycle" / "train.npz"
CNN = "ijtorch (default recipe)"
NETWORK = "ijtorch network alone"
FIRST = "ijtorch CNN, first member alone"


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
            biggest = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
            rp = regionprops(biggest.astype(np.uint8))[0]
            f += [rp.area, rp.perimeter, rp.eccentricity, rp.solidity, rp.axis_major_length, rp.axis_minor_length]
            f += [float(ch[biggest].mean()) for ch in cell]
            # integrated intensity above the crop's background (median outside the mask): DNA content
            f += [float((ch[biggest] - np.median(ch[~biggest])).sum()) for ch in cell]
        else:
            f += [0.0] * (6 + 2 * len(cell))
        rows.append(f)
    return np.asarray(rows)


def baselines(seed: int, threads: int) -> dict:
    """Well-configured scikit-learn classifiers (fresh, unfitted), by name; hyper-parameters are picked
    by inner stratified CV on the training fold where that matters."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    return {
        "LogisticRegression (C by inner CV)": make_pipeline(
            StandardScaler(), LogisticRegressionCV(Cs=np.logspace(-2, 3, 11), cv=inner, class_weight="balanced",
                                                   scoring="balanced_accuracy", max_iter=5000)),
        "RBF SVM (C, gamma by inner CV)": GridSearchCV(
            make_pipeline(StandardScaler(), SVC(class_weight="balanced")),
            {"svc__C": [1.0, 10.0, 100.0], "svc__gamma": ["scale", 0.003, 0.01]}, cv=inner,
            scoring="balanced_accuracy"),
        "RandomForest (500 trees)": RandomForestClassifier(n_estimators=500, class_weight="balanced",
                                                           random_state=seed, n_jobs=threads),
    }


def first_member_logits(model_dir: str, images: np.ndarray) -> np.ndarray | None:
    """Test-time-augmented logits of the first member of an ensemble classifier (None: one network)."""
    import torch

    from ijtorch.models.classifier import ClassifierModel

    model = ClassifierModel.load(model_dir)
    if model.net.members is None:
        return None
    first = model.net.members[0]
    with torch.inference_mode():
        t = torch.from_numpy(model.prepare(images))
        return first.logits_from_features(first.features(t, dihedral=True)).numpy()


def network_alone_proba(model_dir: str, images: np.ndarray) -> np.ndarray | None:
    """The model's network's calibrated probabilities, without its feature forest (None: it has none)."""
    from ijtorch.models.classifier import ClassifierModel

    model = ClassifierModel.load(model_dir)
    if model.forest is None:
        return None
    model.forest = None
    return model.predict_proba(images)


def print_confusion(classes: list[str], cm: np.ndarray) -> None:
    width = max(len(c) for c in classes)
    print(" " * (width + 2) + " ".join(f"{c[:5]:>5}" for c in classes) + "   recall")
    for i, (c, row) in enumerate(zip(classes, cm)):
        print(f"{c:>{width}}  " + " ".join(f"{v:5d}" for v in row) + f"   {row[i] / max(row.sum(), 1):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds")
    parser.add_argument("--run-folds", type=int, default=None, help="run only the first N folds (quick check)")
    parser.add_argument("--epochs", type=int, default=None, help="ijtorch epochs (default: train_classifier's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads and RandomForest jobs (1 is fastest on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from sklearn.model_selection import StratifiedKFold

    from ijtorch.metrics.classification import classification_report
    from ijtorch.tasks.classify import classify, train_classifier

    torch.set_num_threads(args.threads)
    d = np.load(DATA)
    x, y, classes = d["images"], d["labels"].astype(np.int64), [str(c) for c in d["classes"]]
    folds = list(StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed).split(x, y))
    folds = folds[:args.run_folds] if args.run_folds else folds
    print(f"Jurkat cell cycle: {len(y)} cells, " + ", ".join(f"{c} {n}" for c, n in zip(classes, np.bincount(y))))
    print(f"{args.folds}-fold stratified CV (seed {args.seed}), running {len(folds)} folds; identical folds for "
          f"every method; torch threads {args.threads}")

    t0 = time.perf_counter()
    feats = handcrafted_features(x)
    t_feat = time.perf_counter() - t0
    extra = {} if args.epochs is None else {"epochs": args.epochs}
    names = [CNN, NETWORK, FIRST, *baselines(args.seed, args.threads)]
    pred = {n: np.full(len(y), -1) for n in names}
    proba: dict[str, np.ndarray | None] = {n: np.zeros((len(y), len(classes))) for n in names}
    fold_ba: dict[str, list[float]] = {n: [] for n in names}
    seconds = {n: (0.0 if n in (CNN, NETWORK, FIRST) else t_feat) for n in names}
    for k, (train, test) in enumerate(folds):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            summary = train_classifier(x[train], y[train], classes=classes, output=Path(tmp) / "m", seed=args.seed,
                                       device="cpu", **extra)
            out = classify(x[test], model=summary["output"], device="cpu")
            seconds[CNN] += time.perf_counter() - t0
            first = first_member_logits(summary["output"], x[test])
            alone = network_alone_proba(summary["output"], x[test])
        pred[CNN][test], proba[CNN][test] = out["class_index"], out["probabilities"]
        if alone is None:  # trained without a forest: the default row is the network
            names = [n for n in names if n != NETWORK]
        else:
            pred[NETWORK][test], proba[NETWORK][test] = alone.argmax(1), alone
            seconds[NETWORK] = seconds[CNN]
        if first is None:  # a single network: no member row
            names = [n for n in names if n != FIRST]
        else:  # calibrated with the ensemble's temperature: no ECE of its own
            pred[FIRST][test], proba[FIRST] = first.argmax(1), None
            seconds[FIRST] += summary["member_seconds"][0]
        info = {CNN: f"{summary['epochs_run']} epochs, T={summary['temperature']:.2f}"}
        for name, clf in baselines(args.seed, args.threads).items():
            t0 = time.perf_counter()
            with warnings.catch_warnings():  # scikit-learn's notices about future defaults
                warnings.simplefilter("ignore", FutureWarning)
                clf.fit(feats[train], y[train])
            pred[name][test] = clf.predict(feats[test])
            if hasattr(clf, "predict_proba"):  # an SVM has none: no ECE for it
                proba[name][test] = clf.predict_proba(feats[test])
            else:
                proba[name] = None
            seconds[name] += time.perf_counter() - t0
        line = []
        for name in names:
            rep = classification_report(y[test], pred[name][test], classes=classes)
            fold_ba[name].append(rep["balanced_accuracy"])
            short = {CNN: "ijtorch", NETWORK: "ijtorch-net", FIRST: "ijtorch-1st"}.get(name, name.split(" ")[0])
            line.append(f"{short} {rep['balanced_accuracy']:.3f}")
        print(f"fold {k + 1}: test {len(test)} cells (Anaphase {int((y[test] == 0).sum())}): " + ", ".join(line)
              + f"  [{info[CNN]}]", flush=True)

    done = np.concatenate([test for _, test in folds])
    print(f"\n== balanced accuracy over {len(folds)} folds (mean ± sd), pooled macro F1 / ECE, training time")
    results = {}
    for name in names:
        p = proba[name]
        rep = classification_report(y[done], pred[name][done], classes=classes,
                                    probabilities=p[done] if p is not None else None)
        ba = np.asarray(fold_ba[name])
        results[name] = (ba.mean(), rep)
        ece = f"{rep['ece']:.3f}" if "ece" in rep else "n/a  "
        print(f"{name:38s} {ba.mean():.3f} ± {ba.std(ddof=1) if len(ba) > 1 else 0:.3f}  "
              f"(folds {' '.join(f'{v:.3f}' for v in ba)})  macro F1 {rep['macro_f1']:.3f}  ECE {ece}  "
              f"train {seconds[name]:6.1f} s")
    for name in names:
        print(f"\n-- pooled confusion matrix, {name} (rows true, columns predicted)")
        print_confusion(classes, np.asarray(results[name][1]["confusion"]))
    best = max((n for n in names if n not in (CNN, NETWORK, FIRST)), key=lambda n: results[n][0])
    print(f"\nratio ijtorch / best baseline ({best}): balanced accuracy "
          f"{results[CNN][0] / results[best][0]:.3f}x ({results[CNN][0]:.3f} vs {results[best][0]:.3f}), "
          f"training time {seconds[CNN] / seconds[best]:.1f}x")


if __name__ == "__main__":
    main()
