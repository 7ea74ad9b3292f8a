"""``ijtorch Segment on Cluster``: a folder of images, or one image larger than memory, segmented
on a Dask cluster (:mod:`ijtorch.scale.submit`), from the menu, a macro or a Fiji without Python
through the server. Progress comes back as the cluster finishes files or blocks; the results land in
the output folder, and the label map and ROIs of the current image open when it was among the inputs.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import IjtorchError
from .command import command
from .outputs import CommandInputs, CommandOutputs, ImageOutput, RoiOutput
from .segment import NmsThreshold, ProbThreshold, SegmentChannel, SegmentParams, segment_options

__all__ = ["ClusterSegmentParams", "SCALE_ROOT_ENV", "default_output"]

COMMAND = "ijtorch Segment on Cluster"

#: On a server: the folder (a file system the cluster shares) that remote inputs and outputs must lie in.
SCALE_ROOT_ENV = "IJTORCH_SCALE_ROOT"


class ClusterSegmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = Field("", description="a folder of images (TIFF, PNG, ...; one task per image) or one big image, TIFF or OME-Zarr "
                                       "(segmented block by block); empty = the folder of the current image")
    output: str = Field("", description="folder for the results (label maps, RoiSet.zip, measurements); "
                                        "empty = <input>-labels beside the input")
    model: str = Field("nuclei", description="model name (see Ext.ijtorchListModels) or model folder; a big image "
                                             "needs a 2D star-convex model")
    channel: SegmentChannel = 1
    prob_threshold: ProbThreshold = 0.0
    nms_threshold: NmsThreshold = 0.0
    block: int = Field(1024, ge=64, le=8192, description="big image: block edge in pixels, a multiple of 16 (sets "
                                                        "the memory a worker needs)")
    halo: int = Field(128, ge=64, le=1024, description="big image: context around each block in pixels, a multiple "
                                                      "of 16 (more than the largest object)")
    scheduler: str = Field("", description="where the tasks run: empty = the site's scheduler ($IJTORCH_DASK_SCHEDULER) "
                                           "or a local cluster; local; a scheduler address (tcp://host:8786); a "
                                           "scheduler file; slurm; a dask jobqueue .yaml")
    workers: int = Field(0, ge=0, description="worker processes of a local cluster, or SLURM jobs; 0 = one per CPU core")
    threads: int = Field(1, ge=1, description="torch threads per worker")


def default_output(source: Path) -> Path:
    """``<input>-labels`` beside the input (``slide.ome.zarr`` → ``slide-labels``)."""
    return source.parent / f"{source.name.split('.')[0]}-labels"


def _source(inputs: CommandInputs, p: ClusterSegmentParams) -> Path:
    if p.input:
        return Path(p.input).expanduser()
    if inputs.source_path:
        return Path(inputs.source_path).parent
    raise IjtorchError(f"{COMMAND}: give input=[folder or big image] (the current image was not opened from a file)")


def _inside(path: Path, root: Path) -> bool:
    path, root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return path == root or root in path.parents


def _check_remote(p: ClusterSegmentParams) -> None:
    """A server reads and writes only under ``$IJTORCH_SCALE_ROOT`` and submits only to its own cluster."""
    root = os.environ.get(SCALE_ROOT_ENV, "")
    if not root:
        raise IjtorchError(f"{COMMAND}: this server takes no folders from clients (its operator sets "
                           f"{SCALE_ROOT_ENV} to the shared folder cluster runs may use)")
    if p.scheduler:
        raise IjtorchError(f"{COMMAND}: a remote Fiji uses the server's cluster; leave scheduler empty")
    if not p.input:
        raise IjtorchError(f"{COMMAND}: give input=[folder or big image] under the server's shared folder")
    output = p.output or (str(default_output(Path(p.input))) if os.path.isabs(p.input) else "")
    for name, given in (("input", p.input), ("output", output)):  # the default output too: beside the input
        if not os.path.isabs(given) or not _inside(Path(given), Path(root)):
            raise IjtorchError(f"{COMMAND}: {name} must be an absolute path inside the server's shared folder "
                               f"{SCALE_ROOT_ENV}")


def _segment_params(p: ClusterSegmentParams) -> SegmentParams:
    return SegmentParams(model=p.model, channel=p.channel, prob_threshold=p.prob_threshold,
                         nms_threshold=p.nms_threshold)


def _options(p: SegmentParams, axes: str) -> dict:
    """``segment()``'s keyword arguments on a worker: as ``ijtorch Segment`` translates ``p``."""
    return segment_options(p, axes)


@command(COMMAND, ClusterSegmentParams, needs_image=False, remote=True, check_remote=_check_remote,
         verb="segment-cluster")
def cluster_segment_command(inputs: CommandInputs, p: ClusterSegmentParams) -> CommandOutputs:
    """Segment a folder of images or an image larger than memory on a Dask cluster; results to disk."""
    from ..scale.cluster import DaskOptions
    from ..scale.submit import resolve_scheduler, segment_on_cluster

    source = _source(inputs, p)
    output = Path(p.output).expanduser() if p.output else default_output(source)
    if p.block % 16 or p.halo % 16:
        raise IjtorchError(f"{COMMAND}: block={p.block} and halo={p.halo} must be multiples of 16")
    dask = DaskOptions(resolve_scheduler(p.scheduler), p.workers or None, p.threads)
    seg = _segment_params(p)
    run = segment_on_cluster(source, output, options=functools.partial(_options, seg), model=p.model,
                             channel=p.channel - 1, block=p.block, halo=p.halo,
                             prob_threshold=p.prob_threshold or None, nms_threshold=p.nms_threshold or None,
                             dask=dask, progress=inputs.progress, cancel=inputs.cancel,
                             params=seg.model_dump(mode="json"))
    log = [line if line.startswith("ijtorch ") else f"{COMMAND}: {line}" for line in run.lines]
    n = sum(run.objects.values())
    status = (f"{COMMAND}: {len(run.done)} done, {len(run.failed)} failed, {len(run.skipped)} already finished; "
              f"{n} objects -> {output}")
    log.append(status)
    images, rois = _current_results(inputs, run)
    values = {"n_objects": n, "n_done": len(run.done), "n_failed": len(run.failed), "output": str(output)}
    return CommandOutputs(images=images, rois=rois, status=status, log=tuple(log), values=values)


def _current_results(inputs: CommandInputs, run) -> tuple[tuple[ImageOutput, ...], RoiOutput | None]:
    """The label map and ROIs of the current image, when it was one of the inputs and is done."""
    from ..tasks.outlines import outlines

    if not inputs.source_path or inputs.image is None:
        return (), None
    mine = next((Path(k) for k in run.labels if _same_file(Path(k), Path(inputs.source_path))), None)
    if mine is None:
        return (), None
    path = run.labels[str(mine)]
    if path.suffix == ".tif":
        from ..io.tiff import read_tiff

        labels_image = read_tiff(path)
        data, axes = labels_image.data, labels_image.axes
    else:  # a big image's OME-Zarr (YX, or ZYX for a z-stack): the current image is open, so its labels fit too
        import zarr

        data = np.asarray(zarr.open_group(str(path), mode="r")["0"][:])
        axes = "ZYX"[-data.ndim:]
    title = f"{mine.stem}-labels"
    return ((ImageOutput(data, axes, title, inputs.image.calibration, labels=True),),
            RoiOutput(outlines(data, axes), reset=True))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
