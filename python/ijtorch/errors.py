"""Exception types shared by every layer, so callers can tell failure stages apart."""

__all__ = ["IjtorchError", "BridgeError", "MacroError", "ModelError"]


class IjtorchError(Exception):
    """Base class of every error ijtorch raises on purpose."""


class BridgeError(IjtorchError):
    """Java, ImageJ or the shim is missing or failed to start; the message names the fix."""


class MacroError(IjtorchError):
    """An ImageJ macro failed; ``str(error)`` carries ImageJ's message."""


class ModelError(IjtorchError):
    """A model folder is missing, malformed, of an unknown schema version or fails to load."""
