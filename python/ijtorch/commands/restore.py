"""Augmented-microscopy commands: ``ijtorch Restore``, ``ijtorch Denoise (Noise2Void)``,
``ijtorch Train Restoration`` and ``ijtorch Artificial Labelling``.

Each calls :mod:`ijtorch.tasks.restore` (the same functions the CLI calls) and hands back new 32-bit
images with the input's calibration and hyperstack axes (minus C: one channel is restored). Restore
and Denoise take RGB images too: R, G and B are restored each alone by the same model and come back
as a three-channel 32-bit image (Artificial Labelling, which maps one channel to another, refuses RGB).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..errors import IjtorchError
from .command import command, task_channel
from .outputs import CommandInputs, CommandOutputs, ImageOutput
from .segment import plain_image, refuse_rgb

__all__ = ["restore_options", "RestoreParams", "DenoiseN2VParams", "TrainRestorationParams", "ArtificialLabellingParams"]


def _checked(command: str, inputs: CommandInputs, *, rgb: bool = False):
    """The current image; RGB is refused unless the command restores it per channel (``rgb``)."""
    image = plain_image(command, inputs)
    if not rgb:
        refuse_rgb(command, image)
    return image


def _float_image(data: np.ndarray, axes: str, title: str, calibration):
    return ImageOutput(np.ascontiguousarray(data, np.float32), axes, title, calibration)


def _result_outputs(command: str, image, result, suffix: str):
    stem = Path(image.title).stem
    images = [_float_image(result.restored, result.axes, f"{stem}-{suffix}", image.calibration)]
    if result.uncertainty is not None:
        images.append(_float_image(result.uncertainty, result.axes, f"{stem}-uncertainty", image.calibration))
    if result.error_map is not None:
        images.append(_float_image(result.error_map, result.axes, f"{stem}-error map", image.calibration))
    log = (f"{command}: WARNING {result.shift_warning}",) if result.shift_warning else ()
    return CommandOutputs(images=tuple(images), log=log,
                          status=f"{command}: {result.model} ({result.model_type}, {result.seconds:.2f} s)")


def _channel(image, channel: int) -> int | None:
    return task_channel(channel, image.axes)


# --------------------------------------------------------------------------- Restore
class RestoreParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="restoration model name (care, n2v, n2n or artificial labelling) or model folder")
    channel: int = Field(1, ge=1, description="channel to restore in multi-channel images (1 = first); RGB images: all three, each alone")
    uncertainty: bool = Field(False, description="also show the per-pixel std over 8 flips/rotations (8x slower)")
    error_map: bool = Field(False, description="also show |input - re-degraded result| (SQUIRREL-style error map)")
    tile_size: int = Field(512, ge=16, description="tile size in pixels for tiled prediction")


def restore_options(p: RestoreParams, axes: str) -> dict:
    """The keyword arguments of :func:`ijtorch.tasks.restore.restore` for ``p`` on an image with
    ``axes``: every surface translates the parameters here (1-based channel, overlap from the tile)."""
    return dict(model=p.model, channel=task_channel(p.channel, axes), uncertainty=p.uncertainty,
                error_map=p.error_map, tile_size=p.tile_size, overlap=min(48, p.tile_size // 4))


@command("ijtorch Restore", RestoreParams, verb="restore", remote=True)
def restore_command(inputs: CommandInputs, p: RestoreParams) -> CommandOutputs:
    """Restore the current image with a trained model; optional uncertainty and error maps."""
    from ..tasks.restore import restore

    command = "ijtorch Restore"
    image = _checked(command, inputs, rgb=True)
    result = restore(image.data, image.axes, **restore_options(p, image.axes), progress=inputs.progress,
                     cancel=inputs.cancel)
    return _result_outputs(command, image, result, "restored")


# --------------------------------------------------------------------------- Noise2Void
class N2VMode(str, Enum):
    train = "train on this image"
    apply = "apply saved model"


class DenoiseN2VParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: N2VMode = Field(N2VMode.train, description="train Noise2Void on the current image and apply it, or apply a saved n2v model",
                          json_schema_extra={"surfaces": ["imagej"]})  # the CLI: --model given or not
    model: str = Field("", description="saved n2v model name or folder, when a saved model is applied (mode=apply saved model)")
    channel: int = Field(1, ge=1, description="channel to denoise in multi-channel images (1 = first); RGB images: all three, each alone")
    epochs: int = Field(10, ge=1, description="Noise2Void training epochs, when it is trained here")
    steps: int = Field(50, ge=1, description="Noise2Void training steps per epoch")
    save_as: str = Field("", description="keep the trained model under this name in the user model folder; empty = discard",
                         json_schema_extra={"surfaces": ["imagej"]})  # the CLI: --save-model DIR


def _refuse_n2v_training(p: DenoiseN2VParams) -> None:
    if p.mode == N2VMode.train:
        raise ValueError("ijtorch Denoise (Noise2Void): mode=[train on this image] runs only in-process (a Fiji "
                         "started from Python with ijtorch); on a server use mode=[apply saved model] model=NAME")


@command("ijtorch Denoise (Noise2Void)", DenoiseN2VParams, verb="denoise", remote=True,
         model=lambda p: p.model or None, check_remote=_refuse_n2v_training)
def denoise_n2v_command(inputs: CommandInputs, p: DenoiseN2VParams) -> CommandOutputs:
    """Self-supervised denoising: train Noise2Void on the current image and apply it (or apply a saved model).

    With ``save_as`` the trained model is written to this machine's user model folder.
    """
    from ..models.store import new_user_model_dir
    from ..tasks.restore import restored_axes
    from ..tasks.restore_train import denoise_n2v

    command = "ijtorch Denoise (Noise2Void)"
    image = _checked(command, inputs, rgb=True)
    save_to = None
    if p.mode == N2VMode.apply:
        if not p.model:
            raise IjtorchError("mode=[apply saved model] needs model=[name or folder]")
    elif p.save_as:
        save_to = new_user_model_dir(p.save_as)
    out = denoise_n2v(image.data, image.axes, epochs=p.epochs, steps_per_epoch=p.steps,
                      model=p.model if p.mode == N2VMode.apply else None, save_to=save_to,
                      channel=_channel(image, p.channel), progress=inputs.progress)
    axes = restored_axes(image.axes)
    log = (f"{command}: model '{p.save_as}' saved to {save_to}",) if save_to is not None else ()
    return CommandOutputs(images=(_float_image(out, axes, f"{Path(image.title).stem}-n2v", image.calibration),),
                          log=log)


# --------------------------------------------------------------------------- training
class RestorationKind(str, Enum):
    care = "care"
    n2v = "n2v"
    n2n = "n2n"
    artificial_labelling = "artificial labelling"


class TrainRestorationSource(str, Enum):
    images = "open images"
    folders = "folders"


class TrainRestorationParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: RestorationKind = Field(RestorationKind.care, description="care: low/high SNR pairs; n2v: noisy images only; n2n: pairs of noisy images; artificial labelling: input channel to target channel")
    source: TrainRestorationSource = Field(TrainRestorationSource.images, description="two open images (by title) or two folders of TIFFs with the same names")
    input: str = Field(..., description="title of the input image (noisy / source channel), or a folder")
    target: str = Field("", description="title of the target image (clean / second noisy / label channel), or a folder; empty for n2v")
    name: str = Field("my-restoration", description="name of the new model (saved in the user model folder)")
    epochs: int = Field(20, ge=1, description="training epochs")
    steps: int = Field(50, ge=1, description="steps per epoch")
    patch_size: int = Field(64, ge=16, description="training patch size in pixels (multiple of 4)")


@command("ijtorch Train Restoration", TrainRestorationParams, needs_image=False, image_options=("input", "target"))
def train_restoration_command(inputs: CommandInputs, p: TrainRestorationParams) -> CommandOutputs:
    """Train a CARE / Noise2Void / Noise2Noise / artificial labelling model; selectable by name afterwards."""
    from ..models.store import new_user_model_dir
    from ..tasks.restore_train import train_restoration

    output = new_user_model_dir(p.name)
    kind = p.kind.name
    if kind != "n2v" and not p.target:
        raise IjtorchError(f"kind={p.kind.value} needs target=[title or folder]")
    axes = "YX"
    if p.source == TrainRestorationSource.folders:
        sources = p.input
        targets = (p.target or None) if kind != "n2v" else None
    else:
        arrays = []
        for role, title in (("input", p.input), ("target", p.target if kind != "n2v" else "")):
            if not title:
                continue
            img = inputs.open_image(title)
            if img is None:
                raise IjtorchError(f"{role}={title!r}: no open image has that title")
            if "C" in img.axes or "S" in img.axes:
                raise IjtorchError(f"{role}={title!r} has axes {img.axes}; use single-channel images (split channels first)")
            arrays.append(img)
        if len(arrays) == 2 and arrays[0].axes != arrays[1].axes:
            raise IjtorchError(f"input has axes {arrays[0].axes} but target has {arrays[1].axes}")
        axes = arrays[0].axes
        sources = arrays[0].data
        targets = arrays[1].data if len(arrays) == 2 else None
    summary = train_restoration(kind, sources, targets, output=output, axes=axes, epochs=p.epochs,
                                steps_per_epoch=p.steps, patch_size=p.patch_size, progress_bar=False,
                                progress=inputs.progress)
    return CommandOutputs(log=(f"ijtorch Train Restoration: {kind} model '{p.name}' saved to {summary['output']} "
                               f"(validation loss {summary['first_val_loss']:.4g} -> {summary['best_val_loss']:.4g})",))


# --------------------------------------------------------------------------- artificial labelling
class ArtificialLabellingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., description="artificial labelling model name or folder")
    channel: int = Field(1, ge=1, description="input channel (e.g. transmitted light) in multi-channel images (1 = first)")
    uncertainty: bool = Field(False, description="also show the per-pixel std over 8 flips/rotations (8x slower)")
    tile_size: int = Field(512, ge=16, description="tile size in pixels for tiled prediction")


@command("ijtorch Artificial Labelling", ArtificialLabellingParams, remote=True)
def artificial_labelling_command(inputs: CommandInputs, p: ArtificialLabellingParams) -> CommandOutputs:
    """Predict a label channel (e.g. a nuclear stain) from another channel with a trained model."""
    from ..tasks.restore import _load, restore

    command = "ijtorch Artificial Labelling"
    net = _load(p.model, "auto")
    if net.model_type != "artificial_labelling":
        raise IjtorchError(f"model={p.model!r} has model_type {net.model_type!r}; "
                           "use ijtorch Restore for care/n2v/n2n models")
    image = _checked(command, inputs)
    result = restore(image.data, image.axes, model=net, channel=_channel(image, p.channel),
                     uncertainty=p.uncertainty, tile_size=p.tile_size, overlap=min(48, p.tile_size // 4),
                     progress=inputs.progress)
    return _result_outputs(command, image, result, "label")
