"""Progress events shared by training and inference, a safe way to emit them, and reporters.

Listeners get a :class:`ProgressEvent`; an exception raised by a listener is logged and swallowed
so that a broken UI can never stop a computation (house rule 9). Inside ImageJ the bridge turns
events into the status/progress bar; on the command line :class:`CountProgress` (files done of n)
and :class:`TrainingProgress` (epochs/steps with loss and time left) show them with tqdm: a bar
on a terminal, plain lines at most every ``interval`` seconds otherwise (CI logs, pipes).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["ProgressEvent", "ProgressCallback", "emit", "CountProgress", "TrainingProgress", "PhaseProgress",
           "TextProgressBar", "is_terminal"]

log = logging.getLogger(__name__)

#: Seconds between two plain progress lines when the output is not a terminal.
PLAIN_INTERVAL_S = 10.0


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


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal (where a redrawn bar makes sense)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _format_postfix(postfix: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items())


class CountProgress:
    """``done of total`` progress (e.g. files of a batch): a tqdm bar on a terminal, plain lines otherwise.

    Parameters
    ----------
    desc : str
        What is counted, shown first (e.g. ``"segment"``).
    total : int or None
        Number of items (None: unknown).
    unit : str
        Unit shown in rates (``"file"``, ``"step"``).
    stream : file, optional
        Where to write (default stderr).
    terminal : bool, optional
        Force bar (True) or plain lines (False); default: whether ``stream`` is a terminal.
    interval : float
        Plain mode: seconds between two lines (the first and the last are always written).
    """

    def __init__(self, desc: str, total: int | None, *, unit: str = "file", stream: Any = None,
                 terminal: bool | None = None, interval: float = PLAIN_INTERVAL_S, initial: int = 0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.desc, self.total, self.unit, self.interval = desc, total, unit, interval
        self.n = initial
        self.postfix: dict[str, Any] = {}
        self._t0 = time.monotonic()
        self._last_line = -float("inf")
        self._last_n: int | None = None
        self._bar = None
        if terminal if terminal is not None else is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True, leave=True,
                             initial=initial)

    def reset(self, total: int | None = None, n: int = 0) -> None:
        """Start over with a new total (e.g. the steps of the next epoch)."""
        self.total, self.n = total, n
        if self._bar is not None:
            self._bar.reset(total=total)
            self._bar.update(n)

    def update(self, n: int = 1, *, to: int | None = None, **postfix: Any) -> None:
        """Advance by ``n`` (or to ``to``); ``postfix`` values (loss, ...) are shown after the counts."""
        step = (to - self.n) if to is not None else n
        self.n += step
        if postfix:
            self.postfix.update(postfix)
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix_str(_format_postfix(self.postfix), refresh=False)
            self._bar.update(step)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval or (self.total is not None and self.n >= self.total):
            self._write_line(now)

    def _write_line(self, now: float) -> None:
        from tqdm import tqdm

        self._last_line, self._last_n = now, self.n
        line = tqdm.format_meter(self.n, self.total, now - self._t0, prefix=self.desc, unit=self.unit,
                                 postfix=_format_postfix(self.postfix) or None, ncols=0)
        self.stream.write(line + "\n")
        self.stream.flush()

    def write(self, text: str, *, file: Any = None) -> None:
        """Print a line without breaking the bar (stdout by default)."""
        target = file if file is not None else sys.stdout
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=target)
        else:
            target.write(text + "\n")
            target.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._last_n is not None and self._last_n != self.n:  # plain lines end with the final count
            self._write_line(time.monotonic())

    def __enter__(self) -> "CountProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TrainingProgress:
    """A :data:`ProgressCallback` for :class:`~ijtorch.train.trainer.Trainer` events.

    Shows the steps of the running epoch with the mean loss and the time left (tqdm bar on a
    terminal, plain lines otherwise) and one line per finished epoch with its metrics and the
    estimated time left for the whole training. Other phases (threshold tuning, ...) are shown as
    plain status lines. ``steps_per_epoch`` is the bar's total when the events do not carry one
    (the trainer's batches often come from a generator of unknown length).
    """

    def __init__(self, desc: str = "train", *, steps_per_epoch: int | None = None, stream: Any = None,
                 terminal: bool | None = None, interval: float = PLAIN_INTERVAL_S) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.desc = desc
        self.steps_per_epoch = steps_per_epoch
        self.terminal = terminal if terminal is not None else is_terminal(self.stream)
        self.interval = interval
        self._steps: CountProgress | None = None
        self._t0 = time.monotonic()
        self._epochs_seen = 0
        self._last_status = -float("inf")

    def __call__(self, event: ProgressEvent) -> None:
        if event.phase == "train":
            if self._steps is None:
                total = event.n or self.steps_per_epoch or None
                self._steps = CountProgress(f"{self.desc} epoch {self._epochs_seen + 1}", total, unit="step",
                                            stream=self.stream, terminal=self.terminal, interval=self.interval)
            loss = event.metrics.get("loss")
            self._steps.update(to=event.i, **({"loss": float(loss)} if isinstance(loss, (int, float)) else {}))
        elif event.phase == "epoch":
            self._end_epoch(event)
        elif event.n > 0 and event.phase not in ("validate", "tile", "plane"):
            now = time.monotonic()
            if now - self._last_status >= self.interval or event.i >= event.n:
                self._last_status = now
                self._print(f"{self.desc}: {event.phase} {event.i}/{event.n} {event.message}".rstrip())

    def _end_epoch(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if self._steps is not None:
            self._steps.close()
            self._steps = None
        self._epochs_seen += 1
        elapsed = time.monotonic() - self._t0
        left = ""
        if event.n > 0 and event.i > 0:  # epochs still to run at the mean pace so far
            left = f", about {tqdm.format_interval(elapsed / self._epochs_seen * max(event.n - event.i, 0))} left"
        self._print(f"{self.desc}: {event.message or f'epoch {event.i}/{event.n}'} "
                    f"[{tqdm.format_interval(elapsed)}{left}]")

    def _print(self, text: str) -> None:
        if self.terminal:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()
            self._steps = None


class PhaseProgress:
    """A :data:`ProgressCallback` showing ``i of n`` of chosen phases (e.g. the frames a long
    movie is segmented in, then linked): one :class:`CountProgress` per phase, labelled."""

    def __init__(self, phases: dict[str, str], *, stream: Any = None, terminal: bool | None = None,
                 interval: float = PLAIN_INTERVAL_S) -> None:
        self.phases = phases  # event phase -> what to call it
        self.stream, self.terminal, self.interval = stream, terminal, interval
        self._bars: dict[str, CountProgress] = {}

    def __call__(self, event: ProgressEvent) -> None:
        for phase in [p for p in self._bars if p != event.phase]:  # a new phase: the earlier ones are done
            done = self._bars.pop(phase)
            done.update(to=done.total or done.n)
            done.close()
        label = self.phases.get(event.phase)
        if label is None or event.n <= 0:
            return
        bar = self._bars.get(event.phase)
        if bar is None:
            bar = self._bars[event.phase] = CountProgress(label, event.n, unit=event.phase, stream=self.stream,
                                                          terminal=self.terminal, interval=self.interval)
        bar.update(to=min(event.i, event.n))

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class TextProgressBar(TrainingProgress):
    """The trainer's own terminal bar (``progress_bar=True``); kept under its old name."""

    def __init__(self, stream: Any = None, width: int = 30) -> None:  # width: old signature, tqdm sizes the bar
        super().__init__("train", stream=stream, terminal=True)
