"""Python functions as ImageJ commands and macro functions.

``@command("ijtorch Segment", params=SegmentParams)`` registers a handler; once the bridge runs,
the command sits in ImageJ's command table and under Plugins > ijtorch, so it runs from the menu
(with a dialog built from the parameter model), from a macro with ImageJ's option syntax, and is
recorded by the Macro Recorder. ``@macro_function`` makes ``Ext.ijtorch...`` functions available
after ``run("ijtorch Macro Functions")``.

A handler's exception never crosses into Java as such: it becomes an error message that the shim
turns into an ImageJ macro error (or an error dialog when run from the menu); the JVM and later
commands keep working. The traceback is logged at DEBUG.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from ..errors import IjtorchError
from ._options import dialog_spec, params_from_options

__all__ = ["CommandSpec", "FunctionSpec", "command", "macro_function", "register_command",
           "register_function", "registered_commands", "registered_functions", "install_registered",
           "CommandContext"]

log = logging.getLogger(__name__)

# Java MacroExtension argument type codes (ij.macro.MacroExtension).
_ARG_STRING, _ARG_NUMBER, _ARG_OUTPUT = 1, 2, 16


@dataclass(frozen=True)
class CommandSpec:
    name: str
    handler: Callable[..., Any]
    params: type[BaseModel] | None
    help: str = ""


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: Callable[..., Any]
    arg_kinds: tuple[str, ...]  # "string" or "number" per macro argument
    returns: str  # "string": the call's value; "number": sets a trailing output variable
    remote: bool = False  # an ijtorch server may run it for a Fiji without Python (no JVM, no local state)


_COMMANDS: dict[str, CommandSpec] = {}
_FUNCTIONS: dict[str, FunctionSpec] = {}


class CommandContext:
    """What a command handler may touch in ImageJ; created per call by the dispatcher."""

    def __init__(self, command: str, options: str):
        self.command = command
        self.options = options

    def current_image(self):
        """The active ImagePlus; raises a clear error when no image is open."""
        from jpype import JClass

        imp = JClass("ij.WindowManager").getCurrentImage()
        if imp is None:
            raise IjtorchError(f"{self.command} needs an open image (open one or select its window)")
        return imp

    def progress(self, done: int, total: int, message: str = "") -> None:
        from jpype import JClass

        IJ = JClass("ij.IJ")
        IJ.showProgress(done, total)
        if message:
            IJ.showStatus(f"{self.command}: {message}")


def register_command(name: str, handler: Callable[..., Any], *, params: type[BaseModel] | None = None,
                     help: str = "") -> CommandSpec:
    """Register ``handler(ctx, params)`` as the ImageJ command ``name`` ("ijtorch ...")."""
    if not isinstance(name, str) or not name.startswith("ijtorch "):
        raise ValueError(f"command name must start with 'ijtorch ', got {name!r}")
    if params is not None and not (isinstance(params, type) and issubclass(params, BaseModel)):
        raise TypeError(f"params must be a pydantic model class, got {params!r}")
    spec = CommandSpec(name, handler, params, help or (inspect.getdoc(handler) or "").split("\n")[0])
    _COMMANDS[name] = spec
    from ._runtime import is_started

    if is_started():
        _install_command(spec)
    return spec


def command(name: str, *, params: type[BaseModel] | None = None) -> Callable:
    """Decorator form of :func:`register_command`."""

    def decorate(fn: Callable) -> Callable:
        register_command(name, fn, params=params)
        return fn

    return decorate


def register_function(name: str, handler: Callable[..., Any], *, returns: str = "string",
                      remote: bool = False) -> FunctionSpec:
    """Register ``handler`` as the macro function ``Ext.<name>``.

    Argument kinds come from the annotations: ``float``/``int`` are macro numbers, anything
    else a string. ``returns="number"`` hands the result back through a trailing output
    argument, so ``Ext.ijtorchObjectCount(n)`` sets ``n`` to a number. ``remote=True`` lets an
    ijtorch server run it for a Fiji without Python: the handler must not touch the JVM, must
    read ImageJ session state only through :func:`ijtorch.bridge._outputs.session_value`, and
    an argument called ``model`` is checked to be a model name registered on the server.
    """
    if not name.startswith("ijtorch"):
        raise ValueError(f"macro function names start with 'ijtorch', got {name!r}")
    if returns not in ("string", "number"):
        raise ValueError(f"returns must be 'string' or 'number', got {returns!r}")
    kinds = []
    for p in inspect.signature(handler).parameters.values():
        ann = p.annotation
        kinds.append("number" if ann in (int, float, "int", "float") else "string")
    spec = FunctionSpec(name, handler, tuple(kinds), returns, bool(remote))
    _FUNCTIONS[name] = spec
    from ._runtime import is_started

    if is_started():
        _install_function(spec)
    return spec


def macro_function(name: str | None = None, *, returns: str = "string", remote: bool = False) -> Callable:
    """Decorator form of :func:`register_function`; the name defaults to the function's."""

    def decorate(fn: Callable) -> Callable:
        register_function(name or fn.__name__, fn, returns=returns, remote=remote)
        return fn

    return decorate


def registered_commands() -> dict[str, CommandSpec]:
    return dict(_COMMANDS)


def registered_functions() -> dict[str, FunctionSpec]:
    return dict(_FUNCTIONS)


def dispatch_command(name: str, options: str) -> str | None:
    """Run a registered command; returns None on success or the error text for ImageJ."""
    spec = _COMMANDS.get(name)
    if spec is None:
        return f"no Python handler is registered for {name!r}"
    try:
        params = params_from_options(spec.params, options) if spec.params else None
        ctx = CommandContext(name, options)
        if params is None:
            spec.handler(ctx)
        else:
            spec.handler(ctx, params)
        return None
    except Exception as exc:  # reported to ImageJ, never raised into Java
        log.debug("command %s failed:\n%s", name, traceback.format_exc())
        return str(exc) if isinstance(exc, (IjtorchError, ValueError)) else f"{type(exc).__name__}: {exc}"


def dispatch_function(name: str, args: list[Any]) -> tuple[str | None, Any, str | None]:
    """Run a macro function; returns (string result, number result, error text)."""
    spec = _FUNCTIONS.get(name)
    if spec is None:
        return None, None, f"no Python function is registered as Ext.{name}"
    try:
        value = spec.handler(*args)
        if spec.returns == "number":
            return None, float(value), None
        return ("" if value is None else str(value)), None, None
    except Exception as exc:
        log.debug("macro function %s failed:\n%s", name, traceback.format_exc())
        return None, None, str(exc) if isinstance(exc, (IjtorchError, ValueError)) else f"{type(exc).__name__}: {exc}"


_proxies: dict[str, Any] = {}


def _command_proxy():
    if "command" not in _proxies:
        from jpype import JImplements, JOverride

        @JImplements("ijtorch.IjtorchRegistry$CommandHandler")
        class CommandProxy:
            @JOverride
            def run(self, command, options):
                return dispatch_command(str(command), str(options) if options is not None else "")

        @JImplements("ijtorch.IjtorchRegistry$FunctionHandler")
        class FunctionProxy:
            @JOverride
            def call(self, name, args):
                from jpype import JClass, JString

                values = []
                number_out = None
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

        _proxies["command"] = CommandProxy()
        _proxies["function"] = FunctionProxy()
    return _proxies["command"], _proxies["function"]


def _install_command(spec: CommandSpec) -> None:
    from jpype import JClass

    proxy, _ = _command_proxy()
    JClass("ijtorch.IjtorchRegistry").registerCommand(spec.name, dialog_spec(spec.params), proxy)


def arg_codes(spec: FunctionSpec) -> list[int]:
    """The ``ij.macro.MacroExtension`` argument types of a function (plus the output argument)."""
    codes = [_ARG_NUMBER if k == "number" else _ARG_STRING for k in spec.arg_kinds]
    if spec.returns == "number":
        codes.append(_ARG_OUTPUT + _ARG_NUMBER)
    return codes


def _install_function(spec: FunctionSpec) -> None:
    from jpype import JArray, JClass, JInt

    registry = JClass("ijtorch.IjtorchRegistry")
    registry.registerFunction(spec.name, JArray(JInt)(arg_codes(spec)))
    registry.setFunctionHandler(_command_proxy()[1])


def install_registered() -> None:
    """Put every registered command and function into the running ImageJ (idempotent)."""
    from jpype import JClass

    from . import commands  # noqa: F401  (the built-in ijtorch commands register themselves)

    registry = JClass("ijtorch.IjtorchRegistry")
    registry.installMenuCommand("ijtorch Macro Functions", "ijtorch.IjtorchMacroExtension")
    for spec in _COMMANDS.values():
        _install_command(spec)
    for fspec in _FUNCTIONS.values():
        _install_function(fspec)
