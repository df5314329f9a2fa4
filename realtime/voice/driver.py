"""A face for the retargeter to follow when the voice drives the mouth.

``IdleMotion`` is the built-in head: slow, small turns and shifts (sums of incommensurate
sinusoids) and blinks at irregular intervals, all seeded, so a render is reproducible.
``VoiceFace`` puts the voice's mouth offsets, the blinks and the idle pose on the avatar's
own closed-mouth face; ``VoiceTracker`` hands those faces to the per-frame path in place of
a camera's. ``VoiceOverDriverTracker`` keeps a real driver video's head and eyes and
replaces only its mouth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from realtime import mesh
from realtime.expression import close_eyes
from realtime.frames import FaceTrack, Frame
from realtime.stages import Stage
from realtime.voice import mouth


@dataclass
class IdleMotion:
    """Head pose and eyelids of a person listening or talking, without a camera."""

    seed: int = 0
    yaw_deg: float = 3.0
    pitch_deg: float = 2.0
    roll_deg: float = 1.5
    shift: float = 0.015  # face sizes
    blink_every_s: tuple[float, float] = (2.0, 6.0)
    blink_s: float = 0.25
    _phases: np.ndarray = field(init=False, repr=False)
    _blinks: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self._phases = rng.uniform(0, 2 * math.pi, size=(5, 3))
        gaps = rng.uniform(*self.blink_every_s, size=4096)
        self._blinks = np.cumsum(gaps) - gaps[0] * 0.5

    def _wave(self, row: int, t: float) -> float:
        """A smooth value in about [-1, 1]: three sinusoids at 0.07, 0.19 and 0.31 Hz."""
        freqs = (0.07, 0.19, 0.31)
        weights = (0.6, 0.3, 0.15)
        return (
            sum(
                w * math.sin(2 * math.pi * f * t + p)
                for f, w, p in zip(freqs, weights, self._phases[row], strict=True)
            )
            / 1.05
        )

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(rotation (3, 3), shift (2,) in face sizes) at time ``t``."""
        angles = np.radians(
            [
                self.pitch_deg * self._wave(0, t),
                self.yaw_deg * self._wave(1, t),
                self.roll_deg * self._wave(2, t),
            ]
        )
        rotation, _ = cv2.Rodrigues(angles.reshape(3, 1))
        return rotation, self.shift * np.array([self._wave(3, t), self._wave(4, t)])

    def blink(self, t: float) -> float:
        """Eyelid closure in [0, 1] (1 closed)."""
        i = int(np.searchsorted(self._blinks, t)) - 1
        if i < 0:
            return 0.0
        phase = (t - self._blinks[i]) / self.blink_s
        if phase >= 1.0:
            return 0.0
        # Close fast (a third of the blink), open slower.
        return float(phase / 0.33 if phase < 0.33 else 1.0 - (phase - 0.33) / 0.67)


class VoiceFace:
    """Driver faces (478, 3) in the avatar's own pixels: its closed-mouth face, moved."""

    def __init__(self, neutral: np.ndarray, idle: IdleMotion | None) -> None:
        self.neutral = neutral.astype(np.float64)
        self.idle = idle
        self._centre = self.neutral[mesh.RIGID].mean(axis=0)
        self._size = mesh.face_size(self.neutral)

    def face(self, offsets: np.ndarray, t: float) -> np.ndarray:
        face = mouth.apply(self.neutral, offsets)
        if self.idle is None:
            return face
        blink = self.idle.blink(t)
        if blink > 0:
            face = close_eyes(face, blink)
        rotation, shift = self.idle.pose(t)
        face = (face - self._centre) @ rotation.T + self._centre
        face[:, :2] += shift * self._size
        return face


class VoiceTracker(Stage):
    """``process(frame) -> FaceTrack``: the voice's face for frame ``index`` (offsets per frame)."""

    def __init__(self, face: VoiceFace, offsets: np.ndarray, fps: float) -> None:
        self.voice_face = face
        self.offsets = offsets
        self.fps = fps

    def process(self, frame: Frame) -> FaceTrack:
        i = min(frame.index, len(self.offsets) - 1)
        landmarks = self.voice_face.face(self.offsets[i], frame.index / self.fps)
        return FaceTrack(frame=frame, landmarks=landmarks.astype(np.float32), faces_seen=1)


class VoiceOverDriverTracker(Stage):
    """A real tracker on a driver video whose mouth is replaced by the voice's.

    The driver's neutral is its first face with the mouth closed; each frame is unposed
    against it, everything below the nose is set to the neutral plus the voice's offsets,
    and the head pose is put back, so head turns, brows and blinks stay the driver's.
    """

    def __init__(self, tracker: Stage, offsets: np.ndarray) -> None:
        self.tracker = tracker
        self.offsets = offsets
        self._neutral: np.ndarray | None = None
        self._below_nose: np.ndarray | None = None

    def open(self) -> VoiceOverDriverTracker:
        self.tracker.open()
        return self

    def close(self) -> None:
        self.tracker.close()

    def process(self, frame: Frame) -> FaceTrack:
        track = self.tracker.process(frame)
        if not track.found:
            return track
        face = track.landmarks.astype(np.float64)
        if self._neutral is None:
            from realtime.retarget import Retargeter

            self._neutral = Retargeter.closed_mouth(face)
            self._below_nose = np.flatnonzero(self._neutral[:, 1] > self._neutral[mesh.NOSE_BOTTOM, 1])
        neutral = self._neutral
        scale, rotation, translation = mesh.umeyama(neutral[mesh.RIGID], face[mesh.RIGID])
        unposed = (face - translation) @ rotation / scale
        spoken = mouth.apply(neutral, self.offsets[min(frame.index, len(self.offsets) - 1)])
        unposed[self._below_nose] = spoken[self._below_nose]
        posed = scale * unposed @ rotation.T + translation
        return FaceTrack(
            frame=track.frame,
            landmarks=posed.astype(np.float32),
            raw_landmarks=track.raw_landmarks,
            faces_seen=track.faces_seen,
            lost_for_s=track.lost_for_s,
            stage_ms=track.stage_ms,
        )
