"""Shared fixtures. Real footage comes from ../shared/media; tests that need it skip without it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def media(relative: str) -> Path:
    """Path of a shared media file, or skip the test with the reason."""
    path = MEDIA / relative
    if not path.exists():
        pytest.skip(f"shared media not available: {path}")
    return path


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from realtime.avatar import builtin_portrait

    return builtin_portrait()


@pytest.fixture(scope="session")
def builtin_avatar():
    from realtime.avatar import load_avatar

    return load_avatar("builtin", (640, 480))
