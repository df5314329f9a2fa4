"""Occlusion for swap mode: hands in front of the face stay in front.

mediapipe's hand landmarker (``mp.solutions.hands``, shipped inside the 0.10.21 wheel) runs
on the box around the face, small, in its own process and off the frame's critical path:
each frame hands the newest face box over (when the child is free) and takes the newest
hands back, so the render thread never waits for it. The hands are drawn as a mask (palm
polygon and thick finger bones), widened by how far a hand may have moved since its frame.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from realtime import mesh
from realtime.stages import Stage
from realtime.worker import ChildWorker, WorkerError

logger = logging.getLogger(__name__)

PALM = [0, 1, 5, 9, 13, 17]
FINGERS = [[0, 1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20], [5, 9, 13, 17]]
BOX_SCALE = 2.4  # the searched box: this many face widths around the face (a hand at the cheek or ear)
SEARCH_SIZE = 256  # px: the box is scaled to at most this before the hand model sees it
MAX_AGE_S = 0.25
LOST_AFTER_S = 2.0  # hands older than this are dropped (the hand may have left)
# Live, the model looks again only when something moved: a grey thumbnail of the searched box
# (CHANGE_GRID px a side) must differ by CHANGE_LEVEL grey levels over CHANGE_SHARE of it since
# the model's last look, outside the mouth and eyes (which talking and blinking move); set
# between a hand's share and a talking head's (benchmarks/RESULTS.md, swap mode, session 17).
CHANGE_GRID = 32
CHANGE_LEVEL = 20
CHANGE_SHARE = 0.03
RECHECK_S = 1.0  # with no hands and nothing moving, the model still looks this often


class HandDetector(Stage):
    """``detect(bgr) -> [(21, 2) pixels]`` with mediapipe's hands in this process."""

    def __init__(self, complexity: int = 0, tracking: bool = True, min_confidence: float = 0.5) -> None:
        self.complexity = complexity
        self.tracking = tracking
        self.min_confidence = min_confidence
        self._hands: Any = None

    def open(self) -> HandDetector:
        if self._hands is None:
            import mediapipe as mp

            from realtime.native import quiet_native_stderr

            with quiet_native_stderr():
                self._hands = mp.solutions.hands.Hands(
                    static_image_mode=not self.tracking,
                    max_num_hands=2,
                    model_complexity=self.complexity,
                    min_detection_confidence=self.min_confidence,
                    min_tracking_confidence=0.5,
                )
                self._hands.process(np.zeros((64, 64, 3), np.uint8))
        return self

    def detect(self, image_bgr: np.ndarray) -> list[np.ndarray]:
        self.open()
        result = self._hands.process(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
        h, w = image_bgr.shape[:2]
        return [
            np.array([(p.x * w, p.y * h) for p in hand.landmark], np.float32)
            for hand in result.multi_hand_landmarks or []
        ]

    def close(self) -> None:
        if self._hands is not None:
            self._hands.close()
            self._hands = None


def _serve_hands(channel: Any, shm_name: str, complexity: int) -> None:
    """Child process: for each box posted, find its hands and report them as an event."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=shm_name)
    try:
        with HandDetector(complexity, tracking=False) as detector:
            channel.ready()
            for request in channel.requests():
                shape, tag = request  # posted: the parent writes no new box until our event
                image = np.ndarray(shape, np.uint8, buffer=shm.buf)
                try:
                    channel.notify((tag, detector.detect(image)))
                except Exception as exc:  # one bad frame: no hands for it
                    channel.notify((tag, []))
                    logging.getLogger(__name__).debug("hand detection failed: %s", exc)
    finally:
        shm.close()


class ChangeGate:
    """``look(box, face_points, now, hands_seen)``: whether the hand model should look at this
    searched box (``face_points``: the face's landmarks in box pixels).

    It should while hands were there at its last look, when the box changed since that look, or
    when that look is RECHECK_S old. A still, hand-free scene then costs one run of the model a
    second instead of ten: the model's bursts on a busy core made the swap's 1080p latency tail.
    """

    def __init__(self, share: float = CHANGE_SHARE, recheck_s: float = RECHECK_S) -> None:
        self.share = share
        self.recheck_s = recheck_s
        self._reference: tuple[np.ndarray, np.ndarray] | None = None  # at the last look
        self._t_reference = -math.inf
        self.looks = 0
        self.unchanged = 0  # boxes the model was spared

    @staticmethod
    def thumbnail(box: np.ndarray, face_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The box's grey thumbnail, and where to compare it (not over the mouth or eyes)."""
        grey = cv2.cvtColor(box, cv2.COLOR_BGR2GRAY) if box.ndim == 3 else box
        thumb = cv2.resize(grey, (CHANGE_GRID, CHANGE_GRID), interpolation=cv2.INTER_AREA)
        points = face_points[:, :2] * (CHANGE_GRID / box.shape[1], CHANGE_GRID / box.shape[0])
        compare = np.ones((CHANGE_GRID, CHANGE_GRID), np.uint8)
        for loop in (mesh.OUTER_LIP, mesh.RIGHT_EYE, mesh.LEFT_EYE):
            hull = cv2.convexHull(np.round(points[loop] * 4).astype(np.int32))
            cv2.fillConvexPoly(compare, hull, 0, cv2.LINE_8, 2)
        compare = cv2.erode(compare, np.ones((3, 3), np.uint8))  # and a cell round them
        return thumb.astype(np.int16), compare > 0

    def changed(self, thumbnail: tuple[np.ndarray, np.ndarray]) -> float:
        """Share of the compared thumbnail that moved since the last look (1.0 before any)."""
        if self._reference is None:
            return 1.0
        where = thumbnail[1] & self._reference[1]
        if not where.any():
            return 1.0
        return float((np.abs(thumbnail[0] - self._reference[0])[where] > CHANGE_LEVEL).mean())

    def look(self, box: np.ndarray, face_points: np.ndarray, now: float, hands_seen: bool) -> bool:
        thumbnail = self.thumbnail(box, face_points)
        if hands_seen or now - self._t_reference >= self.recheck_s or self.changed(thumbnail) > self.share:
            self._reference, self._t_reference = thumbnail, now
            self.looks += 1
            return True
        self.unchanged += 1
        return False


@dataclass
class Hands:
    """Hands found in a frame: landmarks (21, 2) in frame pixels, and that frame's capture time."""

    landmarks: list[np.ndarray]
    t_capture: float


def hand_mask(
    hands: list[np.ndarray], shape: tuple[int, int], origin: tuple[int, int], grow: float
) -> np.ndarray:
    """uint8 mask over a box of ``shape`` at ``origin``: each hand's palm and fingers, grown by ``grow`` px."""
    mask = np.zeros(shape, np.uint8)
    for hand in hands:
        points = hand - origin
        palm_width = float(np.linalg.norm(points[5] - points[17])) + 1e-6
        thick = max(3, int(round(0.45 * palm_width + 2 * grow)))
        cv2.fillPoly(mask, [np.round(points[PALM]).astype(np.int32)], 255)
        for chain in FINGERS:
            cv2.polylines(mask, [np.round(points[chain]).astype(np.int32)], False, 255, thickness=thick)
        if grow >= 1:
            k = 2 * int(grow) + 1
            mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return cv2.GaussianBlur(mask, (5, 5), 0) if mask.any() else mask


class HandOccluder(Stage):
    """``update(frame, face_landmarks)`` then ``mask(shape, origin)``: what hands cover.

    ``isolated=False`` runs the model in this thread, synchronously (tests and offline
    evaluation, where every frame gets its own hands); the live path isolates it.
    """

    def __init__(self, isolated: bool = True, complexity: int = 1, min_interval_s: float = 0.1) -> None:
        self.isolated = isolated
        # Complexity 0 misses hands against a face; 1 finds them (both ship in the wheel).
        self.complexity = complexity
        # Live, the model runs at most this often: it costs about a frame of CPU, on the other core.
        self.min_interval_s = min_interval_s
        # ... and only when the box changed (isolated only: offline, every frame gets its hands)
        self.gate = ChangeGate()
        self._last_submit = -1e9
        self._last_check = -1e9
        self._worker: ChildWorker | None = None
        self._local: HandDetector | None = None
        self._shm: Any = None
        self._capacity = SEARCH_SIZE * SEARCH_SIZE * 3
        self._in_flight: dict[int, tuple[np.ndarray, float]] = {}
        self._tag = 0
        self._failed = False
        self._starting: threading.Thread | None = None
        self.latest: Hands | None = None

    def start(self) -> None:
        """Open in the background (the child takes a second or two to load mediapipe); frames
        before it is ready go without occlusion rather than wait."""
        if self._starting is None and self.isolated:
            self._starting = threading.Thread(target=self.open, name="hands-start", daemon=True)
            self._starting.start()

    @property
    def loading(self) -> bool:
        """Whether a background start (``start``) is still under way."""
        return self._starting is not None and self._starting.is_alive()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` for a background start to finish; whether the model is ready."""
        if self._starting is not None:
            self._starting.join(timeout_s)
        return self.ready

    @property
    def ready(self) -> bool:
        if not self.isolated:
            return True
        return self._starting is not None and not self._starting.is_alive() and self._worker is not None

    def open(self) -> HandOccluder:
        if self.isolated and self._worker is None and not self._failed:
            from multiprocessing import shared_memory

            self._shm = shared_memory.SharedMemory(create=True, size=self._capacity)
            self._worker = ChildWorker(
                _serve_hands, (self._shm.name, self.complexity), name="hands", start_timeout_s=60.0
            )
            try:
                self._worker.open()
            except WorkerError as exc:  # no occlusion rather than no stream
                logger.warning("hand occlusion is off: %s", exc)
                self._failed = True
                self.close()
        elif not self.isolated and self._local is None:
            self._local = HandDetector(self.complexity, tracking=False).open()
        return self

    def close(self) -> None:
        # A start that fails closes from its own thread, which cannot wait for itself.
        starting = self._starting
        if starting is not None and starting.is_alive() and starting is not threading.current_thread():
            starting.join()
        self._starting = None
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None
        if self._local is not None:
            self._local.close()
            self._local = None
        self._in_flight.clear()

    @staticmethod
    def search_box(image_shape: tuple[int, ...], face: np.ndarray) -> tuple[np.ndarray, float]:
        """The box around the face to search, as a frame→box affine (2x3) and its scale."""
        points = face[:, :2]
        centre = points[mesh.face_oval()].mean(axis=0)
        side = BOX_SCALE * float(np.ptp(points[mesh.face_oval(), 0]))
        scale = min(1.0, SEARCH_SIZE / max(side, 1.0))
        x0, y0 = centre - side / 2
        return np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]], np.float32), scale

    @classmethod
    def searched(cls, image: np.ndarray, face: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The box the model searches (at most SEARCH_SIZE a side), and its frame→box affine."""
        matrix, scale = cls.search_box(image.shape, face)
        side = int(round(BOX_SCALE * float(np.ptp(face[mesh.face_oval(), 0])) * scale))
        side = max(16, min(side, SEARCH_SIZE))
        box = cv2.warpAffine(
            image, matrix, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
        return box, matrix

    def update(self, image: np.ndarray, face: np.ndarray | None, t_capture: float) -> None:
        """Hand this frame's face box to the model if it is free; collect what it found."""
        if face is None or self._failed:
            self._collect()
            return
        if self.isolated and not self.ready:
            self.start()
            return
        if self.isolated and (self._in_flight or time.monotonic() - self._last_check < self.min_interval_s):
            self._collect()
            return
        if not self.isolated:
            self.open()
        box, matrix = self.searched(image, face)
        if not self.isolated:
            assert self._local is not None
            self.latest = Hands(self._to_frame(self._local.detect(box), matrix), t_capture)
            return
        self._collect()
        if self._worker is None:
            return
        now = time.monotonic()  # the model is free and due: the check on entry returned otherwise
        self._last_check = now
        hands_seen = self.latest is not None and bool(self.latest.landmarks)
        if not self.gate.look(box, face[:, :2] @ matrix[:, :2].T + matrix[:, 2], now, hands_seen):
            return
        self._last_submit = now
        try:
            np.copyto(np.ndarray(box.shape, np.uint8, buffer=self._shm.buf), box)
            self._tag += 1
            self._in_flight[self._tag] = (matrix, t_capture)
            self._worker.post((box.shape, self._tag))
        except WorkerError as exc:
            logger.warning("hand occlusion stopped: %s", exc)
            self._failed = True
            self.close()

    def stats(self) -> dict[str, int]:
        """How often the live model looked, and how many of its chances the unchanged box spared."""
        return {"looks": self.gate.looks, "spared_unchanged": self.gate.unchanged}

    def _collect(self) -> None:
        if self._worker is None:
            return
        if self._in_flight and time.monotonic() - self._last_submit > LOST_AFTER_S:
            self._in_flight.clear()  # an answer that never came must not stop occlusion for good
        try:
            events = self._worker.events()
        except WorkerError:
            self._in_flight.clear()
            return
        for tag, hands in events:
            matrix, t_capture = self._in_flight.pop(tag, (None, 0.0))
            if matrix is not None:
                self.latest = Hands(self._to_frame(hands, matrix), t_capture)

    @staticmethod
    def _to_frame(hands: list[np.ndarray], matrix: np.ndarray) -> list[np.ndarray]:
        inverse = cv2.invertAffineTransform(matrix)
        return [hand @ inverse[:, :2].T + inverse[:, 2] for hand in hands]

    def _fresh(self, t_capture: float) -> tuple[Hands, float] | None:
        """(the latest hands, their age in s) when there are hands no older than MAX_AGE_S."""
        hands = self.latest
        if hands is None or not hands.landmarks:
            return None
        age = max(0.0, t_capture - hands.t_capture)
        return None if age > MAX_AGE_S else (hands, age)

    def mask(
        self, shape: tuple[int, int], origin: tuple[int, int], t_capture: float, face_size: float
    ) -> np.ndarray | None:
        """The hands over a box of ``shape`` at ``origin`` (None when there are none), grown by
        how far they may have moved since their frame."""
        fresh = self._fresh(t_capture)
        if fresh is None:
            return None
        hands, age = fresh
        # A hand moves up to about two face widths a second; a face width is ~2.2 face sizes.
        grow = 0.04 * face_size + age * 4.0 * face_size
        mask = hand_mask(hands.landmarks, shape, origin, grow)
        return mask if mask.any() else None

    def covered(self, landmarks: np.ndarray, t_capture: float, face_size: float) -> np.ndarray | None:
        """(N,) in [0, 1]: how much each face landmark is under a hand (None: no hands now).

        The hands are grown a little more than for the mask: mediapipe's guesses go wrong a
        little way beyond the hand's edge too."""
        fresh = self._fresh(t_capture)
        if fresh is None:
            return None
        hands, age = fresh
        return covered_landmarks(hands.landmarks, landmarks, 0.12 * face_size + age * 4.0 * face_size)


def covered_landmarks(hands: list[np.ndarray], landmarks: np.ndarray, grow: float) -> np.ndarray:
    """(N,) in [0, 1]: each landmark's value in the hands' mask (``hand_mask``, grown by ``grow``)."""
    points = landmarks[:, :2]
    margin = int(grow) + 4
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - margin
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + margin
    mask = hand_mask(hands, (y1 - y0, x1 - x0), (x0, y0), grow)
    if not mask.any():
        return np.zeros(len(points), np.float32)
    cols = np.clip(np.round(points[:, 0] - x0).astype(int), 0, x1 - x0 - 1)
    rows = np.clip(np.round(points[:, 1] - y0).astype(int), 0, y1 - y0 - 1)
    return mask[rows, cols].astype(np.float32) * (1.0 / 255.0)
