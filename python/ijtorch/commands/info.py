"""Macro functions about ijtorch itself: ``Ext.ijtorchVersion``, ``Ext.ijtorchTorchDevice``."""

from __future__ import annotations

from .functions import macro_function


@macro_function("ijtorchVersion", remote=True)
def ijtorch_version() -> str:
    """Ext.ijtorchVersion(): the ijtorch version string."""
    import ijtorch

    return ijtorch.__version__


@macro_function("ijtorchTorchDevice", remote=True)
def ijtorch_torch_device() -> str:
    """Ext.ijtorchTorchDevice(): the device models run on by default (cuda, mps or cpu)."""
    from ..models.device import default_device

    return str(default_device())
