"""Under ``--dask`` the dataset-shift warning of a file prints with that file's line, in input order,
as without ``--dask``, also when the workers run elsewhere (an existing scheduler: their own stderr
is not the CLI's)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

SAMPLES = Path(__file__).resolve().parents[2] / "python" / "ijtorch" / "samples" / "nuclei" / "images"

pytestmark = pytest.mark.slow


def _merged(*args) -> list[str]:
    """stdout and stderr of ``python -m ijtorch.cli ARGS`` as one stream, in the order written."""
    out = subprocess.run([sys.executable, "-m", "ijtorch.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stdout
    return out.stdout.splitlines()


def test_each_shift_warning_prints_with_its_files_line(tmp_path):
    import tifffile
    from distributed import LocalCluster

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLES / "1a75e9f15481d110.tif", folder / "a.tif")
    # a bright background with dark objects (a sample inverted, as in transmitted light): unlike the
    # fluorescence training images of 'nuclei' (a plain intensity ramp no longer scores above the
    # grid-2 model's threshold: 1.38 < 1.45)
    sample = tifffile.imread(SAMPLES / "1a75e9f15481d110.tif")
    tifffile.imwrite(folder / "b_gradient.tif", (sample.max() - sample).astype(sample.dtype))
    shutil.copy(SAMPLES / "35ca5f142a7d7a3e.tif", folder / "c.tif")

    def lines(*extra) -> list[str]:
        got = _merged("segment", folder, "--model", "nuclei", "--output", tmp_path / f"out{len(extra)}", *extra)
        return [line for line in got if line.startswith(("WARNING", "a.tif", "b_gradient.tif", "c.tif"))]

    single = lines()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        dask = lines("--dask", cluster.scheduler_address)
    assert [line.split(":")[0] for line in single] == ["a.tif", "WARNING b_gradient.tif", "b_gradient.tif", "c.tif"]
    untimed = [re.sub(r" in [0-9.]+ s -> .*$", "", line) for line in single]
    assert [re.sub(r" in [0-9.]+ s -> .*$", "", line) for line in dask] == untimed
