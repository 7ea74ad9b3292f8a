"""Instance and semantic segmentation metrics for label maps (2D and 3D), numpy/scipy only.

Objects of a ground-truth (``gt``) and a predicted (``pred``) label map are matched one-to-one by
intersection over union (IoU). Candidate pairs are those with ``IoU >= iou_threshold``; among them
the assignment maximises first the number of matched pairs and then the sum of their IoUs
(``scipy.optimize.linear_sum_assignment`` with the same cost as StarDist's ``matching``). The IoU
matrix is never built densely: overlaps come from a sparse histogram of ``(gt, pred)`` label pairs
and the assignment is solved per connected component of the candidate graph, so maps with
thousands of objects are matched in well under a second. For ``iou_threshold > 0.5`` every object
has at most one candidate and the assignment is trivial.

Conventions (the same as ``stardist.matching.matching``):

- label 0 is background; other labels need not be sequential;
- precision, recall, F1 and accuracy are 0 whenever there is no true positive, *including* when both
  maps are empty (nothing to find and nothing found). Use the pooled summary of
  :func:`evaluate_folders` (counts summed over images, StarDist's ``matching_dataset`` default) when
  empty images must not count as failures;
- ``accuracy = tp / (tp + fp + fn)`` is the Data Science Bowl 2018 "average precision" at one
  threshold; :func:`average_precision` evaluates it over several thresholds.

Semantic :func:`dice` and :func:`jaccard` compare foreground masks (label > 0); two empty masks are
identical sets and score 1.0.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "MatchResult",
    "Overlap",
    "DEFAULT_THRESHOLDS",
    "label_overlap",
    "match_labels",
    "average_precision",
    "split_merge_counts",
    "dice",
    "jaccard",
    "evaluate_pair",
    "evaluate_folders",
    "write_csv",
    "read_label_image",
    "LABEL_SUFFIXES",
]

from ijtorch.io.atomic import atomic_path

log = logging.getLogger(__name__)

#: DSB 2018 thresholds 0.5, 0.55, ..., 0.9 (rounded so that dict keys print cleanly).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))

#: File suffixes :func:`evaluate_folders` reads as label maps.
LABEL_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy", ".png")

_DENSE_LIMIT = 1 << 24  # largest label value / pair count handled with bincount instead of unique


@dataclass(frozen=True)
class MatchResult:
    """Result of matching one ground-truth label map with one prediction at one IoU threshold.

    Attributes
    ----------
    threshold : float
        IoU threshold a pair needs to count as a true positive.
    tp, fp, fn : int
        Matched pairs, unmatched predicted objects, unmatched ground-truth objects.
    n_true, n_pred : int
        Number of ground-truth and predicted objects.
    precision, recall, f1 : float
        ``tp/(tp+fp)``, ``tp/(tp+fn)``, ``2tp/(2tp+fp+fn)``; 0 when ``tp == 0``.
    accuracy : float
        ``tp/(tp+fp+fn)`` (DSB 2018 / StarDist "average precision" at ``threshold``); 0 when ``tp == 0``.
    mean_matched_iou : float
        Mean IoU of the matched pairs (0 when there are none).
    mean_true_iou : float
        Sum of matched IoUs divided by ``n_true`` (0 when ``n_true == 0``).
    panoptic_quality : float
        Sum of matched IoUs / ``(tp + fp/2 + fn/2)`` (Kirillov et al. 2019).
    matched_pairs : tuple of (int, int, float)
        ``(gt_label, pred_label, iou)`` of every true positive, in the maps' own label values,
        sorted by ``gt_label``. Unlike StarDist, pairs below the threshold are not listed.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    n_true: int
    n_pred: int
    precision: float
    recall: float
    f1: float
    accuracy: float
    mean_matched_iou: float
    mean_true_iou: float
    panoptic_quality: float
    matched_pairs: tuple[tuple[int, int, float], ...] = ()

    def as_dict(self, *, with_pairs: bool = False) -> dict[str, Any]:
        """Fields as a plain dict (``matched_pairs`` only if ``with_pairs``)."""
        d = dict(self.__dict__)
        if not with_pairs:
            d.pop("matched_pairs")
        return d


@dataclass(frozen=True)
class Overlap:
    """Sparse overlap histogram of two label maps, the basis of every instance metric here.

    Attributes
    ----------
    gt_labels, pred_labels : numpy.ndarray
        Label values of the ground-truth and predicted objects (sorted, background excluded);
        object index ``i`` below refers to ``gt_labels[i]``.
    gt_area, pred_area : numpy.ndarray
        Pixel (voxel) count of each object.
    gt_index, pred_index, intersection : numpy.ndarray
        One entry per overlapping object pair: object indices and shared pixel count.
    """

    gt_labels: np.ndarray
    pred_labels: np.ndarray
    gt_area: np.ndarray
    pred_area: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    intersection: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """IoU of each overlapping pair (aligned with ``gt_index`` / ``pred_index``)."""
        inter = self.intersection.astype(np.float64)
        union = self.gt_area[self.gt_index] + self.pred_area[self.pred_index] - inter
        return inter / union


def _check_labels(arr: Any, name: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of non-negative integer labels, got {type(arr).__name__}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise ValueError(
            f"{name} has dtype {arr.dtype}; expected an integer label map (uint8/16/32/64 or int), "
            "with 0 as background"
        )
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} has {arr.ndim} dimensions (shape {arr.shape}); expected a 2D or 3D label map")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"{name} contains negative labels (min {arr.min()}); labels must be >= 0")
    return arr


def _check_pair(gt: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    gt = _check_labels(gt, "gt")
    pred = _check_labels(pred, "pred")
    if gt.shape != pred.shape:
        raise ValueError(f"gt has shape {gt.shape} but pred has shape {pred.shape}; they must be equal")
    return gt, pred


def _check_threshold(value: Any, name: str = "iou_threshold") -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < t <= 1.0:
        raise ValueError(f"{name}={value!r} is outside the accepted range (0, 1]")
    return t


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map labels of a flat array to 0..n (0 stays background). Returns (index, labels, areas)."""
    top = int(flat.max()) if flat.size else 0
    if top < _DENSE_LIMIT:
        flat = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat, minlength=top + 1) if flat.size else np.zeros(1, np.int64)
        labels = np.flatnonzero(counts)
        labels = labels[labels > 0]
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[labels] = np.arange(1, len(labels) + 1)
        return lut[flat], labels.astype(np.int64), counts[labels].astype(np.int64)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if uniq[0] != 0:  # no background: shift so that index 0 stays background
        return inverse.astype(np.int64) + 1, uniq.astype(np.int64), counts.astype(np.int64)
    return inverse.astype(np.int64), uniq[1:].astype(np.int64), counts[1:].astype(np.int64)


def label_overlap(gt: np.ndarray, pred: np.ndarray) -> Overlap:
    """Sparse overlap histogram of two label maps.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Integer label maps of equal shape (2D or 3D), 0 = background.

    Returns
    -------
    Overlap
        Object labels, areas and the intersection of every overlapping pair.

    Raises
    ------
    ValueError
        If the shapes differ or a map is not a non-negative integer 2D/3D array.
    """
    gt, pred = _check_pair(gt, pred)
    g, gt_labels, gt_area = _compact(gt.ravel())
    p, pred_labels, pred_area = _compact(pred.ravel())
    both = (g > 0) & (p > 0)
    g, p = g[both] - 1, p[both] - 1
    n_p = len(pred_labels)
    keys = g * n_p + p
    if len(gt_labels) * n_p < _DENSE_LIMIT:
        hist = np.bincount(keys, minlength=len(gt_labels) * n_p)
        keys = np.flatnonzero(hist)
        inter = hist[keys]
    else:
        keys, inter = np.unique(keys, return_counts=True)
    return Overlap(
        gt_labels=gt_labels, pred_labels=pred_labels, gt_area=gt_area, pred_area=pred_area,
        gt_index=(keys // max(n_p, 1)).astype(np.int64), pred_index=(keys % max(n_p, 1)).astype(np.int64),
        intersection=inter.astype(np.int64),
    )


def _assign(gi: np.ndarray, pi: np.ndarray, iou: np.ndarray, n_gt: int, n_pred: int) -> np.ndarray:
    """Indices (into the candidate arrays) of the optimal one-to-one assignment.

    Maximises the number of matches, then the IoU sum, solved per connected component.
    """
    if len(gi) == 0:
        return np.zeros(0, dtype=np.int64)
    deg_g = np.bincount(gi, minlength=n_gt)
    deg_p = np.bincount(pi, minlength=n_pred)
    simple = (deg_g[gi] == 1) & (deg_p[pi] == 1)
    chosen = [np.flatnonzero(simple)]
    rest = np.flatnonzero(~simple)
    if len(rest):
        from scipy.optimize import linear_sum_assignment
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = n_gt + n_pred
        graph = coo_matrix((np.ones(len(rest)), (gi[rest], n_gt + pi[rest])), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        comp_of_edge = comp[gi[rest]]
        order = np.argsort(comp_of_edge, kind="stable")
        rest, comp_of_edge = rest[order], comp_of_edge[order]
        bounds = np.flatnonzero(np.diff(comp_of_edge)) + 1
        for edges in np.split(rest, bounds):
            ug, g_local = np.unique(gi[edges], return_inverse=True)
            up, p_local = np.unique(pi[edges], return_inverse=True)
            n_match = min(len(ug), len(up))
            cost = np.zeros((len(ug), len(up)))
            cost[g_local, p_local] = -1.0 - iou[edges] / (2.0 * n_match)
            rows, cols = linear_sum_assignment(cost)
            lookup = {(a, b): e for a, b, e in zip(g_local, p_local, edges)}
            chosen.append(np.array([lookup[(r, c)] for r, c in zip(rows, cols) if (r, c) in lookup], dtype=np.int64))
    return np.sort(np.concatenate(chosen))


def _safe(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else 0.0


def _match_overlap(ov: Overlap, threshold: float) -> MatchResult:
    n_true, n_pred = len(ov.gt_labels), len(ov.pred_labels)
    iou = ov.iou
    cand = np.flatnonzero(iou >= threshold)
    sel = cand[_assign(ov.gt_index[cand], ov.pred_index[cand], iou[cand], n_true, n_pred)]
    tp = int(len(sel))
    fp, fn = n_pred - tp, n_true - tp
    sum_iou = float(iou[sel].sum())
    pairs = tuple(
        (int(ov.gt_labels[g]), int(ov.pred_labels[p]), float(s))
        for g, p, s in sorted(zip(ov.gt_index[sel], ov.pred_index[sel], iou[sel]))
    )
    return MatchResult(
        threshold=threshold, tp=tp, fp=fp, fn=fn, n_true=n_true, n_pred=n_pred,
        precision=_safe(tp, tp + fp) if tp else 0.0,
        recall=_safe(tp, tp + fn) if tp else 0.0,
        f1=_safe(2 * tp, 2 * tp + fp + fn) if tp else 0.0,
        accuracy=_safe(tp, tp + fp + fn) if tp else 0.0,
        mean_matched_iou=_safe(sum_iou, tp),
        mean_true_iou=_safe(sum_iou, n_true),
        panoptic_quality=_safe(sum_iou, tp + fp / 2 + fn / 2),
        matched_pairs=pairs,
    )


def match_labels(gt: np.ndarray, pred: np.ndarray, *, iou_threshold: float = 0.5) -> MatchResult:
    """Match the objects of two label maps one-to-one by IoU.

    Parameters
    ----------
    gt : numpy.ndarray
        Ground-truth integer label map (2D or 3D), 0 = background.
    pred : numpy.ndarray
        Predicted integer label map of the same shape.
    iou_threshold : float, default 0.5
        A matched pair counts as a true positive if its IoU is at least this value; in (0, 1].

    Returns
    -------
    MatchResult
        Counts, precision/recall/F1/accuracy and the matched pairs.

    Raises
    ------
    ValueError
        If shapes differ, a map is not an integer 2D/3D array, or the threshold is outside (0, 1].

    Examples
    --------
    >>> y = np.zeros((100, 100), np.uint16); y[10:20, 10:20] = 1
    >>> match_labels(y, np.roll(y, 5, axis=0)).tp
    0
    >>> match_labels(y, y).accuracy
    1.0
    """
    threshold = _check_threshold(iou_threshold)
    return _match_overlap(label_overlap(gt, pred), threshold)


def _check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    if isinstance(thresholds, (int, float)):
        thresholds = (thresholds,)
    out = tuple(_check_threshold(t, "thresholds") for t in thresholds)
    if not out:
        raise ValueError("thresholds is empty; give at least one IoU threshold in (0, 1]")
    return out


def average_precision(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[float, float]:
    """DSB 2018 "average precision" ``tp/(tp+fp+fn)`` at each IoU threshold.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Integer label maps of equal shape (2D or 3D).
    thresholds : sequence of float, default 0.5, 0.55, ..., 0.9
        IoU thresholds in (0, 1].

    Returns
    -------
    dict
        ``{threshold: accuracy}``; the DSB score of the image is the mean of the values.
    """
    ts = _check_thresholds(thresholds)
    ov = label_overlap(gt, pred)
    return {t: _match_overlap(ov, t).accuracy for t in ts}


def split_merge_counts(gt: np.ndarray, pred: np.ndarray, *, overlap_fraction: float = 0.5) -> tuple[int, int]:
    """Count false splits and false merges.

    Rule: a ground-truth object ``g`` is *split* if at least two predicted objects each have at
    least ``overlap_fraction`` of their own area inside ``g``. A predicted object ``p`` is a *merge*
    if at least two ground-truth objects each have at least ``overlap_fraction`` of their own area
    inside ``p``. With the default 0.5 every fragment is attributed to at most one object (strictly,
    two objects can tie at exactly one half), and small spurious specks touching an object do not
    count as splits unless they lie mostly inside it.

    Parameters
    ----------
    gt, pred : numpy.ndarray
        Integer label maps of equal shape (2D or 3D).
    overlap_fraction : float, default 0.5
        Fraction in (0, 1] of a fragment's area that must lie inside the other object.

    Returns
    -------
    tuple of int
        ``(n_splits, n_merges)``: number of split ground-truth objects and of merging predictions.
    """
    frac = _check_threshold(overlap_fraction, "overlap_fraction")
    ov = label_overlap(gt, pred)
    return _split_merge(ov, frac)


def _split_merge(ov: Overlap, frac: float) -> tuple[int, int]:
    inter = ov.intersection.astype(np.float64)
    pred_inside = inter >= frac * ov.pred_area[ov.pred_index]
    gt_inside = inter >= frac * ov.gt_area[ov.gt_index]
    per_gt = np.bincount(ov.gt_index[pred_inside], minlength=len(ov.gt_labels))
    per_pred = np.bincount(ov.pred_index[gt_inside], minlength=len(ov.pred_labels))
    return int(np.count_nonzero(per_gt >= 2)), int(np.count_nonzero(per_pred >= 2))


def _foreground_counts(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    gt, pred = _check_pair(gt, pred)
    a, b = gt > 0, pred > 0
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a)), int(np.count_nonzero(b))


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """Dice coefficient ``2|A∩B|/(|A|+|B|)`` of the foregrounds (label > 0); 1.0 if both are empty."""
    inter, na, nb = _foreground_counts(gt, pred)
    return 1.0 if na + nb == 0 else 2.0 * inter / (na + nb)


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Jaccard index ``|A∩B|/|A∪B|`` of the foregrounds (label > 0); 1.0 if both are empty."""
    inter, na, nb = _foreground_counts(gt, pred)
    return 1.0 if na + nb == 0 else inter / (na + nb - inter)


def _ap_key(t: float) -> str:
    return f"ap@{t:.2f}"


def evaluate_pair(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    overlap_fraction: float = 0.5,
) -> dict[str, Any]:
    """All metrics of one image as a flat row (the row format of :func:`evaluate_folders`).

    Keys: ``n_true, n_pred`` ; ``tp, fp, fn, precision, recall, f1, mean_matched_iou,
    panoptic_quality`` at IoU 0.5 (or the first threshold if 0.5 is not among ``thresholds``) ;
    ``ap@T`` per threshold and ``ap_mean`` ; ``splits, merges`` ; ``dice, jaccard``.
    """
    ts = _check_thresholds(thresholds)
    frac = _check_threshold(overlap_fraction, "overlap_fraction")
    ov = label_overlap(gt, pred)
    results = {t: _match_overlap(ov, t) for t in ts}
    main = results[0.5] if 0.5 in results else results[ts[0]]
    inter, na, nb = _foreground_counts(gt, pred)
    splits, merges = _split_merge(ov, frac)
    row: dict[str, Any] = {
        "n_true": main.n_true, "n_pred": main.n_pred, "iou_threshold": main.threshold,
        "tp": main.tp, "fp": main.fp, "fn": main.fn,
        "precision": main.precision, "recall": main.recall, "f1": main.f1,
        "mean_matched_iou": main.mean_matched_iou, "panoptic_quality": main.panoptic_quality,
    }
    for t, r in results.items():
        row[_ap_key(t)] = r.accuracy
    row["ap_mean"] = float(np.mean([r.accuracy for r in results.values()]))
    row["splits"], row["merges"] = splits, merges
    row["dice"] = 1.0 if na + nb == 0 else 2.0 * inter / (na + nb)
    row["jaccard"] = 1.0 if na + nb == 0 else inter / (na + nb - inter)
    # counts per threshold, for pooling over images
    for t, r in results.items():
        row[f"_tp@{t:.2f}"], row[f"_fp@{t:.2f}"], row[f"_fn@{t:.2f}"] = r.tp, r.fp, r.fn
    return row


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a label map from ``.tif/.tiff`` (tifffile), ``.npy`` or ``.png`` (scikit-image)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".png":
        from skimage.io import imread

        return np.asarray(imread(path))
    raise ValueError(f"path={str(path)!r}: unsupported suffix {suffix!r}; accepted: {LABEL_SUFFIXES}")


def _index_dir(folder: Path, arg: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ValueError(f"{arg}={str(folder)!r} is not a directory")
    files: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in LABEL_SUFFIXES:
            if f.stem in files:
                raise ValueError(f"{arg}: two files share the name {f.stem!r} ({files[f.stem].name}, {f.name})")
            files[f.stem] = f
    return files


def _summaries(rows: list[dict[str, Any]], ts: tuple[float, ...]) -> list[dict[str, Any]]:
    """'mean' row (average of per-image values) and 'pooled' row (counts summed over images)."""
    numeric = [k for k in rows[0] if k not in ("name",) and not k.startswith("_")]
    mean = {"name": "mean"}
    for k in numeric:
        mean[k] = float(np.mean([r[k] for r in rows]))
    for k in ("n_true", "n_pred", "tp", "fp", "fn", "splits", "merges"):
        mean[k] = int(sum(r[k] for r in rows))  # totals are more useful than means for counts
    pooled: dict[str, Any] = {"name": "pooled"}
    main_t = rows[0]["iou_threshold"]
    for k in numeric:
        pooled[k] = mean[k]
    for t in ts:
        tp, fp, fn = (sum(r[f"_{c}@{t:.2f}"] for r in rows) for c in ("tp", "fp", "fn"))
        pooled[_ap_key(t)] = _safe(tp, tp + fp + fn) if tp else 0.0
        if t == main_t:
            pooled["precision"] = _safe(tp, tp + fp) if tp else 0.0
            pooled["recall"] = _safe(tp, tp + fn) if tp else 0.0
            pooled["f1"] = _safe(2 * tp, 2 * tp + fp + fn) if tp else 0.0
    pooled["ap_mean"] = float(np.mean([pooled[_ap_key(t)] for t in ts]))
    for k in ("mean_matched_iou", "panoptic_quality", "dice", "jaccard"):
        pooled[k] = mean[k]  # not pooled: per-image mean
    return [mean, pooled]


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    overlap_fraction: float = 0.5,
) -> list[dict[str, Any]]:
    """Evaluate every prediction in ``pred_dir`` against the file of the same name in ``gt_dir``.

    Files are paired by name without suffix (``a.tif`` pairs with ``a.tiff`` or ``a.npy``).
    Ground-truth files without a prediction are skipped (logged at INFO: evaluating a subset such
    as a validation split is normal); predictions without ground truth are skipped with a WARNING.

    Parameters
    ----------
    pred_dir, gt_dir : path
        Folders of integer label maps (``.tif``, ``.tiff``, ``.npy``, ``.png``).
    thresholds : sequence of float, default 0.5, 0.55, ..., 0.9
        IoU thresholds for the ``ap@T`` columns.
    overlap_fraction : float, default 0.5
        Rule parameter of :func:`split_merge_counts`.

    Returns
    -------
    list of dict
        One row per image (see :func:`evaluate_pair`, plus ``name``), then a ``mean`` row (per-image
        values averaged; count columns summed) and a ``pooled`` row whose precision, recall, F1 and
        ``ap@T`` come from tp/fp/fn summed over all images (StarDist's ``matching_dataset``
        default, which is insensitive to empty images).

    Raises
    ------
    ValueError
        If a folder does not exist, no file pairs up, or a pair has different shapes.
    """
    ts = _check_thresholds(thresholds)
    pred_files = _index_dir(Path(pred_dir), "pred_dir")
    gt_files = _index_dir(Path(gt_dir), "gt_dir")
    names = [n for n in pred_files if n in gt_files]
    if not names:
        hint = ""
        if (Path(gt_dir) / "labels").is_dir():
            hint = f"; did you mean gt_dir={str(Path(gt_dir) / 'labels')!r}?"
        raise ValueError(
            f"no file names in common between pred_dir={str(pred_dir)!r} ({len(pred_files)} label files) "
            f"and gt_dir={str(gt_dir)!r} ({len(gt_files)} label files){hint}"
        )
    orphans = sorted(set(pred_files) - set(gt_files))
    if orphans:
        log.warning("no ground truth for %d prediction(s), skipped: %s", len(orphans), ", ".join(orphans[:10]))
    missing = len(gt_files) - len(names)
    if missing:
        log.info("%d ground-truth file(s) have no prediction and are not evaluated", missing)
    rows = []
    for name in names:
        gt, pred = read_label_image(gt_files[name]), read_label_image(pred_files[name])
        if gt.shape != pred.shape:
            raise ValueError(f"{name}: ground truth has shape {gt.shape} but prediction has shape {pred.shape}")
        row = {"name": name}
        row.update(evaluate_pair(gt, pred, thresholds=ts, overlap_fraction=overlap_fraction))
        rows.append(row)
        log.debug("%s: AP@%.2f = %.3f", name, row["iou_threshold"], row[_ap_key(row["iou_threshold"])])
    return rows + _summaries(rows, ts)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows (dicts) as CSV atomically: a temporary file in the same folder, then a rename.

    Columns are the union of the rows' keys in first-seen order; keys starting with ``_`` are
    internal and left out. Floats are written with 6 significant digits.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    if not rows:
        raise ValueError("rows is empty; nothing to write")
    path = Path(path)
    columns: list[str] = []
    for r in rows:
        columns.extend(k for k in r if k not in columns and not k.startswith("_"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k in columns})
    return path
