"""Swap mode: where a hand covers part of the face, the landmarks there hold rather than jump.

mediapipe still reports every landmark under a hand, but those guesses are pulled about by the
hand's edges and fingers, so the swapped face's jaw, cheek or mouth would jump and distort
with them. ``CoveredHold`` keeps the face's shape in the covered parts from the last frames in
which they were seen, carried by the head's motion measured on the points that are still
visible; as the hand leaves, the held shape hands back to the tracked one over a few frames.
"""

from __future__ import annotations

import numpy as np

from realtime import mesh

VISIBLE_BELOW = 0.05  # a landmark less covered than this is seen: its shape is remembered
MIN_VISIBLE_RIGID = 6  # fewer visible rigid points: the head's motion comes from all visible ones
MIN_VISIBLE = 12  # fewer visible points at all: everything holds the last output, moved by nothing


class CoveredHold:
    """``__call__(landmarks, covered) -> landmarks``: (N, 2+) pixels, ``covered`` (N,) in [0, 1].

    ``release``: per frame, how much of its hold a landmark keeps once it is uncovered (0.6:
    about five frames back to the tracked shape, so the hand leaving does not snap the mask).
    One per stream; ``reset()`` when the face is lost.
    """

    def __init__(self, release: float = 0.6) -> None:
        self.release = release
        self._shape: np.ndarray | None = None  # the face in the pose it had when last fully seen
        self._hold: np.ndarray | None = None  # per-landmark weight of the held shape
        self._last: np.ndarray | None = None

    def reset(self) -> None:
        self._shape = self._hold = self._last = None

    @property
    def holding(self) -> bool:
        return self._hold is not None and bool(self._hold.max() > 1e-3)

    def __call__(self, landmarks: np.ndarray, covered: np.ndarray | None) -> np.ndarray:
        points = landmarks[:, :2].astype(np.float64)
        n = len(points)
        cover = np.zeros(n) if covered is None else np.clip(np.asarray(covered, np.float64)[:n], 0.0, 1.0)
        if self._shape is None or len(self._shape) != n:
            if cover.max() >= VISIBLE_BELOW:
                return landmarks  # nothing seen yet to hold on to
            self._shape, self._hold = points.copy(), np.zeros(n)
            self._last = points.copy()
            return landmarks
        assert self._hold is not None and self._last is not None
        hold = np.maximum(cover, self.release * self._hold)
        hold[hold < 1e-3] = 0.0
        self._hold = hold
        visible = cover < VISIBLE_BELOW
        if not hold.any():
            self._shape[:] = points  # nothing covered: the remembered shape is this frame's
            self._last = points.copy()
            return landmarks
        rigid = [i for i in mesh.RIGID if i < n and visible[i]]
        anchors = rigid if len(rigid) >= MIN_VISIBLE_RIGID else np.flatnonzero(visible)
        if len(anchors) < MIN_VISIBLE:
            held = self._last  # the face is mostly hidden: hold the last output as it was
        else:
            # The head's motion since the face was last fully seen, from points still seen.
            s, r, t = mesh.umeyama(self._shape[anchors], points[anchors])
            # What is seen (and no longer held) updates the remembered shape (in that pose).
            local = (points - t) @ r / s
            seen = visible & (hold == 0.0)
            self._shape[seen] = local[seen]
            held = s * self._shape @ r.T + t
        out = points + hold[:, None] * (held - points)
        self._last = out
        result = landmarks.copy()
        result[:, :2] = out.astype(landmarks.dtype)
        return result
