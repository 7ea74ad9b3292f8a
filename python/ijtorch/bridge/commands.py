"""The built-in ijtorch commands and macro functions: thin adapters from ImageJ to ``tasks``.

Each handler converts the current ImagePlus to numpy, calls one task function (the same one the
CLI and the server call) and hands the result back as ImageJ objects.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import ijtorch

from ._commands import CommandContext, command, macro_function

# ---------------------------------------------------------------- foundation


class NormalizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    low: float = Field(1.0, ge=0, le=100, description="percentile mapped to 0")
    high: float = Field(99.8, ge=0, le=100, description="percentile mapped to 1")
    per_plane: bool = Field(False, description="normalize every Z/T plane separately (channels always are)")
    clip: bool = Field(False, description="clip the result to [0, 1]")


@command("ijtorch Percentile Normalize", params=NormalizeParams)
def percentile_normalize_command(ctx: CommandContext, p: NormalizeParams) -> None:
    """Percentile normalization into a new 32-bit image (the preprocessing models use)."""
    from ..tasks.normalize import normalize
    from ._convert import imageplus_to_numpy, numpy_to_imageplus

    imp = ctx.current_image()
    image = imageplus_to_numpy(imp)
    out = normalize(image.data, image.axes, low=p.low, high=p.high, per_plane=p.per_plane, clip=p.clip)
    result = numpy_to_imageplus(out, image.axes, title=f"{image.title}-normalized", calibration=image.calibration)
    result.resetDisplayRange()
    result.show()


@macro_function("ijtorchVersion")
def ijtorch_version() -> str:
    """Ext.ijtorchVersion(): the ijtorch version string."""
    return ijtorch.__version__


@macro_function("ijtorchTorchDevice")
def ijtorch_torch_device() -> str:
    """Ext.ijtorchTorchDevice(): the device models run on by default (cuda, mps or cpu)."""
    from ..models.device import default_device

    return str(default_device())
from . import _segment_commands  # noqa: E402,F401  (registers the segmentation commands)
from . import _track_commands  # noqa: E402,F401
from . import _classify_commands  # noqa: E402,F401
from . import _restore_commands  # noqa: E402,F401
