"""ijtorch: deep learning for microscopy with PyTorch, used from inside Fiji/ImageJ.

Importing ijtorch starts nothing: no JVM, no torch import, no device choice. The JVM starts on
``ijtorch.bridge.start()``; torch is imported by the modules that need it.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
