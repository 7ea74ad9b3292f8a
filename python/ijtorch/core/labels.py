"""Label-map helpers shared by tasks, io and the surfaces."""

from __future__ import annotations

import numpy as np

__all__ = ["as_label_array"]


def as_label_array(labels: np.ndarray) -> np.ndarray:
    """``labels`` as an integer array of non-negative labels (floats must hold whole numbers; bools become 0/1)."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "ui":
        if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got minimum {labels.min()}")
        return labels
    if labels.dtype.kind == "f":
        if labels.size and (not np.all(np.isfinite(labels)) or labels.min() < 0
                            or np.any(labels != np.floor(labels))):
            raise ValueError("labels: a float label map must hold non-negative whole numbers")
        if labels.size and labels.max() > 2**53:
            raise ValueError(f"labels: float label values above 2**53 are not exact, got {labels.max()}")
        return labels.astype(np.int64)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    raise ValueError(f"labels must be an integer, float or bool array, got dtype {labels.dtype}")
