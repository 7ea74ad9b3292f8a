"""One command, four surfaces (issue #14): every surface shows exactly the parameters of the command
model that :func:`ijtorch.commands.command.surface_fields` gives it, with one name, one default and
the same bounds.

- ImageJ: the dialog (``dialog_spec``) and the macro keys (``params_from_options``);
- CLI: the options generated for the command's verb (``ijtorch.cli.generated``); every other option
  of that verb is declared CLI-only with a reason (``cli_option``), so a hand-written task option fails;
- server: the request body of each task route (``ijtorch.serve.requests``) is the command's server
  fields plus the image's ``axes`` and ``calibration``;
- ``Ext.`` functions: an argument named like a command parameter is that parameter's kind.

No JVM, no model, no network.
"""

from __future__ import annotations

import argparse
import copy
import enum
import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, create_model

from ijtorch.cli import build_parser
from ijtorch.cli.command_verbs import add_verbs as add_command_verbs
from ijtorch.cli.generated import (add_params_options, cli_default, cli_only_options, cli_option,
                                   field_bounds, generated_options, option_name, params_from_args)
from ijtorch.commands.command import Command, _COMMANDS, all_commands, register, surface_fields
from ijtorch.commands.functions import all_functions
from ijtorch.commands.options import OptionsError, dialog_spec, params_from_options
from ijtorch.serve.requests import IMAGE_FIELDS, ITEM_ROUTES, ROUTE_COMMANDS, ROUTE_REQUESTS, request_model

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = all_commands()
SHARED_CLI_OPTIONS = {"--help", "--verbose"}  # argparse's, and build_parser's on every verb


def _verb_parsers(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


VERBS = _verb_parsers()


def _default_text(value) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    return str(value).lower() if isinstance(value, bool) else str(value)


# ----------------------------------------------------------------------------- the four surfaces
def check_imagej(params: type[BaseModel]) -> None:
    shown = surface_fields(params, "imagej")
    lines = [line.split("\t") for line in dialog_spec(params).splitlines()]
    assert [line[1] for line in lines] == shown, "the dialog shows exactly the imagej fields, in order"
    for kind, key, default, choices, help_text in lines:
        info = params.model_fields[key]
        if not info.is_required():
            assert default == ("" if info.default is None else _default_text(info.default)), key
        assert help_text == (info.description or ""), key
        if isinstance(info.annotation, type) and issubclass(info.annotation, enum.Enum):
            assert choices.split("|") == [m.value for m in info.annotation], key
    hidden = [name for name in params.model_fields if name not in shown]
    for name in hidden:  # a field off the imagej surface is no macro key
        with pytest.raises(OptionsError, match="unknown option"):
            params_from_options(params, f"{name}=1")


def check_cli(cmd: Command, verbs: dict[str, argparse.ArgumentParser]) -> None:
    params = cmd.params
    claimed = [verb for verb, p in verbs.items() if p.__dict__.get("_ijtorch_command") == cmd.name]
    if cmd.verb is None:
        assert not claimed, f"{cmd.name} has no verb but the CLI verbs {claimed} say they run it"
        return
    assert cmd.verb in verbs, f"{cmd.name}: its verb {cmd.verb!r} is not a CLI verb"
    parser = verbs[cmd.verb]
    assert parser.__dict__.get("_ijtorch_command") == cmd.name, f"verb {cmd.verb!r} does not take its options from {cmd.name}"
    generated = generated_options(parser)
    shown = surface_fields(params, "cli")
    assert list(generated) == shown, f"{cmd.verb}: generated options {list(generated)} != cli fields {shown}"
    for name, action in generated.items():
        info = params.model_fields[name]
        if action.option_strings:
            assert option_name(name) in action.option_strings, (cmd.verb, name, action.option_strings)
        else:  # a required field the verb takes as a positional argument (import-bioimageio PACKAGE)
            assert info.is_required(), (cmd.verb, name)
        assert action.dest == name
        assert action.default == cli_default(info) or (info.annotation is bool and action.default is bool(info.default))
        assert action.required == info.is_required(), (cmd.verb, name)
        if info.description:
            assert info.description.replace("%", "%%") in action.help
        if hasattr(action.type, "bounds"):
            assert action.type.bounds == field_bounds(info), (cmd.verb, name)
        elif field_bounds(info):
            pytest.fail(f"{cmd.verb} {option_name(name)}: the field has bounds {field_bounds(info)} the option does not check")
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            assert action.choices == [m.value for m in kind]
    own = {max(a.option_strings, key=len) for a in generated.values() if a.option_strings}
    declared = set(cli_only_options(parser))
    for action in parser._actions:
        if not action.option_strings:
            continue
        option = max(action.option_strings, key=len)
        assert option in own | declared | SHARED_CLI_OPTIONS, (
            f"ijtorch {cmd.verb} {option}: an option written by hand; generate it from {params.__name__} or "
            "declare it CLI-only with cli_option(..., reason=...)")
    for option, reason in cli_only_options(parser).items():
        assert reason.strip(), option
        assert option.lstrip("-").replace("-", "_") not in shown, f"{cmd.verb} {option}: declared CLI-only but a field"
    # the command line's defaults are the model's
    required = {name: _example(info) for name, info in params.model_fields.items() if info.is_required()}
    args = argparse.Namespace(**{name: action.default for name, action in generated.items()})
    vars(args).update({k: v for k, v in required.items() if k in generated})
    fixed = {k: v for k, v in required.items() if k not in generated}
    assert params_from_args(params, args, **fixed) == params.model_validate(required)


def _example(info) -> object:
    return "x" if info.annotation is str else 1


def _required_others(params: type[BaseModel], given: dict) -> dict:
    return {name: _example(info) for name, info in params.model_fields.items() if info.is_required() and name not in given}


def check_server(cmd: Command) -> None:
    routes = [route for route, name in ROUTE_COMMANDS.items() if name == cmd.name]
    for route in routes:
        model = ROUTE_REQUESTS[route]
        extra = [] if route in ITEM_ROUTES else list(IMAGE_FIELDS)
        shown = surface_fields(cmd.params, "server")
        assert list(model.model_fields) == extra + shown, f"{route}: {list(model.model_fields)} != {extra + shown}"
        assert model.model_config.get("extra") == "forbid", route
        for name in shown:
            mine, theirs = model.model_fields[name], cmd.params.model_fields[name]
            assert mine.annotation == theirs.annotation, (route, name)
            assert mine.is_required() == theirs.is_required(), (route, name)
            if not theirs.is_required():
                assert mine.default == theirs.default, (route, name)
            assert field_bounds(mine) == field_bounds(theirs), (route, name)
            assert mine.description == theirs.description, (route, name)
        # to_params gives the command's own model: its other fields at their defaults
        example = {name: _example(cmd.params.model_fields[name]) for name in shown
                   if cmd.params.model_fields[name].is_required()}
        header = ({} if route in ITEM_ROUTES else {"axes": "YX"}) | example
        assert model.model_validate(header).to_params() == cmd.params.model_validate(
            example | _required_others(cmd.params, example))


def check_functions() -> None:
    """``Ext.`` functions take no command's parameter set; an argument named like a parameter (e.g.
    ``model``) is that parameter's kind (string / number)."""
    kinds: dict[str, set[str]] = {}
    for cmd in COMMANDS.values():
        for name, info in cmd.params.model_fields.items():
            kinds.setdefault(name, set()).add("number" if info.annotation in (int, float) else "string")
    for spec in all_functions().values():
        params = list(inspect.signature(spec.handler).parameters)
        for arg, kind in zip(params, spec.arg_kinds):
            if arg in kinds:
                assert kinds[arg] == {kind}, f"Ext.{spec.name}({arg}): {kind}, the commands' {arg} is {kinds[arg]}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_surface_shows_exactly_the_command_fields(name):
    cmd = COMMANDS[name]
    check_imagej(cmd.params)
    check_cli(cmd, VERBS)
    check_server(cmd)


def test_every_task_route_is_generated_from_a_command():
    """Each POST route of the server that runs a task (all but /imagej/... and the job routes) has
    its request model generated from a command, and the route parses that model."""
    source = (ROOT / "python/ijtorch/serve/app.py").read_text()
    posts = dict(re.findall(r'Route\("(/[^"]+)", route\((\w+)\), methods=\["POST"\]\)', source))
    tasks = {path: fn for path, fn in posts.items() if not path.startswith("/imagej/")}
    assert set(tasks) == set(ROUTE_COMMANDS), (set(tasks), set(ROUTE_COMMANDS))
    for path, fn in tasks.items():
        body = re.search(rf"async def {fn}\(.*?(?=\n    (?:async )?def |\n    routes = )", source, re.S).group(0)
        model = ROUTE_REQUESTS[path]
        assert f"parse_request({model.__name__}, header)" in body, f"{path} ({fn}) must parse {model.__name__}"
        assert model.command == ROUTE_COMMANDS[path]
        assert ROUTE_COMMANDS[path] in COMMANDS and COMMANDS[ROUTE_COMMANDS[path]].remote, path


def test_ext_functions_use_the_parameter_kinds():
    check_functions()


# ----------------------------------------------------------------------------- the check can fail
class _Extra(str, enum.Enum):
    a = "first mode"
    b = "second mode"


@pytest.fixture
def new_command():
    """A copy of the Segment command whose model has three more fields (one off the server), with
    a new verb: registered for the test only."""
    base = COMMANDS["ijtorch Segment"]
    params = create_model("SurfaceProbeParams", __base__=base.params, __module__=__name__,
                          new_number=(int, Field(3, ge=2, le=9, description="a new number")),
                          new_mode=(_Extra, Field(_Extra.b, description="a new choice")),
                          cli_only_thing=(bool, Field(True, description="not for servers",
                                                      json_schema_extra={"surfaces": ["imagej", "cli"]})))
    cmd = Command("ijtorch Surface Probe", params, base.compute, verb="surface-probe", remote=True)
    register(cmd)
    try:
        yield cmd
    finally:
        _COMMANDS.pop(cmd.name, None)


def test_a_new_field_appears_on_every_surface(new_command):
    params = new_command.params
    # ImageJ: dialog and macro keys
    keys = [line.split("\t")[1] for line in dialog_spec(params).splitlines()]
    assert keys[-3:] == ["new_number", "new_mode", "cli_only_thing"]
    assert params_from_options(params, "new_number=5 new_mode=[first mode]").new_number == 5
    # CLI: a verb for the new command, its options generated, without touching ijtorch.cli
    verbs = _verb_parsers()
    parser = verbs["surface-probe"]
    args = parser.parse_args(["x.tif", "--output", "out", "--new-number", "4", "--new-mode", "first mode",
                              "--no-cli-only-thing", "--channel", "2"])
    p = params_from_args(params, args)
    assert (p.new_number, p.new_mode, p.cli_only_thing, p.channel) == (4, _Extra.a, False, 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["x.tif", "--output", "out", "--new-number", "10"])  # le=9 on the command line too
    # server: the request body of a route for it
    request = request_model(new_command.name)
    assert {"new_number", "new_mode"} <= set(request.model_fields) and "cli_only_thing" not in request.model_fields
    assert request.model_validate({"axes": "YX"}).to_params().new_number == 3
    # and the four-surfaces check holds for it
    check_imagej(params)
    check_cli(new_command, verbs)


def test_a_hand_written_task_option_is_caught(new_command):
    parser = argparse.ArgumentParser()
    add_params_options(parser, new_command.params)
    parser.__dict__["_ijtorch_command"] = new_command.name
    cli_option(parser, "--output", reason="where the CLI writes its files")
    check_cli(new_command, {"surface-probe": parser})
    parser.add_argument("--nms", type=float, default=0.3)  # drift: a second spelling, another default
    with pytest.raises(AssertionError, match="--nms: an option written by hand"):
        check_cli(new_command, {"surface-probe": parser})


def test_a_drifted_default_or_bound_is_caught(new_command):
    verbs = _verb_parsers()
    action = generated_options(verbs["surface-probe"])["new_number"]
    action.default = 4
    with pytest.raises(AssertionError):
        check_cli(new_command, verbs)
    action.default = 3
    action.type.bounds = {"ge": 1}
    with pytest.raises(AssertionError):
        check_cli(new_command, verbs)


def test_a_hand_written_request_model_is_caught():
    class SegmentRequest(BaseModel):  # as serve/requests.py had it: other defaults, another bound
        model_config = ConfigDict(extra="forbid")
        axes: str
        calibration: dict | None = None
        model: str = "nuclei"
        channel: int | None = Field(None, ge=1, le=4096)

    saved = copy.copy(ROUTE_REQUESTS)
    ROUTE_REQUESTS["/segment"] = SegmentRequest
    try:
        with pytest.raises(AssertionError):
            check_server(COMMANDS["ijtorch Segment"])
    finally:
        ROUTE_REQUESTS.clear()
        ROUTE_REQUESTS.update(saved)


def test_command_verbs_are_added_for_new_commands_only():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    sub.add_parser("segment")  # written by hand elsewhere: kept
    sub.add_parser("segment-cluster")  # cli/scale.py (its command's fields include output)
    add_command_verbs(sub)
    assert "_ijtorch_command" not in sub.choices["segment"].__dict__
    assert sub.choices["normalize"].__dict__["_ijtorch_command"] == "ijtorch Percentile Normalize"
