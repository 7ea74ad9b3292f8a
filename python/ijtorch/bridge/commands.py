"""The built-in ijtorch commands and macro functions: thin adapters from ImageJ to ``tasks``.

Each handler converts the current ImagePlus to numpy, calls one task function (the same one the
CLI and the server call) and hands the result back as ImageJ objects.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import ijtorch

from ._legacy import CommandContext, command, macro_function

# ---------------------------------------------------------------- foundation


class NormalizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float = Field(1.0, ge=0, le=100, description="percentile mapped to 0")
    high: float = Field(99.8, ge=0, le=100, description="percentile mapped to 1")
    per_plane: bool = Field(False, description="normalize every Z/T plane separately (channels always are)")
    clip: bool = Field(False, description="clip the result to [0, 1]")


def normalize_outputs(inputs, p: NormalizeParams):
    """The normalized current image as :class:`~ijtorch.commands.outputs.CommandOutputs` (no JVM needed)."""
    import numpy as np

    from ..core.normalize import normalize
    from ..commands.outputs import CommandOutputs, ImageOutput
    image = inputs.image
    out = normalize(image.data, image.axes, low=p.low, high=p.high, per_plane=p.per_plane, clip=p.clip)
    return CommandOutputs(images=(ImageOutput(np.asarray(out, np.float32), image.axes, f"{image.title}-normalized",
                                              image.calibration),))


@command("ijtorch Percentile Normalize", params=NormalizeParams)
def percentile_normalize_command(ctx: CommandContext, p: NormalizeParams) -> None:
    """Percentile normalization into a new 32-bit image (the preprocessing models use)."""
    from .apply import apply_outputs, imagej_inputs
    apply_outputs(normalize_outputs(imagej_inputs(ctx.current_image()), p))


@macro_function("ijtorchVersion", remote=True)
def ijtorch_version() -> str:
    """Ext.ijtorchVersion(): the ijtorch version string."""
    return ijtorch.__version__


@macro_function("ijtorchTorchDevice", remote=True)
def ijtorch_torch_device() -> str:
    """Ext.ijtorchTorchDevice(): the device models run on by default (cuda, mps or cpu)."""
    from ..models.device import default_device

    return str(default_device())
from . import _segment_commands  # noqa: E402,F401  (registers the segmentation commands)
from . import _track_commands  # noqa: E402,F401
from . import _classify_commands  # noqa: E402,F401
from . import _restore_commands  # noqa: E402,F401
from . import _pixel_commands  # noqa: E402,F401
from . import _bioimageio_commands  # noqa: E402,F401
