"""Each segmented object's confidence as a ROI property in the embedded ImageJ: in the ROI Manager
(``Roi.getProperty("confidence")`` in a macro) and in RoiSet.zip files ImageJ reads back."""

from __future__ import annotations

import numpy as np
import pytest

from ijtorch import bridge

pytestmark = pytest.mark.jvm
NAME = "449fe932622db3b4"  # a validation image of the bundled nuclei model


def test_segment_rois_carry_confidence_readable_from_a_macro(ij, shared_data, tmp_path):
    from ijtorch.io.roiset import confidence_properties, write_roiset
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.outlines import outlines
    from ijtorch.tasks.segment import segment

    path = shared_data / "nuclei_dsb2018" / "train" / "images" / f"{NAME}.tif"
    image = read_tiff(path)
    expected = segment(image.data, image.axes, model="nuclei")
    ol = outlines(expected.labels, "YX")
    want = confidence_properties(ol.labels, expected.confidence)["confidence"]
    log = bridge.run_macro(
        f'open("{path}"); run("ijtorch Segment", "model=nuclei output=[ROI Manager]");'
        'n = roiManager("count"); print(n);'
        'for (i = 0; i < n; i++) { roiManager("select", i); print(Roi.getName + " " + Roi.getProperty("confidence")); }'
    ).log.splitlines()
    assert log[0] == str(len(ol)) and len(log) == len(ol) + 1
    names = [line.split(" ")[0] for line in log[1:]]
    got = [float(line.split(" ")[1]) for line in log[1:]]
    assert names[0] == "label_0001" and got == pytest.approx([float(v) for v in want], abs=5e-4)
    assert all(expected.prob_threshold - 1e-3 <= v <= 1 for v in got)

    # a RoiSet.zip written by ijtorch, opened by ImageJ's ROI Manager
    zip_path = write_roiset(tmp_path / "rois.zip", ol, properties={"confidence": want})
    log = bridge.run_macro(
        f'roiManager("reset"); roiManager("open", "{zip_path}"); print(roiManager("count"));'
        'roiManager("select", 2); print(Roi.getProperty("confidence"));').log.splitlines()
    assert log == [str(len(ol)), want[2]]
    assert np.isfinite(float(log[1]))


def test_headless_rois_carry_confidence_on_the_overlay_and_in_the_roiset(ij, tmp_path):
    """What a headless Fiji gets (no ROI Manager): the overlay's ROIs and <title>_RoiSet.zip."""
    from ijtorch.bridge import numpy_to_imageplus
    from ijtorch.bridge.apply import _rois_headless
    from ijtorch.commands.outputs import RoiOutput
    from ijtorch.io.roiset import read_roiset
    from ijtorch.tasks.outlines import outlines

    labels = np.zeros((40, 50), np.uint16)
    labels[2:12, 3:13], labels[20:30, 25:40] = 1, 2
    ol = outlines(labels, "YX")
    target = numpy_to_imageplus(labels.astype(np.uint8), "YX", title="cells.tif")
    _rois_headless(RoiOutput(ol, properties={"confidence": ["0.910", "0.420"]}), target, tmp_path)
    overlay = target.getOverlay()
    assert [str(overlay.get(i).getProperty("confidence")) for i in range(overlay.size())] == ["0.910", "0.420"]
    assert [p["confidence"] for p in read_roiset(tmp_path / "cells_RoiSet.zip").properties] == ["0.910", "0.420"]
