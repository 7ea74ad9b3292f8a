"""Classification metrics: confusion matrix, per-class precision/recall/F1, balanced accuracy,
expected calibration error, and a confusion-matrix PNG drawn with pillow.

Conventions: ``y_true`` and ``y_pred`` are integer class indices in ``[0, n_classes)``; the
confusion matrix ``cm[i, j]`` counts items of true class ``i`` predicted as ``j`` (rows = truth,
as in scikit-learn). A class with no true items has recall ``nan`` and is left out of balanced
accuracy; a class never predicted has precision ``nan``; F1 is 0 when precision + recall is 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["confusion_matrix", "classification_report", "balanced_accuracy", "expected_calibration_error",
           "write_confusion_png"]


def _check_labels(name: str, y: Any, n_classes: int) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n_classes):
        raise ValueError(f"{name} holds class indices in [{a.min()}, {a.max()}]; expected [0, {n_classes})")
    return a.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, *, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts, rows = true class, columns = predicted class."""
    if not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes={n_classes!r}: expected a positive integer")
    t = _check_labels("y_true", y_true, n_classes)
    p = _check_labels("y_pred", y_pred, n_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        recall = np.where(support > 0, tp / support, np.nan)
        pr = np.nan_to_num(precision) + np.nan_to_num(recall)
        f1 = np.where(pr > 0, 2 * np.nan_to_num(precision) * np.nan_to_num(recall) / np.where(pr > 0, pr, 1), 0.0)
    return precision, recall, f1, support


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over classes that have true items (``nan`` for an empty matrix)."""
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square matrix, got shape {cm.shape}")
    _, recall, _, support = _per_class(cm)
    present = support > 0
    return float(recall[present].mean()) if present.any() else float("nan")


def expected_calibration_error(probabilities: Any, y_true: Any, *, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (equal-width bins in (0, 1]).

    ``ECE = sum_b |B_b| / N * |accuracy(B_b) - mean confidence(B_b)|``; 0 for no items.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, K), got shape {p.shape}")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins={n_bins!r}: expected a positive integer")
    t = _check_labels("y_true", y_true, p.shape[1])
    if t.size != p.shape[0]:
        raise ValueError(f"y_true has {t.size} items but probabilities has {p.shape[0]} rows")
    if t.size == 0:
        return 0.0
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.sum() / t.size * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def classification_report(y_true: Any, y_pred: Any, *, classes: Sequence[str],
                          probabilities: Any = None) -> dict[str, Any]:
    """All metrics as a JSON-serialisable dict.

    Returns
    -------
    dict
        ``n``, ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (over classes with true items),
        ``per_class`` (name → precision, recall, f1, support; ``None`` for undefined values),
        ``confusion`` (list of rows) and, when ``probabilities`` is given, ``ece``.
    """
    classes = [str(c) for c in classes]
    cm = confusion_matrix(y_true, y_pred, n_classes=len(classes))
    precision, recall, f1, support = _per_class(cm)
    n = int(cm.sum())

    def num(v: float) -> float | None:
        return None if np.isnan(v) else float(v)

    present = support > 0
    out: dict[str, Any] = {
        "n": n,
        "accuracy": float(np.trace(cm) / n) if n else float("nan"),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "per_class": {c: {"precision": num(precision[i]), "recall": num(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion": cm.tolist(),
        "classes": classes,
    }
    if probabilities is not None:
        out["ece"] = expected_calibration_error(probabilities, y_true)
    return out


def write_confusion_png(path: str | os.PathLike, cm: Any, classes: Sequence[str], *, normalize: bool = True,
                        cell: int = 48, title: str = "") -> Path:
    """Draw the confusion matrix (rows = true, columns = predicted) as a PNG, atomically.

    Cells are shaded by the row-normalised fraction (``normalize=True``) or by count relative to
    the largest cell, and show the count.
    """
    from PIL import Image, ImageDraw, ImageFont

    from ..io.atomic import atomic_path

    cm = np.asarray(cm)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"cm has shape {cm.shape}; expected ({k}, {k}) for {k} classes")
    font = ImageFont.load_default()
    names = [str(c)[:14] for c in classes]
    margin = 8 + 7 * max((len(s) for s in names), default=1)
    top = margin + (18 if title else 0)
    w, h = max(margin + k * cell + 10, 250), top + k * cell + 24
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.where(rows > 0, cm / np.maximum(rows, 1), 0.0) if normalize else cm / max(cm.max(), 1)
    for i in range(k):
        draw.text((4, top + i * cell + cell // 2 - 5), names[i], fill="black", font=font)
        x0 = margin + i * cell
        draw.text((x0 + 2, top - 14 - (i % 2) * 12), names[i][:7], fill="black", font=font)  # column header
        for j in range(k):
            v = float(frac[i, j])
            shade = (int(255 - 200 * v), int(255 - 140 * v), 255)
            box = (margin + j * cell, top + i * cell, margin + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=shade, outline=(180, 180, 180))
            draw.text((box[0] + 4, box[1] + cell // 2 - 5), str(int(cm[i, j])),
                      fill="white" if v > 0.6 else "black", font=font)
    draw.text((margin, top + k * cell + 6), "rows: true class, columns: predicted", fill="black", font=font)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
