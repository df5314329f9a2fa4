"""Lips from a live microphone: ``realtime run --lips voice --camera none --audio-in DEVICE``.

``MicrophoneMouth`` queues PortAudio's input blocks and runs ``VoiceStream`` on a thread of its
own (about 2 ms of CPU per 20 ms block, benchmarks/RESULTS.md), on everything that arrived since
its last pass: the model runs once per pass on its window, so a starved thread catches up in one
step instead of falling ever further behind the voice. It keeps the newest mouth; ``LiveVoiceTracker`` hands
the per-frame path the avatar's own face with that mouth, idle head motion and blinks, in
place of a camera's face. An audio failure leaves the mouth closed; the video keeps running.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from realtime.frames import FaceTrack, Frame
from realtime.stages import Stage
from realtime.voice import mouth
from realtime.voice.driver import IdleMotion, VoiceFace

logger = logging.getLogger(__name__)

RATE = 48000
BLOCKSIZE = 960  # 20 ms: smaller blocks sometimes stall on PulseAudio (ENVIRONMENT.md)


class MicrophoneMouth(Stage):
    """The voice model on a microphone; ``latest()`` is the newest mouth offsets (K, 2)."""

    def __init__(
        self,
        device: str | int | None,
        model_path: str | None = None,
        input_channels: int = 1,
        input_channel: int = 0,
    ) -> None:
        self.device = device
        self.model_path = model_path
        # One channel of a multi-channel device (a measurement's stereo null sink: voice on the left).
        self.input_channels, self.input_channel = input_channels, input_channel
        self.name = str(device)
        self.blocks = 0
        self.errors = 0
        self._stream: Any = None
        self._voice: Any = None
        self._lock = threading.Lock()
        self._latest = np.zeros((len(mouth.MOUTH_POINTS), 2), np.float32)
        self._t_latest: float | None = None
        self._pending: list[np.ndarray] = []  # blocks the callback queued for the voice thread
        self._arrived = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._closing = False
        self.passes = 0  # the voice thread's passes (fewer than blocks when it had to catch up)

    def open(self) -> MicrophoneMouth:
        if self._stream is not None:
            return self
        from realtime.audio.devices import (
            AudioUnavailable,
            first_line,
            import_sounddevice,
            pulse_env,
            resolve_device,
        )
        from realtime.voice.model import VoiceMouthModel
        from realtime.voice.stream import VoiceStream

        self._voice = VoiceStream(VoiceMouthModel(self.model_path), RATE)
        sd = import_sounddevice()
        index, pulse_name, self.name = resolve_device(sd, self.device, "input")
        try:
            with pulse_env("PULSE_SOURCE", pulse_name):
                stream = sd.InputStream(
                    device=index,
                    channels=self.input_channels,
                    samplerate=RATE,
                    blocksize=BLOCKSIZE,
                    dtype="float32",
                    callback=self._callback,
                )
            stream.start()
        except Exception as exc:  # PortAudioError, ValueError (rate, channels)
            raise AudioUnavailable(
                f"Cannot open the microphone {self.name!r} at {RATE} Hz: {first_line(exc)}"
            ) from exc
        self._stream = stream
        self._closing = False
        self._worker = threading.Thread(target=self._run, name="voice", daemon=True)
        self._worker.start()
        logger.info("voice: mouth from %s", self.name)
        return self

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        with self._arrived:
            self._pending.append(indata[:, self.input_channel].copy())
            self.blocks += 1
            self._arrived.notify()

    def _run(self) -> None:
        while True:
            with self._arrived:
                while not self._pending and not self._closing:
                    self._arrived.wait(timeout=0.5)
                if self._closing:
                    return
                blocks, self._pending = self._pending, []
            try:
                result = self._voice.push(np.concatenate(blocks))
            except Exception as exc:  # one bad block must not stop the voice
                self.errors += 1
                if self.errors == 1:
                    logger.error("voice: %s: %s (further errors are counted)", type(exc).__name__, exc)
                continue
            self.passes += 1
            if result is not None:
                with self._lock:
                    self._latest, self._t_latest = result[1], time.monotonic()

    def latest(self) -> np.ndarray:
        with self._lock:
            return self._latest

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.stop()
                stream.close()
            except Exception as exc:  # a vanished device: closing it can fail too
                logger.debug("voice: closing the microphone: %s", exc)
        worker, self._worker = self._worker, None
        if worker is not None:
            with self._arrived:
                self._closing = True
                self._arrived.notify()
            worker.join(timeout=2.0)


class LiveVoiceTracker(Stage):
    """``process(frame) -> FaceTrack``: the avatar's rest face with the microphone's mouth."""

    def __init__(self, face: VoiceFace, microphone: MicrophoneMouth) -> None:
        self.voice_face = face
        self.microphone = microphone
        self._t0: float | None = None

    def open(self) -> LiveVoiceTracker:
        self.microphone.open()
        return self

    def close(self) -> None:
        self.microphone.close()

    def process(self, frame: Frame) -> FaceTrack:
        if self._t0 is None:
            self._t0 = frame.t_capture
        landmarks = self.voice_face.face(self.microphone.latest(), frame.t_capture - self._t0)
        return FaceTrack(frame=frame, landmarks=landmarks.astype(np.float32), faces_seen=1)


def voice_lag_ms(model_path: str | None = None) -> float:
    """How far the mouth trails the voice it comes from: the model's look-ahead plus one block
    (not measured end to end yet)."""
    from realtime.voice.model import VoiceMouthModel

    return 1000.0 * (VoiceMouthModel(model_path).lookahead_s + BLOCKSIZE / RATE)


def use_lips(
    processor: Any,
    lips: str,
    device: str | int,
    occlusion: bool = True,
    camera_delay_s: float = 0.0,
    model_path: str | None = None,
    seed: int = 0,
    report_voice_failure: bool = True,
) -> Any:
    """Make ``processor``'s camera tracker share the mouth with the microphone (``--lips voice|auto``
    with a camera): the head, eyes and brows stay the camera's (``realtime.voice.lips.LipSource``)."""
    from realtime.occlusion import HandOccluder
    from realtime.retarget import Retargeter
    from realtime.voice.lips import LipSource

    chooser = LipSource(
        processor.tracker,
        MicrophoneMouth(device, model_path),
        mode=lips,
        # Only auto asks whether a hand covers the mouth (the hand model's own process, <= 10 Hz;
        # swap mode's, when the processor has one).
        occluder=(getattr(processor, "occlusion", None) or HandOccluder(isolated=True))
        if lips == "auto" and occlusion
        else None,
        idle=IdleMotion(seed),
        neutral_of=lambda: processor.retargeter.neutral,
        camera_delay_s=camera_delay_s,
        report_voice_failure=report_voice_failure,
        # Nobody in view yet: the avatar talks from its own rest face until the camera finds one.
        rest_face=Retargeter.closed_mouth(processor.avatar.landmarks.astype(np.float64)),
        set_neutral=lambda face: processor.retargeter.set_neutral(face),
        on_status=lambda line: processor.controls.set_status("lips", line),  # the window's overlay
    )
    processor.tracker = chooser
    return chooser


def use_voice(
    processor: Any, device: str | int, model_path: str | None = None, seed: int = 0
) -> LiveVoiceTracker:
    """Make ``processor`` (a FrameProcessor in reenact mode) follow the microphone's voice."""
    from realtime.retarget import Retargeter

    rest = Retargeter.closed_mouth(processor.avatar.landmarks.astype(np.float64))
    tracker = LiveVoiceTracker(VoiceFace(rest, IdleMotion(seed)), MicrophoneMouth(device, model_path))
    processor.tracker = tracker
    processor.retargeter.set_neutral(rest)
    return tracker
