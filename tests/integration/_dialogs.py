"""Finding the GenericDialog a menu command opens (the JVM tests that press its buttons)."""

from __future__ import annotations

import time


def find_dialog(title: str, timeout: float = 20.0):
    """The visible ``ij.gui.GenericDialog`` titled ``title``, waited for up to ``timeout`` seconds."""
    from jpype import JClass

    window, dialog = JClass("java.awt.Window"), JClass("ij.gui.GenericDialog")
    deadline = time.time() + timeout
    while time.time() < deadline:
        for w in window.getWindows():
            if isinstance(w, dialog) and str(w.getTitle()) == title and w.isVisible():
                return w
        time.sleep(0.05)
    raise AssertionError(f"no dialog titled {title!r} appeared")
