"""Tracking benchmark: ijtorch vs laptrack on the same masks, side by side (printed, not asserted).

Accuracy (py-ctcmetrics: DET, TRA, BC(0..3), CHOTA; divisions found / false):
- the shared real movie ``tracking_bacteria`` (E. coli micro-colony, CTC ground-truth masks),
- simulated dense colonies of rod-shaped cells (:func:`ijtorch.simulate.movies.simulate_colony`:
  grow, push each other, divide along their axis; known lineage) with doubling times of 8 frames
  (about the growth of the real movie: +9 % area per frame), 7 and 6 (faster growth, cells at the
  colony edge moving up to ~15 px per frame: harder than the real movies).
Trackers on the same ground-truth masks:
- ``ijtorch``: ``track_labels`` with defaults (overlap linking, divisions from masks, every gate and
  scale estimated from the movie),
- ``ijtorch distance``: centroid LAP (``linking="distance"``, gate estimated),
- ``laptrack``: ``LapTrack`` on the centroids with the gate ijtorch estimated for that movie
  (``max_distance``; splitting on, same gate), as ``ijtorch track`` did before issue #17,
- ``laptrack overlap``: ``OverLapTrack`` (IoU costs, its documented defaults with cutoffs 0.9; it
  computes overlaps pair by pair in Python, so it runs on the small movies only).
From raw frames (issue #17 item 5): ``track_movie`` on the phase-contrast frames 20-24 of the shared
movie (held out from the training of the bundled ``bacteria_phase`` model: U-Net + watershed per frame,
then overlap linking) next to tracking the ground-truth masks of the same frames, scored against the
ground truth of those frames.
Throughput (detections/s), each ratio measured in the same run:
- masks: linking the shared movie and two dense colonies (ijtorch's mask linking, everything
  included) vs laptrack, alternating, best of 5 runs each, CPU and wall time;
- points: 200 frames x ~2 000 points, ijtorch's centroid LAP vs laptrack on the first
  ``--laptrack-frames`` frames (its per-frame cost is the same in every frame).

    python benchmarks/bench_track.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import tempfile
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
from ijtorch.io.ctc import read_ctc_tracks, write_ctc, write_ctc_ground_truth
from ijtorch.simulate.movies import simulate_colony, simulate_movie
from ijtorch.tasks import linking as T
from ijtorch.tasks.track import track_movie

SHARED = Path(os.environ.get("IJTORCH_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "tracking_bacteria"
METRICS = ("DET", "TRA", "BC(0)", "BC(1)", "BC(2)", "BC(3)", "CHOTA")


def _oriented(det, e):
    frame = det.spots["frame"]
    e = np.asarray(e, np.int64).reshape(-1, 2)
    e = np.where((frame[e[:, 0]] > frame[e[:, 1]])[:, None], e[:, ::-1], e)
    return e[np.lexsort((e[:, 1], e[:, 0]))]


def laptrack_centroids(det, gate: float, max_gap: int = 2):
    """laptrack's LAP on centroids (squared-distance cutoffs = gate²), edges as spot indices + seconds."""
    from laptrack import LapTrack

    frame = det.spots["frame"]
    starts = np.searchsorted(frame, np.arange(det.n_frames + 1))
    coords = [np.stack([det.spots["y"][a:b], det.spots["x"][a:b]], 1) for a, b in pairwise(starts)]
    lt = LapTrack(cutoff=gate ** 2, gap_closing_cutoff=gate ** 2, gap_closing_max_frame_count=max_gap + 1,
                  splitting_cutoff=gate ** 2, merging_cutoff=False)
    t0 = time.perf_counter()
    tree = lt.predict(coords)
    dt = time.perf_counter() - t0
    return _oriented(det, [[starts[a[0]] + a[1], starts[b[0]] + b[1]] for a, b in tree.edges()]), dt


def laptrack_overlap(det, labels):
    """laptrack's OverLapTrack on the label stack (IoU-based costs), edges as spot indices + seconds."""
    from laptrack import OverLapTrack

    olt = OverLapTrack(cutoff=0.9, splitting_cutoff=0.9, gap_closing_max_frame_count=1)
    t0 = time.perf_counter()
    track_df, split_df, _ = olt.predict_overlap_dataframe(labels)
    dt = time.perf_counter() - t0
    s = det.spots
    key = {(int(f), int(lab)): i for i, (f, lab) in enumerate(zip(s["frame"], s["label"]))}
    df = track_df.reset_index().sort_values(["track_id", "frame"])
    f, lab, tid = df["frame"].to_numpy(), df["label"].to_numpy(), df["track_id"].to_numpy()
    same = tid[1:] == tid[:-1]
    edges = [[key[(int(f[k]), int(lab[k]))], key[(int(f[k + 1]), int(lab[k + 1]))]] for k in np.flatnonzero(same)]
    first = {int(t): k for k, t in reversed(list(enumerate(tid)))}
    last = {int(t): k for k, t in enumerate(tid)}
    for p, c in zip(split_df["parent_track_id"], split_df["child_track_id"]):
        a, b = last[int(p)], first[int(c)]
        edges.append([key[(int(f[a]), int(lab[a]))], key[(int(f[b]), int(lab[b]))]])
    return _oriented(det, edges), dt


def scores(tr, gt: Path, tmp: Path, name: str) -> dict:
    from ctc_metrics import evaluate_sequence

    res = tmp / f"{name}_RES"
    if res.exists():
        shutil.rmtree(res)
    write_ctc(res, tr)
    with contextlib.redirect_stdout(io.StringIO()):
        r = evaluate_sequence(str(res), str(gt), metrics=["DET", "TRA", "BC", "CHOTA"], threads=1)
    return {**{k: float(r[k]) for k in METRICS}, "div_tp": int(r["tp_div(1)"]), "div_fp": int(r["fp_div(1)"]),
            "div_gt": int(r["gt_divisions"])}


def movies(quick: bool):
    """(name, labels TYX, ground-truth CTC folder builder)."""
    if (SHARED / "01_GT" / "TRA").is_dir():
        import tifffile

        tra = SHARED / "01_GT" / "TRA"
        lab = np.stack([tifffile.imread(p) for p in sorted(tra.glob("man_track*.tif"))])
        yield "real: tracking_bacteria (shared)", lab, lambda d: shutil.copytree(SHARED / "01_GT", d)
    else:
        print(f"(shared movie not found at {SHARED}: skipped)")
    sims = [("colony doubling 8, seed 1", {"doubling_time": 8, "seed": 1, "shape": (320, 320)})]
    if not quick:
        sims += [("colony doubling 8, seed 2", {"doubling_time": 8, "seed": 2, "shape": (320, 320)}),
                 ("colony doubling 7, seed 3", {"doubling_time": 7, "seed": 3, "shape": (360, 360)}),
                 ("colony doubling 6, seed 4", {"doubling_time": 6, "seed": 4, "shape": (400, 400)})]
    for name, kw in sims:
        m = simulate_colony(n_frames=30, n_cells=30, **kw)
        yield (name, m.labels, lambda d, m=m: write_ctc_ground_truth(d, m.truth, m.lineage))


def accuracy(quick: bool, tmp: Path) -> dict:
    out = {}
    for k, (name, lab, make_gt) in enumerate(movies(quick)):
        gt = tmp / f"m{k}_GT"
        make_gt(gt)
        det = T.detect_labels(lab, "TYX", with_outlines=False)
        n_cells = [len(np.unique(lab[t])) - 1 for t in (0, lab.shape[0] - 1)]
        print(f"\n{name}: {lab.shape[0]} frames {lab.shape[1]}x{lab.shape[2]}, {len(det)} detections, "
              f"{n_cells[0]} -> {n_cells[1]} cells")
        rows = {}
        t0 = time.perf_counter()
        ours = T.track(det)
        rows["ijtorch"] = (ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        dist = T.track(det, params={"linking": "distance"})
        rows["ijtorch distance"] = (dist, time.perf_counter() - t0)
        gate = ours.estimated["max_distance"]
        e, secs = laptrack_centroids(det, gate)
        rows["laptrack"] = (T._assemble(det, T.TrackingParams(), e, np.zeros(len(e)), np.zeros(len(e), np.int8)), secs)
        if lab.shape[0] * len(det) / lab.shape[0] < 4000:  # OverLapTrack: small movies only (Python per pair)
            try:
                e, secs = laptrack_overlap(det, lab)
                rows["laptrack overlap"] = (T._assemble(det, T.TrackingParams(), e, np.zeros(len(e)), np.zeros(len(e), np.int8)), secs)
            except Exception as exc:  # noqa: BLE001  (a peer's failure is reported, the benchmark goes on)
                print(f"  laptrack overlap failed: {type(exc).__name__}: {exc}")
        print(f"  laptrack gate = ijtorch's estimated max_distance {gate:.3g}; ijtorch estimated: " + ", ".join(f"{key} {v:.3g}" for key, v in ours.estimated.items()
                                                   if isinstance(v, float)))
        print(f"  {'tracker':22s} " + " ".join(f"{m:>6s}" for m in METRICS) + "  divisions found/false (of GT)   time")
        res = {}
        for label, (tr, secs) in rows.items():
            r = scores(tr, gt, tmp, f"m{k}_{label.split()[0]}_{len(res)}")
            res[label] = r
            print(f"  {label:22s} " + " ".join(f"{r[m]:6.4f}" for m in METRICS)
                  + f"  {r['div_tp']:4d}/{r['div_fp']:<4d} (of {r['div_gt']})  {secs:7.2f}s  ({len(det) / secs:,.0f} det/s)")
        out[name] = res
    return out


HELD_OUT = slice(20, 25)  # frames never seen in training by bacteria_phase (its README)


def raw_frames(tmp: Path) -> dict:
    """Segment + link the held-out raw frames vs link their ground-truth masks; CTC scores of both."""
    import tifffile

    if not (SHARED / "01").is_dir():
        print(f"(shared movie not found at {SHARED}: raw-frame pipeline skipped)")
        return {}
    frames = sorted((SHARED / "01").glob("t*.tif"))[HELD_OUT]
    masks = sorted((SHARED / "01_GT" / "TRA").glob("man_track*.tif"))[HELD_OUT]
    raw = np.stack([tifffile.imread(f) for f in frames])
    truth = np.stack([tifffile.imread(f) for f in masks])
    gt = write_ctc_ground_truth(tmp / "held_out_GT", truth, read_ctc_tracks(SHARED / "01_GT" / "TRA" / "man_track.txt"))
    t0 = time.perf_counter()
    pipeline = track_movie(raw, "TYX", model="bacteria_phase")
    t_raw = time.perf_counter() - t0
    t0 = time.perf_counter()
    on_masks = track_movie(truth, "TYX", is_labels=True)
    t_masks = time.perf_counter() - t0
    print(f"\nraw frames: held-out frames {frames[0].stem}-{frames[-1].stem} of the shared movie ({raw.shape[1]}x{raw.shape[2]}, "
          f"{len(np.unique(truth)) - 1} cells), never seen by bacteria_phase in training")
    print(f"  {'pipeline':34s} " + " ".join(f"{m:>6s}" for m in METRICS) + "  divisions found/false (of GT)   time")
    out = {}
    for label, tr, secs in (("segment (bacteria_phase) + link", pipeline, t_raw), ("link ground-truth masks", on_masks, t_masks)):
        r = scores(tr, gt, tmp, f"held_out_{len(out)}")
        out[label] = r
        print(f"  {label:34s} " + " ".join(f"{r[m]:6.4f}" for m in METRICS)
              + f"  {r['div_tp']:4d}/{r['div_fp']:<4d} (of {r['div_gt']})  {secs:7.2f}s  ({len(tr.spots['id'])} detections)")
    return out


def speed(lt_frames: int) -> None:
    m = simulate_movie(n_frames=200, shape=(2000, 2000), n_cells=2000, radius=5, speed=2.0, division_prob=0.005,
                       min_division_age=5, appear_rate=2.0, disappear_prob=0.002, miss_prob=0.02, render=False, seed=7)
    det = T.detect_points(m.points, "TYX", n_frames=200)
    params = T.TrackingParams(max_distance=10.0, max_gap=2)
    t0 = time.perf_counter()
    T.track(det, params=params)
    t_ours = time.perf_counter() - t0
    sub = m.points[:, 0] < lt_frames
    det_sub = T.detect_points(m.points[sub], "TYX", n_frames=lt_frames)
    t0 = time.perf_counter()
    T.track(det_sub, params=params)
    t_ours_sub = time.perf_counter() - t0
    _, t_lt = laptrack_centroids(det_sub, 10.0)
    print(f"\nthroughput, points: {len(det)} detections in 200 frames: ijtorch {len(det) / t_ours:,.0f} det/s; "
          f"first {lt_frames} frames ({len(det_sub)} det): ijtorch {len(det_sub) / t_ours_sub:,.0f} det/s, laptrack "
          f"{len(det_sub) / t_lt:,.0f} det/s -> ijtorch/laptrack {t_lt / t_ours_sub:.1f}x")


def _timed(fn, *args) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one call: CPU time is what a busy, shared machine distorts least
    (wall time counts the other processes' turns too)."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn(*args)
    return time.process_time() - c0, time.perf_counter() - w0


def speed_masks(repeats: int = 5) -> None:
    """Linking throughput from masks (``track`` on detections: everything after detection), best of
    ``repeats`` runs each, CPU and wall time, ijtorch and laptrack alternating in the same run."""
    movies = [("dense colony, doubling 8", simulate_colony(n_frames=30, n_cells=30, doubling_time=8, seed=1,
                                                          shape=(320, 320)).labels),
              ("dense colony, doubling 6", simulate_colony(n_frames=30, n_cells=30, doubling_time=6, seed=4,
                                                          shape=(400, 400)).labels)]
    if (SHARED / "01_GT" / "TRA").is_dir():
        import tifffile

        movies.insert(0, ("shared movie", np.stack([tifffile.imread(p) for p in
                                                    sorted((SHARED / "01_GT" / "TRA").glob("man_track*.tif"))])))
    for name, labels in movies:
        t0 = time.perf_counter()
        det = T.detect_labels(labels, "TYX", with_outlines=False)
        t_det = time.perf_counter() - t0
        gate = T.track(det).estimated["max_distance"]
        ours, lt = [], []
        for _ in range(repeats):  # alternating, so that both see the same load
            ours.append(_timed(T.track, det))
            lt.append(_timed(laptrack_centroids, det, gate))
        (c_ours, w_ours), (c_lt, w_lt) = (np.min(r, axis=0) for r in (ours, lt))
        n = len(det)
        print(f"throughput, masks ({name}: {n} detections, {labels.shape[0]} frames): detection "
              f"{n / t_det:,.0f} det/s; linking, CPU time: ijtorch overlap+divisions {n / c_ours:,.0f} det/s, "
              f"laptrack (centroids) {n / c_lt:,.0f} det/s -> ijtorch/laptrack {c_lt / c_ours:.1f}x; wall: "
              f"{n / w_ours:,.0f} vs {n / w_lt:,.0f} det/s -> {w_lt / w_ours:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the shared movie and one simulated colony")
    ap.add_argument("--laptrack-frames", type=int, default=20)
    ap.add_argument("--speed-only", action="store_true", help="only the throughput figures")
    a = ap.parse_args()
    warm = simulate_colony(n_frames=4, shape=(64, 64), n_cells=3, seed=0)  # imports (scipy.stats, milp) out of the timings
    T.track_labels(warm.labels, "TYX")
    res = {}
    with tempfile.TemporaryDirectory() as d:
        if not a.speed_only:
            res = accuracy(a.quick, Path(d))
            raw_frames(Path(d))
    sims = [r for n, r in res.items() if n.startswith("colony doubling 8")]
    if sims:
        print("\nsummary (colonies with doubling 8, mean): " + ", ".join(
            f"{k}: TRA {np.mean([r[k]['TRA'] for r in sims]):.4f} BC(1) {np.mean([r[k]['BC(1)'] for r in sims]):.4f}"
            for k in sims[0]) + "   (targets: TRA >= 0.98, BC(1) >= 0.85)")
    speed_masks()
    speed(a.laptrack_frames)


if __name__ == "__main__":
    main()
