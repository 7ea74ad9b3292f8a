"""The thin driver: every :class:`~ijtorch.commands.command.Command` as an ImageJ command, every
macro function as an ``Ext.`` function.

Once the bridge runs, a command sits in ImageJ's command table and under Plugins > ijtorch: it runs
from the menu (a dialog built from its parameter model), from a macro with ImageJ's option syntax,
and is recorded by the Macro Recorder. One path for all of them (:func:`run_command`): options →
parameters, current image → :class:`~ijtorch.commands.outputs.CommandInputs` (with one progress
adapter and Esc as the cancel check), ``compute``, outputs → ImageJ objects.

A command's exception never crosses into Java as such: it becomes an error message that the shim
turns into an ImageJ macro error (or an error dialog from the menu); the JVM and later commands keep
working. The traceback is logged at DEBUG.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable

from pydantic import BaseModel

from ..commands.command import Command, all_commands, get_command, on_register, register
from ..commands.functions import (FunctionSpec, all_functions, arg_codes, dispatch_function, error_text,
                                  macro_function, register_function)
from ..commands.options import dialog_spec, params_from_options
from ..core.progress import ProgressEvent
from ..errors import IjtorchError
from . import _runtime

__all__ = ["command", "register_command", "macro_function", "register_function", "registered_commands",
           "registered_functions", "install_registered", "run_command"]

log = logging.getLogger(__name__)


class _NoParams(BaseModel):
    """The parameters of a command that takes none."""


def register_command(name: str, compute: Callable[..., Any], *, params: type[BaseModel] | None = None,
                     help: str = "", needs_image: bool = False) -> Command:
    """Register ``compute(inputs, params) -> CommandOutputs | None`` as the ImageJ command ``name``.

    ``inputs`` is a :class:`~ijtorch.commands.outputs.CommandInputs` (``inputs.image`` is the current
    image, or None when ``needs_image`` is False and none is open); what ``compute`` returns is
    shown in ImageJ as the built-in commands' outputs are."""
    doc = (getattr(compute, "__doc__", None) or "").strip().split("\n")[0]
    return register(Command(name, params or _NoParams, compute, help=help or doc, needs_image=needs_image))


def command(name: str, *, params: type[BaseModel] | None = None, needs_image: bool = False) -> Callable:
    """Decorator form of :func:`register_command`."""

    def decorate(fn: Callable) -> Callable:
        register_command(name, fn, params=params, needs_image=needs_image)
        return fn

    return decorate


def registered_commands() -> dict[str, Command]:
    return all_commands()


def registered_functions() -> dict[str, FunctionSpec]:
    return all_functions()


# ------------------------------------------------------------------------------------ the driver
def _progress(name: str) -> Callable[[ProgressEvent], None]:
    """The one progress adapter: events → ImageJ's progress bar and status line."""
    from jpype import JClass

    IJ = JClass("ij.IJ")

    def listener(event: ProgressEvent) -> None:
        if event.n:
            IJ.showProgress(int(event.i), int(event.n))
            text = event.message or event.phase
            if text:
                IJ.showStatus(f"{name}: {text}")

    return listener


def _escape_pressed() -> bool:
    from jpype import JClass

    return bool(JClass("ij.IJ").escapePressed())


def run_command(cmd: Command, options: str) -> None:
    """Run ``cmd`` in this ImageJ with macro ``options``: inputs from ImageJ, outputs into it."""
    from jpype import JClass

    from .apply import apply_outputs, imagej_inputs

    params = params_from_options(cmd.params, options, command=cmd.name)
    imp = JClass("ij.WindowManager").getCurrentImage()
    if imp is None and cmd.needs_image:
        raise IjtorchError(f"{cmd.name} needs an open image (open one or select its window)")
    outputs = cmd.compute(imagej_inputs(imp, progress=_progress(cmd.name), cancel=_escape_pressed), params)
    JClass("ij.IJ").showProgress(1.0)
    if outputs is not None:
        apply_outputs(outputs, source=imp)


def dispatch_command(name: str, options: str) -> str | None:
    """Run a registered command; returns None on success or the error text for ImageJ."""
    try:
        run_command(get_command(name), options)
        return None
    except Exception as exc:  # reported to ImageJ, never raised into Java
        log.debug("command %s failed:\n%s", name, traceback.format_exc())
        return error_text(exc)


# ------------------------------------------------------------------------------------ JPype proxies
_proxies: dict[str, Any] = {}


def _handlers():
    if "command" not in _proxies:
        from jpype import JClass, JImplements, JOverride, JString

        @JImplements("ijtorch.IjtorchRegistry$CommandHandler")
        class CommandProxy:
            @JOverride
            def run(self, command, options):
                return dispatch_command(str(command), str(options) if options is not None else "")

        @JImplements("ijtorch.IjtorchRegistry$FunctionHandler")
        class FunctionProxy:
            @JOverride
            def call(self, name, args):
                values, number_out = [], None
                for arg in (args if args is not None else []):
                    if isinstance(arg, JClass("java.lang.Double")):
                        values.append(float(arg))
                    elif isinstance(arg, JString):
                        values.append(str(arg))
                    else:  # an output array (Double[1]) for returns="number"
                        number_out = arg
                text, number, error = dispatch_function(str(name), values)
                if error is not None:
                    return JClass("ijtorch.IjtorchMacroExtension").ERROR_PREFIX + error
                if number_out is not None:
                    number_out[0] = JClass("java.lang.Double")(number)
                    return ""
                return text

        _proxies["command"], _proxies["function"] = CommandProxy(), FunctionProxy()
    return _proxies["command"], _proxies["function"]


def _install(spec: Command | FunctionSpec) -> None:
    from jpype import JArray, JClass, JInt

    registry = JClass("ijtorch.IjtorchRegistry")
    command_handler, function_handler = _handlers()
    if isinstance(spec, Command):
        registry.registerCommand(spec.name, dialog_spec(spec.params), bool(spec.needs_image), command_handler)
    else:
        registry.registerFunction(spec.name, JArray(JInt)(arg_codes(spec)))
        registry.setFunctionHandler(function_handler)


def install_registered() -> None:
    """Put every command and macro function into the running ImageJ (idempotent); those registered
    later are installed as they come."""
    from jpype import JClass

    JClass("ijtorch.IjtorchRegistry").installMenuCommand("ijtorch Macro Functions", "ijtorch.IjtorchMacroExtension")
    for cmd in all_commands().values():
        _install(cmd)
    for fspec in all_functions().values():
        _install(fspec)
    if not _proxies.get("listening"):
        on_register(lambda spec: _install(spec) if _runtime.is_started() else None)
        _proxies["listening"] = True


_runtime.on_start(install_registered)
