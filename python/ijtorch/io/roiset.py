"""ImageJ RoiSet.zip files of polygon ROIs, written with roifile and read back.

Conventions (see ``shared/docs/formats.md`` section 2):

- Every ROI is a POLYGON (roifile's ``frompoints`` makes FREEHAND; the type is set explicitly).
  Whole-number vertices are stored as integer coordinates, like ImageJ's traced ROIs; anything
  else is stored sub-pixel.
- Positions are ImageJ's **1-based C, Z, T with 0 = unset** (``Roi.getCPosition()`` etc.), the
  same convention as :class:`ijtorch.tasks.outlines.Outlines.positions`. They go into header2,
  so ImageJ reports ``hasHyperStackPosition()``.
- Names are explicit: each ROI's internal name is the given name and its zip entry is
  ``name + ".roi"`` (the ROI Manager's list label). Duplicate names get ``-1``, ``-2`` …
  appended to the entry name only, as ImageJ does when it saves.
- The header's right/bottom are written as ImageJ's encoder does (``x + width`` of the polygon
  bounds), so ``right - left`` equals ImageJ's ``getBounds().width``.
- Properties (``Roi.setProperty(key, value)``, read in macros with ``Roi.getProperty(key)``) go
  into header2's properties field as ImageJ's encoder writes them: ``key: value`` lines. Segmentation
  stores each object's ``confidence`` there (three decimals); names stay ``label_0001`` so macros
  that parse ROI names keep working.
- The zip is written to a temporary file in the target folder and moved into place, so a
  reader never sees a half-written file.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["RoiSet", "write_roiset", "read_roiset", "default_names", "confidence_properties"]

from .atomic import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoiSet:
    """ROIs read from a RoiSet.zip (or a single .roi file), in file order.

    Attributes
    ----------
    entries : tuple of str
        Zip entry names without ``.roi`` (the ROI Manager's list labels).
    names : tuple of str
        Each ROI's internal name (``Roi.getName()``); the entry name where none is stored.
    polygons : tuple of ndarray
        Vertices ``(x, y)`` as float64 ``(m, 2)`` arrays in image coordinates.
    bboxes : ndarray of int64, shape (n, 4)
        Header bounds ``(x, y, width, height)``.
    positions : ndarray of int64, shape (n, 3)
        C, Z, T positions, 1-based, 0 = unset.
    roitypes : tuple of str
        roifile ``ROI_TYPE`` names (``"POLYGON"``, ``"FREEHAND"``, …).
    properties : tuple of dict
        Each ROI's properties (``Roi.getProperty(key)``), ``{}`` where it has none.
    """

    entries: tuple[str, ...]
    names: tuple[str, ...]
    polygons: tuple[np.ndarray, ...]
    bboxes: np.ndarray
    positions: np.ndarray
    roitypes: tuple[str, ...]
    properties: tuple[dict[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.entries)


def default_names(labels: np.ndarray, positions: np.ndarray | None = None, axes: str = "YX") -> list[str]:
    """ROI names ``label_0001`` (label value, zero-padded to 4 digits).

    For stacks (``axes`` holding C, Z or T) the 1-based plane position is appended for each of
    those axes, in C, Z, T order: ``label_0001_z003_t002``, so names stay unique per plane.

    Parameters
    ----------
    labels
        Label value of each ROI.
    positions
        ``(n, 3)`` C, Z, T positions, 1-based; needed when ``axes`` has C, Z or T.
    axes
        Axes of the label map the ROIs come from.
    """
    labels = np.asarray(labels)
    names = [f"label_{int(v):04d}" for v in labels]
    plane_axes = [(k, a) for k, a in enumerate("CZT") if a in axes.upper()]
    if plane_axes:
        if positions is None:
            raise ValueError(f"positions are required for axes={axes!r}")
        positions = np.asarray(positions)
        for i in range(len(names)):
            names[i] += "".join(f"_{a.lower()}{int(positions[i, k]):03d}" for k, a in plane_axes)
    return names


def confidence_properties(labels: np.ndarray, confidence: np.ndarray | None) -> dict[str, list[str]]:
    """``{"confidence": [...]}``: the confidence of each ROI's object (label ``k`` at index ``k - 1``
    of ``confidence``, as :class:`ijtorch.tasks.segment.SegmentationResult` gives it), three
    decimals, one per ROI in the order of ``labels`` (an ``Outlines``' labels); ``{}`` when there is
    no confidence."""
    if confidence is None:
        return {}
    conf = np.asarray(confidence, np.float64)
    lab = np.asarray(labels, np.int64)
    if lab.size and (lab.min() < 1 or lab.max() > conf.size):
        raise ValueError(f"confidence has {conf.size} values; ROI labels run from {lab.min()} to {lab.max()}")
    return {"confidence": [f"{v:.3f}" for v in conf[lab - 1]]}


def _properties_text(properties: Mapping[str, Sequence[str]], i: int) -> str | None:
    if not properties:
        return None
    for key in properties:
        if not key or any(c in key for c in ":=\n ") or any(c in str(properties[key][i]) for c in "\n\r"):
            raise ValueError(f"properties: key {key!r} or its value {properties[key][i]!r} cannot be stored")
    return "".join(f"{key}: {properties[key][i]}\n" for key in properties)


def _parse_properties(text: str | None) -> dict[str, str]:
    out = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _check_names(names: Sequence[str], n: int) -> list[str]:
    names = list(names)
    if len(names) != n:
        raise ValueError(f"names: expected {n} names (one per ROI), got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name:
            raise ValueError(f"names: each name must be a non-empty string without '/' or '\\\\', got {name!r}")
    return names


def _check_positions(positions, n: int) -> np.ndarray:
    if positions is None:
        return np.zeros((n, 3), np.int64)
    pos = np.asarray(positions)
    if pos.shape != (n, 3) or pos.dtype.kind not in "ui":
        raise ValueError(f"positions must be an integer array of shape ({n}, 3) (C, Z, T, 1-based, 0 = unset), "
                         f"got shape {pos.shape} dtype {pos.dtype}")
    if pos.size and pos.min() < 0:
        raise ValueError(f"positions are 1-based with 0 = unset; got a negative value {pos.min()}")
    return pos.astype(np.int64)


def _unique_entries(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    used = set(names)
    out = []
    for name in names:
        if name not in seen:
            seen[name] = 0
            out.append(name)
            continue
        k = seen[name]
        while True:
            k += 1
            candidate = f"{name}-{k}"
            if candidate not in used:
                break
        seen[name] = k
        used.add(candidate)
        out.append(candidate)
    return out


def _to_roi(xy: np.ndarray, name: str, c: int, z: int, t: int, properties: str | None = None):
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] < 3:
        raise ValueError(f"polygons: each polygon must be an (m, 2) array with m >= 3, got shape {xy.shape}")
    if not np.all(np.isfinite(xy)):
        raise ValueError(f"polygons: polygon {name!r} has non-finite coordinates")
    whole = np.all(xy == np.round(xy)) and xy.min() >= -5000 and xy.max() <= 60535
    roi = ImagejRoi.frompoints(xy.astype(np.int32) if whole else xy, name=name,
                               c=c - 1 if c > 0 else None, z=z - 1 if z > 0 else None,
                               t=t - 1 if t > 0 else None)
    roi.roitype = ROI_TYPE.POLYGON
    roi.options = roi.options & ROI_OPTIONS.SUB_PIXEL_RESOLUTION  # drop overlay label/background flags
    # ImageJ's encoder writes right = x + width of the polygon bounds (no +1 as frompoints does).
    roi.right = int(np.floor(xy[:, 0].max())) if whole else roi.right
    roi.bottom = int(np.floor(xy[:, 1].max())) if whole else roi.bottom
    if properties:
        roi.props = properties  # roifile writes this text as the properties field
    return roi


def write_roiset(path: str | os.PathLike, polygons, *, names: Sequence[str] | None = None,
                 positions: np.ndarray | None = None, properties: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write polygons to an ImageJ RoiSet.zip atomically.

    Parameters
    ----------
    path
        Output ``.zip`` path; an existing file is replaced in one step.
    polygons
        An :class:`~ijtorch.tasks.outlines.Outlines` or a sequence of ``(m, 2)`` arrays of
        ``(x, y)`` vertices.
    names
        One name per ROI. Default for ``Outlines``: :func:`default_names` of its labels and
        positions; for plain polygons: ``roi_0001``, ``roi_0002`` ….
    positions
        ``(n, 3)`` C, Z, T positions (1-based, 0 = unset). Default for ``Outlines``: its
        ``positions``; for plain polygons: unset.
    properties
        ``{key: one string per ROI}``: ROI properties (``Roi.getProperty(key)`` in a macro), e.g.
        :func:`confidence_properties`. Keys without spaces, ``:`` or ``=``; values on one line.

    Returns
    -------
    Path
        The written file.
    """
    from roifile import roiwrite

    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"path must end in .zip (a RoiSet), got {str(path)!r}")
    if hasattr(polygons, "offsets") and hasattr(polygons, "coords"):
        polys = polygons.polygons if len(polygons) else []
        if names is None:
            names = default_names(polygons.labels, polygons.positions, polygons.axes)
        if positions is None:
            positions = polygons.positions
    else:
        polys = list(polygons)
        if names is None:
            names = [f"roi_{i + 1:04d}" for i in range(len(polys))]
    n = len(polys)
    names = _check_names(names, n)
    pos = _check_positions(positions, n)
    if not path.parent.is_dir():
        raise ValueError(f"path: folder {str(path.parent)!r} does not exist")
    properties = dict(properties or {})
    for key, values in properties.items():
        if len(values) != n:
            raise ValueError(f"properties[{key!r}]: expected {n} values (one per ROI), got {len(values)}")
    rois = [_to_roi(xy, name, *map(int, p), _properties_text(properties, i))
            for i, (xy, name, p) in enumerate(zip(polys, names, pos))]
    entries = _unique_entries(names)
    with atomic_path(path) as tmp:
        roiwrite(tmp, rois, name=entries, mode="w")
    log.info("wrote %d ROIs to %s", n, path)
    return path


def read_roiset(path: str | os.PathLike) -> RoiSet:
    """Read a RoiSet.zip (or one ``.roi`` file) with roifile.

    Parameters
    ----------
    path
        A ``.zip`` of ``.roi`` entries (entries not ending in ``.roi`` are ignored, as in
        ImageJ) or a single ``.roi`` file.
    """
    from roifile import ImagejRoi

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: {str(path)!r} is not a file")
    items: list[tuple[str, ImagejRoi]] = []
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".roi"):
                    items.append((info.filename[:-4], ImagejRoi.frombytes(zf.read(info))))
    else:
        items.append((path.stem, ImagejRoi.fromfile(path)))
    polygons, bboxes, positions, names, types, props = [], [], [], [], [], []
    for entry, roi in items:
        props.append(_parse_properties(roi.props))
        polygons.append(np.asarray(roi.coordinates(), dtype=np.float64))
        bboxes.append((roi.left, roi.top, roi.right - roi.left, roi.bottom - roi.top))
        positions.append((roi.c_position, roi.z_position, roi.t_position))
        names.append(roi.name or entry)
        types.append(roi.roitype.name)
    return RoiSet(entries=tuple(e for e, _ in items), names=tuple(names), polygons=tuple(polygons),
                  bboxes=np.asarray(bboxes, np.int64).reshape(-1, 4),
                  positions=np.asarray(positions, np.int64).reshape(-1, 3), roitypes=tuple(types),
                  properties=tuple(props))
