"""TrackMate 7 XML and TrackMate-style CSV writers for :class:`ijtorch.tasks.linking.Tracks`.

Follows ``docs/formats.md`` §1: every spot carries the 8 built-in features plus ``AREA`` and
``MEAN_INTENSITY_CH1`` (all declared); ROI polygons are in physical units relative to the spot
centre; one ``Track`` per connected component, edges written source = earlier frame; integers
(IDs, frames, track ids, int features) are written without a decimal point and doubles in Python
``repr`` style. The ``Settings`` block uses ``MANUAL_DETECTOR`` and ``MANUAL_TRACKER`` so that
TrackMate reopens the file without re-running detection.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .atomic import atomic_path

__all__ = ["write_trackmate_xml", "write_trackmate_csv", "SPOT_FEATURES", "EDGE_FEATURES", "TRACK_FEATURES"]

log = logging.getLogger(__name__)

TRACKMATE_VERSION = "7.13.2"

# (key, name, shortname, dimension, isint)
SPOT_FEATURES = (
    ("QUALITY", "Quality", "Quality", "QUALITY", False),
    ("POSITION_X", "X", "X", "POSITION", False),
    ("POSITION_Y", "Y", "Y", "POSITION", False),
    ("POSITION_Z", "Z", "Z", "POSITION", False),
    ("POSITION_T", "T", "T", "TIME", False),
    ("FRAME", "Frame", "Frame", "NONE", True),
    ("RADIUS", "Radius", "R", "LENGTH", False),
    ("VISIBILITY", "Visibility", "Visibility", "NONE", True),
    ("AREA", "Area", "Area", "AREA", False),
    ("MEAN_INTENSITY_CH1", "Mean intensity ch1", "Mean ch1", "INTENSITY", False),
)
EDGE_FEATURES = (
    ("SPOT_SOURCE_ID", "Source spot ID", "Source ID", "NONE", True),
    ("SPOT_TARGET_ID", "Target spot ID", "Target ID", "NONE", True),
    ("LINK_COST", "Edge cost", "Cost", "COST", False),
    ("EDGE_TIME", "Edge time", "Edge T", "TIME", False),
)
TRACK_FEATURES = (
    ("TRACK_INDEX", "Track index", "Index", "NONE", True),
    ("TRACK_ID", "Track ID", "ID", "NONE", True),
    ("NUMBER_SPOTS", "Number of spots in track", "N spots", "NONE", True),
    ("NUMBER_GAPS", "Number of gaps", "N gaps", "NONE", True),
    ("NUMBER_SPLITS", "Number of split events", "N splits", "NONE", True),
    ("NUMBER_MERGES", "Number of merge events", "N merges", "NONE", True),
    ("TRACK_START", "Track start", "Track start", "TIME", False),
    ("TRACK_STOP", "Track stop", "Track stop", "TIME", False),
    ("TRACK_DURATION", "Track duration", "Duration", "TIME", False),
)


def _f(v: float) -> str:
    """Double as Java's ``Double.valueOf`` reads it: Python repr, NaN and Infinity spelled out."""
    v = float(v)
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return repr(v)


def _i(v) -> str:
    return str(int(v))


def _units(dim: str, space: str, time: str) -> str:
    return {"POSITION": space, "LENGTH": space, "AREA": f"{space}^2", "TIME": time, "QUALITY": "quality",
            "INTENSITY": "counts", "COST": "cost", "VELOCITY": f"{space}/{time}"}.get(dim, "")


def _tables(tracks) -> dict:
    """Per-spot, per-edge and per-track feature columns shared by the XML and CSV writers."""
    s = tracks.spots
    cal = tracks.calibration
    dt = cal.frame_interval if cal.frame_interval > 0 else 1.0
    n = s["id"].size
    area_cal = s["area"] * cal.pixel_width * cal.pixel_height * (cal.voxel_depth if tracks.ndim == 3 else 1.0)
    spot = {"QUALITY": np.ones(n), "POSITION_X": s["x"], "POSITION_Y": s["y"], "POSITION_Z": s["z"],
            "POSITION_T": s["frame"] * dt, "FRAME": s["frame"], "RADIUS": s["radius"],
            "VISIBILITY": np.ones(n, np.int64), "AREA": area_cal, "MEAN_INTENSITY_CH1": s["mean_intensity"]}
    e = tracks.edges
    edge = {"SPOT_SOURCE_ID": s["id"][e[:, 0]] if len(e) else np.zeros(0, np.int64),
            "SPOT_TARGET_ID": s["id"][e[:, 1]] if len(e) else np.zeros(0, np.int64),
            "LINK_COST": tracks.edge_cost,
            "EDGE_TIME": (s["frame"][e[:, 0]] + s["frame"][e[:, 1]]) * dt / 2.0 if len(e) else np.zeros(0)}
    tid = s["track_id"]
    ids = tracks.track_ids
    etrack = tid[e[:, 0]] if len(e) else np.zeros(0, np.int64)
    nt = ids.size
    out_deg = np.bincount(e[:, 0], minlength=n) if len(e) else np.zeros(n, np.int64)
    in_deg = np.bincount(e[:, 1], minlength=n) if len(e) else np.zeros(n, np.int64)
    in_t = tid >= 0
    tmin = np.full(nt, np.inf); tmax = np.full(nt, -np.inf)
    np.minimum.at(tmin, tid[in_t], spot["POSITION_T"][in_t]); np.maximum.at(tmax, tid[in_t], spot["POSITION_T"][in_t])
    gaps = np.zeros(nt, np.int64)
    if len(e):
        np.add.at(gaps, etrack, (s["frame"][e[:, 1]] - s["frame"][e[:, 0]]) > 1)
    track = {"TRACK_INDEX": np.arange(nt), "TRACK_ID": ids,
             "NUMBER_SPOTS": np.bincount(tid[in_t], minlength=nt),
             "NUMBER_GAPS": gaps,
             "NUMBER_SPLITS": np.bincount(tid[in_t & (out_deg >= 2)], minlength=nt),
             "NUMBER_MERGES": np.bincount(tid[in_t & (in_deg >= 2)], minlength=nt),
             "TRACK_START": tmin, "TRACK_STOP": tmax, "TRACK_DURATION": tmax - tmin}
    return {"spot": spot, "edge": edge, "edge_track": etrack, "track": track}


def _check_tracks(tracks) -> None:
    if not all(hasattr(tracks, a) for a in ("spots", "edges", "edge_cost", "calibration")):
        raise TypeError(f"tracks must be an ijtorch.tasks.linking.Tracks, got {type(tracks).__name__}")


def write_trackmate_xml(path: str | os.PathLike, tracks, *, image_path: str | os.PathLike | None = None,
                        shape: tuple[int, ...] | None = None) -> Path:
    """Write tracks as a TrackMate 7 XML file that Fiji's TrackMate opens.

    Parameters
    ----------
    path
        Output ``.xml`` file (written atomically).
    tracks
        :class:`ijtorch.tasks.linking.Tracks`.
    image_path
        Movie the tracks belong to (``ImageData`` filename and folder); empty if omitted.
    shape
        Spatial shape ``(Y, X)`` / ``(Z, Y, X)`` for ``ImageData``; default ``tracks.shape``.

    Returns
    -------
    Path
        The written file.
    """
    _check_tracks(tracks)
    path = Path(path)
    if path.suffix.lower() != ".xml":
        raise ValueError(f"path={str(path)!r}: a TrackMate file must end in '.xml'")
    cal = tracks.calibration
    tab = _tables(tracks)
    s = tracks.spots
    root = ET.Element("TrackMate", version=TRACKMATE_VERSION)
    ET.SubElement(root, "Log").text = "Written by ijtorch (detections + LAP tracking)." + _linking_log(tracks)
    model = ET.SubElement(root, "Model", spatialunits=cal.unit, timeunits=cal.time_unit if cal.frame_interval > 0 else "frame")
    decl = ET.SubElement(model, "FeatureDeclarations")
    for section, feats in (("SpotFeatures", SPOT_FEATURES), ("EdgeFeatures", EDGE_FEATURES), ("TrackFeatures", TRACK_FEATURES)):
        sec = ET.SubElement(decl, section)
        for key, name, short, dim, isint in feats:
            ET.SubElement(sec, "Feature", feature=key, name=name, shortname=short, dimension=dim,
                          isint="true" if isint else "false")
    all_spots = ET.SubElement(model, "AllSpots", nspots=_i(s["id"].size))
    frame = s["frame"]
    bounds = np.searchsorted(frame, np.arange(tracks.n_frames + 1))
    keys = [f[0] for f in SPOT_FEATURES]
    ints = {f[0] for f in SPOT_FEATURES if f[4]}
    sp = tab["spot"]
    for t in range(tracks.n_frames):
        fr = ET.SubElement(all_spots, "SpotsInFrame", frame=_i(t))
        for k in range(bounds[t], bounds[t + 1]):
            attrs = {"ID": _i(s["id"][k]), "name": f"ID{int(s['id'][k])}"}
            for key in keys:
                attrs[key] = _i(sp[key][k]) if key in ints else _f(sp[key][k])
            el = ET.SubElement(fr, "Spot", attrs)
            if tracks.polygons is not None and tracks.ndim == 2 and len(tracks.polygons[k]) > 2:
                poly = tracks.polygons[k]
                # pixel-corner coordinates -> pixel-centre coordinates -> physical, relative to the centre
                rx = (poly[:, 0] - 0.5) * cal.pixel_width - s["x"][k]
                ry = (poly[:, 1] - 0.5) * cal.pixel_height - s["y"][k]
                el.set("ROI_N_POINTS", _i(len(poly)))
                el.text = " ".join(f"{_f(a)} {_f(b)}" for a, b in zip(rx, ry))
    all_tracks = ET.SubElement(model, "AllTracks")
    tr = tab["track"]
    e_keys = [f[0] for f in EDGE_FEATURES]
    e_ints = {f[0] for f in EDGE_FEATURES if f[4]}
    t_ints = {f[0] for f in TRACK_FEATURES if f[4]}
    etrack = tab["edge_track"]
    order = np.argsort(etrack, kind="stable")
    ebounds = np.searchsorted(etrack[order], tr["TRACK_ID"], side="left"), np.searchsorted(etrack[order], tr["TRACK_ID"], side="right")
    for ti in range(tr["TRACK_ID"].size):
        attrs = {"name": f"Track_{int(tr['TRACK_ID'][ti])}"}
        for key, *_ in TRACK_FEATURES:
            attrs[key] = _i(tr[key][ti]) if key in t_ints else _f(tr[key][ti])
        tel = ET.SubElement(all_tracks, "Track", attrs)
        for ei in order[ebounds[0][ti]:ebounds[1][ti]]:
            ET.SubElement(tel, "Edge", {k: _i(tab["edge"][k][ei]) if k in e_ints else _f(tab["edge"][k][ei]) for k in e_keys})
    filt = ET.SubElement(model, "FilteredTracks")
    for tid in tr["TRACK_ID"]:
        ET.SubElement(filt, "TrackID", TRACK_ID=_i(tid))
    _settings(root, tracks, image_path, shape or tracks.shape)
    ET.SubElement(root, "GUIState", state="ConfigureViews")
    ET.SubElement(root, "DisplaySettings").text = "{}"
    ET.indent(root, space="  ")
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)
    log.info("wrote TrackMate XML %s: %d spots, %d edges, %d tracks", path, s["id"].size, len(tracks.edges), tr["TRACK_ID"].size)
    return path


def _settings(root: ET.Element, tracks, image_path, shape) -> None:
    cal = tracks.calibration
    settings = ET.SubElement(root, "Settings")
    if image_path is not None:
        ip = Path(image_path)
        filename, folder = ip.name, str(ip.parent.resolve()) + os.sep
    else:
        filename, folder = "", ""
    shape = tuple(shape) if shape is not None else None
    if shape is None:
        s = tracks.spots
        shape = tuple(int(np.ceil(v.max(initial=0.0) / p)) + 1 for v, p in
                      ((s["y"], cal.pixel_height), (s["x"], cal.pixel_width)))
    if len(shape) not in (2, 3):
        raise ValueError(f"shape={shape!r}: accepted are (Y, X) or (Z, Y, X)")
    nz = shape[0] if len(shape) == 3 else 1
    h, w = shape[-2], shape[-1]
    ET.SubElement(settings, "ImageData", filename=filename, folder=folder, width=_i(w), height=_i(h),
                  nslices=_i(nz), nframes=_i(tracks.n_frames), pixelwidth=_f(cal.pixel_width),
                  pixelheight=_f(cal.pixel_height), voxeldepth=_f(cal.voxel_depth),
                  timeinterval=_f(cal.frame_interval if cal.frame_interval > 0 else 1.0))
    ET.SubElement(settings, "BasicSettings", xstart="0", xend=_i(w - 1), ystart="0", yend=_i(h - 1),
                  zstart="0", zend=_i(nz - 1), tstart="0", tend=_i(max(tracks.n_frames - 1, 0)))
    radius = float(np.nanmedian(tracks.spots["radius"])) if tracks.spots["radius"].size else 1.0
    ET.SubElement(settings, "DetectorSettings", DETECTOR_NAME="MANUAL_DETECTOR", RADIUS=_f(radius))
    ET.SubElement(settings, "InitialSpotFilter", feature="QUALITY", value="0.0", isabove="true")
    ET.SubElement(settings, "SpotFilterCollection")
    ET.SubElement(settings, "TrackerSettings", TRACKER_NAME="MANUAL_TRACKER")
    ET.SubElement(settings, "TrackFilterCollection")
    _tracker_record(settings, tracks)


def _attr(v) -> str:
    if v is None:
        return "auto"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return _i(v)
    if isinstance(v, (float, np.floating)):
        return _f(v)
    return str(getattr(v, "value", v))


def _tracker_record(settings: ET.Element, tracks) -> None:
    """``IjtorchTracker``: the linking parameters as given (``auto`` = estimated from the movie) and the
    values used. TrackMate's reader looks its children up by name, so this element is ignored there
    (TrackerSettings stays MANUAL_TRACKER)."""
    params = getattr(tracks, "params", None) or {}
    est = getattr(tracks, "estimated", None) or {}
    el = ET.SubElement(settings, "IjtorchTracker")
    ET.SubElement(el, "Parameters", {k: _attr(v) for k, v in params.items()})
    used = {k: _attr(v) for k, v in est.items() if not k.endswith("_estimated")}
    used["estimated_from_movie"] = " ".join(k[:-len("_estimated")] for k, v in est.items() if k.endswith("_estimated") and v)
    ET.SubElement(el, "Used", used)


def _linking_log(tracks) -> str:
    est = getattr(tracks, "estimated", None) or {}
    if not est:
        return ""
    vals = ", ".join(f"{k}={_attr(v)}" for k, v in est.items() if not k.endswith("_estimated"))
    auto = ", ".join(k[:-len("_estimated")] for k, v in est.items() if k.endswith("_estimated") and v)
    return f"\nLinking: {vals}" + (f"\nEstimated from the movie: {auto}" if auto else "")


def _csv_write(path: Path, header: list[list[str]], rows: list[list[str]]) -> None:
    for r in (2, 1):  # omit the names/shortnames row when it duplicates the row above
        if header[r] == header[r - 1]:
            del header[r]
    for row in header + rows:
        for cell in row:
            if "," in cell or "\n" in cell:
                raise ValueError(f"CSV cell {cell!r} contains a comma or newline; TrackMate CSV has no quoting")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            for row in header + rows:
                fh.write(",".join(row) + "\n")


def _cell(v, isint: bool) -> str:
    if isint:
        return _i(v)
    v = float(v)
    return "" if np.isnan(v) else _f(v)


def write_trackmate_csv(folder: str | os.PathLike, tracks, *, prefix: str = "tracks") -> dict[str, Path]:
    """Write TrackMate's table-window CSV exports: ``<prefix>_spots/_edges/_tracks.csv``.

    Comma separated, no quoting, 4 header rows (keys, names, short names, ``(units)``); missing
    values are empty fields; every spot of the XML (spots in no track with an empty TRACK_ID),
    every edge, every track.

    Parameters
    ----------
    folder
        Existing output folder.
    tracks
        :class:`ijtorch.tasks.linking.Tracks`.
    prefix
        File name prefix (usually the image title).

    Returns
    -------
    dict of str to Path
        ``{"spots": ..., "edges": ..., "tracks": ...}``.
    """
    _check_tracks(tracks)
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder={str(folder)!r} is not an existing folder")
    cal = tracks.calibration
    space, time = cal.unit, (cal.time_unit if cal.frame_interval > 0 else "frame")
    tab = _tables(tracks)
    s = tracks.spots
    out = {}

    def header(lead: list[tuple[str, str, str]], feats) -> list[list[str]]:
        rows = [[a for a, _, _ in lead] + [f[0] for f in feats], [b for _, b, _ in lead] + [f[1] for f in feats],
                [c for _, _, c in lead] + [f[2] for f in feats], [""] * len(lead)]
        rows[3] += [f"({u})" if (u := _units(f[3], space, time)) else "" for f in feats]
        return rows

    # every spot of the XML, as TrackMate's spot table lists them (a spot in no track: empty TRACK_ID)
    vis = np.arange(len(s["id"]))
    rows = [[f"ID{int(s['id'][k])}", _i(s["id"][k]), _i(s["track_id"][k]) if s["track_id"][k] >= 0 else ""]
            + [_cell(tab["spot"][f[0]][k], f[4]) for f in SPOT_FEATURES] for k in vis]
    out["spots"] = folder / f"{prefix}_spots.csv"
    _csv_write(out["spots"], header([("LABEL", "Label", "Label"), ("ID", "Spot ID", "Spot ID"),
                                     ("TRACK_ID", "Track ID", "Track ID")], SPOT_FEATURES), rows)
    e = tab["edge"]
    rows = [[f"ID{int(e['SPOT_SOURCE_ID'][k])} \u2192 ID{int(e['SPOT_TARGET_ID'][k])}", _i(tab["edge_track"][k])]
            + [_cell(e[f[0]][k], f[4]) for f in EDGE_FEATURES] for k in range(len(tracks.edges))]
    out["edges"] = folder / f"{prefix}_edges.csv"
    _csv_write(out["edges"], header([("LABEL", "Label", "Label"), ("TRACK_ID", "Track ID", "Track ID")], EDGE_FEATURES), rows)
    tr = tab["track"]
    rows = [[f"Track_{int(tr['TRACK_ID'][k])}"] + [_cell(tr[f[0]][k], f[4]) for f in TRACK_FEATURES]
            for k in range(tr["TRACK_ID"].size)]
    out["tracks"] = folder / f"{prefix}_tracks.csv"
    _csv_write(out["tracks"], header([("LABEL", "Label", "Label")], TRACK_FEATURES), rows)
    log.info("wrote TrackMate CSV tables to %s", folder)
    return out
