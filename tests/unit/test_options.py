"""ImageJ option strings and parameter models (no JVM)."""

from __future__ import annotations

from enum import Enum
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from ijtorch.commands.options import OptionsError, dialog_spec, format_options, params_from_options, parse_options
class Output(str, Enum):
    labels = "label map"
    rois = "ROI Manager"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("nuclei", description="model name or folder")
    prob: float = Field(0.5, description="probability threshold")
    tiles: int = 1
    output: Output = Output.labels
    mode: Literal["2d", "3d"] = "2d"
    show: bool = True


def test_parse_brackets_flags_and_equals_in_values():
    assert parse_options("model=[my model] prob=0.5 show path=/a=b/c x=[]") == {
        "model": "my model", "prob": "0.5", "show": True, "path": "/a=b/c", "x": ""}


def test_parse_rejects_unclosed_bracket():
    with pytest.raises(OptionsError, match="without a closing"):
        parse_options("model=[abc")


def test_format_then_parse_round_trips():
    values = {"model": "my model", "prob": 0.25, "show": True, "hidden": False, "output": Output.rois}
    text = format_options(values)
    assert text == "model=[my model] prob=0.25 show output=[ROI Manager]"
    assert parse_options(text) == {"model": "my model", "prob": "0.25", "show": True, "output": "ROI Manager"}


def test_params_validation_and_imagej_checkbox_semantics():
    p = params_from_options(Params, "model=[a b] prob=0.7 tiles=4 output=[ROI Manager] mode=3d")
    assert p == Params(model="a b", prob=0.7, tiles=4, output=Output.rois, mode="3d", show=False)
    assert params_from_options(Params, "show").show is True


@pytest.mark.parametrize("options, message", [
    ("bogus=1", r"unknown option\(s\) \['bogus'\]; accepted: \['mode', 'model', 'output', 'prob', 'show', 'tiles'\]"),
    ("prob=abc", r"prob: Input should be a valid number.*'abc'"),
    ("tiles=2.5", r"tiles"),
    ("mode=4d", r"mode"),
    ("prob", r"option 'prob' needs a value"),
    ("show=maybe", r"option 'show' expects true/false, got 'maybe'"),
])
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(OptionsError, match=message):
        params_from_options(Params, options, command="ijtorch X")


def test_dialog_spec_lists_kinds_defaults_choices_and_help():
    lines = [line.split("\t") for line in dialog_spec(Params).splitlines()]
    assert lines[0] == ["string", "model", "nuclei", "", "model name or folder"]
    assert lines[1] == ["number", "prob", "0.5", "", "probability threshold"]
    assert lines[3] == ["choice", "output", "label map", "label map|ROI Manager", ""]
    assert lines[4][:4] == ["choice", "mode", "2d", "2d|3d"]
    assert lines[5][:3] == ["checkbox", "show", "true"]


class CliOnly(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = "nuclei"
    workers: int = Field(2, json_schema_extra={"surfaces": ["cli"]})


def test_fields_off_the_imagej_surface_are_neither_dialog_fields_nor_macro_keys():
    assert [line.split("\t")[1] for line in dialog_spec(CliOnly).splitlines()] == ["model"]
    assert params_from_options(CliOnly, "model=x") == CliOnly(model="x", workers=2)
    with pytest.raises(OptionsError, match=r"unknown option\(s\) \['workers'\]; accepted: \['model'\]"):
        params_from_options(CliOnly, "workers=3")
