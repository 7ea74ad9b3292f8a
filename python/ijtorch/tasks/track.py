"""Tracking a movie end to end: segment every frame (or take a label stack), link, summarise.

The ImageJ command ``ijtorch Track``, the CLI ``ijtorch track`` and the server all call
:func:`track_movie` and :func:`write_track_outputs`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..image import Calibration, check_axes
from .tracking import Tracks, TrackingParams, track_labels

__all__ = ["track_movie", "track_statistics", "write_track_outputs"]


def track_movie(data: np.ndarray, axes: str, *, is_labels: bool = False, model: str | os.PathLike = "nuclei",
                channel: int | None = None, calibration: Calibration | dict | None = None,
                params: TrackingParams | dict | None = None, progress=None) -> Tracks:
    """Track objects through a time-lapse (``T`` required; ``Z`` optional).

    Parameters
    ----------
    data
        The movie (intensities), or its label stack when ``is_labels`` is true.
    axes
        Axes of ``data`` from ``TZCYX``; ``T`` is required.
    is_labels
        ``data`` already holds label masks (e.g. a Cell Tracking Challenge ``TRA`` folder).
    model, channel
        Segmentation model and channel (0-based) used when ``is_labels`` is false.
    calibration
        Pixel sizes and frame interval; positions and speeds are in its units.
    params
        :class:`~ijtorch.tasks.tracking.TrackingParams`.
    """
    axes = check_axes(axes, data.ndim)
    if "T" not in axes:
        raise ValueError(f"axes={axes!r}: tracking needs a time axis T")
    if is_labels:
        if "C" in axes:
            raise ValueError(f"axes={axes!r}: a label stack has no channel axis")
        labels, label_axes, intensity = data, axes, None
    else:
        from .segment import segment

        result = segment(data, axes, model=model, channel=channel, progress=progress)
        labels, label_axes = result.labels, result.axes
        intensity = data if "C" not in axes else np.take(data, channel or 0, axis=axes.index("C"))
    return track_labels(labels, label_axes, intensity=intensity, calibration=calibration, params=params,
                        progress=progress)


def track_statistics(tracks: Tracks) -> dict[str, np.ndarray]:
    """One row per track segment (CTC label): start/end frame, duration, displacement, speed,
    whether it ends in a division, its parent and the lineage (connected component) it belongs to."""
    spots = tracks.spots
    ctc = tracks.ctc
    dt = tracks.calibration.frame_interval or 1.0
    rows: dict[str, list[Any]] = {k: [] for k in ("track", "lineage", "parent", "start_frame", "end_frame",
                                                  "n_spots", "duration", "displacement", "total_distance",
                                                  "mean_speed", "divides")}
    parents = set(int(p) for p in ctc[:, 3] if p > 0) if len(ctc) else set()
    label_col = spots["ctc_label"]
    for label, begin, end, parent in ctc:
        idx = np.flatnonzero(label_col == label)
        idx = idx[np.argsort(spots["frame"][idx])]
        xyz = np.stack([spots["x"][idx], spots["y"][idx], spots["z"][idx]], axis=1)
        steps = np.linalg.norm(np.diff(xyz, axis=0), axis=1) if len(idx) > 1 else np.zeros(0)
        duration = float(end - begin) * dt
        rows["track"].append(int(label))
        rows["lineage"].append(int(spots["track_id"][idx[0]]) if len(idx) else -1)
        rows["parent"].append(int(parent))
        rows["start_frame"].append(int(begin))
        rows["end_frame"].append(int(end))
        rows["n_spots"].append(len(idx))
        rows["duration"].append(duration)
        rows["displacement"].append(float(np.linalg.norm(xyz[-1] - xyz[0])) if len(idx) else 0.0)
        rows["total_distance"].append(float(steps.sum()))
        rows["mean_speed"].append(float(steps.sum() / duration) if duration > 0 else 0.0)
        rows["divides"].append(int(label) in parents)
    return {k: np.asarray(v) for k, v in rows.items()}


def write_track_outputs(output_dir: str | os.PathLike, name: str, tracks: Tracks, *,
                        image_path: str | os.PathLike | None = None) -> dict[str, Path]:
    """TrackMate XML, TrackMate-style CSVs, a CTC result folder, GEFF and per-track statistics."""
    from ..io.ctc import write_ctc
    from ..io.outputs import write_table_csv
    from ..io.trackmate import write_trackmate_csv, write_trackmate_xml

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trackmate_xml": write_trackmate_xml(out / f"{name}.xml", tracks, image_path=image_path)}
    paths.update({f"trackmate_{k}": v for k, v in write_trackmate_csv(out, tracks, prefix=name).items()})
    paths["statistics"] = write_table_csv(out / f"{name}_track_statistics.csv", track_statistics(tracks))
    if tracks.tracked_labels is not None:
        paths["ctc"] = write_ctc(out / f"{name}_RES", tracks)
    try:
        from ..io.geff import write_geff

        paths["geff"] = write_geff(out / f"{name}.geff", tracks, overwrite=True)
    except ImportError:  # geff is optional: the other formats are always written
        pass
    return paths
