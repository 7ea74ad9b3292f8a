"""A small cell-cycle classifier for server tests and ``benchmarks/bench_serve.py``: trained here in
seconds (one epoch) on the shared Jurkat crops (``3 x 40 x 40`` uint16), so its answers are
meaningless but its network, normalisation and test-time augmentation are those of a real one."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

#: The crops (relative to the shared data folder): ``images (N, 3, 40, 40)`` uint16, ``labels (N,)``.
CROPS = Path("classify_jurkat_cellcycle") / "train.npz"


def load_crops(shared: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(images, labels, classes)`` of the shared Jurkat training crops."""
    with np.load(Path(shared) / CROPS) as d:
        return d["images"], d["labels"], [str(c) for c in d["classes"]]


def make_tiny_classifier(folder: Path, shared: Path, *, name: str = "cells", items: int = 140,
                         widths: Sequence[int] = (8, 16, 32), epochs: int = 1) -> Path:
    """Train on ``items`` crops spread over the file (it is sorted by class) and save as
    ``folder/name``; returns its path."""
    from ijtorch.tasks.classify import train_classifier

    images, labels, classes = load_crops(shared)
    pick = np.linspace(0, len(images) - 1, min(items, len(images))).astype(int)
    out = Path(folder) / name
    train_classifier(images[pick], labels[pick], classes=classes, output=out, epochs=epochs, batch_size=16,
                     widths=tuple(widths), device="cpu", seed=0)
    return out
