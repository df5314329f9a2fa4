"""Measurements on videos: per-frame landmarks, mouth/eye series, face-found ratio.

Shared by `realtime eval`, the benchmarks and the end-to-end tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from realtime import mesh
from realtime.tracking import FaceTracker


def read_frames(path: str, limit: int | None = None) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(path)
    try:
        count = 0
        while limit is None or count < limit:
            ok, image = cap.read()
            if not ok:
                break
            count += 1
            yield image
    finally:
        cap.release()


@dataclass
class VideoFaces:
    """Landmarks per frame (None where no face) of a video, from a tracker without smoothing."""

    landmarks: list[np.ndarray | None]

    @property
    def found_ratio(self) -> float:
        return sum(lm is not None for lm in self.landmarks) / max(1, len(self.landmarks))

    def series(self, fn) -> np.ndarray:
        return np.array([fn(lm) if lm is not None else np.nan for lm in self.landmarks], dtype=np.float64)

    @property
    def mouth(self) -> np.ndarray:
        return self.series(mesh.mouth_opening)

    @property
    def eyes(self) -> np.ndarray:
        return self.series(mesh.eye_opening)


def track_video(path: str, limit: int | None = None) -> VideoFaces:
    tracker = FaceTracker(smoothing=False, track_width=0)
    try:
        return VideoFaces(
            [faces[0] if (faces := tracker.detect(img)) else None for img in read_frames(path, limit)]
        )
    finally:
        tracker.close()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation over frames where both series are defined."""
    n = min(len(a), len(b))
    a, b = np.asarray(a[:n], float), np.asarray(b[:n], float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() < 1e-9 or b[ok].std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def video_frame_count(path: str) -> int:
    return sum(1 for _ in read_frames(path))
