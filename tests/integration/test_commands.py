"""Python handlers as ImageJ commands and macro functions, run in the real embedded ImageJ."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from _dialogs import find_dialog, press_ok
from ijtorch import bridge
from ijtorch.commands.outputs import CommandOutputs
from ijtorch.errors import MacroError

pytestmark = pytest.mark.jvm


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    factor: float = Field(2.0, description="multiply pixel values by this")
    mode: Literal["fast", "exact"] = "fast"
    title: str = "scaled result"
    verbose: bool = False


CALLS: list[ScaleParams] = []


@bridge.command("ijtorch Test Scale", params=ScaleParams)
def _scale(inputs, params: ScaleParams) -> CommandOutputs:
    if params.factor < 0:
        raise ValueError(f"factor must be >= 0, got {params.factor}")
    CALLS.append(params)
    return CommandOutputs(log=(f"scaled by {params.factor} ({params.mode}) into [{params.title}]",))


@bridge.macro_function("ijtorchTestAdd")
def _add(a: float, b: float) -> float:
    return a + b


@bridge.macro_function("ijtorchTestGreet")
def _greet(name: str) -> str:
    return f"hello {name}"


@bridge.macro_function("ijtorchTestSqrt")
def _sqrt(x: float) -> float:
    if x < 0:
        raise ValueError(f"cannot take the square root of {x}")
    return x ** 0.5


@bridge.macro_function("ijtorchTestCount", returns="number")
def _count(text: str) -> int:
    return len(text)


def test_command_in_command_table_and_menu(ij):
    from jpype import JClass

    assert str(JClass("ij.Menus").getCommands().get("ijtorch Test Scale")) == 'ijtorch.IjtorchCommand("ijtorch Test Scale")'
    plugins = JClass("ij.Menus").getImageJMenu("Plugins")
    labels = {str(plugins.getItem(i).getLabel()) for i in range(plugins.getItemCount())}
    assert "ijtorch" in labels
    sub = next(plugins.getItem(i) for i in range(plugins.getItemCount()) if str(plugins.getItem(i).getLabel()) == "ijtorch")
    items = [(str(sub.getItem(i).getLabel()), str(sub.getItem(i).getActionCommand())) for i in range(sub.getItemCount())]
    # Plugins > ijtorch > Segment... : no repeated prefix; the item still runs the command by its name
    assert ("Segment\u2026", "ijtorch Segment") in items and ("Test Scale\u2026", "ijtorch Test Scale") in items
    assert not any(label.startswith("ijtorch ") for label, _ in items)
    commands = [c for _, c in items]
    assert commands.index("ijtorch Segment") < commands.index("ijtorch Track") < commands.index("ijtorch Percentile Normalize")


def test_macro_options_reach_python_with_imagej_syntax(ij):
    CALLS.clear()
    result = bridge.run_macro('run("ijtorch Test Scale", "factor=3.5 mode=exact title=[my result] verbose");')
    assert CALLS == [ScaleParams(factor=3.5, mode="exact", title="my result", verbose=True)]
    assert result.log == "scaled by 3.5 (exact) into [my result]"


def test_absent_checkbox_is_false_and_defaults_apply(ij):
    CALLS.clear()
    bridge.run_macro('run("ijtorch Test Scale", "factor=1");')
    assert CALLS == [ScaleParams(factor=1.0, verbose=False)]


def test_python_exception_becomes_macro_error_and_imagej_keeps_working(ij):
    with pytest.raises(MacroError, match="factor must be >= 0, got -1.0"):
        bridge.run_macro('run("ijtorch Test Scale", "factor=-1"); print("not reached");')
    with pytest.raises(MacroError, match=r"unknown option\(s\) \['bogus'\]; accepted: \['factor', 'mode', 'title', 'verbose'\]"):
        bridge.run_macro('run("ijtorch Test Scale", "bogus=1");')
    with pytest.raises(MacroError, match="mode"):
        bridge.run_macro('run("ijtorch Test Scale", "mode=slow");')
    assert bridge.run_macro('run("ijtorch Test Scale", "factor=2"); print("still alive");').log.endswith("still alive")


def test_ext_functions_return_strings_and_numbers(ij):
    code = """
    run("ijtorch Macro Functions");
    s = Ext.ijtorchTestGreet("fiji");
    t = Ext.ijtorchTestAdd(2, 3.5);
    Ext.ijtorchTestCount("abcd", n);
    print(s); print(t); print(n + 1);
    return Ext.ijtorchVersion();
    """
    import ijtorch

    result = bridge.run_macro(code)
    assert result.log.splitlines() == ["hello fiji", "5.5", "5"]
    assert result.value == ijtorch.__version__


def test_ext_function_error_is_macro_error(ij):
    with pytest.raises(MacroError, match=r"Ext.ijtorchTestSqrt: cannot take the square root of -4.0"):
        bridge.run_macro('run("ijtorch Macro Functions"); x = Ext.ijtorchTestSqrt(-4); print("not reached");')
    assert bridge.run_macro('run("ijtorch Macro Functions"); print(Ext.ijtorchTestSqrt(16));').log == "4.0"


def test_macro_syntax_error_is_reported(ij):
    with pytest.raises(MacroError, match="Undefined variable"):
        bridge.run_macro("x = undefinedThing + 1;")


@pytest.mark.parametrize("code, line", [
    ('newImage("a", "8-bit ramp", 32, 32, 1);\nfor (i = 0; i < 2; i++) {\n'
     '    run("ijtorch Segment", "model=nucleii output=[label map]");\n    print("after " + i);\n}\n', 3),
    ('newImage("a", "8-bit ramp", 32, 32, 1);\nif (nImages > 0) {\n'
     '    run("ijtorch Segment", "model=nucleii output=[label map]");\n    x = 1;\n}\n', 3),
    ('run("ijtorch Macro Functions");\nwhile (true) {\n    x = Ext.ijtorchTestSqrt(-4);\n}\n', 3),
], ids=["for-loop", "if-block", "ext-in-while"])
def test_python_error_inside_a_loop_or_block_is_the_macros_error(ij, code, line):
    """The interpreter parses on after the shim's abort and used to replace the Python message with
    "';' expected" / "'}' expected"; the macro error is the Python one, on the line it happened."""
    with pytest.raises(MacroError) as err:
        bridge.run_macro(code)
    text = str(err.value)
    assert "expected" not in text, text
    assert ("model='nucleii' is neither a model directory nor a registered model" in text
            or "cannot take the square root of -4.0" in text), text
    assert text.endswith(f"(line {line})"), text
    bridge.run_macro('close("*");')
    # a later macro error that is not ijtorch's keeps ImageJ's own message
    with pytest.raises(MacroError, match="Undefined variable"):
        bridge.run_macro("y = undefinedThing + 1;")


def test_menu_dialog_runs_command_and_macro_recorder_line_replays(ij):
    """Run from the menu (dialog filled and OK pressed), record it, replay the recorded line."""
    import time

    from jpype import JClass

    IJ = JClass("ij.IJ")
    Recorder = JClass("ij.plugin.frame.Recorder")
    recorder = Recorder(False)
    record_flag = Recorder.class_.getField("record")  # JPype cannot assign Java static fields directly
    record_flag.setBoolean(None, True)
    try:
        CALLS.clear()
        IJ.doCommand("ijtorch Test Scale")  # what a menu click does: runs on a new thread
        dialog = find_dialog("ijtorch Test Scale")
        fields = dialog.getStringFields()
        fields.get(0).setText("4.25")
        fields.get(1).setText("from the dialog")
        dialog.getChoices().get(0).select("exact")
        dialog.getCheckboxes().get(0).setState(True)
        press_ok(dialog)
        deadline = time.time() + 20
        while not CALLS and time.time() < deadline:
            time.sleep(0.05)
        assert CALLS == [ScaleParams(factor=4.25, mode="exact", title="from the dialog", verbose=True)]
        time.sleep(0.5)  # the Recorder writes the line after the command returns
        text = str(recorder.getText())
    finally:
        record_flag.setBoolean(None, False)
        recorder.close()
    lines = [line for line in text.splitlines() if "ijtorch Test Scale" in line]
    assert lines == ['run("ijtorch Test Scale", "factor=4.25 mode=exact title=[from the dialog] verbose");']
    CALLS.clear()
    bridge.run_macro(lines[0])
    assert CALLS == [ScaleParams(factor=4.25, mode="exact", title="from the dialog", verbose=True)]


def test_normalize_command_output_equals_the_task_function(ij):
    import numpy as np
    from jpype import JClass

    from ijtorch.bridge._convert import imageplus_to_numpy, numpy_to_imageplus
    from ijtorch.image import Calibration
    from ijtorch.core.normalize import normalize

    rng = np.random.default_rng(3)
    data = rng.integers(0, 4000, size=(3, 40, 50), dtype=np.uint16)  # a z-stack
    cal = Calibration(pixel_width=0.5, pixel_height=0.5, voxel_depth=2.0, unit="micron")
    imp = numpy_to_imageplus(data, "ZYX", title="stack", calibration=cal)
    imp.show()
    bridge.run_macro('selectImage("stack"); run("ijtorch Percentile Normalize", "low=2 high=98 per_plane");')
    out = JClass("ij.WindowManager").getCurrentImage()
    assert str(out.getTitle()) == "stack-normalized"
    result = imageplus_to_numpy(out)
    assert result.axes == "ZYX" and result.data.dtype == np.float32
    np.testing.assert_array_equal(result.data, normalize(data, "ZYX", low=2, high=98, per_plane=True))
    assert result.calibration == cal
