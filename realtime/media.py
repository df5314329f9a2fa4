"""Loading user-supplied images, with one-line errors for everything that can go wrong, and
probing media containers."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from realtime.errors import UserError
from realtime.native import quiet_native_stderr

logger = logging.getLogger(__name__)

MAX_IMAGE_SIDE = 12000
MIN_IMAGE_SIDE = 48


def to_bgr8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Any cv2-decoded image (gray, BGRA, 16-bit, float) as BGR uint8."""
    if image.dtype == np.uint16:
        image = (image / 257.0).round().astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise UserError(f"{name}: unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        # Composite transparency over white, as viewers show it.
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        return (image[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise UserError(f"{name}: unsupported image layout {image.shape}")


def read_image(path: str, what: str = "image") -> np.ndarray:
    """Read an image file as BGR uint8, or raise UserError with one clear line."""
    if not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"{what} is a folder, not an image file: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{what} is empty (0 bytes): {path}")
    data = np.fromfile(path, dtype=np.uint8)
    with quiet_native_stderr():
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise UserError(f"{what} could not be decoded (corrupt, truncated or not an image): {path}")
    height, width = image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise UserError(
            f"{what} is too small ({width}x{height}); use at least {MIN_IMAGE_SIDE}px per side: {path}"
        )
    if max(height, width) > MAX_IMAGE_SIDE:
        raise UserError(
            f"{what} is too large ({width}x{height}); the limit is {MAX_IMAGE_SIDE}px per side: {path}"
        )
    image = to_bgr8(image, f"{what} {path}")
    if image.std() < 1.0:
        raise UserError(f"{what} is blank (a single flat colour): {path}")
    return image


def fit_to_canvas(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Fit the whole image into width x height; pad with a blurred, dimmed fill of itself."""
    ih, iw = image.shape[:2]
    scale = min(width / iw, height / ih)
    fw, fh = max(1, round(iw * scale)), max(1, round(ih * scale))
    fitted = cv2.resize(image, (fw, fh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if (fw, fh) == (width, height):
        return fitted
    cover = max(width / iw, height / ih)
    back = cv2.resize(image, (max(width, round(iw * cover)), max(height, round(ih * cover))))
    by, bx = (back.shape[0] - height) // 2, (back.shape[1] - width) // 2
    back = back[by : by + height, bx : bx + width]
    back = (cv2.GaussianBlur(back, (0, 0), 25) * 0.6).astype(np.uint8)
    x, y = (width - fw) // 2, (height - fh) // 2
    back[y : y + fh, x : x + fw] = fitted
    return back


def video_start_offset_s(path: str | os.PathLike[str]) -> float:
    """Seconds from the start of ``path`` to its first video frame (0.0 when unknown).

    ffmpeg lines a muxed input up by the file's start (its earliest stream). A driver
    whose video starts after its audio (common in phone and camera recordings) would
    otherwise get its audio that much late in a render, whose video starts at 0.
    """
    import re
    import subprocess

    import imageio_ffmpeg

    try:
        probe = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stderr
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("probing %s failed: %s", path, exc)
        return 0.0
    file_start = re.search(r"Duration:.*?, start: (-?[\d.]+)", probe)
    video = re.search(r"Stream #\d+:\d+.*?: Video: .*", probe)
    if not file_start or not video:
        return 0.0
    # ffmpeg prints a stream's own start only when it is not 0.
    stream_start = re.search(r", start (-?[\d.]+)", video.group(0))
    offset = (float(stream_start.group(1)) if stream_start else 0.0) - float(file_start.group(1))
    return max(0.0, offset)
