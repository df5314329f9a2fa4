"""Swap mode with a turned avatar: its face drawn as if it faced the camera.

A photo or painting in three-quarter view squeezes the far half of the face, hides part of
it behind the nose and shows hair or background at its edge. Swapped onto a user who faces
the camera, a 2-D warp stretches all of that across the user's face. Two remedies, by how
far the avatar is turned (``mesh.yaw_degrees``):

- ``facing_camera``: the proportions the swap takes from the avatar (``SwapTargeter``) are
  those of its face turned to the camera (mediapipe's depth gives the turn);
- ``source_triangles``: past MIRROR_FROM_DEG the far half's texture is the near half's,
  mirrored (faces are nearly symmetric; the relighting then gives it the user's light).

A portrait lit hard from one side (``shadowed_half``) has the same remedy for its dark half,
whichever way it faces: the relighting follows the user's light at low frequencies only, so
the shadow's sharp edge down the nose would otherwise stay on the user's face.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from realtime import mesh
from realtime.swap import LUMA_BGR

logger = logging.getLogger(__name__)

FRONTAL_FROM_DEG = 5.0  # below this the avatar counts as facing the camera: nothing changes
MIRROR_FROM_DEG = 12.0  # from this its far half is squeezed, and often in the shadow of a side light
# The darker half's median skin brightness over the lighter half's, below which the darker half
# is a side light's shadow; well below classic portrait light (benchmarks/RESULTS.md, session 21).
SIDE_LIT_BELOW = 0.45


def turn(avatar_landmarks: np.ndarray) -> float:
    """|yaw| in degrees; 0 for landmarks without depth (nothing to turn them by)."""
    if avatar_landmarks.shape[1] < 3:
        return 0.0
    return abs(mesh.yaw_degrees(avatar_landmarks))


def mirrors_far_half(avatar_landmarks: np.ndarray) -> bool:
    return turn(avatar_landmarks) >= MIRROR_FROM_DEG


def facing_camera(avatar_landmarks: np.ndarray) -> np.ndarray | None:
    """(478, 2) the avatar's landmarks turned to face the camera, in its image's pixels (where
    ``mirrors_far_half``: symmetric, the far half the near half's mirror image); None when it
    already faces the camera."""
    if turn(avatar_landmarks) < FRONTAL_FROM_DEG:
        return None
    face = mesh.frontal(avatar_landmarks)
    if not mirrors_far_half(avatar_landmarks):
        return face
    partner = mesh.mirror()[: mesh.NUM_LANDMARKS]
    on_midline = partner == np.arange(mesh.NUM_LANDMARKS)
    midline = face[on_midline].mean(axis=0)
    across = face[mesh.LEFT_EYE_OUTER] - face[mesh.RIGHT_EYE_OUTER]
    across /= max(float(np.linalg.norm(across)), 1e-9)
    reflected = face - 2.0 * ((face - midline) @ across)[:, None] * across
    far = mesh.far_side(avatar_landmarks)[: mesh.NUM_LANDMARKS]
    face[far] = reflected[partner[far]]
    # and the midline on the axis of the reflection: the nose straight down the middle
    face[on_midline] = (face[on_midline] + reflected[on_midline]) / 2
    return face


def image_halves(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(479,) bool each: the landmarks on the image's left and right half of the face (the
    midline's on neither)."""
    points = mesh.with_mouth_centre(landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
    across = points[mesh.LEFT_EYE_OUTER] - points[mesh.RIGHT_EYE_OUTER]
    offset = (points - points[mesh.mirror()]) @ (across / max(float(np.linalg.norm(across)), 1e-9))
    return offset < -1e-6, offset > 1e-6


def half_brightness(image: np.ndarray, landmarks: np.ndarray, half: np.ndarray) -> float:
    """Median brightness (0-255) of the skin of one half of the face (``half``: its landmarks),
    eyes and lips left out."""
    points = mesh.with_mouth_centre(landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
    triangles = mesh.face_triangles()
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, list(np.round(points[triangles[half[triangles].any(axis=1)]]).astype(np.int32)), 255)
    features = np.zeros_like(mask)
    for loop in (mesh.RIGHT_EYE, mesh.LEFT_EYE, mesh.OUTER_LIP):
        cv2.fillPoly(features, [np.round(points[loop]).astype(np.int32)], 255)
    grow = 2 * round(0.05 * mesh.face_size(points)) + 1
    skin = (mask > 0) & (cv2.dilate(features, np.ones((grow, grow), np.uint8)) == 0)
    if not skin.any():
        return 0.0
    return float(np.median(image[skin].astype(np.float32) @ LUMA_BGR))


def shadowed_half(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """(479,) bool: the landmarks of the half of the face in a side light's shadow, where one
    half is far darker than the other (SIDE_LIT_BELOW); None for a face lit from the front."""
    left, right = image_halves(landmarks)
    left_level, right_level = (half_brightness(image, landmarks, half) for half in (left, right))
    if min(left_level, right_level) >= SIDE_LIT_BELOW * max(left_level, right_level):
        return None
    logger.info(
        "the avatar is lit from one side (its halves' brightness %.0f / %.0f): swap mode draws "
        "its shadowed half from its lit half, mirrored",
        left_level,
        right_level,
    )
    return left if left_level < right_level else right


def mirrored_half(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """(479,) bool: the half of the face the swap draws from the other half, mirrored: a turned
    avatar's far half, else a side-lit avatar's shadowed half; None for neither."""
    if mirrors_far_half(landmarks):
        return mesh.far_side(landmarks)
    return shadowed_half(image, landmarks)


def source_triangles(replaced: np.ndarray | None, triangles: np.ndarray) -> np.ndarray | None:
    """Where the warp samples each of ``triangles`` (indices into ``mesh.with_mouth_centre``
    points): those on the ``replaced`` half (``mirrored_half``) from their mirror triangles on
    the other half, whose vertex order mirrors the texture; None to sample every triangle
    from itself."""
    if replaced is None:
        return None
    # The mesh follows the midline, so a triangle is on one half or the other (with midline points).
    on_replaced_half = replaced[triangles].any(axis=1)
    source = triangles.copy()
    source[on_replaced_half] = mesh.mirror()[triangles[on_replaced_half]]
    return source
