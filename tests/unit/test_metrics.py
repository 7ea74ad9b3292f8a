"""Instance and semantic metrics: synthetic cases with a known answer (StarDist's shifted disks),
agreement with a dense reference assignment, validation messages and the folder/CSV helpers."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from skimage.draw import disk

from ijtorch.metrics.instance import (
    DEFAULT_THRESHOLDS,
    average_precision,
    dice,
    evaluate_folders,
    jaccard,
    label_overlap,
    match_labels,
    split_merge_counts,
    write_csv,
)


def make_disks(width: int = 128, n: int = 5, dtype=np.uint16) -> np.ndarray:
    """``n`` disjoint disks in a row (StarDist's tests/test_matching.py layout)."""
    y = np.zeros((width, width), dtype)
    for i, c in enumerate(np.linspace(0, width, n + 2)[1:-1]):
        rr, cc = disk((width // 2, c), radius=width // (3 * n), shape=y.shape)
        y[rr, cc] = i + 1
    return y


def disk_iou(y: np.ndarray, y2: np.ndarray, label: int) -> float:
    a, b = y == label, y2 == label
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("shift", [0, 5, 10])
def test_shifted_disks_match_around_their_iou(shift):
    y = make_disks()
    y2 = np.roll(y, shift, axis=0)
    ious = [disk_iou(y, y2, k) for k in range(1, 6)]
    iou = min(ious)
    res_all = match_labels(y, y2, iou_threshold=0.5 * iou)
    assert (res_all.tp, res_all.fp, res_all.fn) == (5, 0, 0)
    assert res_all.mean_matched_iou == pytest.approx(np.mean(ious), abs=1e-12)
    assert [p[:2] for p in res_all.matched_pairs] == [(k, k) for k in range(1, 6)]
    if 2 * max(ious) <= 1:
        res_none = match_labels(y, y2, iou_threshold=2 * max(ious))
        assert (res_none.tp, res_none.fp, res_none.fn) == (0, 5, 5)
        assert res_none.matched_pairs == ()


def test_single_shifted_square_has_exact_iou():
    y = np.zeros((50, 50), np.uint8)
    y[10:20, 10:20] = 1
    y2 = np.roll(y, 2, axis=1)  # overlap 10x8 = 80, union 120
    res = match_labels(y, y2, iou_threshold=0.6)
    assert res.tp == 1 and res.matched_pairs[0][2] == pytest.approx(80 / 120)
    assert match_labels(y, y2, iou_threshold=0.7).tp == 0
    assert average_precision(y, y2, thresholds=(0.5, 0.65, 0.7)) == {0.5: 1.0, 0.65: 1.0, 0.7: 0.0}


def test_identical_maps_score_one_and_labels_need_not_be_sequential():
    y = make_disks().astype(np.int32) * 7 + 100
    y[y == 100] = 0
    res = match_labels(y, y)
    assert (res.precision, res.recall, res.f1, res.accuracy, res.mean_matched_iou) == (1, 1, 1, 1, 1)
    assert all(v == 1.0 for v in average_precision(y, y).values())
    assert set(average_precision(y, y)) == set(DEFAULT_THRESHOLDS)
    assert dice(y, y) == jaccard(y, y) == 1.0


def test_empty_maps_follow_stardist_convention():
    z = np.zeros((20, 20), np.uint16)
    res = match_labels(z, z)
    assert (res.tp, res.fp, res.fn, res.n_true, res.n_pred) == (0, 0, 0, 0, 0)
    assert (res.precision, res.recall, res.f1, res.accuracy) == (0.0, 0.0, 0.0, 0.0)
    assert dice(z, z) == jaccard(z, z) == 1.0
    y = make_disks(20, 1)
    only_gt = match_labels(y, z)
    assert (only_gt.tp, only_gt.fp, only_gt.fn, only_gt.recall) == (0, 0, 1, 0.0)
    assert dice(y, z) == 0.0


def test_3d_maps():
    y = np.zeros((8, 32, 32), np.uint16)
    y[2:6, 4:12, 4:12] = 1
    y[2:6, 20:28, 20:28] = 2
    y2 = y.copy()
    y2[5] = 0  # 3 of 4 slices kept -> IoU 0.75
    res = match_labels(y, y2, iou_threshold=0.7)
    assert res.tp == 2 and res.mean_matched_iou == pytest.approx(0.75)


def dense_reference_tp(y: np.ndarray, y2: np.ndarray, thr: float) -> int:
    """StarDist's dense formulation: full IoU matrix, one linear_sum_assignment."""
    from scipy.optimize import linear_sum_assignment

    a, b = np.unique(y[y > 0]), np.unique(y2[y2 > 0])
    iou = np.array([[((y == i) & (y2 == j)).sum() / ((y == i) | (y2 == j)).sum() for j in b] for i in a])
    n = min(len(a), len(b))
    cost = -(iou >= thr).astype(float) - iou / (2 * n)
    r, c = linear_sum_assignment(cost)
    return int(np.count_nonzero(iou[r, c] >= thr))


@pytest.mark.parametrize("thr", [0.1, 0.3, 0.5])
def test_sparse_assignment_equals_dense_reference(thr):
    rng = np.random.default_rng(7)
    from skimage.segmentation import expand_labels

    y = np.zeros((64, 64), np.int32)
    pts = rng.integers(0, 64, (25, 2))
    y[pts[:, 0], pts[:, 1]] = np.arange(1, 26)
    y = expand_labels(y, 6)
    y2 = np.roll(expand_labels(np.roll(y, 3, axis=1), 2), -2, axis=0)
    y2[y2 % 4 == 0] = 0  # drop some predictions
    res = match_labels(y, y2, iou_threshold=thr)
    assert res.tp == dense_reference_tp(y, y2, thr)
    assert res.tp + res.fp == res.n_pred and res.tp + res.fn == res.n_true


def test_overlap_is_sparse_and_correct():
    y = make_disks()
    ov = label_overlap(y, np.roll(y, 3, axis=1))
    assert len(ov.intersection) == 5 and list(ov.gt_area) == list(np.bincount(y.ravel())[1:])


def test_thousands_of_objects_are_fast():
    import time

    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(0)
    y = np.zeros((1024, 1024), np.int32)
    pts = rng.integers(0, 1024, (3000, 2))
    y[pts[:, 0], pts[:, 1]] = np.arange(1, 3001)
    y = expand_labels(y, 6)
    t0 = time.perf_counter()
    res = match_labels(y, np.roll(y, 1, axis=1), iou_threshold=0.3)
    assert time.perf_counter() - t0 < 2.0
    assert res.tp > 0.95 * res.n_true


def test_split_and_merge_counts():
    gt = np.zeros((40, 40), np.uint16)
    gt[5:15, 5:25] = 1  # will be split in two
    gt[20:30, 5:15] = 2  # these two will be merged
    gt[20:30, 16:26] = 3
    pred = np.zeros_like(gt)
    pred[5:15, 5:15] = 1
    pred[5:15, 15:25] = 2
    pred[20:30, 5:26] = 3
    assert split_merge_counts(gt, pred) == (1, 1)
    assert split_merge_counts(gt, gt) == (0, 0)
    speck = gt.copy()
    speck[14:16, 10:12] = 9  # 4-pixel fragment, 2 of its pixels inside object 1: fraction 0.5
    assert split_merge_counts(gt, speck)[0] == 1
    assert split_merge_counts(gt, speck, overlap_fraction=0.75)[0] == 0


def test_semantic_dice_and_jaccard_values():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[:, :5] = 1
    b[:, 2:7] = 3
    assert dice(a, b) == pytest.approx(2 * 30 / 100)
    assert jaccard(a, b) == pytest.approx(30 / 70)


def test_input_validation_names_the_argument():
    y = make_disks()
    with pytest.raises(ValueError, match=r"gt has shape \(128, 128\) but pred has shape \(64, 64\)"):
        match_labels(y, y[:64, :64])
    with pytest.raises(ValueError, match="pred has dtype float32"):
        match_labels(y, y.astype(np.float32))
    with pytest.raises(ValueError, match="gt contains negative labels"):
        match_labels(y.astype(np.int16) - 1, y)
    with pytest.raises(TypeError, match="gt must be a numpy array"):
        match_labels([[0]], y)
    with pytest.raises(ValueError, match=r"iou_threshold=1.5 is outside the accepted range \(0, 1\]"):
        match_labels(y, y, iou_threshold=1.5)
    with pytest.raises(ValueError, match="thresholds is empty"):
        average_precision(y, y, thresholds=())
    with pytest.raises(ValueError, match="gt has 1 dimensions"):
        match_labels(y[0], y[0])


def test_evaluate_folders_and_atomic_csv(tmp_path):
    import tifffile

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    y = make_disks()
    tifffile.imwrite(gt_dir / "a.tif", y)
    tifffile.imwrite(gt_dir / "b.tif", y)
    tifffile.imwrite(gt_dir / "c.tif", y)  # no prediction: skipped
    tifffile.imwrite(pred_dir / "a.tif", y)
    np.save(pred_dir / "b.npy", np.zeros_like(y))
    rows = evaluate_folders(pred_dir, gt_dir, thresholds=(0.5, 0.75))
    assert [r["name"] for r in rows] == ["a", "b", "mean", "pooled"]
    assert rows[0]["ap@0.50"] == 1.0 and rows[1]["ap@0.50"] == 0.0
    assert rows[2]["ap@0.50"] == 0.5 and rows[2]["tp"] == 5 and rows[2]["fn"] == 5
    assert rows[3]["ap@0.50"] == pytest.approx(5 / 10)
    out = write_csv(rows, tmp_path / "out" / "evaluation.csv")
    with open(out, newline="") as fh:
        read = list(csv.DictReader(fh))
    assert len(read) == 4 and float(read[0]["ap@0.75"]) == 1.0
    assert not any(k.startswith("_") for k in read[0])
    assert [p.name for p in out.parent.iterdir()] == ["evaluation.csv"]
    with pytest.raises(ValueError, match="no file names in common"):
        evaluate_folders(pred_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="gt_dir=.* is not a directory"):
        evaluate_folders(pred_dir, tmp_path / "missing")


def test_evaluate_task_writes_csv_and_formats_table(tmp_path):
    import tifffile

    from ijtorch.tasks.evaluate import CSV_NAME, evaluate, format_table

    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    y = make_disks()
    tifffile.imwrite(tmp_path / "gt" / "img_with_a_long_name.tif", y)
    tifffile.imwrite(tmp_path / "pred" / "img_with_a_long_name.tif", np.roll(y, 3, axis=0))
    result = evaluate(tmp_path / "pred", tmp_path / "gt", output=tmp_path / "out")
    assert result["csv"] == str(tmp_path / "out" / CSV_NAME) and (tmp_path / "out" / CSV_NAME).is_file()
    assert result["pooled"]["ap@0.50"] == 1.0 and len(result["rows"]) == 1
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["name", "n_true", "n_pred"] and "ap@0.90" in lines[0]
    assert any(line.startswith("pooled") for line in lines)
    with pytest.raises(ValueError, match="result has no 'rows' entry"):
        format_table({})
