"""Pixel classification commands: ``ijtorch Train Pixel Classifier`` and
``ijtorch Classify Pixels``.

Training from the ROI Manager: every ROI is a stroke — a straight, segmented or freehand line
(drawn its stroke width wide, at least 1 pixel), a polygon, freehand, oval, rectangle or brush
(composite) area (filled with ImageJ's own mask), or points. Its class is its name up to a final
``_``/``-``/space/``.`` followed by digits (``nucleus_3`` → ``nucleus``, ``background`` →
``background``) or its ROI Manager group (the group's name, else ``group<N>``). Classes are
numbered in order of first appearance, after the base model's classes when warm-starting (so a
retraining round keeps class numbers). Later ROIs win where strokes overlap. Strokes on a stack
apply to their own slice (ROI position), or to the current slice when they have none. Training
can instead read a class label image (0 = unannotated, 1..C classes: strokes painted with any
ImageJ tool, or a dense class image).

Classify Pixels shows a class label image (values 1..C, a distinct-colour LUT, the class names in
the image's Info and as the ``ijtorch.classes`` property), optionally the probability stack (one
channel per class), and a Results table of per-class pixel counts and calibrated areas.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import IjtorchError
from .annotations import Stroke
from .classify import ClassFrom, class_from_roi_name
from .command import command
from .outputs import CommandInputs, CommandOutputs, ImageOutput, TableOutput
from .segment import plain_image

__all__ = ["TrainPixelsParams", "ClassifyPixelsParams", "annotation_from_strokes", "classify_pixels_outputs"]


class StrokeSource(str, Enum):
    rois = "ROI Manager"
    labels = "class label image"


class TrainPixelsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the CLI reads annotation TIFFs (its ANNOTATIONS argument) and writes the model to --output
    source: StrokeSource = Field(StrokeSource.rois, description="strokes from the ROI Manager, or a class label image (0 = unannotated)",
                                 json_schema_extra={"surfaces": ["imagej"]})
    label_image: str = Field("", description="title of the class label image (source=class label image)", json_schema_extra={"surfaces": ["imagej"]})
    class_from: ClassFrom = Field(ClassFrom.name, description="class of a ROI: its name prefix (nucleus_3 → nucleus) or its ROI Manager group",
                                  json_schema_extra={"surfaces": ["imagej"]})
    classes: str = Field("", description="class names for label values 1..C, comma-separated (label image; default class1, ...)")
    name: str = Field("my-pixels", description="name of the model (saved in the user model folder; an existing one is replaced)",
                      json_schema_extra={"surfaces": ["imagej"]})
    base_model: str = Field("", description="warm start from this pixel classifier (e.g. the same name for another round); empty = new")
    steps: int = Field(300, ge=1, description="training steps (300 take about a second)")
    seed: int = Field(0, description="random seed")
    show_result: bool = Field(False, description="classify the image with the new model right away", json_schema_extra={"surfaces": ["imagej"]})


class ClassifyPixelsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="pixel classifier name (see Ext.ijtorchListModels) or model folder")
    channel: int = Field(1, ge=1, description="channel to classify in multi-channel images for a one-channel model (1 = first)")
    probabilities: bool = Field(False, description="also show the probability stack (one channel per class)")


def _class_of(stroke: Stroke, class_from: ClassFrom) -> str:
    if class_from == ClassFrom.group:
        if stroke.group == 0:
            raise IjtorchError(f"ROI {stroke.name!r} has no group; set groups in the ROI Manager (Properties) or use "
                               "class_from=[ROI name prefix]")
        return stroke.group_name or f"group{stroke.group}"
    return class_from_roi_name(stroke.name)


def annotation_from_strokes(shape: tuple[int, int], strokes: Sequence[Stroke], *, class_from: ClassFrom = ClassFrom.name,
                            classes: Sequence[str] = (), plane: int | None = None) -> tuple[np.ndarray, list[str]]:
    """``(annotation image, class names)`` from strokes: 0 = unannotated, ``k`` = ``names[k - 1]``.

    ``classes`` are names that keep their numbers (a base model's); new names follow in order of
    first appearance. ``plane`` (1-based): only strokes on that slice (or on none) count.
    """
    from ..tasks.pixels import strokes_to_annotation

    names = list(classes)
    out = np.zeros(shape, np.uint16)
    H, W = shape
    for s in strokes:
        if plane is not None and s.position not in (0, plane):
            continue
        cls = _class_of(s, class_from)
        if cls not in names:
            names.append(cls)
        value = names.index(cls) + 1
        if s.kind == "area":
            x0, y0 = s.origin
            h, w = s.mask.shape
            ys, xs = slice(max(y0, 0), min(y0 + h, H)), slice(max(x0, 0), min(x0 + w, W))
            sub = s.mask[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
            out[ys, xs][sub] = value
        else:
            drawn = strokes_to_annotation(shape, [(s.xy, value, False, max(1.0, s.width))])
            out[drawn > 0] = value
    return out, names


def _plane(command: str, inputs: CommandInputs):
    """The current image as ``(image, YX or CYX plane, axes, 1-based slice)``."""
    from ..image import rgb_as_channel_axes, to_axes

    image = plain_image(command, inputs)
    data, axes = image.data, rgb_as_channel_axes(image.axes)  # RGB: red, green and blue are 3 channels
    position = 1
    if set(axes) - set("CYX"):  # a stack: train on the current Z/T plane
        c, z, t = inputs.position
        index = {"Z": z - 1, "T": t - 1}
        size = {a: image.data.shape[image.axes.index(a)] if a in image.axes else 1 for a in "CZ"}
        for a in "TZ":
            if a in axes:
                data = np.take(data, index[a], axis=axes.index(a))
                axes = axes.replace(a, "")
        position = (t - 1) * size["Z"] * size["C"] + (z - 1) * size["C"] + c  # ImageJ's stack index
    plane = to_axes(data, axes, "CYX") if "C" in axes else data
    return image, plane, ("CYX" if "C" in axes else "YX"), position


@command("ijtorch Train Pixel Classifier", TrainPixelsParams, verb="train-pixels", rois=True,
         image_options=("label_image",))
def train_pixels_command(inputs: CommandInputs, p: TrainPixelsParams) -> CommandOutputs:
    """Train (or retrain, warm-started) a pixel classifier from ROI Manager strokes or a class label image."""
    from ..models.store import new_user_model_dir
    from ..tasks.pixels import is_pixel_model, train_pixels

    command = "ijtorch Train Pixel Classifier"
    image, plane, axes, position = _plane(command, inputs)
    shape = plane.shape[-2:]
    output = new_user_model_dir(p.name)
    base_classes: list[str] = []
    if p.base_model:
        from ..models.store import load_model

        if not is_pixel_model(p.base_model):
            raise IjtorchError(f"{command}: base_model={p.base_model!r} is not a pixel classifier")
        base_classes = list(load_model(p.base_model).classes)
    if p.source == StrokeSource.rois:
        strokes = inputs.strokes()
        if not strokes:
            raise IjtorchError(f"{command}: the ROI Manager is empty: draw a few strokes per class (lines or areas, "
                               "named by class, e.g. nucleus_1, background_1) and add them with [t]")
        ann, classes = annotation_from_strokes(shape, strokes, class_from=p.class_from, classes=base_classes,
                                               plane=position)
    else:
        lab = inputs.open_image(p.label_image) if p.label_image else None
        if lab is None:
            raise IjtorchError(f"{command}: label_image={p.label_image!r}: no open image has that title")
        if lab.axes != "YX" or lab.data.shape != shape:
            raise IjtorchError(f"{command}: the class label image must be one YX plane of shape {shape}, got "
                               f"axes {lab.axes} and shape {lab.data.shape}")
        ann = np.asarray(lab.data)
        if ann.dtype.kind == "f":
            ann = np.round(ann).astype(np.int64)
        n = int(ann.max()) if ann.size else 0
        given = [c.strip() for c in p.classes.split(",") if c.strip()] if p.classes else []
        classes = given or (base_classes if len(base_classes) >= n else [f"class{k}" for k in range(1, n + 1)])
    try:
        summary = train_pixels([plane], [ann], output=output, axes=axes, classes=classes,
                               base_model=p.base_model or None, steps=p.steps, seed=p.seed,
                               progress=inputs.progress,
                               description=f"pixel classifier trained in ImageJ on {image.title}")
    except ValueError as e:
        raise IjtorchError(f"{command}: {e}") from None
    counts = ", ".join(f"{c} {n}" for c, n in summary["annotated_pixels"].items())
    log = (f"{command}: model '{p.name}' ({', '.join(summary['classes'])}; annotated pixels: {counts}) "
           f"trained in {summary['seconds']:.1f} s, saved to {summary['output']}",)
    if not p.show_result:
        return CommandOutputs(log=log)
    shown = classify_pixels_outputs(image, ClassifyPixelsParams(model=str(output)), progress=inputs.progress)[1]
    return dataclasses.replace(shown, log=log + shown.log)


def classify_pixels_outputs(image, p: ClassifyPixelsParams, *, command: str = "ijtorch Classify Pixels", progress=None):
    """Classify an :class:`ijtorch.image.Image`: ``(PixelClassification, CommandOutputs)``; the class
    image carries the class names (Info and the ``ijtorch.classes`` property), the probability stack
    one ``p_<class>`` label per channel."""
    from ..tasks.pixels import class_areas, classify_pixels

    channel = p.channel - 1 if ("C" in image.axes or "S" in image.axes) else None
    try:
        r = classify_pixels(image.data, image.axes, model=p.model, channel=channel, probabilities=p.probabilities,
                            progress=progress)
    except ValueError as e:
        raise IjtorchError(f"{command}: {e}") from None
    stem = Path(image.title).stem
    info = "\n".join(f"class {k} = {name}" for k, name in enumerate(r.class_names, start=1))
    images = [ImageOutput(r.classes.astype(np.uint16), r.axes, f"{stem}-classes", image.calibration, labels=True,
                          properties={"Info": info, "ijtorch.classes": ",".join(r.class_names)})]
    if r.probabilities is not None:
        images.append(ImageOutput(r.probabilities, "C" + r.axes, f"{stem}-probabilities", image.calibration,
                                  channel_labels=tuple(f"p_{name}" for name in r.class_names)))
    tables = (TableOutput(class_areas(r.classes, r.class_names, calibration=image.calibration)),)
    present = int(len(np.unique(r.classes)))
    status = f"{command}: {present} of {len(r.class_names)} classes ({r.model}, {r.seconds:.2f} s)"
    if r.shift_warning:  # the dataset-shift check, as Segment shows it (Log, status, Ext. values)
        status += " - WARNING: dataset shift, results unreliable (see the Log)"
    log = (f"{command} {image.title}: WARNING {r.shift_warning}",) if r.shift_warning else ()
    values = {"n_classes": len(r.class_names), "shift_warning": r.shift_warning or "",
              "shift_score": -1.0 if r.shift_score is None else round(float(r.shift_score), 4)}
    return r, CommandOutputs(tuple(images), None, tables, status, values, log=log)


@command("ijtorch Classify Pixels", ClassifyPixelsParams)
def classify_pixels_command(inputs: CommandInputs, p: ClassifyPixelsParams) -> CommandOutputs:
    """A class for every pixel: class label image (LUT, class names), optional probabilities, per-class areas."""
    return classify_pixels_outputs(plain_image("ijtorch Classify Pixels", inputs), p, progress=inputs.progress)[1]
