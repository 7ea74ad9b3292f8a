"""bioimage.io model zoo, both ways.

- :func:`export_bioimageio` (``ijtorch export-bioimageio MODEL OUT.zip``): an ijtorch model folder →
  a bioimage.io package (format 0.5, TorchScript + ``pytorch_state_dict`` weights), validated with
  bioimageio.spec and tested with bioimageio.core.
- :func:`import_bioimageio` (``ijtorch import-bioimageio PACKAGE``): a local package → a registered
  ijtorch model that ``segment()`` / ``restore()`` / ``classify()`` run. Nothing is downloaded and
  nothing arbitrary is unpickled: TorchScript archives, or tensor-only state dicts
  (``torch.load(weights_only=True)``) of ijtorch's own architectures.

bioimageio.spec / bioimageio.core are imported only by export, import and validation (extra
``ijtorch[bioimageio]``); running an imported model needs torch only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bioimageio", "import_bioimageio", "check_package"]


def __getattr__(name: str) -> Any:
    if name == "export_bioimageio":
        from .export import export_bioimageio

        return export_bioimageio
    if name == "import_bioimageio":
        from .package_import import import_bioimageio

        return import_bioimageio
    if name == "check_package":
        from .validate import check_package

        return check_package
    raise AttributeError(name)
