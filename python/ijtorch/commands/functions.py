"""Macro functions: ``Ext.ijtorch...`` in ImageJ macros, after ``run("ijtorch Macro Functions")``.

A function is a plain Python callable; argument kinds come from its annotations (``float``/``int``
are macro numbers, anything else a string). ``returns="number"`` hands the result back through a
trailing output argument, so ``Ext.ijtorchObjectCount(n)`` sets ``n``. ``remote=True`` lets an
ijtorch server run it for a Fiji without Python: it must not touch the JVM and reads ImageJ session
values only through :func:`ijtorch.commands.outputs.session_value`. Errors come back as text (the
shim turns them into macro errors), never as exceptions into Java.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import IjtorchError
from .command import all_commands, notify_registered

__all__ = ["FunctionSpec", "register_function", "macro_function", "all_functions", "dispatch_function", "arg_codes",
           "error_text"]

log = logging.getLogger(__name__)

# Java MacroExtension argument type codes (ij.macro.MacroExtension).
_ARG_STRING, _ARG_NUMBER, _ARG_OUTPUT = 1, 2, 16


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    handler: Callable[..., Any]
    arg_kinds: tuple[str, ...]  # "string" or "number" per macro argument
    returns: str  # "string": the call's value; "number": sets a trailing output variable
    remote: bool = False  # an ijtorch server may run it for a Fiji without Python (no JVM, no local state)


_FUNCTIONS: dict[str, FunctionSpec] = {}


def error_text(exc: BaseException) -> str:
    """The one line a user sees for a failed command or function."""
    return str(exc) if isinstance(exc, (IjtorchError, ValueError)) else f"{type(exc).__name__}: {exc}"


def register_function(name: str, handler: Callable[..., Any], *, returns: str = "string",
                      remote: bool = False) -> FunctionSpec:
    """Register ``handler`` as the macro function ``Ext.<name>``.

    Argument kinds come from the annotations: ``float``/``int`` are macro numbers, anything
    else a string. ``returns="number"`` hands the result back through a trailing output
    argument, so ``Ext.ijtorchObjectCount(n)`` sets ``n`` to a number. ``remote=True`` lets an
    ijtorch server run it for a Fiji without Python: the handler must not touch the JVM, must
    read ImageJ session state only through :func:`ijtorch.commands.outputs.session_value`, and
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
    notify_registered(spec)
    return spec


def macro_function(name: str | None = None, *, returns: str = "string", remote: bool = False) -> Callable:
    """Decorator form of :func:`register_function`; the name defaults to the function's."""

    def decorate(fn: Callable) -> Callable:
        register_function(name or fn.__name__, fn, returns=returns, remote=remote)
        return fn

    return decorate


def all_functions() -> dict[str, FunctionSpec]:
    """Every registered macro function, the built-in ones included."""
    all_commands()  # imports the built-in command modules, which register their functions
    return dict(_FUNCTIONS)


def dispatch_function(name: str, args: list[Any]) -> tuple[str | None, Any, str | None]:
    """Run a macro function; returns (string result, number result, error text)."""
    spec = all_functions().get(name)
    if spec is None:
        return None, None, f"no Python function is registered as Ext.{name}"
    try:
        value = spec.handler(*args)
        if spec.returns == "number":
            return None, float(value), None
        return ("" if value is None else str(value)), None, None
    except Exception as exc:
        log.debug("macro function %s failed:\n%s", name, traceback.format_exc())
        return None, None, error_text(exc)


def arg_codes(spec: FunctionSpec) -> list[int]:
    """The ``ij.macro.MacroExtension`` argument types of a function (plus the output argument)."""
    codes = [_ARG_NUMBER if k == "number" else _ARG_STRING for k in spec.arg_kinds]
    if spec.returns == "number":
        codes.append(_ARG_OUTPUT + _ARG_NUMBER)
    return codes
