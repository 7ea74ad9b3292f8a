"""Tracking: detections + LAP linking, simulated and real (CTC bacteria) movies, and the writers."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from ijtorch.image import Calibration
from ijtorch.io.ctc import read_ctc_tracks, write_ctc
from ijtorch.io.trackmate import SPOT_FEATURES, write_trackmate_csv, write_trackmate_xml
from ijtorch.simulate.movies import simulate_movie
from ijtorch.tasks.linking import EDGE_GAP, TrackingParams, detect_points, track, track_labels

DATA = Path(os.environ.get("IJTORCH_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "tracking_bacteria"


def _edge_set(tr, labels_of_spot):
    s = tr.spots
    return {(int(s["frame"][a]), int(labels_of_spot[a]), int(s["frame"][b]), int(labels_of_spot[b])) for a, b in tr.edges}


@pytest.fixture(scope="module")
def sim():
    return simulate_movie(n_frames=30, shape=(128, 128), n_cells=15, division_prob=0.03, miss_prob=0.03, seed=1)


@pytest.fixture(scope="module")
def sim_tracks(sim):
    # centroid (Jaqaman) linking: the disks of this simulator overlap and occlude each other, which
    # mask overlaps do not describe; overlap linking is tested on colonies in test_dense_tracking.py
    return track_labels(sim.labels, "TYX", intensity=sim.image, params={"max_distance": 8, "linking": "distance"})


@pytest.fixture(scope="module")
def bacteria_tracks(bacteria):
    return track_labels(bacteria[0], "TYX", params={"max_distance": 60})


def test_simulated_movie_recovers_lineage(sim, sim_tracks):
    truth = sim.true_edges()
    found = _edge_set(sim_tracks, sim_tracks.spots["label"])
    tp = len(found & truth)
    # Stated slack: sibling daughters 5 px apart moving 1.5 px/frame get swapped now and then.
    assert tp / len(found) > 0.95 and tp / len(truth) > 0.95, (tp, len(found), len(truth))
    mothers = {}
    for f0, l0, f1, l1 in truth:
        mothers.setdefault((f0, l0), set()).add((f1, l1))
    divisions = {m for m, d in mothers.items() if len(d) == 2}
    assert len(divisions) >= 1
    found_div = {m for m in divisions if all((*m, *d) in found for d in mothers[m])}
    assert len(found_div) >= 0.75 * len(divisions), (len(found_div), len(divisions))  # measured 11 of 14
    gaps = {e for e in truth if e[2] - e[0] > 1}
    assert len(gaps) >= 1
    assert len(gaps & found) >= 0.8 * len(gaps), (len(gaps & found), len(gaps))
    assert np.count_nonzero(sim_tracks.edge_kind == EDGE_GAP) >= 1


def test_tracked_labels_follow_ctc_rules(sim_tracks):
    lab = sim_tracks.tracked_labels
    assert lab.dtype == np.uint16 and lab.shape == (30, 128, 128)
    for L, B, E, P in sim_tracks.ctc:
        frames = np.flatnonzero([(lab[t] == L).any() for t in range(lab.shape[0])])
        assert frames.tolist() == list(range(B, E + 1))
        if P:
            assert sim_tracks.ctc[P - 1, 2] < B


def test_points_and_labels_agree(sim):
    pts = detect_points(sim.points, "TYX", n_frames=30)
    tr = track(pts, params={"max_distance": 8})
    assert len(tr.spots["id"]) == len(sim.points)
    truth = sim.true_edges()
    found = _edge_set(tr, sim.point_labels)
    assert len(found & truth) / len(truth) > 0.9


def test_bacteria_recovers_15_divisions(bacteria, bacteria_tracks):
    lab, gt = bacteria
    s = bacteria_tracks.spots
    assert bacteria_tracks.n_divisions == 15
    key = {(int(f), int(lb)): i for i, (f, lb) in enumerate(zip(s["frame"], s["label"]))}
    found = {tuple(e) for e in bacteria_tracks.edges.tolist()}
    ok = 0
    for P in np.unique(gt[gt[:, 3] > 0, 3]):
        kids = gt[gt[:, 3] == P]
        end = int(gt[gt[:, 0] == P, 2][0])
        if len(kids) == 2 and all((key[(end, int(P))], key[(int(k[1]), int(k[0]))]) in found for k in kids):
            ok += 1
    # Measured with max_distance=60: 15 divisions found, 12 of the 15 GT divisions exactly (mother + both daughters).
    assert ok >= 12, ok


def test_ctc_output_valid_and_tra(bacteria, bacteria_tracks, tmp_path):
    ctc_metrics = pytest.importorskip("ctc_metrics", reason="py-ctcmetrics not installed (pip install py-ctcmetrics)")
    res = write_ctc(tmp_path / "01_RES", bacteria_tracks)
    assert sorted(p.name for p in res.glob("mask*.tif"))[0] == "mask000.tif"
    assert len(list(res.glob("mask*.tif"))) == 25
    line = (res / "res_track.txt").read_text().splitlines()[0]
    assert len(line.split(" ")) == 4
    assert ctc_metrics.validate_sequence(str(res), threads=1)["Valid"] == 1
    gt_dir = tmp_path / "01_GT"
    shutil.copytree(DATA / "01_GT", gt_dir)
    r = ctc_metrics.evaluate_sequence(str(res), str(gt_dir), metrics=["DET", "TRA"], threads=1)
    assert r["DET"] == 1.0 and r["TRA"] > 0.99, r
    # GT written back through our writer: valid and TRA exactly 1.
    lab, gt = bacteria
    same = write_ctc(tmp_path / "02_RES", masks=lab, lineage=gt)
    assert ctc_metrics.validate_sequence(str(same), threads=1)["Valid"] == 1
    r = ctc_metrics.evaluate_sequence(str(same), str(gt_dir), metrics=["DET", "TRA"], threads=1)
    assert r["TRA"] == 1.0


def test_ctc_writer_rejects_broken_lineage(tmp_path):
    m = np.zeros((2, 4, 4), np.uint16)
    m[0, 1, 1] = 1
    m[1, 1, 1] = 2
    with pytest.raises(ValueError, match="parent 1"):
        write_ctc(tmp_path / "r", masks=m, lineage=[[1, 0, 0, 0], [2, 0, 1, 1]])
    with pytest.raises(ValueError, match="missing from the mask"):
        write_ctc(tmp_path / "r", masks=m, lineage=[[1, 0, 1, 0], [2, 1, 1, 0]])


def test_trackmate_xml_structure(bacteria_tracks, tmp_path):
    tr = bacteria_tracks
    path = write_trackmate_xml(tmp_path / "t.xml", tr, image_path=tmp_path / "movie.tif")
    root = ET.parse(path).getroot()
    assert root.tag == "TrackMate" and root.get("version") == "7.13.2"
    model = root.find("Model")
    for child in ("FeatureDeclarations", "AllSpots", "AllTracks", "FilteredTracks"):
        assert model.find(child) is not None, child
    declared = {f.get("feature"): f for f in model.find("FeatureDeclarations/SpotFeatures")}
    for key in ("QUALITY", "POSITION_X", "POSITION_Y", "POSITION_Z", "POSITION_T", "FRAME", "RADIUS", "VISIBILITY"):
        assert key in declared and declared[key].get("dimension") and declared[key].get("isint") in ("true", "false")
    edge_decl = {f.get("feature") for f in model.find("FeatureDeclarations/EdgeFeatures")}
    assert {"SPOT_SOURCE_ID", "SPOT_TARGET_ID", "LINK_COST"} <= edge_decl
    assert {"TRACK_ID", "TRACK_INDEX"} <= {f.get("feature") for f in model.find("FeatureDeclarations/TrackFeatures")}
    spots = model.findall("AllSpots/SpotsInFrame/Spot")
    assert len(spots) == len(tr.spots["id"])
    frames = [f.get("frame") for f in model.findall("AllSpots/SpotsInFrame")]
    assert all(f.isdigit() for f in frames) and len(set(frames)) == len(frames)
    spot_frame = {}
    for fr in model.findall("AllSpots/SpotsInFrame"):
        for sp in fr:
            assert sp.get("ID").isdigit() and sp.get("FRAME") == fr.get("frame")
            assert set(k for k, *_ in SPOT_FEATURES) <= set(sp.attrib)
            n = int(sp.get("ROI_N_POINTS"))
            xy = np.array(sp.text.split(), float).reshape(n, 2)
            assert abs(xy.mean(axis=0)).max() < 10  # relative to the centre
            spot_frame[int(sp.get("ID"))] = int(fr.get("frame"))
    tracks = model.findall("AllTracks/Track")
    edges = model.findall("AllTracks/Track/Edge")
    assert len(edges) == len(tr.edges)
    assert len(tracks) == len(tr.track_ids)
    parent = {}

    def find(a):
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for t in tracks:
        assert t.get("TRACK_ID").isdigit()
        for e in t:
            s_id, t_id = e.get("SPOT_SOURCE_ID"), e.get("SPOT_TARGET_ID")
            assert s_id.isdigit() and t_id.isdigit()
            assert spot_frame[int(s_id)] < spot_frame[int(t_id)]
            parent[find(int(s_id))] = find(int(t_id))
    # one Track per connected component: no component spans two Track elements
    comp_of_track = [{find(int(e.get("SPOT_SOURCE_ID"))) for e in t} for t in tracks]
    assert all(len(c) == 1 for c in comp_of_track)
    assert len({next(iter(c)) for c in comp_of_track}) == len(tracks)
    splits = sum(int(t.get("NUMBER_SPLITS")) for t in tracks)
    assert splits == 15
    listed = [x.get("TRACK_ID") for x in model.findall("FilteredTracks/TrackID")]
    assert sorted(listed) == sorted(t.get("TRACK_ID") for t in tracks)
    st = root.find("Settings")
    img = st.find("ImageData")
    assert img.get("filename") == "movie.tif" and img.get("width") == "420" and img.get("nframes") == "25"
    for child in ("BasicSettings", "InitialSpotFilter", "SpotFilterCollection", "TrackFilterCollection"):
        assert st.find(child) is not None, child
    assert st.find("DetectorSettings").get("DETECTOR_NAME") == "MANUAL_DETECTOR"
    assert st.find("TrackerSettings").get("TRACKER_NAME") == "MANUAL_TRACKER"


def test_trackmate_csv_headers(sim_tracks, tmp_path):
    out = write_trackmate_csv(tmp_path, sim_tracks, prefix="movie")
    rows = out["spots"].read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("LABEL,ID,TRACK_ID,QUALITY,POSITION_X")
    assert rows[1].startswith("Label,Spot ID,Track ID,Quality,X")
    assert rows[3].startswith(",,,(quality),(pixel)")
    assert len(rows) - 4 == len(sim_tracks.spots["id"])  # every spot, those in no track too
    edges = out["edges"].read_text(encoding="utf-8").splitlines()
    assert "\u2192" in edges[4] and len(edges) - 4 == len(sim_tracks.edges)
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(out["tracks"], skiprows=[1, 2, 3])
    assert len(df) == len(sim_tracks.track_ids)


def test_geff_roundtrip(sim_tracks, tmp_path):
    geff = pytest.importorskip("geff", reason="geff not installed (pip install geff)")
    from ijtorch.io.geff import write_geff
    p = write_geff(tmp_path / "t.geff", sim_tracks)
    g, meta = geff.read(str(p))
    assert g.number_of_nodes() == len(sim_tracks.spots["id"]) and g.number_of_edges() == len(sim_tracks.edges)
    assert [a.name for a in meta.axes] == ["t", "y", "x"]


def test_3d_anisotropic_uses_physical_distances():
    # z step of 2 pixels at voxel depth 3 = 6 units: gated out at max_distance 5, linked at 7.
    pts = np.array([[0, 5, 10, 10], [1, 7, 10, 10]], float)
    cal = Calibration(voxel_depth=3.0)
    det = detect_points(pts, "TZYX", calibration=cal)
    assert det.spots["z"].tolist() == [15.0, 21.0]
    assert len(track(det, params={"max_distance": 5}).edges) == 0
    assert track(det, params={"max_distance": 7}).edges.tolist() == [[0, 1]]


def test_3d_labels():
    m = simulate_movie(n_frames=6, shape=(16, 32, 32), n_cells=4, radius=3, speed=0.5, seed=3)
    tr = track_labels(m.labels, "TZYX", params={"max_distance": 4})
    assert tr.tracked_labels.shape == m.labels.shape and tr.polygons is None
    assert len(_edge_set(tr, tr.spots["label"]) & m.true_edges()) >= 0.9 * len(m.true_edges())


def test_merging_off_by_default_and_optional():
    # two cells fuse into one at frame 2
    pts = np.array([[0, 10, 10], [0, 10, 16], [1, 10, 11], [1, 10, 15], [2, 10, 13], [3, 10, 13]], float)
    det = detect_points(pts, "TYX")
    assert TrackingParams().allow_merging is False
    off = track(det, params={"max_distance": 4})
    on = track(det, params={"max_distance": 4, "allow_merging": True})
    assert np.bincount(on.edges[:, 1], minlength=6).max() == 2
    assert np.bincount(off.edges[:, 1], minlength=6).max() == 1


def test_input_validation():
    with pytest.raises(ValueError, match="max_dist"):
        TrackingParams(max_dist=3)
    with pytest.raises(ValueError, match="max_distance"):
        TrackingParams(max_distance=-1)
    with pytest.raises(ValueError, match="axes='TCYX'"):
        track_labels(np.zeros((2, 1, 4, 4), np.uint16), "TCYX")
    with pytest.raises(ValueError, match="whole, non-negative"):
        detect_points(np.array([[0.5, 1, 1]]), "TYX")
    with pytest.raises(ValueError, match="shape="):
        simulate_movie(shape=(5,))
    with pytest.raises(ValueError, match="miss_prob=2"):
        simulate_movie(miss_prob=2)
    with pytest.raises(TypeError, match="Detections"):
        track(np.zeros((3, 3)))


def test_gap_closing_with_no_candidates_in_range():
    """Segments that end and begin far apart: the second LAP has no candidates at all."""
    from ijtorch.tasks.linking import TrackingParams, detect_points, track

    pts = np.array([[0, 10.0, 10.0], [1, 11.0, 10.0], [3, 200.0, 200.0], [4, 201.0, 200.0]])
    tracks = track(detect_points(pts, "TYX"), params=TrackingParams(max_distance=5, max_gap=2))
    assert len(tracks.edges) == 2 and tracks.n_divisions == 0


def _disk_movie(centres, radius=3, shape=(40, 40)):
    """One disk per (frame, label, y, x) row; frames without a row for a label are gaps."""
    lab = np.zeros((max(int(c[0]) for c in centres) + 1, *shape), np.uint16)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for t, L, y, x in centres:
        lab[t][(yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2] = L
    return lab


def test_fill_gaps_paints_interpolated_mask_and_joins_the_track():
    # One cell moving right by 4 px per frame, missed in frames 2 and 3; a still cell elsewhere.
    rows = [(t, 1, 10, 6 + 4 * t) for t in (0, 1, 4, 5)] + [(t, 2, 30, 30) for t in range(6)]
    lab = _disk_movie(rows)
    plain = track_labels(lab, "TYX", params={"max_distance": 10, "max_gap": 2, "gap_max_distance": 15})
    filled = track_labels(lab, "TYX", params={"max_distance": 10, "max_gap": 2, "gap_max_distance": 15, "fill_gaps": True})
    assert (plain.edge_kind == EDGE_GAP).sum() == 1 and (filled.edge_kind == EDGE_GAP).sum() == 0
    s = filled.spots
    assert s["interpolated"].tolist().count(True) == 2
    new = np.flatnonzero(s["interpolated"])
    assert s["frame"][new].tolist() == [2, 3]
    np.testing.assert_allclose(s["x"][new], [14.0, 18.0])
    np.testing.assert_allclose(s["y"][new], [10.0, 10.0])
    # The filled masks are the source disk shifted to the interpolated centre (no clipping here).
    expected = _disk_movie([(2, 1, 10, 14), (3, 1, 10, 18)])
    tl = filled.tracked_labels
    for t in (2, 3):
        values = np.unique(tl[t][expected[t] > 0])
        assert values.size == 1 and values[0] > 0
        assert np.array_equal(tl[t] == values[0], expected[t] > 0)
    # Observed objects keep every pixel, and the moving cell is one CTC track over all six frames.
    assert np.array_equal(tl > 0, (lab > 0) | (np.pad(expected, ((0, 2), (0, 0), (0, 0))) > 0))
    moving = int(tl[0][10, 6])
    assert [int(tl[t][10, 6 + 4 * t]) for t in range(6)] == [moving] * 6
    assert [moving, 0, 5, 0] in filled.ctc.tolist()
    assert filled.polygons is not None and len(filled.polygons) == len(s["id"])


def test_fill_gaps_keeps_the_gap_when_the_frame_is_occupied():
    # Small cell 1 lies on a large still cell 2 in frames 0 and 2 and is missed in frame 1, where its
    # interpolated position (10, 12) is entirely inside cell 2.
    lab = _disk_movie([(t, 2, 10, 12) for t in range(3)], radius=6)
    yy, xx = np.mgrid[:40, :40]
    lab[0][(yy - 10) ** 2 + (xx - 10) ** 2 <= 4] = 1
    lab[2][(yy - 10) ** 2 + (xx - 14) ** 2 <= 4] = 1
    filled = track_labels(lab, "TYX", params={"max_distance": 6, "max_gap": 1, "fill_gaps": True,
                                              "allow_splitting": False})
    assert not filled.spots["interpolated"].any()
    assert (filled.edge_kind == EDGE_GAP).sum() == 1


def test_fill_gaps_on_points_interpolates_positions():
    pts = np.array([[0, 5, 5], [1, 6, 5], [4, 12, 11], [5, 13, 11]], float)
    tr = track(detect_points(pts, "TYX"), params={"max_distance": 3, "max_gap": 3, "gap_max_distance": 10,
                                                  "fill_gaps": True})
    s = tr.spots
    new = np.flatnonzero(s["interpolated"])
    assert s["frame"][new].tolist() == [2, 3]
    np.testing.assert_allclose(s["y"][new], [8.0, 10.0])
    np.testing.assert_allclose(s["x"][new], [7.0, 9.0])
    assert len(tr.ctc) == 1 and len(tr.edges) == 5


def test_fill_gaps_raises_ctc_tra_on_a_simulation_with_missed_detections(sim, tmp_path):
    metrics = pytest.importorskip("ctc_metrics")
    from ijtorch.io.ctc import write_ctc_ground_truth

    write_ctc_ground_truth(tmp_path / "GT", sim.truth, sim.lineage)
    scores = {}
    for fill in (False, True):
        tr = track_labels(sim.labels, "TYX", params={"max_distance": 8, "fill_gaps": fill})
        write_ctc(tmp_path / f"RES{fill}", tr)
        scores[fill] = metrics.evaluate_sequence(str(tmp_path / f"RES{fill}"), str(tmp_path / "GT"),
                                                 metrics=["DET", "TRA"], threads=1)
    assert scores[True]["DET"] > scores[False]["DET"]
    assert scores[True]["TRA"] > scores[False]["TRA"]


def test_filled_tracks_go_through_every_writer(sim, tmp_path):
    from ijtorch.tasks.track import write_track_outputs

    tr = track_labels(sim.labels, "TYX", params={"max_distance": 8, "fill_gaps": True})
    assert tr.spots["interpolated"].sum() > 0
    paths = write_track_outputs(tmp_path, "filled", tr)
    root = ET.parse(paths["trackmate_xml"]).getroot()
    assert int(root.find("Model/AllSpots").get("nspots")) == len(tr.spots["id"])
    # Interpolated spots keep their own outline and sit where the tracked label stack painted them.
    new = np.flatnonzero(tr.spots["interpolated"])
    for i in new[:5]:
        t, L = int(tr.spots["frame"][i]), int(tr.spots["ctc_label"][i])
        yy, xx = np.nonzero(tr.tracked_labels[t] == L)
        assert abs(yy.mean() - tr.spots["y"][i]) < 1.5 and abs(xx.mean() - tr.spots["x"][i]) < 1.5
        poly = tr.polygons[i]
        assert poly[:, 0].min() <= xx.min() and poly[:, 0].max() >= xx.max() + 1


def test_ctc_ground_truth_writer_trims_tracks_to_their_frames(tmp_path):
    import tifffile

    from ijtorch.io.ctc import write_ctc_ground_truth

    masks = np.zeros((4, 8, 8), np.uint16)
    masks[0:2, 1, 1] = 1          # track 1: frames 0-1
    masks[2:4, 5, 5] = 2          # track 2: frames 2-3, child of 1
    masks[3, 6, 6] = 3            # track 3 listed from frame 1 but only visible in frame 3
    lineage = np.array([[1, 0, 1, 0], [2, 2, 3, 1], [3, 1, 3, 0], [4, 0, 3, 1]])  # 4 never visible
    gt = write_ctc_ground_truth(tmp_path / "01_GT", masks, lineage)
    assert read_ctc_tracks(gt / "TRA" / "man_track.txt").tolist() == [[1, 0, 1, 0], [2, 2, 3, 1], [3, 3, 3, 0]]
    for t in range(4):
        assert np.array_equal(tifffile.imread(gt / "TRA" / f"man_track{t:03d}.tif"), masks[t])
    with pytest.raises(ValueError, match="parent folder does not exist"):
        write_ctc_ground_truth(tmp_path / "no" / "01_GT", masks, lineage)
