"""GEFF (graph exchange file format, zarr) export of tracks through the ``geff`` package.

Nodes are spots (``t``, ``y``, ``x`` and ``z`` in 3-D, physical units, declared as axes), with
``label``, ``area``, ``track_id`` and ``ctc_label`` properties; edges are the track edges
(directed, source = earlier frame) with ``cost`` and ``kind``. ``geff`` is an optional
dependency, imported on use.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["write_geff"]

log = logging.getLogger(__name__)


def write_geff(path: str | os.PathLike, tracks, *, overwrite: bool = False) -> Path:
    """Write tracks as a GEFF zarr folder (``zarr_format=2``), atomically via a sibling folder.

    Parameters
    ----------
    path
        Output zarr folder, e.g. ``tracks.geff`` (or ``tracks.zarr``).
    tracks
        :class:`ijtorch.tasks.linking.Tracks`.
    overwrite
        Replace an existing folder at ``path``.

    Returns
    -------
    Path
    """
    try:
        from geff.core_io import write_arrays
        from geff_spec import Axis, GeffMetadata
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("writing GEFF needs the optional 'geff' package: pip install geff") from exc
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"path={str(path)!r}: its parent folder does not exist")
    if path.exists() and not overwrite:
        raise ValueError(f"path={str(path)!r} exists; pass overwrite=True to replace it")
    s = tracks.spots
    cal = tracks.calibration
    dt = cal.frame_interval if cal.frame_interval > 0 else 1.0
    tunit = cal.time_unit if cal.frame_interval > 0 else None
    sunit = cal.unit if cal.unit not in ("pixel", "") else None
    names = ["t"] + (["z"] if tracks.ndim == 3 else []) + ["y", "x"]
    axes = [Axis(name="t", type="time", unit=_unit(tunit, "time"))] + \
        [Axis(name=a, type="space", unit=_unit(sunit, "space")) for a in names[1:]]
    values = {"t": s["frame"] * dt, "z": s["z"], "y": s["y"], "x": s["x"], "frame": s["frame"],
              "label": s["label"], "area": s["area"], "radius": s["radius"], "track_id": s["track_id"],
              "ctc_label": s["ctc_label"]}
    node_props = {k: {"values": np.ascontiguousarray(v), "missing": None}
                  for k, v in values.items() if k in names or k not in ("z",)}
    edge_props = {"cost": {"values": np.asarray(tracks.edge_cost, np.float64), "missing": None},
                  "kind": {"values": np.asarray(tracks.edge_kind, np.int8), "missing": None}}
    meta = GeffMetadata(directed=True, axes=axes, node_props_metadata={}, edge_props_metadata={})
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        write_arrays(str(tmp / "g.zarr"), s["id"].astype(np.int64), node_props,
                     tracks.edges.astype(np.int64).reshape(-1, 2), edge_props, meta, zarr_format=2)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "g.zarr", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote GEFF %s: %d nodes, %d edges", path, s["id"].size, len(tracks.edges))
    return path


def _unit(unit: str | None, kind: str) -> str | None:
    if unit is None:
        return None
    u = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "nm": "nanometer", "mm": "millimeter",
         "sec": "second", "s": "second", "min": "minute", "h": "hour", "ms": "millisecond"}.get(unit, unit)
    return u
