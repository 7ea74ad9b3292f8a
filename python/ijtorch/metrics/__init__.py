"""Evaluation metrics: instance segmentation (``instance``, re-exported here), classification and
restoration."""

from .instance import (
    MatchResult, Overlap, DEFAULT_THRESHOLDS, label_overlap, match_labels, average_precision,
    split_merge_counts, dice, jaccard, evaluate_pair, evaluate_folders, write_csv, read_label_image,
    LABEL_SUFFIXES,
)

__all__ = [
    "MatchResult", "Overlap", "DEFAULT_THRESHOLDS", "label_overlap", "match_labels",
    "average_precision", "split_merge_counts", "dice", "jaccard", "evaluate_pair",
    "evaluate_folders", "write_csv", "read_label_image", "LABEL_SUFFIXES",
]
