"""Native libraries: mediapipe's TFLite/absl, libpng and libjpeg write straight to file
descriptor 2, and these helpers keep that noise out of the one-line errors users see;
OpenCV's worker threads are sized to the mode."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import cv2

from realtime.frames import Mode


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null for the duration. Process-wide, so use it only around short
    native calls (start-up, decoding a user's file), never around a running pipeline."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable stderr: nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class OpenCVThreads:
    """OpenCV's worker threads for the mode being drawn, set from the thread that renders.

    Its pool's workers spin for a while after every parallel call. A reenact frame's calls are
    small: the workers saved it no time and burnt 3-7 % of a two-core machine. The swap
    compositor's full-face filters gain about 2 ms a frame from them (benchmarks/RESULTS.md).
    """

    def __init__(self) -> None:
        self.default = cv2.getNumThreads()
        self.applied = self.default

    def apply(self, mode: Mode) -> None:
        self._set(self.default if mode is Mode.SWAP else 1)

    def restore(self) -> None:
        self._set(self.default)

    def _set(self, threads: int) -> None:
        if threads != self.applied:
            cv2.setNumThreads(threads)
            self.applied = threads
