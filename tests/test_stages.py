"""The stage contract: one lifecycle, opened and closed by the engine in order; time from its clock;
stage times riding on the record they measure."""

from __future__ import annotations

import time

import numpy as np
import pytest

from realtime.controls import Controls
from realtime.frames import FaceTrack, Frame, Mode, Output
from realtime.generators.registry import build_generators
from realtime.loop import Engine, MonotonicClock, render_offline
from realtime.metrics import Metrics
from realtime.pipeline import FrameProcessor
from realtime.retarget import SwapTargeter
from realtime.stages import Blender, Generator, Sink, SinkBase, Source, SourceBase, Stage, Targeter, Tracker

FPS = 30.0


class CountingSource(SourceBase):
    """``frames`` copies of one image, stamped with the given clock; logs its lifecycle."""

    def __init__(self, image: np.ndarray, frames: int, log: list[str], clock=time.monotonic, paced=True):
        self.image, self.frames, self.log, self.clock, self.paced = image, frames, log, clock, paced
        self.fps = FPS
        self.index = 0

    def open(self) -> CountingSource:
        self.log.append("open source")
        return self

    def close(self) -> None:
        self.log.append("close source")

    def read(self) -> Frame | None:
        if self.index >= self.frames:
            return None
        if self.paced:
            time.sleep(1.0 / FPS)
        frame = Frame(self.image, self.index, self.clock())
        self.index += 1
        return frame


class SleepyTracker(Stage):
    """Finds no face, after a pause that depends on the frame: ``index % 4`` times 8 ms."""

    def __init__(self, log: list[str]):
        self.log = log

    def open(self) -> SleepyTracker:
        self.log.append("open tracker")
        return self

    def close(self) -> None:
        self.log.append("close tracker")

    def process(self, frame: Frame) -> FaceTrack:
        time.sleep(0.008 * (frame.index % 4))
        return FaceTrack(frame=frame, landmarks=None, lost_for_s=float("inf"))


class LoggingSink(SinkBase):
    def __init__(self, name: str, log: list[str], fail_open: bool = False):
        self.name, self.log, self.fail_open = name, log, fail_open
        self.outputs: list[Output] = []

    def open(self, width: int, height: int, fps: float) -> None:
        if self.fail_open:
            raise RuntimeError(f"{self.name} is unplugged")
        self.log.append(f"open {self.name}")

    def send(self, out: Output) -> None:
        self.outputs.append(out)

    def close(self) -> None:
        self.log.append(f"close {self.name}")

    def abort(self) -> None:
        self.log.append(f"abort {self.name}")


def processor_with(avatar, tracker: Tracker) -> FrameProcessor:
    return FrameProcessor(
        avatar, build_generators("warp", avatar), tracker, Controls(), Metrics(), avatar.size
    )


def test_every_shipped_stage_follows_its_protocol(builtin_avatar, tmp_path):
    from realtime.blend import Blender as BlendStage
    from realtime.retarget import Retargeter
    from realtime.sinks import FileSink, NullSink, VirtualCamSink, WindowSink
    from realtime.sources import BuiltinDriverSource, ImageSource
    from realtime.tracking import FaceTracker

    assert isinstance(ImageSource(builtin_avatar.image, frames=1), Source)
    assert isinstance(BuiltinDriverSource(160, 120, seconds=0.1), Source)
    assert isinstance(FaceTracker(), Tracker)
    assert isinstance(Retargeter(builtin_avatar.landmarks), Targeter) and isinstance(SwapTargeter(), Targeter)
    assert isinstance(BlendStage(), Blender)
    for generator in build_generators("warp", builtin_avatar).by_mode.values():
        assert isinstance(generator, Generator)
    for sink in (NullSink(), FileSink(tmp_path / "x.mp4"), VirtualCamSink(), WindowSink()):
        assert isinstance(sink, Sink)


def test_the_engine_opens_every_stage_in_order_and_closes_them_in_reverse(builtin_avatar):
    log: list[str] = []
    source = CountingSource(builtin_avatar.image, 5, log)
    processor = processor_with(builtin_avatar, SleepyTracker(log))
    sinks = [LoggingSink("first", log), LoggingSink("second", log)]
    Engine(source, processor, sinks, fps=FPS, budget_ms=1000.0).run(seconds=5.0)
    assert log == [
        "open source",
        "open tracker",
        "open first",
        "open second",
        "close second",
        "close first",
        "close tracker",
        "close source",
    ]


def test_a_sink_that_cannot_open_aborts_the_opened_ones_and_closes_the_rest(builtin_avatar):
    log: list[str] = []
    source = CountingSource(builtin_avatar.image, 5, log)
    processor = processor_with(builtin_avatar, SleepyTracker(log))
    sinks = [LoggingSink("first", log), LoggingSink("broken", log, fail_open=True)]
    with pytest.raises(RuntimeError, match="unplugged"):
        Engine(source, processor, sinks, fps=FPS).run(seconds=5.0)
    # Nothing half-made is left: the file that did open is aborted, not finished.
    assert log == [
        "open source",
        "open tracker",
        "open first",
        "abort first",
        "close tracker",
        "close source",
    ]


class SkewedClock(MonotonicClock):
    """The real clock, one second ahead of the one the source stamps frames with."""

    def now(self) -> float:
        return time.monotonic() + 1.0


def test_the_engine_reads_time_only_from_its_clock(builtin_avatar):
    log: list[str] = []
    frames = 20
    source = CountingSource(builtin_avatar.image, frames, log)
    processor = processor_with(builtin_avatar, SleepyTracker(log))
    sink = LoggingSink("sink", log)
    engine = Engine(source, processor, [sink], fps=FPS, budget_ms=500.0, clock=SkewedClock())
    summary = engine.run(seconds=10.0)
    # By the engine's clock every frame is a second old, past the budget: none reaches the sink.
    assert all(out.index == -1 for out in sink.outputs)
    assert summary["dropped"] == frames
    # The same run on the real clock delivers them.
    log.clear()
    source = CountingSource(builtin_avatar.image, frames, log)
    sink = LoggingSink("sink", log)
    Engine(source, processor_with(builtin_avatar, SleepyTracker(log)), [sink], fps=FPS, budget_ms=500.0).run(
        seconds=10.0
    )
    assert len({out.index for out in sink.outputs if out.index >= 0}) >= frames // 2


class RecordingClock(MonotonicClock):
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)  # simulated: the hold costs no real time


def test_holding_frames_for_the_audio_floor_waits_on_the_engines_clock(builtin_avatar):
    log: list[str] = []
    clock = RecordingClock()
    source = CountingSource(builtin_avatar.image, 10, log)
    processor = processor_with(builtin_avatar, SleepyTracker(log))
    engine = Engine(
        source,
        processor,
        [LoggingSink("sink", log)],
        fps=FPS,
        budget_ms=2000.0,
        min_latency_ms=lambda: 400.0,
        clock=clock,
    )
    summary = engine.run(seconds=10.0)
    assert summary["frames"] >= 1
    # Each new frame was held until 400 ms old: hundreds of ms asked of the clock, none slept for real.
    assert clock.sleeps and all(0.2 < s <= 0.4 for s in clock.sleeps)
    assert summary["latency_ms"]["p50"] < 300.0


@pytest.mark.parametrize("pipeline", ["serial", "parallel"])
def test_each_output_carries_its_own_frames_stage_times(builtin_avatar, pipeline):
    log: list[str] = []
    source = CountingSource(builtin_avatar.image, 24, log)
    processor = processor_with(builtin_avatar, SleepyTracker(log))
    sink = LoggingSink("sink", log)
    Engine(source, processor, [sink], fps=FPS, budget_ms=1000.0, pipeline=pipeline).run(seconds=10.0)
    new = {out.index: out for out in sink.outputs if out.index >= 0}
    assert len(new) >= 8
    for index, out in new.items():
        expected = 8.0 * (index % 4)
        assert expected <= out.stage_ms["track"] < expected + 25.0, (index, out.stage_ms)
        assert set(out.stage_ms) >= {"track", "retarget", "generate", "blend"}


def test_render_offline_opens_and_closes_the_same_way(builtin_avatar):
    log: list[str] = []
    source = CountingSource(builtin_avatar.image, 3, log, paced=False)
    sink = LoggingSink("file", log)
    summary = render_offline(source, processor_with(builtin_avatar, SleepyTracker(log)), [sink], FPS, False)
    assert summary["frames"] == 3 and [out.index for out in sink.outputs] == [0, 1, 2]
    assert log == ["open file", "open source", "open tracker", "close tracker", "close source", "close file"]


def test_modes_are_an_enum_that_still_reads_as_its_name():
    controls = Controls("swap")
    assert controls.mode is Mode.SWAP and str(controls.mode) == "swap"
    assert controls.toggle_mode() is Mode.REENACT
    with pytest.raises(ValueError):
        Controls("morph")


def test_swap_targeting_holds_a_briefly_lost_face_then_lets_go(builtin_avatar):
    targeter = SwapTargeter()
    image = builtin_avatar.image
    landmarks = builtin_avatar.landmarks.astype(np.float32)
    seen = targeter.process(FaceTrack(Frame(image, 0, 10.0), landmarks))
    assert seen is not None and seen.mode is Mode.SWAP and seen.driver_landmarks is not None
    held = targeter.process(FaceTrack(Frame(image, 1, 10.5), None, lost_for_s=0.5))
    assert held is not None and not held.face_found and held.driver_landmarks is None
    np.testing.assert_array_equal(held.landmarks, seen.landmarks)
    limit = targeter.limits.hold_s + targeter.limits.ease_s
    assert targeter.process(FaceTrack(Frame(image, 2, 10.0 + limit + 0.1), None)) is None
