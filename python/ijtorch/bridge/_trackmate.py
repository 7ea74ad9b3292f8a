"""Tracks straight into TrackMate, in memory, when TrackMate is on the class path (a real Fiji).

:func:`build_trackmate_model` makes a ``fiji.plugin.trackmate.Model`` with the same spots (physical
positions, frame, radius, quality, POSITION_T), edges (link cost) and therefore tracks as the
TrackMate XML written by :func:`ijtorch.io.trackmate.write_trackmate_xml`.
:func:`open_in_trackmate` shows it on the image with TrackMate's own displayer and wizard (at the
"configure views" step, as Plugins > Tracking > Load a TrackMate file does); without TrackMate,
or headless, it returns ``None`` and the caller keeps the XML route.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["trackmate_available", "build_trackmate_model", "open_in_trackmate"]

log = logging.getLogger(__name__)


def trackmate_available() -> bool:
    """True when ``fiji.plugin.trackmate.Model`` can be loaded in the running JVM."""
    from jpype import JClass

    try:
        JClass("fiji.plugin.trackmate.Model")
        return True
    except Exception:
        return False


def build_trackmate_model(tracks) -> Any:
    """A TrackMate ``Model`` holding ``tracks`` (an ijtorch ``Tracks``); spot IDs are TrackMate's own.

    Raises
    ------
    RuntimeError
        TrackMate is not on the class path.
    """
    from jpype import JClass

    from ..io.trackmate import _check_tracks, _tables

    if not trackmate_available():
        raise RuntimeError("TrackMate is not on the class path (it ships with Fiji); write TrackMate XML instead")
    _check_tracks(tracks)
    Model, Spot = JClass("fiji.plugin.trackmate.Model"), JClass("fiji.plugin.trackmate.Spot")
    Integer = JClass("java.lang.Integer")
    Double = JClass("java.lang.Double")
    cal = tracks.calibration
    tab = _tables(tracks)
    sp = tab["spot"]
    ids = tracks.spots["id"]
    model = Model()
    model.setPhysicalUnits(cal.unit, cal.time_unit if cal.frame_interval > 0 else "frame")
    spots = {}
    model.beginUpdate()
    try:
        for k in range(ids.size):
            spot = Spot(float(sp["POSITION_X"][k]), float(sp["POSITION_Y"][k]), float(sp["POSITION_Z"][k]),
                        float(sp["RADIUS"][k]), float(sp["QUALITY"][k]))
            spot.putFeature("POSITION_T", Double(float(sp["POSITION_T"][k])))
            model.addSpotTo(spot, Integer(int(sp["FRAME"][k])))
            spots[int(ids[k])] = spot
        edge = tab["edge"]
        for src, tgt, cost in zip(edge["SPOT_SOURCE_ID"], edge["SPOT_TARGET_ID"], edge["LINK_COST"]):
            model.addEdge(spots[int(src)], spots[int(tgt)], float(cost))
    finally:
        model.endUpdate()
    model.getSpots().setVisible(True)
    return model


def open_in_trackmate(tracks, imp) -> Any:
    """Show ``tracks`` in TrackMate on ``imp``; returns the TrackMate object, or None when TrackMate
    is missing or ImageJ runs headless (the XML written by the command is then the way in)."""
    from jpype import JClass

    if not trackmate_available():
        return None
    if bool(JClass("java.awt.GraphicsEnvironment").isHeadless()):
        return None
    model = build_trackmate_model(tracks)
    settings = JClass("fiji.plugin.trackmate.Settings")(imp)
    settings.addAllAnalyzers()
    trackmate = JClass("fiji.plugin.trackmate.TrackMate")(model, settings)
    trackmate.computeSpotFeatures(False)
    trackmate.computeEdgeFeatures(False)
    trackmate.computeTrackFeatures(False)
    selection = JClass("fiji.plugin.trackmate.SelectionModel")(model)
    display = JClass("fiji.plugin.trackmate.gui.displaysettings.DisplaySettingsIO").readUserDefault()
    displayer = JClass("fiji.plugin.trackmate.visualization.hyperstack.HyperStackDisplayer")(model, selection, imp, display)
    displayer.render()
    displayer.refresh()
    sequence = JClass("fiji.plugin.trackmate.gui.wizard.TrackMateWizardSequence")(trackmate, selection, display)
    sequence.setCurrent("ConfigureViews")
    frame = sequence.run(f"TrackMate on {imp.getShortTitle()}")
    frame.setVisible(True)
    log.info("tracks opened in TrackMate: %d spots, %d tracks", model.getSpots().getNSpots(False),
             model.getTrackModel().nTracks(False))
    return trackmate
