"""Progress events shared by training and inference, and a safe way to emit them.

Listeners get a :class:`ProgressEvent`; an exception raised by a listener is logged and swallowed
so that a broken UI can never stop a computation (house rule 9).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["ProgressEvent", "ProgressCallback", "emit", "TextProgressBar"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    Attributes
    ----------
    phase : str
        What is running, e.g. ``"train"``, ``"validate"``, ``"epoch"``, ``"tile"``, ``"nms"``.
    i : int
        Steps done in this phase (0-based count of finished steps).
    n : int
        Total steps in this phase (0 if unknown).
    message : str
        Human-readable detail.
    metrics : dict
        Optional numbers (loss, learning rate, validation metrics).
    """

    phase: str
    i: int
    n: int
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[ProgressEvent], None]


def emit(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``progress`` if given; listener errors are logged, never raised."""
    if progress is None:
        return
    try:
        progress(event)
    except Exception:  # noqa: BLE001 - a listener must never stop the computation
        log.warning("progress listener raised; ignoring it", exc_info=True)


class TextProgressBar:
    """Minimal text progress bar for terminals (written to ``stream``, default stderr)."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self._t0 = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase != "train" or event.n <= 0:
            if event.phase == "epoch":
                self.stream.write(f"\r{event.message}\n")
                self.stream.flush()
                self._t0 = time.monotonic()
            return
        frac = min(1.0, event.i / event.n)
        done = int(self.width * frac)
        loss = event.metrics.get("loss")
        tail = f" loss {loss:.4f}" if isinstance(loss, float) else ""
        self.stream.write(
            f"\r[{'#' * done}{'.' * (self.width - done)}] {event.i}/{event.n} "
            f"{time.monotonic() - self._t0:5.0f}s{tail}"
        )
        self.stream.flush()
