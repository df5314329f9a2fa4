"""Who a face looks like: dlib's 128-D face descriptor, the ``eval`` extra's identity measure.

Two descriptors of one person lie about 0.4 apart or less; dlib calls a pair the same person
below 0.6. Used by the evaluations only, never live.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from realtime.errors import UserError


def embedder_available() -> bool:
    return (
        importlib.util.find_spec("dlib") is not None
        and importlib.util.find_spec("face_recognition_models") is not None
    )


class FaceEmbedder:
    """dlib's 128-D face descriptor: HOG detector (the landmarks' box as fallback), 5-point alignment."""

    def __init__(self) -> None:
        if not embedder_available():
            raise UserError("the identity measure needs dlib: pip install -e '.[eval]'")
        import dlib

        # face_recognition_models' own import needs pkg_resources; its files are found directly.
        spec = importlib.util.find_spec("face_recognition_models")
        models = Path(spec.submodule_search_locations[0]) / "models"  # type: ignore[union-attr,index]
        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.detected = 0
        self.fallback = 0

    def __call__(self, image_bgr: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray | None:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        found = self.detector(rgb, 1)
        if len(found):
            rect = max(found, key=lambda r: r.area())
            self.detected += 1
        elif landmarks is not None:
            x0, y0 = landmarks[:, :2].min(axis=0)
            x1, y1 = landmarks[:, :2].max(axis=0)
            rect = self.dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
            self.fallback += 1
        else:
            return None
        return np.array(self.net.compute_face_descriptor(rgb, self.shape(rgb, rect)))
