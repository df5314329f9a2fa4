"""``AudioBridgeProcess``: an ``AudioBridge`` in a child process of its own.

Audio callbacks are Python: in the engine's process they would wait for the GIL while the
render thread runs numpy, and a block would miss its deadline (an underrun, audible as a
click). In a process of their own they only compete for the CPU, at a raised priority
where allowed. The engine's per-frame latency is smoothed in the parent and handed over
in shared memory; the child reports level and delay the same way, and its state changes
(a device gone, a stall) as events.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from realtime.audio.bridge import AudioBridge, BridgeSettings
from realtime.audio.clock import LatencyTracker
from realtime.audio.delay import SILENCE_DB
from realtime.audio.devices import AUDIO_NICE, AudioUnavailable, first_line
from realtime.audio.report import AvOffsets, status_line
from realtime.stages import Stage
from realtime.worker import IDLE, ChildWorker, WorkerChannel, WorkerError

logger = logging.getLogger(__name__)

CONTROLS = ("video_ms", "offset_ms", "muted")  # written by the parent, applied by the child
REPORTS = (
    "level_db",
    "audio_delay_ms",
    "path_latency_ms",
    "min_delay_ms",
)  # the bridge's, copied by the child


class SharedValues:
    """Named floats in shared memory, never blocking either side; None travels as NaN."""

    def __init__(self, names: tuple[str, ...], array: Any) -> None:
        self.index = {name: i for i, name in enumerate(names)}
        self.array = array

    def __getitem__(self, name: str) -> float:
        return self.array[self.index[name]]

    def optional(self, name: str) -> float | None:
        value = self[name]
        return None if math.isnan(value) else value

    def __setitem__(self, name: str, value: float | None) -> None:
        self.array[self.index[name]] = math.nan if value is None else float(value)


def _serve_bridge(channel: WorkerChannel, controls: Any, reports: Any, settings: BridgeSettings) -> Any:
    """Child process: run the bridge; controls in and reports out through shared memory."""
    if hasattr(os, "setpriority"):
        # This process only serves the audio: its main thread (controls, the pipe) at the
        # audio threads' nice value too, so that it never holds their GIL for long.
        try:
            if os.getpriority(os.PRIO_PROCESS, 0) > AUDIO_NICE:
                os.setpriority(os.PRIO_PROCESS, 0, AUDIO_NICE)
        except OSError:
            pass
    try:
        bridge = AudioBridge.from_settings(settings).open()
    except AudioUnavailable as exc:
        channel.fail(str(exc))
        return None
    except Exception as exc:
        channel.fail(f"audio failed: {type(exc).__name__}: {first_line(exc)}")
        return None
    channel.ready({"input": bridge.input_name, "output": bridge.output_name})
    ins, outs = SharedValues(CONTROLS, controls), SharedValues(REPORTS, reports)
    state: tuple[str | None, bool] = (None, False)
    try:
        for request in channel.requests(idle_s=0.05):
            if (bridge.failed, bridge.stalled) != state:
                state = (bridge.failed, bridge.stalled)
                channel.notify(state)
            if request is not IDLE:  # the only request: "stats"
                channel.reply(bridge.stats())
            bridge.set_smoothed_video_latency_ms(ins.optional("video_ms"))
            bridge.offset_ms = ins["offset_ms"]
            bridge.muted = ins["muted"] > 0.5
            bridge.check_alive()
            for name in REPORTS:
                outs[name] = getattr(bridge, name)
    finally:
        bridge.close()
    return bridge.stats()


class AudioBridgeProcess(Stage):
    """``AudioBridge`` in a child process, with the same controls and reports.

    Built, opened and closed as ``AudioBridge`` is (the constructor takes the same
    arguments; ``options`` are ``BridgeSettings`` fields).
    """

    def __init__(
        self,
        input_device: str | int | None = None,
        output_device: str | int | None = None,
        offset_ms: float = 0.0,
        muted: bool = False,
        start_timeout_s: float = 30.0,
        **options: Any,
    ) -> None:
        import multiprocessing as mp

        self.settings = BridgeSettings(input_device, output_device, **options)
        context = mp.get_context("spawn")
        self._controls = SharedValues(CONTROLS, context.RawArray("d", len(CONTROLS)))
        self._reports = SharedValues(REPORTS, context.RawArray("d", len(REPORTS)))
        self._controls["video_ms"] = None
        self._reports["level_db"] = SILENCE_DB
        self._reports["audio_delay_ms"] = None
        self.offset_ms = offset_ms
        self.muted = muted
        self.tracker = LatencyTracker(self.settings.smoothing_frames, self.settings.hysteresis_ms)
        self.av_offsets = AvOffsets()
        self.failed: str | None = None
        self.stalled = False
        self.input_name = str(input_device)
        self.output_name = str(output_device)
        self._worker = ChildWorker(
            _serve_bridge,
            (self._controls.array, self._reports.array, self.settings),
            name="audio",
            start_timeout_s=start_timeout_s,
            log_level_from=__name__,
        )
        self._open = False

    # -- controls and reports (shared memory: never blocks) --------------------------------
    @property
    def offset_ms(self) -> float:
        return self._controls["offset_ms"]

    @offset_ms.setter
    def offset_ms(self, value: float) -> None:
        self._controls["offset_ms"] = float(value)

    @property
    def muted(self) -> bool:
        return self._controls["muted"] > 0.5

    @muted.setter
    def muted(self, value: bool) -> None:
        self._controls["muted"] = 1.0 if value else 0.0

    @property
    def level_db(self) -> float:
        return self._reports["level_db"]

    @property
    def audio_delay_ms(self) -> float | None:
        return self._reports.optional("audio_delay_ms")

    @property
    def path_latency_ms(self) -> float:
        return self._reports["path_latency_ms"]

    @property
    def min_delay_ms(self) -> float:
        """The shortest delay the audio path can give now (its floor), 0 until it runs."""
        floor = self._reports.optional("min_delay_ms")
        return 0.0 if floor is None else float(floor)

    @property
    def video_latency_ms(self) -> float | None:
        return self.tracker.value_ms

    @property
    def pid(self) -> int | None:
        """The child's process id while open."""
        return self._worker.pid

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> AudioBridgeProcess:
        if self._open:
            return self
        try:
            info = self._worker.open().info
        except WorkerError as exc:
            raise AudioUnavailable(str(exc)) from exc
        self.input_name, self.output_name = info["input"], info["output"]
        self._open = True
        return self

    def close(self) -> None:
        self._open = False
        self._worker.close()

    # -- the engine's side -------------------------------------------------------------
    def set_video_latency_ms(self, ms: float) -> None:
        """One frame's capture→sink latency (every new frame); smoothed here, applied in the child."""
        self._controls["video_ms"] = self.tracker.add(float(ms))
        self.av_offsets.add(self.audio_delay_ms, ms)
        self._take_events()

    def _take_events(self) -> None:
        """Take what the child reported (device gone, stalls); never blocks."""
        try:
            events = self._worker.events()
        except WorkerError:
            self._lost()
            return
        if events:  # each is the child's whole state: the last one counts
            self.failed, self.stalled = events[-1]

    def _lost(self) -> None:
        """The child has gone while open: say so once; the video goes on."""
        if self._open and self.failed is None:
            self.failed = "the audio process ended"
            logger.error("audio: the audio process ended; the video keeps running without audio")

    def stats(self) -> dict[str, Any]:
        """The child's ``AudioBridge.stats()`` with the A/V offset measured against every frame here."""
        base: dict[str, Any] | None = self._worker.result
        if self._open:
            try:
                base = self._worker.call("stats", timeout_s=2.0)
            except WorkerError:
                if not self._worker.alive:
                    self._lost()
        result = dict(base or {"input": self.input_name, "output": self.output_name})
        result["av_offset_ms"] = self.av_offsets.summary()
        result["video_latency_ms"] = (
            None if self.tracker.value_ms is None else round(self.tracker.value_ms, 2)
        )
        result["offset_ms"] = self.offset_ms
        result["muted"] = self.muted
        result["failed"] = self.failed or result.get("failed")
        result["isolated"] = True
        return result

    def status_line(self) -> str:
        return status_line(self.level_db, self.audio_delay_ms, self.offset_ms, self.muted, self.failed)
