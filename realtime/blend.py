"""Blend stage: paste the rendered patch back; swap-mode patches go through ``realtime.swap``
(relit, camera-matched, multi-band blended inside the jaw line), others are colour-matched and
feathered."""

from __future__ import annotations

import cv2
import numpy as np

from realtime.frames import Rendered
from realtime.stages import Stage
from realtime.swap import SwapCompositor, SwapSettings


def match_colour(patch: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Shift the patch's Lab mean and spread to the reference's, measured under ``weight``."""
    w = weight.reshape(-1)
    total = float(w.sum())
    if total < 16.0:
        return patch
    src = cv2.cvtColor(patch, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
    ref = cv2.cvtColor(reference, cv2.COLOR_BGR2LAB).reshape(-1, 3).astype(np.float32)
    mu_s = (src * w[:, None]).sum(0) / total
    mu_r = (ref * w[:, None]).sum(0) / total
    sd_s = np.sqrt((((src - mu_s) ** 2) * w[:, None]).sum(0) / total) + 1e-3
    sd_r = np.sqrt((((ref - mu_r) ** 2) * w[:, None]).sum(0) / total) + 1e-3
    # Limit the contrast change: a beard or glasses under the mask must not wash the face out.
    gain = np.clip(sd_r / sd_s, 0.7, 1.4)
    out = (src - mu_s) * gain + mu_r
    out = np.clip(out, 0, 255).astype(np.uint8).reshape(patch.shape)
    return cv2.cvtColor(out, cv2.COLOR_LAB2BGR)


class Blender(Stage):
    """``process(rendered) -> image``: the rendered patch pasted onto its background."""

    def __init__(self, swap: SwapSettings | None = None) -> None:
        self.compositor = SwapCompositor(swap)

    def process(self, rendered: Rendered) -> np.ndarray:
        background = rendered.background
        if background is None:
            raise ValueError("rendered patch has no background to paste onto")
        if rendered.driver_landmarks is not None:
            return self.compositor.composite(
                background,
                rendered.patch,
                rendered.origin,
                rendered.driver_landmarks,
                rendered.occluder,
                keep_glasses=rendered.keep_glasses,
            )
        out = background.copy()
        x0, y0 = rendered.origin
        patch = rendered.patch
        h, w = patch.shape[:2]
        h = min(h, out.shape[0] - y0)
        w = min(w, out.shape[1] - x0)
        if h <= 0 or w <= 0:
            return out
        patch = patch[:h, :w]
        mask = rendered.mask[:h, :w]
        under = out[y0 : y0 + h, x0 : x0 + w]
        if rendered.colour_match:
            patch = match_colour(patch, under, (mask > 0.5).astype(np.float32))
        if mask.min() >= 1.0:
            under[:] = patch
        else:
            alpha = mask[..., None]
            under[:] = (patch.astype(np.float32) * alpha + under.astype(np.float32) * (1.0 - alpha)).astype(
                np.uint8
            )
        return out
