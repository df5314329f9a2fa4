"""Face-mesh topology: mediapipe's 478-point mesh plus the pieces the warp needs.

Everything here is derived once from mediapipe's published connection lists and is
read-only afterwards.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

TOPOLOGY_FILE = Path(__file__).resolve().parent / "data" / "face_mesh_topology.npz"

NUM_LANDMARKS = 478
MOUTH_CENTRE = 478  # synthetic vertex: mean of the inner lip, so the mouth hole can be triangulated

# Ordered loops (indices into the 478 landmarks).
INNER_LIP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95]
OUTER_LIP = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146]
# "Right" / "left" are the person's own, as in mediapipe.
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
RIGHT_IRIS_CENTRE = 468
LEFT_IRIS_CENTRE = 473
RIGHT_IRIS = [468, 469, 470, 471, 472]
LEFT_IRIS = [473, 474, 475, 476, 477]
UPPER_LIP_INNER_MID, LOWER_LIP_INNER_MID = 13, 14
RIGHT_EYE_OUTER, RIGHT_EYE_INNER, LEFT_EYE_INNER, LEFT_EYE_OUTER = 33, 133, 362, 263
RIGHT_UPPER_LID, RIGHT_LOWER_LID, LEFT_UPPER_LID, LEFT_LOWER_LID = 159, 145, 386, 374
MOUTH_RIGHT_CORNER, MOUTH_LEFT_CORNER = 78, 308
NOSE_BOTTOM = 2
NOSE_TIP = 1

# Points that barely move with expression: used to estimate head pose.
RIGID = [1, 4, 5, 6, 168, 197, 195, 10, 151, 9, 8, 33, 263, 133, 362, 234, 454, 127, 356, 93, 323, 132, 361]


def ordered_loop(edges: set[tuple[int, int]]) -> list[int]:
    """Vertices of a closed loop given as an unordered set of edges, in walking order."""
    neighbours: dict[int, list[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    start = min(neighbours)
    loop, previous = [start], None
    current = start
    while True:
        nxt = [n for n in neighbours[current] if n != previous]
        if not nxt or nxt[0] == start:
            break
        previous, current = current, nxt[0]
        loop.append(current)
    return loop


def triangles_from_edges(edges: set[tuple[int, int]]) -> np.ndarray:
    """Triangles of a mesh given by its edges, recovered as 3-cliques."""
    neighbours: dict[int, set[int]] = {}
    for a, b in edges:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = {tuple(sorted((a, b, c))) for a, b in edges for c in neighbours[a] & neighbours[b]}
    return np.array(sorted(triangles), dtype=np.int32)


@lru_cache(maxsize=1)
def _topology() -> dict[str, np.ndarray]:
    # Derived once from mediapipe's FACEMESH_TESSELATION and FACEMESH_FACE_OVAL (see
    # tests/test_mesh.py, which checks it still matches), so model training can run on
    # machines without mediapipe.
    with np.load(TOPOLOGY_FILE) as data:
        return {name: data[name] for name in data.files}


@lru_cache(maxsize=1)
def mirror() -> np.ndarray:
    """(479,) the landmark each landmark mirrors onto across the face's midline (the person's
    right eye's corner onto the left eye's, and so on); the 28 midline points and MOUTH_CENTRE
    map onto themselves. Derived by ``scripts/derive_face_mirror.py``."""
    return np.append(_topology()["mirror"], MOUTH_CENTRE).astype(np.int64)


def face_oval() -> np.ndarray:
    """The face outline, as an ordered loop of 36 landmark indices."""
    return _topology()["face_oval"]


def skin_triangles() -> np.ndarray:
    """(T, 3) triangles of mediapipe's tessellation."""
    return _topology()["skin_triangles"]


def _fan(loop: list[int], centre: int) -> np.ndarray:
    return np.array([(loop[i], loop[(i + 1) % len(loop)], centre) for i in range(len(loop))], dtype=np.int32)


@lru_cache(maxsize=1)
def hole_triangles() -> np.ndarray:
    """Triangles that close the tessellation's holes: eyes fan to the iris centre (so gaze
    moves the iris texture) and the mouth fans to the synthetic mouth centre."""
    return np.concatenate(
        [
            _fan(RIGHT_EYE, RIGHT_IRIS_CENTRE),
            _fan(LEFT_EYE, LEFT_IRIS_CENTRE),
            _fan(INNER_LIP, MOUTH_CENTRE),
        ]
    )


@lru_cache(maxsize=1)
def face_triangles() -> np.ndarray:
    """All triangles covering the face: tessellation plus filled holes."""
    return np.concatenate([skin_triangles(), hole_triangles()])


def with_mouth_centre(landmarks: np.ndarray) -> np.ndarray:
    """Append the synthetic mouth-centre vertex (index 478)."""
    centre = landmarks[INNER_LIP].mean(axis=0, keepdims=True)
    return np.concatenate([landmarks[:NUM_LANDMARKS], centre], axis=0)


def face_size(landmarks: np.ndarray) -> float:
    """Outer eye-corner distance: a scale that expression barely changes."""
    return float(np.linalg.norm(landmarks[RIGHT_EYE_OUTER, :2] - landmarks[LEFT_EYE_OUTER, :2])) + 1e-6


def symmetry_normal(landmarks: np.ndarray) -> np.ndarray:
    """Unit normal (3,) of the face's plane of symmetry, from the person's right to their left,
    in the landmarks' own (x, y, depth) axes: each point minus its mirror point lies along it."""
    points = landmarks[:NUM_LANDMARKS, :3].astype(np.float64)
    partner = mirror()[:NUM_LANDMARKS]
    across = points - points[partner]
    _, _, vt = np.linalg.svd(across[partner != np.arange(NUM_LANDMARKS)], full_matrices=False)
    normal = vt[0]
    return normal if normal @ (points[LEFT_EYE_OUTER] - points[RIGHT_EYE_OUTER]) > 0 else -normal


def yaw_degrees(landmarks: np.ndarray) -> float:
    """How far the face is turned from the camera, from its plane of symmetry (0 facing it;
    positive when the person's left side is the farther one)."""
    normal = symmetry_normal(landmarks)
    return float(np.degrees(np.arctan2(normal[2], np.hypot(normal[0], normal[1]))))


def far_side(landmarks: np.ndarray) -> np.ndarray:
    """(479,) bool: the landmarks on the half of the face turned away from the camera."""
    points = with_mouth_centre(landmarks[:NUM_LANDMARKS, :3].astype(np.float64))
    normal = symmetry_normal(landmarks)
    leftwards = (points - points[mirror()]) @ normal  # > 0 on the left half, 0 on the midline
    return leftwards > 1e-6 if normal[2] > 0 else leftwards < -1e-6


def frontal(landmarks: np.ndarray) -> np.ndarray:
    """(478, 2) the face turned to face the camera, about its rigid points' centre, seen
    orthographically: the plane of symmetry rotated onto the image's vertical plane through
    the eye line (in-plane tilt kept). Depth comes from the landmarks' third column."""
    points = landmarks[:NUM_LANDMARKS, :3].astype(np.float64)
    normal = symmetry_normal(landmarks)
    towards = np.array([normal[0], normal[1], 0.0])
    towards /= max(float(np.linalg.norm(towards)), 1e-9)
    axis = np.cross(normal, towards)
    sin, cos = float(np.linalg.norm(axis)), float(normal @ towards)
    if sin < 1e-9:
        return points[:, :2].copy()
    axis /= sin
    # Rodrigues: the rotation about ``axis`` that takes ``normal`` onto ``towards``
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    rotation = np.eye(3) + sin * k + (1.0 - cos) * k @ k
    centre = points[RIGID].mean(axis=0)
    return ((points - centre) @ rotation.T + centre)[:, :2]


def landmark_distance(landmarks: np.ndarray, reference: np.ndarray) -> float:
    """Mean 2-D distance between corresponding points, in face sizes of ``reference``."""
    gaps = np.linalg.norm(landmarks[:, :2] - reference[:, :2], axis=1)
    return float(gaps.mean()) / face_size(reference)


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip gap divided by face size (0 closed, ~0.3 wide open)."""
    gap = np.linalg.norm(landmarks[UPPER_LIP_INNER_MID, :2] - landmarks[LOWER_LIP_INNER_MID, :2])
    return float(gap) / face_size(landmarks)


def eye_opening(landmarks: np.ndarray) -> float:
    """Mean lid gap over eye width for both eyes (~0.3 open, < 0.1 closed)."""
    right = np.linalg.norm(landmarks[RIGHT_UPPER_LID, :2] - landmarks[RIGHT_LOWER_LID, :2]) / (
        np.linalg.norm(landmarks[RIGHT_EYE_OUTER, :2] - landmarks[RIGHT_EYE_INNER, :2]) + 1e-6
    )
    left = np.linalg.norm(landmarks[LEFT_UPPER_LID, :2] - landmarks[LEFT_LOWER_LID, :2]) / (
        np.linalg.norm(landmarks[LEFT_EYE_OUTER, :2] - landmarks[LEFT_EYE_INNER, :2]) + 1e-6
    )
    return float(right + left) / 2.0


def iris_offset(landmarks: np.ndarray, iris: int, first: int, second: int) -> float:
    """The iris centre's offset from the midpoint of two eye corners, along the line from
    ``first`` to ``second``, in eye widths."""
    a, b = landmarks[first, :2], landmarks[second, :2]
    axis = b - a
    return float((landmarks[iris, :2] - (a + b) / 2.0) @ axis) / (float(axis @ axis) + 1e-9)


def gaze(landmarks: np.ndarray) -> float:
    """Where the eyes look across: each iris centre's offset from its eye corners' midpoint along
    the corner line, in eye widths, both eyes averaged (positive towards the image's right)."""
    right = iris_offset(landmarks, RIGHT_IRIS_CENTRE, RIGHT_EYE_OUTER, RIGHT_EYE_INNER)
    left = iris_offset(landmarks, LEFT_IRIS_CENTRE, LEFT_EYE_INNER, LEFT_EYE_OUTER)
    return (right + left) / 2.0


def polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ≈ s · R · src + t`` (any dimension). Returns (s, R, t)."""
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(len(sigma))
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = float((sigma * d).sum() / max(var_src, 1e-12))
    translation = mu_dst - scale * rotation @ mu_src
    return scale, rotation, translation
