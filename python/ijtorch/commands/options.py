"""ImageJ macro option strings <-> parameter models.

ImageJ passes command options as ``key=value key2=[value with spaces] flag``: a bare key is a
checked checkbox, and an absent checkbox is unchecked (that is how the Macro Recorder writes
them, so replaying a recorded line must read them the same way). Parameters are pydantic models
with ``extra="forbid"``; unknown keys are rejected naming the accepted ones. This module needs
no JVM.
"""

from __future__ import annotations

import enum
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from .command import surface_fields

__all__ = ["parse_options", "format_options", "params_from_options", "dialog_spec", "OptionsError"]


class OptionsError(ValueError):
    """Macro options that do not fit the command's parameters."""


def parse_options(options: str) -> dict[str, str | bool]:
    """Split an ImageJ options string into ``{key: value}``; bare keys map to ``True``."""
    result: dict[str, str | bool] = {}
    i, n = 0, len(options)
    while i < n:
        while i < n and options[i].isspace():
            i += 1
        if i >= n:
            break
        start = i
        while i < n and not options[i].isspace() and options[i] != "=":
            i += 1
        key = options[start:i]
        if i < n and options[i] == "=":
            i += 1
            if i < n and options[i] == "[":
                end = options.find("]", i + 1)
                if end < 0:
                    raise OptionsError(f"option {key!r}: '[' without a closing ']' in {options!r}")
                value: str | bool = options[i + 1:end]
                i = end + 1
            else:
                start = i
                while i < n and not options[i].isspace():
                    i += 1
                value = options[start:i]
        else:
            value = True
        if not key:
            raise OptionsError(f"empty option key in {options!r}")
        result[key] = value
    return result


def format_options(values: dict[str, Any]) -> str:
    """The inverse of :func:`parse_options`, as the Macro Recorder writes it."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            if value:
                parts.append(key)
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        text = str(value)
        parts.append(f"{key}=[{text}]" if (" " in text or text == "") else f"{key}={text}")
    return " ".join(parts)


def _kind(annotation: Any) -> tuple[str, list[str]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(args[0]) if len(args) == 1 else ("string", [])
    if origin is Literal:
        return "choice", [str(a) for a in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice", [str(m.value) for m in annotation]
    if annotation is bool:
        return "checkbox", []
    if annotation in (int, float):
        return "number", []
    return "string", []


def _empty_meaning(kind: str, default: Any, description: str) -> str:
    """For a number whose default 0 stands for a value chosen elsewhere ("0 = the model's tuned value",
    "0 = the model's default (1024 in 2D)"), that meaning: the dialog shows such a field empty."""
    import re

    m = re.search(r"\b0 = ([^;]+)", description)
    if kind != "number" or default != 0 or isinstance(default, bool) or m is None:
        return ""
    meaning = m.group(1).strip()
    if meaning.count(")") > meaning.count("("):  # "(0 = the method's default: 128 in 2D)"
        meaning = meaning[:meaning.rindex(")")].strip()
    return meaning if re.search(r"tuned|default|package's", meaning) else ""


def dialog_spec(params: type[BaseModel] | None) -> str:
    """One line per field the ``imagej`` surface shows, ``kind \\t key \\t default \\t choices \\t help``,
    for the Java dialog. ``choices`` are a choice's values joined by ``|``; for a number whose 0 means a
    value chosen elsewhere (a model's tuned threshold, a default tile size) they are that meaning: the
    dialog starts such a field empty, says "empty or 0 = <meaning>" and reads an empty field as 0."""
    if params is None:
        return ""
    lines = []
    for name in surface_fields(params, "imagej"):
        info = params.model_fields[name]
        kind, choices = _kind(info.annotation)
        default = info.default
        if isinstance(default, enum.Enum):
            default = default.value
        default_text = "" if default is None or repr(default) == "PydanticUndefined" else str(default).lower() if isinstance(default, bool) else str(default)
        help_text = (info.description or "").replace("\t", " ").replace("\n", " ")
        choices_text = "|".join(choices) or _empty_meaning(kind, default, help_text)
        lines.append("\t".join([kind, name, default_text, choices_text, help_text]))
    return "\n".join(lines)


def params_from_options(params: type[BaseModel], options: str | dict, *, command: str | None = None) -> BaseModel:
    """Validate macro options against ``params``. Absent checkboxes are False, as in ImageJ; the macro
    keys are the fields the ``imagej`` surface shows (the others keep their defaults)."""
    values = parse_options(options) if isinstance(options, str) else dict(options)
    where = f"{command}: " if command else ""
    fields = {name: params.model_fields[name] for name in surface_fields(params, "imagej")}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise OptionsError(f"{where}unknown option(s) {unknown}; accepted: {sorted(fields)}")
    for name, info in fields.items():
        kind, _ = _kind(info.annotation)
        if kind == "checkbox":
            value = values.get(name, False)
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise OptionsError(f"{where}option {name!r} expects true/false, got {value!r}")
                value = value.lower() in ("true", "1")
            values[name] = value
        elif values.get(name) is True:
            raise OptionsError(f"{where}option {name!r} needs a value ({name}=...)")
    try:
        return params.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors())
        raise OptionsError(f"{where}{problems}") from None
