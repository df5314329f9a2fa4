"""The delay line: a ring buffer read at a steerable position, moving without clicks.

Small errors are absorbed by resampling by at most 1 % (inaudible on speech) and large
changes by a short equal-power crossfade between the old and the new read position (no
pitch change at all).
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_RATE = 48000
SILENCE_DB = -120.0


def level_db(block: np.ndarray) -> float:
    """RMS level of ``block`` in dBFS (``SILENCE_DB`` for digital silence)."""
    if block.size == 0:
        return SILENCE_DB
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return max(SILENCE_DB, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DB


class AudioDelayLine:
    """A mono ring buffer read at a steerable position.

    ``write(x)`` appends samples; sample ``i`` of the stream is the ``i``-th sample ever
    written. ``read(n, target)`` returns ``n`` samples whose first one should be input
    sample ``target`` (a float index). The read position follows the target gradually:

    - within ``deadband`` samples of it: read straight on (exact, bit-for-bit copies at
      integer positions);
    - up to ``jump`` samples off: resample at ``1 ± max_rate_dev`` (cubic interpolation)
      until it is exactly on the (rounded) target again, like a PLL; this absorbs clock
      drift and small latency changes with no audible pitch change;
    - further off: an equal-power crossfade over ``crossfade`` samples from the old read
      position to the new one, both advancing at the normal rate.

    Targets outside the readable range (not yet written, or already overwritten) are
    clamped. Memory is fixed at construction: ``capacity`` samples.
    """

    def __init__(
        self,
        samplerate: int = SAMPLE_RATE,
        max_delay_s: float = 2.0,
        crossfade_ms: float = 40.0,
        jump_ms: float = 12.0,
        deadband_ms: float = 1.0,
        max_rate_dev: float = 0.01,
        correct_s: float = 0.25,
    ) -> None:
        self.samplerate = int(samplerate)
        size = 1
        while size < int((max_delay_s + 0.5) * self.samplerate):
            size *= 2
        self.capacity = size
        self._mask = size - 1
        self._ring = np.zeros(size, np.float32)
        self.written = 0  # samples written so far (the next write's index)
        self.read_pos: float | None = None
        self.crossfade = max(1, int(round(crossfade_ms * 1e-3 * self.samplerate)))
        self.jump = jump_ms * 1e-3 * self.samplerate
        self.deadband = deadband_ms * 1e-3 * self.samplerate
        self.max_rate_dev = float(max_rate_dev)
        self.correct = max(1.0, correct_s * self.samplerate)
        self._fade_to: float | None = None  # read position being faded in
        self._fade_done = 0
        self._correcting = False
        self.jumps = 0  # crossfades started
        self.clamped = 0  # blocks whose target was out of the readable range

    # -- writing ---------------------------------------------------------------------
    def write(self, block: np.ndarray) -> None:
        x = np.asarray(block, np.float32).reshape(-1)
        n = x.size
        if n == 0:
            return
        if n > self.capacity:
            x, n = x[-self.capacity :], self.capacity
            self.written += block.size - n
        start = self.written & self._mask
        first = min(n, self.capacity - start)
        self._ring[start : start + first] = x[:first]
        if first < n:
            self._ring[: n - first] = x[first:]
        self.written += n

    # -- reading ---------------------------------------------------------------------
    @property
    def delay(self) -> float:
        """Samples between the newest sample written and the next one to be read."""
        if self.read_pos is None:
            return 0.0
        return self.written - (self._fade_to if self._fade_to is not None else self.read_pos)

    def _bounds(self, n: int, rate: float | None = None) -> tuple[float, float]:
        """Lowest and highest start position from which ``n`` samples can be read.

        ``rate`` None: a straight copy at an integer position; else interpolated reading,
        which needs one sample after the last position.
        """
        low = self.written - self.capacity + 2.0
        if rate is None:
            high = float(self.written - n)
        else:
            high = self.written - (n - 1) * rate - 2.0
        return low, max(low, high)

    def _clamp(self, pos: float, n: int) -> float:
        low, high = self._bounds(n)
        if pos < low or pos > high:
            self.clamped += 1
        return min(max(pos, low), high)

    def _gather(self, pos: float, n: int, rate: float) -> np.ndarray:
        """``n`` samples from ``pos`` at ``rate`` (4-point cubic Hermite interpolation)."""
        if rate == 1.0 and pos == int(pos):
            idx = (np.arange(n, dtype=np.int64) + int(pos)) & self._mask
            return self._ring[idx]
        p = pos + rate * np.arange(n, dtype=np.float64)
        i = np.floor(p).astype(np.int64)
        f = (p - i).astype(np.float32)
        r = self._ring
        m = self._mask
        y0, y1, y2, y3 = r[(i - 1) & m], r[i & m], r[(i + 1) & m], r[(i + 2) & m]
        c1 = 0.5 * (y2 - y0)
        c2 = y0 - 2.5 * y1 + 2.0 * y2 - 0.5 * y3
        c3 = 0.5 * (y3 - y0) + 1.5 * (y1 - y2)
        return ((c3 * f + c2) * f + c1) * f + y1

    def read(self, n: int, target: float) -> np.ndarray:
        """``n`` samples, steering the read position towards input index ``target``."""
        n = int(n)
        target = self._clamp(float(target), n)
        if self.read_pos is None:
            self.read_pos = float(round(target))
        else:
            low, _ = self._bounds(n)
            if self.read_pos < low:  # overwritten under us (a long stall): start again
                self.read_pos = float(round(target))
                self._fade_to = None
        goal = float(round(target))  # integer goals: once there, reads are exact copies again
        if self._fade_to is None and abs(goal - self.read_pos) > self.jump:
            self._fade_to, self._fade_done = goal, 0
            self.jumps += 1
            self._correcting = False
        if self._fade_to is not None:
            return self._read_crossfade(n)
        error = goal - self.read_pos
        if not self._correcting and abs(error) > self.deadband:
            self._correcting = True  # hysteresis: start beyond the deadband, stop only on the goal
        rate = 1.0
        if self._correcting:
            # Proportional, but at least 0.1 % so that it lands in a finite time.
            dev = min(self.max_rate_dev, max(0.001, abs(error) / self.correct))
            rate = 1.0 + math.copysign(dev, error)
            if abs((rate - 1.0) * n) >= abs(error):  # lands on the goal in this block
                rate = 1.0 + error / n
                self._correcting = False
            # Speeding up must not read samples that are not written yet.
            limit = (self.written - 2.0 - self.read_pos) / max(1, n - 1)
            if rate > limit:
                rate = max(limit, 1.0 - self.max_rate_dev)
                self._correcting = True
        exact = rate == 1.0 and self.read_pos == int(self.read_pos)
        _, high = self._bounds(n, None if exact else rate)
        pos = min(self.read_pos, high)  # only when the input stopped coming (a starved block)
        out = self._gather(pos, n, rate)
        self.read_pos = pos + rate * n
        if abs(self.read_pos - round(self.read_pos)) < 1e-6:
            self.read_pos = float(round(self.read_pos))
        return out

    def _read_crossfade(self, n: int) -> np.ndarray:
        assert self._fade_to is not None and self.read_pos is not None
        _, high = self._bounds(n, 1.0)
        old_pos, new_pos = min(self.read_pos, high), min(self._fade_to, high)
        old = self._gather(old_pos, n, 1.0)
        new = self._gather(new_pos, n, 1.0)
        k = np.arange(self._fade_done, self._fade_done + n, dtype=np.float32)
        theta = np.clip(k / self.crossfade, 0.0, 1.0) * (np.pi / 2)
        out = np.cos(theta) * old + np.sin(theta) * new
        self._fade_done += n
        self.read_pos, self._fade_to = old_pos + n, new_pos + n
        if self._fade_done >= self.crossfade:
            self.read_pos, self._fade_to = self._fade_to, None
        return out.astype(np.float32)

    def process(self, block: np.ndarray, delay: float) -> np.ndarray:
        """Synchronous use (one callback with input and output): ``block`` delayed by ``delay`` samples."""
        x = np.asarray(block, np.float32).reshape(-1)
        self.write(x)
        return self.read(x.size, self.written - x.size - float(delay))
