"""``ijtorch Percentile Normalize``: the preprocessing the models use, as a new 32-bit image."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .command import command
from .outputs import CommandInputs, CommandOutputs, ImageOutput
from .segment import plain_image

__all__ = ["NormalizeParams", "normalize_options"]


class NormalizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float = Field(1.0, ge=0, le=100, description="percentile mapped to 0")
    high: float = Field(99.8, ge=0, le=100, description="percentile mapped to 1")
    per_plane: bool = Field(False, description="normalize every Z/T plane separately (channels always are)")
    clip: bool = Field(False, description="clip the result to [0, 1]")


def normalize_options(p: NormalizeParams) -> dict:
    """The keyword arguments of :func:`ijtorch.core.normalize.normalize` for ``p``."""
    return dict(low=p.low, high=p.high, per_plane=p.per_plane, clip=p.clip)


@command("ijtorch Percentile Normalize", NormalizeParams, verb="normalize", remote=True, model=lambda p: None)
def normalize_command(inputs: CommandInputs, p: NormalizeParams) -> CommandOutputs:
    """Percentile normalization into a new 32-bit image (the preprocessing models use)."""
    from ..core.normalize import normalize

    image = plain_image("ijtorch Percentile Normalize", inputs)
    out = normalize(image.data, image.axes, **normalize_options(p))
    return CommandOutputs(images=(ImageOutput(np.asarray(out, np.float32), image.axes, f"{image.title}-normalized",
                                              image.calibration),))
