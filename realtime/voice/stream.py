"""The voice model on a live stream: audio blocks in, the mouth at the latest audio time out.

``VoiceStream.push(block)`` takes microphone blocks at any rate (anti-aliased and decimated
to 16 kHz with filter state kept across blocks, so block boundaries leave no trace), keeps
only the feature frames the causal model can see, and runs the model on that window; its
last output is the same as the whole stream's (``tests/test_voice.py``). Made for the audio
thread or the frame thread: the cost per block is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from realtime.voice import features
from realtime.voice.model import SpeechGate, VoiceMouthModel


class Resampler:
    """Streaming polyphase resampling (scipy's ``upfirdn``), block boundaries invisible.

    Output sample ``n`` is the low-passed, upsampled input at ``n·down + delay``, where
    ``delay`` is the filter's group delay, so the output is not shifted in time; the input
    before the stream counts as silence.
    """

    def __init__(self, rate_in: int, rate_out: int = features.RATE) -> None:
        from scipy.signal import firwin

        ratio = Fraction(int(rate_out), int(rate_in))
        self.up, self.down = ratio.numerator, ratio.denominator
        self.identity = self.up == self.down == 1
        taps = 24 * max(self.up, self.down) + 1
        self.filter = firwin(taps, 1.0 / max(self.up, self.down)) * self.up
        self.delay = (taps - 1) // 2
        keep = -(-(taps - 1) // self.up) + 1
        self._history = np.zeros(keep)
        self._start = -keep  # global index of the first sample in _history
        self._next = 0  # global index of the next output sample

    def __call__(self, block: np.ndarray) -> np.ndarray:
        from scipy.signal import upfirdn

        block = np.asarray(block, dtype=np.float64).reshape(-1)
        if self.identity:
            return block
        data = np.concatenate([self._history, block])
        end = self._start + len(data)  # global index one past the last input sample
        full = upfirdn(self.filter, data, up=self.up)  # full[i] is upsampled index start·up + i
        last = (end * self.up - 1 - self.delay) // self.down  # the newest output whose inputs are all here
        wanted = np.arange(self._next, last + 1)
        out = full[wanted * self.down + self.delay - self._start * self.up]
        self._next = last + 1
        keep = len(self._history)
        self._history, self._start = data[-keep:], end - keep
        return out


class VoiceStream:
    """``push(block)`` then ``latest()``: (audio time in s of the mouth, offsets (K, 2))."""

    def __init__(self, model: VoiceMouthModel, rate: int) -> None:
        self.model = model.open()
        self.resample = Resampler(rate)
        self.window = model.receptive_field
        self._samples = np.zeros(0)  # 16 kHz samples from the previous frame's start on
        self._offset = 0  # stream index of _samples[0]
        self._frames = 0  # feature frames made so far
        self._mel = np.zeros((0, features.N_MELS), np.float32)
        self.gate = SpeechGate()
        self._weight = 0.0
        self._latest: tuple[float, np.ndarray] = (-model.lookahead_s, np.zeros((0, 2), np.float32))

    def push(self, block: np.ndarray) -> tuple[float, np.ndarray] | None:
        """Add a mono block; the newest mouth, or None while no new feature frame is complete."""
        self._samples = np.concatenate([self._samples, self.resample(block)])
        first = self._frames * features.HOP - self._offset  # where the next frame starts in _samples
        if len(self._samples) - first < features.WINDOW:
            return None
        count = 1 + (len(self._samples) - first - features.WINDOW) // features.HOP
        # One frame earlier too, dropped after: pre-emphasis then sees the sample before.
        before = features.HOP if first >= features.HOP else 0
        used = self._samples[first - before : first + (count - 1) * features.HOP + features.WINDOW]
        skip = 1 if before else 0
        self._mel = np.concatenate([self._mel, features.log_mel(used)[skip:]])[-self.window :]
        self._weight = float(self.gate(used[skip * features.HOP :])[-1])
        self._frames += count
        drop = self._frames * features.HOP - features.HOP - self._offset
        self._samples, self._offset = self._samples[drop:], self._offset + drop
        mouth = self.model.run(self._mel)[-1] * self._weight
        t = float(features.frame_end_s(self._frames - 1)) - self.model.lookahead_s
        self._latest = (t, mouth)
        return self._latest

    def latest(self) -> tuple[float, np.ndarray]:
        return self._latest
