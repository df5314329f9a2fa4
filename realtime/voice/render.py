"""``realtime render --audio``: a talking portrait from a voice alone (or over a driver's head)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from realtime.frames import Frame
from realtime.stages import SourceBase
from realtime.voice import features
from realtime.voice.audio_file import read_audio

logger = logging.getLogger(__name__)

DEFAULT_FPS = 25.0


class StillFrames(SourceBase):
    """``count`` frames of one image, unpaced: the clock of a voice-only render."""

    live = False
    paced = False

    def __init__(self, image: np.ndarray, count: int, fps: float) -> None:
        self.image, self.frame_count, self.fps = image, count, fps
        self._index = 0

    def read(self) -> Frame | None:
        if self._index >= self.frame_count:
            return None
        frame = Frame(image=self.image, index=self._index, t_capture=self._index / self.fps)
        self._index += 1
        return frame


class FirstFrames(SourceBase):
    """The first ``count`` frames of a looping source."""

    def __init__(self, source: SourceBase, count: int) -> None:
        self.source, self.frame_count, self.fps = source, count, source.fps
        self.paced, self._index = False, 0

    def open(self) -> FirstFrames:
        self.source.open()
        return self

    def close(self) -> None:
        self.source.close()

    def read(self) -> Frame | None:
        if self._index >= self.frame_count:
            return None
        frame = self.source.read()
        if frame is None:
            return None
        self._index += 1
        return Frame(image=frame.image, index=self._index - 1, t_capture=frame.t_capture)


def frames_for(duration_s: float, fps: float) -> int:
    """Video frames covering the audio: the last one starts before the audio ends."""
    return max(1, math.ceil(duration_s * fps - 1e-6))


def voice_processor(
    avatar,
    audio_offsets: np.ndarray,
    fps: float,
    generator: str | None,
    providers,
    seed: int,
    driver: str | None,
):
    """The per-frame path with the voice's face in place of a camera's."""
    from realtime.controls import Controls
    from realtime.frames import Mode
    from realtime.generators.registry import build_generators
    from realtime.metrics import Metrics
    from realtime.pipeline import FrameProcessor
    from realtime.retarget import Retargeter
    from realtime.voice.driver import IdleMotion, VoiceFace, VoiceOverDriverTracker, VoiceTracker

    generators = build_generators(generator, avatar, providers)
    if driver:
        from realtime.tracking import FaceTracker

        tracker = VoiceOverDriverTracker(FaceTracker(), audio_offsets)
    else:
        rest = Retargeter.closed_mouth(avatar.landmarks.astype(np.float64))
        tracker = VoiceTracker(VoiceFace(rest, IdleMotion(seed)), audio_offsets, fps)
    processor = FrameProcessor(
        avatar, generators, tracker, Controls(mode=Mode.REENACT), Metrics(), avatar.size
    )
    if not driver:
        processor.retargeter.set_neutral(tracker.voice_face.neutral)
    return processor


def render_voice(
    avatar_path: str,
    audio_path: str,
    out: str,
    size: tuple[int, int] | None = None,
    fps: float = DEFAULT_FPS,
    driver: str | None = None,
    generator: str | None = None,
    providers: list[str] | None = None,
    model_path: str | None = None,
    seed: int = 0,
    progress: bool = True,
    mouth_source=None,
) -> dict:
    """Render ``avatar_path`` speaking ``audio_path`` into ``out`` (H.264 + the audio, AAC).

    ``mouth_source`` (an evaluation's baseline) replaces the model: ``samples -> (times, offsets)``."""
    from realtime.avatar import load_avatar
    from realtime.loop import render_offline
    from realtime.media import video_start_offset_s
    from realtime.sinks import FileSink
    from realtime.voice.model import VoiceMouthModel

    t0 = time.monotonic()
    # The sound that FileSink muxes starts where the file's video does (if it has one).
    samples = read_audio(audio_path, features.RATE, start_s=video_start_offset_s(audio_path))
    duration = len(samples) / features.RATE
    model = VoiceMouthModel(model_path, providers).open()
    times, offsets = (mouth_source or model.offsets)(samples)
    source: SourceBase
    if driver:
        from realtime.sources import VideoFileSource

        loop = VideoFileSource(driver, paced=False, loop=True)
        fps = loop.fps
    count = frames_for(duration, fps)
    frame_offsets = model.at(np.arange(count) / fps, times, offsets)
    avatar = load_avatar(avatar_path, size)
    processor = voice_processor(avatar, frame_offsets, fps, generator, providers, seed, driver)
    source = FirstFrames(loop, count) if driver else StillFrames(avatar.image, count, fps)
    # The frames cover the audio to within one frame; ffmpeg's -shortest would let the audio
    # overrun the last frame by a varying amount on a busy host.
    sink = FileSink(out, audio_from=audio_path, trim_audio=False)
    summary = render_offline(source, processor, [sink], fps=fps, progress=progress)
    summary.update(
        audio_s=round(duration, 3),
        frames=count,
        fps=fps,
        voice_model=str(Path(model.path).name),
        voice_provider=model.provider,
        wall_s=round(time.monotonic() - t0, 2),
    )
    return summary
