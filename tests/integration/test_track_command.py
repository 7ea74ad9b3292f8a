"""``ijtorch Track`` in the embedded ImageJ and ``ijtorch track`` on the CLI, on the real
bacteria movie (CTC ground-truth masks with 15 divisions)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile

from ijtorch import bridge

pytestmark = pytest.mark.jvm


@pytest.fixture(scope="module")
def bacteria_labels(shared_data):
    files = sorted((shared_data / "tracking_bacteria" / "01_GT" / "TRA").glob("man_track*.tif"))
    return np.stack([tifffile.imread(f) for f in files])


def test_track_command_matches_python_and_writes_trackmate_xml(ij, bacteria_labels, tmp_path):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy, numpy_to_imageplus
    from ijtorch.tasks.track import track_movie
    from ijtorch.tasks.linking import TrackingParams

    expected = track_movie(bacteria_labels, "TYX", is_labels=True,
                           params=TrackingParams(max_distance=60, max_gap=2, allow_splitting=True))
    assert expected.n_divisions == 15
    numpy_to_imageplus(bacteria_labels, "TYX", title="colony").show()
    bridge.run_macro(f'selectImage("colony"); run("ijtorch Track", "labels max_distance=60 max_gap=2 divisions output=[{tmp_path}]");')
    tracked = imageplus_to_numpy(JClass("ij.WindowManager").getImage("colony-tracks"))
    assert tracked.axes == "TYX"
    np.testing.assert_array_equal(tracked.data, expected.tracked_labels)
    rm = JClass("ij.plugin.frame.RoiManager").getInstance()
    assert rm.getCount() == len(expected.spots["id"])
    first = rm.getRoi(0)
    assert str(first.getName()).startswith("track_") and first.getTPosition() >= 1
    root = ET.parse(tmp_path / "colony.xml").getroot()
    xml_spots = root.findall("./Model/AllSpots/SpotsInFrame/Spot")
    xml_tracks = root.findall("./Model/AllTracks/Track")
    assert len(xml_spots) == len(expected.spots["id"])
    assert len(root.findall("./Model/AllTracks/Track/Edge")) == len(expected.edges)
    # counts as TrackMate counts them (tracks = connected components incl. divisions), in the table,
    # the Log and the session value; the CTC segments are a separate "Tracklet statistics" table
    assert len(xml_tracks) < len(expected.ctc)
    table = JClass("ij.WindowManager").getWindow("Track statistics").getResultsTable()
    assert table.size() == len(xml_tracks)
    assert sorted(int(v) for v in table.getColumn(table.getColumnIndex("track"))) == \
        sorted(int(t.get("TRACK_ID")) for t in xml_tracks)
    assert int(sum(table.getColumn(table.getColumnIndex("n_divisions")))) == 15
    tracklets = JClass("ij.WindowManager").getWindow("Tracklet statistics").getResultsTable()
    assert tracklets.size() == len(expected.ctc)
    assert int(sum(tracklets.getColumn(tracklets.getColumnIndex("divides")))) == 15
    log = str(JClass("ij.IJ").getLog())
    assert f"{len(xml_tracks)} tracks ({len(expected.ctc)} CTC tracklets), 15 divisions, {len(xml_spots)} spots" in log
    # <stem>_spots.csv lists every spot of the XML (4 header rows), spots in no track too
    rows = (tmp_path / "colony_spots.csv").read_text().splitlines()[4:]
    assert sorted(int(r.split(",")[1]) for r in rows) == sorted(int(sp.get("ID")) for sp in xml_spots)
    import csv

    with open(tmp_path / "colony_track_statistics.csv") as f:
        assert len(list(csv.DictReader(f))) == len(xml_tracks)


def test_track_command_fill_gaps_paints_missed_cells(ij, bacteria_labels, tmp_path):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy, numpy_to_imageplus
    from ijtorch.tasks.track import track_movie
    from ijtorch.tasks.linking import TrackingParams

    movie = bacteria_labels[:8].copy()
    missed = int(movie[4][movie[4] > 0][0])
    movie[4][movie[4] == missed] = 0  # one cell missed in frame 4: a gap to fill
    expected = track_movie(movie, "TYX", is_labels=True,
                           params=TrackingParams(max_distance=60, max_gap=2, allow_splitting=True, fill_gaps=True))
    assert expected.spots["interpolated"].sum() >= 1
    numpy_to_imageplus(movie, "TYX", title="gappy").show()
    bridge.run_macro('selectImage("gappy"); run("ijtorch Track", "labels max_distance=60 max_gap=2 divisions fill_gaps");')
    tracked = imageplus_to_numpy(JClass("ij.WindowManager").getImage("gappy-tracks"))
    np.testing.assert_array_equal(tracked.data, expected.tracked_labels)
    # The missed cell is back in frame 4, painted where it was (it moves little between frames).
    truth = bacteria_labels[4] == missed
    assert np.count_nonzero(tracked.data[4][truth]) > 0.5 * np.count_nonzero(truth)
    rm = JClass("ij.plugin.frame.RoiManager").getInstance()
    assert rm.getCount() == len(expected.spots["id"])


def test_track_cli_on_ctc_tra_folder(shared_data, tmp_path):
    tra = shared_data / "tracking_bacteria" / "01_GT" / "TRA"
    out = subprocess.run([sys.executable, "-m", "ijtorch.cli", "track", str(tra), "--labels", "--max-distance", "60",
                          "--output", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "15 divisions" in out.stdout
    assert (tmp_path / "TRA.xml").is_file() and (tmp_path / "TRA_RES" / "res_track.txt").is_file()
    ctc = pytest.importorskip("ctc_metrics", reason="py-ctcmetrics is a test extra")
    from ctc_metrics import evaluate_sequence, validate_sequence

    # threads=1: a process holding a JVM must not fork worker processes
    assert validate_sequence(str(tmp_path / "TRA_RES"), threads=1)["Valid"] == 1
    del ctc, evaluate_sequence
