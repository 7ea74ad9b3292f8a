"""``ijtorch segment-cluster`` (the Segment on Cluster command's generated verb) end to end, as a user
runs it: a folder on a real LocalCluster of 2 worker processes gives the labels of ``segment()``;
a missing input is one line and exit code 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

SAMPLES = Path(__file__).resolve().parents[2] / "python" / "ijtorch" / "samples" / "nuclei" / "images"
NAMES = ["1a75e9f15481d110.tif", "35ca5f142a7d7a3e.tif"]

pytestmark = pytest.mark.slow


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ijtorch.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_segment_cluster_folder_equals_segment(tmp_path):
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import segment

    folder = tmp_path / "plate"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(SAMPLES / name, folder / name)
    out = tmp_path / "out"
    run = _cli("segment-cluster", "--input", folder, "--output", out, "--model", "nuclei", "--channel", 1,
               "--prob-threshold", 0, "--nms-threshold", 0, "--block", 1024, "--halo", 128, "--scheduler", "local",
               "--workers", 2, "--threads", 1)
    assert run.returncode == 0, run.stderr
    assert "ijtorch Segment on Cluster: 2 done, 0 failed" in run.stdout and "Traceback" not in run.stderr
    assert "dask: 2 worker(s)" in run.stdout
    for name in NAMES:
        image = read_tiff(folder / name)
        np.testing.assert_array_equal(read_tiff(out / name).data, segment(image.data, image.axes, model="nuclei").labels)


def test_segment_cluster_refuses_a_missing_input_in_one_line(tmp_path):
    run = _cli("segment-cluster", "--input", tmp_path / "nothing", "--output", tmp_path / "out")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"ijtorch segment-cluster: input {tmp_path / 'nothing'} does not exist"
    assert not (tmp_path / "out").exists()
    run = _cli("segment-cluster", "--output", tmp_path / "out")
    assert run.returncode == 2 and "--input: give a folder" in run.stderr
