"""Cell Tracking Challenge results: ``res_track.txt`` plus one ``maskTTT.tif`` per frame.

Follows ``docs/formats.md`` §4: every frame gets a uint16 mask (``mask000.tif`` …, 4 digits from
1000 frames on), ``res_track.txt`` has one ``L B E P`` line per track, integers separated by single
spaces. The rules the validators enforce are checked before anything is written: label ``L``
present in every frame ``B..E`` and no other, every mask label listed, ``E(parent) < B(child)``,
unique labels, ``P ≥ 0`` and ``P`` an existing label.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .tiff import write_imagej_tiff

__all__ = ["write_ctc", "write_ctc_ground_truth", "read_ctc_tracks", "check_ctc"]

log = logging.getLogger(__name__)


def check_ctc(masks: np.ndarray, lineage: np.ndarray) -> None:
    """Raise ValueError if ``masks`` (``T(Z)YX``) and ``lineage`` (``L B E P`` rows) break a CTC rule."""
    lineage = np.asarray(lineage, np.int64).reshape(-1, 4)
    L, B, E, P = lineage.T
    if np.unique(L).size != L.size or np.any(L <= 0):
        raise ValueError("lineage: labels L must be unique and positive")
    if np.any(P < 0) or np.any(B > E) or np.any(B < 0) or np.any(E >= masks.shape[0]):
        raise ValueError(f"lineage: need P >= 0 and 0 <= B <= E < {masks.shape[0]} (frames)")
    known = dict(zip(L.tolist(), E.tolist()))
    for l, b, p in zip(L, B, P):
        if p and (p not in known or known[p] >= b):
            raise ValueError(f"lineage: track {l} has parent {p} that is unknown or does not end before frame {b}")
    span = {int(l): (int(b), int(e)) for l, b, e in zip(L, B, E)}
    for t in range(masks.shape[0]):
        present = set(np.unique(masks[t]).tolist()) - {0}
        expect = {l for l, (b, e) in span.items() if b <= t <= e}
        if present != expect:
            missing, extra = sorted(expect - present)[:5], sorted(present - expect)[:5]
            raise ValueError(f"frame {t}: labels {missing} are missing from the mask and labels {extra} are not "
                             "listed for this frame in the lineage (CTC rules 1 and 2)")


def write_ctc(folder: str | os.PathLike, tracks=None, *, masks: np.ndarray | None = None,
              lineage: np.ndarray | None = None, axes: str | None = None) -> Path:
    """Write a CTC result folder (``res_track.txt`` and ``maskTTT.tif`` for every frame).

    Parameters
    ----------
    folder
        Output folder (created if its parent exists), e.g. ``01_RES``.
    tracks
        :class:`ijtorch.tasks.linking.Tracks` from label input (uses ``tracked_labels`` and
        ``ctc``); or give ``masks`` and ``lineage`` instead.
    masks
        Label stack ``TYX`` / ``TZYX`` whose values are the track labels.
    lineage
        ``(n, 4)`` integer ``L B E P`` rows.
    axes
        Axes of ``masks`` (``"TYX"`` or ``"TZYX"``); default from its dimensionality.

    Returns
    -------
    Path
        The folder.
    """
    if tracks is not None:
        if masks is not None or lineage is not None:
            raise ValueError("give either tracks or masks + lineage, not both")
        if getattr(tracks, "tracked_labels", None) is None:
            raise ValueError("tracks has no tracked_labels (detections came from points); CTC needs label masks")
        masks, lineage = tracks.tracked_labels, tracks.ctc
    if masks is None or lineage is None:
        raise ValueError("write_ctc needs tracks, or both masks and lineage")
    masks = np.asarray(masks)
    if masks.ndim not in (3, 4) or masks.dtype.kind not in "ui":
        raise ValueError(f"masks must be an integer TYX or TZYX stack, got shape {masks.shape} dtype {masks.dtype}")
    axes = axes or ("TYX" if masks.ndim == 3 else "TZYX")
    if axes not in ("TYX", "TZYX") or len(axes) != masks.ndim:
        raise ValueError(f"axes={axes!r}: accepted are 'TYX' (3-D masks) or 'TZYX' (4-D masks)")
    if masks.max(initial=0) > np.iinfo(np.uint16).max or masks.min(initial=0) < 0:
        raise ValueError("masks: CTC masks are uint16; labels must lie in 0..65535")
    lineage = np.asarray(lineage, np.int64).reshape(-1, 4)
    check_ctc(masks, lineage)
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise ValueError(f"folder={str(folder)!r}: its parent folder does not exist")
    folder.mkdir(exist_ok=True)
    digits = 3 if masks.shape[0] <= 1000 else 4
    for stale in folder.glob("mask*.tif"):
        stale.unlink()
    for t in range(masks.shape[0]):
        write_imagej_tiff(folder / f"mask{t:0{digits}d}.tif", masks[t].astype(np.uint16), axes[1:])
    with atomic_path(folder / "res_track.txt") as tmp:
        tmp.write_text("".join(f"{l} {b} {e} {p}\n" for l, b, e, p in lineage.tolist()), encoding="ascii")
    log.info("wrote CTC result (%d frames, %d tracks) to %s", masks.shape[0], lineage.shape[0], folder)
    return folder


def write_ctc_ground_truth(folder: str | os.PathLike, masks: np.ndarray, lineage: np.ndarray) -> Path:
    """Write a CTC ground-truth folder (``TRA/man_trackTTT.tif`` + ``TRA/man_track.txt``), e.g. of a simulation.

    Each track's ``B``/``E`` are trimmed to the first and last frame its label appears in
    ``masks`` (a simulated cell can be hidden by another one); tracks that never appear are left
    out and children of such a track get ``P = 0``.

    Parameters
    ----------
    folder
        The ``NN_GT`` folder to create (its parent must exist).
    masks
        Label stack ``TYX`` / ``TZYX`` with every cell, values = track labels ``L``.
    lineage
        ``(n, 4)`` integer ``L B E P`` rows.

    Returns
    -------
    Path
        The folder.
    """
    masks = np.asarray(masks)
    if masks.ndim not in (3, 4) or masks.dtype.kind not in "ui" or masks.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"masks must be a TYX or TZYX stack of labels in 0..65535, got shape {masks.shape} dtype {masks.dtype}")
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise ValueError(f"folder={str(folder)!r}: its parent folder does not exist")
    tra = folder / "TRA"
    tra.mkdir(parents=True, exist_ok=True)
    digits = 3 if masks.shape[0] <= 1000 else 4
    first, last = {}, {}
    for t in range(masks.shape[0]):
        write_imagej_tiff(tra / f"man_track{t:0{digits}d}.tif", masks[t].astype(np.uint16), "YX" if masks.ndim == 3 else "ZYX")
        for label in np.unique(masks[t]).tolist():
            first.setdefault(label, t)
            last[label] = t
    rows = [(L, first[L], last[L], P if P in first else 0)
            for L, _, _, P in np.asarray(lineage, np.int64).reshape(-1, 4).tolist() if L in first and L != 0]
    with atomic_path(tra / "man_track.txt") as tmp:
        tmp.write_text("".join(f"{l} {b} {e} {p}\n" for l, b, e, p in rows), encoding="ascii")
    return folder


def read_ctc_tracks(path: str | os.PathLike) -> np.ndarray:
    """Read a ``res_track.txt`` / ``man_track.txt`` file as an ``(n, 4)`` int64 array ``L B E P``."""
    rows = [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    if any(len(r) != 4 for r in rows):
        raise ValueError(f"{path}: every line must hold 4 integers 'L B E P'")
    return np.array(rows, np.int64).reshape(-1, 4)
