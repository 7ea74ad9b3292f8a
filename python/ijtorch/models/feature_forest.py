"""A random forest on hand-crafted per-item features, beside a classifier's network.

On small, imbalanced sets of cell crops a network and a forest on intensity and shape features make
different mistakes, and averaging them helps (``benchmarks/bench_classify.py``, Jurkat cell cycle,
5-fold cross-validation, seeds 0, 1 and 2): the network alone 0.863 / 0.820 / 0.834 balanced
accuracy, the default recipe — the mean of the network's calibrated probabilities and the forest's
divided by the training class frequencies (a forest's leaf frequencies still lean towards the common
classes despite balanced class weights), calibrated again by a temperature — 0.878 / 0.869 / 0.860.
Chosen beforehand with the same folds: the plain mean 0.884 / 0.814 / 0.857 (behind on seed 1), the
forest alone 0.822 / 0.776 / 0.800, a logistic regression instead of the forest 0.855 / 0.841 / 0.857.

scikit-learn fits the forest; it is stored in the model folder's safetensors file as the trees' node
arrays, since a model folder holds nothing pickled (a pickled scikit-learn object would also break
with the next scikit-learn release). :func:`forest_proba` evaluates those arrays with numpy and
equals scikit-learn's ``predict_proba`` (``tests/unit/test_feature_forest.py``).

:func:`item_features` (version ``FEATURES``): for each channel of a ``(C, Y, X)`` item, the mean,
standard deviation, minimum, maximum, 10/50/90th percentiles and mean Sobel gradient magnitude, and
the largest connected region of the channel's Otsu mask: area, perimeter, eccentricity, solidity,
major and minor axis lengths, mean intensity inside and integrated intensity above the median
outside (for a DNA stain: DNA content).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["FEATURES", "PREFIX", "TREES", "item_features", "fit_forest", "forest_proba", "forest_tensors",
           "forest_from_tensors", "fuse"]

FEATURES = "intensity-otsu-shape-1"
PREFIX = "forest."  # state-dict keys of the forest's arrays
TREES = 500
_PER_CHANNEL = 16


def item_features(items: np.ndarray) -> np.ndarray:
    """Hand-crafted features ``(N, 16 * C)`` float64 of ``(N, C, Y, X)`` items (see the module docstring)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    items = np.asarray(items, dtype=np.float64)
    if items.ndim != 4:
        raise ValueError(f"item features need (N, C, Y, X) items, got shape {items.shape}")
    out = np.zeros((len(items), _PER_CHANNEL * items.shape[1]))
    for n, item in enumerate(items):
        row: list[float] = []
        for ch in item:
            grad = np.hypot(ndi.sobel(ch, 0), ndi.sobel(ch, 1))
            row += [ch.mean(), ch.std(), ch.min(), ch.max(), *np.percentile(ch, (10, 50, 90)), grad.mean()]
            regions = label(ch > threshold_otsu(ch)) if ch.max() > ch.min() else None
            if regions is None or not regions.max():
                row += [0.0] * 8
                continue
            largest = regions == 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
            rp = regionprops(largest.astype(np.uint8))[0]
            outside = np.median(ch[~largest]) if (~largest).any() else 0.0
            row += [rp.area, rp.perimeter, rp.eccentricity, rp.solidity, rp.axis_major_length, rp.axis_minor_length,
                    float(ch[largest].mean()), float((ch[largest] - outside).sum())]
        out[n] = row
    return out


def fit_forest(features: np.ndarray, labels: np.ndarray, n_classes: int, *, seed: int = 0,
               trees: int = TREES) -> dict[str, np.ndarray]:
    """Fit a class-balanced random forest and return its arrays (:func:`forest_tensors` layout) plus
    ``prior``, the training class frequencies."""
    from sklearn.ensemble import RandomForestClassifier

    labels = np.asarray(labels, dtype=np.int64)
    rf = RandomForestClassifier(n_estimators=trees, class_weight="balanced", random_state=seed, n_jobs=1)
    rf.fit(np.asarray(features, dtype=np.float32), labels)
    arrays = _arrays(rf, n_classes)
    arrays["prior"] = np.bincount(labels, minlength=n_classes) / len(labels)
    return arrays


def _arrays(rf: Any, n_classes: int) -> dict[str, np.ndarray]:
    """The forest's trees as concatenated node arrays: ``left``/``right`` (global child indices, -1 at
    leaves), ``feature``, ``threshold``, ``value`` (per node, the class frequencies of the training
    items that reach it, over all ``n_classes``) and ``roots``."""
    left, right, feature, threshold, value, roots = [], [], [], [], [], []
    offset = 0
    for tree in rf.estimators_:
        t = tree.tree_
        leaf = t.children_left < 0
        left.append(np.where(leaf, -1, t.children_left + offset))
        right.append(np.where(leaf, -1, t.children_right + offset))
        feature.append(np.where(leaf, 0, t.feature))
        threshold.append(t.threshold)
        v = np.zeros((t.node_count, n_classes))
        v[:, rf.classes_] = t.value[:, 0, :]  # classes absent from the training items stay 0
        value.append(v / np.maximum(v.sum(1, keepdims=True), 1e-300))
        roots.append(offset)
        offset += t.node_count
    # int32 indices and float32 frequencies: 500 trees of a few hundred items take ~3 MB (float64 ~6 MB);
    # the thresholds stay float64, as scikit-learn compares with them
    return {"left": np.concatenate(left).astype(np.int32), "right": np.concatenate(right).astype(np.int32),
            "feature": np.concatenate(feature).astype(np.int32), "threshold": np.concatenate(threshold),
            "value": np.concatenate(value).astype(np.float32), "roots": np.asarray(roots, np.int32)}


def forest_proba(arrays: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, K)``: the mean over trees of the leaf class frequencies each item
    reaches (scikit-learn compares float32 features with its thresholds, as here)."""
    x = np.asarray(features, dtype=np.float32)
    left, right, feature, threshold = arrays["left"], arrays["right"], arrays["feature"], arrays["threshold"]
    node = np.broadcast_to(arrays["roots"], (len(x), len(arrays["roots"]))).copy()
    rows = np.arange(len(x))[:, None]
    while True:
        inner = left[node] >= 0
        if not inner.any():
            break
        go_left = x[rows, feature[node]] <= threshold[node]
        node = np.where(inner, np.where(go_left, left[node], right[node]), node)
    return arrays["value"][node].mean(axis=1, dtype=np.float64)


def fuse(network_proba: np.ndarray, forest: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The mean of the network's probabilities and the forest's divided by the training class
    frequencies ``prior`` (renormalised), float32."""
    adjusted = forest / np.maximum(np.asarray(prior, dtype=np.float64), 1e-12)
    adjusted /= np.maximum(adjusted.sum(1, keepdims=True), 1e-300)
    return (0.5 * (np.asarray(network_proba, dtype=np.float64) + adjusted)).astype(np.float32)


def forest_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The arrays as torch tensors under :data:`PREFIX`, for the model's weights file."""
    import torch

    return {PREFIX + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def forest_from_tensors(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """Split a loaded state dict into the network's entries and the forest's arrays (None without one)."""
    net = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    forest = {k[len(PREFIX):]: v.detach().cpu().numpy() for k, v in state.items() if k.startswith(PREFIX)}
    return net, forest or None
