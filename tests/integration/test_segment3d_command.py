"""``ijtorch Segment`` on a z-stack with a 3D (ZYX) star-convex model, in the embedded ImageJ."""

from __future__ import annotations

import numpy as np
import pytest

from ijtorch import bridge

pytestmark = pytest.mark.jvm


@pytest.fixture
def model_3d(tmp_path, monkeypatch):
    """A registered 3D model whose every grid voxel is a candidate with equal distances."""
    import torch

    from ijtorch.models.stardist import network3d
    from ijtorch.models.stardist.model3d import StarDist3DModel

    torch.manual_seed(0)
    net = network3d.StarDistNet3D(32, 1, grid=(1, 2, 2), base_channels=4, depth=2, head_channels=4)
    with torch.no_grad():
        for head, bias in ((net.prob, 10.0), (net.dist, 5.0)):
            head.weight.zero_()
            head.bias.fill_(bias)
    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path))
    StarDist3DModel(net, {"thresholds": {"prob": 0.5, "nms": 0.3}}, device="cpu").save(tmp_path / "const3d")
    return "const3d"


def test_segment_command_sends_a_z_stack_to_a_3d_model(ij, model_3d):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy, numpy_to_imageplus
    from ijtorch.tasks.outlines import outlines
    from ijtorch.tasks.segment import segment

    vol = np.random.default_rng(0).normal(100, 10, size=(10, 32, 28)).astype(np.float32)
    expected = segment(vol, "ZYX", model=model_3d)
    imp = numpy_to_imageplus(vol, "ZYX", title="stack")
    imp.show()
    log = bridge.run_macro(
        f'selectImage("stack"); run("ijtorch Segment", "model={model_3d} output=all");'
        'print(getTitle()); print(nSlices); print(roiManager("count"));').log.splitlines()
    n_outlines = len(outlines(expected.labels, "ZYX").labels)
    assert log == ["stack-labels", "10", str(n_outlines)]
    labels = imageplus_to_numpy(JClass("ij.WindowManager").getImage("stack-labels"))
    assert labels.axes == "ZYX"
    np.testing.assert_array_equal(labels.data, expected.labels)
    # one object spans several planes under one label: the stack was segmented as a volume
    planes = [len(np.unique(np.nonzero(labels.data == k)[0])) for k in range(1, expected.n_objects + 1)]
    assert expected.n_objects > 1 and max(planes) >= 5
