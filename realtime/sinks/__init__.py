"""Output sinks: virtual camera, preview window, H.264 file, null.

Every sink has the same small, pyvirtualcam-like interface (``realtime.stages.Sink``)::

    sink.open(width, height, fps)
    sink.send(out)      # out.image is BGR uint8 (H, W, 3)
    sink.close()        # finish; abort() stops without finishing

``make_sink(spec)`` builds one from a command-line string.
"""

from __future__ import annotations

from realtime.controls import Controls
from realtime.errors import UserError
from realtime.frames import Output
from realtime.sinks.common import as_bgr, one_line
from realtime.sinks.file import FileSink, fps_rational
from realtime.sinks.virtualcam import (
    LINUX_VIRTUALCAM_FIX,
    OTHER_VIRTUALCAM_FIX,
    VirtualCamSink,
    platform_virtualcam_backends,
    virtualcam_fix,
)
from realtime.sinks.window import WindowSink, display_available, draw_overlay, overlay_lines
from realtime.stages import Sink, SinkBase

__all__ = [
    "LINUX_VIRTUALCAM_FIX",
    "OTHER_VIRTUALCAM_FIX",
    "SINK_SPECS",
    "FileSink",
    "NullSink",
    "VirtualCamSink",
    "WindowSink",
    "as_bgr",
    "display_available",
    "draw_overlay",
    "fps_rational",
    "make_sink",
    "one_line",
    "overlay_lines",
    "platform_virtualcam_backends",
    "virtualcam_fix",
]

SINK_SPECS = ("virtualcam", "virtualcam:BACKEND", "window", "file:PATH", "null")


class NullSink(SinkBase):
    """Discards frames; counts them (benchmarks, tests)."""

    def __init__(self) -> None:
        self.name = "null"
        self.frames = 0

    def open(self, width: int, height: int, fps: float) -> None:
        self.frames = 0

    def send(self, out: Output) -> None:
        self.frames += 1

    def close(self) -> None:
        pass


def make_sink(spec: str, controls: Controls | None = None) -> Sink:
    """Build a sink from ``virtualcam``, ``virtualcam:BACKEND``, ``window``, ``file:PATH`` or ``null``."""
    text = (spec or "").strip()
    kind, sep, arg = text.partition(":")
    kind = kind.lower()
    if kind == "virtualcam":
        if sep and not arg:
            raise UserError(
                "Missing backend in 'virtualcam:'; use e.g. 'virtualcam:obs' or plain 'virtualcam'."
            )
        return VirtualCamSink(backend=arg or None)
    if kind == "window" and not sep:
        return WindowSink(controls)
    if kind == "file":
        if not arg:
            raise UserError("Missing path in 'file:'; use e.g. 'file:out.mp4'.")
        return FileSink(arg)
    if kind == "null" and not sep:
        return NullSink()
    raise UserError(f"Unknown output '{spec}'; valid forms: {', '.join(SINK_SPECS)}.")
