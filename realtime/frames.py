"""Plain dataclasses that flow one way through the pipeline.

Every record carries ``t_capture`` (``time.monotonic()`` seconds at capture) so any
stage can tell how late it is, the way a GStreamer buffer carries its timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class Mode(str, Enum):
    """What the avatar does: animate the portrait (reenact) or replace the user's face (swap)."""

    REENACT = "reenact"
    SWAP = "swap"

    def __str__(self) -> str:
        return self.value

    def other(self) -> Mode:
        return Mode.SWAP if self is Mode.REENACT else Mode.REENACT


@dataclass
class Frame:
    """A captured (or produced) BGR uint8 image."""

    image: np.ndarray
    index: int
    t_capture: float


@dataclass
class FaceTrack:
    """Tracker output for one frame.

    ``landmarks`` is (478, 3) float32 in pixels of ``frame.image`` (z in the same
    scale as x), smoothed; ``None`` when no face is locked.
    """

    frame: Frame
    landmarks: np.ndarray | None
    raw_landmarks: np.ndarray | None = None
    faces_seen: int = 0
    lost_for_s: float = 0.0
    # Milliseconds each stage spent on this frame so far; later stages add theirs.
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.landmarks is not None


@dataclass
class Target:
    """What the generator must draw: avatar landmarks (N, 2) in canvas pixels."""

    frame: Frame
    landmarks: np.ndarray
    mode: Mode = Mode.REENACT
    face_found: bool = True
    # Weight of live driving in [0, 1]: 1 while tracking, easing to 0 (neutral) when lost.
    live_weight: float = 1.0
    # The user's own landmarks (478, 2) in ``frame`` pixels while the face is tracked; a
    # refiner that looks at the user's mouth (teeth, a dark cavity) cuts it with them.
    driver_landmarks: np.ndarray | None = None


@dataclass
class Rendered:
    """A generator's output: a patch with a soft mask, to paste at ``origin`` (x, y)."""

    frame: Frame
    patch: np.ndarray
    mask: np.ndarray
    origin: tuple[int, int] = (0, 0)
    colour_match: bool = False
    background: np.ndarray | None = None
    generator: str = "warp"
    # Swap mode: the user's landmarks (478, 2) in frame pixels, which shape the composite
    # (``realtime.swap``), what covers the face over the patch's box (a hand), if known, and
    # whether the user's glasses stay in front.
    driver_landmarks: np.ndarray | None = None
    occluder: np.ndarray | None = None
    keep_glasses: bool = False


@dataclass
class Output:
    """A finished frame for the sinks."""

    image: np.ndarray
    index: int
    t_capture: float
    t_done: float = 0.0
    face_found: bool = True
    stage_ms: dict[str, float] = field(default_factory=dict)
    # The camera frame and its tracked landmarks, for the preview window's picture-in-picture
    # only: no other sink shows it.
    track: FaceTrack | None = None
