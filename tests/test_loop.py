"""The live engine and offline render on real components: mediapipe tracker, warp, ffmpeg.

Timing is asserted only structurally, with margins a busy 2-core machine keeps: no frame
older than the budget reaches a sink, the sinks never wait several frame intervals,
and counts (drops, errors, retries, frames written).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from realtime.blend import Blender
from realtime.controls import Controls
from realtime.frames import Frame, Mode, Output
from realtime.generators.registry import Generators, build_generators
from realtime.loop import Engine, LatestSlot, render_offline
from realtime.metrics import Metrics
from realtime.pipeline import FrameProcessor
from realtime.sinks import FileSink
from realtime.sources import BuiltinDriverSource, VideoFileSource
from realtime.stages import SinkBase, SourceBase, Stage
from realtime.tracking import FaceTracker

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"

FPS = 30.0
INTERVAL = 1.0 / FPS
# A sink must never wait this long for its next frame (new or repeated): 3 frame intervals.
MAX_GAP = 3 * INTERVAL
# Tests about failures, not latency, use a loose budget: on a loaded machine they still see frames.
LOOSE_BUDGET_MS = 500.0


# --------------------------------------------------------------------------- helpers


class FramesSource(SourceBase):
    """Pre-rendered driver frames, delivered like a camera: paced at ``fps``, stamped on read."""

    def __init__(self, images: list[np.ndarray], fps: float = FPS, paced: bool = True, loop: bool = True):
        self.images, self.fps, self.paced, self.loop = images, fps, paced, loop
        self.index = 0
        self._start: float | None = None
        self.closed = False

    def _pace(self) -> None:
        if not self.paced:
            return
        if self._start is None:
            self._start = time.monotonic()
        delay = self._start + self.index / self.fps - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def read(self) -> Frame | None:
        if not self.loop and self.index >= len(self.images):
            return None
        self._pace()
        frame = Frame(
            image=self.images[self.index % len(self.images)], index=self.index, t_capture=time.monotonic()
        )
        self.index += 1
        return frame

    def close(self) -> None:
        self.closed = True


class StallingSource(FramesSource):
    """Hangs for ``stall_s`` once, after ``stall_after`` frames (a USB camera hiccup)."""

    def __init__(self, images, stall_after: int, stall_s: float):
        super().__init__(images)
        self.stall_after, self.stall_s = stall_after, stall_s
        self.stall_started: float | None = None
        self.stall_ended: float | None = None

    def read(self) -> Frame | None:
        if self.index == self.stall_after and self.stall_started is None:
            self.stall_started = time.monotonic()
            time.sleep(self.stall_s)
            self.stall_ended = time.monotonic()
            self._start = time.monotonic() - self.index / self.fps  # then at pace again, no burst
        return super().read()


class FailingSource(FramesSource):
    """``read`` raises after ``fail_after`` frames, until ``reopen`` (if the class has one)."""

    def __init__(self, images, fail_after: int):
        super().__init__(images)
        self.fail_after = fail_after
        self.broken = False
        self.failures = 0
        self.first_failure: float | None = None

    def read(self) -> Frame | None:
        if self.index >= self.fail_after and self.failures == 0:
            self.broken = True
        if self.broken:
            self.failures += 1
            self.first_failure = self.first_failure or time.monotonic()
            raise RuntimeError("camera unplugged")
        return super().read()


class ReopenableSource(FailingSource):
    def __init__(self, images, fail_after: int):
        super().__init__(images, fail_after)
        self.reopens = 0

    def reopen(self) -> None:
        self.reopens += 1
        self.broken = False
        self._start = time.monotonic() - self.index / self.fps


class RecordingSink(SinkBase):
    """Stores (monotonic time at send, out.t_capture, out.index) for every frame sent."""

    def __init__(self, name: str = "rec", keep_images: bool = False):
        self.name = name
        self.keep_images = keep_images
        self.sent: list[tuple[float, float, int]] = []
        self.images: list[np.ndarray] = []
        self.outputs: list[Output] = []
        self.opens = 0
        self.closes = 0
        self.size: tuple[int, int] | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        self.opens += 1
        self.size = (width, height)

    def send(self, out: Output) -> None:
        self.sent.append((time.monotonic(), out.t_capture, out.index))
        if self.keep_images:
            self.outputs.append(out)

    def close(self) -> None:
        self.closes += 1

    def new_frames(self) -> list[tuple[float, float, int]]:
        """Sends of frames not sent before (a repeat re-sends the previous Output)."""
        seen: set[int] = set()
        new = []
        for record in self.sent:
            if record[2] >= 0 and record[2] not in seen:
                seen.add(record[2])
                new.append(record)
        return new

    def max_gap(self) -> float:
        times = np.array([t for t, _, _ in self.sent])
        return float(np.diff(times).max())


class FlakySink(RecordingSink):
    """``send`` raises on the given calls (1-based), works otherwise."""

    def __init__(self, name: str, fail_calls: set[int]):
        super().__init__(name)
        self.fail_calls = fail_calls
        self.calls = 0

    def send(self, out: Output) -> None:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise RuntimeError("device went away")
        super().send(out)


class SlowGenerator(Stage):
    """The real warp, but every ``every``-th frame takes ``delay_s`` longer."""

    name = "slow"

    def __init__(self, warp, every: int, delay_s: float):
        self.warp, self.every, self.delay_s = warp, every, delay_s
        self.slow_indexes: set[int] = set()

    def render(self, target):
        if target.frame.index % self.every == 0:
            self.slow_indexes.add(target.frame.index)
            time.sleep(self.delay_s)
        return self.warp.render(target)


class ThreadCountingGenerator(Stage):
    """The real warp of one mode, noting OpenCV's worker-thread count as each frame is drawn;
    ``then`` is called once, after ``frames`` frames."""

    def __init__(self, warp, name: str, frames: int = 0, then=None):
        self.warp, self.name, self.frames, self.then = warp, name, frames, then
        self.threads: list[int] = []

    def render(self, target):
        self.threads.append(cv2.getNumThreads())
        if self.then is not None and len(self.threads) == self.frames:
            self.then()
        return self.warp.render(target)


class FlakyGenerator(Stage):
    """A 'learned' generator (the warp, inverted, so its output is recognisable) that raises on some frames."""

    name = "flaky"

    def __init__(self, warp, fail_on: set[int]):
        self.warp, self.fail_on = warp, fail_on
        self.targets: dict[int, object] = {}

    def render(self, target):
        self.targets[target.frame.index] = target
        if target.frame.index in self.fail_on:
            raise RuntimeError(f"CUDA error on frame {target.frame.index}")
        rendered = self.warp.render(target)
        return replace(rendered, patch=255 - rendered.patch)


@pytest.fixture
def make_processor():
    """Build processors like the CLI does (live: mediapipe in its own process); closed after the test."""
    made: list[FrameProcessor] = []

    def make(avatar, generators: Generators | None = None, live: bool = False) -> FrameProcessor:
        generators = generators or build_generators("warp", avatar)
        tracker = FaceTracker(isolated=live)
        made.append(FrameProcessor(avatar, generators, tracker, Controls(), Metrics(), avatar.size))
        return made[-1]

    yield make
    for processor in made:
        processor.close()


def warps(avatar) -> Generators:
    return build_generators("warp", avatar)


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.fixture(scope="module")
def driver_frames() -> list[np.ndarray]:
    """Two seconds of the built-in talking face at 640x480, rendered once."""
    source = BuiltinDriverSource(640, 480, FPS, seconds=2.0, paced=False, loop=False)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame.image)
    return frames


@pytest.fixture
def loop_logs(caplog):
    caplog.set_level(logging.INFO, logger="realtime.loop")
    return caplog


# --------------------------------------------------------------------------- LatestSlot


def test_latest_slot_keeps_only_the_newest_and_counts_overwrites():
    slot = LatestSlot()
    assert slot.get(timeout=0.01) is None
    for i in range(5):
        slot.put(i)
    assert slot.overwritten == 4
    assert slot.get(timeout=0.01) == 4
    assert slot.get(timeout=0.01) is None  # taken, nothing older left behind
    slot.put("a")
    assert slot.overwritten == 4  # the slot was empty: nothing overwritten
    assert slot.get() == "a"


def test_latest_slot_reports_each_overwrite():
    skipped: list[int] = []
    slot = LatestSlot(on_overwrite=lambda: skipped.append(1))
    slot.put(1)
    slot.put(2)
    slot.put(3)
    assert slot.get(timeout=0.01) == 3
    slot.put(4)
    assert len(skipped) == slot.overwritten == 2


def test_latest_slot_close_drains_then_reports_closed():
    slot = LatestSlot()
    slot.put("last")
    slot.close()
    assert not slot.closed  # closed, but an item still waits
    assert slot.get(timeout=5) == "last"
    assert slot.closed
    t0 = time.monotonic()
    assert slot.get(timeout=5) is None  # closed and empty: returns at once
    assert time.monotonic() - t0 < 1.0


def test_latest_slot_close_wakes_a_blocked_reader():
    slot = LatestSlot()
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(slot.get(timeout=30)))
    reader.start()
    time.sleep(0.05)
    slot.close()
    reader.join(timeout=5)
    assert not reader.is_alive() and got == [None]


def test_latest_slot_under_a_fast_producer_never_goes_back_in_time():
    slot = LatestSlot()
    n = 20000
    received: list[int] = []

    def consume():
        while True:
            item = slot.get(timeout=1)
            if item is None:
                if slot.closed:
                    return
                continue
            received.append(item)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for i in range(n):
        slot.put(i)
    slot.close()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    assert received[-1] == n - 1  # the newest item is always delivered
    assert all(a < b for a, b in pairwise(received))  # strictly newer each time
    assert len(received) + slot.overwritten == n  # every item was either taken or replaced


# --------------------------------------------------------------------------- live engine


def test_frames_older_than_the_budget_never_reach_the_sink(builtin_avatar, driver_frames, make_processor):
    base = warps(builtin_avatar)
    # Every 3rd render takes 160 ms more, well past the budget. The budget itself leaves room
    # for normal frames, which on a loaded 2-core machine (tracker in its own process) are
    # 20-90 ms old: a tighter one would drop nearly all of them and prove nothing.
    slow = SlowGenerator(base.by_mode["reenact"], every=3, delay_s=0.16)
    processor = make_processor(
        builtin_avatar, Generators(by_mode={"reenact": slow}, fallback=base.fallback), live=True
    )
    sink = RecordingSink()
    budget_ms = 100.0
    engine = Engine(FramesSource(driver_frames), processor, [sink], fps=FPS, budget_ms=budget_ms)
    summary = engine.run(seconds=3.0)

    new = sink.new_frames()
    assert len(slow.slow_indexes) >= 5  # the slow path really ran
    assert len(new) >= 5, summary  # (about 20 on an idle machine)
    # No frame older than the budget was sent. The check runs just before the send; the
    # slack covers the send itself and a thread switch on a busy machine. It is far below
    # the slow renders' age (> 160 ms), which must all be dropped.
    ages = [(t_send - t_capture) * 1000.0 for t_send, t_capture, _ in new]
    assert max(ages) <= budget_ms + 15.0, sorted(ages)[-5:]
    assert not slow.slow_indexes & {index for _, _, index in new}
    # Each slow frame was dropped as late at the sink, unless a newer frame replaced it
    # first or the run ended with it in flight.
    late = summary["dropped_by_reason"].get("late_at_sink", 0)
    assert late > 0 and summary["dropped"] >= late
    # every drop is timed: the slow frames of the first second, and those after it
    assert 0 < summary["dropped_in_first_second"] < summary["dropped"], summary
    assert late + summary["overwritten"]["render"] + 1 >= len(slow.slow_indexes), summary
    # The sink kept its pace with repeats while frames were dropped.
    assert summary["repeats"] > 0
    assert sink.max_gap() < MAX_GAP, sink.max_gap()
    assert len(sink.sent) == summary["frames"] + summary["repeats"]


def test_auto_pipeline_renders_in_the_track_thread_while_the_work_fits(
    builtin_avatar, driver_frames, make_processor
):
    # 10 fps leaves 100 ms per frame: tracking plus the warp take well under 60 ms even on a
    # loaded machine, so every frame is rendered serially (nothing waits in a hand-off).
    processor = make_processor(builtin_avatar, live=True)
    sink = RecordingSink()
    engine = Engine(FramesSource(driver_frames, fps=10.0), processor, [sink], fps=10.0)
    summary = engine.run(seconds=2.5)
    frames = summary["pipeline"]["frames"]
    assert summary["pipeline"]["mode"] == "auto"
    assert frames["serial"] >= 10 and frames["parallel"] == 0, summary["pipeline"]
    assert summary["frames"] >= 10


def test_auto_pipeline_overlaps_stages_when_rendering_outgrows_the_interval(
    builtin_avatar, driver_frames, make_processor
):
    # Every render takes 40 ms more: tracking + rendering no longer fit in 33 ms, so the
    # engine hands frames to the render thread and tracks the next one meanwhile.
    base = warps(builtin_avatar)
    slow = SlowGenerator(base.by_mode["reenact"], every=1, delay_s=0.04)
    processor = make_processor(
        builtin_avatar, Generators(by_mode={"reenact": slow}, fallback=base.fallback), live=True
    )
    sink = RecordingSink()
    engine = Engine(FramesSource(driver_frames), processor, [sink], fps=FPS, budget_ms=LOOSE_BUDGET_MS)
    summary = engine.run(seconds=3.0)
    frames = summary["pipeline"]["frames"]
    assert frames["parallel"] > frames["serial"], summary["pipeline"]
    # Shown frames still only move forward in time.
    captures = [t_capture for _, t_capture, index in sink.new_frames()]
    assert all(a < b for a, b in pairwise(captures))


def test_opencv_workers_serve_swap_frames_only_and_are_given_back(
    builtin_avatar, driver_frames, make_processor
):
    base = warps(builtin_avatar)
    drawn = {
        # after ten reenact frames, the user switches to swap mode
        Mode.REENACT: ThreadCountingGenerator(
            base.by_mode[Mode.REENACT], "reenact", 10, lambda: processor.controls.toggle_mode()
        ),
        Mode.SWAP: ThreadCountingGenerator(base.by_mode[Mode.SWAP], "swap"),
    }
    processor = make_processor(builtin_avatar, Generators(by_mode=drawn, fallback=base.fallback), live=True)
    engine = Engine(
        FramesSource(driver_frames), processor, [RecordingSink()], fps=FPS, budget_ms=LOOSE_BUDGET_MS
    )
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)  # as on a two-core machine, whatever this one has
    try:
        engine.run(seconds=2.5)
        after = cv2.getNumThreads()
    finally:
        cv2.setNumThreads(before)
    reenact, swap = drawn[Mode.REENACT].threads, drawn[Mode.SWAP].threads
    assert len(reenact) >= 10 and len(swap) >= 5, (len(reenact), len(swap))
    assert set(reenact) == {1} and set(swap) == {2}
    assert after == 2


def test_a_slow_first_frame_does_not_keep_the_pipeline_parallel(
    builtin_avatar, driver_frames, make_processor
):
    # The first render takes 150 ms more (a stream's first frame is its slowest); every later
    # frame fits (10 fps: 100 ms each), so the stream stays serial. A cost average seeded by that
    # one frame went parallel and took ~10 frames to forget it.
    base = warps(builtin_avatar)
    slow = SlowGenerator(base.by_mode["reenact"], every=10**6, delay_s=0.15)
    processor = make_processor(
        builtin_avatar, Generators(by_mode={"reenact": slow}, fallback=base.fallback), live=True
    )
    engine = Engine(FramesSource(driver_frames, fps=10.0), processor, [RecordingSink()], fps=10.0)
    summary = engine.run(seconds=3.0)
    frames = summary["pipeline"]["frames"]
    assert slow.slow_indexes == {0}
    assert frames["parallel"] <= 5 and frames["serial"] >= 18, frames


class FirstCallSlowGenerator(Stage):
    """The real warp, but its first render ever takes ``delay_s`` longer (as a compositor's first
    estimates and a detector's first run do)."""

    name = "first-slow"

    def __init__(self, warp, delay_s: float):
        self.warp, self.delay_s, self.calls = warp, delay_s, 0

    def render(self, target):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.delay_s)
        return self.warp.render(target)


class PreviewFramesSource(FramesSource):
    """Frames that, like a camera or a file once open, show what their first frame will be."""

    def preview(self):
        return self.images[0]


def test_the_engine_warms_up_on_the_sources_preview_so_a_slow_first_frame_drops_nothing(
    builtin_avatar, driver_frames, make_processor
):
    summaries = {}
    for name, source_kind in (("cold", FramesSource), ("warm", PreviewFramesSource)):
        base = warps(builtin_avatar)
        slow = FirstCallSlowGenerator(base.by_mode["reenact"], delay_s=0.2)
        processor = make_processor(
            builtin_avatar, Generators(by_mode={"reenact": slow}, fallback=base.fallback), live=True
        )
        engine = Engine(source_kind(driver_frames), processor, [RecordingSink()], fps=FPS)
        summaries[name] = engine.run(seconds=2.0)
    cold, warm = summaries["cold"], summaries["warm"]
    # Cold, the 200-ms first frame costs the frames captured meanwhile.
    assert cold["warm_up_ms"] is None and cold["dropped_in_first_second"] >= 4, cold
    # Warm, it was spent before the stream's clock started, and outside its metrics.
    assert warm["warm_up_ms"] >= 200.0
    assert warm["dropped_in_first_second"] <= cold["dropped_in_first_second"] - 3, warm
    assert warm["stages"]["generate"]["max"] < 150.0


def test_unpaced_sources_always_run_in_parallel(builtin_avatar, driver_frames, make_processor):
    processor = make_processor(builtin_avatar, live=True)
    engine = Engine(FramesSource(driver_frames, paced=False), processor, [RecordingSink()], fps=FPS)
    summary = engine.run(seconds=1.5)
    assert summary["pipeline"]["frames"]["serial"] == 0
    assert summary["pipeline"]["frames"]["parallel"] > 0


def test_unknown_pipeline_is_refused(builtin_avatar, driver_frames, make_processor):
    with pytest.raises(ValueError, match="pipeline"):
        Engine(FramesSource(driver_frames), make_processor(builtin_avatar), [], fps=FPS, pipeline="fast")


def test_frames_are_held_until_the_audio_floor_when_asked(builtin_avatar, driver_frames, make_processor):
    # --av-sync both: the voice cannot be delayed less than its path's floor, so each new
    # frame waits until it is that old before it is sent (never past the budget).
    processor = make_processor(builtin_avatar, live=True)
    sink = RecordingSink()
    floor_ms = 55.0
    engine = Engine(
        FramesSource(driver_frames, fps=15.0),
        processor,
        [sink],
        fps=15.0,
        budget_ms=LOOSE_BUDGET_MS,
        min_latency_ms=lambda: floor_ms,
    )
    summary = engine.run(seconds=2.5)
    ages = [(t_send - t_capture) * 1000.0 for t_send, t_capture, _ in sink.new_frames()]
    assert len(ages) >= 10, summary
    assert min(ages) >= floor_ms - 1.0, sorted(ages)[:3]
    assert summary["latency_ms"]["p50"] >= floor_ms - 1.0


def test_a_stalled_source_keeps_the_sink_fed_with_repeats(builtin_avatar, driver_frames, make_processor):
    source = StallingSource(driver_frames, stall_after=15, stall_s=1.5)
    sink = RecordingSink()
    engine = Engine(
        source, make_processor(builtin_avatar, live=True), [sink], fps=FPS, budget_ms=LOOSE_BUDGET_MS
    )
    summary = engine.run(seconds=3.0)

    assert source.stall_started is not None and source.stall_ended is not None
    during = [t for t, _, _ in sink.sent if source.stall_started + 0.2 < t < source.stall_ended]
    assert len(during) >= 0.5 * (1.3 / INTERVAL)  # repeats kept coming while the camera hung
    assert sink.max_gap() < MAX_GAP, sink.max_gap()
    after = [index for t, _, index in sink.new_frames() if t > source.stall_ended]
    assert after and min(after) >= 15  # live frames resumed after the stall
    assert summary["duration_s"] >= 2.9 and summary["repeats"] >= len(during)


def test_a_failing_source_is_survived_and_counted(builtin_avatar, driver_frames, loop_logs, make_processor):
    source = FailingSource(driver_frames, fail_after=10)
    sink = RecordingSink()
    engine = Engine(
        source, make_processor(builtin_avatar, live=True), [sink], fps=FPS, budget_ms=LOOSE_BUDGET_MS
    )
    summary = engine.run(seconds=2.5)

    assert source.first_failure is not None
    after = [t for t, _, _ in sink.sent if t > source.first_failure]
    assert len(after) >= 0.5 * (2.0 / INTERVAL)  # the sink kept receiving (repeats)
    assert sink.max_gap() < MAX_GAP, sink.max_gap()
    assert summary["errors"].get("capture", 0) >= 2  # retried with backoff, every failure counted
    assert summary["errors"]["capture"] == source.failures
    assert len(messages(loop_logs, "source read failed")) == 1  # logged once
    assert summary["duration_s"] >= 2.4


def test_a_source_that_reopens_resumes_live_frames(builtin_avatar, driver_frames, loop_logs, make_processor):
    source = ReopenableSource(driver_frames, fail_after=10)
    sink = RecordingSink()
    engine = Engine(
        source, make_processor(builtin_avatar, live=True), [sink], fps=FPS, budget_ms=LOOSE_BUDGET_MS
    )
    summary = engine.run(seconds=2.5)

    assert source.reopens >= 1 and summary["errors"]["capture"] >= 1
    resumed = [t for t, _, index in sink.new_frames() if index >= 10]  # read after the failure
    assert len(resumed) >= 5 and min(resumed) > source.first_failure  # live again after reconnecting
    assert sink.max_gap() < MAX_GAP, sink.max_gap()
    assert messages(loop_logs, "source reconnected")


def test_a_failing_sink_is_retried_while_the_other_gets_every_frame(
    builtin_avatar, driver_frames, loop_logs, make_processor
):
    good = RecordingSink("good")
    flaky = FlakySink("flaky", fail_calls={10, 11})  # fails, fails again on the first retry, recovers
    engine = Engine(
        FramesSource(driver_frames),
        make_processor(builtin_avatar, live=True),
        [good, flaky],
        fps=FPS,
        budget_ms=LOOSE_BUDGET_MS,
    )
    summary = engine.run(seconds=3.0)

    assert len(good.sent) == summary["frames"] + summary["repeats"]  # every emitted frame
    assert good.max_gap() < MAX_GAP, good.max_gap()
    assert flaky.calls > 11 and len(flaky.sent) == flaky.calls - 2
    assert flaky.opens == 3  # opened, then reopened after each failure (with backoff)
    assert flaky.closes == 3  # closed after each failure and at the end
    assert len(flaky.sent) < len(good.sent) - 2  # it missed frames while backing off
    assert summary["errors"] == {"sink:flaky": 2}
    assert len(messages(loop_logs, "sink flaky failed")) == 1
    assert messages(loop_logs, "sink flaky is back")
    assert good.closes == 1


class _FailingOpen(RecordingSink):
    def open(self, width: int, height: int, fps: float) -> None:
        raise RuntimeError("no such device")


def test_a_sink_that_cannot_open_closes_the_ones_already_open(builtin_avatar, driver_frames, make_processor):
    first = RecordingSink("first")
    source = FramesSource(driver_frames)
    engine = Engine(source, make_processor(builtin_avatar), [first, _FailingOpen("broken")], fps=FPS)
    with pytest.raises(RuntimeError, match="no such device"):
        engine.run(seconds=1.0)
    assert first.opens == 1 and first.closes == 1 and source.closed


# --------------------------------------------------------------------------- per-frame path


def test_a_failing_generator_falls_back_to_the_warp_and_logs_once(
    builtin_avatar, driver_frames, loop_logs, make_processor
):
    base = warps(builtin_avatar)
    warp = base.fallback["reenact"]
    fail_on = {5, 6, 7, *range(20, 30)}
    flaky = FlakyGenerator(base.by_mode["reenact"], fail_on)
    processor = make_processor(builtin_avatar, Generators(by_mode={"reenact": flaky}, fallback=base.fallback))
    sink = RecordingSink(keep_images=True)
    summary = render_offline(
        FramesSource(driver_frames[:40], paced=False, loop=False), processor, [sink], FPS, progress=False
    )

    assert [out.index for out in sink.outputs] == list(range(40))  # the stream went on
    blender = Blender()
    for out in sink.outputs:
        target = flaky.targets[out.index]
        if out.index in fail_on:
            expected = blender.process(warp.render(target))  # the warp stood in
        else:
            rendered = warp.render(target)
            expected = blender.process(replace(rendered, patch=255 - rendered.patch))
        assert np.array_equal(out.image, expected), out.index
    assert summary["errors"] == {"generate": len(fail_on)}
    assert len(messages(loop_logs, "generator flaky failed")) == 1


def test_a_failing_generator_without_fallback_repeats_the_previous_output(
    builtin_avatar, driver_frames, make_processor
):
    base = warps(builtin_avatar)
    flaky = FlakyGenerator(base.by_mode["reenact"], {4, 5, 6})
    processor = make_processor(builtin_avatar, Generators(by_mode={"reenact": flaky}))
    sink = RecordingSink(keep_images=True)
    render_offline(
        FramesSource(driver_frames[:10], paced=False, loop=False), processor, [sink], FPS, progress=False
    )
    images = [out.image for out in sink.outputs]
    assert len(images) == 10
    for i in (4, 5, 6):
        assert np.array_equal(images[i], images[3])
    assert not np.array_equal(images[7], images[3])


def test_lost_face_in_reenact_shows_the_avatar_never_the_driver(
    builtin_avatar, driver_frames, make_processor
):
    rng = np.random.default_rng(0)
    shape = driver_frames[0].shape
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    blank = np.full(shape, 128, np.uint8)
    lost = range(20, 80)  # 2 s without a face: noise and a blank wall, alternating
    driver = [driver_frames[i] for i in range(20)]
    driver += [noise if i % 2 else blank for i in lost]
    driver += [driver_frames[i] for i in range(20, 40)]
    processor = make_processor(builtin_avatar)
    sink = RecordingSink(keep_images=True)
    render_offline(FramesSource(driver, paced=False, loop=False), processor, [sink], FPS, progress=False)
    outs = sink.outputs
    assert len(outs) == len(driver)

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())

    neutral = processor.neutral_image()
    assert all(outs[i].face_found for i in range(20)) and not any(outs[i].face_found for i in lost)
    for out, image in zip(outs, driver, strict=True):
        assert diff(out.image, image) > 20.0, out.index  # never the raw driver frame
    # Tracked: the avatar moves away from its neutral pose.
    assert diff(outs[19].image, neutral) > 1.0
    # Lost at frame 20: hold the last pose for 0.4 s, ease to neutral over 0.8 s, stay there.
    last_seen = 19
    hold_end = last_seen + int(0.4 * FPS)  # last frame still held
    settled = last_seen + int((0.4 + 0.8) * FPS) + 1
    for i in range(20, hold_end + 1):
        assert diff(outs[i].image, outs[last_seen].image) < 0.1, i
    easing = [diff(outs[i].image, neutral) for i in range(hold_end, settled)]
    assert all(b <= a + 0.02 for a, b in pairwise(easing)), easing  # a glide, no jump back
    assert 0.2 < easing[len(easing) // 2] < easing[0] - 0.2  # halfway is in between
    for i in range(settled, 80):
        assert diff(outs[i].image, neutral) < 0.1, i
    assert any(outs[i].face_found for i in range(80, len(outs)))  # found again


# --------------------------------------------------------------------------- offline render


def _count_frames(path: Path) -> int:
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return frames


def test_render_offline_writes_exactly_one_frame_per_source_frame(
    builtin_avatar, driver_frames, tmp_path, make_processor
):
    out = tmp_path / "out.mp4"
    sink = FileSink(out)
    summary = render_offline(
        FramesSource(driver_frames[:37], paced=False, loop=False),
        make_processor(builtin_avatar),
        [sink],
        FPS,
        progress=False,
    )
    assert summary["frames"] == summary["captured"] == 37
    assert out.is_file() and not sink.tmp_path.exists()
    assert _count_frames(out) == 37


def test_render_offline_of_a_real_clip_keeps_every_frame(builtin_avatar, tmp_path, make_processor):
    clip = MEDIA / "clips" / "extra_pexels7154235_man_suit.mp4"
    if not clip.exists():
        pytest.skip(f"shared media not available: {clip}")
    source = VideoFileSource(str(clip), paced=False)
    out = tmp_path / "out.mp4"
    summary = render_offline(
        source, make_processor(builtin_avatar), [FileSink(out)], source.fps, progress=False
    )
    source_frames = _count_frames(clip)
    assert source_frames > 20
    assert summary["captured"] == summary["frames"] == source_frames
    assert _count_frames(out) == source_frames
    assert summary["face_found_ratio"] > 0.9
