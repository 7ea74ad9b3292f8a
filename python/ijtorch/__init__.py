"""ijtorch: deep learning for microscopy with PyTorch, used from inside Fiji/ImageJ.

Importing ijtorch starts nothing: no JVM, no torch import, no device choice. The JVM starts on
``ijtorch.bridge.start()``; torch is imported by the modules that need it.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "attach"]


def __getattr__(name: str):
    if name == "attach":  # lazy: importing ijtorch starts and imports nothing Java-side
        from .bridge._fiji import attach

        return attach
    raise AttributeError(f"module 'ijtorch' has no attribute {name!r}")
