"""Our TrackMate XML read back by the real TrackMate (``TmXmlReader``) of a Fiji given by IJTORCH_FIJI.

The JVM runs in a child process (``run_in_fiji``), never in the pytest process: a JVM with Fiji's
threads torn down at the interpreter's exit is where the intermittent segfault at the end of
``pytest tests/fiji`` came from (issue 16, defect 5). Harness as in docs/formats.md §0: all jars
under jars/ and plugins/ (minus jars/win64), headless, ``LegacyInjector.preinit()`` before any
``ij.*`` class.
"""

from __future__ import annotations

import pytest

from _fiji_helpers import run_in_fiji

pytestmark = [pytest.mark.fiji, pytest.mark.slow]


def test_tmxmlreader_reads_our_file(fiji_path, tmp_path):
    out = run_in_fiji(f"""
        import pathlib, jpype
        from ijtorch.bridge._runtime import ADD_OPENS
        from ijtorch.io.trackmate import write_trackmate_xml
        from ijtorch.simulate.movies import simulate_movie
        from ijtorch.tasks.linking import track_labels
        root = pathlib.Path("{fiji_path}")
        jars = [str(p) for s in ("jars", "plugins") for p in (root / s).rglob("*.jar")
                if "win64" not in p.relative_to(root).parts]
        jpype.startJVM("-Djava.awt.headless=true", *ADD_OPENS, *JAVA_OPTIONS, classpath=jars)
        jpype.JClass("net.imagej.patcher.LegacyInjector").preinit()
        m = simulate_movie(n_frames=20, shape=(96, 96), n_cells=10, division_prob=0.05, miss_prob=0.03, seed=4)
        tr = track_labels(m.labels, "TYX", intensity=m.image, params={{"max_distance": 8}})
        path = write_trackmate_xml("{tmp_path}/tracks.xml", tr)
        reader = jpype.JClass("fiji.plugin.trackmate.io.TmXmlReader")(jpype.JClass("java.io.File")(str(path)))
        model = reader.getModel()
        Settings = jpype.JClass("fiji.plugin.trackmate.Settings")
        s = Settings()
        s.addAllAnalyzers()
        tm = jpype.JClass("fiji.plugin.trackmate.TrackMate")(model, s)
        tm.computeEdgeFeatures(False)
        tm.computeTrackFeatures(False)
        fm = model.getFeatureModel()
        ids = list(model.getTrackModel().trackIDs(False))
        report(spots=[int(model.getSpots().getNSpots(False)), int(model.getSpots().getNSpots(True))],
               tracks=[int(model.getTrackModel().nTracks(False)), int(model.getTrackModel().nTracks(True))],
               edges=int(model.getTrackModel().edgeSet().size()), ok=bool(reader.isReadingOk()),
               error=str(reader.getErrorMessage()),
               splits=sum(int(fm.getTrackFeature(t, "NUMBER_SPLITS")) for t in ids),
               duration=float(fm.getTrackFeature(ids[0], "TRACK_DURATION")),
               ours=dict(spots=len(tr.spots["id"]), tracks=len(tr.track_ids), edges=len(tr.edges),
                         divisions=tr.n_divisions))
    """, tmp_path)
    ours = out["ours"]
    assert out["ok"] and out["error"] == ""
    assert out["spots"] == [ours["spots"]] * 2
    assert out["tracks"] == [ours["tracks"]] * 2
    assert out["edges"] == ours["edges"]
    assert out["splits"] == ours["divisions"]  # divisions as TrackMate's own analyzers count them
    assert out["duration"] == out["duration"]  # finite (not NaN)
