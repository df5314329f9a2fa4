"""The avatar: an image with its face landmarks, fitted to the output canvas."""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np

from realtime import mesh
from realtime.errors import UserError
from realtime.media import fit_to_canvas, read_image
from realtime.tracking import find_face

BUILTIN = "builtin"


def builtin_portrait() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain) as BGR."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@dataclass
class Avatar:
    image: np.ndarray  # BGR canvas
    landmarks: np.ndarray  # (478, 3) in canvas pixels
    source: str
    # Swap mode's source: the face cut from the original image at its own resolution (at most
    # SWAP_FACE_SIZE between the eyes), so fitting a large photo to the canvas does not blur it.
    face_image: np.ndarray | None = None
    face_landmarks: np.ndarray | None = None
    # An enrolled avatar's own refiner (realtime.avatar_folder): drawn with unless --generator.
    refiner: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[1], self.image.shape[0]


def load_avatar_image(path: str) -> np.ndarray:
    return builtin_portrait() if path == BUILTIN else read_image(path, "avatar")


def default_canvas_size(image: np.ndarray, max_width: int = 1280, max_height: int = 720) -> tuple[int, int]:
    """The image's own aspect, at most max_width x max_height, even sides (for H.264)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_width / w, max_height / h)
    return max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)


def make_avatar(image: np.ndarray, size: tuple[int, int] | None, source: str) -> Avatar:
    """Fit the image to ``size`` (or its own size) and find its face, or raise UserError."""
    width, height = size or default_canvas_size(image)
    canvas = fit_to_canvas(image, width, height)
    landmarks = find_face(canvas)
    if landmarks is None:
        # Faces that are small in a big canvas are easier to find at the image's own scale.
        landmarks = _find_face_in_original(image, canvas)
    if landmarks is None:
        raise UserError(f"no face found in avatar {source}; use a portrait with a clearly visible face")
    if mesh.face_size(landmarks) < 12:
        raise UserError(
            f"the face in avatar {source} is too small ({mesh.face_size(landmarks):.0f}px between the eyes)"
        )
    face_image, face_landmarks = _face_at_full_resolution(image, canvas, landmarks)
    return Avatar(
        image=canvas,
        landmarks=landmarks.astype(np.float32),
        source=source,
        face_image=face_image,
        face_landmarks=face_landmarks,
    )


SWAP_FACE_SIZE = 160.0  # px between the outer eye corners: sharper than any face in a 720p frame


def _face_at_full_resolution(
    image: np.ndarray, canvas: np.ndarray, landmarks: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The face box of the original image, with the canvas landmarks mapped onto it; None when
    the canvas is already as sharp as the original."""
    h, w = image.shape[:2]
    ch, cw = canvas.shape[:2]
    scale = min(cw / w, ch / h)
    if scale >= 0.999:
        return None, None
    ox, oy = (cw - round(w * scale)) // 2, (ch - round(h * scale)) // 2
    points = landmarks.astype(np.float64).copy()
    points[:, :2] = (points[:, :2] - [ox, oy]) / scale
    points[:, 2] /= scale
    size = mesh.face_size(points)
    x0, y0 = np.floor(points[:, :2].min(axis=0) - 0.3 * size).astype(int)
    x1, y1 = np.ceil(points[:, :2].max(axis=0) + 0.3 * size).astype(int)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    face = image[y0:y1, x0:x1]
    points[:, :2] -= [x0, y0]
    shrink = min(1.0, SWAP_FACE_SIZE / size)
    if shrink < 1.0:
        face = cv2.resize(face, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        points *= shrink
    if shrink * 1.0 / scale < 1.2:  # hardly sharper than the canvas: not worth a second image
        return None, None
    return np.ascontiguousarray(face), points.astype(np.float32)


def _find_face_in_original(image: np.ndarray, canvas: np.ndarray) -> np.ndarray | None:
    h, w = image.shape[:2]
    ch, cw = canvas.shape[:2]
    scale = min(cw / w, ch / h)
    ox, oy = (cw - round(w * scale)) // 2, (ch - round(h * scale)) // 2
    small = image if max(h, w) <= 1600 else cv2.resize(image, None, fx=1600 / max(h, w), fy=1600 / max(h, w))
    found = find_face(small)
    if found is None:
        return None
    found = found * (w / small.shape[1])
    found[:, :2] = found[:, :2] * scale + [ox, oy]
    found[:, 2] *= scale
    return found


def load_avatar(path: str, size: tuple[int, int] | None = None) -> Avatar:
    """An image, ``builtin``, or an avatar folder (its still, with its own refiner)."""
    from realtime.avatar_folder import is_avatar_folder, read_avatar_folder

    if os.path.isdir(path) and is_avatar_folder(path):
        folder = read_avatar_folder(path)
        avatar = make_avatar(read_image(folder.image, "avatar"), size, path)
        avatar.refiner = folder.refiner
        return avatar
    return make_avatar(load_avatar_image(path), size, path)
