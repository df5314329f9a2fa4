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
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from realtime import mesh
from realtime.avatar import Avatar
from realtime.blend import Blender
from realtime.controls import Controls
from realtime.frames import FaceTrack, Frame, Output, Target
from realtime.metrics import Metrics
from realtime.retarget import Retargeter, RetargetLimits
from realtime.tracking import FaceTracker

logger = logging.getLogger(__name__)


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


class OnceLogger:
    """Log an error the first time per key, then only count it."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def error(self, key: str, message: str, *args: object) -> None:
        if key not in self._seen:
            self._seen.add(key)
            logger.error(message + " (further errors of this kind are counted, not logged)", *args)


@dataclass
class Generators:
    """The generator for each mode, plus the warp used as a fallback for learned ones."""

    by_mode: dict[str, Any]
    fallback: dict[str, Any] = field(default_factory=dict)

    def for_mode(self, mode: str) -> Any:
        return self.by_mode[mode]


class FrameProcessor:
    """The per-frame code path, shared by the live engine and offline render."""

    def __init__(
        self,
        avatar: Avatar,
        generators: Generators,
        tracker: FaceTracker,
        controls: Controls,
        metrics: Metrics,
        output_size: tuple[int, int],
        limits: RetargetLimits | None = None,
    ) -> None:
        self.avatar = avatar
        self.generators = generators
        self.tracker = tracker
        self.controls = controls
        self.metrics = metrics
        self.output_size = output_size
        self.limits = limits or RetargetLimits()
        self.retargeter = Retargeter(avatar.landmarks, self.limits)
        self.blender = Blender()
        self._errors = OnceLogger()
        self._last_output: np.ndarray | None = None
        self._last_swap: Target | None = None
        self._last_swap_seen: float | None = None
        self._neutral = self._fit(avatar.image)

    def _fit(self, image: np.ndarray) -> np.ndarray:
        import cv2

        if (image.shape[1], image.shape[0]) == self.output_size:
            return image
        return cv2.resize(image, self.output_size, interpolation=cv2.INTER_AREA)

    def neutral_image(self) -> np.ndarray:
        """The avatar in its neutral pose: what the sinks show before the first frame."""
        return self._neutral

    def _timed(self, name: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        result = fn()
        ms = (time.perf_counter() - t0) * 1000.0
        self.metrics.add_stage(name, ms)
        return result, ms

    def track(self, frame: Frame) -> FaceTrack:
        if self.controls.mode == "swap" and (frame.image.shape[1], frame.image.shape[0]) != self.output_size:
            frame = replace(frame, image=self._fit(frame.image))
        track, _ = self._timed("track", lambda: self.tracker.process(frame))
        return track

    def _swap_target(self, track: FaceTrack) -> Target | None:
        t = track.frame.t_capture
        if track.found:
            target = Target(
                frame=track.frame,
                landmarks=mesh.with_mouth_centre(track.landmarks[:, :2]).astype(np.float32),
                mode="swap",
                driver_landmarks=track.landmarks[:, :2].astype(np.float32),
            )
            self._last_swap, self._last_swap_seen = target, t
            return target
        held_for = t - self._last_swap_seen if self._last_swap_seen is not None else math.inf
        if self._last_swap is not None and held_for <= self.limits.hold_s + self.limits.ease_s:
            # Briefly lost (a blink of the tracker, a hand): keep the swapped face where it was.
            return replace(self._last_swap, frame=track.frame, face_found=False, driver_landmarks=None)
        return None

    def _generate(self, target: Target, mode: str):
        generator = self.generators.for_mode(mode)
        try:
            return generator.render(target)
        except Exception as exc:  # a learned generator failing on one frame must not stop the stream
            self.metrics.add_error("generate")
            self._errors.error(
                f"generate:{type(exc).__name__}",
                "generator %s failed: %s",
                getattr(generator, "name", "?"),
                exc,
            )
            fallback = self.generators.fallback.get(mode)
            if fallback is None or fallback is generator:
                return None
            return fallback.render(target)

    def render(self, track: FaceTrack) -> Output:
        stage_ms: dict[str, float] = {}
        if self.controls.take_recalibrate():
            self.retargeter.recalibrate()
        mode = self.controls.mode
        if mode == "swap":
            target, stage_ms["retarget"] = self._timed("retarget", lambda: self._swap_target(track))
        else:
            target, stage_ms["retarget"] = self._timed("retarget", lambda: self.retargeter.process(track))
        image: np.ndarray | None = None
        if target is not None:
            rendered, stage_ms["generate"] = self._timed("generate", lambda: self._generate(target, mode))
            if rendered is not None:
                image, stage_ms["blend"] = self._timed("blend", lambda: self.blender.process(rendered))
        if image is None:
            # Swap with no face for a while: the user's own frame (there is no face in it to hide).
            # A failed generator: the previous output, or the neutral avatar.
            if mode == "swap" and target is None:
                image = track.frame.image
            else:
                image = self._last_output if self._last_output is not None else self._neutral
        image = self._fit(image)
        self._last_output = image
        return Output(
            image=image,
            index=track.frame.index,
            t_capture=track.frame.t_capture,
            t_done=time.monotonic(),
            face_found=track.found,
            stage_ms={
                "track": self.metrics.stage_ms["track"][-1] if len(self.metrics.stage_ms["track"]) else 0.0,
                **stage_ms,
            },
        )

    def process(self, frame: Frame) -> Output:
        return self.render(self.track(frame))

    def close(self) -> None:
        self.tracker.close()


class SinkGuard:
    """Keeps one failing sink from taking the others down: log once, retry with backoff."""

    def __init__(self, sink: Any, size: tuple[int, int], fps: float) -> None:
        self.sink, self.size, self.fps = sink, size, fps
        self.is_open = False
        self.failures = 0
        self._retry_at = 0.0
        self._errors = OnceLogger()

    def open(self) -> None:
        self.sink.open(self.size[0], self.size[1], self.fps)
        self.is_open = True

    def send(self, out: Output, metrics: Metrics) -> None:
        now = time.monotonic()
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
# to serial once they fall below the lower share (overlapped stages measure slower).
SERIAL_UP_TO = 0.95
SERIAL_BACK_BELOW = 0.6


class Engine:
    """The live loop: threads, leaky hand-offs, budget drops and a steady output pace."""

    def __init__(
        self,
        source: Any,
        processor: FrameProcessor,
        sinks: list[Any],
        fps: float,
        budget_ms: float | None = None,
        controls: Controls | None = None,
        on_latency: Callable[[float], None] | None = None,
        pipeline: str = "auto",
        min_latency_ms: Callable[[], float] | None = None,
    ) -> None:
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
        self.source = source
        # parallel: tracking and rendering overlap on different frames (more throughput, but
        # on two cores the stages slow each other and a frame waits in a hand-off).
        # serial: the track thread also renders its frame (least latency while tracking plus
        # rendering fit in a frame interval). auto: serial while the work fits, parallel
        # when it does not, decided frame by frame from the measured stage times.
        self.pipeline = pipeline
        self._serial_now = pipeline != "parallel"
        self._work_ms = {"track": 0.0, "render": 0.0}  # smoothed cost per frame
        self.frames_by_pipeline = {"serial": 0, "parallel": 0}
        # An unpaced file is read as fast as the pipeline takes frames, not faster: decoding
        # frames only to skip them would steal the CPU the pipeline needs. Cameras and paced
        # sources deliver on their own clock, so for them the newest frame wins.
        self._backpressure = getattr(source, "paced", True) is False
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
        self.guards = [SinkGuard(sink, processor.output_size, fps) for sink in sinks]
        # A frame replaced in a hand-off never reaches the sink: a deadline miss too.
        self._captured = LatestSlot(lambda: self.metrics.add_drop("skipped_before_track"))
        self._tracked = LatestSlot(lambda: self.metrics.add_drop("skipped_before_render"))
        self._rendered = LatestSlot(lambda: self.metrics.add_drop("skipped_before_sink"))
        self._stop = threading.Event()
        self._errors = OnceLogger()

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
                    reopen = getattr(self.source, "reopen", None)
                    if reopen is not None:
                        try:
                            reopen()
                            logger.info("source reconnected")
                        except Exception as reopen_exc:
                            logger.debug("reconnect failed: %s", reopen_exc)
                    continue
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
        if time.monotonic() - t_capture > self._drop_after_s:
            self.metrics.add_drop(where)
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
        previous = self._work_ms[stage]
        self._work_ms[stage] = ms if previous == 0.0 else 0.9 * previous + 0.1 * ms

    def _render_here(self) -> bool:
        """Whether the track thread renders this frame itself (serial) or hands it on."""
        if self.pipeline != "auto":
            return self.pipeline == "serial"
        if self._backpressure:  # an unpaced source wants throughput
            return False
        work = self._work_ms["track"] + self._work_ms["render"]
        interval_ms = 1000.0 / self.fps
        # Hysteresis: overlapped stages measure slower, so switching back needs a margin.
        if self._serial_now and work > SERIAL_UP_TO * interval_ms:
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
        opened: list[SinkGuard] = []
        try:
            for guard in self.guards:
                guard.open()  # the first open fails loudly: a missing device is the user's to fix
                opened.append(guard)
        except BaseException:
            # Don't leave the sinks that did open behind (a FileSink's ffmpeg and temp file).
            for guard in opened:
                try:
                    abort_sink(guard.sink)
                except Exception as exc:
                    logger.error("closing sink %s failed: %s", guard.sink.name, exc)
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            raise
        neutral = self.processor.neutral_image()
        last = Output(image=neutral, index=-1, t_capture=time.monotonic(), face_found=False)
        self.metrics.t_start = time.monotonic()
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
        repeat_at = time.monotonic() + interval
        try:
            while not self.controls.quit.is_set() and time.monotonic() < deadline:
                out = self._rendered.get(timeout=max(0.0, repeat_at - time.monotonic()))
                now = time.monotonic()
                if out is not None and out.t_capture < last.t_capture:
                    # An older frame finishing after a newer one (the pipeline just switched
                    # between serial and parallel) is never shown: time only moves forward.
                    self.metrics.add_drop("out_of_order")
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
                    self.metrics.add_output((now - out.t_capture) * 1000.0, now, out.face_found)
                    if self.on_latency is not None:
                        try:
                            self.on_latency((now - out.t_capture) * 1000.0)
                        except Exception as exc:  # audio never stops the video
                            self._errors.error("on_latency", "latency listener failed: %s", exc)
                    last = out
                    repeat_at = now + 1.5 * interval
        finally:
            self._stop.set()
            self.metrics.t_end = time.monotonic()
            for thread in threads:
                thread.join(timeout=2.0)
            for guard in self.guards:
                try:
                    guard.close()
                except Exception as exc:
                    logger.error("closing sink %s failed: %s", guard.sink.name, exc)
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
        return self.metrics.summary(
            overwritten={
                "capture": self._captured.overwritten,
                "track": self._tracked.overwritten,
                "render": self._rendered.overwritten,
            },
            pipeline={"mode": self.pipeline, "frames": dict(self.frames_by_pipeline)},
        )

    def _hold(self, t_capture: float, now: float) -> float:
        """Wait until the frame is ``min_latency_ms`` old (capped below the budget)."""
        try:
            wanted_s = float(self.min_latency_ms()) / 1000.0
        except Exception as exc:  # audio never stops the video
            self._errors.error("min_latency", "audio floor unavailable: %s", exc)
            return now
        hold = min(t_capture + wanted_s, t_capture + 0.95 * self.budget_s) - now
        if hold > 0:
            time.sleep(hold)
            return time.monotonic()
        return now

    def _emit(self, out: Output, now: float) -> None:
        t0 = time.perf_counter()
        for guard in self.guards:
            guard.send(out, self.metrics)
        self.metrics.add_stage("sink", (time.perf_counter() - t0) * 1000.0)


def abort_sink(sink: Any) -> None:
    """Stop a sink without finishing its output (``abort`` where it has one)."""
    abort = getattr(sink, "abort", None)
    (abort or sink.close)()


def render_offline(
    source: Any, processor: FrameProcessor, sinks: list[Any], fps: float, progress: bool = True
) -> dict:
    """Every source frame, in order, no drops, through the same per-frame code path.

    Time inside the pipeline is the video's own (index / fps), so hold-and-ease after a
    lost face lasts as long in the output as it would live.
    """
    from tqdm import tqdm

    metrics = processor.metrics
    for sink in sinks:
        sink.open(processor.output_size[0], processor.output_size[1], fps)
    metrics.t_start = time.monotonic()
    total = getattr(source, "frame_count", None) or None
    # disable=None: a bar only on a terminal; piped or logged, it would bury the one-line error.
    bar = tqdm(total=total, unit="frame", disable=None if progress else True, leave=False)
    try:
        while True:
            frame = source.read()
            if frame is None:
                break
            metrics.add_captured()
            t0 = time.monotonic()
            out = processor.process(replace(frame, t_capture=frame.index / fps))
            for sink in sinks:
                sink.send(out)
            now = time.monotonic()
            metrics.add_output((now - t0) * 1000.0, now, out.face_found)
            bar.update(1)
    except BaseException:
        for sink in sinks:  # an interrupted render leaves no half-written output behind
            abort_sink(sink)
        raise
    finally:
        bar.close()
        metrics.t_end = time.monotonic()
        source.close()
    for sink in sinks:
        sink.close()
    return metrics.summary()
