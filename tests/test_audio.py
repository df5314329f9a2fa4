"""Audio A/V sync: the bridge's clock mapping on simulated streams, its failure modes without
devices, its reports, and the engine's latency hook."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from realtime.audio import (
    AudioBridge,
    format_audio_summary,
    start_bridge,
    virtual_mic_setup,
)
from tests.test_audio_delay import BLOCK, SR, max_step, sine

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
    bridge._flow.started_at = 1.0
    bridge._streams.input = object()  # as if open; no callbacks arrive
    with caplog.at_level(logging.ERROR, logger="realtime.audio"):
        for t in np.arange(1.0, 10.0, 0.1):
            holder[0] = float(t)
            bridge.set_video_latency_ms(50.0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "video keeps running" in errors[0].getMessage()
    assert bridge.stalled
    bridge._streams.input = None


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
    from realtime.loop import Engine
    from realtime.metrics import Metrics
    from realtime.pipeline import FrameProcessor
    from realtime.sinks import NullSink
    from realtime.sources import BuiltinDriverSource
    from realtime.stages import SourceBase
    from realtime.tracking import FaceTracker

    driver = BuiltinDriverSource(320, 240, 25.0, seconds=1.0, paced=False, loop=False)
    images = []
    while (frame := driver.read()) is not None:
        images.append(frame.image)

    class Paced(SourceBase):
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
