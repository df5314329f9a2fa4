"""The preview window: the output with fps, latency, stage times and hotkeys drawn over it."""

from __future__ import annotations

import collections
import logging
import os
import platform
import time
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from realtime.controls import Controls
from realtime.errors import DeviceUnavailable
from realtime.frames import Output
from realtime.sinks.common import as_bgr, one_line
from realtime.stages import SinkBase

logger = logging.getLogger(__name__)

HOTKEYS_LINE = "n: recalibrate  m: swap/reenact  q/Esc: quit"
AUDIO_HOTKEYS = "  a: mute  [/]: audio offset -/+10 ms"
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
    out: Output, fps: float, latency_ms: float, audio: object | None = None
) -> list[OverlayLine]:
    """The preview overlay's text for one output frame.

    ``audio`` (a running ``realtime.audio.AudioBridge``) adds its level meter, delay,
    offset and mute state, and its hotkeys.
    """
    lines: list[OverlayLine] = [f"{fps:5.1f} fps   latency {latency_ms:4.0f} ms"]
    if out.stage_ms:
        lines.append("  ".join(f"{k} {v:.1f}" for k, v in out.stage_ms.items()) + " ms")
    if not out.face_found:
        lines.append(("NO FACE", (0, 0, 255)))
    if audio is not None:
        muted = bool(getattr(audio, "muted", False)) or bool(getattr(audio, "failed", None))
        lines.append((audio.status_line(), (0, 165, 255) if muted else (255, 255, 255)))  # type: ignore[attr-defined]
    lines.append(HOTKEYS_LINE + (AUDIO_HOTKEYS if audio is not None else ""))
    return lines


class WindowSink(SinkBase):
    """A preview window (cv2.imshow) with fps, latency, stage timings and hotkeys."""

    def __init__(self, controls: Controls | None = None, title: str = "realtime") -> None:
        self.controls = controls
        self.title = title
        self.name = "window"
        self.frames = 0
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
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
            cv2.resizeWindow(self.title, int(width), int(height))
        except cv2.error as exc:
            raise DeviceUnavailable(
                f"Cannot open the preview window ({one_line(str(exc), 120)}); "
                "choose another output such as 'virtualcam' or 'file:out.mp4'."
            ) from exc
        self._size = (int(width), int(height))
        self._open = True

    def send(self, out: Output) -> None:
        if not self._open:
            raise RuntimeError("WindowSink.send() before open()")
        now = time.monotonic()
        self._times.append(now)
        # A repeated frame (nothing new arrived in time) keeps the latency of its first showing.
        if out.index != self._last_index:
            self._last_index, self._last_latency_ms = out.index, (now - out.t_capture) * 1000.0
        latency_ms = self._last_latency_ms
        width, height = self._size
        image = draw_overlay(
            as_bgr(out.image, width, height), overlay_lines(out, self.fps, latency_ms, self.audio)
        )
        cv2.imshow(self.title, image)
        self.frames += 1
        self.handle_key(cv2.waitKey(1))

    def handle_key(self, key: int) -> None:
        """Act on a ``cv2.waitKey`` result."""
        if key < 0 or self.controls is None:
            return
        key &= 0xFF
        if key == ord("n"):
            self.controls.request_recalibrate()
            logger.info("recalibrate requested")
        elif key == ord("m"):
            logger.info("mode: %s", self.controls.toggle_mode())
        elif key in (ord("q"), 27):
            self.controls.request_quit()
        elif self.audio is not None and key in (ord("a"), ord("["), ord("]")):
            audio: Any = self.audio
            if key == ord("a"):
                audio.muted = not audio.muted
                logger.info("audio %s", "muted" if audio.muted else "unmuted")
            else:
                audio.offset_ms += 10.0 if key == ord("]") else -10.0
                logger.info("audio offset %+.0f ms", audio.offset_ms)

    def close(self) -> None:
        if self._open:
            self._open = False
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
