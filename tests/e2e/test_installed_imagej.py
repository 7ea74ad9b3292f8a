"""A normally launched ImageJ (plain Java, no Python inside) with ijtorch installed into it
reaches models through ``ijtorch serve``: the Plugins › ijtorch commands come from the installed
jar's plugins.config, the ``Ext.`` macro functions from the server, and the server URL from
ijtorch.properties written by ``install-fiji``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from _serve_util import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow
NAME = "0402a81e75262469"


def test_installed_imagej_segments_through_the_server(tmp_path, shared_data):
    from ijtorch.io.tiff import read_tiff
    from ijtorch.models.store import bundled_dir
    from ijtorch.tasks.segment import segment

    if shutil.which("xvfb-run") is None:
        pytest.skip("xvfb-run is needed to start a plain ImageJ (apt-get install xvfb)")
    fiji = tmp_path / "Fiji.app"
    (fiji / "jars").mkdir(parents=True)
    (fiji / "plugins").mkdir()
    shutil.copy(Path("/usr/share/java/ij.jar").resolve(), fiji / "jars" / "ij.jar")
    models = tmp_path / "models"
    models.mkdir()
    image_path = shared_data / "nuclei_dsb2018" / "train" / "images" / f"{NAME}.tif"
    with ServerProcess(models, "--threads", "1") as server:
        out = subprocess.run([sys.executable, "-m", "ijtorch.cli", "install-fiji", str(fiji), "--server", server.url],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        labels_path = tmp_path / "labels.tif"
        report = tmp_path / "report.txt"
        macro = tmp_path / "remote.ijm"
        macro.write_text(
            f'List.setCommands; s = List.get("ijtorch Segment") + "\\n";\n'
            f'open("{image_path}");\n'
            'run("ijtorch Segment", "model=nuclei output=all");\n'
            f'saveAs("Tiff", "{labels_path}");\n'
            's = s + bitDepth() + "\\n" + roiManager("count") + "\\n" + nResults + "\\n";\n'
            'run("ijtorch Macro Functions"); Ext.ijtorchObjectCount(n);\n'
            's = s + n + "\\n" + Ext.ijtorchVersion() + "\\n";\n'
            f'File.saveString(s, "{report}");\n'
            'close("*"); run("Quit");\n')
        run = subprocess.run(["xvfb-run", "-a", "java", f"-Dplugins.dir={fiji}", "-cp", str(fiji / "jars" / "ij.jar"),
                              "ij.ImageJ", "-macro", str(macro)], capture_output=True, text=True, timeout=180, cwd=fiji)
        assert report.is_file(), f"ImageJ wrote no report (rc {run.returncode}): {run.stderr[-2000:]}\n{server.log_path.read_text()[-2000:]}"
    lines = report.read_text().splitlines()
    assert lines[0] == 'ijtorch.IjtorchCommand("ijtorch Segment")'
    image = read_tiff(image_path)
    # the server runs with 1 torch thread; compute the reference the same way
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = segment(image.data, image.axes, model=str(bundled_dir() / "nuclei"))
    finally:
        torch.set_num_threads(threads)
    from ijtorch import __version__

    # the macro functions of a Fiji without Python are the server's (the object count: this ImageJ's last run)
    assert lines[1:] == ["16", str(expected.n_objects), str(expected.n_objects), str(expected.n_objects), __version__]
    np.testing.assert_array_equal(read_tiff(labels_path).data, expected.labels)
