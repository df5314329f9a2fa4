"""Tracker stage: mediapipe face mesh (478 points with iris), smoothing, face lock."""

from __future__ import annotations

import logging
import math
from typing import Any

import cv2
import numpy as np

from realtime import mesh
from realtime.frames import FaceTrack, Frame
from realtime.native import quiet_native_stderr
from realtime.stages import Stage
from realtime.worker import ChildWorker, WorkerChannel

logger = logging.getLogger(__name__)


# Speed gains (OneEuroFilter's beta, default 3) of the two filters of PoseExpressionSmoother:
# a still face keeps the 1.2 Hz minimum cutoff, motion opens the cutoff sooner, so lips keep
# up with speech without a still face jittering (benchmarks/RESULTS.md, "Tracker smoothing").
POSE_BETA = 10.0
EXPRESSION_BETA = 20.0


class OneEuroFilter:
    """One Euro filter over an array, with the speed measured in face sizes per second.

    Normalising the speed by face size makes one setting work for small and large faces:
    a still face is smoothed hard (no jitter), fast motion opens the cutoff (little lag).
    """

    def __init__(self, min_cutoff_hz: float = 1.2, beta: float = 3.0, d_cutoff_hz: float = 3.0) -> None:
        self.min_cutoff_hz = min_cutoff_hz
        self.beta = beta
        self.d_cutoff_hz = d_cutoff_hz
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff_hz)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._value = self._speed = self._t = None

    def __call__(self, value: np.ndarray, t: float, scale: float) -> np.ndarray:
        if self._value is None or self._t is None or t <= self._t:
            self._value, self._speed, self._t = value.copy(), np.zeros_like(value), t
            return value.copy()
        dt = max(t - self._t, 1e-3)
        speed = (value - self._value) / dt / max(scale, 1e-6)
        self._speed = self._speed + self._alpha(self.d_cutoff_hz, dt) * (speed - self._speed)
        # One cutoff per landmark (shared by x, y, z) so a point's axes stay coherent.
        point_speed = np.linalg.norm(self._speed, axis=-1, keepdims=True)
        cutoff = self.min_cutoff_hz + self.beta * point_speed
        self._value = self._value + self._alpha(cutoff, dt) * (value - self._value)
        self._t = t
        return self._value.copy()


class PoseExpressionSmoother:
    """Smooths head pose and expression apart, each with its own One Euro filter.

    Jitter of the head is what a viewer sees as a shaking face; lag in the lips and eyelids
    is lip-sync error. The pose is a similarity fitted on the rigid points, and the
    expression is the face in the head's own frame, where head motion doesn't move it. Both
    are smoothed alike while the face is still; the expression's cutoff opens sooner as the
    lips move, and a head turn no longer drags the lips through the pose's filter.
    """

    def __init__(self, pose: OneEuroFilter | None = None, expression: OneEuroFilter | None = None) -> None:
        self.pose = pose or OneEuroFilter(beta=POSE_BETA)
        self.expression = expression or OneEuroFilter(beta=EXPRESSION_BETA)
        self._reference: np.ndarray | None = None  # rigid points of the first face: the head's frame

    def reset(self) -> None:
        self.pose.reset()
        self.expression.reset()
        self._reference = None

    def __call__(self, landmarks: np.ndarray, t: float, scale: float) -> np.ndarray:
        points = landmarks.astype(np.float64)
        if self._reference is None:
            self._reference = points[mesh.RIGID]
        reference = self._reference
        s, r, shift = mesh.umeyama(reference, points[mesh.RIGID])
        local = (points - shift) @ r / s  # the face in the reference's pose
        # The reference's rigid points carried by this frame's pose: filtering them filters the
        # pose, and a similarity refitted to the result is the smoothed pose.
        s_pose, r_pose, shift_pose = mesh.umeyama(reference, self.pose(s * reference @ r.T + shift, t, scale))
        local = self.expression(local, t, scale / s)
        return (s_pose * local @ r_pose.T + shift_pose).astype(landmarks.dtype)


# A NormalizedLandmark holding just x, y and z, as protobuf writes it inside a landmark list:
# key and length of the entry, then each float's key and its 4 little-endian bytes.
_LANDMARK_WIRE = np.dtype(
    [
        ("key", "u1"),
        ("length", "u1"),
        ("x_key", "u1"),
        ("x", "<f4"),
        ("y_key", "u1"),
        ("y", "<f4"),
        ("z_key", "u1"),
        ("z", "<f4"),
    ]
)
_LANDMARK_KEYS = {"key": 0x0A, "length": 15, "x_key": 0x0D, "y_key": 0x15, "z_key": 0x1D}


def landmark_xyz(landmark_list: Any) -> np.ndarray:
    """(N, 3) float32 normalised x, y, z of a mediapipe ``NormalizedLandmarkList``.

    Read from its serialised bytes when every landmark holds exactly x, y and z (the face
    mesh's do): reading 478 protobuf objects one attribute at a time took ten times as long.
    Anything else (visibility or presence set) is read field by field."""
    wire = landmark_list.SerializeToString()
    if len(wire) == _LANDMARK_WIRE.itemsize * len(landmark_list.landmark):
        entries = np.frombuffer(wire, _LANDMARK_WIRE)
        if all((entries[name] == value).all() for name, value in _LANDMARK_KEYS.items()):
            return np.stack([entries["x"], entries["y"], entries["z"]], axis=1)
    return np.array([(p.x, p.y, p.z) for p in landmark_list.landmark], dtype=np.float32)


def _landmarks_array(face: Any, width: int, height: int) -> np.ndarray:
    pts = landmark_xyz(face)
    pts[:, 0] *= width
    pts[:, 1] *= height
    pts[:, 2] *= width  # mediapipe's z uses roughly the x scale
    return pts


class FaceMeshDetector(Stage):
    """mediapipe's face mesh in this process: ``detect(bgr) -> [(478, 3) pixels]``.

    The constructor only configures; ``open()`` builds the mesh, ``close()`` releases it.
    """

    def __init__(self, max_faces: int, static_images: bool, min_detection_confidence: float) -> None:
        self.max_faces = max_faces
        self.static_images = static_images
        self.min_detection_confidence = min_detection_confidence
        self._mesh: Any = None
        self._quiet_calls = 0

    def open(self) -> FaceMeshDetector:
        if self._mesh is not None:
            return self
        import mediapipe as mp  # heavy import, kept local so `realtime --help` stays fast

        with quiet_native_stderr():
            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=self.static_images,
                max_num_faces=self.max_faces,
                refine_landmarks=True,
                min_detection_confidence=self.min_detection_confidence,
                min_tracking_confidence=0.5,
            )
            # The first call builds the TFLite delegates, which log on their own.
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))
        self._quiet_calls = 2
        return self

    def detect(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        if self._quiet_calls > 0:  # the first real frames also log from native code
            self._quiet_calls -= 1
            with quiet_native_stderr():
                result = self._mesh.process(rgb)
        else:
            result = self._mesh.process(rgb)
        height, width = image_bgr.shape[:2]
        return [_landmarks_array(face, width, height) for face in result.multi_face_landmarks or []]

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None


def _serve_face_mesh(
    channel: WorkerChannel, shm_name: str, max_faces: int, static_images: bool, confidence: float
) -> None:
    """Child process: detect faces in frames handed over through shared memory."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        with FaceMeshDetector(max_faces, static_images, confidence) as detector:
            channel.ready()
            for shape in channel.requests():
                image = np.ndarray(shape, np.uint8, buffer=shm.buf)
                try:
                    channel.reply(detector.detect(image))
                except Exception as exc:  # reported to the parent, which decides
                    channel.reply_error(f"{type(exc).__name__}: {exc}")
    finally:
        shm.close()


class FaceMeshProcess(Stage):
    """The same detector in a child process.

    mediapipe holds the GIL for the whole of ``process()``, so in-process tracking can't
    overlap with rendering. In its own process it runs on another core; a frame crosses
    through shared memory and landmarks come back through a pipe. A child that dies is
    restarted on the next frame. The constructor only configures; ``open()`` starts the child.
    """

    def __init__(
        self,
        max_faces: int,
        static_images: bool,
        min_detection_confidence: float,
        max_pixels: int = 1920 * 1080,
    ) -> None:
        self._args = (max_faces, static_images, min_detection_confidence)
        self._capacity = max_pixels * 3
        self._shm: Any = None
        self._worker: ChildWorker | None = None

    def open(self) -> FaceMeshProcess:
        if self._worker is not None:
            return self
        from multiprocessing import shared_memory

        self._shm = shared_memory.SharedMemory(create=True, size=self._capacity)
        self._worker = ChildWorker(
            _serve_face_mesh,
            (self._shm.name, *self._args),
            name="tracker",
            start_timeout_s=60.0,
            close_timeout_s=2.0,
        )
        try:
            self._worker.open()
        except BaseException:
            self.close()  # unlinks the shared memory too
            raise
        return self

    def detect(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        if image_bgr.nbytes > self._capacity:
            raise ValueError(f"frame of {image_bgr.shape} exceeds the tracker's shared buffer")
        if self._worker is None or not self._worker.alive:
            logger.warning("tracker process is gone; restarting it")
            self.close()
            self.open()
        assert self._worker is not None and self._shm is not None
        view = np.ndarray(image_bgr.shape, np.uint8, buffer=self._shm.buf)
        np.copyto(view, image_bgr)
        return self._worker.call(image_bgr.shape)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None


class FaceTracker(Stage):
    """``process(frame) -> FaceTrack``, like a mediapipe solution.

    - tracking mode (detector only when the face is lost), 478 points incl. iris;
    - locks onto one face: the one nearest the previous lock, and only switches to a
      different face after the locked one has been gone for ``relock_after_s``;
    - smooths with a One Euro filter;
    - reports the time since the face was lost;
    - ``isolated=True`` runs mediapipe in a child process, so it overlaps with rendering.
    """

    def __init__(
        self,
        # One face: mediapipe then follows it from frame to frame by its own landmarks and
        # runs the detector only when it is lost (with two it re-detects every frame, looking
        # for the second). That tracking is itself the lock; ``_choose`` adds the relock delay
        # when only another face is found.
        max_faces: int = 1,
        track_width: int = 960,
        smoothing: bool = True,
        relock_after_s: float = 1.0,
        min_detection_confidence: float = 0.5,
        static_images: bool = False,
        isolated: bool = False,
    ) -> None:
        kind = FaceMeshProcess if isolated else FaceMeshDetector
        self._detector = kind(max_faces, static_images, min_detection_confidence)
        self._open = False
        self.track_width = track_width
        self.relock_after_s = relock_after_s
        self._filter = PoseExpressionSmoother() if smoothing else None
        self._locked_centre: np.ndarray | None = None
        self._locked_size = 0.0
        self._last_seen_t: float | None = None

    def open(self) -> FaceTracker:
        """Start the detector (the child process, when isolated); idempotent.

        A tracker used without ``open`` (a script, an evaluation) opens on its first frame.
        """
        if not self._open:
            self._detector.open()
            self._open = True
        return self

    def close(self) -> None:
        self._detector.close()
        self._open = False

    def detect(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        """All faces in the image as (478, 3) pixel arrays, largest first."""
        width = image_bgr.shape[1]
        scale = min(1.0, self.track_width / float(width)) if self.track_width else 1.0
        # Area averaging is cheap only for whole-number factors; mediapipe resamples its
        # face crop again anyway.
        whole = (1.0 / scale).is_integer()
        small = (
            image_bgr
            if scale == 1.0
            else cv2.resize(
                image_bgr,
                None,
                fx=scale,
                fy=scale,
                interpolation=cv2.INTER_AREA if whole else cv2.INTER_LINEAR,
            )
        )
        faces = self.open()._detector.detect(small)
        if scale != 1.0:
            for pts in faces:
                pts /= scale
        faces.sort(key=mesh.face_size, reverse=True)
        return faces

    def _choose(self, faces: list[np.ndarray], t: float) -> np.ndarray | None:
        if not faces:
            return None
        if self._locked_centre is None:
            return faces[0]
        centres = [f[mesh.RIGID, :2].mean(axis=0) for f in faces]
        distances = [float(np.linalg.norm(c - self._locked_centre)) for c in centres]
        best = int(np.argmin(distances))
        if distances[best] < 1.5 * self._locked_size:
            return faces[best]
        # Only another face is visible: hold the lock for a while before switching.
        gone_for = t - (self._last_seen_t if self._last_seen_t is not None else t)
        if gone_for >= self.relock_after_s:
            return faces[0]
        return None

    def process(self, frame: Frame) -> FaceTrack:
        faces = self.detect(frame.image)
        chosen = self._choose(faces, frame.t_capture)
        if chosen is None:
            lost_for = frame.t_capture - self._last_seen_t if self._last_seen_t is not None else float("inf")
            if self._filter is not None and lost_for > 0.25:
                self._filter.reset()  # don't smear the old position into a re-acquired face
            return FaceTrack(frame=frame, landmarks=None, faces_seen=len(faces), lost_for_s=lost_for)
        size = mesh.face_size(chosen)
        self._locked_centre = chosen[mesh.RIGID, :2].mean(axis=0)
        self._locked_size = size
        self._last_seen_t = frame.t_capture
        smoothed = self._filter(chosen, frame.t_capture, size) if self._filter is not None else chosen
        return FaceTrack(frame=frame, landmarks=smoothed, raw_landmarks=chosen, faces_seen=len(faces))


def find_face(image_bgr: np.ndarray) -> np.ndarray | None:
    """Landmarks (478, 3) of the largest face in a still image, or None."""
    tracker = FaceTracker(max_faces=4, smoothing=False, static_images=True, track_width=0)
    try:
        faces = tracker.detect(image_bgr)
    finally:
        tracker.close()
    return faces[0] if faces else None
