"""Classification commands: ``ijtorch Classify``, ``ijtorch Train Classifier``,
``ijtorch Embed``, plus ``Ext.ijtorchClassifierClasses``.

Objects come from the ROI Manager (or a label image) as crops
(:func:`ijtorch.tasks.classify.object_crops`); results go back as a table and class-coloured ROIs.

Training from ROIs: the class of a ROI is its name up to a final ``_``/``-``/space/``.`` followed by
digits (``mitotic_001`` → ``mitotic``, ``S_phase_12`` → ``S_phase``, ``G2`` → ``G2``), or its ROI
Manager group (the group's name where ImageJ has one, else ``group<N>``). Crop settings (size,
scale by object, mask channel) are saved in the model config (``crops``) and reused by Classify and
Embed.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import IjtorchError
from .command import command
from .functions import macro_function
from .outputs import CommandInputs, CommandOutputs, RoiOutput, RoiStyle, TableOutput

__all__ = ["ClassifyParams", "TrainClassifierParams", "EmbedParams", "class_from_roi_name", "class_colours"]


class ObjectSource(str, Enum):
    rois = "ROI Manager"
    labels = "label image"
    whole = "whole image"


class ClassifyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="classifier name (see Ext.ijtorchListModels) or model folder")
    source: ObjectSource = Field(ObjectSource.rois, description="objects from the ROI Manager or a label image, or the whole image as one item",
                                 json_schema_extra={"surfaces": ["imagej"]})  # CLI and server take the items
    label_image: str = Field("", description="title of the label image (source=label image)", json_schema_extra={"surfaces": ["imagej"]})


class ClassFrom(str, Enum):
    name = "ROI name prefix"
    group = "ROI group"


class TrainSource(str, Enum):
    image = "current image + ROI Manager"
    folder = "folder"


class Weighting(str, Enum):
    balanced = "balanced"
    sampling = "sampling"
    none = "none"


class TrainClassifierParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: TrainSource = Field(TrainSource.image, description="ROIs on the current image, or a folder with one sub-folder of images (TIFF, PNG, ...) per class")
    folder: str = Field("", description="folder with class sub-folders (source=folder)")
    class_from: ClassFrom = Field(ClassFrom.name, description="class of a ROI: its name prefix (mitotic_001 → mitotic) or its ROI Manager group")
    name: str = Field("my-classifier", description="name of the new model (saved in the user model folder)")
    base_model: str = Field("", description="fine-tune from this classifier (backbone reused, new head); empty = from scratch")
    epochs: int = Field(100, ge=1, description="training epochs")
    size: int = Field(40, ge=8, description="crop size in pixels around each ROI")
    scale_by_object: bool = Field(False, description="crop 1.25 × the object's extent and resample it to the crop size")
    mask_channel: bool = Field(False, description="add the object's mask as an extra channel")
    class_weighting: Weighting = Field(Weighting.sampling, description="class-balanced batches, balanced loss weights or none")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="held-out fraction per class for metrics and calibration")
    seed: int = Field(0, description="random seed (split, initialisation, batches)")


class EmbedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="classifier whose penultimate features are the embedding")
    source: ObjectSource = Field(ObjectSource.rois, description="objects from the ROI Manager or a label image, or the whole image",
                                 json_schema_extra={"surfaces": ["imagej"]})  # the CLI takes the items
    label_image: str = Field("", description="title of the label image (source=label image)", json_schema_extra={"surfaces": ["imagej"]})
    csv: str = Field("", description="also write the features to this .csv (or .parquet with pyarrow) file; empty = none",
                     json_schema_extra={"surfaces": ["imagej"]})  # the CLI writes features.csv in --output
    clusters: int = Field(0, ge=0, description="k-means clusters to add as a column with a 2-D PCA projection; 0 = none")


_NAME_SUFFIX = re.compile(r"^(.*?)[_\-\s.]+\d+$")


def class_from_roi_name(name: str) -> str:
    """Class of a ROI named ``<class><sep><digits>`` or ``<class>`` (see module docstring)."""
    m = _NAME_SUFFIX.match(name.strip())
    cls = (m.group(1) if m else name).strip()
    if not cls or not cls[0].isalpha():
        raise IjtorchError(f"ROI name {name!r} does not start with a class name (e.g. mitotic_001); rename the "
                           "ROIs or use class_from=[ROI group]")
    return cls


def class_colours(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 RGB, one distinct colour per class (glasbey, no black)."""
    from ..core.colors import glasbey_lut

    return glasbey_lut(max(n + 1, 2))[1:n + 1]


# ----------------------------------------------------------------------------- helpers

def _single_plane(command: str, image, model=None) -> Any:
    """The current image as one ``YX``/``CYX`` plane; an RGB image (``S`` axis) as the model needs it
    (:func:`rgb_for_model`)."""
    if image is None:
        raise IjtorchError(f"{command} needs an open image (open one or select its window)")
    if "S" in image.axes:
        image = rgb_for_model(command, image, model)
    if set(image.axes) - set("CYX"):
        raise IjtorchError(f"{command}: needs a 2-D image (YX or CYX), got axes {image.axes}; duplicate one "
                           "slice/frame first")
    return image


def rgb_for_model(command: str, image, model=None) -> Any:
    """An RGB image (``S`` axis) for a classifier: its red, green and blue as three channels for a
    model trained on 3 channels (or for training, ``model=None``: a model trained on RGB crops);
    one grey channel for a 1-channel model, by luminance ``0.299 R + 0.587 G + 0.114 B`` (ImageJ's
    weighted RGB conversion, :func:`ijtorch.tasks.segment.rgb_to_grey`); any other channel count
    is a one-line error."""
    wanted = None if model is None else int(model.input_shape[0])
    if "C" in image.axes:
        raise IjtorchError(f"{command}: {image.title} has both channels and RGB samples; split it first")
    if wanted == 1:
        from ..tasks.segment import rgb_to_grey

        grey, axes = rgb_to_grey(image.data, image.axes, "luminance")
        return image.with_data(grey, axes)
    if wanted not in (None, 3) or image.data.shape[image.axes.index("S")] != 3:
        raise IjtorchError(f"{command}: {image.title} is an RGB image but the classifier was trained on {wanted} "
                           "channels; RGB images go to 1-channel (as grey) or 3-channel (as R, G, B) classifiers")
    si = image.axes.index("S")
    return image.with_data(np.moveaxis(image.data, si, 0), "C" + image.axes.replace("S", ""))


def _crop_settings(model) -> dict[str, Any]:
    crops = dict(model.config.get("crops") or {})
    crops.setdefault("size", int(model.input_shape[-1]))
    crops.setdefault("scale_by_object", False)
    crops.setdefault("mask_channel", False)
    return crops


def _objects(command: str, inputs, source: ObjectSource, label_title: str, crops: dict[str, Any]):
    """``(items (N, C, s, s), object names, ROI Manager indices or None, label map or None)``."""
    from ..tasks.classify import object_crops, object_ids

    image = inputs.image
    if source == ObjectSource.whole:
        return to_items(image), [image.title or "image"], None, None
    if source == ObjectSource.rois:
        from ..tasks.rasterize import polygons_to_labels

        try:
            ann = inputs.rois()
        except ValueError as e:
            raise IjtorchError(f"{command}: {e}") from None
        labels = polygons_to_labels(ann.polygons, image.data.shape[-2:])
        present = set(object_ids(labels).tolist())
        missing = [ann.names[i] for i in range(len(ann.names)) if i + 1 not in present]
        if missing:
            raise IjtorchError(f"{command}: ROIs {missing[:5]} cover no pixel of the image (outside it or hidden "
                               "under later ROIs)")
        names, indices = list(ann.names), list(range(len(ann.names)))
    else:
        lab = inputs.open_image(label_title) if label_title else None
        if lab is None:
            raise IjtorchError(f"{command}: label_image={label_title!r}: no open image has that title")
        if lab.axes != "YX" or lab.data.shape != image.data.shape[-2:]:
            raise IjtorchError(f"{command}: the label image must be one YX plane of shape {image.data.shape[-2:]}, "
                               f"got axes {lab.axes} and shape {lab.data.shape}")
        labels = lab.data.astype(np.int64) if lab.data.dtype.kind == "f" else lab.data
        ids = object_ids(labels)
        names, indices = [str(int(i)) for i in ids], None
    items = object_crops(image.data, image.axes, labels, size=int(crops["size"]),
                         scale_by_object=bool(crops["scale_by_object"]), mask_channel=bool(crops["mask_channel"]))
    return items, names, indices, labels


def to_items(image) -> np.ndarray:
    """One whole-image item ``(1, C, Y, X)``."""
    from ..image import to_axes

    return to_axes(image.data, image.axes, "CYX")[None]


def _load_classifier(command: str, name: str):
    from ..models.classifier import ClassifierModel
    from ..models.store import load_model

    model = load_model(name)
    if not isinstance(model, ClassifierModel):
        raise IjtorchError(f"{command}: model={name!r} is not a classifier")
    return model


# ----------------------------------------------------------------------------- commands

@command("ijtorch Classify", ClassifyParams, verb="classify", remote=True, rois=True, image_options=("label_image",))
def classify_command(inputs: CommandInputs, p: ClassifyParams) -> CommandOutputs:
    """Classify objects (ROI Manager or label image) or the whole image; ResultsTable + class-coloured ROIs."""
    from ..tasks.classify import classify
    from ..tasks.outlines import outlines

    command = "ijtorch Classify"
    model = _load_classifier(command, p.model)
    inputs = _with_image(inputs, _single_plane(command, inputs.image, model))
    items, names, indices, labels = _objects(command, inputs, p.source, p.label_image, _crop_settings(model))
    result = classify(items, model=model)
    report = result["shift"]
    classes = result["classes"]
    columns: dict[str, Any] = {"object": np.asarray(names, dtype=object),
                               "class": np.asarray(result["class"], dtype=object),
                               "probability": result["confidence"].astype(np.float64)}
    for k, c in enumerate(classes):
        columns[f"p_{c}"] = result["probabilities"][:, k].astype(np.float64)
    if "shift_score" in result:  # per item; above shift_threshold: unlike the training items
        columns["shift_score"] = np.asarray(result["shift_score"], np.float64)
    rois = None
    if p.source == ObjectSource.labels and labels is not None and len(names):
        out = outlines(labels, "YX")
        rois = RoiOutput(out, reset=True)
        order = {int(lab): i for i, lab in enumerate(np.asarray(out.labels).tolist())}
        indices = [order[int(n)] for n in names]
    style = None
    if indices is not None:
        index = np.asarray(result["class_index"], dtype=np.int64)
        style = RoiStyle(np.asarray(indices, dtype=np.int64), class_colours(len(classes))[index],
                         {"class": [classes[int(k)] for k in index]})
    counts = ", ".join(f"{c}: {int((result['class_index'] == k).sum())}" for k, c in enumerate(classes))
    status = f"{command}: {len(items)} items ({counts})"
    if report.warning:
        status += " - WARNING: dataset shift, results unreliable (see the Log)"
    values = {"n_items": len(items), "shift_score": -1.0 if report.score is None else round(float(report.score), 4),
              "shift_warning": report.warning or ""}
    log = (f"{command} {inputs.image.title}: WARNING {report.warning}",) if report.warning else ()
    return CommandOutputs(rois=rois, roi_style=style, tables=(TableOutput(columns),), status=status, values=values,
                          log=log)


def _with_image(inputs: CommandInputs, image) -> CommandInputs:
    """``inputs`` with its image replaced (an RGB image converted for the model)."""
    from dataclasses import replace

    return inputs if image is inputs.image else replace(inputs, image=image)


@command("ijtorch Train Classifier", TrainClassifierParams, needs_image=False, rois=True)
def train_classifier_command(inputs: CommandInputs, p: TrainClassifierParams) -> CommandOutputs:
    """Train or fine-tune a classifier from named/grouped ROIs on the current image or from class folders."""
    from ..models.store import new_user_model_dir
    from ..tasks.classify import object_crops, train_classifier
    from ..tasks.rasterize import polygons_to_labels

    command = "ijtorch Train Classifier"
    output = new_user_model_dir(p.name)
    crops = {"size": p.size, "scale_by_object": p.scale_by_object, "mask_channel": p.mask_channel}
    common = dict(output=output, base_model=p.base_model or None, epochs=p.epochs,
                  class_weighting=p.class_weighting.value, val_fraction=p.val_fraction, seed=p.seed,
                  progress=inputs.progress)
    if p.source == TrainSource.folder:
        if not p.folder or not Path(p.folder).is_dir():
            raise IjtorchError(f"{command}: source=folder needs folder=[a folder with class sub-folders], got {p.folder!r}")
        summary = train_classifier(p.folder, **common)
    else:
        image = _single_plane(command, inputs.image)  # RGB: trains a 3-channel (R, G, B) classifier
        try:
            ann = inputs.rois()
        except ValueError as e:
            raise IjtorchError(f"{command}: {e}") from None
        if p.class_from == ClassFrom.name:
            labels = [class_from_roi_name(n) for n in ann.names]
        else:
            if (ann.groups == 0).any():
                bad = [ann.names[i] for i in np.flatnonzero(ann.groups == 0)[:5]]
                raise IjtorchError(f"{command}: ROIs {bad} have no group; set groups in the ROI Manager "
                                   "(Properties) or use class_from=[ROI name prefix]")
            labels = [ann.group_names.get(int(g)) or f"group{int(g)}" for g in ann.groups]
        if len(set(labels)) < 2:
            raise IjtorchError(f"{command}: the ROIs name only the class(es) {sorted(set(labels))}; at least 2 "
                               "classes are needed")
        label_map = polygons_to_labels(ann.polygons, image.data.shape[-2:])
        items = object_crops(image.data, image.axes, label_map, size=p.size, scale_by_object=p.scale_by_object,
                             mask_channel=p.mask_channel)
        present = set(np.unique(label_map).tolist())
        keep = [i for i in range(len(labels)) if i + 1 in present]
        if len(keep) < len(labels):
            raise IjtorchError(f"{command}: {len(labels) - len(keep)} ROIs cover no pixel of the image")
        summary = train_classifier(items, np.asarray(labels, dtype=object), names=list(ann.names),
                                   extra_config={"crops": crops}, **common)
    m = summary.get("metrics") or {}
    ba = m.get("balanced_accuracy")
    return CommandOutputs(log=(f"{command}: classifier '{p.name}' ({', '.join(summary['classes'])}) saved to "
                               f"{summary['output']}" + (f"; held-out balanced accuracy {ba:.3f} on "
                                                         f"{summary['n_val']} items" if ba is not None else ""),))


@command("ijtorch Embed", EmbedParams, verb="embed", rois=True, image_options=("label_image",))
def embed_command(inputs: CommandInputs, p: EmbedParams) -> CommandOutputs:
    """Classifier embeddings of objects or the whole image into a ResultsTable (and optionally a CSV)."""
    from ..tasks.classify import cluster_embeddings, embed, write_features

    command = "ijtorch Embed"
    model = _load_classifier(command, p.model)
    inputs = _with_image(inputs, _single_plane(command, inputs.image, model))
    items, names, _, _ = _objects(command, inputs, p.source, p.label_image, _crop_settings(model))
    features = embed(items, model=model)
    extra: dict[str, Any] = {"object": np.asarray(names, dtype=object)}
    if p.clusters:
        if p.clusters > len(items):
            raise IjtorchError(f"{command}: clusters={p.clusters} is more than the {len(items)} objects")
        cl = cluster_embeddings(features, k=p.clusters)
        extra.update({"cluster": cl.labels, "pc1": cl.projection[:, 0], "pc2": cl.projection[:, 1]})
    if p.csv:
        write_features(p.csv, features, columns=extra)
    columns = dict(extra)
    columns.update({f"f{i}": features[:, i].astype(np.float64) for i in range(features.shape[1])})
    return CommandOutputs(tables=(TableOutput(columns, title="Embeddings"),))


@macro_function("ijtorchClassifierClasses", remote=True)
def ijtorch_classifier_classes(model: str) -> str:
    """Ext.ijtorchClassifierClasses(model): comma-separated class names of a classifier."""
    from ..models.classifier import ClassifierModel
    from ..models.store import load_model

    m = load_model(model)
    if not isinstance(m, ClassifierModel):
        raise IjtorchError(f"model={model!r} is not a classifier")
    return ",".join(m.classes)
