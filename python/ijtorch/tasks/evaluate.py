"""Evaluate a folder of predicted label maps against ground truth (``ijtorch evaluate``).

Files are paired by name (see :func:`ijtorch.metrics.instance.evaluate_folders`); every image gets one row of
instance metrics (matching by IoU with optimal assignment, DSB-style ``ap@T`` at each threshold,
false splits and merges) and semantic Dice/Jaccard of the foreground, followed by a ``mean`` row
and a ``pooled`` row (counts summed over images).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from ijtorch import __version__
from ijtorch.metrics.instance import DEFAULT_THRESHOLDS, evaluate_folders, write_csv

__all__ = ["evaluate", "format_table", "CSV_NAME"]

log = logging.getLogger(__name__)

#: Name of the CSV written into ``output``.
CSV_NAME = "evaluation.csv"

_TABLE_COLUMNS = ("n_true", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1", "mean_matched_iou",
                  "splits", "merges", "dice")


def evaluate(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    overlap_fraction: float = 0.5,
) -> dict[str, Any]:
    """Evaluate predicted label maps against ground truth, optionally writing ``evaluation.csv``.

    Parameters
    ----------
    pred_dir : path
        Folder of predicted label maps (``.tif``, ``.tiff``, ``.npy``, ``.png``).
    gt_dir : path
        Folder of ground-truth label maps with the same file names (suffix may differ).
    output : path, optional
        Folder to write ``evaluation.csv`` into (created if needed); nothing is written if ``None``.
    thresholds : sequence of float, default 0.5, 0.55, ..., 0.9
        IoU thresholds of the ``ap@T`` columns.
    overlap_fraction : float, default 0.5
        Rule parameter for false splits/merges (:func:`ijtorch.metrics.instance.split_merge_counts`).

    Returns
    -------
    dict
        ``rows`` (one dict per image), ``mean`` and ``pooled`` summary rows, ``thresholds``,
        ``pred_dir``, ``gt_dir``, ``csv`` (path written or ``None``) and ``ijtorch_version``.

    Raises
    ------
    ValueError
        If a folder is missing, no files pair up, or a pair has different shapes.
    """
    ts = tuple(float(t) for t in thresholds)
    all_rows = evaluate_folders(pred_dir, gt_dir, thresholds=ts, overlap_fraction=overlap_fraction)
    rows, mean, pooled = all_rows[:-2], all_rows[-2], all_rows[-1]
    csv_path = None
    if output is not None:
        out = Path(output)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output={str(output)!r} exists and is not a directory")
        csv_path = write_csv(all_rows, out / CSV_NAME)
        log.info("wrote %s", csv_path)
    log.info("evaluated %d image(s): pooled AP@%.2f = %.3f", len(rows), ts[0], pooled[f"ap@{ts[0]:.2f}"])
    return {
        "rows": rows,
        "mean": mean,
        "pooled": pooled,
        "thresholds": ts,
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
        "csv": str(csv_path) if csv_path is not None else None,
        "ijtorch_version": __version__,
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def format_table(result: dict[str, Any], *, max_thresholds: int = 4) -> str:
    """Render an :func:`evaluate` result as a fixed-width text table.

    Columns: name, object counts, tp/fp/fn and precision/recall/F1/mean IoU at the first threshold
    of 0.5 (or the lowest), splits, merges, Dice, ``ap@T`` for up to ``max_thresholds`` thresholds
    spread over the range (always including the first and last), and ``ap_mean``.

    Parameters
    ----------
    result : dict
        The value returned by :func:`evaluate`.
    max_thresholds : int, default 4
        Maximum number of ``ap@T`` columns.

    Returns
    -------
    str
        The table, one line per image plus ``mean`` and ``pooled`` lines, and a legend line.
    """
    for key in ("rows", "mean", "pooled", "thresholds"):
        if key not in result:
            raise ValueError(f"result has no {key!r} entry; expected the dict returned by evaluate()")
    ts = list(result["thresholds"])
    if len(ts) > max_thresholds > 1:
        idx = sorted({round(i * (len(ts) - 1) / (max_thresholds - 1)) for i in range(max_thresholds)})
        ts = [ts[i] for i in idx]
    columns = ["name", *_TABLE_COLUMNS, *(f"ap@{t:.2f}" for t in ts), "ap_mean"]
    lines_rows = [*result["rows"], result["mean"], result["pooled"]]
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in lines_rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    widths[0] = min(widths[0], 32)

    def line(values: list[str]) -> str:
        first = values[0] if len(values[0]) <= widths[0] else values[0][: widths[0] - 1] + "…"
        return "  ".join([first.ljust(widths[0])] + [v.rjust(w) for v, w in zip(values[1:], widths[1:])])

    out = [line(columns), "  ".join("-" * w for w in widths)]
    n_images = len(result["rows"])
    for k, row in enumerate(cells):
        if k == n_images:
            out.append("  ".join("-" * w for w in widths))
        out.append(line(row))
    iou_t = result["mean"].get("iou_threshold", ts[0])
    out.append(
        f"tp/fp/fn, precision, recall, f1, mean_matched_iou at IoU {iou_t:.2f}; ap@T = tp/(tp+fp+fn) (DSB 2018); "
        "mean = average over images (counts summed); pooled = from tp/fp/fn summed over images"
    )
    return "\n".join(out)
