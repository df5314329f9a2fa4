"""Recording and snapshots on a key: exactly the frames the virtual camera receives, as H.264.

The recorder is one more sink, so it gets the same frames as the others, in the same order
(never the window's picture-in-picture or overlay). Encoding runs on a thread of its own
behind a bounded queue: a slow encoder loses recorded frames (counted), never live ones.
With the audio bridge, the virtual microphone's sound is recorded alongside (``AudioTap``)
and muxed in when the recording stops.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from realtime.controls import Controls
from realtime.errors import UserError
from realtime.frames import Output
from realtime.sinks.common import as_bgr, one_line
from realtime.sinks.file import FileSink
from realtime.stages import SinkBase

logger = logging.getLogger(__name__)

QUEUE_SECONDS = 2.0  # frames waiting for the encoder before new ones are dropped from the file
SAVED_NOTICE_S = 3.0


def stamp() -> str:
    """A file name stem that sorts by time: realtime-20260101-120000-123."""
    now = time.time()
    return time.strftime("realtime-%Y%m%d-%H%M%S", time.localtime(now)) + f"-{int(now * 1000) % 1000:03d}"


class _Recording:
    """One recording: a FileSink fed from a queue by its own thread."""

    def __init__(
        self, path: Path, size: tuple[int, int], fps: float, controls: Controls, audio_out: str | None = None
    ) -> None:
        self.path = path
        self.controls = controls
        self.sink = FileSink(path, preset="ultrafast")
        self.sink.open(size[0], size[1], fps)  # raises UserError (no ffmpeg, bad folder) at once
        self.first_frame_t: float | None = None
        self.tap = _start_tap(audio_out, controls) if audio_out else None
        self.fps = fps
        self.queued = 0
        self.dropped = 0
        self.started = time.monotonic()
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=max(2, int(QUEUE_SECONDS * fps)))
        self._thread = threading.Thread(target=self._write, name="recorder", daemon=True)
        self._thread.start()

    def add(self, image: np.ndarray) -> None:
        if self.first_frame_t is None:
            self.first_frame_t = time.monotonic()
        try:
            self._queue.put_nowait(image)
            self.queued += 1
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        """Finish in the background: the live loop does not wait for the encoder."""
        self._queue.put(None)

    def _write(self) -> None:
        failed: str | None = None
        while (image := self._queue.get()) is not None:
            if failed:
                continue
            try:
                self.sink.send(Output(image=image, index=0, t_capture=0.0))
            except Exception as exc:
                failed = one_line(str(exc), 120)
                self.sink.abort()
        audio = self.tap.stop() if self.tap is not None else None
        if failed is None:
            try:
                self.sink.close()
                if audio is not None and self.sink.frames:
                    mux_audio(self.path, audio[0], audio[1] - (self.first_frame_t or audio[1]))
            except UserError as exc:
                failed = one_line(str(exc), 120)
        if failed:
            logger.error("recording %s failed: %s", self.path, failed)
            self.controls.notify(f"recording: failed ({failed})", SAVED_NOTICE_S)
            return
        note = f" ({self.dropped} frames dropped: the encoder fell behind)" if self.dropped else ""
        logger.info("recorded %d frames to %s%s", self.sink.frames, self.path, note)
        self.controls.notify(f"recording: saved {self.path.name}{note}", SAVED_NOTICE_S)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _start_tap(audio_out: str, controls: Controls):
    """The virtual microphone's recorder, or None (said on the overlay): the video is recorded anyway."""
    from realtime.audio.tap import AudioTap

    try:
        return AudioTap(audio_out).start()
    except Exception as exc:  # no PortAudio, no monitor: a silent recording beats none
        logger.error("recording without audio: %s", exc)
        controls.notify(f"recording: without audio ({one_line(str(exc), 80)})", SAVED_NOTICE_S)
        return None


def mux_audio(video: Path, samples: np.ndarray, offset_s: float) -> None:
    """Lay ``samples`` under ``video`` (in place), starting ``offset_s`` after its first frame
    (negative: before it, cut), padded or cut to the video's length."""
    import subprocess

    import imageio_ffmpeg

    from realtime.audio.tap import RATE, write_wav

    wav = video.with_name(f".{video.stem}.wav")
    muxed = video.with_name(f".{video.stem}.av{video.suffix}")
    write_wav(wav, samples, RATE)
    if offset_s >= 0:
        shift = f"adelay={offset_s * 1000:.1f}:all=1"
    else:
        shift = f"atrim=start={-offset_s:.4f},asetpts=PTS-STARTPTS"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    cmd += ["-i", str(video), "-i", str(wav), "-filter_complex", f"[1:a]{shift},apad[a]"]
    cmd += ["-map", "0:v", "-map", "[a]", "-c:v", "copy", "-c:a", "aac", "-b:a", "160k", "-shortest"]
    cmd += ["-movflags", "+faststart", str(muxed)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise UserError(f"adding the audio failed: {one_line(proc.stderr or 'ffmpeg error', 120)}")
        os.replace(muxed, video)
    finally:
        for leftover in (wav, muxed):
            leftover.unlink(missing_ok=True)
    logger.info("audio added to %s (%.2f s, starting %+.0f ms)", video, len(samples) / RATE, offset_s * 1000)


class RecorderSink(SinkBase):
    """Starts and stops an H.264 recording and saves PNG snapshots when the controls ask."""

    def __init__(
        self, controls: Controls, folder: str | os.PathLike[str] = ".", audio_out: str | None = None
    ) -> None:
        self.controls = controls
        # The virtual microphone (--audio-out) whose sound goes into recordings with the video.
        self.audio_out = audio_out
        self.folder = Path(folder)
        self.name = "recorder"
        self.frames = 0
        self._size = (0, 0)
        self._fps = 30.0
        self._recording: _Recording | None = None
        self._finished: list[_Recording] = []

    def open(self, width: int, height: int, fps: float) -> None:
        if not self.folder.is_dir():
            raise UserError(f"recording folder {self.folder} does not exist; create it or give another")
        self._size = (int(width), int(height))
        self._fps = float(fps)

    @property
    def recording(self) -> bool:
        return self._recording is not None

    def send(self, out: Output) -> None:
        self.frames += 1
        image: np.ndarray | None = None
        if self.controls.take_record():
            if self._recording is None:
                self._start()
            else:
                self._stop()
        if self.controls.take_snapshot():
            image = as_bgr(out.image, *self._size)
            self._snapshot(image)
        if self._recording is not None:
            self._recording.add(image if image is not None else as_bgr(out.image, *self._size))
            seconds = self._recording.queued / self._fps
            self.controls.set_status("recording", f"REC {int(seconds) // 60:02d}:{int(seconds) % 60:02d}")

    def _start(self) -> None:
        path = self.folder / f"{stamp()}.mp4"
        try:
            self._recording = _Recording(path, self._size, self._fps, self.controls, self.audio_out)
        except UserError as exc:
            logger.error("recording not started: %s", exc)
            self.controls.notify(f"recording: not started ({one_line(str(exc), 100)})", SAVED_NOTICE_S)
            return
        logger.info("recording started: %s", path)
        self.controls.notify(f"recording: started {path.name}")

    def _stop(self) -> None:
        recording, self._recording = self._recording, None
        if recording is None:
            return
        recording.stop()
        self._finished.append(recording)
        self.controls.set_status("recording", None)
        logger.info("recording stopped after %d frames: %s", recording.queued, recording.path)

    def _snapshot(self, image: np.ndarray) -> None:
        path = self.folder / f"{stamp()}.png"
        if cv2.imwrite(str(path), image):
            logger.info("snapshot saved: %s", path)
            self.controls.notify(f"snapshot: saved {path.name}", SAVED_NOTICE_S)
        else:
            logger.error("snapshot could not be written to %s", path)
            self.controls.notify(f"snapshot: could not write {path}", SAVED_NOTICE_S)

    def close(self) -> None:
        """Stop a running recording and wait for the files to be finished."""
        self._stop()
        for recording in self._finished:
            recording.join(timeout=120)
        self._finished.clear()

    def abort(self) -> None:
        self.close()
