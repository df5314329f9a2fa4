"""The only part that knows about time: threads, leaky hand-offs, the budget, pacing.

    capture thread ──newest──▶ track thread ──newest──▶ render thread ──newest──▶ output loop ─▶ sinks

Each hand-off keeps only the newest item (a leaky queue), so a slow stage never lets
latency pile up: it skips stale frames instead. While tracking plus rendering fit in a
frame interval the track thread renders its own frame (nothing waits in a hand-off);
when they do not, tracking and rendering run in parallel on different frames, which
keeps both cores busy. A frame older than the
budget is dropped, never sent late; the output loop re-sends the last good frame
whenever nothing new arrives in time, so the sinks keep their pace.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from typing import Any, Protocol

from realtime.controls import Controls
from realtime.frames import FaceTrack, Frame, Output
from realtime.metrics import Metrics
from realtime.native import OpenCVThreads
from realtime.pipeline import FrameProcessor, OnceLogger
from realtime.stages import Sink, Source

logger = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the engine reads the time and waits; tests may pass a simulated one."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic``, the same clock sources stamp frames with."""

    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class LatestSlot:
    """A one-item leaky queue: ``put`` replaces what is waiting (counted as overwritten)."""

    def __init__(self, on_overwrite: Callable[[], None] | None = None) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._has = False
        self._closed = False
        self._on_overwrite = on_overwrite
        self.overwritten = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._has:
                self.overwritten += 1
                if self._on_overwrite is not None:
                    self._on_overwrite()
            self._item, self._has = item, True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """The newest item; None on timeout or when closed and empty."""
        with self._cond:
            if not self._has and not self._closed:
                self._cond.wait(timeout)
            if not self._has:
                return None
            item, self._item, self._has = self._item, None, False
            self._cond.notify_all()
            return item

    def wait_taken(self, stop: threading.Event, poll_s: float = 0.05) -> None:
        """Block until the waiting item has been taken (or ``stop`` is set)."""
        with self._cond:
            while self._has and not stop.is_set():
                self._cond.wait(poll_s)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and not self._has


class SinkGuard:
    """Keeps one failing sink from taking the others down: log once, retry with backoff.

    As a context manager it opens the sink with the engine's format; on leaving it closes the
    sink, or aborts it if the run never started (another sink failed to open).
    """

    def __init__(self, sink: Sink, size: tuple[int, int], fps: float, clock: Clock) -> None:
        self.sink, self.size, self.fps, self.clock = sink, size, fps, clock
        self.is_open = False
        self.started = False
        self.failures = 0
        self._retry_at = 0.0
        self._errors = OnceLogger(logger)

    def open(self) -> SinkGuard:
        self.sink.open(self.size[0], self.size[1], self.fps)
        self.is_open = True
        return self

    def __enter__(self) -> SinkGuard:
        return self.open()  # the first open fails loudly: a missing device is the user's to fix

    def __exit__(self, *exc: object) -> None:
        try:
            if self.started:
                self.close()
            else:  # don't leave a half-made output behind (a FileSink's ffmpeg and temp file)
                self.sink.abort()
                self.is_open = False
        except Exception as close_exc:
            logger.error("closing sink %s failed: %s", self.sink.name, close_exc)

    def send(self, out: Output, metrics: Metrics) -> None:
        now = self.clock.now()
        if not self.is_open:
            if now < self._retry_at:
                return
            try:
                self.open()
                logger.info("sink %s is back", self.sink.name)
            except Exception as exc:
                self._fail(exc, metrics, now)
                return
        try:
            self.sink.send(out)
        except Exception as exc:
            self._fail(exc, metrics, now)
            try:
                self.sink.close()
            except Exception:  # already broken; the retry reopens it
                pass

    def _fail(self, exc: Exception, metrics: Metrics, now: float) -> None:
        self.is_open = False
        self.failures += 1
        metrics.add_error(f"sink:{self.sink.name}")
        self._errors.error(f"{type(exc).__name__}", "sink %s failed: %s; retrying", self.sink.name, exc)
        self._retry_at = now + min(5.0, 0.25 * 2 ** min(self.failures, 5))

    def close(self) -> None:
        if self.is_open:
            self.sink.close()
            self.is_open = False


PIPELINES = ("auto", "serial", "parallel")
# auto: serial while track+render take under this share of a frame interval (a frame that
# fits is done before the next is due, so overlapping would only add contention), and back
# to serial once they fall below the lower share (overlapped stages measure slower; at 0.6,
# swap mode, 22-25 ms a frame overlapped, stayed parallel all run after a slow first frame).
SERIAL_UP_TO = 0.95
SERIAL_BACK_BELOW = 0.75
# A stream's first frames are its slowest (first detection, first estimates): rendered serially,
# left out of the cost average (benchmarks/RESULTS.md, "Session 14").
SERIAL_FIRST_FRAMES = 3


class Engine:
    """The live loop: threads, leaky hand-offs, budget drops and a steady output pace."""

    def __init__(
        self,
        source: Source,
        processor: FrameProcessor,
        sinks: list[Sink],
        fps: float,
        budget_ms: float | None = None,
        controls: Controls | None = None,
        on_latency: Callable[[float], None] | None = None,
        pipeline: str = "auto",
        min_latency_ms: Callable[[], float] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
        self.source = source
        self.clock = clock or MonotonicClock()
        # parallel: tracking and rendering overlap on different frames (more throughput, but
        # on two cores the stages slow each other and a frame waits in a hand-off).
        # serial: the track thread also renders its frame (least latency while tracking plus
        # rendering fit in a frame interval). auto: serial while the work fits, parallel
        # when it does not, decided frame by frame from the measured stage times.
        self.pipeline = pipeline
        self._serial_now = pipeline != "parallel"
        self._work_ms = {"track": 0.0, "render": 0.0}  # smoothed cost per frame
        self._work_n = {"track": 0, "render": 0}
        self.frames_by_pipeline = {"serial": 0, "parallel": 0}
        # An unpaced file is read as fast as the pipeline takes frames, not faster: decoding
        # frames only to skip them would steal the CPU the pipeline needs. Cameras and paced
        # sources deliver on their own clock, so for them the newest frame wins.
        self._backpressure = not source.paced
        # Called with each new frame's capture→sink latency in ms (the audio bridge follows it).
        self.on_latency = on_latency
        # When set, a new frame is held until it is this old (the audio path's floor), so a
        # voice that cannot be delayed less still meets the lips. Never past the budget.
        self.min_latency_ms = min_latency_ms
        self.processor = processor
        self.metrics = processor.metrics
        self.controls = controls or processor.controls
        self.fps = fps
        self.budget_s = (budget_ms if budget_ms is not None else 2000.0 / fps) / 1000.0
        # A source read with backpressure never builds a backlog, so a late frame there is
        # only slow work; dropping it would throw that work away and starve the output (it
        # still counts as late where latency is measured).
        self._drop_after_s = math.inf if self._backpressure else self.budget_s
        self.guards = [SinkGuard(sink, processor.output_size, fps, self.clock) for sink in sinks]
        # A frame replaced in a hand-off never reaches the sink: a deadline miss too.
        self._captured = LatestSlot(lambda: self.metrics.add_drop("skipped_before_track", self.clock.now()))
        self._tracked = LatestSlot(lambda: self.metrics.add_drop("skipped_before_render", self.clock.now()))
        self._rendered = LatestSlot(lambda: self.metrics.add_drop("skipped_before_sink", self.clock.now()))
        self._stop = threading.Event()
        self._errors = OnceLogger(logger)
        self.opencv_threads = OpenCVThreads()

    # -- threads ---------------------------------------------------------------------
    def _capture_loop(self) -> None:
        backoff = 0.1
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                except Exception as exc:
                    self.metrics.add_error("capture")
                    self._errors.error("capture", "source read failed: %s; reconnecting", exc)
                    if self._stop.wait(backoff):
                        break
                    backoff = min(2.0, backoff * 2)
                    try:
                        self.source.reopen()
                    except Exception as reopen_exc:
                        logger.debug("reconnect failed: %s", reopen_exc)
                    continue
                if backoff > 0.1:
                    logger.info("source reconnected")
                backoff = 0.1
                if frame is None:
                    break
                self.metrics.add_captured()
                self._captured.put(frame)
                if self._backpressure:
                    self._captured.wait_taken(self._stop)
        finally:
            self._captured.close()

    def _late(self, t_capture: float, where: str) -> bool:
        now = self.clock.now()
        if now - t_capture > self._drop_after_s:
            self.metrics.add_drop(where, now)
            return True
        return False

    def _track_loop(self) -> None:
        try:
            while not self._stop.is_set():
                frame = self._captured.get(timeout=0.1)
                if frame is None:
                    if self._captured.closed:
                        break
                    continue
                if self._late(frame.t_capture, "late_before_track"):
                    continue
                started = time.perf_counter()
                try:
                    track = self.processor.track(frame)
                except Exception as exc:
                    self.metrics.add_error("track")
                    self._errors.error("track", "tracking failed: %s", exc)
                    track = FaceTrack(frame=frame, landmarks=None, lost_for_s=math.inf)
                self._smooth("track", (time.perf_counter() - started) * 1000.0)
                if self._render_here():
                    self.frames_by_pipeline["serial"] += 1
                    self._render_one(track)
                else:
                    self.frames_by_pipeline["parallel"] += 1
                    self._tracked.put(track)
                    if self._backpressure:  # don't track frames the renderer would skip
                        self._tracked.wait_taken(self._stop)
        finally:
            self._tracked.close()
            if self.pipeline == "serial":
                self._rendered.close()

    def _smooth(self, stage: str, ms: float) -> None:
        # A plain mean over the first ten frames counted, then an exponential one.
        self._work_n[stage] += 1
        counted = self._work_n[stage] - SERIAL_FIRST_FRAMES
        if counted > 0:
            self._work_ms[stage] += max(0.1, 1.0 / counted) * (ms - self._work_ms[stage])

    def _render_here(self) -> bool:
        """Whether the track thread renders this frame itself (serial) or hands it on."""
        if self.pipeline != "auto":
            return self.pipeline == "serial"
        if self._backpressure:  # an unpaced source wants throughput
            return False
        work = self._work_ms["track"] + self._work_ms["render"]
        interval_ms = 1000.0 / self.fps
        # Hysteresis: overlapped stages measure slower, so switching back needs a margin.
        settled = self._work_n["render"] > SERIAL_FIRST_FRAMES
        if self._serial_now and settled and work > SERIAL_UP_TO * interval_ms:
            self._serial_now = False
            logger.info("pipeline: parallel (track+render %.1f ms per frame)", work)
        elif not self._serial_now and work < SERIAL_BACK_BELOW * interval_ms:
            self._serial_now = True
            logger.info("pipeline: serial (track+render %.1f ms per frame)", work)
        return self._serial_now

    def _render_loop(self) -> None:
        try:
            while not self._stop.is_set():
                track = self._tracked.get(timeout=0.1)
                if track is None:
                    if self._tracked.closed:
                        break
                    continue
                self._render_one(track)
        finally:
            self._rendered.close()

    def _render_one(self, track: FaceTrack) -> None:
        if self._late(track.frame.t_capture, "late_before_render"):
            return
        started = time.perf_counter()
        self.opencv_threads.apply(self.controls.mode)
        try:
            out = self.processor.render(track)
        except Exception as exc:
            self.metrics.add_error("render")
            self._errors.error("render", "rendering failed: %s", exc)
            return
        self._smooth("render", (time.perf_counter() - started) * 1000.0)
        self._rendered.put(out)

    # -- output (runs in the caller's thread, so a window sink lives on the main thread) --
    def run(self, seconds: float | None = None) -> dict:
        """Open every stage, stream until the source ends, ``seconds`` pass or quit; close all."""
        with ExitStack() as stack:
            stack.callback(self.opencv_threads.restore)
            stack.enter_context(self.source)
            stack.enter_context(self.processor)
            for guard in self.guards:
                stack.enter_context(guard)
            for guard in self.guards:
                guard.started = True
            self._warm_up()
            self._stream(seconds)
        return self.metrics.summary(
            overwritten={
                "capture": self._captured.overwritten,
                "track": self._tracked.overwritten,
                "render": self._rendered.overwritten,
            },
            pipeline={"mode": self.pipeline, "frames": dict(self.frames_by_pipeline)},
        )

    def _warm_up(self) -> None:
        """Track and render the source's preview once before the stream's clock starts, outside its
        metrics: the first detection and the swap compositor's first estimates took the first
        frames 50-70 ms, and their followers missed the deadline. A source read without pacing
        has no deadline to protect."""
        image = self.source.preview() if self.source.paced else None
        if image is None:
            return
        live_metrics = self.processor.metrics
        self.processor.metrics = Metrics()
        started = time.perf_counter()
        self.opencv_threads.apply(self.controls.mode)
        try:
            frame = Frame(image=image, index=-1, t_capture=self.clock.now())
            self.processor.render(self.processor.track(frame))
        except Exception as exc:  # the stream reports its own failures; a warm-up only costs time
            logger.debug("warm-up failed: %s", exc)
        finally:
            self.processor.metrics = live_metrics
        live_metrics.warm_up_ms = (time.perf_counter() - started) * 1000.0

    def _stream(self, seconds: float | None) -> None:
        clock = self.clock
        neutral = self.processor.neutral_image()
        last = Output(image=neutral, index=-1, t_capture=clock.now(), face_found=False)
        self.metrics.t_start = clock.now()
        threads = [
            threading.Thread(target=self._capture_loop, name="capture", daemon=True),
            threading.Thread(target=self._track_loop, name="track", daemon=True),
        ]
        if self.pipeline != "serial":
            threads.append(threading.Thread(target=self._render_loop, name="render", daemon=True))
        for thread in threads:
            thread.start()
        interval = 1.0 / self.fps
        deadline = self.metrics.t_start + seconds if seconds else math.inf
        # A new frame that is merely a little late must not cause a repeat as well
        # (that would emit two frames in one interval): the first repeat waits 1.5
        # intervals, later ones keep the plain interval.
        repeat_at = clock.now() + interval
        try:
            while not self.controls.quit.is_set() and clock.now() < deadline:
                out = self._rendered.get(timeout=max(0.0, repeat_at - clock.now()))
                now = clock.now()
                if out is not None and out.t_capture < last.t_capture:
                    # An older frame finishing after a newer one (the pipeline just switched
                    # between serial and parallel) is never shown: time only moves forward.
                    self.metrics.add_drop("out_of_order", now)
                    out = None
                if out is not None and self._late(out.t_capture, "late_at_sink"):
                    out = None
                if out is not None and self.min_latency_ms is not None:
                    now = self._hold(out.t_capture, now)
                if out is None:
                    if self._rendered.closed:
                        break
                    if now < repeat_at:
                        continue
                    # Nothing new in time: repeat the last good frame so the sink keeps its pace.
                    self._emit(last, now)
                    self.metrics.add_repeat(now)
                    repeat_at = now + interval
                else:
                    self._emit(out, now)
                    self._delivered(out, now)
                    last = out
                    repeat_at = now + 1.5 * interval
        finally:
            self._stop.set()
            self.metrics.t_end = clock.now()
            for thread in threads:
                thread.join(timeout=2.0)

    def _delivered(self, out: Output, now: float) -> None:
        latency_ms = (now - out.t_capture) * 1000.0
        self.metrics.add_output(latency_ms, now, out.face_found)
        if self.on_latency is not None:
            try:
                self.on_latency(latency_ms)
            except Exception as exc:  # audio never stops the video
                self._errors.error("on_latency", "latency listener failed: %s", exc)

    def _hold(self, t_capture: float, now: float) -> float:
        """Wait until the frame is ``min_latency_ms`` old (capped below the budget)."""
        try:
            wanted_s = float(self.min_latency_ms()) / 1000.0
        except Exception as exc:  # audio never stops the video
            self._errors.error("min_latency", "audio floor unavailable: %s", exc)
            return now
        hold = min(t_capture + wanted_s, t_capture + 0.95 * self.budget_s) - now
        if hold > 0:
            self.clock.sleep(hold)
            return self.clock.now()
        return now

    def _emit(self, out: Output, now: float) -> None:
        t0 = time.perf_counter()
        for guard in self.guards:
            guard.send(out, self.metrics)
        self.metrics.add_stage("sink", (time.perf_counter() - t0) * 1000.0)


def render_offline(
    source: Source, processor: FrameProcessor, sinks: list[Sink], fps: float, progress: bool = True
) -> dict:
    """Every source frame, in order, no drops, through the same per-frame code path.

    Time inside the pipeline is the video's own (index / fps), so hold-and-ease after a
    lost face lasts as long in the output as it would live. An interrupted render aborts
    its sinks, so it leaves no half-written output behind.
    """
    from tqdm import tqdm

    metrics = processor.metrics
    with ExitStack() as stack:
        for sink in sinks:
            sink.open(processor.output_size[0], processor.output_size[1], fps)
            stack.push(sink)
        stack.enter_context(source)
        stack.enter_context(processor)
        metrics.t_start = time.monotonic()
        # disable=None: a bar only on a terminal; piped or logged, it would bury the one-line error.
        bar = stack.enter_context(
            tqdm(
                total=source.frame_count or None,
                unit="frame",
                disable=None if progress else True,
                leave=False,
            )
        )
        try:
            while (frame := source.read()) is not None:
                metrics.add_captured()
                t0 = time.monotonic()
                out = processor.process(replace(frame, t_capture=frame.index / fps))
                for sink in sinks:
                    sink.send(out)
                now = time.monotonic()
                metrics.add_output((now - t0) * 1000.0, now, out.face_found)
                bar.update(1)
        finally:
            metrics.t_end = time.monotonic()
    return metrics.summary()
