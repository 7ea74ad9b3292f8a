"""Tracking a movie end to end: segment every frame (or take a label stack), link, summarise.

The ImageJ command ``ijtorch Track``, the CLI ``ijtorch track`` and the server all call
:func:`track_movie` and :func:`write_track_outputs`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..image import Calibration, check_axes
from .linking import TrackingParams, Tracks, track_labels

__all__ = ["linking_summary", "track_movie", "track_statistics", "write_track_outputs"]

log = logging.getLogger(__name__)


def track_movie(data: np.ndarray, axes: str, *, is_labels: bool = False, model: str | os.PathLike = "nuclei",
                channel: int | None = None, calibration: Calibration | dict | None = None,
                params: TrackingParams | dict | None = None, progress=None, cancel=None) -> Tracks:
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
        :class:`~ijtorch.tasks.linking.TrackingParams`.
    cancel
        Polled between frames (and tiles) while segmenting and before linking; a True answer raises
        ``InterruptedError``.
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

        result = segment(data, axes, model=model, channel=channel, progress=progress, cancel=cancel)
        labels, label_axes = result.labels, result.axes
        intensity = data if "C" not in axes else np.take(data, channel or 0, axis=axes.index("C"))
    if cancel is not None and cancel():
        raise InterruptedError("tracking cancelled")
    tracks = track_labels(labels, label_axes, intensity=intensity, calibration=calibration, params=params,
                          progress=progress)
    log.info("%s", linking_summary(tracks))
    return tracks


_SUMMARY_KEYS = (("max_distance", "max distance", "{:.3g}"), ("displacement_sigma", "displacement sigma", "{:.3g}"),
                 ("size_growth", "size growth/frame", "{:+.3f}"), ("size_sigma", "size sigma", "{:.3f}"),
                 ("overlap_sigma", "overlap sigma", "{:.3f}"), ("orientation_sigma", "orientation sigma", "{:.1f} deg"),
                 ("max_cost", "max cost", "{:.1f}"))


def linking_summary(tracks: Tracks) -> str:
    """One line: the linking mode and the gates and cost scales used, marking those estimated from the
    movie (``*``), e.g. ``overlap linking; estimated (*) from 3316 confident links: max distance 13.2*, ...``."""
    est = tracks.estimated or {}
    mode = est.get("linking", "distance")
    parts = []
    for key, name, fmt in _SUMMARY_KEYS:
        if key in est:
            parts.append(f"{name} {fmt.format(est[key])}{'*' if est.get(key + '_estimated') else ''}")
    head = f"{mode} linking"
    if "n_confident_links" in est:
        head += f"; * = estimated from {est['n_confident_links']} confident links"
    elif est.get("max_distance_estimated"):
        head += "; * = estimated from the movie"
    line = head + (": " + ", ".join(parts) if parts else "")
    if "n_divisions" in est:
        line += f"; {est['n_divisions']} divisions and {est.get('n_merges', 0)} merges from masks"
    return line


def n_tracks(tracks: Tracks) -> int:
    """Tracks as TrackMate counts them: connected components of the track graph with at least one
    link, a dividing cell and its daughters being one track (``Model.getTrackModel().nTracks``)."""
    return len(tracks.track_ids)


def n_tracklets(tracks: Tracks) -> int:
    """CTC tracklets: division-free segments (one CTC label each, including single-spot ones)."""
    return len(tracks.ctc)


def track_summary(tracks: Tracks) -> dict[str, np.ndarray]:
    """One row per track as TrackMate counts them (:func:`n_tracks`): its id (TrackMate's TRACK_ID),
    spots, CTC tracklets, divisions, first/last frame and duration."""
    spots = tracks.spots
    tid = spots["track_id"]
    ids = tracks.track_ids
    dt = tracks.calibration.frame_interval or 1.0
    div_spots = (np.bincount(tracks.edges[:, 0], minlength=len(spots["id"])) >= 2) if len(tracks.edges) \
        else np.zeros(len(spots["id"]), bool)
    rows: dict[str, list[Any]] = {k: [] for k in ("track", "n_spots", "n_tracklets", "n_divisions", "start_frame",
                                                  "end_frame", "duration", "divides")}
    for t in ids:
        idx = np.flatnonzero(tid == t)
        frames = spots["frame"][idx]
        rows["track"].append(int(t))
        rows["n_spots"].append(len(idx))
        rows["n_tracklets"].append(len(np.unique(spots["ctc_label"][idx])))
        rows["n_divisions"].append(int(np.count_nonzero(div_spots[idx])))
        rows["start_frame"].append(int(frames.min()))
        rows["end_frame"].append(int(frames.max()))
        rows["duration"].append(float(frames.max() - frames.min()) * dt)
        rows["divides"].append(bool(div_spots[idx].any()))
    return {k: np.asarray(v) for k, v in rows.items()}


def track_statistics(tracks: Tracks) -> dict[str, np.ndarray]:
    """One row per CTC tracklet (division-free segment, column ``tracklet`` = its CTC label):
    start/end frame, duration, displacement, speed, whether it ends in a division, its parent
    tracklet and the track (TrackMate's TRACK_ID, connected component; -1 for none) it belongs to."""
    spots = tracks.spots
    ctc = tracks.ctc
    dt = tracks.calibration.frame_interval or 1.0
    rows: dict[str, list[Any]] = {k: [] for k in ("tracklet", "track", "parent", "start_frame", "end_frame",
                                                  "n_spots", "duration", "displacement", "total_distance",
                                                  "mean_speed", "divides")}
    parents = {int(p) for p in ctc[:, 3] if p > 0} if len(ctc) else set()
    label_col = spots["ctc_label"]
    for label, begin, end, parent in ctc:
        idx = np.flatnonzero(label_col == label)
        idx = idx[np.argsort(spots["frame"][idx])]
        xyz = np.stack([spots["x"][idx], spots["y"][idx], spots["z"][idx]], axis=1)
        steps = np.linalg.norm(np.diff(xyz, axis=0), axis=1) if len(idx) > 1 else np.zeros(0)
        duration = float(end - begin) * dt
        rows["tracklet"].append(int(label))
        rows["track"].append(int(spots["track_id"][idx[0]]) if len(idx) else -1)
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
    paths["statistics"] = write_table_csv(out / f"{name}_track_statistics.csv", track_summary(tracks))
    paths["tracklet_statistics"] = write_table_csv(out / f"{name}_tracklet_statistics.csv", track_statistics(tracks))
    if tracks.tracked_labels is not None:
        paths["ctc"] = write_ctc(out / f"{name}_RES", tracks)
    try:
        from ..io.geff import write_geff

        paths["geff"] = write_geff(out / f"{name}.geff", tracks, overwrite=True)
    except ImportError:  # geff is optional: the other formats are always written
        pass
    return paths
