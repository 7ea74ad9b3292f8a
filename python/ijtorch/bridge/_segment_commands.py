"""ImageJ commands for the main job: ``ijtorch Segment``, ``ijtorch Train Segmentation``,
``ijtorch Evaluate``, plus ``Ext.ijtorch...`` functions for macros.

Handlers only translate: ImagePlus → numpy, call the task function the CLI and server also call,
numpy → ImageJ objects (label image, ROI Manager, ResultsTable).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import IjtorchError
from ._legacy import CommandContext, command, macro_function

__all__ = ["SegmentParams", "TrainSegmentationParams", "EvaluateParams", "segment_imageplus", "segment_outputs"]


class SegmentOutput(str, Enum):
    labels = "label map"
    rois = "ROI Manager"
    results = "Results"
    all = "all"


class SegmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("nuclei", description="model name (see Ext.ijtorchListModels) or model folder")
    prob_threshold: float = Field(0.0, ge=0, le=1, description="object probability threshold; 0 = the model's tuned value")
    nms_threshold: float = Field(0.0, ge=0, le=1, description="overlap threshold for suppressing duplicates; 0 = tuned value")
    channel: int = Field(1, ge=1, description="channel to segment in multi-channel images (1 = first)")
    test_time_augmentation: bool = Field(False, description="average over 8 flips/rotations (2D models; 8x slower)")
    scale: float = Field(1.0, ge=0.1, le=10, description="resize by this factor before the model (2 = objects half the training size; 2D)")
    output: SegmentOutput = Field(SegmentOutput.all, description="what to create: label map, ROI Manager, Results or all")


def _progress_to_imagej(ctx: CommandContext):
    def listener(event) -> None:
        if event.n:
            ctx.progress(event.i, event.n, event.message or event.phase)

    return listener


def segment_outputs(image, p: SegmentParams, *, command: str = "ijtorch Segment", progress=None,
                    cancel=None) -> tuple:
    """Segment an :class:`ijtorch.image.Image` and describe the ImageJ outputs ``p.output`` asks for.

    Needs no JVM: the in-process command and the server (for a remote Fiji) both call it.
    Returns ``(SegmentationResult, CommandOutputs)``.
    """
    from ..tasks.measure import measure
    from ..tasks.outlines import outlines
    from ..tasks.segment import segment
    from ..commands.outputs import CommandOutputs, ImageOutput, RoiOutput, TableOutput
    if "S" in image.axes:
        raise IjtorchError(f"{command}: {image.title} is an RGB image; convert it to 8-bit or split channels first")
    channel = p.channel - 1 if "C" in image.axes else None
    result = segment(image.data, image.axes, model=p.model, channel=channel,
                     prob_threshold=p.prob_threshold or None, nms_threshold=p.nms_threshold or None,
                     test_time_augmentation=p.test_time_augmentation, scale=p.scale, progress=progress,
                     cancel=cancel)
    want = p.output
    images, rois, tables = [], None, []
    if want in (SegmentOutput.labels, SegmentOutput.all):
        images.append(ImageOutput(result.labels, result.axes, f"{Path(image.title).stem}-labels",
                                  image.calibration, labels=True))
    if want in (SegmentOutput.rois, SegmentOutput.all):
        rois = RoiOutput(outlines(result.labels, result.axes), reset=True)
    if want in (SegmentOutput.results, SegmentOutput.all):
        intensity = image.data if channel is None else np.take(image.data, channel, axis=image.axes.index("C"))
        tables.append(TableOutput(measure(result.labels, result.axes, intensity=intensity,
                                          calibration=image.calibration)))
    status = f"{command}: {result.n_objects} objects ({result.model}, {result.seconds:.2f} s)"
    return result, CommandOutputs(tuple(images), rois, tuple(tables), status, {"n_objects": result.n_objects})


def segment_imageplus(ctx: CommandContext, imp, p: SegmentParams):
    """Segment an ImagePlus and create the requested ImageJ outputs; returns (result, label ImagePlus)."""
    from ._convert import imageplus_to_numpy
    from .apply import apply_outputs
    image = imageplus_to_numpy(imp)
    result, outputs = segment_outputs(image, p, command=ctx.command, progress=_progress_to_imagej(ctx))
    ctx.progress(1, 1)
    shown = apply_outputs(outputs)
    return result, (shown[0] if shown else None)


@command("ijtorch Segment", params=SegmentParams)
def segment_command(ctx: CommandContext, p: SegmentParams) -> None:
    """Instance segmentation of the current image: 2D, z-stack (3D model: one volume; 2D: per plane), time-lapse."""
    segment_imageplus(ctx, ctx.current_image(), p)


class TrainSource(str, Enum):
    image = "current image + ROI Manager"
    folders = "folders"


class TrainSegmentationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: TrainSource = Field(TrainSource.image, description="annotations from the ROI Manager on the current image, or folders of image/label TIFFs")
    images: str = Field("", description="folder of training images (source=folders)")
    labels: str = Field("", description="folder of label maps with the same names (source=folders)")
    name: str = Field("my-model", description="name of the new model (saved in the user model folder)")
    base_model: str = Field("", description="fine-tune from this model (e.g. nuclei); empty = from scratch")
    epochs: int = Field(10, ge=1, description="training epochs")
    steps: int = Field(50, ge=1, description="steps per epoch")
    patch_size: int = Field(0, ge=0, description="training patch size in pixels (0 = the method's default: 128 in 2D, 96 in 3D)")


@command("ijtorch Train Segmentation", params=TrainSegmentationParams)
def train_segmentation_command(ctx: CommandContext, p: TrainSegmentationParams) -> None:
    """Train or fine-tune a star-convex model; the new model is immediately selectable by name."""
    from ..models.store import new_user_model_dir
    from ..tasks.rasterize import polygons_to_labels
    from ..tasks.segment import train_segmentation
    from .apply import rois_from_manager
    from ._convert import imageplus_to_numpy

    output = new_user_model_dir(p.name)
    if p.source == TrainSource.image:
        image = imageplus_to_numpy(ctx.current_image())
        if image.axes != "YX":
            raise IjtorchError(f"training from the ROI Manager needs a single 2D plane (YX), got {image.axes}")
        ann = rois_from_manager()
        labels = polygons_to_labels(ann.polygons, image.data.shape)
        images_arg, labels_arg = [image.data], [labels]
        val_fraction = 0.0
    else:
        if not p.images or not p.labels:
            raise IjtorchError("source=folders needs images=[folder] and labels=[folder]")
        images_arg, labels_arg, val_fraction = p.images, p.labels, 0.15
    summary = train_segmentation(images_arg, labels_arg, output=output, base_model=p.base_model or None,
                                 epochs=p.epochs, steps_per_epoch=p.steps, patch_size=p.patch_size or None,
                                 val_fraction=val_fraction, progress=_progress_to_imagej(ctx))
    from jpype import JClass

    JClass("ij.IJ").log(f"{ctx.command}: model '{p.name}' saved to {summary.get('output', output)}")


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction: str = Field(..., description="title of the predicted label image, or a folder of label TIFFs")
    ground_truth: str = Field(..., description="title of the ground-truth label image, or a folder with the same file names")


@command("ijtorch Evaluate", params=EvaluateParams)
def evaluate_command(ctx: CommandContext, p: EvaluateParams) -> None:
    """Instance metrics (AP at IoU 0.5…0.9, F1, splits, merges, Dice) into a ResultsTable."""
    from ..metrics.instance import DEFAULT_THRESHOLDS, evaluate_pair
    from ..tasks.evaluate import evaluate
    from ._convert import imageplus_to_numpy
    from ._results import results_table

    if Path(p.prediction).is_dir() and Path(p.ground_truth).is_dir():
        result = evaluate(p.prediction, p.ground_truth)
        rows = result["rows"] + [result["mean"], result["pooled"]]
    else:
        from jpype import JClass

        WindowManager = JClass("ij.WindowManager")
        maps = []
        for role, title in (("prediction", p.prediction), ("ground_truth", p.ground_truth)):
            imp = WindowManager.getImage(title)
            if imp is None:
                raise IjtorchError(f"{role}={title!r}: no open image has that title and it is not a folder")
            maps.append(imageplus_to_numpy(imp).data)
        rows = [{"image": p.prediction, **evaluate_pair(maps[1], maps[0], thresholds=DEFAULT_THRESHOLDS)}]
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    columns = {k: np.asarray([r.get(k) for r in rows], dtype=object if isinstance(rows[0][k], str) else float)
               for k in keys}
    results_table(columns, title="Evaluation")


@macro_function("ijtorchListModels", remote=True)
def ijtorch_list_models() -> str:
    """Ext.ijtorchListModels(): comma-separated names of bundled and user models."""
    from ..models.store import list_models

    return ",".join(m["name"] for m in list_models())


@macro_function("ijtorchObjectCount", returns="number", remote=True)
def ijtorch_object_count() -> int:
    """Ext.ijtorchObjectCount(n): sets n to the object count of the last ijtorch Segment run."""
    from ..commands.outputs import session_value
    return int(session_value("n_objects", "no segmentation has run yet in this ImageJ session"))
