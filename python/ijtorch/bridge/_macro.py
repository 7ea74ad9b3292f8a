"""Run ImageJ macros from Python with errors raised as MacroError and the Log captured."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MacroError
from ._runtime import runtime

__all__ = ["MacroResult", "run_macro", "run_command", "log_text"]


@dataclass(frozen=True)
class MacroResult:
    value: str  # what the macro returned ("" when nothing)
    log: str  # what it printed to the Log window during this run


def log_text() -> str:
    from jpype import JClass

    text = JClass("ij.IJ").getLog()
    return "" if text is None else str(text)


def run_macro(code: str, argument: str = "") -> MacroResult:
    """Run macro ``code`` in the running ImageJ; raise MacroError with ImageJ's message on failure."""
    runtime()
    from jpype import JClass

    registry = JClass("ijtorch.IjtorchRegistry")
    before = log_text()
    registry.clearMacroError()
    interp = JClass("ij.macro.Interpreter")()
    interp.setIgnoreErrors(True)  # errors come back as text instead of a modal dialog
    value = interp.run(code, argument)
    after = log_text()
    printed = after[len(before):] if after.startswith(before) else after
    message = interp.getErrorMessage()
    if interp.wasError() or message is not None:
        # An ijtorch command or Ext. function that failed aborted the macro with the Python
        # message; inside a loop or block the interpreter then parses on and overwrites it with
        # a syntax error of its own ("';' expected"), so the shim's record wins.
        aborted = registry.macroError()
        if aborted is not None:
            line = int(registry.macroErrorLine()) or int(interp.getLineNumber())
            raise MacroError(f"{aborted} (line {line})")
        text = str(message) if message is not None else "macro failed"
        raise MacroError(f"{text} (line {int(interp.getLineNumber())})")
    return MacroResult(value="" if value is None else str(value), log=printed.rstrip("\n"))


def run_command(command: str, options: str = "", image=None) -> None:
    """Run an ImageJ command as a macro's ``run(command, options)`` would, raising on failure."""
    quoted = options.replace("\\", "\\\\").replace('"', '\\"')
    if image is not None:
        from jpype import JClass

        JClass("ij.WindowManager").setTempCurrentImage(image)
    run_macro(f'run("{command}", "{quoted}");')
