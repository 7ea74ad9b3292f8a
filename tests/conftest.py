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


@pytest.fixture(autouse=True)
def _close_imagej_windows(request):
    """JVM tests start from a clean ImageJ: no open images, empty ROI Manager, empty results."""
    yield
    from ijtorch import bridge

    if "jvm" in request.keywords and bridge.is_started():
        from ijtorch.bridge import run_macro

        run_macro('while (nImages > 0) { selectImage(nImages); close(); } '
                  'if (isOpen("ROI Manager")) { roiManager("reset"); } run("Clear Results");')
