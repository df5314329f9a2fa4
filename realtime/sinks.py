"""Output sinks: virtual camera, preview window, H.264 file, null.

Every sink has the same small, pyvirtualcam-like interface (``realtime.stages.Sink``)::

    sink.open(width, height, fps)
    sink.send(out)      # out.image is BGR uint8 (H, W, 3)
    sink.close()        # finish; abort() stops without finishing

``make_sink(spec)`` builds one from a command-line string.
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import subprocess
import threading
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from realtime.controls import Controls
from realtime.errors import DeviceUnavailable, UserError
from realtime.frames import Output
from realtime.stages import Sink, SinkBase

logger = logging.getLogger(__name__)

SINK_SPECS = ("virtualcam", "virtualcam:BACKEND", "window", "file:PATH", "null")

LINUX_VIRTUALCAM_FIX = (
    "sudo apt install v4l2loopback-dkms && "
    'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 video_nr=10 card_label="realtime"'
)
OTHER_VIRTUALCAM_FIX = "install OBS Studio (>= 26) and start its Virtual Camera once"


# --------------------------------------------------------------------------- helpers


def virtualcam_fix(system: str | None = None) -> str:
    """The command or step that makes a virtual camera available on ``system``."""
    system = system or platform.system()
    if system == "Linux":
        return LINUX_VIRTUALCAM_FIX
    return OTHER_VIRTUALCAM_FIX


def platform_virtualcam_backends(system: str | None = None) -> list[str]:
    """pyvirtualcam's built-in backends for ``system``, in the order they are tried."""
    system = system or platform.system()
    if system == "Linux":
        return ["v4l2loopback"]
    if system == "Windows":
        return ["obs", "unitycapture"]
    if system == "Darwin":
        return ["obs"]
    return []


def one_line(text: str, limit: int = 200) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


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


# --------------------------------------------------------------------------- virtual camera


class VirtualCamSink(SinkBase):
    """Sends frames to a virtual camera through ``pyvirtualcam`` (BGR in, correct colours out)."""

    def __init__(self, backend: str | None = None, device: str | None = None) -> None:
        self.backend = backend
        self.device = device
        self.name = f"virtualcam:{backend}" if backend else "virtualcam"
        self.frames = 0
        self._cam: object | None = None
        self._size = (0, 0)

    @property
    def device_name(self) -> str | None:
        """The virtual camera device in use (e.g. ``/dev/video10``), ``None`` before ``open``."""
        if self._cam is None:
            return None
        return str(self._cam.device)  # type: ignore[attr-defined]

    def open(self, width: int, height: int, fps: float) -> None:
        import pyvirtualcam
        from pyvirtualcam.camera import BACKENDS

        if self.backend:
            if self.backend not in BACKENDS:
                known = ", ".join(sorted(BACKENDS)) or "none"
                raise UserError(
                    f"Unknown virtual camera backend '{self.backend}' (available here: {known}); "
                    f"use 'virtualcam' or 'virtualcam:<one of those>'."
                )
            names = [self.backend]
        else:
            # Only the platform's built-in backends: test backends registered in the same
            # process must never be picked up by a plain 'virtualcam'.
            names = [n for n in platform_virtualcam_backends() if n in BACKENDS]
        errors: list[str] = []
        for name in names:
            try:
                cam = pyvirtualcam.Camera(
                    int(width),
                    int(height),
                    float(fps),
                    fmt=pyvirtualcam.PixelFormat.BGR,
                    backend=name,
                    device=self.device,
                )
            except Exception as exc:  # backends raise RuntimeError, ValueError, OSError...
                errors.append(one_line(str(exc).replace(" See also pyvirtualcam's documentation.", ""), 160))
                continue
            self._cam = cam
            self._size = (int(width), int(height))
            logger.info(
                "virtual camera open: %s via %s, %dx%d @ %.2f fps", cam.device, name, width, height, fps
            )
            return
        detail = "; ".join(errors) if errors else f"no virtual camera backend on {platform.system()}"
        raise DeviceUnavailable(
            f"No virtual camera available ({one_line(detail, 200)}). Fix: {virtualcam_fix()}, then run again."
        )

    def send(self, out: Output) -> None:
        if self._cam is None:
            raise RuntimeError("VirtualCamSink.send() before open()")
        width, height = self._size
        self._cam.send(as_bgr(out.image, width, height))  # type: ignore[attr-defined]
        self.frames += 1

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.close()  # type: ignore[attr-defined]
            except Exception as exc:
                logger.warning("virtual camera close failed: %s", exc)
            logger.info("virtual camera closed after %d frames", self.frames)


# --------------------------------------------------------------------------- preview window

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


# --------------------------------------------------------------------------- file


def fps_rational(fps: float) -> str:
    """``fps`` as an exact ``num/den`` string ffmpeg accepts (29.97 -> 2997/100)."""
    if not fps or fps <= 0 or not np.isfinite(fps):
        raise UserError(f"Invalid frame rate {fps!r} for the output file; give a positive fps.")
    frac = Fraction(float(fps)).limit_denominator(1001)
    if abs(float(frac) - fps) > 1e-6 * fps:
        frac = Fraction(float(fps)).limit_denominator(1_000_000)
    return f"{frac.numerator}/{frac.denominator}"


class FileSink(SinkBase):
    """H.264 MP4 through the bundled ffmpeg; written to a temp name, renamed on success.

    ``audio_from`` muxes that file's audio track (if it has one) in the same ffmpeg run.
    With ``trim_audio`` (default) the audio is padded/cut to the video's length; without
    it the audio is kept whole, so the file can run on past the last video frame.
    The video always holds exactly the frames sent.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        audio_from: str | None = None,
        crf: int = 20,
        trim_audio: bool = True,
    ) -> None:
        self.path = Path(path)
        self.audio_from = audio_from
        self.trim_audio = trim_audio
        self.crf = int(crf)
        self.name = f"file:{self.path}"
        self.frames = 0
        self.tmp_path = self.path.with_name(f".{self.path.name}.part{self.path.suffix or '.mp4'}")
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._stderr_thread: threading.Thread | None = None
        self._size = (0, 0)  # size of frames given to send()
        self._pad = (0, 0)  # 1 px right/bottom padding for yuv420p

    def command(self, width: int, height: int, fps: float) -> list[str]:
        """The ffmpeg argument list (no shell)."""
        import imageio_ffmpeg

        from realtime.media import video_start_offset_s

        enc_w, enc_h = width + self._pad[0], height + self._pad[1]
        cmd = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "bgr24",
            "-s",
            f"{enc_w}x{enc_h}",
            "-framerate",
            fps_rational(fps),
            "-i",
            "pipe:0",
        ]
        if self.audio_from:
            # Absolute paths: a name starting with '-' must not read as an ffmpeg option.
            cmd += [
                "-i",
                os.path.abspath(self.audio_from),
                "-map",
                "0:v",
                "-map",
                "1:a?",
                "-c:a",
                "aac",
                "-b:a",
                "160k",
            ]
            filters = []
            # The frames sent start at the source's first video frame: audio from before
            # it is dropped, so a source whose video starts after its audio stays in sync.
            shift = video_start_offset_s(self.audio_from)
            if shift > 0:
                filters += [f"atrim=start={shift:.6f}", f"asetpts=PTS-{shift:.6f}/TB"]
            if self.trim_audio:
                # Pad the audio with silence forever, so -shortest ends the file at the last
                # frame sent: no video frame is cut, and a short run of a long source does not
                # wait for all its audio to be encoded. On very short clips the audio may run
                # slightly past the last frame. A source without audio ignores -af.
                filters.append("apad")
            if filters:
                cmd += ["-af", ",".join(filters)]
            if self.trim_audio:
                cmd += ["-shortest"]
        cmd += [
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            str(self.crf),
            "-pix_fmt",
            "yuv420p",
            "-fps_mode",
            "passthrough",  # never duplicate or drop frames: exactly the frames sent
        ]
        if self.tmp_path.suffix.lower() in (".mp4", ".mov", ".m4v"):
            cmd += ["-movflags", "+faststart"]
        if self.path.suffix.lower() not in (".mp4", ".mov", ".m4v", ".mkv"):
            cmd += ["-f", "mp4"]
        cmd.append(os.path.abspath(self.tmp_path))
        return cmd

    def open(self, width: int, height: int, fps: float) -> None:
        if self._proc is not None:
            raise RuntimeError("FileSink already open")
        folder = self.path.parent
        if not folder.is_dir():
            raise UserError(f"Output folder {folder} does not exist; create it or choose another path.")
        if self.path.is_dir():
            raise UserError(
                f"Output {self.path} is a folder; give a file name such as {self.path / 'out.mp4'}."
            )
        if self.audio_from and not Path(self.audio_from).is_file():
            raise UserError(
                f"Audio source {self.audio_from} not found; give an existing video or audio file."
            )
        self._size = (int(width), int(height))
        self._pad = (int(width) % 2, int(height) % 2)
        cmd = self.command(int(width), int(height), fps)
        logger.debug("ffmpeg: %s", cmd)
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
        except OSError as exc:
            raise UserError(
                f"Cannot start ffmpeg ({one_line(str(exc), 120)}); reinstall it with 'pip install --force-reinstall imageio-ffmpeg'."
            ) from exc
        self._stderr.clear()
        self._stderr_thread = threading.Thread(target=self._drain, name="ffmpeg-stderr", daemon=True)
        self._stderr_thread.start()
        self.frames = 0
        logger.info("writing %s (%dx%d @ %s fps)", self.path, width, height, fps_rational(fps))

    def _drain(self) -> None:
        proc = self._proc
        if proc is None or proc.stderr is None:
            return
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            if line:
                self._stderr.append(line)
                logger.debug("ffmpeg: %s", line)

    def _last_error(self) -> str:
        return one_line(self._stderr[-1], 200) if self._stderr else "no error output"

    def send(self, out: Output) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RuntimeError("FileSink.send() before open()")
        width, height = self._size
        image = as_bgr(out.image, width, height)
        if self._pad != (0, 0):
            image = cv2.copyMakeBorder(image, 0, self._pad[1], 0, self._pad[0], cv2.BORDER_REPLICATE)
        try:
            proc.stdin.write(image.data)
        except (BrokenPipeError, ValueError, OSError):
            self._fail()
        self.frames += 1

    def _finish(self, timeout: float) -> int:
        proc = self._proc
        assert proc is not None
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=5)
        self._proc = None
        return rc

    def _remove_tmp(self) -> None:
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass

    def _fail(self) -> None:
        rc = self._finish(timeout=10)
        self._remove_tmp()
        raise UserError(f"Writing {self.path} failed (ffmpeg exit {rc}): {self._last_error()}")

    def abort(self) -> None:
        """Stop because of an error elsewhere: kill ffmpeg, leave no partial file, say nothing."""
        if self._proc is None:
            return
        self._proc.kill()
        self._finish(timeout=10)
        self._remove_tmp()

    def close(self) -> None:
        if self._proc is None:
            return
        if self.frames == 0:
            proc = self._proc
            proc.kill()
            self._finish(timeout=10)
            self._remove_tmp()
            logger.warning("no frames were produced; %s was not written", self.path)
            return
        rc = self._finish(timeout=120)
        if rc != 0:
            self._remove_tmp()
            raise UserError(f"Writing {self.path} failed (ffmpeg exit {rc}): {self._last_error()}")
        try:
            os.replace(self.tmp_path, self.path)
        except OSError as exc:
            self._remove_tmp()
            raise UserError(f"Could not write {self.path}: {exc.strerror or exc}") from exc
        logger.info("wrote %s (%d frames)", self.path, self.frames)


# --------------------------------------------------------------------------- null


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


# --------------------------------------------------------------------------- factory


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
