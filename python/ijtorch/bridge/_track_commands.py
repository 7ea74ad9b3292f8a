"""``ijtorch Track``: segment each frame (or take a label stack), link, and hand the tracks to
ImageJ (a label stack coloured by track, ROIs named by track and frame, a per-track table) and to
files (TrackMate XML and CSVs, CTC, GEFF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import IjtorchError
from ._commands import CommandContext, command


class TrackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: bool = Field(False, description="the image already holds label masks (skip segmentation)")
    model: str = Field("nuclei", description="segmentation model used when the image is not a label stack")
    max_distance: float = Field(15.0, gt=0, description="largest frame-to-frame displacement (calibrated units)")
    max_gap: int = Field(2, ge=0, description="largest number of missed frames bridged (0 = no gap closing)")
    divisions: bool = Field(False, description="detect divisions (one parent, two daughters)")
    output: str = Field("", description="folder for the TrackMate XML and other files; empty = next to the image (or none for unsaved images)")


@command("ijtorch Track", params=TrackParams)
def track_command(ctx: CommandContext, p: TrackParams) -> None:
    """Track objects through the current time-lapse (frames must be on the T axis)."""
    from ..tasks.outlines import outlines
    from ..tasks.track import track_movie, track_statistics, write_track_outputs
    from ..tasks.tracking import TrackingParams
    from ._convert import imageplus_to_numpy
    from ._results import add_rois_to_manager, labels_to_imageplus, results_table

    imp = ctx.current_image()
    image = imageplus_to_numpy(imp)
    if "T" not in image.axes:
        raise IjtorchError(f"{image.title} has no time axis (frames); use Image > Properties to set frames")
    params = TrackingParams(max_distance=p.max_distance, max_gap=p.max_gap, allow_splitting=p.divisions)
    tracks = track_movie(image.data, image.axes, is_labels=p.labels, model=p.model, calibration=image.calibration,
                         params=params)
    label_axes = "TZYX" if tracks.ndim == 3 else "TYX"
    tracked = labels_to_imageplus(tracks.tracked_labels, label_axes, calibration=image.calibration,
                                  title=f"{Path(image.title).stem}-tracks")
    tracked.show()
    from ._trackmate import open_in_trackmate

    open_in_trackmate(tracks, imp)  # in a Fiji with TrackMate: the model opens there; elsewhere a no-op
    rois = outlines(tracks.tracked_labels, label_axes)
    frame = rois.positions[:, 2]
    names = [f"track_{int(label):04d}_t{int(t):03d}" for label, t in zip(rois.labels, frame)]
    add_rois_to_manager(rois, names=names, reset=True)
    results_table(track_statistics(tracks), title="Track statistics")
    folder = p.output
    info = imp.getOriginalFileInfo()
    source = Path(str(info.directory)) / str(info.fileName) if info is not None and info.directory else None
    if not folder and source is not None:
        folder = str(source.parent)
    if folder:
        paths = write_track_outputs(folder, Path(image.title).stem, tracks, image_path=source)
        from jpype import JClass

        JClass("ij.IJ").log(f"{ctx.command}: {len(tracks.ctc)} tracks, {tracks.n_divisions} divisions; "
                            f"TrackMate XML: {paths['trackmate_xml']}")
    ctx.progress(1, 1)
