"""``ijtorch Track``: segment each frame (or take a label stack), link, and hand the tracks to
ImageJ (a label stack coloured by track, ROIs named by track and frame, a per-track table) and to
files (TrackMate XML and CSVs, CTC, GEFF)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import IjtorchError
from .command import command, task_channel
from .outputs import (
    CommandInputs,
    CommandOutputs,
    FileOutput,
    ImageOutput,
    RoiOutput,
    TableOutput,
)
from .segment import plain_image

__all__ = ["TrackParams", "track_options"]


class LinkingCost(str, Enum):
    auto = "auto"          # overlap for label stacks and segmented movies, distance for points
    overlap = "overlap"    # masks: overlap, motion of the neighbours, size, orientation; divisions from masks
    distance = "distance"  # centroid distance only (TrackMate's LAP tracker)


class Motion(str, Enum):
    neighbours = "neighbours"  # shift each mask by its neighbours' motion (and the field's, after a stage jump)
    none = "none"              # compare masks where they are


class TrackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: bool = Field(False, description="the image already holds label masks (skip segmentation)")
    model: str = Field("nuclei", description="segmentation model used when the image is not a label stack: nuclei (fluorescent nuclei), bacteria_phase (phase-contrast bacteria), cells_phase (phase-contrast cells) or a model of yours")
    channel: int = Field(1, ge=1, description="channel to segment in multi-channel movies (1 = first)")
    linking: LinkingCost = Field(LinkingCost.auto, description="frame-to-frame cost: overlap (masks: overlap, neighbours' motion, size, orientation; divisions from masks), distance (centroids) or auto (overlap for masks)")
    max_distance: float = Field(0.0, ge=0, description="largest frame-to-frame displacement (calibrated units; overlap linking: from the position the neighbours' motion predicts); 0 = estimated from the movie")
    max_gap: int = Field(2, ge=0, description="largest number of missed frames bridged (0 = no gap closing)")
    divisions: bool = Field(True, description="detect divisions (one parent, two daughters)")
    merges: bool = Field(False, description="detect merges (two parents, one child)")
    fill_gaps: bool = Field(False, description="insert an interpolated object in each frame a closed gap skips")
    motion: Motion = Field(Motion.neighbours, description="overlap linking: compare masks after shifting them by the motion of their neighbours (and of the whole field after a stage jump), or where they are (none)")
    displacement_sigma: float = Field(0.0, ge=0, description="overlap linking: scale of the position residual after the predicted motion (calibrated units); 0 = estimated from the movie")
    size_growth: float | None = Field(None, description="overlap linking: typical change of log(area) per frame; empty = estimated from the movie")
    size_sigma: float = Field(0.0, ge=0, description="overlap linking: scale of the change of log(area) around size_growth; 0 = estimated from the movie")
    overlap_sigma: float = Field(0.0, ge=0, description="overlap linking: scale of 1 - IoU of true links; 0 = estimated from the movie")
    orientation_sigma: float = Field(0.0, ge=0, description="overlap linking: scale of the turn of an elongated object's long axis (degrees); 0 = estimated from the movie")
    max_cost: float = Field(0.0, ge=0, description="overlap linking: gate on a link's cost (sum of squared standardised residuals); 0 = chi-square quantile at 1e-6")
    @field_validator("size_growth", mode="before")
    @classmethod
    def _estimated(cls, v):
        """An empty dialog field, 'auto' or NaN: estimated from the movie."""
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "auto", "nan")):
            return None
        return v

    output: str = Field("", description="folder for the TrackMate XML and other files; empty = next to the image (or none for unsaved images)",
                        json_schema_extra={"surfaces": ["imagej"]})  # the CLI's --output; the server returns arrays


def track_options(p: TrackParams, axes: str) -> dict:
    """The keyword arguments of :func:`ijtorch.tasks.track.track_movie` for ``p`` on a movie with
    ``axes`` (``is_labels``, ``model``, 0-based ``channel``, ``params``): every surface translates here."""
    from ..tasks.linking import TrackingParams

    auto = lambda v: v or None  # 0 = estimated from the movie
    growth = p.size_growth if p.size_growth is not None and p.size_growth == p.size_growth else None  # NaN = estimated
    params = TrackingParams(linking=p.linking.value, max_distance=auto(p.max_distance), max_gap=p.max_gap,
                            allow_splitting=p.divisions, allow_merging=p.merges, fill_gaps=p.fill_gaps,
                            motion_compensation=p.motion == Motion.neighbours,
                            displacement_sigma=auto(p.displacement_sigma), size_growth=growth,
                            size_sigma=auto(p.size_sigma), overlap_sigma=auto(p.overlap_sigma),
                            orientation_sigma=auto(p.orientation_sigma), max_cost=auto(p.max_cost))
    return {"is_labels": p.labels, "model": p.model,
            "channel": None if p.labels else task_channel(p.channel, axes), "params": params}


@command("ijtorch Track", TrackParams, verb="track", remote=True, model=lambda p: None if p.labels else p.model)
def track_command(inputs: CommandInputs, p: TrackParams) -> CommandOutputs:
    """Track objects through the current time-lapse (frames must be on the T axis).

    Files go to ``p.output``, else next to the file the image came from (``inputs.source_path``), else
    nowhere; in a Fiji with TrackMate the tracks also open there (``CommandOutputs.tracks``).
    """
    from ..tasks.outlines import outlines
    from ..tasks.track import (
        linking_summary,
        n_tracklets,
        n_tracks,
        track_movie,
        track_statistics,
        track_summary,
        write_track_outputs,
    )
    command = "ijtorch Track"
    image = plain_image(command, inputs)
    if "T" not in image.axes:
        raise IjtorchError(f"{image.title} has no time axis (frames); use Image > Properties to set frames")
    tracks = track_movie(image.data, image.axes, **track_options(p, image.axes), calibration=image.calibration,
                         progress=inputs.progress, cancel=inputs.cancel)
    label_axes = "TZYX" if tracks.ndim == 3 else "TYX"
    stem = Path(image.title).stem
    rois = outlines(tracks.tracked_labels, label_axes)
    frame = rois.positions[:, 2]
    names = tuple(f"track_{int(label):04d}_t{int(t):03d}" for label, t in zip(rois.labels, frame))
    folder = p.output or (str(Path(inputs.source_path).parent) if inputs.source_path else "")
    files, log = None, ()
    if folder:
        source = inputs.source_path
        files = FileOutput(folder, lambda out: write_track_outputs(out, stem, tracks, image_path=source))
    # counts as TrackMate counts them: a track is a connected component (a dividing cell and its
    # daughters are one track); the division-free CTC segments are "tracklets"
    counts = (f"{n_tracks(tracks)} tracks ({n_tracklets(tracks)} CTC tracklets), {tracks.n_divisions} divisions, "
              f"{len(tracks.spots['id'])} spots")
    log = (f"{command}: {linking_summary(tracks)}",)
    if folder:
        log += (f"{command}: {counts}; TrackMate XML: {Path(folder) / f'{stem}.xml'}",)
    outputs = CommandOutputs(
        images=(ImageOutput(tracks.tracked_labels, label_axes, f"{stem}-tracks", image.calibration, labels=True),),
        rois=RoiOutput(rois, names=names, reset=True),
        tables=(TableOutput(track_statistics(tracks), title="Tracklet statistics"),
                TableOutput(track_summary(tracks), title="Track statistics")),
        files=files, log=log, status=f"{command}: {counts}",
        values={"n_tracks": n_tracks(tracks), "n_tracklets": n_tracklets(tracks)}, tracks=tracks)
    return outputs
