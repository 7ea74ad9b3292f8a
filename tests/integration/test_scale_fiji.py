"""``ijtorch Segment on Cluster`` from a macro in the embedded ImageJ: the current image's folder on a
real ``distributed.LocalCluster`` of 2 worker processes (started by the command), the files on disk,
and the current image's label map and ROIs opened, identical to the single-process segmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ijtorch import bridge

pytest.importorskip("distributed")

SAMPLES = Path(__file__).resolve().parents[2] / "python" / "ijtorch" / "samples" / "nuclei" / "images"
NAMES = ["1a75e9f15481d110.tif", "35ca5f142a7d7a3e.tif"]

pytestmark = [pytest.mark.jvm, pytest.mark.slow]


def test_macro_segments_the_current_folder_on_a_local_cluster(ij, tmp_path):
    from jpype import JClass

    from ijtorch.bridge import imageplus_to_numpy
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    folder = tmp_path / "plate"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(SAMPLES / name, folder / name)
    out = tmp_path / "results"
    current = folder / NAMES[1]
    log = bridge.run_macro(
        f'open("{current}"); run("ijtorch Segment on Cluster", "output=[{out}] scheduler=local workers=2");'
        'print(getTitle()); print(roiManager("count"));'
        'run("ijtorch Macro Functions"); Ext.ijtorchObjectCount(n); print(n);').log.splitlines()
    want = {name: segment(read_tiff(folder / name).data, "YX", model="nuclei").labels for name in NAMES}
    n_current = int(want[NAMES[1]].max())
    assert log[-3:] == [f"{current.stem}-labels", str(n_current), str(sum(int(w.max()) for w in want.values()))]
    shown = imageplus_to_numpy(JClass("ij.WindowManager").getImage(f"{current.stem}-labels"))
    np.testing.assert_array_equal(shown.data, want[NAMES[1]])
    for name in NAMES:  # every file of the folder, on disk
        np.testing.assert_array_equal(read_tiff(out / name).data, want[name])
        assert (out / f"{Path(name).stem}_RoiSet.zip").is_file()
