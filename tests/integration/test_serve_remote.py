"""The Java shim's remote transport: with no Python handler for ``ijtorch Segment`` and a server
configured, the macro call goes to ``ijtorch serve`` and gives the same label image, ROIs and
Results as the in-process command, pixel for pixel."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _serve_model import CALIBRATION_IMAGE, make_tiny_model  # noqa: E402
from _serve_util import ServerProcess  # noqa: E402

pytestmark = pytest.mark.jvm
pytest.importorskip("httpx", reason="the server tests need httpx (pip install 'ijtorch[serve]')")
pytest.importorskip("uvicorn", reason="the server tests need uvicorn (pip install 'ijtorch[serve]')")

TITLE = "nuclei.tif"
MACRO = f'selectImage("{TITLE}"); run("ijtorch Segment", "model=tiny output=all");'


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    import torch

    from ijtorch.io.tiff import read_tiff

    image = read_tiff(shared_data / CALIBRATION_IMAGE).data
    folder = tmp_path_factory.mktemp("models")
    make_tiny_model(folder, image)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the same in the server: float sums may depend on the thread count
    with ServerProcess(folder, "--threads", "1") as server:
        yield image, folder, server
    torch.set_num_threads(before)


def _show(image):
    from ijtorch.bridge import numpy_to_imageplus
    from ijtorch.image import Calibration

    imp = numpy_to_imageplus(image, "YX", title=TITLE,
                             calibration=Calibration(pixel_width=0.5, pixel_height=0.25, unit="um"))
    imp.show()


def _snapshot():
    """Label image, its display, ROIs and the Results table as plain Python values."""
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy

    imp = JClass("ij.WindowManager").getImage(f"{Path(TITLE).stem}-labels")
    assert imp is not None, "no label image was shown"
    lut = imp.getProcessor().getLut()
    cal = imp.getCalibration()
    rois = JClass("ij.plugin.frame.RoiManager").getInstance().getRoisAsArray()
    table = JClass("ij.measure.ResultsTable").getResultsTable()
    headings = [str(h) for h in table.getHeadings()]
    return {
        "labels": imageplus_to_numpy(imp).data, "bit_depth": int(imp.getBitDepth()),
        "lut": [bytes(lut.getBytes())],
        "display": (float(imp.getDisplayRangeMin()), float(imp.getDisplayRangeMax())),
        "calibration": (float(cal.pixelWidth), float(cal.pixelHeight), str(cal.getUnit())),
        "rois": [(str(r.getName()), int(r.getType()), list(r.getPolygon().xpoints), list(r.getPolygon().ypoints))
                 for r in rois],
        "table": {h: list(table.getColumnAsDoubles(table.getColumnIndex(h))) for h in headings if h != "Label"},
    }


def _clean():
    from ijtorch.bridge import run_macro

    run_macro('while (nImages > 0) { selectImage(nImages); close(); } '
              'if (isOpen("ROI Manager")) { roiManager("reset"); } run("Clear Results");')


def test_remote_segment_equals_in_process(ij, setup, monkeypatch):
    from jpype import JClass

    from ijtorch import bridge
    from ijtorch.bridge._commands import _install_command, registered_commands
    from ijtorch.errors import MacroError

    image, folder, server = setup
    monkeypatch.setenv("IJTORCH_MODELS", str(folder))
    registry, prefs = JClass("ijtorch.IjtorchRegistry"), JClass("ij.Prefs")

    _show(image)
    bridge.run_macro(MACRO)
    local = _snapshot()
    _clean()
    assert len(local["rois"]) > 20

    prefs.set("ijtorch.server", server.url)
    registry.unregisterCommand("ijtorch Segment")
    try:
        assert registry.command("ijtorch Segment") is None
        _show(image)
        bridge.run_macro(MACRO)
        remote = _snapshot()
        with pytest.raises(MacroError, match="HTTP 422.*unknown option"):
            bridge.run_macro(f'selectImage("{TITLE}"); run("ijtorch Segment", "model=tiny colour=red");')
    finally:
        _install_command(registered_commands()["ijtorch Segment"])
        prefs.set("ijtorch.server", "")
    assert registry.command("ijtorch Segment") is not None

    np.testing.assert_array_equal(remote["labels"], local["labels"])
    assert remote["labels"].max() == len(local["rois"])
    for key in ("bit_depth", "lut", "display", "calibration", "rois"):
        assert remote[key] == local[key], key
    assert remote["table"].keys() == local["table"].keys() and "area" in local["table"]
    for column, values in local["table"].items():
        np.testing.assert_array_equal(remote["table"][column], values, err_msg=column)
