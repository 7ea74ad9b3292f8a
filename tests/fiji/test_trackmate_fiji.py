"""Our TrackMate XML read back by the real TrackMate (``TmXmlReader``) of a Fiji given by IJTORCH_FIJI.

Runs in its own pytest process (it starts a JVM): ``IJTORCH_FIJI=/path/to/Fiji.app pytest tests/fiji``.
Harness as in docs/formats.md §0: all jars under jars/ and plugins/ (minus jars/win64), headless,
``--add-opens java.base/java.lang``, ``LegacyInjector.preinit()`` before any ``ij.*`` class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ijtorch.io.trackmate import write_trackmate_xml
from ijtorch.tasks.simulate import simulate_movie
from ijtorch.tasks.tracking import track_labels

FIJI = os.environ.get("IJTORCH_FIJI")
pytestmark = [pytest.mark.fiji, pytest.mark.jvm,
              pytest.mark.skipif(not FIJI, reason="set IJTORCH_FIJI to a Fiji.app folder to run TrackMate's reader")]


@pytest.fixture(scope="session")
def jvm():
    jpype = pytest.importorskip("jpype")
    root = Path(FIJI)
    jars = [str(p) for sub in ("jars", "plugins") for p in (root / sub).rglob("*.jar")
            if "win64" not in p.relative_to(root).parts]
    if not jars:
        pytest.skip(f"no jars under {root}/jars or {root}/plugins")
    if not jpype.isJVMStarted():
        jpype.startJVM("-Djava.awt.headless=true", "--add-opens=java.base/java.lang=ALL-UNNAMED", classpath=jars)
        jpype.JClass("net.imagej.patcher.LegacyInjector").preinit()
    try:
        jpype.JClass("fiji.plugin.trackmate.io.TmXmlReader")
    except Exception:
        pytest.skip("this process's JVM was started without the Fiji jars; run tests/fiji in its own pytest process")
    return jpype


def test_tmxmlreader_reads_our_file(jvm, tmp_path):
    m = simulate_movie(n_frames=20, shape=(96, 96), n_cells=10, division_prob=0.05, miss_prob=0.03, seed=4)
    tr = track_labels(m.labels, "TYX", intensity=m.image, params={"max_distance": 8})
    path = write_trackmate_xml(tmp_path / "tracks.xml", tr)
    File = jvm.JClass("java.io.File")
    reader = jvm.JClass("fiji.plugin.trackmate.io.TmXmlReader")(File(str(path)))
    model = reader.getModel()
    assert model is not None
    assert model.getSpots().getNSpots(False) == len(tr.spots["id"])
    assert model.getSpots().getNSpots(True) == len(tr.spots["id"])
    assert model.getTrackModel().nTracks(False) == len(tr.track_ids)
    assert model.getTrackModel().nTracks(True) == len(tr.track_ids)
    assert model.getTrackModel().edgeSet().size() == len(tr.edges)
    assert bool(reader.isReadingOk()), str(reader.getErrorMessage())
    assert str(reader.getErrorMessage()) == ""
    # divisions as TrackMate's own analyzers count them
    Settings = jvm.JClass("fiji.plugin.trackmate.Settings")
    s = Settings()
    s.addAllAnalyzers()
    tm = jvm.JClass("fiji.plugin.trackmate.TrackMate")(model, s)
    tm.computeEdgeFeatures(False)
    tm.computeTrackFeatures(False)
    fm = model.getFeatureModel()
    splits = sum(int(fm.getTrackFeature(t, "NUMBER_SPLITS")) for t in model.getTrackModel().trackIDs(False))
    assert splits == tr.n_divisions
    assert np.isfinite(float(fm.getTrackFeature(next(iter(model.getTrackModel().trackIDs(False))), "TRACK_DURATION")))
