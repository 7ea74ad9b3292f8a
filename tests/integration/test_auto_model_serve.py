"""The server's /segment with ``model=auto`` (the default): the reply names the chosen model and
why, on the batched path (small grey image) and the plain one (RGB), as ``segment()`` does locally."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _serve_util import ServerProcess  # noqa: E402

from ijtorch.serve.client import Client  # noqa: E402


def test_server_segment_names_the_model_auto_chose(tmp_path, shared_data):
    import tifffile

    from ijtorch.tasks.segment import segment

    fluo = tifffile.imread(sorted((shared_data / "nuclei_dsb2018" / "more" / "images").glob("*.tif"))[0])
    rgb = np.stack([255 - fluo] * 3, axis=-1)  # an RGB image (plain, unbatched path)
    with ServerProcess(tmp_path, "--threads", "1") as server, Client(server.url, timeout=120) as client:
        remote = client.segment(fluo, "YX")
        assert remote.model == "nuclei" and remote.model_choice.startswith("model=auto: nuclei")
        local = segment(fluo, "YX", device="cpu")
        np.testing.assert_array_equal(remote.labels, local.labels)
        assert client.segment(fluo, "YX", model="nuclei").model_choice == ""  # explicit: no choice
        remote_rgb = client.segment(rgb, "YXS")
        assert remote_rgb.model_choice and remote_rgb.model == segment(rgb, "YXS", device="cpu").model
