"""The preview window: the output with fps, latency, stage times and hotkeys drawn over it."""

from __future__ import annotations

import collections
import logging
import os
import platform
import time
from collections.abc import Sequence

import cv2
import numpy as np

from realtime.controls import Controls
from realtime.errors import DeviceUnavailable
from realtime.frames import FaceTrack, Output
from realtime.keys import AUDIO_HELP, HELP, act
from realtime.sinks.common import as_bgr, one_line
from realtime.stages import SinkBase

logger = logging.getLogger(__name__)

HOTKEYS_LINE = "h: help  n: neutral  m: swap/reenact  q/Esc: quit"
AUDIO_HOTKEYS = "  a: mute  [/]: audio offset -/+10 ms"
NOTICE_COLOUR = (0, 255, 255)  # yellow (BGR): a change just made
RECORDING_COLOUR = (60, 60, 255)

OverlayLine = str | tuple[str, tuple[int, int, int]]


def display_available() -> bool:
    """True where a window can be shown (Linux needs DISPLAY or WAYLAND_DISPLAY)."""
    if platform.system() == "Linux":
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def draw_overlay(image: np.ndarray, lines: Sequence[OverlayLine]) -> np.ndarray:
    """Return a copy of ``image`` with ``lines`` of text drawn top-left on a dark band.

    A line is a string (drawn white) or ``(text, (b, g, r))``.
    """
    canvas = np.ascontiguousarray(image).copy()
    if not lines:
        return canvas
    height = canvas.shape[0]
    scale = max(0.4, min(1.0, height / 900.0))
    thickness = 1
    line_h = int(round(24 * scale)) + 4
    font = cv2.FONT_HERSHEY_SIMPLEX
    items = [(ln, (255, 255, 255)) if isinstance(ln, str) else ln for ln in lines]
    width = max(cv2.getTextSize(text, font, scale, thickness)[0][0] for text, _ in items)
    box_w = min(canvas.shape[1], width + 12)
    box_h = min(height, line_h * len(items) + 8)
    band = canvas[:box_h, :box_w]
    band[:] = (band.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken for contrast
    for i, (text, colour) in enumerate(items):
        y = 4 + line_h * (i + 1) - 6
        cv2.putText(canvas, text, (6, y), font, scale, colour, thickness, cv2.LINE_AA)
    return canvas


def overlay_lines(
    out: Output,
    fps: float,
    latency_ms: float,
    audio: object | None = None,
    controls: Controls | None = None,
) -> list[OverlayLine]:
    """The preview overlay's text for one output frame.

    ``audio`` (a running ``realtime.audio.AudioBridge``) adds its level meter, delay,
    offset and mute state, and its hotkeys; ``controls`` adds the avatar, a running
    recording and the changes of the last second.
    """
    lines: list[OverlayLine] = [f"{fps:5.1f} fps   latency {latency_ms:4.0f} ms"]
    if out.stage_ms:
        lines.append("  ".join(f"{k} {v:.1f}" for k, v in out.stage_ms.items()) + " ms")
    if not out.face_found:
        lines.append(("NO FACE", (0, 0, 255)))
    if audio is not None:
        muted = bool(getattr(audio, "muted", False)) or bool(getattr(audio, "failed", None))
        lines.append((audio.status_line(), (0, 165, 255) if muted else (255, 255, 255)))  # type: ignore[attr-defined]
    if controls is not None:
        for line in controls.status_lines():
            lines.append((line, RECORDING_COLOUR) if line.startswith("REC") else line)
        lines.extend((line, NOTICE_COLOUR) for line in controls.notices())
    lines.append(HOTKEYS_LINE + (AUDIO_HOTKEYS if audio is not None else ""))
    return lines


def draw_pip(image: np.ndarray, track: FaceTrack | None, share: float = 0.28) -> np.ndarray:
    """Draw the camera frame with its tracked landmarks into the bottom-right corner of ``image``
    (in place); a red frame and "no face" where the tracker has none."""
    if track is None:
        return image
    camera = track.frame.image
    height, width = image.shape[:2]
    pip_w = max(64, int(width * share))
    scale = pip_w / camera.shape[1]
    pip_h = max(2, int(round(camera.shape[0] * scale)))
    if pip_h > height // 2:  # a tall camera: fit by height instead
        pip_h = height // 2
        scale = pip_h / camera.shape[0]
        pip_w = max(2, int(round(camera.shape[1] * scale)))
    small = cv2.resize(camera, (pip_w, pip_h), interpolation=cv2.INTER_AREA)
    if small.ndim == 2:
        small = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    if track.landmarks is not None:
        points = (track.landmarks[:, :2] * scale).astype(np.int32)
        inside = (points[:, 0] >= 0) & (points[:, 0] < pip_w) & (points[:, 1] >= 0) & (points[:, 1] < pip_h)
        small[points[inside, 1], points[inside, 0]] = (0, 255, 0)
    else:
        cv2.putText(
            small, "no face", (6, pip_h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 255), 1, cv2.LINE_AA
        )
    margin = 10
    x0, y0 = width - pip_w - margin, height - pip_h - margin
    if x0 < 2 or y0 < 2:
        return image
    border = (255, 255, 255) if track.landmarks is not None else (0, 0, 255)
    cv2.rectangle(image, (x0 - 2, y0 - 2), (x0 + pip_w + 1, y0 + pip_h + 1), border, 2)
    image[y0 : y0 + pip_h, x0 : x0 + pip_w] = small
    return image


def draw_help(image: np.ndarray, audio: bool = False) -> np.ndarray:
    """The key list on a dark panel in the middle of ``image`` (in place)."""
    items = HELP + (AUDIO_HELP if audio else [])
    height, width = image.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    # At scale 1: the widest key and description, and the panel's fixed padding.
    key_w1 = max(cv2.getTextSize(k, font, 1.0, 1)[0][0] for k, _ in items)
    text_w1 = max(cv2.getTextSize(t, font, 1.0, 1)[0][0] for _, t in items)
    scale = max(0.3, min(0.7, height / 1000.0, (width - 60) / (key_w1 + text_w1)))
    line_h = int(round(30 * scale)) + 4  # compact: the panel leaves the picture-in-picture corner free
    key_w = int(key_w1 * scale) + 16
    text_w = int(text_w1 * scale)
    box_w = min(width - 8, key_w + text_w + 24)
    box_h = min(height - 8, line_h * (len(items) + 1) + 16)
    x0, y0 = (width - box_w) // 2, (height - box_h) // 2
    panel = image[y0 : y0 + box_h, x0 : x0 + box_w]
    panel[:] = (panel.astype(np.uint16) // 5).astype(np.uint8)
    cv2.putText(image, "keys", (x0 + 12, y0 + line_h), font, scale, NOTICE_COLOUR, 1, cv2.LINE_AA)
    for i, (keys, what) in enumerate(items):
        y = y0 + line_h * (i + 2)
        cv2.putText(image, keys, (x0 + 12, y), font, scale, NOTICE_COLOUR, 1, cv2.LINE_AA)
        cv2.putText(image, what, (x0 + 12 + key_w, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


class WindowSink(SinkBase):
    """A preview window (cv2.imshow) with fps, latency, stage timings and hotkeys.

    What only the window shows (the picture-in-picture, the help, the overlay) is drawn on
    its own copy of each frame: the other sinks never see it.
    """

    def __init__(self, controls: Controls | None = None, title: str = "realtime", pip: bool = True) -> None:
        self.controls = controls
        self.title = title
        self.name = "window"
        self.frames = 0
        self.pip = pip
        self.help = False
        self._times: collections.deque[float] = collections.deque(maxlen=30)
        self._open = False
        self._size = (0, 0)
        self._last_index: int | None = None
        self._last_latency_ms = 0.0
        self.audio: object | None = None  # an AudioBridge: overlay meter and a/[/] hotkeys

    @property
    def fps(self) -> float:
        """Output frame rate measured over the last ~30 frames."""
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def open(self, width: int, height: int, fps: float) -> None:
        if not display_available():
            raise DeviceUnavailable(
                "No display for the preview window (DISPLAY/WAYLAND_DISPLAY unset); "
                "run in a desktop session or choose another output such as 'virtualcam' or 'file:out.mp4'."
            )
        try:
            # GUI_NORMAL: no Qt toolbar, the whole window is the picture.
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | cv2.WINDOW_GUI_NORMAL)
            cv2.resizeWindow(self.title, int(width), int(height))
        except cv2.error as exc:
            raise DeviceUnavailable(
                f"Cannot open the preview window ({one_line(str(exc), 120)}); "
                "choose another output such as 'virtualcam' or 'file:out.mp4'."
            ) from exc
        self._size = (int(width), int(height))
        self._open = True

    def compose(self, out: Output, latency_ms: float) -> np.ndarray:
        """The window's picture: the output, then the picture-in-picture, help and overlay on a copy."""
        width, height = self._size
        image = as_bgr(out.image, width, height).copy()
        if self.pip:
            draw_pip(image, out.track)
        if self.help:
            draw_help(image, self.audio is not None)
        return draw_overlay(image, overlay_lines(out, self.fps, latency_ms, self.audio, self.controls))

    def send(self, out: Output) -> None:
        if not self._open:
            raise RuntimeError("WindowSink.send() before open()")
        now = time.monotonic()
        self._times.append(now)
        # A repeated frame (nothing new arrived in time) keeps the latency of its first showing.
        if out.index != self._last_index:
            self._last_index, self._last_latency_ms = out.index, (now - out.t_capture) * 1000.0
        cv2.imshow(self.title, self.compose(out, self._last_latency_ms))
        self.frames += 1
        self.handle_key(cv2.waitKeyEx(1))

    def _notify(self, text: str, kind: str | None = None) -> None:
        logger.info("%s (window frame %d)", text, self.frames)
        if self.controls is not None:
            self.controls.notify(text, kind=kind)

    def handle_key(self, key: int) -> None:
        """Act on a ``cv2.waitKeyEx`` (or ``cv2.waitKey``) result."""
        if key < 0 or self.controls is None:
            return
        if key in (ord("h"), ord("?")):
            self.help = not self.help
            logger.info("help %s (window frame %d)", "requested" if self.help else "hidden", self.frames)
            return
        if key == ord("p"):
            self.pip = not self.pip
            self._notify(f"picture-in-picture: {'on' if self.pip else 'off'}")
            return
        result = act(key, self.controls, self.audio)
        if result is None:
            return
        if result.notice:
            self._notify(result.text, result.kind)
        else:
            logger.info("%s (window frame %d)", result.text, self.frames)

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
