"""The built-in ijtorch commands and macro functions: thin adapters from ImageJ to ``tasks``.

Each handler converts the current ImagePlus to numpy, calls one task function (the same one the
CLI and the server call) and hands the result back as ImageJ objects.
"""

from __future__ import annotations

import ijtorch

from ._commands import macro_function


@macro_function("ijtorchVersion")
def ijtorch_version() -> str:
    """Ext.ijtorchVersion(): the ijtorch version string."""
    return ijtorch.__version__


@macro_function("ijtorchTorchDevice")
def ijtorch_torch_device() -> str:
    """Ext.ijtorchTorchDevice(): the device models run on by default (cuda, mps or cpu)."""
    from ..models.device import default_device

    return str(default_device())
