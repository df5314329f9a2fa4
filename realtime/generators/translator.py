"""Swap mode with a learned identity translator (CycleGAN / Recycle-GAN, ``realtime train swap``).

The user's face is cut out of their own frame with the runtime's ``alignment`` (the crop
spec comes from the model card), the ONNX model turns it into the other person's face, and
the result goes back over the user's face oval with a feathered mask; the blend stage then
matches its colour to the skin it covers (``Rendered.colour_match``).

Model contract (NCHW float32, RGB in [0, 1]): input ``face`` (1, 3, S, S); output ``image``
(1, 3, S, S) and optionally ``mask`` (1, 1, S, S), which then narrows the paste mask.
Runs through ``OnnxRunner`` (provider fallback, warm-up, IO binding); never imports torch.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np

from realtime import mesh
from realtime.crops import IN_FACE, OUT_IMAGE, OUT_MASK, CropSpec, alignment, antialiased_warp, to_tensor
from realtime.errors import UserError
from realtime.frames import Rendered, Target
from realtime.generators.onnx import OnnxRunner
from realtime.generators.piecewise import bounding_roi
from realtime.stages import Stage

KIND = "translator"


def model_card(path: str) -> dict:
    """The JSON card beside ``PATH.onnx`` (``PATH.json``), or {}."""
    card = os.path.splitext(path)[0] + ".json"
    if not os.path.exists(card):
        return {}
    with open(card) as f:
        return json.load(f)


def is_translator(path: str) -> bool:
    return model_card(path).get("kind") == KIND


def aligned_crop(image: np.ndarray, landmarks: np.ndarray, spec: CropSpec) -> tuple[np.ndarray, np.ndarray]:
    """(crop, matrix): the face crop of ``spec`` (area-averaged when the face is big, see
    ``antialiased_warp``) and the 2x3 frame→crop similarity."""
    matrix = alignment(landmarks, spec)
    return antialiased_warp(image, matrix, spec.size), matrix


class TranslatorGenerator(Stage):
    """``render(target) -> Rendered`` for swap mode: the user's face translated to the model's identity."""

    def __init__(self, path: str, providers: list[str] | None = None, feather: float = 0.05) -> None:
        self.runner = OnnxRunner(path, providers)
        self.name = os.path.splitext(os.path.basename(path))[0]
        if (
            IN_FACE not in self.runner.inputs
            or len(self.runner.inputs) != 1
            or OUT_IMAGE not in self.runner.outputs
        ):
            raise UserError(
                f"model {path} has inputs {sorted(self.runner.inputs)} and outputs {self.runner.outputs}; "
                f"a translator needs input '{IN_FACE}' and output '{OUT_IMAGE}' (optionally '{OUT_MASK}')"
            )
        self.card = model_card(path)
        crop = self.card.get("crop", {})
        shape = self.runner.input_shape(IN_FACE)
        size = shape[-1] if isinstance(shape[-1], int) else int(crop.get("size", 64))
        self.spec = CropSpec(size=size, face_scale=float(crop.get("face_scale", CropSpec(size).face_scale)))
        self.feather = feather
        self._oval = mesh.face_oval()
        self._footprint = np.full((size, size), 255, np.uint8)
        self.runner.warm_up({IN_FACE: np.zeros((1, 3, size, size), np.float32)})

    @property
    def provider(self) -> str:
        return self.runner.provider

    def _mask(
        self, dest: np.ndarray, origin: np.ndarray, shape: tuple[int, int], inside: np.ndarray
    ) -> np.ndarray:
        """The face oval, feathered inwards (nothing spills past the jaw), within the crop's footprint."""
        oval = np.zeros(shape, np.uint8)
        cv2.fillPoly(oval, [np.round(dest[self._oval] - origin).astype(np.int32)], 255)
        size = mesh.face_size(dest)
        erode = max(1, int(size * 0.06))
        inner = cv2.erode(
            np.minimum(oval, inside), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * erode + 1,) * 2)
        )
        soft = cv2.GaussianBlur(inner.astype(np.float32) / 255.0, (0, 0), max(1.0, size * self.feather))
        soft *= oval > 0
        return soft

    def render(self, target: Target) -> Rendered:
        image = target.frame.image
        # The user's own landmarks: the face to translate is the user's as the camera sees it,
        # not swap mode's target, which has moved towards the avatar's proportions.
        user = target.driver_landmarks if target.driver_landmarks is not None else target.landmarks
        dest = user[:, :2].astype(np.float64)
        crop, matrix = aligned_crop(image, dest, self.spec)
        outputs = self.runner.run({IN_FACE: to_tensor(crop)})
        face = np.clip(outputs[OUT_IMAGE][0].transpose(1, 2, 0)[:, :, ::-1] * 255.0 + 0.5, 0, 255).astype(
            np.uint8
        )
        x0, y0, x1, y1 = bounding_roi(dest[: mesh.NUM_LANDMARKS], image.shape, margin=4)
        w, h = x1 - x0, y1 - y0
        back = cv2.invertAffineTransform(matrix)
        back[:, 2] -= (x0, y0)
        patch = cv2.warpAffine(face, back, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        inside = cv2.warpAffine(
            self._footprint, back, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
        )
        mask = self._mask(dest, np.array([x0, y0], np.float64), (h, w), inside)
        if OUT_MASK in outputs:
            model_mask = cv2.warpAffine(
                outputs[OUT_MASK][0, 0].astype(np.float32),
                back,
                (w, h),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
            )
            mask *= np.clip(model_mask, 0.0, 1.0)
        return Rendered(
            frame=target.frame,
            patch=patch,
            mask=mask,
            origin=(x0, y0),
            colour_match=True,
            background=image,
            generator=self.name,
        )
