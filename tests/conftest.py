"""Shared fixtures. Real footage comes from ../shared/media; tests that need it skip without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Whatever quiets native logging must be the product's doing, not the test environment's:
# the CLI runs without these.
QUIETING_VARIABLES = (
    "GLOG_minloglevel",
    "TF_CPP_MIN_LOG_LEVEL",
    "OPENCV_FFMPEG_LOGLEVEL",
    "OPENCV_LOG_LEVEL",
)


def cli(
    *args: str | os.PathLike[str], cwd: Path = REPO, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``realtime ...`` as a user runs it: a subprocess, its output captured."""
    env = {k: v for k, v in os.environ.items() if k not in QUIETING_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "realtime.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def write_astronaut_clip(path: Path, frames: int) -> Path:
    """A short valid video of the built-in portrait, slowly cropped, written with the real ffmpeg."""
    from realtime.avatar import builtin_portrait
    from realtime.frames import Output
    from realtime.sinks import FileSink

    portrait = builtin_portrait()
    sink = FileSink(path)
    sink.open(320, 320, 25.0)
    for i in range(frames):
        sink.send(Output(image=portrait[: 512 - i, i:], index=i, t_capture=0.0))
    sink.close()
    return path


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
