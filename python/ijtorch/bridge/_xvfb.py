"""A private Xvfb display for ImageJ 1.x.

ImageJ 1.x builds its command table with AWT: in a headless JVM ``IJ.run`` fails, so without a
DISPLAY ijtorch starts its own virtual X server, used by this process only, and stops it at exit.
The server is also told to die with this process (PR_SET_PDEATHSIG), so a killed Python leaves
no Xvfb behind.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import threading

from ..errors import BridgeError

__all__ = ["VirtualDisplay", "start_virtual_display"]

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class VirtualDisplay:
    """A running Xvfb; ``display`` is the ``:N`` string to put in DISPLAY."""

    def __init__(self, process: subprocess.Popen, display: str):
        self.process = process
        self.display = display

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_virtual_display(width: int = 1280, height: int = 1024) -> VirtualDisplay:
    """Start Xvfb on a free display number (Xvfb picks it: ``-displayfd``) and return it."""
    exe = shutil.which("Xvfb")
    if exe is None:
        raise BridgeError(
            "No DISPLAY is set and Xvfb is not installed; ImageJ 1.x needs a display for its "
            "command table. Install it with: apt-get install -y xvfb  (or set DISPLAY)"
        )
    read_fd, write_fd = os.pipe()
    # Started from a daemon thread's parent? PDEATHSIG follows the forking *thread*; we fork
    # from the calling thread, which in practice is the main thread that starts the bridge.
    on_main = threading.current_thread() is threading.main_thread()
    process = subprocess.Popen(
        [exe, "-displayfd", str(write_fd), "-nolisten", "tcp", "-screen", "0", f"{width}x{height}x24"],
        pass_fds=(write_fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent if on_main else None,
    )
    os.close(write_fd)
    number = b""
    with os.fdopen(read_fd, "rb") as pipe:
        while not number.endswith(b"\n"):
            chunk = pipe.read(1)
            if not chunk:
                break
            number += chunk
    if not number.strip():
        process.kill()
        raise BridgeError("Xvfb did not start (no display number reported); try running Xvfb by hand to see why")
    display = VirtualDisplay(process, ":" + number.decode().strip())
    log.info("started private Xvfb on display %s (pid %d)", display.display, display.pid)
    if not on_main:  # PDEATHSIG covers the main thread; killing Xvfb under a live AWT would make Java exit(1)
        atexit.register(display.stop)
    return display
