"""Audio A/V sync: the delay line alone, the bridge's clock mapping, a real PulseAudio server,
the CLI's failure modes and the render's audio alignment.

The PulseAudio tests need ``pulseaudio``/``pactl`` and PortAudio (``make audio-server``
installs and starts them as root, per ../shared/ENVIRONMENT.md). If the server is installed
but not running, this module starts it; without it those tests skip with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from realtime.audio import (
    AudioBridge,
    AudioBridgeProcess,
    AudioDelayLine,
    AudioUnavailable,
    LatencyTracker,
    StreamClock,
    audio_thread_priority,
    format_audio_summary,
    start_bridge,
    video_start_offset_s,
    virtual_mic_setup,
)
from realtime.audio_probe import measure_bridge_delay, wait_flowing
from tests.conftest import cli, write_astronaut_clip

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


# --------------------------------------------------------------------------- the bridge without devices


class Flags:
    """Stands in for sounddevice.CallbackFlags."""

    def __init__(self, **flags: bool) -> None:
        self.input_overflow = self.input_underflow = self.output_underflow = False
        self.output_overflow = self.priming_output = False
        self.__dict__.update(flags)

    def __bool__(self) -> bool:
        return any(self.__dict__.values())


class SimulatedStreams:
    """Drive an ``AudioBridge``'s callbacks as two independent streams on a virtual clock.

    Input block k (samples k*BLOCK...) is delivered at (k+1)*BLOCK/SR + lateness; output
    block k is requested at k*BLOCK/SR + phase and plays then. ``late_after`` adds a
    constant delivery delay from that block on (the server buffering differently: no
    sample is lost); ``lose_block`` drops one input block (an overflow).
    """

    def __init__(
        self,
        bridge: AudioBridge,
        phase_s: float,
        jitter_s: float = 0.0,
        seed: int = 0,
        late_after: tuple[int, float] | None = None,
        lose_block: int | None = None,
        input_ppm: float = 0.0,
    ):
        self.bridge, self.phase, self.jitter = bridge, phase_s, jitter_s
        self.late_after, self.lose_block = late_after, lose_block
        self.in_rate = SR * (1.0 + input_ppm * 1e-6)  # the microphone's clock, off by input_ppm
        self.now = 0.0
        self.rng = np.random.default_rng(seed)
        self.out: list[np.ndarray] = []

    def run(self, signal: np.ndarray, on_block: Callable[[int], None] | None = None) -> np.ndarray:
        interval = BLOCK / SR
        events = []
        for k in range(len(signal) // BLOCK):
            late = self.rng.exponential(self.jitter) if self.jitter else 0.0
            if self.late_after and k >= self.late_after[0]:
                late += self.late_after[1]
            events.append((BLOCK * (k + 1) / self.in_rate + late, "in", k))
            events.append((interval * k + self.phase, "out", k))
        for t, kind, k in sorted(events):
            self.now = max(self.now, t)
            if kind == "in":
                if k == self.lose_block:
                    continue
                block = signal[k * BLOCK : (k + 1) * BLOCK, None]
                flags = Flags(input_overflow=self.lose_block is not None and k == self.lose_block + 1)
                self.bridge._input_callback(block, BLOCK, None, flags)
            else:
                outdata = np.zeros((BLOCK, 1), np.float32)
                self.bridge._output_callback(outdata, BLOCK, None, None)
                self.out.append(outdata[:, 0].copy())
                if on_block:
                    on_block(k)
        return np.concatenate(self.out)


@pytest.mark.parametrize("phase_ms", [1.0, 7.0, 19.0])
@pytest.mark.parametrize("jitter_ms", [0.0, 2.0])
def test_bridge_maps_the_two_streams_clocks_to_the_exact_delay(phase_ms, jitter_ms):
    """Output sample j plays at j/SR + phase; input sample i arrived at i/SR: delay = video latency.

    Without callback jitter the delay is exact to the sample; with late callbacks (mean
    2 ms) within about the 1 ms deadband.
    """
    sim_holder: list[SimulatedStreams] = []
    bridge = AudioBridge(path_latency_ms=0.0, clock=lambda: sim_holder[0].now)
    sim = SimulatedStreams(bridge, phase_ms / 1000.0, jitter_s=jitter_ms / 1000.0, seed=int(phase_ms))
    sim_holder.append(sim)
    x = np.zeros(SR * 3, np.float32)
    x[SR * 2] = 1.0
    y = sim.run(x, on_block=lambda k: bridge.set_video_latency_ms(100.0))
    hit = int(np.argmax(np.abs(y)))
    measured_ms = (hit / SR + phase_ms / 1000.0 - 2.0) * 1000.0
    tolerance_ms = 0.03 if jitter_ms == 0 else 1.5
    assert measured_ms == pytest.approx(100.0, abs=tolerance_ms)
    assert bridge.audio_delay_ms == pytest.approx(measured_ms, abs=tolerance_ms)
    stats = bridge.stats()
    assert stats["underruns"] == 0 and stats["starved_blocks"] == 0


@pytest.mark.parametrize("case", ["server buffers 6 ms more", "an input block is lost"])
def test_bridge_delay_survives_callback_timing_shifts_and_lost_samples(case):
    """A delivery delay without lost samples must not move the audio (the clocks are locked);
    after an overflow (samples lost) the lock is re-acquired and the delay is right again."""
    holder: list[SimulatedStreams] = []
    bridge = AudioBridge(path_latency_ms=0.0, clock=lambda: holder[0].now)
    # At 8 s, well after start-up (whose first seconds the lock follows faster).
    shift = {"late_after": (400, 0.006)} if case.startswith("server") else {"lose_block": 400}
    sim = SimulatedStreams(bridge, 0.007, jitter_s=0.0005, **shift)
    holder.append(sim)
    x = np.zeros(SR * 12, np.float32)
    x[SR * 11] = 1.0  # 3 s after the change
    y = sim.run(x, on_block=lambda k: bridge.set_video_latency_ms(100.0))
    hit = int(np.argmax(np.abs(y)))
    measured_ms = (hit / SR + 0.007 - 11.0) * 1000.0  # played at hit/SR + phase, captured at 11 s
    assert measured_ms == pytest.approx(100.0, abs=1.5)
    assert bridge.audio_delay_ms == pytest.approx(100.0, abs=1.5)
    assert bridge.relocks == 0


def test_bridge_keeps_two_drifting_clocks_within_bounds():
    """A microphone 400 ppm fast (an extreme): the lock is re-taken as the clocks drift apart."""
    holder: list[SimulatedStreams] = []
    bridge = AudioBridge(path_latency_ms=0.0, clock=lambda: holder[0].now)
    sim = SimulatedStreams(bridge, 0.004, jitter_s=0.0005, input_ppm=400.0)
    holder.append(sim)
    x = np.zeros(SR * 90, np.float32)
    clicks = np.arange(10, 90, 10) * SR
    x[clicks] = 1.0
    y = sim.run(x, on_block=lambda k: bridge.set_video_latency_ms(100.0))
    delays = []
    for i in clicks:
        hit = int(np.argmax(np.abs(y[i - SR // 2 : i + SR // 2]))) + i - SR // 2
        delays.append((hit / SR + 0.004 - i / sim.in_rate) * 1000.0)
    assert all(abs(d - 100.0) <= 21.0 for d in delays), delays
    assert bridge.relocks >= 1 and bridge.stats()["starved_blocks"] == 0


def test_bridge_follows_latency_changes_and_offset_and_mutes_without_clicks():
    holder: list[SimulatedStreams] = []
    bridge = AudioBridge(path_latency_ms=20.0, clock=lambda: holder[0].now)
    sim = SimulatedStreams(bridge, 0.005, jitter_s=0.001)
    holder.append(sim)
    x = sine(SR * 8, freq=220.0)

    def schedule(k: int) -> None:  # blocks of 20 ms
        bridge.set_video_latency_ms(80.0 if k < 100 else 130.0)
        if k == 250:
            bridge.offset_ms = -20.0
        bridge.muted = 300 <= k < 330

    y = sim.run(x, on_block=schedule)
    natural = 0.5 * 2 * np.pi * 220 / SR
    assert max_step(y[SR:]) < 1.5 * natural
    assert bridge.audio_delay_ms == pytest.approx(110.0, abs=0.5)  # 130 - 20
    assert np.abs(y[310 * BLOCK : 328 * BLOCK]).max() == 0.0  # muted
    assert np.abs(y[-BLOCK:]).max() > 0.4  # and back
    assert bridge.level_db == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.5)


def test_bridge_never_delays_less_than_its_path_can():
    """Video faster than the audio path: the smallest possible delay, steady, no crossfade churn."""
    holder: list[SimulatedStreams] = []
    bridge = AudioBridge(path_latency_ms=40.0, clock=lambda: holder[0].now)
    sim = SimulatedStreams(bridge, 0.012, jitter_s=0.001)
    holder.append(sim)
    sim.run(sine(SR * 4), on_block=lambda k: bridge.set_video_latency_ms(30.0))
    assert bridge.audio_delay_ms is not None and 40.0 < bridge.audio_delay_ms < 40.0 + 45.0
    assert bridge.stats()["starved_blocks"] == 0 and bridge.line.jumps <= 1


def test_a_silent_device_is_reported_once_and_never_raises(caplog):
    holder = [0.0]
    bridge = AudioBridge(clock=lambda: holder[0])
    bridge._started_at = 1.0
    bridge._in_stream = object()  # as if open; no callbacks arrive
    with caplog.at_level(logging.ERROR, logger="realtime.audio"):
        for t in np.arange(1.0, 10.0, 0.1):
            holder[0] = float(t)
            bridge.set_video_latency_ms(50.0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "video keeps running" in errors[0].getMessage()
    assert bridge.stalled
    bridge._in_stream = None


def test_missing_portaudio_is_one_clear_line(monkeypatch, caplog):
    class NoPortAudio:
        def find_spec(self, name, path=None, target=None):
            if name == "sounddevice":
                raise OSError("PortAudio library not found")
            return None

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(sys, "meta_path", [NoPortAudio(), *sys.meta_path])
    with caplog.at_level(logging.ERROR, logger="realtime.audio"):
        assert start_bridge("default", "default", isolated=False) is None
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    text = record.getMessage()
    assert "PortAudio library not found" in text and "video keeps running" in text and "\n" not in text
    if sys.platform.startswith("linux"):
        assert "libportaudio2" in text


def portaudio_or_skip():
    try:
        import sounddevice
    except OSError as exc:
        pytest.skip(f"PortAudio not installed ({exc}); `make audio-server` installs it")
    return sounddevice


def test_an_unknown_device_names_the_ones_that_exist():
    portaudio_or_skip()
    with pytest.raises(AudioUnavailable) as info:
        AudioBridge("no such microphone 1234", "default").start()
    text = str(info.value)
    assert "no such microphone 1234" in text and "input devices here" in text and "\n" not in text


def test_summary_and_overlay_text():
    bridge = AudioBridge(offset_ms=-10.0, muted=True)
    line = bridge.status_line()
    assert "audio [" in line and "MUTED" in line and "offset -10 ms" in line
    text = format_audio_summary(
        {**bridge.stats(), "audio_delay_ms": 95.0, "av_offset_ms": {"mean": 1.5, "p50": 1.0, "p95_abs": 4.0}}
    )
    assert "path 0.0 ms" in text and "A/V offset" in text and "underruns 0" in text

    from realtime.controls import Controls
    from realtime.frames import Output
    from realtime.sinks import WindowSink, overlay_lines

    out = Output(image=np.zeros((48, 64, 3), np.uint8), index=0, t_capture=0.0)
    lines = [str(x) for x in overlay_lines(out, 30.0, 50.0, bridge)]
    assert any("MUTED" in x for x in lines) and any("a: mute" in x for x in lines)
    win = WindowSink(Controls())
    win.audio = bridge
    win.handle_key(ord("a"))
    win.handle_key(ord("]"))
    win.handle_key(ord("]"))
    assert not bridge.muted and bridge.offset_ms == 10.0


def test_devices_explains_the_virtual_microphone_on_every_os():
    from realtime.devices import format_report, probe_audio

    text = format_report({"audio": probe_audio()})
    for needle in ("module-null-sink", "VB-Cable", "CABLE Output", "BlackHole", "--audio-out"):
        assert needle in text
    assert "pulse:" in virtual_mic_setup("Linux")


# --------------------------------------------------------------------------- the engine's latency hook


def test_engine_reports_each_new_frames_latency_and_survives_a_failing_listener(builtin_avatar, caplog):
    from realtime.controls import Controls
    from realtime.frames import Frame
    from realtime.generators.registry import build_generators
    from realtime.loop import Engine, FrameProcessor
    from realtime.metrics import Metrics
    from realtime.sinks import NullSink
    from realtime.sources import BuiltinDriverSource
    from realtime.tracking import FaceTracker

    driver = BuiltinDriverSource(320, 240, 25.0, seconds=1.0, paced=False, loop=False)
    images = []
    while (frame := driver.read()) is not None:
        images.append(frame.image)

    class Paced:
        def __init__(self) -> None:
            self.index, self.t0 = 0, time.monotonic()

        def read(self) -> Frame:
            time.sleep(max(0.0, self.t0 + self.index / 25.0 - time.monotonic()))
            frame = Frame(
                image=images[self.index % len(images)], index=self.index, t_capture=time.monotonic()
            )
            self.index += 1
            return frame

    processor = FrameProcessor(
        builtin_avatar,
        build_generators("warp", builtin_avatar),
        FaceTracker(isolated=False),
        Controls(),
        Metrics(),
        builtin_avatar.size,
    )
    heard: list[float] = []

    def listener(ms: float) -> None:
        heard.append(ms)
        if len(heard) == 3:
            raise RuntimeError("audio broke")

    try:
        with caplog.at_level(logging.ERROR, logger="realtime.loop"):
            summary = Engine(Paced(), processor, [NullSink()], fps=25.0, on_latency=listener).run(seconds=2.0)
    finally:
        processor.close()
    assert len(heard) == summary["frames"] > 10  # every new frame, none of the repeats
    assert heard == pytest.approx(list(processor.metrics.latency_ms))
    assert [r.getMessage() for r in caplog.records if "latency listener" in r.getMessage()] == [
        "latency listener failed: audio broke (further errors of this kind are counted, not logged)"
    ]


# --------------------------------------------------------------------------- a real PulseAudio server

PULSE_START = [
    "pulseaudio",
    "-D",
    "--exit-idle-time=-1",
    "--disallow-exit",
    "-n",
    "--load=module-native-protocol-unix",
    "--load=module-null-sink sink_name=vsink rate=48000",
    "--load=module-remap-source master=vsink.monitor source_name=vmic",
]


def _pactl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def pulse():
    """A running PulseAudio server (started here when installed but not running)."""
    portaudio_or_skip()
    if shutil.which("pactl") is None:
        pytest.skip("pactl not installed; `make audio-server` (as root) installs and starts PulseAudio")
    if _pactl("info").returncode != 0:
        if shutil.which("pulseaudio") is None:
            pytest.skip("no PulseAudio server and pulseaudio not installed; run `make audio-server`")
        subprocess.run(PULSE_START, capture_output=True, timeout=20)
        for _ in range(50):
            if _pactl("info").returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip("PulseAudio is installed but did not start (see ENVIRONMENT.md, 'Audio')")
        _pactl("set-default-sink", "vsink")
        _pactl("set-default-source", "vsink.monitor")
    return True


@pytest.fixture
def null_sink(pulse):
    """A fresh null sink for one test, removed afterwards."""
    name = f"rt_test_{os.getpid()}_{time.monotonic_ns() % 100000}"
    proc = _pactl("load-module", "module-null-sink", f"sink_name={name}", "rate=48000")
    assert proc.returncode == 0, proc.stderr
    module = proc.stdout.strip()
    yield name
    _pactl("unload-module", module)


def median_measurement(sink: str, video_ms: float, wanted: int = 3, tries: int = 6) -> tuple[dict, list]:
    """The median (by measured delay) of ``wanted`` clean measurements, and every attempt.

    One measurement is not enough on a busy 2-core machine: a CI run once measured 95.5 ms
    for 80 ms, cleanly; here 30 runs (22 of them beside 3 busy processes) measured
    78.4-87.9 ms, most 80-82 ms. The median of three passes one such outlier and still
    fails a bridge that is wrong most of the time.
    """
    clean, attempts = [], []
    for _ in range(tries):  # the sound server can also glitch (an xrun, no clear peak): retry
        result = measure_bridge_delay(sink, video_ms)
        attempts.append({k: v for k, v in result.items() if k != "stats"})
        if result["clean"]:
            clean.append(result)
            if len(clean) == wanted:
                break
    if len(clean) < wanted:
        pytest.fail(f"only {len(clean)} clean measurements in {tries} attempts: {attempts}")
    return sorted(clean, key=lambda r: r["measured_ms"])[wanted // 2], attempts


@pytest.mark.parametrize("video_ms", [80.0, 120.0, 200.0])
def test_real_server_delay_equals_the_video_latency(null_sink, video_ms):
    """The mic→virtual-mic delay, measured through PulseAudio, is the engine's latency ± 10 ms."""
    result, attempts = median_measurement(null_sink, video_ms)
    assert result["measured_ms"] == pytest.approx(video_ms, abs=10.0), attempts
    # What the bridge reports (for `realtime bench` and the overlay) is what was measured.
    assert result["reported_ms"] == pytest.approx(result["measured_ms"], abs=10.0), attempts


def test_real_server_shortest_delay_is_about_50_ms(null_sink):
    """Asked for no delay at all, the path gives its floor: ~50 ms with 10 ms blocks (it was
    ~100 ms with 20 ms blocks; ``benchmarks/audio_floor.py``), and the bridge knows it."""
    result, attempts = median_measurement(null_sink, 0.0)
    assert result["stats"]["blocksize"] == 480
    assert 20.0 < result["measured_ms"] <= 75.0, attempts
    assert result["reported_ms"] == pytest.approx(result["measured_ms"], abs=10.0), attempts
    assert result["stats"]["min_delay_ms"] == pytest.approx(result["measured_ms"], abs=10.0), attempts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities: Linux")
def test_audio_threads_inherit_the_raised_priority_and_the_caller_gets_its_own_back():
    tid = threading.get_native_id()
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid))
    seen: dict[str, int] = {}

    def child() -> None:
        seen["policy"] = os.sched_getscheduler(0)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with audio_thread_priority() as raised:
        thread = threading.Thread(target=child)  # as PortAudio's and libpulse's threads are
        thread.start()
        thread.join()
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid)) == before
    if raised.startswith("SCHED_RR"):
        assert seen["policy"] == os.SCHED_RR
    elif raised.startswith("nice"):
        assert seen["nice"] < before[1]
    else:  # not allowed here: nothing changed
        assert (seen["policy"], seen["nice"]) == before


@pytest.mark.parametrize("kind", [AudioBridge, AudioBridgeProcess])
def test_a_vanished_device_stops_audio_with_one_line_and_nothing_raises(pulse, caplog, kind):
    proc = _pactl("load-module", "module-null-sink", f"sink_name=rt_vanish_{os.getpid()}", "rate=48000")
    module = proc.stdout.strip()
    bridge = kind("pulse:vsink.monitor", f"pulse:rt_vanish_{os.getpid()}")
    with caplog.at_level(logging.ERROR, logger="realtime.audio"):
        bridge.start()
        try:
            wait_flowing(
                lambda: bridge.stats()["output_blocks"], tick=lambda: bridge.set_video_latency_ms(60.0)
            )
            _pactl("unload-module", module)
            t0 = time.monotonic()
            while bridge.failed is None and time.monotonic() - t0 < 5.0:
                bridge.set_video_latency_ms(60.0)  # the engine goes on calling: must never raise
                time.sleep(0.05)
        finally:
            bridge.close()
    assert bridge.failed and "is gone" in bridge.failed
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "video keeps running" in errors[0], errors


def test_unknown_pulse_sink_is_a_clear_error(pulse):
    with pytest.raises(AudioUnavailable, match="PulseAudio has no sink 'no_such_sink'; sinks here: .*vsink"):
        AudioBridge("pulse:vsink.monitor", "pulse:no_such_sink").start()


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    return write_astronaut_clip(tmp_path_factory.mktemp("clip") / "driver.mp4", 25)


def test_run_with_a_broken_audio_device_keeps_the_video_running(tmp_path, short_clip):
    metrics = tmp_path / "m.json"
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        str(short_clip),
        "--loop",
        "--sink",
        "null",
        "--seconds",
        "2",
        "--metrics-json",
        str(metrics),
        "--audio-in",
        "no such mic 987",
        "--audio-out",
        "no such out 987",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "video keeps running" in lines[0] and "Traceback" not in proc.stderr, (
        proc.stderr
    )
    data = json.loads(metrics.read_text())
    assert data["frames"] > 10 and "audio" not in data


def test_run_needs_both_audio_devices():
    proc = cli("run", "--avatar", "builtin", "--audio-in", "default")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("realtime: error:") and "--audio-out" in proc.stderr


def test_run_with_real_audio_devices_reports_the_audio_path(tmp_path, short_clip, null_sink):
    metrics = tmp_path / "m.json"
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        str(short_clip),
        "--loop",
        "--sink",
        "null",
        "--seconds",
        "4",
        "--metrics-json",
        str(metrics),
        "--audio-in",
        "pulse:vsink.monitor",
        "--audio-out",
        f"pulse:{null_sink}",
        "--audio-offset-ms",
        "15",
    )
    assert proc.returncode == 0, proc.stderr
    audio = json.loads(metrics.read_text())["audio"]
    assert audio["failed"] is None and audio["output_blocks"] > 50
    assert audio["offset_ms"] == 15.0 and audio["audio_delay_ms"] is not None
    assert audio["video_latency_ms"] is not None and audio["av_offset_ms"] is not None
    assert "audio delay" in proc.stdout and "A/V offset" in proc.stdout


# --------------------------------------------------------------------------- offline render

FPS = 25
FLASH = 40  # the frame with the white flash; the beep starts exactly when it is shown


def make_clip(path: Path, video_starts_at: float = 0.0) -> None:
    """3 s of the built-in driver, a white frame at FLASH and a 1 kHz beep starting with it.

    ``video_starts_at`` > 0 starts the video stream that much after the audio (as phone
    recordings do); the beep still coincides with the flash.
    """
    import imageio_ffmpeg

    from realtime.sources import BuiltinDriverSource

    source = BuiltinDriverSource(320, 240, FPS, seconds=3, paced=False, loop=False)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame.image)
    frames[FLASH] = np.full_like(frames[FLASH], 255)
    audio = np.zeros(int(SR * 3.5), np.float32)
    onset = int(round((FLASH / FPS + video_starts_at) * SR))
    audio[onset : onset + SR // 10] = sine(SR // 10, 1000.0, 0.5)
    wav = path.with_suffix(".wav")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        "320x240",
        "-framerate",
        str(FPS),
    ]
    if video_starts_at:
        cmd += ["-itsoffset", str(video_starts_at)]
    cmd += [
        "-i",
        "pipe:0",
        "-i",
        str(wav),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        str(path),
    ]
    subprocess.run(cmd, input=np.stack(frames).tobytes(), check=True, timeout=60)


def beep_time(path: Path) -> float:
    """The beep's onset in seconds from the first video frame, on the file's own timeline."""
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    info = subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-i",
            str(path),
            "-vf",
            "showinfo",
            "-frames:v",
            "1",
            "-an",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr
    first_frame = float(re.search(r"pts_time:([-\d.]+)", info).group(1))
    # Audio with any leading gap filled with silence, so sample 0 is the file's time 0.
    raw = subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            str(path),
            "-map",
            "0:a",
            "-af",
            "aresample=async=1:first_pts=0",
            "-ac",
            "1",
            "-ar",
            str(SR),
            "-f",
            "f32le",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    audio = np.frombuffer(raw, np.float32)
    return int(np.argmax(np.abs(audio) > 0.1)) / SR - first_frame


def flash_time(path: Path) -> float:
    """When the white frame is shown, from the first video frame (decoded with timestamps)."""
    import imageio_ffmpeg

    info = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-i",
            str(path),
            "-vf",
            "signalstats,metadata=print:key=lavfi.signalstats.YAVG",
            "-an",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr
    times = [float(t) for t in re.findall(r"pts_time:([-\d.]+)", info)]
    yavg = [float(v) for v in re.findall(r"YAVG=([\d.]+)", info)]
    return times[int(np.argmax(yavg))] - times[0]


@pytest.mark.parametrize("video_starts_at", [0.0, 0.2])
def test_render_keeps_the_driver_audio_aligned_with_the_video(tmp_path, video_starts_at):
    driver = tmp_path / "driver.mp4"
    make_clip(driver, video_starts_at)
    beep = beep_time(driver)
    assert beep == pytest.approx(FLASH / FPS, abs=0.005)  # the clip itself is right
    assert flash_time(driver) == pytest.approx(FLASH / FPS, abs=0.001)
    assert video_start_offset_s(driver) == pytest.approx(video_starts_at, abs=0.001)
    out = tmp_path / "out.mp4"
    proc = cli(
        "render", "--avatar", "builtin", "--driver", str(driver), "--out", str(out), "--generator", "warp"
    )
    assert proc.returncode == 0, proc.stderr
    beep = beep_time(out)
    # The output's frame FLASH (the driver's flash frame, rendered) is at FLASH / FPS.
    assert beep == pytest.approx(FLASH / FPS, abs=1.0 / FPS), (
        f"beep at {beep:.3f} s, frame {FLASH} at {FLASH / FPS} s"
    )
