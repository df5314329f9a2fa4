"""Helpers every sink uses: one-line errors and frames in the negotiated format."""

from __future__ import annotations

import cv2
import numpy as np

from realtime.errors import one_line

__all__ = ["as_bgr", "one_line"]


def as_bgr(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` as a C-contiguous BGR uint8 (height, width, 3) array, resized if needed."""
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[0] != height or image.shape[1] != width:
        shrinking = image.shape[0] * image.shape[1] > width * height
        image = cv2.resize(
            image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        )
    return np.ascontiguousarray(image)
