"""CLI options generated from a command's parameter model (:mod:`ijtorch.commands`).

A verb that runs a command takes its task options from the command's pydantic model: the field
``prob_threshold`` is ``--prob-threshold``, with the field's type (``choices`` for enums and
literals), default, bounds (checked when the option is parsed) and description; a bool is a flag,
``--name`` when it defaults to false and ``--name/--no-name`` when it defaults to true. Only the
fields :func:`ijtorch.commands.command.surface_fields` shows on the ``cli`` surface are generated;
channels stay 1-based (as ImageJ counts) and are converted where every surface converts them, in
the command module (``segment_options``, ``track_options``, ...).

What only the command line has (inputs, ``--output``, ``--axes``, ``--device``, ``--fail-fast``,
batch behaviour) is added with :func:`cli_option`, which records the option as CLI-only with a
reason; ``tests/unit/test_surfaces.py`` fails for any other hand-written option of a command's verb.
A command with a verb that no verb module writes gets a generic one (:mod:`ijtorch.cli.command_verbs`).
"""

from __future__ import annotations

import argparse
import enum
import math
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ..commands.command import Command, all_commands, surface_fields
from ..errors import IjtorchError

__all__ = ["option_name", "add_params_options", "cli_option", "generated_options", "cli_only_options",
           "params_from_args", "command_for_verb", "add_command_parser", "field_bounds", "cli_default", "Number"]

_GENERATED = "_ijtorch_generated"
_CLI_ONLY = "_ijtorch_cli_only"


def option_name(field: str) -> str:
    """``prob_threshold`` -> ``--prob-threshold``."""
    return "--" + field.replace("_", "-")


def generated_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``{field name: action}`` of the options generated from a parameter model, in order."""
    return parser.__dict__.setdefault(_GENERATED, {})


def cli_only_options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{option: reason}`` of the options declared CLI-only with :func:`cli_option`."""
    return parser.__dict__.setdefault(_CLI_ONLY, {})


def cli_option(parser: argparse.ArgumentParser, *flags: str, reason: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)`` for an option only the command line has (inputs,
    output folder, device, batch behaviour); ``reason`` says why it is not a parameter of the command."""
    if not reason:
        raise ValueError("a CLI-only option needs a reason")
    action = parser.add_argument(*flags, **kwargs)
    if action.option_strings:
        cli_only_options(parser)[max(action.option_strings, key=len)] = reason
    return action


class Number:
    """argparse ``type`` for a numeric field: parses ``int``/``float`` and checks the field's bounds
    (``ge``, ``gt``, ``le``, ``lt``), so a bad value is a usage error naming the option's rule."""

    def __init__(self, kind: type, *, field: str, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None) -> None:
        self.kind, self.field = kind, field
        self.bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def __call__(self, text: str) -> int | float:
        try:
            value = self.kind(text)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            if self.field == "channel":
                what = "a channel number (1 = first channel)"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if self.kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if self.field == "channel" and value < self.bounds.get("ge", 1):
            raise argparse.ArgumentTypeError(f"channels are numbered from 1 as in ImageJ, got {value}")
        for rule, bound, ok in (("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
                                ("le", "<=", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b)):
            if rule in self.bounds and not ok(value, self.bounds[rule]):
                hint = " (a positive integer)" if self.kind is int and rule == "ge" and self.bounds[rule] == 1 else ""
                raise argparse.ArgumentTypeError(f"expected a number {bound} {self.bounds[rule]:g}{hint}, got {text}")
        return value


def _plain(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def field_bounds(info: Any) -> dict[str, float]:
    """The ``ge``/``gt``/``le``/``lt`` bounds of a pydantic field."""
    bounds = {}
    for meta in info.metadata:
        for rule in ("ge", "gt", "le", "lt"):
            value = getattr(meta, rule, None)
            if value is not None:
                bounds[rule] = value
    return bounds


def cli_default(info: Any) -> Any:
    """The option's default: the field's (an enum as its value, as typed on the command line)."""
    if info.is_required():
        return None
    default = info.default
    return default.value if isinstance(default, enum.Enum) else default


def add_params_options(parser: argparse.ArgumentParser, params: type[BaseModel], *,
                       positional: tuple[str, ...] = ()) -> dict[str, argparse.Action]:
    """Add one option per field of ``params`` on the ``cli`` surface; returns ``{field: action}``.
    ``positional``: required fields the verb takes as positional arguments (``PACKAGE``), in order."""
    generated = generated_options(parser)
    shown = surface_fields(params, "cli")
    for name in positional:
        if name not in shown or not params.model_fields[name].is_required():
            raise ValueError(f"{params.__name__}.{name}: a positional argument must be a required cli field")
    for name in [*positional, *(n for n in shown if n not in positional)]:
        info = params.model_fields[name]
        kind = _plain(info.annotation)
        required = info.is_required()
        default = cli_default(info)
        text = (info.description or "").strip().replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "help": text}
        if name in positional:
            generated[name] = parser.add_argument(name, help=text)
            continue
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
            kwargs["default"] = bool(default)
        else:
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                kwargs["choices"] = [str(m.value) for m in kind]
            elif typing.get_origin(kind) is Literal:
                kwargs["choices"] = [str(a) for a in typing.get_args(kind)]
            elif kind in (int, float):
                kwargs["type"] = Number(kind, field=name, **field_bounds(info))
                kwargs["metavar"] = "N" if kind is int else "X"
            if required:
                kwargs["required"] = True
            else:
                kwargs["default"] = default
                if default not in ("", None):
                    kwargs["help"] = f"{text} (default: {default})" if text else f"default: {default}"
        generated[name] = parser.add_argument(option_name(name), **kwargs)
    return generated


def params_from_args(params: type[BaseModel], args: argparse.Namespace, **fixed: Any) -> BaseModel:
    """The command's parameters from parsed options (the fields the CLI shows) and ``fixed`` values
    (fields the CLI sets from its own options); every other field keeps the model's default."""
    values = {name: getattr(args, name) for name in surface_fields(params, "cli") if hasattr(args, name)}
    values.update(fixed)
    try:
        return params.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{option_name(str(e['loc'][0])) if e['loc'] else 'options'}: {e['msg']}"
                             for e in exc.errors())
        raise IjtorchError(problems) from None


def command_for_verb(verb: str) -> Command:
    """The command whose ``verb`` is ``verb``."""
    for cmd in all_commands().values():
        if cmd.verb == verb:
            return cmd
    raise LookupError(f"no command has the CLI verb {verb!r}")


def add_command_parser(sub: "argparse._SubParsersAction", verb: str, *, help: str,
                       positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The sub-parser of a command's verb, with the task options generated from the command's model;
    the verb adds its inputs and CLI-only options (:func:`cli_option`)."""
    cmd = command_for_verb(verb)
    parser = sub.add_parser(verb, help=help, description=f"{help[:1].upper()}{help[1:]}; the task options are "
                                                          f"those of the ImageJ command {cmd.name!r}.")
    parser.__dict__["_ijtorch_command"] = cmd.name
    add_params_options(parser, cmd.params, positional=positional)
    return parser

