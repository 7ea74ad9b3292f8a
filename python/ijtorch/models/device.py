"""Device choice, made explicitly by callers (never at import)."""

from __future__ import annotations

import logging

__all__ = ["default_device", "resolve_device"]

log = logging.getLogger(__name__)


def default_device() -> str:
    """Best available device: ``cuda``, then ``mps``, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: str | None) -> str:
    """``None`` or ``"auto"`` picks :func:`default_device`; anything else is validated."""
    if device in (None, "", "auto"):
        chosen = default_device()
    else:
        chosen = str(device)
        if chosen.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    log.info("using device %s", chosen)
    return chosen
