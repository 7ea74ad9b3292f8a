"""``#@`` script-parameter parsing of ``run_jython`` (no JVM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ijtorch.bridge._jython import ScriptParameter, script_parameters
from ijtorch.errors import BridgeError

SCRIPTS = Path(__file__).resolve().parents[2] / "jython_scripts"


def test_parameters_of_the_segment_script():
    params = script_parameters(SCRIPTS / "Segment_Folder.py")
    assert params[0] == ScriptParameter("input_dir", "file", None, "Folder of images")
    assert ScriptParameter("model", "string", "nuclei", "Model") in params
    assert ScriptParameter("save_rois", "boolean", "false", "Also save ROIs and measurements") in params
    assert params[-1] == ScriptParameter("summary", "string", None, "summary", output=True)


def test_every_shipped_script_declares_only_supported_types():
    for script in SCRIPTS.glob("*.py"):
        assert any(p.output for p in script_parameters(script)), script.name


def test_unsupported_type_is_named(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("#@ ImagePlus imp\n")
    with pytest.raises(BridgeError, match="parameter 'imp' has type ImagePlus"):
        script_parameters(script)
