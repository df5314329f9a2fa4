"""Where the avatar's mouth comes from with a camera: the camera, the voice, or the better of the two.

``LipSource`` is a tracker stage (``process(frame) -> FaceTrack``) around the camera's real
tracker and a voice mouth (``latest() -> (K, 2)`` canonical offsets, e.g. ``MicrophoneMouth``).
Its face keeps the camera's head pose, eyes and brows; only the part below the nose is
chosen:

- ``voice``: always the voice's mouth on the camera's head;
- ``auto``: the camera's own mouth while it is trustworthy (the face is tracked, turned no
  more than ``max_yaw_deg``, its lips inside the frame and not covered by a hand), else the
  voice's. Leaving the camera is immediate; coming back waits until the camera has been
  trustworthy for ``trust_after_s`` (a flickering track doesn't flicker the mouth).

Every switch is a cross-fade of the lower face over ``fade_s`` (smoothstep weight), so the
mouth moves continuously from one frame to the next. While the camera is untrustworthy its
last trustworthy mouth is what fades out, never a mouth the tracker guessed under a hand.
When the face is lost entirely the head eases over ``head_fade_s`` from its last pose into
idle motion with blinks (``realtime.voice.driver.IdleMotion``) around the user's neutral,
and the voice keeps talking; a found face takes the head back the same way.

The face is expressed in the camera's pixels relative to the retargeter's neutral (the
driver's rest face), so the retargeter downstream needs nothing new.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from realtime import mesh
from realtime.frames import FaceTrack, Frame
from realtime.stages import Stage
from realtime.voice import mouth
from realtime.voice.driver import IdleMotion, VoiceFace

logger = logging.getLogger(__name__)

# Why the camera's mouth isn't trusted, as the window's overlay says it.
REASONS = {
    "lost": "no face",
    "small": "face too small",
    "turned": "face turned away",
    "outside": "mouth out of frame",
    "covered": "mouth covered",
}
# Face-oval points at the widest part of the face (the person's right and left): their depth
# difference gives the head's yaw without a reference face.
CHEEK_RIGHT, CHEEK_LEFT = 234, 454


@dataclass
class LipPolicy:
    """When the camera's mouth is trusted, and how fast the mouth and head change source."""

    fade_s: float = 0.2
    head_fade_s: float = 0.5
    max_yaw_deg: float = 35.0
    yaw_hysteresis_deg: float = 5.0  # once turned away, the camera is trusted again below max - this
    trust_after_s: float = 0.15
    max_hand_cover: float = 0.15  # share of the mouth's area a hand may cover
    min_face_px: float = 24.0  # eye-corner distance below which the lips are too small to read


def yaw_deg(face: np.ndarray) -> float:
    """Head yaw in degrees (0 frontal, sign: the person's left cheek nearer the camera is +)
    from mediapipe's depth of the two widest face-oval points."""
    d = face[CHEEK_LEFT] - face[CHEEK_RIGHT]
    return float(np.degrees(np.arctan2(-d[2], d[0])))


def smoothstep(x: float) -> float:
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass
class LipState:
    """What the chooser did on the last frame (for tests, the overlay and the summary)."""

    source: str = "camera"  # what the mouth is heading for: camera or voice
    voice_share: float = 0.0  # share of the voice in the mouth now, 0-1 (eased)
    idle_share: float = 0.0  # share of idle motion in the head now, 0-1 (eased)
    reason: str = ""  # why the camera's mouth isn't trusted ("" when it is)
    frames: int = 0
    voice_frames: int = 0  # frames whose mouth was mostly the voice's
    switches: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class LipSource(Stage):
    """``process(frame) -> FaceTrack``: the camera's face with its mouth from the camera, the voice or both."""

    def __init__(
        self,
        tracker: Stage,
        voice: Stage,
        mode: str = "auto",
        policy: LipPolicy | None = None,
        occluder: Stage | None = None,
        idle: IdleMotion | None = None,
        neutral_of: Callable[[], np.ndarray | None] | None = None,
        camera_delay_s: float = 0.0,
        report_voice_failure: bool = True,
        rest_face: np.ndarray | None = None,
        set_neutral: Callable[[np.ndarray], None] | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        if mode not in ("voice", "auto"):
            raise ValueError(f"LipSource mixes in the voice: mode voice or auto, not {mode!r}")
        self.tracker = tracker
        self.voice = voice
        self.mode = mode
        self.policy = policy or LipPolicy()
        self.occluder = occluder
        self.idle = idle or IdleMotion()
        # The retargeter's driver neutral when there is one (so "closed" means the same to both).
        self.neutral_of = neutral_of
        # Before any face is seen the voice drives a stand-in: ``rest_face`` (the avatar's own rest
        # face) becomes the driver's neutral through ``set_neutral``, until the first real face.
        self.rest_face, self.set_neutral = rest_face, set_neutral
        self._stand_in = False
        self.on_status = on_status  # told a line whenever the mouth's source or the reason changes
        # The camera's mouth shown this much later, to meet a voice mouth that trails its sound.
        self.camera_delay_s = camera_delay_s
        self.state = LipState()
        # A microphone that can't open is logged here unless something else already says so
        # (the A/V bridge on the same microphone).
        self.report_voice_failure = report_voice_failure
        self._voice_ok: bool | None = None
        self._neutral: np.ndarray | None = None
        self._lower: np.ndarray | None = None  # the lower face: below the nose, and the mouth points
        self._camera_lower: deque[tuple[float, np.ndarray]] = deque()  # trusted lower faces, unposed
        self._pose: tuple[float, np.ndarray, np.ndarray] | None = None  # last tracked (s, R, t)
        self._upper: np.ndarray | None = None  # last tracked face, unposed
        self._t: float | None = None
        self._trusted_since: float | None = None
        self._turned = False
        self._voice_w = 0.0  # linear ramps; the shares are their smoothsteps
        self._idle_w = 0.0
        self._t_lost = 0.0
        self._was_found = True
        self._closed = np.zeros((len(mouth.MOUTH_POINTS), 2))  # the rest face already has the mouth

    def open(self) -> LipSource:
        self.tracker.open()
        if self._voice_ok is None:
            try:
                self.voice.open()
                self._voice_ok = True
            except Exception as exc:  # no microphone: the camera keeps the mouth, the video runs on
                self._voice_ok = False
                logger.log(
                    logging.ERROR if self.report_voice_failure else logging.DEBUG,
                    "voice: %s; the mouth follows the camera only",
                    exc,
                )
        if self._voice_ok and self.occluder is not None and hasattr(self.occluder, "start"):
            self.occluder.start()  # loads in the background; frames before it go unchecked
        return self

    def close(self) -> None:
        try:
            self.tracker.close()
        finally:
            self.voice.close()
            self._voice_ok = None
            if self.occluder is not None:
                self.occluder.close()

    # -- trust --------------------------------------------------------------------------
    def untrusted_reason(self, track: FaceTrack) -> str:
        """Why the camera's mouth can't be used on this frame ("" when it can)."""
        if not track.found:
            return "lost"
        face = track.landmarks
        policy = self.policy
        if mesh.face_size(face) < policy.min_face_px:
            return "small"
        yaw = abs(yaw_deg(face))
        limit = policy.max_yaw_deg - (policy.yaw_hysteresis_deg if self._turned else 0.0)
        self._turned = yaw > limit
        if self._turned:
            return "turned"
        h, w = track.frame.image.shape[:2]
        lips = face[mesh.OUTER_LIP, :2]
        if lips.min() < 0 or lips[:, 0].max() >= w or lips[:, 1].max() >= h:
            return "outside"
        if self.occluder is not None and self._hand_cover(track) > policy.max_hand_cover:
            return "covered"
        return ""

    def _hand_cover(self, track: FaceTrack) -> float:
        """Share of the outer-lip polygon that a hand covers (the occluder's newest hands)."""
        face = track.landmarks
        self.occluder.update(track.frame.image, face, track.frame.t_capture)
        lips = face[mesh.OUTER_LIP, :2]
        x0, y0 = np.floor(lips.min(axis=0)).astype(int)
        x1, y1 = np.ceil(lips.max(axis=0)).astype(int) + 1
        shape = (max(1, y1 - y0), max(1, x1 - x0))
        covered = self.occluder.mask(shape, (x0, y0), track.frame.t_capture, mesh.face_size(face))
        if covered is None:
            return 0.0
        polygon = np.zeros(shape, np.uint8)
        cv2.fillPoly(polygon, [np.round(lips - (x0, y0)).astype(np.int32)], 255)
        inside = polygon > 0
        return float((covered[inside] > 127).mean()) if inside.any() else 0.0

    # -- the face -----------------------------------------------------------------------
    def _current_neutral(self, face: np.ndarray | None) -> np.ndarray | None:
        from realtime.retarget import Retargeter

        neutral = self.neutral_of() if self.neutral_of is not None else None
        if self._stand_in and face is not None:
            # The first real face: it becomes the neutral, as the retargeter would have made it.
            neutral, self._stand_in = Retargeter.closed_mouth(face.astype(np.float64)), False
            self._camera_lower.clear()
            if self.set_neutral is not None:
                self.set_neutral(neutral)
        elif neutral is None and self._neutral is None:
            if face is not None:
                neutral = Retargeter.closed_mouth(face.astype(np.float64))
            elif self.rest_face is not None:
                neutral, self._stand_in = np.asarray(self.rest_face, np.float64), True
                if self.set_neutral is not None:
                    self.set_neutral(neutral)
        if neutral is not None:
            neutral = np.asarray(neutral, np.float64)[: mesh.NUM_LANDMARKS]
            if self._neutral is None or not np.array_equal(neutral, self._neutral):
                self._neutral = neutral.copy()
                below = neutral[:, 1] > neutral[mesh.NOSE_BOTTOM, 1]
                below[list(mouth.MOUTH_POINTS)] = True  # the points the voice moves, wherever they are
                below[mesh.RIGID] = False  # the head's pose stays the camera's
                self._lower = np.flatnonzero(below)
        return self._neutral

    def _camera_mouth(self, t: float) -> np.ndarray | None:
        """The trusted camera lower face to show at ``t`` (``camera_delay_s`` ago, or the oldest kept)."""
        if not self._camera_lower:
            return None
        wanted = t - self.camera_delay_s
        chosen = self._camera_lower[0][1]
        for t_seen, lower in self._camera_lower:
            if t_seen > wanted:
                break
            chosen = lower
        return chosen

    def process(self, frame: Frame) -> FaceTrack:
        track = self.tracker.process(frame)
        if self._voice_ok is False:
            return track
        t = frame.t_capture
        dt = 0.0 if self._t is None else max(0.0, t - self._t)
        self._t = t
        face = track.landmarks.astype(np.float64) if track.found else None
        neutral = self._current_neutral(face)
        if neutral is None:
            return track  # no face seen yet and no stand-in: nothing to put a mouth on
        reason = self.untrusted_reason(track)
        trusted = reason == ""
        if trusted:
            if self._trusted_since is None:
                self._trusted_since = t
        else:
            self._trusted_since = None
        lower = self._lower
        if face is not None:
            s, r, shift = mesh.umeyama(neutral[mesh.RIGID], face[mesh.RIGID])
            self._pose, self._upper = (s, r, shift), (face - shift) @ r / s
            if trusted:
                self._camera_lower.append((t, self._upper[lower].copy()))
        # Keep the delayed mouth's history, and at least the last trusted one.
        while len(self._camera_lower) > 1 and self._camera_lower[1][0] <= t - self.camera_delay_s - 0.1:
            self._camera_lower.popleft()

        # Staying on the camera needs this frame trusted; coming back to it, trust for a while
        # (the stream's first face takes the camera at once: there is nothing to fade from).
        camera_ok = (
            self.mode == "auto"
            and self._trusted_since is not None
            and (self.state.source == "camera" or t - self._trusted_since >= self.policy.trust_after_s)
        )
        wanted = "camera" if camera_ok and self._camera_lower else "voice"
        if self.state.frames == 0:
            self._voice_w = 0.0 if wanted == "camera" else 1.0
            self._idle_w = 0.0 if face is not None else 1.0
        step = dt / max(self.policy.fade_s, 1e-6)
        self._voice_w = (
            min(1.0, self._voice_w + step) if wanted == "voice" else max(0.0, self._voice_w - step)
        )
        head_step = dt / max(self.policy.head_fade_s, 1e-6)
        self._idle_w = (
            min(1.0, self._idle_w + head_step) if face is None else max(0.0, self._idle_w - head_step)
        )
        if face is None and self._was_found:
            self._t_lost = t
        self._was_found = face is not None
        voice_share, idle_share = smoothstep(self._voice_w), smoothstep(self._idle_w)
        if idle_share < 1e-3:  # the last sliver of a fade: the camera's own face, exactly
            idle_share = 0.0

        spoken = mouth.apply(neutral, np.asarray(self.voice.latest(), np.float64))
        camera_lower = self._camera_mouth(t)
        mixed_lower = spoken[lower]
        if camera_lower is not None and voice_share < 1.0:
            mixed_lower = (1.0 - voice_share) * camera_lower + voice_share * spoken[lower]
        out = None
        if self._upper is not None and idle_share < 1.0:
            unposed = self._upper.copy()
            unposed[lower] = mixed_lower
            s, r, shift = self._pose
            out = s * unposed @ r.T + shift
        if idle_share > 0.0 or out is None:
            # Idle motion starts from where the head was lost, so easing into it doesn't jump.
            rest = neutral.copy()
            rest[lower] = mixed_lower
            idle_face = VoiceFace(rest, self.idle).face(self._closed, t - self._t_lost)
            out = idle_face if out is None else (1.0 - idle_share) * out + idle_share * idle_face

        self._record(wanted, reason, voice_share, idle_share)
        return FaceTrack(
            frame=track.frame,
            landmarks=out.astype(np.float32),
            raw_landmarks=track.raw_landmarks,
            faces_seen=track.faces_seen,
            lost_for_s=0.0,
            stage_ms=track.stage_ms,
        )

    def _record(self, wanted: str, reason: str, voice_share: float, idle_share: float) -> None:
        state = self.state
        if state.frames and wanted != state.source:
            state.switches += 1
        if self.on_status is not None and (
            not state.frames or (wanted, reason) != (state.source, state.reason)
        ):
            self.on_status(f"mouth: {wanted}" + (f" ({REASONS.get(reason, reason)})" if reason else ""))
        state.source, state.reason = wanted, reason
        state.voice_share, state.idle_share = voice_share, idle_share
        state.frames += 1
        state.voice_frames += voice_share >= 0.5
        if reason:
            state.reasons[reason] = state.reasons.get(reason, 0) + 1

    def summary(self) -> dict:
        state = self.state
        return {
            "lips": self.mode,
            "lips_frames": state.frames,
            "lips_voice_frames": state.voice_frames,
            "lips_switches": state.switches,
            "lips_untrusted": dict(state.reasons),
        }


def resolve_lips(
    lips: str | None, audio_in: str | None, camera: bool, swap: bool, audio_out: str | None = None
) -> str:
    """The ``--lips`` a run uses when not given: with a camera, auto when the microphone is bridged to a
    virtual microphone (reenact), else video; without a camera, voice when there is a microphone."""
    if lips is not None:
        return lips
    if audio_in and not swap and (audio_out or not camera):
        return "auto" if camera else "voice"
    return "video"
