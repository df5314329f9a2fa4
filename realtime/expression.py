"""Scripted expressions on a landmark set: open the jaw, close the eyes, look sideways.

Used by the built-in driving sequence (so `realtime demo` runs without a webcam) and by
tests that need a known expression change.
"""

from __future__ import annotations

import numpy as np

from realtime import mesh


def _jaw_falloff(landmarks: np.ndarray, size: float) -> np.ndarray:
    """Per point, how much of a jaw movement it follows sideways from the mouth (1 at the
    mouth's centre line, 0 a face size to either side)."""
    centre_x = landmarks[mesh.INNER_LIP, 0].mean()
    return np.clip(1.0 - np.abs(landmarks[:, 0] - centre_x) / (size * 1.1), 0.0, 1.0) ** 0.7


def open_mouth(landmarks: np.ndarray, amount: float) -> np.ndarray:
    """Drop the jaw by ``amount`` face sizes; points fall off with distance from the mouth."""
    out = landmarks.copy()
    size = mesh.face_size(landmarks)
    lip_line = (landmarks[mesh.UPPER_LIP_INNER_MID, 1] + landmarks[mesh.LOWER_LIP_INNER_MID, 1]) / 2.0
    below = landmarks[:, 1] > lip_line
    out[:, 1] += below * _jaw_falloff(landmarks, size) * amount * size
    # The upper lip lifts a little too.
    upper_inner = [i for i in mesh.INNER_LIP[1:10]]
    out[upper_inner, 1] -= 0.08 * amount * size
    return out


def close_mouth(landmarks: np.ndarray) -> np.ndarray:
    """Raise the jaw until the inner lips meet, moving the lower face by the gap between
    the inner-lip midpoints (sideways too: a jaw that opened off-centre closes back onto
    the upper lip). Points move in proportion to how far below the upper lip they lie
    (the mouth corners about half), falling off with distance from the mouth."""
    out = landmarks.copy()
    upper, lower = landmarks[mesh.UPPER_LIP_INNER_MID], landmarks[mesh.LOWER_LIP_INNER_MID]
    # A ramp, not a cut at the lip line: two trackings of one face move alike.
    depth = np.clip((landmarks[:, 1] - upper[1]) / max(float(lower[1] - upper[1]), 1e-6), 0.0, 1.0)
    weight = depth * _jaw_falloff(landmarks, mesh.face_size(landmarks))
    weight /= max(float(weight[mesh.LOWER_LIP_INNER_MID]), 1e-6)  # the lower lip lands exactly
    out[:, :2] += weight[:, None] * (upper[:2] - lower[:2])
    return out


def close_eyes(landmarks: np.ndarray, amount: float) -> np.ndarray:
    """Lower the upper lids towards the lower lids; ``amount`` 1 closes fully."""
    out = landmarks.copy()
    for eye, lower_lid in ((mesh.RIGHT_EYE, mesh.RIGHT_LOWER_LID), (mesh.LEFT_EYE, mesh.LEFT_LOWER_LID)):
        upper = eye[9:]  # the upper half of each ordered eye loop
        target_y = landmarks[lower_lid, 1]
        out[upper, 1] += (target_y - landmarks[upper, 1]) * amount * 0.9
    return out


def look(landmarks: np.ndarray, dx: float) -> np.ndarray:
    """Move both irises sideways by ``dx`` eye widths."""
    out = landmarks.copy()
    if len(landmarks) < mesh.NUM_LANDMARKS:
        return out
    width = np.linalg.norm(landmarks[mesh.RIGHT_EYE_OUTER, :2] - landmarks[mesh.RIGHT_EYE_INNER, :2])
    for iris in (mesh.RIGHT_IRIS, mesh.LEFT_IRIS):
        out[iris, 0] += dx * width
    return out


def head_pose(landmarks: np.ndarray, roll_deg: float, shift: tuple[float, float]) -> np.ndarray:
    """Rotate in-plane around the face centre and shift by face sizes."""
    out = landmarks.copy()
    centre = landmarks[mesh.RIGID, :2].mean(axis=0)
    angle = np.deg2rad(roll_deg)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    out[:, :2] = (
        (landmarks[:, :2] - centre) @ rotation.T + centre + np.asarray(shift) * mesh.face_size(landmarks)
    )
    return out
