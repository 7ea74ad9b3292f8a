"""The GenericDialog a menu command opens, found and answered as a user would (the JVM tests that
press its buttons). Importable from every test folder: pytest puts ``tests/`` (the root conftest's
folder) on ``sys.path``."""

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


def press_ok(dialog) -> None:
    """Click the dialog's OK button: the click goes through AWT's event queue, so the dialog handles
    it on the event-dispatch thread as a real click. Calling ``dialog.actionPerformed`` from Python's
    thread instead runs AWT code off that thread, which AWT does not allow (a rare deadlock)."""
    from jpype import JClass

    ok = dialog.getButtons()[0]
    event = JClass("java.awt.event.ActionEvent")(ok, JClass("java.awt.event.ActionEvent").ACTION_PERFORMED, "OK")
    JClass("java.awt.Toolkit").getDefaultToolkit().getSystemEventQueue().postEvent(event)
