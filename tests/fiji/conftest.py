"""Fixtures of the real-Fiji tests (helpers in ``_fiji_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _fiji_helpers import FIJI


@pytest.fixture
def fiji_path() -> Path:
    if not FIJI:
        pytest.skip("set IJTORCH_FIJI to a Fiji.app folder to run the real-Fiji tests")
    return Path(FIJI)
