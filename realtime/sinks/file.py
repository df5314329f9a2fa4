"""H.264 MP4 files through the bundled ffmpeg, with the driver's audio muxed."""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import threading
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from realtime.errors import UserError
from realtime.frames import Output
from realtime.sinks.common import as_bgr, one_line
from realtime.stages import SinkBase

logger = logging.getLogger(__name__)


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
        preset: str = "veryfast",
    ) -> None:
        self.path = Path(path)
        self.audio_from = audio_from
        self.trim_audio = trim_audio
        self.crf = int(crf)
        self.preset = preset  # a live recording takes "ultrafast": the stream needs the CPU
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
            self.preset,
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
