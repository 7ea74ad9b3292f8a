"""Run a Fiji Jython script (with ``#@`` script parameters) in the running JVM's Jython.

Fiji fills ``#@`` parameters from a dialog or from ``ij.script().run(path, True, params)``. The
embedded ImageJ has no SciJava, so :func:`run_jython` does the same for the types scripts use:
it parses the header, checks the keys given (unknown ones are refused, naming the accepted
ones), converts values (``File`` → ``java.io.File``, ``int``/``float``/``boolean``/``String``),
sets them as variables of an ``org.python.util.PythonInterpreter`` and runs the file. Parameters
without a value take their ``value=`` default; a missing required one is an error.
``#@output`` variables are returned.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BridgeError

__all__ = ["ScriptParameter", "script_parameters", "run_jython"]

log = logging.getLogger(__name__)

_HEADER = re.compile(r"^\s*#@(output)?\s*([A-Za-z_][\w.]*)\s*(\((.*)\))?\s*([A-Za-z_]\w*)\s*$")
_ATTR = re.compile(r"(\w+)\s*=\s*(\"[^\"]*\"|'[^']*'|[^,\s]+)")
_TYPES = {"file": "file", "string": "string", "int": "int", "integer": "int", "long": "int", "float": "float",
          "double": "float", "boolean": "boolean", "bool": "boolean"}


@dataclass(frozen=True)
class ScriptParameter:
    name: str
    kind: str  # file, string, int, float, boolean
    default: str | None
    label: str
    output: bool = False


def script_parameters(path: str | os.PathLike) -> list[ScriptParameter]:
    """The ``#@`` parameters declared by a script, in order."""
    params = []
    for line in Path(path).read_text().splitlines():
        m = _HEADER.match(line)
        if not m:
            continue
        output, type_name, attrs, name = m.group(1), m.group(2), m.group(4) or "", m.group(5)
        values = {k: v.strip("\"'") for k, v in _ATTR.findall(attrs)}
        kind = _TYPES.get(type_name.lower().split(".")[-1])
        if kind is None:
            raise BridgeError(f"{Path(path).name}: parameter {name!r} has type {type_name}, which run_jython cannot "
                              f"supply outside Fiji (supported: {sorted(set(_TYPES.values()))})")
        params.append(ScriptParameter(name, kind, values.get("value"), values.get("label", name), bool(output)))
    return params


def _convert(p: ScriptParameter, value: Any) -> Any:
    from jpype import JClass

    if p.kind == "file":
        return JClass("java.io.File")(str(value))
    if p.kind == "int":
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError(f"{p.name}={value!r}: expected an integer")
        return int(float(value))
    if p.kind == "float":
        return float(value)
    if p.kind == "boolean":
        if isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{p.name}={value!r}: expected true or false")
            return value.lower() == "true"
        return bool(value)
    return str(value)


def run_jython(path: str | os.PathLike, **params: Any) -> dict[str, Any]:
    """Run the Jython script ``path`` in the running ImageJ with ``#@`` parameters from ``params``.

    Returns
    -------
    dict
        The script's ``#@output`` variables (None when the script did not set one).

    Raises
    ------
    ValueError
        An unknown key, a missing required parameter or a value of the wrong type.
    BridgeError
        No Jython in the JVM, or the script raised (the Python-side message is kept).
    """
    from ._runtime import runtime

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path={str(path)!r}: no such script")
    declared = script_parameters(path)
    inputs = {p.name: p for p in declared if not p.output}
    unknown = sorted(set(params) - set(inputs))
    if unknown:
        raise ValueError(f"{path.name}: unknown parameter(s) {unknown}; accepted: {sorted(inputs)}")
    runtime()
    from jpype import JClass

    try:
        Interpreter = JClass("org.python.util.PythonInterpreter")
    except Exception as exc:
        raise BridgeError("Jython is not on the class path (embedded: apt-get install -y jython; "
                          "Fiji: jars/jython-slim-*.jar)") from exc
    interp = Interpreter()
    try:
        for p in inputs.values():
            if p.name in params:
                value = params[p.name]
            elif p.default is not None:
                value = p.default
            else:
                raise ValueError(f"{path.name}: parameter {p.name!r} ({p.label}) is required")
            interp.set(p.name, _convert(p, value))
        interp.set("__file__", str(path))
        try:
            interp.execfile(str(path))
        except Exception as exc:  # a PyException: keep Jython's own message
            text = str(exc).strip()
            log.debug("Jython script %s failed: %s", path, text)
            raise BridgeError(f"{path.name} failed: {text.splitlines()[-1] if text else type(exc).__name__}") from exc
        out = {}
        for p in declared:
            if p.output:
                value = interp.get(p.name)
                out[p.name] = None if value is None else _from_jython(value)
        return out
    finally:
        interp.cleanup()


def _from_jython(value: Any) -> Any:
    text = str(value)
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
