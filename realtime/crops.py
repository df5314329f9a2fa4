"""The crop contract between a learned model (refiner or translator) and the runtime.

Training, export, evaluation and the live generators cut faces with these functions and
feed the models under these ONNX names, so a crop the model learned on is exactly the crop
it sees live. Needs numpy and OpenCV only (never torch, never onnxruntime).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from realtime import mesh
from realtime.generators.piecewise import bounding_roi

# ONNX tensor names: the exporters write them, the runtime generators feed and read them.
IN_WARPED = "warped"  # the warp's output crops
IN_SOURCE = "source"  # the avatar's own crops
IN_LANDMARKS = "landmarks"  # target landmarks drawn as a map (landmark_map)
IN_FILL_MASK = "fill_mask"  # the target's openings (fill_mask)
IN_DRIVER = "driver"  # the user's openings (driver_map)
IN_FACE = "face"  # the user's face crop, for a translator
OUT_IMAGE = "image"
OUT_MASK = "mask"
OUT_FLOW = "flow"  # where each output pixel was taken from, in crop pixels

# Refiner inputs in the order models.Refiner.forward takes them; the driver input is last.
REFINER_INPUTS = (IN_WARPED, IN_SOURCE, IN_LANDMARKS, IN_FILL_MASK)
REFINER_DRIVER_INPUTS = (*REFINER_INPUTS, IN_DRIVER)
REFINER_OUTPUTS = (OUT_IMAGE, OUT_MASK)
REFINER_FLOW_OUTPUTS = (*REFINER_OUTPUTS, OUT_FLOW)
TRANSLATOR_INPUTS = (IN_FACE,)
TRANSLATOR_OUTPUTS = (OUT_IMAGE,)  # optionally OUT_MASK too, which narrows the paste mask


@dataclass(frozen=True)
class CropSpec:
    size: int
    face_scale: float = 0.32  # eye-corner distance as a fraction of the crop side: forehead to chin
    # "face": one crop of the whole face. "regions": one crop each for the mouth and the two
    # eyes, where the warp fails; a few small crops cost a fraction of one face crop.
    layout: str = "face"


# (landmark loop whose centroid centres the crop, crop side in eye-corner distances,
# mirrored). The left eye is mirrored so that both eyes look alike to the model.
REGIONS = {
    "mouth": (mesh.OUTER_LIP, 1.0, False),
    "right_eye": (mesh.RIGHT_EYE, 0.5, False),
    "left_eye": (mesh.LEFT_EYE, 0.5, True),
}
LAYOUTS = ("face", "regions")


def _upright(
    landmarks: np.ndarray, pixels_per_eye_distance: float, centre: np.ndarray, anchor, mirrored: bool = False
) -> np.ndarray:
    """2x3 similarity that levels the eye line, scales the eye-corner distance to
    ``pixels_per_eye_distance`` and moves ``centre`` to ``anchor`` (optionally mirrored)."""
    right, left = landmarks[mesh.RIGHT_EYE_OUTER, :2], landmarks[mesh.LEFT_EYE_OUTER, :2]
    eye_vec = left - right
    angle = np.arctan2(eye_vec[1], eye_vec[0])
    scale = pixels_per_eye_distance / (np.linalg.norm(eye_vec) + 1e-6)
    cos, sin = np.cos(-angle) * scale, np.sin(-angle) * scale
    matrix = np.array([[cos, -sin, 0.0], [sin, cos, 0.0]])
    if mirrored:
        matrix[0] *= -1.0
    matrix[:, 2] = np.asarray(anchor, np.float64) - matrix[:, :2] @ centre
    return matrix


def alignment(landmarks: np.ndarray, spec: CropSpec) -> np.ndarray:
    """2x3 similarity taking the image to an upright, centred face crop."""
    centre = landmarks[mesh.RIGID, :2].mean(axis=0)
    return _upright(landmarks, spec.face_scale * spec.size, centre, (spec.size / 2, spec.size * 0.47))


def crop_matrices(landmarks: np.ndarray, spec: CropSpec) -> list[np.ndarray]:
    """The 2x3 image→crop similarities of ``spec``'s layout, in a fixed order."""
    if spec.layout == "face":
        return [alignment(landmarks, spec)]
    if spec.layout != "regions":
        raise ValueError(f"unknown crop layout {spec.layout!r}; known: {', '.join(LAYOUTS)}")
    half = spec.size / 2
    return [
        _upright(landmarks, spec.size / side, landmarks[loop, :2].mean(axis=0), (half, half), mirrored)
        for loop, side, mirrored in REGIONS.values()
    ]


def crop_count(layout: str) -> int:
    """How many crops a layout cuts per frame: the batch a model of that layout takes."""
    return len(REGIONS) if layout == "regions" else 1


# Below this scale a bilinear warp skips source pixels (aliasing); area averaging first.
ALIASING_SCALE = 0.7


def footprint(inverse: np.ndarray, size: int) -> np.ndarray:
    """The crop's four corners in image coordinates (``inverse``: crop→image 2x3)."""
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64)
    return corners @ inverse.T


def antialiased_warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine(image, matrix)`` to a ``size`` square, but a big face (a webcam's
    mouth cut to a small crop) is first shrunk with area averaging around the crop, so the
    crop is not aliased the way a plain bilinear warp would be."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale >= ALIASING_SCALE:
        return cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    x0, y0, x1, y1 = bounding_roi(footprint(cv2.invertAffineTransform(matrix), size), image.shape, margin=2)
    width, height = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    small = cv2.resize(image[y0:y1, x0:x1], (width, height), interpolation=cv2.INTER_AREA)
    # cv2.resize puts shrunk pixel q at image p = (q + 0.5) / f - 0.5 + (x0, y0), f per axis.
    factor = np.array([width / (x1 - x0), height / (y1 - y0)])
    shift = np.array([x0, y0], np.float64) + 0.5 / factor - 0.5
    local = np.concatenate([matrix[:, :2] / factor, (matrix[:, :2] @ shift + matrix[:, 2])[:, None]], axis=1)
    return cv2.warpAffine(small, local, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def fill_mask(points: np.ndarray, spec: CropSpec) -> np.ndarray:
    """uint8 (S, S): the openings drawn in crop coordinates: the inner mouth (what the warp
    cannot show), plus the eye openings for the region layout."""
    loops = [mesh.INNER_LIP] if spec.layout == "face" else [mesh.INNER_LIP, mesh.RIGHT_EYE, mesh.LEFT_EYE]
    fill = np.zeros((spec.size, spec.size), np.uint8)
    for loop in loops:
        cv2.fillPoly(fill, [np.round(points[loop]).astype(np.int32)], 255)
    return fill


# Card fields (lists of region crops) that change what the runtime applies of a refiner's output
# (realtime.generators.onnx); training continued from a shipped model must apply the same.
CARD_PASTE_RULES = ("darken_only", "dark_centre")
# A card's "dark_centre": the inner half of an opening's half-height, around its centre line, only darkens.
DARK_CENTRE_DEPTH = 0.5


def dark_centre_weight(openings: np.ndarray, depth_kept: float = DARK_CENTRE_DEPTH) -> np.ndarray:
    """float32 (S, S) in [0, 1] from a fill mask (uint8 (S, S), openings > 0): 1 outside the
    openings and near their rim, falling to 0 on the centre line over the inner ``depth_kept`` of
    the deepest opening's half-height; 0 all over an opening no more than a pixel deep (a slit)."""
    depth = cv2.distanceTransform((openings > 0).astype(np.uint8), cv2.DIST_L2, 3)
    half_height = float(depth.max())
    if half_height <= 1.0:
        return (openings == 0).astype(np.float32)
    return np.clip((half_height - depth) / (depth_kept * half_height), 0.0, 1.0).astype(np.float32)


def driver_map(image: np.ndarray, landmarks: np.ndarray, matrix: np.ndarray, spec: CropSpec) -> np.ndarray:
    """uint8 (S, S): what the driver's openings look like, in the driver's own crop (``matrix``).

    Landmarks say how far a mouth is open, not whether it shows teeth, a tongue or a dark
    cavity, and that is most of what a warped mouth gets wrong. So the refiner may see the
    driver's openings (inner mouth, eyes): grey levels relative to the face around them
    (128 = as bright as the surrounding skin), zero outside the openings. Only the openings
    and only relative brightness, so little of the driver's identity or lighting comes with it.
    ``image``: BGR, or already grey (the runtime greys the face once for all its crops).
    """
    crop = antialiased_warp(image, matrix, spec.size)
    grey = (crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)).astype(np.float32)
    points = landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    openings = fill_mask(points, spec) > 0
    around = grey[~openings]
    reference = max(float(np.median(around if around.size else grey)), 8.0)
    relative = np.clip(grey / reference * 128.0, 1.0, 255.0)  # 1, not 0: a black cavity is still open
    return np.where(openings, relative, 0.0).astype(np.uint8)


def landmark_map(points: np.ndarray, size: int) -> np.ndarray:
    """Target landmarks drawn as a 1-channel map in crop coordinates (eyelids and lips included)."""
    canvas = np.zeros((size, size), np.uint8)
    for loop in (mesh.RIGHT_EYE, mesh.LEFT_EYE, mesh.INNER_LIP, mesh.OUTER_LIP):
        cv2.polylines(canvas, [np.round(points[loop]).astype(np.int32)], True, 255, 1, cv2.LINE_AA)
    pts = np.round(points[: mesh.NUM_LANDMARKS]).astype(np.int32)
    pts = pts[((pts >= 0) & (pts < size)).all(axis=1)]
    np.maximum.at(canvas, (pts[:, 1], pts[:, 0]), 128)
    return canvas.astype(np.float32)[None, None] / 255.0


def to_tensor(image: np.ndarray) -> np.ndarray:
    """A BGR uint8 crop as the models take it: (1, 3, S, S) float32 RGB in [0, 1]."""
    return (image[:, :, ::-1].astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def displace(image: np.ndarray, flow: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``out[y, x] = image[origin + (x, y) + flow[y, x]]`` (bilinear, edges repeated): what the
    model's grid_sample does, in pixels. The output has the flow's height and width."""
    fh, fw = flow.shape[:2]
    xs = np.arange(fw, dtype=np.float32)[None, :] + origin[0]
    ys = np.arange(fh, dtype=np.float32)[:, None] + origin[1]
    return cv2.remap(
        image, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
