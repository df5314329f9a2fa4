"""Clocks: each stream's samples on ``time.monotonic()``, the two streams' offset locked,
and the smoothed video latency the audio follows."""

from __future__ import annotations

import collections
import logging
import math
import statistics

logger = logging.getLogger(__name__)

# The locked offset and the callbacks' timing may disagree by this much (for 3 s) before a re-lock.
OFFSET_RELOCK_S = 0.020


class StreamClock:
    """Maps a stream's sample positions onto ``time.monotonic()``.

    Each callback gives ``(t, position)``; ``offset`` is a low percentile of
    ``t - position / rate`` over the last ``window`` callbacks. Callbacks are late (GIL,
    scheduler, bursts from the sound server) but never early, so a low percentile is
    the on-time relation. A percentile rather than the minimum ignores the buffer-filling
    burst at stream start. Drift, stalls and xruns move it; ``reset()`` forgets the past.
    """

    def __init__(self, samplerate: int, window: int = 50, percentile: float = 10.0, warmup: int = 3) -> None:
        self.samplerate = samplerate
        self.window = window
        self.percentile = percentile
        self.warmup = warmup
        self._values: collections.deque[float] = collections.deque(maxlen=window)
        self._seen = 0
        self.offset: float | None = None

    def add(self, t: float, position: int) -> None:
        self._seen += 1
        if self._seen <= self.warmup:
            return
        self._values.append(t - position / self.samplerate)
        ordered = sorted(self._values)  # ~50 floats: far cheaper than np.percentile in a callback
        self.offset = ordered[int(self.percentile / 100.0 * (len(ordered) - 1))]

    @property
    def ready(self) -> bool:
        """Enough callbacks since the last reset for a trustworthy offset."""
        return len(self._values) >= 10

    def reset(self) -> None:
        self._values.clear()
        self._seen = 0
        self.offset = None


# --------------------------------------------------------------------------- latency smoothing


class LatencyTracker:
    """The video latency the audio follows: median of the last frames, with hysteresis.

    ``add(ms)`` per frame; ``value_ms`` changes only when the median moves more than
    ``hysteresis_ms`` away from it, so frame-to-frame jitter never reaches the audio.
    """

    def __init__(self, frames: int = 30, hysteresis_ms: float = 3.0) -> None:
        self._recent: collections.deque[float] = collections.deque(maxlen=max(1, frames))
        self.hysteresis_ms = hysteresis_ms
        self.value_ms: float | None = None

    def add(self, ms: float) -> float:
        if math.isfinite(ms) and ms >= 0:
            self._recent.append(float(ms))
        if self._recent:
            median = statistics.median(self._recent)
            if self.value_ms is None or abs(median - self.value_ms) > self.hysteresis_ms:
                self.value_ms = median
        return self.value_ms or 0.0


class ClockSync:
    """Which input sample arrives as each output block plays: the two streams' clocks, locked.

    Input and output may be different devices with different clocks. Each stream's
    callbacks feed its own ``StreamClock``; the difference of the two, locked once they
    have settled (see ``_lock``), maps output positions onto input positions. It also
    keeps the shortest delay that never reads input not yet written (``floor_s``).
    """

    def __init__(self, samplerate: int, blocksize: int) -> None:
        self.samplerate = samplerate
        self.input = StreamClock(samplerate)
        self.output = StreamClock(samplerate)
        self.input_pos = 0  # samples the input stream has delivered
        self.output_pos = 0  # samples the output stream has asked for
        self.relocks = 0
        self.floor_s = 0.0
        self._locked: float | None = None  # output clock - input clock (s)
        self._reacquire = False
        self._disagree_s = 0.0
        # How far each block's input fell short, over the last 2 s (the streams' phase moves).
        self._shortfalls: collections.deque[float] = collections.deque(
            maxlen=max(10, int(2.0 * samplerate / blocksize))
        )

    def input_block(self, t: float, frames: int, lost: bool = False) -> None:
        """An input callback at ``t``; ``lost``: samples were dropped before it (an overflow)."""
        if lost:
            self.input.reset()
            self._reacquire = True
        self.input_pos += frames
        self.input.add(t, self.input_pos)

    def output_block(self, t: float, frames: int, lost: bool = False) -> None:
        """An output callback at ``t``; ``lost``: the device ran dry before it (an underflow)."""
        if lost:
            self.output.reset()
            self._reacquire = True
        self.output.add(t, self.output_pos)
        self.output_pos += frames

    def offset_s(self, frames: int) -> float | None:
        """Output clock - input clock (s), locked; None until both streams have a clock."""
        c_in, c_out = self.input.offset, self.output.offset
        if c_in is None or c_out is None:
            return None
        return self._lock(c_out - c_in, frames / self.samplerate)

    def track_floor(self, shortfall: float, frames: int) -> float:
        """The delay floor (s) after a block whose input fell ``shortfall`` samples short.

        It rises at once and falls by at most 1 ms per second, so an occasional late
        callback does not make the delay wander.
        """
        self._shortfalls.append(shortfall)
        floor = max(0.0, max(self._shortfalls) / self.samplerate + 0.001)
        self.floor_s = max(floor, self.floor_s - 0.001 * frames / self.samplerate)
        return self.floor_s

    def _lock(self, measured: float, dt: float) -> float:
        """The two streams' clock offset, locked once the clocks have settled.

        Without an xrun no sample is lost, so input and output positions keep a fixed
        relation. The callbacks' timing, which ``measured`` comes from, also moves when the
        sound server changes its buffering or another client connects: following it would
        move the audio for nothing. So the lock holds, and is taken again only after an
        xrun, or when the two disagree by more than ``OFFSET_RELOCK_S`` for 3 s: a stall
        nobody flagged, or two devices' clocks having drifted apart (the delay line
        crossfades there).
        """
        if self._locked is None or self._reacquire:
            if not (self.input.ready and self.output.ready):
                return self._locked if self._locked is not None else measured
            self._locked, self._reacquire, self._disagree_s = measured, False, 0.0
            return measured
        if abs(measured - self._locked) > OFFSET_RELOCK_S:
            self._disagree_s += dt
            if self._disagree_s > 3.0:
                logger.debug("audio clocks re-locked by %.1f ms", (measured - self._locked) * 1000.0)
                self._locked, self._disagree_s = measured, 0.0
                self.relocks += 1
        else:
            self._disagree_s = 0.0
        return self._locked
