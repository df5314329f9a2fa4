"""The mouth in the retargeter's normalised face frame.

A face's head pose is undone against a reference face (a similarity on the rigid points,
as ``Retargeter.settle_neutral`` does), then the result is expressed in the reference's
*canonical* frame: origin at the rigid points' centre, x along the eye line, unit = face
size. Mouth motion is the lip and jaw points' displacement from the person's neutral in
that frame, so a big face and a small, tilted one move alike.
"""

from __future__ import annotations

import numpy as np

from realtime import mesh

# Lip and jaw points the model moves: both lip loops, the chin and jaw line, the cheeks beside
# the mouth (mediapipe indices, all below the nose).
MOUTH_POINTS: tuple[int, ...] = tuple(
    sorted(
        set(mesh.INNER_LIP + mesh.OUTER_LIP)
        | {
            # chin and jaw line (face oval, lower half)
            152,
            148,
            176,
            149,
            150,
            136,
            172,
            58,
            377,
            400,
            378,
            379,
            365,
            397,
            288,
            # between the lower lip and the chin
            18,
            83,
            182,
            106,
            43,
            313,
            406,
            335,
            273,
            200,
            201,
            421,
            199,
            208,
            428,
            175,
            171,
            396,
            32,
            262,
            140,
            369,
            170,
            395,
            169,
            394,
            135,
            364,
            138,
            367,
            210,
            430,
            211,
            431,
            212,
            432,
            202,
            422,
            204,
            424,
            194,
            418,
            57,
            287,
            186,
            410,
            92,
            322,
            165,
            391,
            167,
            393,
            164,
            # cheeks beside the mouth
            214,
            434,
            216,
            436,
            206,
            426,
            207,
            427,
            192,
            416,
            213,
            433,
        }
    )
)
UPPER_MID = MOUTH_POINTS.index(mesh.UPPER_LIP_INNER_MID)
LOWER_MID = MOUTH_POINTS.index(mesh.LOWER_LIP_INNER_MID)


def canonical(face: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(centre (2,), rotation (2, 2) image→canonical, face size) of a face's 2-D frame."""
    centre = face[mesh.RIGID, :2].mean(axis=0)
    eye_line = face[mesh.LEFT_EYE_OUTER, :2] - face[mesh.RIGHT_EYE_OUTER, :2]
    angle = float(np.arctan2(eye_line[1], eye_line[0]))
    c, s = np.cos(angle), np.sin(angle)
    to_canonical = np.array([[c, s], [-s, c]])  # rotates the eye line onto +x
    return centre, to_canonical, mesh.face_size(face)


def unpose(face: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``face`` (478, 3) with its head pose relative to ``reference`` undone."""
    scale, rotation, translation = mesh.umeyama(reference[mesh.RIGID], face[mesh.RIGID])
    return (face - translation) @ rotation / scale


def displacement(face: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """(len(MOUTH_POINTS), 2) canonical displacement of the mouth points from ``neutral``."""
    _, to_canonical, size = canonical(neutral)
    moved = unpose(face.astype(np.float64), neutral.astype(np.float64))
    points = list(MOUTH_POINTS)
    return ((moved[points, :2] - neutral[points, :2]) @ to_canonical.T / size).astype(np.float32)


def apply(neutral: np.ndarray, offsets: np.ndarray, gain: float = 1.0) -> np.ndarray:
    """``neutral`` (478, 3) with canonical mouth ``offsets`` (K, 2) added, in its own pixels."""
    _, to_canonical, size = canonical(neutral)
    out = neutral.astype(np.float64).copy()
    out[list(MOUTH_POINTS), :2] += gain * size * offsets @ to_canonical
    return out


def opening(offsets: np.ndarray) -> np.ndarray:
    """Change of the inner-lip gap (face sizes) from canonical offsets (..., K, 2)."""
    return offsets[..., LOWER_MID, 1] - offsets[..., UPPER_MID, 1]
