"""Segmentation commands: ``ijtorch Segment``, ``ijtorch Train Segmentation``, ``ijtorch Evaluate``,
and the ``Ext.ijtorchListModels`` / ``Ext.ijtorchObjectCount`` / ``Ext.ijtorchShiftScore`` /
``Ext.ijtorchShiftWarning`` macro functions."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import IjtorchError
from .command import command, task_channel
from .functions import macro_function
from .outputs import CommandInputs, CommandOutputs, ImageOutput, RoiOutput, TableOutput, session_value

__all__ = ["SegmentParams", "ProbThreshold", "NmsThreshold", "SegmentChannel", "TrainSegmentationParams", "EvaluateParams", "segment_compute", "segment_options", "refuse_rgb",
           "plain_image"]


class RgbConversion(str, Enum):
    luminance = "luminance"
    inverted = "inverted"
    hematoxylin = "hematoxylin"


def refuse_rgb(command: str, image) -> None:
    """The one refusal of RGB images, for every command that reads grey channels."""
    if "S" in image.axes:
        raise IjtorchError(f"{command}: {image.title} is an RGB image; convert it to 8-bit or split channels first")


def plain_image(command: str, inputs: CommandInputs):
    """The current image, refused clearly when none is open."""
    if inputs.image is None:
        raise IjtorchError(f"{command} needs an open image (open one or select its window)")
    return inputs.image


#: The object-detection fields every segmenting command shares (Segment, Segment on Cluster): one
#: description and one range, so that the dialogs, macro keys and CLI options agree.
ProbThreshold = Annotated[float, Field(ge=0, le=1, description="object probability threshold; 0 = the model's tuned value")]
NmsThreshold = Annotated[float, Field(ge=0, le=1, description="overlap threshold for suppressing duplicates; 0 = tuned value")]
SegmentChannel = Annotated[int, Field(ge=1, description="channel to segment in multi-channel images (1 = first)")]


class SegmentOutput(str, Enum):
    labels = "label map"
    rois = "ROI Manager"
    results = "Results"
    all = "all"


class SegmentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("auto", description="auto (per image, the nuclei model that fits it best: fluorescence or "
                       "transmitted light) or a model name (see Ext.ijtorchListModels) or model folder")
    prob_threshold: ProbThreshold = 0.0
    nms_threshold: NmsThreshold = 0.0
    channel: SegmentChannel = 1
    test_time_augmentation: bool = Field(False, description="average over 8 flips/rotations (2D models; 8x slower)")
    scale: float = Field(1.0, ge=0.1, le=10, description="resize by this factor before the model (2 = objects half the training size; 2D)")
    tile_size: int = Field(0, ge=0, le=4096, description="tile edge in pixels for tiled prediction; 0 = the model's default (1024 in 2D)")
    overlap: int = Field(0, ge=0, description="tile overlap in pixels; 0 = the model's default (96 in 2D)")
    min_confidence: float = Field(0.0, ge=0, le=1, description="drop objects whose confidence (peak object probability) is below this; 0 = keep all")
    rgb: RgbConversion = Field(RgbConversion.luminance, description="RGB images: luminance (0.299R+0.587G+0.114B), inverted luminance (dark objects become bright) or hematoxylin (H&E colour deconvolution)")
    output: SegmentOutput = Field(SegmentOutput.all, description="what to create: label map, ROI Manager, Results or all",
                                  json_schema_extra={"surfaces": ["imagej"]})

    @field_validator("tile_size")
    @classmethod
    def _tile_size(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError(f"tile_size={value}: 0 (the model's default) or at least 32")
        return value


def segment_options(p: SegmentParams, axes: str) -> dict:
    """The keyword arguments of :func:`ijtorch.tasks.segment.segment` for ``p`` on an image with
    ``axes``: every surface translates the parameters here (1-based channel, 0 = tuned / default)."""
    return dict(model=p.model, channel=task_channel(p.channel, axes), prob_threshold=p.prob_threshold or None,
                nms_threshold=p.nms_threshold or None, tile_size=p.tile_size or None, overlap=p.overlap or None,
                test_time_augmentation=p.test_time_augmentation, scale=p.scale, min_confidence=p.min_confidence,
                rgb=RgbConversion(p.rgb).value)


def segment_compute(inputs: CommandInputs, p: SegmentParams, *, command: str = "ijtorch Segment"):
    """Segment the current image; returns ``(SegmentationResult, CommandOutputs)`` (the outputs
    ``p.output`` asks for: label map, ROIs, measurements)."""
    from ..tasks.measure import measure
    from ..tasks.outlines import outlines
    from ..tasks.segment import rgb_to_grey, segment

    image = plain_image(command, inputs)
    options = segment_options(p, image.axes)
    channel = options["channel"]
    result = segment(image.data, image.axes, **options, progress=inputs.progress, cancel=inputs.cancel)
    want = p.output
    images, rois, tables = [], None, []
    if want in (SegmentOutput.labels, SegmentOutput.all):
        images.append(ImageOutput(result.labels, result.axes, f"{Path(image.title).stem}-labels",
                                  image.calibration, labels=True))
    if want in (SegmentOutput.rois, SegmentOutput.all):
        from ..io.roiset import confidence_properties

        ol = outlines(result.labels, result.axes)
        rois = RoiOutput(ol, reset=True, properties=confidence_properties(ol.labels, result.confidence))
    if want in (SegmentOutput.results, SegmentOutput.all):
        data, axes = rgb_to_grey(image.data, image.axes, options["rgb"])
        intensity = data if channel is None else np.take(data, channel, axis=axes.index("C"))
        tables.append(TableOutput(measure(result.labels, result.axes, intensity=intensity,
                                          calibration=image.calibration, confidence=result.confidence)))
    chosen = " chosen by model=auto" if result.model_choice else ""
    status = f"{command}: {result.n_objects} objects ({result.model}{chosen}, {result.seconds:.2f} s)"
    if result.shift_warning:
        status += " - WARNING: dataset shift, results unreliable (see the Log)"
    if result.rgb:
        status += f" (RGB converted to grey: {result.rgb})"
    log = [f"{command} {image.title}: {result.model_choice}"] if result.model_choice else []
    if result.shift_warning:
        log.append(f"{command} {image.title}: WARNING {result.shift_warning}")
    values = {"n_objects": result.n_objects,
              "shift_score": -1.0 if result.shift_score is None else round(float(result.shift_score), 4),
              "shift_warning": result.shift_warning or ""}
    return result, CommandOutputs(tuple(images), rois, tuple(tables), status, values, log=tuple(log))


@command("ijtorch Segment", SegmentParams, verb="segment", remote=True)
def segment_command(inputs: CommandInputs, p: SegmentParams) -> CommandOutputs:
    """Instance segmentation of the current image: 2D, z-stack (3D model: one volume; 2D: per plane), time-lapse."""
    return segment_compute(inputs, p)[1]


class TrainSource(str, Enum):
    image = "current image + ROI Manager"
    folders = "folders"


class TrainMethod(str, Enum):
    auto = "auto"
    stardist = "stardist"
    unet_watershed = "unet_watershed"


class TrainSegmentationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: TrainSource = Field(TrainSource.image, description="annotations from the ROI Manager on the current image, or folders of image/label TIFFs")
    images: str = Field("", description="folder of training images (source=folders)")
    labels: str = Field("", description="folder of label maps with the same names (source=folders)")
    name: str = Field("my-model", description="name of the new model (saved in the user model folder)")
    base_model: str = Field("", description="fine-tune from this model (e.g. nuclei); empty = from scratch")
    method: TrainMethod = Field(TrainMethod.auto, description="auto = that of the base model (star-convex without one); "
                                "stardist: star-convex (nuclei); unet_watershed: U-Net + seeded watershed (touching "
                                "whole cells, bacteria)")
    epochs: int = Field(10, ge=1, description="training epochs")
    steps: int = Field(50, ge=1, description="steps per epoch")
    patch_size: int = Field(0, ge=0, description="training patch size in pixels (0 = the method's default: 128 in 2D, "
                            "96 in 3D, 256 for unet_watershed)")


@command("ijtorch Train Segmentation", TrainSegmentationParams, needs_image=False, rois=True)
def train_segmentation_command(inputs: CommandInputs, p: TrainSegmentationParams) -> CommandOutputs:
    """Train or fine-tune a star-convex or U-Net + watershed model; the new model is immediately selectable by name."""
    from ..models.store import new_user_model_dir
    from ..tasks.rasterize import polygons_to_labels
    from ..tasks.segment import train_segmentation

    name = "ijtorch Train Segmentation"
    if p.source == TrainSource.image:
        image = plain_image(name, inputs)
        if image.axes != "YX":
            raise IjtorchError(f"training from the ROI Manager needs a single 2D plane (YX), got {image.axes}")
        ann = inputs.rois()
        images_arg, labels_arg = [image.data], [polygons_to_labels(ann.polygons, image.data.shape)]
        val_fraction = 0.0
    else:
        if not p.images or not p.labels:
            raise IjtorchError("source=folders needs images=[folder] and labels=[folder]")
        images_arg, labels_arg, val_fraction = p.images, p.labels, 0.15
    output = new_user_model_dir(p.name)
    method = None if p.method == TrainMethod.auto else p.method.value
    summary = train_segmentation(images_arg, labels_arg, output=output, base_model=p.base_model or None, method=method,
                                 epochs=p.epochs, steps_per_epoch=p.steps, patch_size=p.patch_size or None,
                                 val_fraction=val_fraction, progress=inputs.progress)
    return CommandOutputs(log=(f"{name}: model '{p.name}' saved to {summary.get('output', output)}",))


class EvaluateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction: str = Field(..., description="title of the predicted label image, or a folder of label TIFFs")
    ground_truth: str = Field(..., description="title of the ground-truth label image, or a folder with the same file names")


@command("ijtorch Evaluate", EvaluateParams, needs_image=False, image_options=("prediction", "ground_truth"))
def evaluate_command(inputs: CommandInputs, p: EvaluateParams) -> CommandOutputs:
    """Instance metrics (AP at IoU 0.5…0.9, F1, splits, merges, Dice) into a ResultsTable."""
    from ..metrics.instance import DEFAULT_THRESHOLDS, evaluate_pair
    from ..tasks.evaluate import evaluate

    if Path(p.prediction).is_dir() and Path(p.ground_truth).is_dir():
        result = evaluate(p.prediction, p.ground_truth)
        rows = result["rows"] + [result["mean"], result["pooled"]]
    else:
        maps = []
        for role, title in (("prediction", p.prediction), ("ground_truth", p.ground_truth)):
            image = inputs.open_image(title)
            if image is None:
                raise IjtorchError(f"{role}={title!r}: no open image has that title and it is not a folder")
            maps.append(image.data)
        rows = [{"image": p.prediction, **evaluate_pair(maps[1], maps[0], thresholds=DEFAULT_THRESHOLDS)}]
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    columns = {k: np.asarray([r.get(k) for r in rows], dtype=object if isinstance(rows[0][k], str) else float)
               for k in keys}
    return CommandOutputs(tables=(TableOutput(columns, title="Evaluation"),))


@macro_function("ijtorchListModels", remote=True)
def ijtorch_list_models() -> str:
    """Ext.ijtorchListModels(): comma-separated names of bundled and user models."""
    from ..models.store import list_models

    return ",".join(m["name"] for m in list_models())


@macro_function("ijtorchShiftScore", returns="number", remote=True)
def ijtorch_shift_score() -> float:
    """Ext.ijtorchShiftScore(s): sets s to the dataset-shift score of the last ijtorch Segment run
    (above the model's threshold the results are unreliable; -1 when the model has no reference)."""
    return float(session_value("shift_score", "no segmentation has run yet in this ImageJ session"))


@macro_function("ijtorchShiftWarning", remote=True)
def ijtorch_shift_warning() -> str:
    """Ext.ijtorchShiftWarning(): the dataset-shift warning of the last ijtorch Segment run ("" when none)."""
    return str(session_value("shift_warning", "no segmentation has run yet in this ImageJ session"))


@macro_function("ijtorchObjectCount", returns="number", remote=True)
def ijtorch_object_count() -> int:
    """Ext.ijtorchObjectCount(n): sets n to the object count of the last ijtorch Segment run."""
    return int(session_value("n_objects", "no segmentation has run yet in this ImageJ session"))
