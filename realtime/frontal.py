"""Swap mode with a turned avatar: its face drawn as if it faced the camera.

A photo or painting in three-quarter view squeezes the far half of the face, hides part of
it behind the nose and shows hair or background at its edge. Swapped onto a user who faces
the camera, a 2-D warp stretches all of that across the user's face. Two remedies, by how
far the avatar is turned (``mesh.yaw_degrees``):

- ``facing_camera``: the proportions the swap takes from the avatar (``SwapTargeter``) are
  those of its face turned to the camera (mediapipe's depth gives the turn);
- ``source_triangles``: past MIRROR_FROM_DEG the far half's texture is the near half's,
  mirrored (faces are nearly symmetric; the relighting then gives it the user's light).
"""

from __future__ import annotations

import numpy as np

from realtime import mesh

FRONTAL_FROM_DEG = 5.0  # below this the avatar counts as facing the camera: nothing changes
MIRROR_FROM_DEG = 12.0  # from this its far half is squeezed, and often in the shadow of a side light


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


def source_triangles(avatar_landmarks: np.ndarray, triangles: np.ndarray) -> np.ndarray | None:
    """Where the warp samples each of ``triangles`` (indices into ``mesh.with_mouth_centre``
    points): the far half's triangles from their mirror triangles on the near half, whose
    vertex order mirrors the texture; None to sample every triangle from itself."""
    if not mirrors_far_half(avatar_landmarks):
        return None
    far = mesh.far_side(avatar_landmarks)
    # The mesh follows the midline, so a triangle is on one half or the other (with midline points).
    on_far_half = far[triangles].any(axis=1)
    source = triangles.copy()
    source[on_far_half] = mesh.mirror()[triangles[on_far_half]]
    return source
