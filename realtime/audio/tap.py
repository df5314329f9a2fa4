"""What the virtual microphone plays, recorded for a recording's soundtrack.

The call hears the virtual microphone; its recording side (a PulseAudio sink's monitor,
BlackHole's input, VB-Cable's "CABLE Output") holds exactly that. ``AudioTap`` records it
with the monotonic time of its first sample, so the soundtrack can be laid against the
video frames by the clock both were delivered on.
"""

from __future__ import annotations

import logging
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from realtime.audio.devices import import_sounddevice, pulse_env, resolve_device

logger = logging.getLogger(__name__)

RATE = 48000


def recording_side(output_device: str) -> str:
    """The input that hears what ``output_device`` (a ``--audio-out`` value) plays."""
    text = output_device.strip()
    if text.lower().startswith("pulse:"):
        name = text.split(":", 1)[1].strip()
        return f"pulse:{name}.monitor" if name and not name.endswith(".monitor") else text
    if "CABLE Input" in text:  # VB-Cable plays into its Input and records from its Output
        return text.replace("CABLE Input", "CABLE Output")
    return text  # BlackHole and other loopbacks record on the same name


class AudioTap:
    """Records the virtual microphone from ``start()`` to ``stop()`` (a PortAudio input stream)."""

    def __init__(self, output_device: str, channels: int = 1) -> None:
        self.device = recording_side(output_device)
        self.channels = channels
        self._blocks: list[np.ndarray] = []
        self._samples = 0
        self._first_t = float("inf")
        self._lock = threading.Lock()
        self._stream: Any = None
        self.latency_s = 0.0

    def start(self) -> AudioTap:
        sd = import_sounddevice()
        index, pulse_name, _ = resolve_device(sd, self.device, "input")
        with pulse_env("PULSE_SOURCE", pulse_name):
            self._stream = sd.InputStream(
                device=index,
                channels=self.channels,
                samplerate=RATE,
                dtype="float32",
                blocksize=480,
                callback=self._callback,
            )
            self._stream.start()
        self.latency_s = float(self._stream.latency or 0.0)
        return self

    def _callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        with self._lock:
            self._blocks.append(indata.copy())
            self._samples += frames
            # The least delayed callback dates the first sample best.
            self._first_t = min(self._first_t, now - self._samples / RATE)

    def stop(self) -> tuple[np.ndarray, float]:
        """The samples (n, channels) and the monotonic time of the first one."""
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.stop()
            stream.close()
        with self._lock:
            samples = (
                np.concatenate(self._blocks) if self._blocks else np.zeros((0, self.channels), np.float32)
            )
            return samples, self._first_t - self.latency_s


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    """16-bit PCM WAV."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1] if pcm.ndim == 2 else 1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
