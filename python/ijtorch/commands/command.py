"""A command: its parameters, declared once, and its computation on plain data.

Every surface is generated from a :class:`Command`: the ImageJ dialog and macro keys
(:mod:`ijtorch.bridge.registry`), the CLI verb's options (:mod:`ijtorch.cli.generated`), the
server's request bodies (:mod:`ijtorch.serve`) — one name, one default, one convention per parameter
(1-based channels, as ImageJ; an unset number is ``None``, shown empty in the dialog).

A field may be left off a surface with ``Field(..., json_schema_extra={"surfaces": ["imagej"]})``
(surfaces: ``imagej`` — dialog and macro keys, ``cli``, ``server``); the four-surfaces test walks
:func:`all_commands` and checks that each surface shows exactly :func:`surface_fields`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from .outputs import CommandInputs, CommandOutputs

__all__ = ["Command", "command", "register", "all_commands", "get_command", "surface_fields", "SURFACES",
           "BUILTIN_MODULES", "on_register", "notify_registered", "task_channel"]

SURFACES = ("imagej", "cli", "server")

#: The modules that register the built-in commands (imported by :func:`all_commands`).
BUILTIN_MODULES = ("segment", "track", "classify", "pixels", "restore", "normalize", "bioimageio", "info", "scale")


def _model_name(params: BaseModel) -> str | None:
    return getattr(params, "model", None) or None


@dataclass(frozen=True)
class Command:
    """``compute(inputs, params) -> CommandOutputs`` on plain data, never the JVM.

    ``verb``: the CLI verb running it (None: not on the CLI). ``needs_image``: it reads the current
    image (refused clearly without one). ``rois``: it reads the ROI Manager; ``image_options``: the
    parameters that name other open images (sent along by a remote Fiji). ``remote``: an ijtorch
    server may run it for a Fiji without Python; ``model(params)`` is the model name the parameters
    ask for (a server accepts only registered names) and ``check_remote(params)`` refuses what only
    in-process Python may do.
    """

    name: str
    params: type[BaseModel]
    compute: Callable[[CommandInputs, Any], CommandOutputs | None]
    help: str = ""
    verb: str | None = None
    needs_image: bool = True
    rois: bool = False
    image_options: tuple[str, ...] = ()
    remote: bool = False
    model: Callable[[Any], str | None] = _model_name
    check_remote: Callable[[Any], None] | None = None


_COMMANDS: dict[str, Command] = {}
_LISTENERS: list[Callable[[Any], None]] = []


def on_register(listener: Callable[[Any], None]) -> None:
    """Call ``listener(spec)`` for every command or macro function registered from now on (a running
    ImageJ installs them as they come)."""
    _LISTENERS.append(listener)


def notify_registered(spec: Any) -> None:
    for listener in list(_LISTENERS):
        listener(spec)


def register(cmd: Command) -> Command:
    """Add ``cmd`` to the command table (replacing one of the same name)."""
    if not cmd.name.startswith("ijtorch "):
        raise ValueError(f"command name must start with 'ijtorch ', got {cmd.name!r}")
    if not (isinstance(cmd.params, type) and issubclass(cmd.params, BaseModel)):
        raise TypeError(f"{cmd.name}: params must be a pydantic model class, got {cmd.params!r}")
    _COMMANDS[cmd.name] = cmd
    notify_registered(cmd)
    return cmd


def command(name: str, params: type[BaseModel], **options: Any) -> Callable:
    """Decorator: register ``compute(inputs, params)`` as the command ``name``; its docstring's first
    line is the help text."""

    def decorate(compute: Callable) -> Callable:
        doc = (compute.__doc__ or "").strip().split("\n")[0]
        register(Command(name, params, compute, help=options.pop("help", doc), **options))
        return compute

    return decorate


def all_commands() -> dict[str, Command]:
    """Every registered command, the built-in ones included."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return dict(_COMMANDS)


def get_command(name: str) -> Command:
    commands = all_commands()
    if name not in commands:
        raise LookupError(f"no command {name!r}; the commands are {sorted(commands)}")
    return commands[name]


def surface_fields(params: type[BaseModel], surface: str) -> list[str]:
    """The parameters ``surface`` shows, in declaration order."""
    if surface not in SURFACES:
        raise ValueError(f"surface {surface!r}: expected one of {SURFACES}")
    shown = []
    for name, info in params.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if surface in extra.get("surfaces", SURFACES):
            shown.append(name)
    return shown


def task_channel(channel: int, axes: str) -> int | None:
    """The one conversion of a 1-based ``channel`` parameter (as ImageJ counts) into the 0-based
    index the task functions take: ``None`` when ``axes`` has no channel axis (the parameter is then
    ignored, as in ImageJ)."""
    return channel - 1 if "C" in axes else None
