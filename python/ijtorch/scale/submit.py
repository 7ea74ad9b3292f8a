"""Segment a folder of images, or one image larger than memory, on a Dask cluster: the engine of
the ``ijtorch Segment on Cluster`` command (menu, macro, server), with progress and cancellation.

- A **folder**: one task per TIFF (:func:`ijtorch.scale.runner.run_batch`: staged, atomic outputs, a
  task whose worker died runs again elsewhere, a manifest that lets a rerun skip finished inputs), each
  segmented as :func:`ijtorch.tasks.segment.segment` with the options the command gives and written as
  ``ijtorch segment FOLDER --output OUT`` writes it (label TIFF, RoiSet.zip, measurements CSV, overlay).
- **One big image** (a TIFF or an OME-Zarr): :func:`ijtorch.scale.blockwise.segment_blockwise`.

Progress goes to a :data:`~ijtorch.core.progress.ProgressCallback` as it comes from the cluster (files
done, or blocks per phase); ``cancel()`` returning True stops the run (the cluster's tasks are
cancelled, no partial output stays).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..core.progress import ProgressCallback, ProgressEvent, emit
from ..errors import IjtorchError
from .cluster import DaskOptions
from .runner import STAGING_PREFIX, worker_say

__all__ = ["ClusterRun", "segment_on_cluster", "folder_inputs", "is_big_image", "SITE_SCHEDULER_ENV"]

#: The scheduler a site sets for its users (a Fiji's cluster runs use it unless told otherwise).
SITE_SCHEDULER_ENV = "IJTORCH_DASK_SCHEDULER"


@dataclass
class ClusterRun:
    """What :func:`segment_on_cluster` did: per-input lines, files, failures."""

    kind: str                                   # "folder" or "blockwise"
    output: Path
    lines: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    objects: dict[str, int] = field(default_factory=dict)     # input path -> objects found
    labels: dict[str, Path] = field(default_factory=dict)     # input path -> its label map (TIFF or OME-Zarr)
    rois: dict[str, Path] = field(default_factory=dict)       # input path -> its RoiSet.zip
    scheduler: str = ""


def is_big_image(path: Path) -> bool:
    """A single image (a file, or an OME-Zarr folder), as opposed to a folder of images."""
    return path.is_file() or path.suffix.lower() == ".zarr" or (path / ".zattrs").is_file() or \
        (path / "zarr.json").is_file()


def folder_inputs(folder: Path) -> list[Path]:
    """The images of ``folder`` (TIFF, PNG, JPEG, ...; sorted; hidden files left out), as ``ijtorch
    segment FOLDER`` takes them."""
    from ..io.raster import IMAGE_SUFFIXES, image_files

    files = image_files(folder)
    if not files:
        raise IjtorchError(f"folder {folder} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def resolve_scheduler(scheduler: str) -> str:
    """Empty: the site's scheduler (``$IJTORCH_DASK_SCHEDULER``) or a local cluster."""
    return scheduler.strip() or os.environ.get(SITE_SCHEDULER_ENV, "").strip() or "local"


@contextlib.contextmanager
def _staged(output: str | os.PathLike, *, inputs: Sequence[Path] = ()) -> Iterator[Path]:
    """A private folder in ``output`` whose files are moved into place only when the input succeeded."""
    from ..io.atomic import refuse_overwrite

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        yield staging
        entries = sorted(staging.iterdir())
        for entry in entries:  # check all before moving any
            refuse_overwrite(out / entry.name, list(inputs))
        for entry in entries:
            os.replace(entry, out / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _Report:
    """The batch interface :func:`run_batch` reports into, turned into progress events and lines."""

    def __init__(self, total: int, progress: ProgressCallback | None, cancel: Callable[[], bool] | None) -> None:
        self.verb, self.fail_fast, self.total = "Segment on Cluster", False, total
        self.done: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.skipped: list[tuple[str, str]] = []
        self.lines: list[str] = []
        self.progress = self  # run_batch calls batch.progress.update()
        self._n, self._emit, self._cancel = 0, progress, cancel

    def update(self, n: int = 1) -> None:
        self._n += n
        emit(self._emit, ProgressEvent("files", self._n, self.total, f"{self._n}/{self.total} files"))
        if self._cancel is not None and self._cancel():
            raise InterruptedError("cancelled: the cluster's remaining tasks were stopped")

    def say(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(text)

    def fail(self, name: str, exc: BaseException, *, count: bool = True) -> None:
        why = " ".join(str(exc).split()) or type(exc).__name__
        self.failed.append((name, why))
        self.lines.append(f"{name}: {why}")
        if count:
            self.update()


def _segment_step(options: Callable[[str], dict]) -> Callable[[Path, Path], str]:
    """The per-file task (a closure: what it records comes back from the worker, see the runner)."""
    objects: dict[str, int] = {}

    def one(path: Path, staging: Path) -> str:
        from ..io.raster import read_image
        from ..tasks.segment import segment
        from ..tasks.segmentation_files import write_segmentation_outputs

        image = read_image(path)
        result = segment(image.data, image.axes, **options(image.axes))
        write_segmentation_outputs(staging, path.stem, image, result.labels, result.axes,
                                   inputs=(path,), confidence=getattr(result, "confidence", None))
        objects[str(path)] = int(result.n_objects)
        if getattr(result, "shift_warning", None):
            worker_say("warn", f"WARNING {path.name}: {result.shift_warning}")
        return f"{path.name}: {result.n_objects} objects"

    one.objects = objects  # type: ignore[attr-defined]
    return one


def segment_on_cluster(source: str | os.PathLike, output: str | os.PathLike, *, options: Callable[[str], dict],
                       model: str, channel: int | None = None, block: int = 1024, halo: int = 128,
                       prob_threshold: float | None = None, nms_threshold: float | None = None,
                       dask: DaskOptions | None = None, client: Any = None, progress: ProgressCallback | None = None,
                       cancel: Callable[[], bool] | None = None, params: Mapping[str, Any] | None = None
                       ) -> ClusterRun:
    """Segment the folder or big image ``source`` on a Dask cluster into ``output``.

    ``options(axes)`` gives the keyword arguments of :func:`ijtorch.tasks.segment.segment` for an
    image with ``axes`` (the command's translation, 1-based channel included); it must pickle. The
    big-image path takes ``model``, the 0-based ``channel`` (of a multi-channel image),
    ``block``/``halo`` and the thresholds (None: the model's tuned values). ``client``: a connected
    ``distributed.Client`` (else ``dask`` says which cluster to open). ``params``: what the manifest
    keys a folder's finished work by.
    """
    src, out = Path(source), Path(output)
    if not src.exists():
        raise IjtorchError(f"input {src} does not exist")
    if out.exists() and src.is_dir() and os.path.samefile(src, out) and not is_big_image(src):
        raise IjtorchError(f"output {out} is the input folder: choose another folder for the results")
    opts = dask or DaskOptions()
    if is_big_image(src):
        return _blockwise(src, out, model=model, channel=channel, block=block, halo=halo,
                          prob_threshold=prob_threshold, nms_threshold=nms_threshold, dask=opts, client=client,
                          progress=progress, cancel=cancel)
    files = folder_inputs(src)
    report = _Report(len(files), progress, cancel)
    emit(progress, ProgressEvent("files", 0, len(files), f"0/{len(files)} files"))
    step = _segment_step(options)
    from .runner import run_batch

    run = ClusterRun("folder", out, scheduler=opts.scheduler)
    keyed = {"source": "folder", **dict(params or {})}
    run_batch(report, files, step, name=lambda p: p.name, output=out, inputs=lambda p: [p], staged=_staged,
              skip=_NeverSkipped, options=opts, params=keyed, client=client)
    run.lines, run.failed, run.skipped = report.lines, report.failed, report.skipped
    by_name = {p.name: p for p in files}
    run.done = list(report.done)
    finished = run.done + [name for name, _ in report.skipped]
    for name in finished:
        path = by_name[name]
        run.labels[str(path)] = out / f"{path.stem}.tif"
        run.rois[str(path)] = out / f"{path.stem}_RoiSet.zip"
        if str(path) in step.objects:  # type: ignore[attr-defined]
            run.objects[str(path)] = step.objects[str(path)]  # type: ignore[attr-defined]
    return run


class _NeverSkipped(Exception):
    """No step of a cluster run skips its input (the manifest does, before any task)."""


def _blockwise(src: Path, out: Path, *, model: str, channel: int | None, block: int, halo: int,
               prob_threshold: float | None, nms_threshold: float | None, dask: DaskOptions, client: Any,
               progress: ProgressCallback | None, cancel: Callable[[], bool] | None) -> ClusterRun:
    from .blockwise import segment_blockwise

    def blocks(phase: str, done: int, total: int) -> None:
        emit(progress, ProgressEvent(phase, done, total, f"{phase} {done}/{total} blocks"))
        if cancel is not None and cancel():
            raise InterruptedError("cancelled: the cluster's remaining tasks were stopped")

    result = segment_blockwise(src, out, model=model, channel=channel, block=block, halo=halo,
                               prob_threshold=prob_threshold, nms_threshold=nms_threshold, client=client,
                               dask=dask, progress=blocks)
    run = ClusterRun("blockwise", out, scheduler=dask.scheduler)
    run.done = [src.name]
    run.objects[str(src)] = result.n_objects
    run.labels[str(src)] = result.labels
    if "rois" in result.files:
        run.rois[str(src)] = result.files["rois"]
    run.lines.append(f"{src.name}: {result.n_objects} objects ({result.dtype}) in {result.n_blocks} blocks of {block} px, "
                     f"{result.near_seams} across block seams, {result.merged_at_seams} seen from both sides kept once; "
                     f"{result.seconds:.1f} s")
    run.lines += [f"  {kind}: {path}" for kind, path in result.files.items()]
    return run
