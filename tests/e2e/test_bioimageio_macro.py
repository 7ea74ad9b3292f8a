"""The example macro fiji_macros/bioimageio_export_import.ijm in the embedded ImageJ (issue 22)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("BIOIMAGEIO_CACHE_PATH", tempfile.mkdtemp(prefix="bioimageio-cache-"))
pytest.importorskip("bioimageio.core")

MACRO = Path(__file__).resolve().parents[2] / "fiji_macros" / "bioimageio_export_import.ijm"


@pytest.mark.jvm
@pytest.mark.slow
def test_bioimageio_export_import_macro(ij, tmp_path, monkeypatch):
    import torch

    from ijtorch import bridge
    from ijtorch.io.tiff import write_imagej_tiff
    from ijtorch.models.stardist import network
    from ijtorch.models.stardist.model import StarDistModel
    from ijtorch.models.store import clear_model_cache

    monkeypatch.setenv("IJTORCH_MODELS", str(tmp_path / "models"))
    clear_model_cache()
    torch.manual_seed(0)
    model = StarDistModel(network.StarDistNet(n_rays=8, base_channels=4, depth=2, head_channels=8), {}).save(tmp_path / "m")
    img = write_imagej_tiff(tmp_path / "cells.tif",
                            np.random.default_rng(0).poisson(100, (64, 64)).astype(np.uint16), "YX")
    log = bridge.run_macro(MACRO.read_text(), f"model={model} output={tmp_path / 'pkg.zip'} name=zoo image={img} "
                                              "test=false").log
    assert "bioimageio.spec valid-format" in log, log
    assert "zoo registered (stardist2d" in log, log
    assert "imported model result: cells-labels" in log or "imported model result:" in log, log
    assert (tmp_path / "pkg.zip").is_file() and (tmp_path / "models" / "zoo" / "config.json").is_file()
    clear_model_cache()
