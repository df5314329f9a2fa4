"""Retarget stage: relative motion transfer from the driver's face to the avatar's.

The driver's change from its *neutral reference* is split into head pose (a 3-D
similarity fitted on rigid points) and expression (what is left, in the neutral
frame). Both are normalised by face size and orientation, then applied to the
avatar's own landmarks, so a big face driving a small painting works and nobody's
face shape leaks into the avatar. In swap mode ``SwapTargeter`` puts the avatar's face
where the user's is instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from realtime import frontal, mesh
from realtime.frames import FaceTrack, Mode, Target
from realtime.stages import Stage

logger = logging.getLogger(__name__)


@dataclass
class RetargetLimits:
    max_rotation_deg: float = 30.0  # extreme head turns are clamped, not followed
    max_translation: float = 0.6  # in avatar face sizes
    scale_range: tuple[float, float] = (0.8, 1.25)
    pose_gain: float = 1.0
    expression_gain: float = 1.0  # 0: the avatar keeps its own expression; >1 exaggerates
    # Per part, on top of expression_gain: (mouth and jaw, eyes and lids, brows).
    part_gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Lids follow how far the driver's eye is open relative to its neutral (a full blink closes
    # any avatar's eye), not the lids' displacement in face sizes, which closes an avatar whose
    # eyes are bigger than the driver's only part way and makes smaller ones' lids cross.
    lids_by_ratio: bool = True
    hold_s: float = 0.4  # after losing the face: hold the last pose this long,
    ease_s: float = 0.8  # then ease back to neutral over this long


def _clamp_rotation(rotation: np.ndarray, max_deg: float, gain: float) -> np.ndarray:
    vec, _ = cv2.Rodrigues(rotation.astype(np.float64))
    angle = float(np.linalg.norm(vec))
    limit = math.radians(max_deg)
    wanted = angle * gain
    if wanted > limit:
        wanted = limit
    if angle > 1e-9:
        vec = vec / angle * wanted
    out, _ = cv2.Rodrigues(vec)
    return out


# Per eye: its loop, outer and inner corner, mid upper and lower lid, iris points.
EYES = (
    (
        mesh.RIGHT_EYE,
        mesh.RIGHT_EYE_OUTER,
        mesh.RIGHT_EYE_INNER,
        mesh.RIGHT_UPPER_LID,
        mesh.RIGHT_LOWER_LID,
        mesh.RIGHT_IRIS,
    ),
    (
        mesh.LEFT_EYE,
        mesh.LEFT_EYE_OUTER,
        mesh.LEFT_EYE_INNER,
        mesh.LEFT_UPPER_LID,
        mesh.LEFT_LOWER_LID,
        mesh.LEFT_IRIS,
    ),
)
# The neutral takes a driver's lids open this many times wider than its own: a neutral caught
# mid-blink or squinting. Smaller widenings are expression (benchmarks/RESULTS.md, session 22).
EYES_WIDER = 1.3
MAX_LID_RATIO = 1.5  # a driver's eye opened wider than its neutral widens the avatar's at most this much


def _across(face: np.ndarray, outer: int, inner: int, towards: np.ndarray | None = None) -> np.ndarray:
    """Unit normal of the eye's corner line, on the side of ``towards`` (default: image down)."""
    chord = face[inner, :2] - face[outer, :2]
    normal = np.array([-chord[1], chord[0]]) / (np.linalg.norm(chord) + 1e-9)
    side = normal[1] if towards is None else normal @ towards
    return normal if side >= 0 else -normal


def _lid_gap(face: np.ndarray, outer: int, inner: int, upper: int, lower: int) -> float:
    """The mid lids' distance across the eye's corner line (along it, they need not meet)."""
    return abs(float((face[lower, :2] - face[upper, :2]) @ _across(face, outer, inner)))


@dataclass(frozen=True)
class RestEye:
    """One eye of the avatar at rest, measured once: its corner-line normal and length, its lid
    and iris points across that line, and the mid lids' gap."""

    eye: tuple[int, int, int, int]  # outer and inner corner, mid upper and lower lid
    points: np.ndarray  # the lid loop, then the iris
    lids: int  # how many of ``points`` are lids
    mids: tuple[int, int]  # where the mid upper and lower lid are in ``points``
    normal: np.ndarray
    length: float
    across: np.ndarray
    gap: float


def rest_eyes(base: np.ndarray) -> list[RestEye]:
    """The avatar's open eyes (an eye closed, crossed or upside down at rest is left out)."""
    eyes = []
    for loop, outer, inner, upper, lower, iris in EYES:
        if len(base) <= max(iris):
            continue
        normal = _across(base, outer, inner)
        gap = float((base[lower, :2] - base[upper, :2]) @ normal)
        if gap <= 1e-6:
            continue
        points = loop + iris
        eyes.append(
            RestEye(
                eye=(outer, inner, upper, lower),
                points=np.array(points),
                lids=len(loop),
                mids=(loop.index(upper), loop.index(lower)),
                normal=normal,
                length=float(np.linalg.norm(base[inner, :2] - base[outer, :2])),
                across=(base[points, :2] - base[outer, :2]) @ normal,
                gap=gap,
            )
        )
    return eyes


def lids_by_ratio(
    expressive: np.ndarray, rest: list[RestEye], driver: np.ndarray, neutral: np.ndarray, gain: float = 1.0
) -> np.ndarray:
    """``expressive`` with each eye's lid gap set to the avatar's own at rest (``rest``) times the
    driver's gap over its neutral's (its change times ``gain``, the eyes' expression gain): the
    lids and irises are stretched across the eye's corner line about their middle, so the lids'
    shape from ``expressive`` stays; where the lids there have met or crossed, the avatar's rest
    lids are scaled instead. ``expressive`` is changed in place and returned."""
    out = expressive
    for eye in rest:
        outer, inner = eye.eye[:2]
        opened = _lid_gap(driver, *eye.eye) / max(_lid_gap(neutral, *eye.eye), 1e-6)
        ratio = min(max(1.0 + gain * (opened - 1.0), 0.0), MAX_LID_RATIO)
        normal = _across(out, outer, inner, towards=eye.normal)
        scale = np.linalg.norm(out[inner, :2] - out[outer, :2]) / (eye.length + 1e-9)
        rest_gap = eye.gap * scale
        points, upper_at, lower_at = eye.points, *eye.mids
        across = (out[points, :2] - out[outer, :2]) @ normal
        # The avatar's own rest lids, scaled (and the irises with them): right whatever the lids
        # in ``expressive`` did, but without the expression's lid shape.
        target = np.concatenate([ratio * scale * eye.across[: eye.lids], ratio * across[eye.lids :]])
        gap = across[lower_at] - across[upper_at]
        kept = min(max((gap / rest_gap - 0.15) / 0.2, 0.0), 1.0)
        if kept > 0:  # the lids in ``expressive`` still apart: stretch them, keeping their shape
            middle = (across[upper_at] + across[lower_at]) / 2
            stretched = middle + (across - middle) * min(ratio * rest_gap / gap, 3.0)
            target = kept * stretched + (1.0 - kept) * target
        out[points, :2] += np.outer(target - across, normal)
    return out


# Inner-lip gap (face sizes, mesh.mouth_opening) from which a face's mouth counts as open:
# lips apart, teeth showing. Such a neutral or avatar is closed before expression is added.
OPEN_FROM = 0.03


class Retargeter(Stage):
    """``process(track) -> Target`` in the avatar's canvas coordinates."""

    def __init__(
        self,
        avatar_landmarks: np.ndarray,
        limits: RetargetLimits | None = None,
        adaptive_neutral: bool = True,
    ) -> None:
        self.avatar = avatar_landmarks[: mesh.NUM_LANDMARKS].astype(np.float64)
        self.limits = limits or RetargetLimits()
        self.neutral: np.ndarray | None = None
        self._recalibrate = True
        self._last_target = self.avatar.copy()
        self._avatar_centre = self.avatar[mesh.RIGID].mean(axis=0)
        self._avatar_size = mesh.face_size(self.avatar)
        # Expression is added to the avatar with its mouth closed when the driver's neutral
        # is a closed mouth too, so an avatar caught mid-word doesn't open twice as wide.
        self._avatar_base = self.closed_mouth(self.avatar) if adaptive_neutral else self.avatar
        self._rest_eyes = rest_eyes(self._avatar_base)
        self.adaptive_neutral = adaptive_neutral
        # Regions of the driver's neutral that adapt: everything below the nose (mouth and
        # jaw), and the eyelids with the irises (EYES).
        below_nose = self.avatar[:, 1] > self.avatar[mesh.NOSE_BOTTOM, 1]
        self._mouth_region = np.flatnonzero(below_nose)
        self._parts = self._part_masks()

    def _part_masks(self) -> np.ndarray:
        """(3, N) masks of the avatar's mouth (below the nose), eyes and brows, for ``part_gains``."""
        face = self.avatar[:, :2]
        size = self._avatar_size
        mouth = np.zeros(len(face), bool)
        mouth[self._mouth_region] = True
        irises = face[[mesh.RIGHT_IRIS_CENTRE, mesh.LEFT_IRIS_CENTRE]]
        near = np.linalg.norm(face[:, None, :] - irises[None], axis=2).min(axis=1)
        eyes = (near < 0.22 * size) & ~mouth
        eye_top = face[mesh.RIGHT_EYE + mesh.LEFT_EYE, 1].min()
        beside = np.abs(face[:, None, 0] - irises[None, :, 0]).min(axis=1) < 0.3 * size
        brows = (face[:, 1] < eye_top) & (face[:, 1] > eye_top - 0.45 * size) & beside & ~eyes
        return np.stack([mouth, eyes, brows])

    def _expression_weights(self) -> np.ndarray | float:
        """Each landmark's expression gain from ``part_gains`` ((N, 1); 1.0 when all are 1)."""
        gains = np.asarray(self.limits.part_gains, np.float64)
        if np.all(gains == 1.0):
            return 1.0
        return (1.0 + ((gains[:, None] - 1.0) * self._parts).sum(axis=0))[:, None]

    def _adapt_neutral(self, unposed: np.ndarray) -> None:
        """Pull the neutral towards a closed mouth and open eyes.

        A neutral taken mid-word or mid-blink would make every later frame look "more
        closed" than neutral, and a portrait (closed mouth, open eyes) could then never
        open its mouth. Whenever the driver's mouth is more closed, or its eyes more
        open, than the neutral's, that region of the neutral is replaced: the eyes only when
        markedly wider (EYES_WIDER), so a few percent wider for a while (surprise) does not
        narrow the avatar's eyes for the rest of the session.
        """
        neutral = self.neutral
        if mesh.mouth_opening(unposed) < mesh.mouth_opening(neutral) - 0.004:
            neutral[self._mouth_region] = unposed[self._mouth_region]
        if mesh.eye_opening(unposed) > EYES_WIDER * mesh.eye_opening(neutral):
            # The wider lids (and that frame's gaze), each eye kept where its corners were: a
            # head pitched a little differently leaves the eyes a few percent of a face size off
            # the rigid points, and taken whole that offset would shift the avatar's eyes for good.
            for loop, outer, inner, _, _, iris in EYES:
                kept = neutral[[outer, inner]].mean(axis=0) - unposed[[outer, inner]].mean(axis=0)
                neutral[loop + iris] = unposed[loop + iris] + kept

    @staticmethod
    def closed_mouth(face: np.ndarray) -> np.ndarray:
        """The face with its lips closed: the best neutral guess when the first frame catches
        the driver mid-word or smiling (later frames refine it, see ``_adapt_neutral``), and
        the avatar's rest pose, so that its lips meet whenever the driver's do."""
        from realtime.expression import close_mouth

        return face.copy() if mesh.mouth_opening(face) < OPEN_FROM else close_mouth(face)

    def recalibrate(self) -> None:
        """Take the driver's next tracked face as its neutral reference."""
        self._recalibrate = True

    def set_neutral(self, face: np.ndarray) -> None:
        """Use ``face`` (478, 3) as the driver's neutral from now on (a synthetic driver, such
        as the voice's face, knows its own rest pose)."""
        self.neutral = face[: mesh.NUM_LANDMARKS].astype(np.float64).copy()
        self._recalibrate = False

    def adopt_neutral(self, other: Retargeter) -> None:
        """Take over another avatar's driver neutral, so switching avatars needs no new one."""
        if other.neutral is not None:
            self.neutral = other.neutral.copy()
            self._recalibrate = other._recalibrate

    def settle_neutral(self, driver: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """Let a driver face refine the neutral (see ``_adapt_neutral``), as every
        ``transfer`` does. Returns the driver's head scale and rotation relative to the
        neutral, and the driver face with that pose undone."""
        assert self.neutral is not None
        scale, rotation, translation = mesh.umeyama(self.neutral[mesh.RIGID], driver[mesh.RIGID])
        unposed = (driver - translation) @ rotation / scale
        if self.adaptive_neutral:
            self._adapt_neutral(unposed)
        return scale, rotation, unposed

    def transfer(self, driver: np.ndarray, reshape: np.ndarray | None = None) -> np.ndarray:
        """Avatar landmarks (478, 3) for a driver face (478, 3), relative to the neutral;
        ``reshape`` (478, 2) is added to the avatar's face before the driver's pose."""
        scale, rotation, unposed = self.settle_neutral(driver)
        neutral = self.neutral
        lim = self.limits
        # Expression: compare with the neutral, in driver units.
        expression = (unposed - neutral) * lim.expression_gain * self._expression_weights()
        # Map driver-neutral space onto the avatar (size, in-plane orientation).
        s_na, r_na, _ = mesh.umeyama(neutral[mesh.RIGID], self.avatar[mesh.RIGID])
        expressive = self._avatar_base + s_na * expression @ r_na.T
        if lim.lids_by_ratio:
            gain = lim.expression_gain * lim.part_gains[1]
            expressive = lids_by_ratio(expressive, self._rest_eyes, unposed, neutral, gain)
        if reshape is not None:
            expressive[:, :2] += reshape
        # Relative pose, expressed in the avatar's frame and clamped.
        rotation_avatar = r_na @ _clamp_rotation(rotation, lim.max_rotation_deg, lim.pose_gain) @ r_na.T
        rel_scale = float(np.clip(scale**lim.pose_gain, *lim.scale_range))
        shift = driver[mesh.RIGID].mean(axis=0) - neutral[mesh.RIGID].mean(axis=0)
        shift_avatar = s_na * shift @ r_na.T * lim.pose_gain
        max_shift = lim.max_translation * self._avatar_size
        norm = float(np.linalg.norm(shift_avatar[:2]))
        if norm > max_shift:
            shift_avatar = shift_avatar * (max_shift / norm)
        centre = self._avatar_centre
        return centre + rel_scale * (expressive - centre) @ rotation_avatar.T + shift_avatar

    def _take_neutral(self, driver: np.ndarray) -> None:
        if self._recalibrate or self.neutral is None:
            # At start the face may be caught mid-word; a neutral the user asked for is
            # taken exactly as it is.
            automatic = self.neutral is None and self.adaptive_neutral
            self.neutral = self.closed_mouth(driver) if automatic else driver.copy()
            self._recalibrate = False

    def onto_driver(self, driver: np.ndarray, reshape: np.ndarray | None = None) -> np.ndarray:
        """The avatar's face with the driver's expression (``transfer``), placed on the driver's
        own face by a similarity fitted on rigid points: the avatar's proportions where the
        driver's face is (swap mode's shape, ``SwapTargeter``). ``reshape`` (478, 2), in the
        avatar's pixels, is added before it is placed (a turned avatar turned to the camera)."""
        driver = driver.astype(np.float64)
        self._take_neutral(driver)
        shaped = self.transfer(driver, reshape)
        scale, rotation, translation = mesh.umeyama(shaped[mesh.RIGID], driver[mesh.RIGID])
        return shaped @ (scale * rotation).T + translation

    def process(self, track: FaceTrack) -> Target:
        if track.found:
            driver = track.landmarks.astype(np.float64)
            self._take_neutral(driver)
            landmarks = self.transfer(driver)
            self._last_target = landmarks
            weight = 1.0
        else:
            # Lost: hold the last pose, then ease back to the avatar's neutral pose.
            lost = track.lost_for_s if math.isfinite(track.lost_for_s) else 1e9
            weight = float(np.clip(1.0 - (lost - self.limits.hold_s) / self.limits.ease_s, 0.0, 1.0))
            eased = 0.5 - 0.5 * math.cos(math.pi * weight)
            landmarks = self.avatar + eased * (self._last_target - self.avatar)
        return Target(
            frame=track.frame,
            landmarks=mesh.with_mouth_centre(landmarks[:, :2]).astype(np.float32),
            face_found=track.found,
            live_weight=weight,
            driver_landmarks=track.landmarks[:, :2].astype(np.float32) if track.found else None,
        )


# Swap mode: how far the swapped inner face takes the avatar's proportions (eyes, brows, nose,
# cheeks) instead of the user's. The jaw line stays the user's, and so do the lips: unmoved up
# to the first of LIPS_KEPT's distances from them (face sizes), moved fully from the second,
# because the user's own open mouth shows through the swap there.
SWAP_SHAPE = 0.7
# An avatar turned further than this (degrees, frontal.turn) gets a warning in swap mode: even
# mirrored, its near half is seen too much from the side.
TURNED_WARNING_DEG = 45.0
LIPS_KEPT = (0.05, 0.3)
# Landmarks swap mode may move: all but the face outline.
_INSIDE_OVAL = np.setdiff1d(np.arange(mesh.NUM_LANDMARKS), mesh.face_oval())


def _users_gaze(shaped: np.ndarray, user: np.ndarray) -> np.ndarray:
    """``shaped`` with each iris moved along its eye's corner line to where the user's is in
    theirs (``mesh.gaze``'s offset, in eye widths): the avatar's eye shape but the user's gaze,
    so a user looking into the camera is not given a portrait's sideways look."""
    out = shaped.copy()
    if len(user) <= max(mesh.LEFT_IRIS):
        return out
    for _, outer, inner, _, _, iris in EYES:
        wanted = mesh.iris_offset(user, iris[0], outer, inner)
        out[iris] += (wanted - mesh.iris_offset(shaped, iris[0], outer, inner)) * (
            shaped[inner] - shaped[outer]
        )
    return out


class SwapTargeter(Stage):
    """``process(track) -> Target | None`` for swap mode: the avatar's face goes where the
    user's is, on the user's landmarks moved ``shape`` of the way towards the avatar's own
    proportions (``retargeter``: the avatar's, which also carries the user's expression);
    None once the face has been gone for a while."""

    def __init__(
        self,
        limits: RetargetLimits | None = None,
        retargeter: Retargeter | None = None,
        shape: float = SWAP_SHAPE,
    ) -> None:
        self.limits = limits or RetargetLimits()
        self.retargeter = retargeter
        self.shape = shape
        self._lips_of: Retargeter | None = None
        self._checked_turn: Retargeter | None = None
        self._lips_weight = np.zeros((len(_INSIDE_OVAL), 1))
        self._reshape_of: Retargeter | None = None
        self._reshape: np.ndarray | None = None
        self._last: Target | None = None
        self._last_seen: float | None = None

    def recalibrate(self) -> None:
        """Take the user's next face as the neutral the avatar's shape is measured from."""
        if self.retargeter is not None:
            self.retargeter.recalibrate()

    def landmarks(self, user: np.ndarray) -> np.ndarray:
        """(N, 2) where the avatar's face is drawn for the user's landmarks ``user`` (478, 2+)."""
        if self.retargeter is None or self.shape <= 0.0:
            return user[:, :2]
        moved = user[:, :2].astype(np.float64)
        avatar = self.retargeter.onto_driver(user, self._turned_to_camera())
        inside = moved[_INSIDE_OVAL]
        moved[_INSIDE_OVAL] += self.shape * self._away_from_lips() * (avatar[_INSIDE_OVAL, :2] - inside)
        return _users_gaze(moved, user[:, :2].astype(np.float64))

    def _away_from_lips(self) -> np.ndarray:
        """(M, 1) in [0, 1]: 0 on and near the lips, 1 from LIPS_KEPT[1] on (measured once per
        avatar, in its face sizes)."""
        assert self.retargeter is not None
        if self._lips_of is not self.retargeter:
            face = self.retargeter.avatar[:, :2]
            inside = face[_INSIDE_OVAL]
            from_lips = np.linalg.norm(inside[:, None] - face[None, mesh.OUTER_LIP], axis=2).min(axis=1)
            lo, hi = LIPS_KEPT
            weight = np.clip((from_lips / mesh.face_size(face) - lo) / (hi - lo), 0.0, 1.0)
            self._lips_of, self._lips_weight = self.retargeter, weight[:, None]
        return self._lips_weight

    def _turned_to_camera(self) -> np.ndarray | None:
        """(478, 2) what turns the avatar's face to the camera (``frontal.facing_camera``),
        as a change of its landmarks; None when it faces the camera. Once per avatar."""
        assert self.retargeter is not None
        if self._reshape_of is not self.retargeter:
            avatar = self.retargeter.avatar
            facing = frontal.facing_camera(avatar)
            self._reshape = None if facing is None else facing - avatar[:, :2]
            self._reshape_of = self.retargeter
        return self._reshape

    def _warn_if_turned(self) -> None:
        """Once per avatar: what swap mode does with a face turned to one side, and a warning
        where that is too far to swap well."""
        if self.retargeter is None or self._checked_turn is self.retargeter:
            return
        self._checked_turn = self.retargeter
        avatar = self.retargeter.avatar
        degrees = frontal.turn(avatar)
        if degrees >= TURNED_WARNING_DEG:
            logger.warning(
                "swap: the avatar's face is turned %.0f degrees to one side, too far to swap well; "
                "a photo facing the camera swaps best",
                degrees,
            )
        elif frontal.mirrors_far_half(avatar):
            logger.info(
                "swap: the avatar's face is turned %.0f degrees to one side: its far half is drawn "
                "from its near half, mirrored",
                degrees,
            )

    def process(self, track: FaceTrack) -> Target | None:
        t = track.frame.t_capture
        if track.found:
            self._warn_if_turned()
            target = Target(
                frame=track.frame,
                landmarks=mesh.with_mouth_centre(self.landmarks(track.landmarks)).astype(np.float32),
                mode=Mode.SWAP,
                driver_landmarks=track.landmarks[:, :2].astype(np.float32),
            )
            self._last, self._last_seen = target, t
            return target
        held_for = t - self._last_seen if self._last_seen is not None else math.inf
        if self._last is not None and held_for <= self.limits.hold_s + self.limits.ease_s:
            # Briefly lost (a blink of the tracker, a hand): keep the swapped face where it was.
            return replace(self._last, frame=track.frame, face_found=False, driver_landmarks=None)
        return None
