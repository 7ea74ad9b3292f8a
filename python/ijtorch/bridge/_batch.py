"""Batch runs that always end: close ImageJ's windows after a macro, a watchdog, a hard exit.

ImageJ 1.x starts non-daemon Java threads for some windows (a ``StackWindow``'s slice selector,
for one); the JVM waits for them when it is destroyed at Python's exit, so a macro that leaves a
stack open would keep ``ijtorch macro`` alive for ever. :func:`end_batch` closes every image
(without a "save changes?" question) and every other ImageJ window, flushes Python's and Java's
output and ends the process with the macro's status, without waiting for any Java thread
(``os._exit``: no JVM tear-down while Python finalizes, which is also where intermittent crashes
at exit come from). :class:`Watchdog` ends a run that takes longer than allowed.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

__all__ = ["close_imagej_windows", "end_batch", "Watchdog", "TIMEOUT_EXIT"]

log = logging.getLogger(__name__)
TIMEOUT_EXIT = 124  # as coreutils' timeout(1)


def close_imagej_windows() -> int:
    """Close every open image (unsaved changes dropped) and ImageJ's other windows; returns how
    many images were closed. Safe without a JVM or ImageJ (returns 0)."""
    import jpype

    if not jpype.isJVMStarted():
        return 0
    from jpype import JClass

    closed = 0
    try:
        WindowManager = JClass("ij.WindowManager")
        ids = WindowManager.getIDList()
        for image_id in list(ids) if ids is not None else []:
            imp = WindowManager.getImage(int(image_id))
            if imp is not None:
                imp.changes = False
                imp.close()
                closed += 1
        for window in list(WindowManager.getNonImageWindows() or []):
            try:
                window.dispose()
            except Exception:  # a window that refuses: the hard exit still ends the process
                pass
    except Exception as exc:
        log.debug("closing ImageJ's windows failed: %s", exc)
    if not bool(JClass("java.awt.GraphicsEnvironment").isHeadless()):
        IJ = JClass("ij.IJ")
        for frame in list(JClass("java.awt.Frame").getFrames()):
            if frame != IJ.getInstance():
                try:
                    frame.dispose()
                except Exception:
                    pass
    return closed


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    try:
        import jpype

        if jpype.isJVMStarted():
            System = jpype.JClass("java.lang.System")
            System.out.flush()
            System.err.flush()
    except Exception:
        pass


def end_batch(status: int) -> "NoReturn":  # noqa: F821
    """Close ImageJ's windows, flush output and end the process with ``status`` at once."""
    close_imagej_windows()
    _flush()
    logging.shutdown()
    os._exit(int(status))


class Watchdog:
    """Ends the process with exit status 124 and a message on stderr when ``seconds`` pass before
    :meth:`cancel`. ``seconds`` of 0 or None: no limit."""

    def __init__(self, seconds: float | None, what: str):
        self.seconds = seconds
        self.what = what
        self._timer: threading.Timer | None = None

    def __enter__(self) -> "Watchdog":
        if self.seconds:
            self._timer = threading.Timer(float(self.seconds), self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.cancel()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        print(f"{self.what}: timed out after {self.seconds:g} s (--timeout); stopping", file=sys.stderr)
        try:
            import jpype

            if jpype.isJVMStarted():
                jpype.JClass("ij.macro.Interpreter").abort()
        except Exception:
            pass
        _flush()
        os._exit(TIMEOUT_EXIT)
