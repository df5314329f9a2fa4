"""Audio A/V sync without devices: the delay line alone, the stream clocks and the latency
smoothing."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest

from realtime.audio import AudioDelayLine, LatencyTracker, StreamClock

SR = 48000
BLOCK = 960


# --------------------------------------------------------------------------- helpers


def sine(n: int, freq: float = 440.0, amp: float = 0.5, sr: int = SR) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)).astype(np.float32)


def run_blocks(
    line: AudioDelayLine, signal: np.ndarray, delay_at: Callable[[int], float], block: int = BLOCK
):
    """Push ``signal`` through ``line`` block by block; ``delay_at(block_index)`` gives the delay."""
    out = []
    for k, i in enumerate(range(0, len(signal) - block + 1, block)):
        out.append(line.process(signal[i : i + block], delay_at(k)))
    return np.concatenate(out)


def max_step(y: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(y.astype(np.float64)))))


def zero_crossing_freq(y: np.ndarray, sr: int = SR) -> np.ndarray:
    """Frequency from the spacing of successive rising zero crossings (sub-sample exact)."""
    y = y.astype(np.float64)
    idx = np.flatnonzero((y[:-1] < 0) & (y[1:] >= 0))
    exact = idx + y[idx] / (y[idx] - y[idx + 1])
    return sr / np.diff(exact)


# --------------------------------------------------------------------------- delay line


@pytest.mark.parametrize("delay", [0, 1, 480, 959, 960, 4321, 48000])
def test_delay_line_delays_a_click_by_exactly_the_delay(delay):
    line = AudioDelayLine(SR)
    x = np.zeros(SR * 2, np.float32)
    x[1234] = 1.0
    y = run_blocks(line, x, lambda k: delay)
    hits = np.flatnonzero(y)
    assert hits.tolist() == [1234 + delay]
    assert y[1234 + delay] == 1.0  # an exact copy: no interpolation at integer delays


def test_delay_line_steady_state_is_bit_exact_for_any_block_size():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, SR).astype(np.float32)
    for block in (256, 960, 1024, 4096):
        line = AudioDelayLine(SR)
        y = run_blocks(line, x, lambda k: 777, block=block)
        assert np.array_equal(y[777:], x[: len(y) - 777])


def test_small_delay_changes_are_resampled_without_clicks_or_pitch_jumps():
    """A few ms: absorbed by resampling at <= 1 % (17 cents), then exact again."""
    line = AudioDelayLine(SR)
    x = sine(SR * 4)
    changes = {0: 480, 50: 480 + 240, 100: 480 - 144, 150: 480}  # block index -> delay (5 ms, -8 ms, +3 ms)
    current = [480]

    def delay_at(k: int) -> float:
        current[0] = changes.get(k, current[0])
        return current[0]

    y = run_blocks(line, x, delay_at)
    natural = 0.5 * 2 * np.pi * 440 / SR  # the sine's own largest sample-to-sample step
    assert max_step(y[2000:]) < 1.05 * natural, "a click"
    freq = zero_crossing_freq(y[2000:])
    assert np.all(np.abs(freq / 440.0 - 1.0) < 0.0125), (
        f"pitch moved by up to {np.max(np.abs(freq / 440 - 1)):.4f}"
    )
    assert line.jumps == 0, "small changes must not crossfade"
    assert line.delay == 480 and line.read_pos == int(line.read_pos)  # back on the exact delay
    tail = y[-4800:]
    assert np.allclose(tail, x[len(y) - 4800 - 480 : len(y) - 480], atol=1e-6)


def test_large_delay_changes_crossfade_without_clicks_or_pitch_change():
    """Tens of ms: an equal-power crossfade between the two read positions, no resampling."""
    line = AudioDelayLine(SR)
    x = sine(SR * 4, freq=220.0)
    changes = {0: 480, 50: 480 + 3000, 100: 480 + 1000, 150: 4000}
    current = [480]

    def delay_at(k: int) -> float:
        current[0] = changes.get(k, current[0])
        return current[0]

    y = run_blocks(line, x, delay_at)
    natural = 0.5 * 2 * np.pi * 220 / SR
    # Two copies of one sine crossfaded at equal power: the sum is at most sqrt(2) louder.
    assert max_step(y[2000:]) < 1.5 * natural, "a click"
    assert line.jumps == 3
    assert line.delay == 4000
    assert np.array_equal(y[-4800:], x[len(y) - 4800 - 4000 : len(y) - 4000])


def test_a_click_that_would_jump_is_detected_by_the_step_check():
    """The step check above is meaningful: a plain switch of read position clicks."""
    x = sine(SR, freq=220.0)
    y = np.concatenate([x[:24000], x[24000 - 1234 : 48000 - 1234]])
    assert max_step(y) > 5 * 0.5 * 2 * np.pi * 220 / SR


def test_delay_line_memory_is_fixed_and_survives_a_stalled_reader():
    line = AudioDelayLine(SR, max_delay_s=1.0)
    ring = line._ring
    nbytes = ring.nbytes
    block = sine(BLOCK)
    tracemalloc.start()
    for _ in range(3000):  # one minute of audio
        line.process(block, 2400)
    for _ in range(500):  # the reader stalls for 10 s: only writes
        line.write(block)
    out = line.read(BLOCK, line.written - BLOCK - 2400)  # and comes back
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert line._ring is ring and ring.nbytes == nbytes
    assert peak < 2_000_000, f"peak {peak} bytes of temporaries"
    assert 1.5 * SR <= line.capacity < 3 * SR  # max delay + 0.5 s, to the next power of two
    assert np.isfinite(out).all() and line.delay == 2400


def test_targets_outside_the_buffer_are_clamped_not_read():
    line = AudioDelayLine(SR, max_delay_s=0.5)
    line.write(np.ones(SR, np.float32))
    y = line.read(BLOCK, line.written + 5000)  # the future: newest samples instead
    assert np.all(y == 1.0) and line.clamped == 1


# --------------------------------------------------------------------------- clock and smoothing


def test_stream_clock_ignores_late_callbacks_and_follows_a_stall():
    clock = StreamClock(SR)
    rng = np.random.default_rng(1)
    for k in range(1, 200):
        late = rng.exponential(0.003) if k % 7 else 0.030  # scheduler jitter and some very late ones
        clock.add(5.0 + k * BLOCK / SR + late, k * BLOCK)
    assert clock.offset == pytest.approx(5.0, abs=0.001)
    for k in range(200, 260):  # the device stalled for 300 ms: positions now map 0.3 s later
        clock.add(5.3 + k * BLOCK / SR, k * BLOCK)
    assert clock.offset == pytest.approx(5.3, abs=0.001)


def test_latency_tracker_takes_the_median_and_holds_small_changes():
    tracker = LatencyTracker(frames=30, hysteresis_ms=3.0)
    rng = np.random.default_rng(2)
    for _ in range(60):
        tracker.add(80.0 + rng.normal(0, 4) + (200.0 if rng.random() < 0.1 else 0.0))  # jitter + spikes
    assert tracker.value_ms == pytest.approx(80.0, abs=3.0)
    held = tracker.value_ms
    for _ in range(60):
        tracker.add(held + 2.0)  # within the hysteresis: no change reaches the audio
    assert tracker.value_ms == held
    for _ in range(30):
        tracker.add(120.0)
    assert tracker.value_ms == 120.0
