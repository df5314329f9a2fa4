"""Source stage: camera, video file, still image, or the built-in driving sequence.

Every source has ``read() -> Frame | None`` (None: the stream ended), ``fps`` and
``close()``. ``t_capture`` is stamped the moment a frame becomes available.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time

import cv2
import numpy as np

from realtime.errors import DeviceUnavailable, UserError
from realtime.frames import Frame
from realtime.stages import SourceBase

logger = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A live source failed to deliver; the engine retries with backoff."""


class CameraSource(SourceBase):
    """A webcam through OpenCV: requested size and fps, MJPG where the camera offers it."""

    live = True

    def __init__(self, index: int, width: int = 1280, height: int = 720, fps: float = 30.0) -> None:
        self.index, self.width, self.height, self.fps = index, width, height, fps
        self._cap: cv2.VideoCapture | None = None
        self._count = 0
        self._preview: np.ndarray | None = None  # the frame that proved the camera delivers

    def open(self) -> CameraSource:
        if self._cap is not None:
            return self
        if sys.platform.startswith("linux") and not os.path.exists(f"/dev/video{self.index}"):
            raise DeviceUnavailable(
                f"camera {self.index} does not exist (no /dev/video{self.index}); see `realtime devices`"
            )
        backend = cv2.CAP_DSHOW if sys.platform == "win32" else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.index, backend)
        if not cap.isOpened():
            cap.release()
            raise DeviceUnavailable(
                f"camera {self.index} did not open; see `realtime devices` for cameras that work"
            )
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_FPS, self.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver from queueing stale frames
        ok, self._preview = cap.read()
        if not ok:
            cap.release()
            raise DeviceUnavailable(f"camera {self.index} opened but delivers no frames")
        reported = cap.get(cv2.CAP_PROP_FPS)
        if reported and reported > 1:
            self.fps = float(reported)
        self._cap = cap
        return self

    def reopen(self) -> None:
        self.close()
        self.open()

    def preview(self) -> np.ndarray | None:
        return self._preview

    def read(self) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"camera {self.index} is closed")
        ok, image = self._cap.read()
        t = time.monotonic()
        if not ok or image is None:
            raise SourceError(f"camera {self.index} read failed")
        self._count += 1
        return Frame(image=image, index=self._count - 1, t_capture=t)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def probe_video(path: str) -> tuple[float, int, int, int]:
    """(fps, frame_count, width, height) of a readable video, or UserError."""
    if not os.path.exists(path):
        raise UserError(f"video not found: {path}")
    if os.path.isdir(path) or os.path.getsize(path) == 0:
        raise UserError(f"video is empty or a folder: {path}")
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise UserError(
                f"video could not be opened (no video stream, corrupt or unsupported format): {path}"
            )
        ok, first = cap.read()
        if not ok or first is None:
            raise UserError(f"video has no decodable frames: {path}")
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if not fps or not math.isfinite(fps) or fps <= 0 or fps > 1000:
            fps = 25.0
        return float(fps), count, first.shape[1], first.shape[0]
    finally:
        cap.release()


class VideoFileSource(SourceBase):
    """Frames of a video file, paced at its own fps (a stand-in for a camera) or unpaced."""

    live = False

    def __init__(self, path: str, paced: bool = True, loop: bool = False) -> None:
        self.path = path
        self.fps, self.frame_count, self.width, self.height = probe_video(path)
        self.paced, self.loop = paced, loop
        self._cap: cv2.VideoCapture | None = None
        self._first: np.ndarray | None = None  # decoded by open()
        self._index = 0
        self._start: float | None = None
        self.decode_errors = 0
        # Looping: the next pass is opened and its first frame decoded on a helper thread about
        # a second before the end, so the seam costs no frame time (opening and the first
        # decode of a 1080p file take 100-400 ms).
        self._pass_frames = 0
        self._next_pass: tuple[cv2.VideoCapture, np.ndarray | None] | None = None
        self._preparing: threading.Thread | None = None

    def _prepare_next_pass(self) -> None:
        def prepare() -> None:
            cap = cv2.VideoCapture(self.path)
            ok, image = cap.read()
            self._next_pass = (cap, image if ok else None)

        self._preparing = threading.Thread(target=prepare, name="loop-ahead", daemon=True)
        self._preparing.start()

    def _take_next_pass(self) -> tuple[bool, np.ndarray | None]:
        if self._preparing is None:
            self._prepare_next_pass()
        assert self._preparing is not None
        self._preparing.join()
        self._preparing = None
        assert self._next_pass is not None
        self._cap, image = self._next_pass
        self._next_pass = None
        self._pass_frames = 0
        return image is not None, image

    def open(self) -> VideoFileSource:
        if self._cap is None:
            self._cap = cv2.VideoCapture(self.path)
            # The decoder's start-up belongs to opening, as a camera's does: inside the first
            # frame's time it added 20-45 ms to that frame's latency.
            ok, image = self._cap.read()
            self._first = image if ok else None
        return self

    def preview(self) -> np.ndarray | None:
        return self._first  # frame 0, decoded by open() and still to be read

    def read(self) -> Frame | None:
        if self._cap is None:
            self.open()
        t_capture = time.monotonic()
        if self.paced:
            if self._start is None:
                self._start = t_capture
            # A camera delivers frame i at its due time whether or not we are ready for
            # it; stamping the due time makes a reader that falls behind show up as latency.
            # Like a camera's frame, it is decoded only once due: decoding ahead would
            # compete with the processing of the previous frame for the CPU.
            t_capture = self._start + self._index / self.fps
            delay = t_capture - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if self._first is not None:
            ok, image, self._first = True, self._first, None
        else:
            ok, image = self._cap.read()
        if not ok and self.loop and self._index > 0:
            self._cap.release()
            ok, image = self._take_next_pass()
        if not ok or image is None:
            return None
        self._pass_frames += 1
        if self.loop and self._preparing is None and self._pass_frames >= self.frame_count - self.fps:
            self._prepare_next_pass()
        frame = Frame(image=image, index=self._index, t_capture=t_capture)
        self._index += 1
        return frame

    def close(self) -> None:
        if self._preparing is not None:
            self._preparing.join()
            self._preparing = None
        if self._next_pass is not None:
            self._next_pass[0].release()
            self._next_pass = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._first = None


class ImageSource(SourceBase):
    """A still image repeated at ``fps``."""

    live = False

    def __init__(self, image: np.ndarray, fps: float = 30.0, frames: int | None = None) -> None:
        self.image, self.fps, self.frames = image, fps, frames
        self.frame_count = frames
        self._index = 0
        self._start: float | None = None

    def preview(self) -> np.ndarray | None:
        return self.image

    def read(self) -> Frame | None:
        if self.frames is not None and self._index >= self.frames:
            return None
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self._index / self.fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = Frame(image=self.image.copy(), index=self._index, t_capture=time.monotonic())
        self._index += 1
        return frame


class BuiltinDriverSource(SourceBase):
    """A built-in driving face so the whole loop runs without a webcam.

    A public-domain portrait (scikit-image's astronaut, mirrored and in greyscale so it
    reads as a different person) is animated with the analytic warp along a scripted
    performance: talking mouth, blinks, glances and head motion. Frames are rendered
    on first use and reused on later loops.
    """

    live = False

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 30.0,
        seconds: float = 6.0,
        paced: bool = True,
        loop: bool = True,
    ) -> None:
        from realtime.avatar import builtin_portrait
        from realtime.generators.warp import WarpGenerator
        from realtime.tracking import find_face

        self.fps, self.paced, self.loop = fps, paced, loop
        self.frame_count = max(1, int(round(seconds * fps)))
        face = cv2.cvtColor(cv2.cvtColor(builtin_portrait()[:, ::-1], cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        from realtime.media import fit_to_canvas

        self._canvas = fit_to_canvas(face, width, height)
        landmarks = find_face(self._canvas)
        if landmarks is None:  # pragma: no cover - the shipped portrait always has a face
            raise RuntimeError("built-in driver portrait has no detectable face")
        self._landmarks = landmarks
        self._warp = WarpGenerator(self._canvas, landmarks)
        self._cache: dict[int, np.ndarray] = {}
        self._index = 0
        self._start: float | None = None

    def performance(self, i: int) -> np.ndarray:
        """Scripted landmarks for frame ``i``."""
        from realtime import expression, mesh

        t = i / self.fps
        speech = max(0.0, math.sin(2 * math.pi * 1.3 * t)) * (
            0.5 + 0.5 * math.sin(2 * math.pi * 0.31 * t) ** 2
        )
        blink_phase = (t % 3.0) / 0.25
        blink = math.sin(math.pi * blink_phase) if blink_phase < 1.0 else 0.0
        pts = self._landmarks[:, :2].astype(np.float64)
        pts = expression.open_mouth(pts, 0.22 * speech)
        pts = expression.close_eyes(pts, blink)
        pts = expression.look(pts, 0.12 * math.sin(2 * math.pi * 0.2 * t))
        pts = expression.head_pose(
            pts,
            6.0 * math.sin(2 * math.pi * 0.17 * t),
            (0.12 * math.sin(2 * math.pi * 0.11 * t), 0.05 * math.sin(2 * math.pi * 0.23 * t)),
        )
        return mesh.with_mouth_centre(pts)

    def render(self, i: int) -> np.ndarray:
        from realtime.blend import Blender
        from realtime.frames import Target

        if i not in self._cache:
            dummy = Frame(self._canvas, i, 0.0)
            rendered = self._warp.render(
                Target(frame=dummy, landmarks=self.performance(i).astype(np.float32))
            )
            self._cache[i] = Blender().process(rendered)
        return self._cache[i]

    def preview(self) -> np.ndarray | None:
        return self.render(self._index % self.frame_count)  # cached: the read costs nothing more

    def read(self) -> Frame | None:
        if self._index >= self.frame_count and not self.loop:
            return None
        if self._start is None:
            self._start = time.monotonic()
        image = self.render(self._index % self.frame_count)
        if self.paced:
            delay = self._start + self._index / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        frame = Frame(image=image.copy(), index=self._index, t_capture=time.monotonic())
        self._index += 1
        return frame

    def close(self) -> None:
        self._cache.clear()
