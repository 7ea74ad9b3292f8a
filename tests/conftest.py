"""Shared fixtures. JVM tests (marker ``jvm``) share one embedded ImageJ per pytest process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("IJTORCH_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def ij():
    """The running embedded ImageJ (started once per process)."""
    from ijtorch import bridge

    return bridge.start()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set IJTORCH_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``):
    much faster than two on a shared, oversubscribed CPU, and deterministic."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _close_imagej_windows(request):
    """JVM tests start from a clean ImageJ: no open images, empty ROI Manager, empty results."""
    yield
    from ijtorch import bridge

    if "jvm" in request.keywords and bridge.is_started():
        from ijtorch.bridge import run_macro

        run_macro('while (nImages > 0) { selectImage(nImages); close(); } '
                  'if (isOpen("ROI Manager")) { roiManager("reset"); } run("Clear Results");')


@pytest.fixture(scope="session")
def segmentation_model(tmp_path_factory) -> str:
    """A model name ``ijtorch Segment`` can load: the bundled ``nuclei`` when present, otherwise a
    tiny StarDist trained here in ~15 s (2 steps on 3 shared nuclei images; plumbing tests only,
    its segmentations are meaningless). Sets ``IJTORCH_MODELS`` for the session and subprocesses."""
    from ijtorch.models.store import list_models

    if any(m["name"] == "nuclei" for m in list_models()):
        return "nuclei"
    from ijtorch.io.tiff import read_tiff
    from ijtorch.tasks.segment import train_segmentation

    data = SHARED_DATA / "nuclei_dsb2018" / "train"
    if not data.is_dir():
        pytest.skip(f"no bundled nuclei model and no shared data at {data} to train a stand-in")
    models = tmp_path_factory.mktemp("models")
    os.environ["IJTORCH_MODELS"] = str(models)
    names = sorted(p.name for p in (data / "images").iterdir())[:3]
    images = [read_tiff(data / "images" / n).data for n in names]
    labels = [read_tiff(data / "labels" / n).data for n in names]
    train_segmentation(images, labels, output=models / "tiny", epochs=1, steps_per_epoch=2, patch_size=64,
                       batch_size=2, val_fraction=0.0, device="cpu", seed=0)
    return "tiny"
