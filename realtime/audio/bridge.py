"""``AudioBridge``: the microphone, delayed by the video's latency, to a virtual microphone."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from realtime.audio.clock import ClockSync, LatencyTracker
from realtime.audio.delay import SAMPLE_RATE, SILENCE_DB, AudioDelayLine, level_db
from realtime.audio.devices import (
    AudioUnavailable,
    audio_thread_priority,
    first_line,
    hostapi_name,
    import_sounddevice,
    pulse_env,
    pulse_names,
    quiet_alsa,
    resolve_device,
)
from realtime.audio.report import AvOffsets, status_line
from realtime.stages import Stage

logger = logging.getLogger(__name__)

# 10 ms: the delay's floor grows with the block, and smaller blocks underran under CPU load
# even with real-time audio threads (benchmarks/audio_floor.py, benchmarks/audio_soak.py).
BLOCKSIZE = 480
PULSE_WATCH_S = 2.0  # how often a pulse:NAME device is checked for still being there
STALL_S = 3.0  # no callback for this long: the device is gone or hung (PulseAudio can take seconds to start)
COUNTERS = (
    "input_overflows",
    "input_underflows",
    "output_underflows",
    "output_overflows",
    "priming_outputs",
    "starved_blocks",
    "input_blocks",
    "output_blocks",
)


@dataclasses.dataclass(frozen=True)
class BridgeSettings:
    """How a bridge is set up; fixed once built (``offset_ms`` and ``muted`` are live controls)."""

    input_device: str | int | None = None  # ``resolve_device`` explains the forms
    output_device: str | int | None = None
    samplerate: int = SAMPLE_RATE
    blocksize: int = BLOCKSIZE
    latency: str | float = "low"
    input_channel: int | None = None  # the one microphone channel to use (None: the mix)
    input_channels: int | None = None  # channels to open (None: just enough)
    output_channels: int | None = None
    output_mask: tuple[int, ...] | None = None  # the output channels that play (None: all)
    smoothing_frames: int = 30
    hysteresis_ms: float = 3.0
    max_delay_ms: float = 1500.0
    path_latency_ms: float | None = None  # the path's own latency, when known better than PortAudio's
    # PULSE_LATENCY_MSEC for our streams (None: the ALSA plugin's own buffer attributes,
    # which follow the block; the values tried measured worse: benchmarks/audio_floor.py).
    pulse_latency_msec: int | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # normalise once, frozen afterwards
        set_field(self, "samplerate", int(self.samplerate))
        set_field(self, "blocksize", int(self.blocksize))
        set_field(self, "max_delay_ms", float(self.max_delay_ms))
        if self.output_mask is not None:
            set_field(self, "output_mask", tuple(self.output_mask))


@dataclasses.dataclass
class _Streams:
    """What ``open()`` holds and found: the streams, their devices and latencies."""

    input: Any = None
    output: Any = None
    input_name: str = ""
    output_name: str = ""
    hostapis: tuple[str, str] = ("", "")
    input_latency_s: float = 0.0
    output_latency_s: float = 0.0
    boosted: str = ""  # how the audio threads' priority was raised ("SCHED_RR 4", "nice -11"), if at all
    closing: bool = False
    closed: threading.Event = dataclasses.field(default_factory=threading.Event)


@dataclasses.dataclass
class _Flow:
    """What the callbacks measure (PortAudio's threads write, the engine's thread reads)."""

    started_at: float = 0.0
    last_in_t: float = 0.0
    last_out_t: float = 0.0
    callback_s: float = 0.0
    level_db: float = SILENCE_DB
    achieved_ms: float | None = None  # total audio delay actually applied (last block)
    gain: float = 1.0
    stalled: bool = False
    counters: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))


class AudioBridge(Stage):
    """Microphone → delay (video latency + offset) → virtual microphone.

    The constructor only configures; ``open()`` opens the streams (``AudioUnavailable`` on
    failure) and ``close()`` stops them; ``with AudioBridge(...) as bridge:`` does both.
    The engine calls ``set_video_latency_ms`` with each new frame's capture→sink latency.
    ``offset_ms`` (manual, added to the video latency; may be negative) and ``muted`` may
    change at any time. ``stats()`` has the counters and the A/V offset actually achieved.
    ``options`` are ``BridgeSettings`` fields.
    """

    def __init__(
        self,
        input_device: str | int | None = None,
        output_device: str | int | None = None,
        offset_ms: float = 0.0,
        muted: bool = False,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        self.settings = BridgeSettings(input_device, output_device, **options)
        self.offset_ms = float(offset_ms)
        self.muted = bool(muted)
        self.failed: str | None = None  # why audio stopped, when it did
        self._now = clock  # monotonic seconds; tests drive the callbacks with their own clock
        s = self.settings
        self.line = AudioDelayLine(s.samplerate, max_delay_s=s.max_delay_ms / 1000.0 + 0.5)
        self.tracker = LatencyTracker(s.smoothing_frames, s.hysteresis_ms)
        self.sync = ClockSync(s.samplerate, s.blocksize)
        self.av_offsets = AvOffsets()
        self._video_ms: float | None = None
        self._lock = threading.Lock()
        self._streams = _Streams()
        self._flow = _Flow(gain=0.0 if muted else 1.0)

    @classmethod
    def from_settings(cls, settings: BridgeSettings, **live: Any) -> AudioBridge:
        """A bridge set up as ``settings`` (``live``: ``offset_ms``, ``muted``, ``clock``)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}, **live)

    @property
    def input_name(self) -> str:
        return self._streams.input_name

    @property
    def output_name(self) -> str:
        return self._streams.output_name

    @property
    def relocks(self) -> int:
        """How often the streams' clock offset was re-locked without an xrun."""
        return self.sync.relocks

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> AudioBridge:
        if self._streams.input is not None:
            return self
        s = self.settings
        sd = import_sounddevice()
        quiet_alsa()
        self._streams = streams = _Streams()
        in_index, in_pulse, streams.input_name = resolve_device(sd, s.input_device, "input")
        out_index, out_pulse, streams.output_name = resolve_device(sd, s.output_device, "output")
        try:
            self._open_streams(sd, in_index, in_pulse, out_index, out_pulse)
        except Exception as exc:  # PortAudioError, ValueError (bad channel count / rate)
            self.close()
            raise AudioUnavailable(
                f"Cannot open audio {streams.input_name!r} -> {streams.output_name!r} at {s.samplerate} Hz: "
                f"{first_line(exc)}. See `realtime devices`."
            ) from exc
        watched = [(kind, name) for kind, name in (("sources", in_pulse), ("sinks", out_pulse)) if name]
        if watched:
            # PulseAudio moves the streams of a sink that goes away to the default one (the
            # speakers, or our own input: an echo). Watch for that and stop instead.
            threading.Thread(
                target=self._watch_pulse, args=(watched, streams.closed), name="audio-watch", daemon=True
            ).start()
        logger.info(
            "audio: %s -> %s, %d Hz, block %d, path latency %.1f ms (in %.1f + out %.1f)",
            streams.input_name,
            streams.output_name,
            s.samplerate,
            s.blocksize,
            self.path_latency_ms,
            streams.input_latency_s * 1000,
            streams.output_latency_s * 1000,
        )
        return self

    def _open_streams(self, sd: Any, in_index: Any, in_pulse: Any, out_index: Any, out_pulse: Any) -> None:
        s, streams = self.settings, self._streams
        in_ch = s.input_channels or (1 if s.input_channel is None else s.input_channel + 1)
        out_ch = s.output_channels or (max(s.output_mask) + 1 if s.output_mask else 1)
        pulse_latency = None if s.pulse_latency_msec is None else str(int(s.pulse_latency_msec))
        common = {
            "samplerate": s.samplerate,
            "blocksize": s.blocksize,
            "dtype": "float32",
            "latency": s.latency,
        }
        # Threads created inside inherit the raised priority; libpulse reads
        # PULSE_LATENCY_MSEC whenever the ALSA plugin (re)connects: at open and at start.
        with audio_thread_priority() as streams.boosted, pulse_env("PULSE_LATENCY_MSEC", pulse_latency):
            with pulse_env("PULSE_SOURCE", in_pulse):
                streams.input = sd.InputStream(
                    device=in_index,
                    channels=in_ch,
                    callback=self._input_callback,
                    finished_callback=lambda: self._finished("input"),
                    **common,
                )
            with pulse_env("PULSE_SINK", out_pulse):
                streams.output = sd.OutputStream(
                    device=out_index,
                    channels=out_ch,
                    callback=self._output_callback,
                    finished_callback=lambda: self._finished("output"),
                    **common,
                )
            streams.input_latency_s = float(streams.input.latency)
            streams.output_latency_s = float(streams.output.latency)
            streams.hostapis = (hostapi_name(sd, in_index), hostapi_name(sd, out_index))
            self._flow.started_at = self._now()
            streams.input.start()
            streams.output.start()

    def _watch_pulse(self, watched: list[tuple[str, str]], closed: threading.Event) -> None:
        """Every ``PULSE_WATCH_S``: is our PulseAudio sink/source still there? If not, stop.

        A short ``pactl list`` per check, nothing long-lived: a process that waits for
        events (``pactl subscribe``) would outlive us if we were killed.
        """
        while not closed.wait(PULSE_WATCH_S):
            for collection, name in watched:
                names = pulse_names(collection)
                if names is not None and name not in names:
                    self._fail(f"PulseAudio {collection[:-1]} {name!r} is gone")
                    self.close()
                    return

    def close(self) -> None:
        streams = self._streams
        streams.closing = True
        streams.closed.set()
        for attr in ("input", "output"):
            stream = getattr(streams, attr)
            setattr(streams, attr, None)
            if stream is None:
                continue
            try:
                stream.stop()
            except Exception as exc:
                logger.debug("audio stream stop: %s", exc)
            try:
                stream.close()
            except Exception as exc:
                logger.debug("audio stream close: %s", exc)

    def _finished(self, which: str) -> None:
        streams = self._streams
        if streams.closing:
            return  # closed by us
        stream = streams.input if which == "input" else streams.output
        if stream is not None and not getattr(stream, "closed", False):
            name = streams.input_name if which == "input" else streams.output_name
            self._fail(f"the audio {which} stream stopped ({name})")

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            logger.error("audio: %s; the video keeps running without audio", why)

    # -- settings the engine and the user change -----------------------------------------
    @property
    def path_latency_ms(self) -> float:
        """The audio path's own latency (capture → our input, our output → the call app).

        It is part of the total delay, so the delay line adds only the rest. PortAudio's
        ALSA backend (Linux, also through PulseAudio/PipeWire's ``pulse`` device) reports
        its whole buffer for both directions; measured through a null sink
        (``realtime.audio_probe.measure_bridge_delay``) the real path is the output latency
        alone: a captured block reaches us as soon as it is complete. Other host APIs
        report what PortAudio documents: input + output latency.
        """
        if self.settings.path_latency_ms is not None:
            return float(self.settings.path_latency_ms)
        streams = self._streams
        if streams.hostapis[0] == "ALSA" and streams.hostapis[1] == "ALSA":
            return streams.output_latency_s * 1000.0
        return (streams.input_latency_s + streams.output_latency_s) * 1000.0

    def set_smoothed_video_latency_ms(self, ms: float | None) -> None:
        """The video latency to follow, already smoothed (``AudioBridgeProcess`` smooths in the parent)."""
        self._video_ms = ms

    def set_video_latency_ms(self, ms: float) -> None:
        """One frame's capture→sink latency; called by the engine for every new frame."""
        with self._lock:
            self._video_ms = self.tracker.add(float(ms))
            achieved = self._flow.achieved_ms
        self.av_offsets.add(achieved, ms)
        self.check_alive()

    @property
    def video_latency_ms(self) -> float | None:
        """The smoothed video latency the audio follows."""
        return self._video_ms

    @property
    def target_delay_ms(self) -> float:
        """Total audio delay wanted: smoothed video latency + manual offset (>= the path latency)."""
        total = (self._video_ms or 0.0) + self.offset_ms
        return min(self.settings.max_delay_ms, max(total, self.path_latency_ms))

    @property
    def added_delay_ms(self) -> float:
        """What the delay line adds on top of the path latency."""
        return max(0.0, self.target_delay_ms - self.path_latency_ms)

    @property
    def min_delay_ms(self) -> float:
        """The smallest total delay this path can give (path + a block + the streams' phase)."""
        return self.path_latency_ms + self.sync.floor_s * 1000.0

    @property
    def audio_delay_ms(self) -> float | None:
        """Total mic→virtual-mic delay being applied now (path + delay line), or None before audio flows."""
        return self._flow.achieved_ms

    @property
    def level_db(self) -> float:
        """Input level (RMS dBFS, falls back at 20 dB/s) for a meter."""
        return self._flow.level_db

    @property
    def stalled(self) -> bool:
        """True while a stream has had no callback for ``STALL_S`` (a vanished or hung device)."""
        return self._flow.stalled

    def check_alive(self) -> None:
        """Called from the engine's thread: notice (and log once) a device that stopped."""
        flow = self._flow
        if self.failed is not None or flow.started_at == 0.0 or self._streams.input is None:
            return
        now = self._now()
        last_in = flow.last_in_t or flow.started_at
        last_out = flow.last_out_t or flow.started_at
        quiet = now - min(last_in, last_out)
        if quiet > STALL_S and not flow.stalled:
            flow.stalled = True
            which = self.input_name if last_in <= last_out else self.output_name
            logger.error(
                "audio: %r has delivered nothing for %.1f s (device gone?); the video keeps running",
                which,
                quiet,
            )
        elif flow.stalled and quiet < 0.5:
            flow.stalled = False
            logger.warning("audio: flowing again")

    # -- callbacks (PortAudio's thread) --------------------------------------------------
    def _input_callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t = self._now()
        c0 = time.perf_counter()
        flow, counters = self._flow, self._flow.counters
        if status:
            if status.input_overflow:
                counters["input_overflows"] += 1
            if status.input_underflow:
                counters["input_underflows"] += 1
        channel = self.settings.input_channel
        if channel is None:
            mono = indata.mean(axis=1) if indata.shape[1] > 1 else indata[:, 0]
        else:
            mono = indata[:, channel]
        self.line.write(mono)
        self.sync.input_block(t, frames, lost=bool(status and status.input_overflow))
        counters["input_blocks"] += 1
        fallen = flow.level_db - 20.0 * frames / self.settings.samplerate
        flow.level_db = max(level_db(mono), fallen, SILENCE_DB)
        flow.last_in_t = t
        flow.callback_s += time.perf_counter() - c0

    def _output_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t = self._now()
        c0 = time.perf_counter()
        flow, counters = self._flow, self._flow.counters
        if status:
            for flag in ("output_underflow", "output_overflow", "priming_output"):
                if getattr(status, flag):
                    counters[flag + "s"] += 1
        self.sync.output_block(t, frames, lost=bool(status and status.output_underflow))
        counters["output_blocks"] += 1
        flow.last_out_t = t
        if self.line.written < frames or (offset := self.sync.offset_s(frames)) is None:
            outdata.fill(0.0)
        else:
            self._play(outdata, frames, offset)
        flow.callback_s += time.perf_counter() - c0

    def _play(self, outdata: np.ndarray, frames: int, offset: float) -> None:
        """Fill ``outdata`` with the input delayed by the target; ``offset``: output - input clock (s)."""
        rate = self.settings.samplerate
        start = self.sync.output_pos - frames
        base = start + rate * offset  # the input sample arriving right now
        # The smallest delay that never reads unwritten samples: a block, plus the phase
        # between the two streams' callbacks.
        floor_s = self.sync.track_floor(base + frames - self.line.written, frames)
        added_s = max(self.added_delay_ms / 1000.0, floor_s)
        target = base - rate * added_s
        if target + frames > self.line.written + 1:
            self._flow.counters["starved_blocks"] += 1
        mono = self.line.read(frames, target)
        # What was applied: path latency + the delay line's offset from "now".
        applied_pos = self.line.read_pos - frames if self.line.read_pos is not None else target
        lag_s = (start - applied_pos) / rate + offset
        self._flow.achieved_ms = self.path_latency_ms + lag_s * 1000.0
        gain = 0.0 if self.muted else 1.0
        if not gain == self._flow.gain == 1.0:  # mute and unmute ramp over one block: no click
            ramp = np.linspace(self._flow.gain, gain, frames, endpoint=False, dtype=np.float32)
            mono = mono * ramp
            self._flow.gain = gain
        mask = self.settings.output_mask
        if mask is None:
            outdata[:] = mono[:, None]
        else:
            outdata.fill(0.0)
            for ch in mask:
                outdata[:, ch] = mono

    # -- reporting ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, latencies and the achieved A/V offset (audio delay − video latency, ms)."""
        s, flow, counters = self.settings, self._flow, self._flow.counters
        wall = max(self._now() - flow.started_at, 1e-9) if flow.started_at else 0.0
        boosted = self._streams.boosted
        return {
            "input": self.input_name,
            "output": self.output_name,
            "samplerate": s.samplerate,
            "blocksize": s.blocksize,
            "path_latency_ms": round(self.path_latency_ms, 2),
            "added_delay_ms": round(self.added_delay_ms, 2),
            "min_delay_ms": round(self.min_delay_ms, 2),
            "audio_delay_ms": None if flow.achieved_ms is None else round(flow.achieved_ms, 2),
            "video_latency_ms": None if self._video_ms is None else round(self._video_ms, 2),
            "offset_ms": self.offset_ms,
            "muted": self.muted,
            "av_offset_ms": self.av_offsets.summary(),
            "underruns": counters["output_underflows"] + counters["input_underflows"],
            "overruns": counters["input_overflows"] + counters["output_overflows"],
            **counters,
            "crossfades": self.line.jumps,
            "clock_relocks": self.sync.relocks,
            "callback_cpu_percent": round(100.0 * flow.callback_s / wall, 3) if wall else 0.0,
            "failed": self.failed,
            "stalled": flow.stalled,
            "raised_priority": bool(boosted),
            "audio_scheduling": boosted or "normal",
        }

    def status_line(self) -> str:
        """One line for the preview overlay: level meter, delay, offset, mute."""
        return status_line(self.level_db, self.audio_delay_ms, self.offset_ms, self.muted, self.failed)
