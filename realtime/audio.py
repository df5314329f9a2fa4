"""Audio A/V sync: the microphone, delayed by the video's live latency, to a virtual microphone.

The processed video reaches the call later than the voice (capture → track → render →
virtual camera takes tens of milliseconds), so the lips lag the sound. ``AudioBridge``
captures the microphone, delays it by the engine's measured capture→sink latency and plays
it to an output device that the call app uses as its microphone::

    mic ─InputStream─▶ AudioDelayLine ─OutputStream─▶ virtual mic (null sink / VB-Cable / BlackHole)
                          ▲
    Engine.on_latency ────┘ (per frame, smoothed: median + hysteresis)

The total audio delay is ``video latency + manual offset``; the device path's own latency
(input + output stream latency, as PortAudio reports it) is part of that total, so the
delay line only adds the rest. Input and output are separate streams: they may be
different devices with different clocks. Each stream's callbacks are mapped onto
``time.monotonic()`` (a low percentile of ``t - position / rate`` over the last second,
since a callback can be late but never early), which gives the exact input sample that
must be playing at each output block. Clock drift, start-up stalls and xruns all show up
as a moving target that the delay line follows.

``AudioDelayLine`` (pure numpy) moves to a new delay without clicks or pitch jumps:
small errors are absorbed by resampling at most ±1 % (below ~17 cents, inaudible on
speech) and large changes by a short equal-power crossfade between the old and the new
read position (no pitch change at all).

Any audio failure (no PortAudio, no such device, a device that vanishes) is logged as one
line; the video never depends on audio.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import platform
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from realtime.errors import DeviceUnavailable

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
BLOCKSIZE = 960  # 20 ms; smaller blocks sometimes stall PulseAudio's ALSA plugin
SILENCE_DB = -120.0

PORTAUDIO_FIX = {
    "Linux": "sudo apt install libportaudio2",
    "Darwin": "pip install --force-reinstall sounddevice",
    "Windows": "pip install --force-reinstall sounddevice",
}

# How a call app gets our output as its microphone, per OS.
VIRTUAL_MIC_SETUP = {
    "Linux": (
        "PulseAudio or PipeWire: create a null sink and expose its monitor as a microphone:\n"
        "  pactl load-module module-null-sink sink_name=realtime_mic "
        "sink_properties=device.description=realtime_mic\n"
        "  pactl load-module module-remap-source master=realtime_mic.monitor source_name=realtime_mic_src "
        "source_properties=device.description=realtime_mic_src\n"
        "then: realtime run ... --audio-in pulse --audio-out pulse:realtime_mic\n"
        "and pick 'realtime_mic_src' (or 'Monitor of realtime_mic') as the microphone in the call app.\n"
        "'pulse:NAME' opens PortAudio's 'pulse' device on the PulseAudio sink or source NAME "
        "(`pactl list short sinks` / `pactl list short sources`)."
    ),
    "Windows": (
        "install VB-Cable (https://vb-audio.com/Cable), then:\n"
        "  realtime run ... --audio-in \"Microphone\" --audio-out \"CABLE Input\"\n"
        "and pick 'CABLE Output' as the microphone in the call app."
    ),
    "Darwin": (
        "install BlackHole 2ch (brew install blackhole-2ch), then:\n"
        "  realtime run ... --audio-in \"MacBook Pro Microphone\" --audio-out \"BlackHole 2ch\"\n"
        "and pick 'BlackHole 2ch' as the microphone in the call app."
    ),
}


def virtual_mic_setup(system: str | None = None) -> str:
    """The steps that give a call app our audio as its microphone on ``system``."""
    system = system or platform.system()
    return VIRTUAL_MIC_SETUP.get(system, VIRTUAL_MIC_SETUP["Linux"])


class AudioUnavailable(DeviceUnavailable):
    """No PortAudio, no such audio device, or a stream that cannot be opened."""


def import_sounddevice() -> Any:
    """``sounddevice``, or ``AudioUnavailable`` with the fix when PortAudio is missing."""
    try:
        import sounddevice as sd
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library is missing
        fix = PORTAUDIO_FIX.get(platform.system(), PORTAUDIO_FIX["Linux"])
        raise AudioUnavailable(f"Audio unavailable: {exc}; fix: {fix}") from exc
    except ImportError as exc:
        raise AudioUnavailable(f"Audio unavailable: {exc}; fix: pip install sounddevice") from exc
    return sd


def level_db(block: np.ndarray) -> float:
    """RMS level of ``block`` in dBFS (``SILENCE_DB`` for digital silence)."""
    if block.size == 0:
        return SILENCE_DB
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return max(SILENCE_DB, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DB


# --------------------------------------------------------------------------- delay line


class AudioDelayLine:
    """A mono ring buffer read at a steerable position.

    ``write(x)`` appends samples; sample ``i`` of the stream is the ``i``-th sample ever
    written. ``read(n, target)`` returns ``n`` samples whose first one should be input
    sample ``target`` (a float index). The read position follows the target gradually:

    - within ``deadband`` samples of it: read straight on (exact, bit-for-bit copy at
      integer positions);
    - up to ``jump`` samples off: resample at ``1 ± max_rate_dev`` (cubic interpolation)
      until the error is gone, like a PLL; this absorbs clock drift and small latency
      changes with no audible pitch change;
    - further off: an equal-power crossfade over ``crossfade`` samples from the old read
      position to the new one, both advancing at the normal rate.

    Targets outside the readable range (not yet written, or already overwritten) are
    clamped. Memory is fixed at construction: ``capacity`` samples.
    """

    def __init__(
        self,
        samplerate: int = SAMPLE_RATE,
        max_delay_s: float = 2.0,
        crossfade_ms: float = 40.0,
        jump_ms: float = 12.0,
        deadband_ms: float = 0.5,
        max_rate_dev: float = 0.01,
        correct_s: float = 0.25,
    ) -> None:
        self.samplerate = int(samplerate)
        size = 1
        while size < int((max_delay_s + 0.5) * self.samplerate):
            size *= 2
        self.capacity = size
        self._mask = size - 1
        self._ring = np.zeros(size, np.float32)
        self.written = 0  # samples written so far (the next write's index)
        self.read_pos: float | None = None
        self.crossfade = max(1, int(round(crossfade_ms * 1e-3 * self.samplerate)))
        self.jump = jump_ms * 1e-3 * self.samplerate
        self.deadband = deadband_ms * 1e-3 * self.samplerate
        self.max_rate_dev = float(max_rate_dev)
        self.correct = max(1.0, correct_s * self.samplerate)
        self._fade_to: float | None = None  # read position being faded in
        self._fade_done = 0
        self._correcting = False
        self.jumps = 0  # crossfades started
        self.clamped = 0  # blocks whose target was out of the readable range

    # -- writing ---------------------------------------------------------------------
    def write(self, block: np.ndarray) -> None:
        x = np.asarray(block, np.float32).reshape(-1)
        n = x.size
        if n == 0:
            return
        if n > self.capacity:
            x, n = x[-self.capacity :], self.capacity
            self.written += block.size - n
        start = self.written & self._mask
        first = min(n, self.capacity - start)
        self._ring[start : start + first] = x[:first]
        if first < n:
            self._ring[: n - first] = x[first:]
        self.written += n

    # -- reading ---------------------------------------------------------------------
    @property
    def delay(self) -> float:
        """Samples between the newest sample written and the next one to be read."""
        if self.read_pos is None:
            return 0.0
        return self.written - (self._fade_to if self._fade_to is not None else self.read_pos)

    def _bounds(self, n: int, rate: float | None = None) -> tuple[float, float]:
        """Lowest and highest start position from which ``n`` samples can be read.

        ``rate`` None: a straight copy at an integer position; else interpolated reading,
        which needs one sample after the last position.
        """
        low = self.written - self.capacity + 2.0
        if rate is None:
            high = float(self.written - n)
        else:
            high = self.written - (n - 1) * rate - 2.0
        return low, max(low, high)

    def _clamp(self, pos: float, n: int) -> float:
        low, high = self._bounds(n)
        if pos < low or pos > high:
            self.clamped += 1
        return min(max(pos, low), high)

    def _gather(self, pos: float, n: int, rate: float) -> np.ndarray:
        """``n`` samples from ``pos`` at ``rate`` (4-point cubic Hermite interpolation)."""
        if rate == 1.0 and pos == int(pos):
            idx = (np.arange(n, dtype=np.int64) + int(pos)) & self._mask
            return self._ring[idx]
        p = pos + rate * np.arange(n, dtype=np.float64)
        i = np.floor(p).astype(np.int64)
        f = (p - i).astype(np.float32)
        r = self._ring
        m = self._mask
        y0, y1, y2, y3 = r[(i - 1) & m], r[i & m], r[(i + 1) & m], r[(i + 2) & m]
        c1 = 0.5 * (y2 - y0)
        c2 = y0 - 2.5 * y1 + 2.0 * y2 - 0.5 * y3
        c3 = 0.5 * (y3 - y0) + 1.5 * (y1 - y2)
        return ((c3 * f + c2) * f + c1) * f + y1

    def read(self, n: int, target: float) -> np.ndarray:
        """``n`` samples, steering the read position towards input index ``target``."""
        n = int(n)
        target = self._clamp(float(target), n)
        if self.read_pos is None:
            self.read_pos = float(round(target))
        else:
            low, _ = self._bounds(n)
            if self.read_pos < low:  # overwritten under us (a long stall): start again
                self.read_pos = float(round(target))
                self._fade_to = None
        if self._fade_to is None:
            error = target - self.read_pos
            if abs(error) > self.jump:
                self._fade_to, self._fade_done = float(round(target)), 0
                self.jumps += 1
                self._correcting = False
        if self._fade_to is not None:
            return self._read_crossfade(n)
        error = target - self.read_pos
        if self._correcting and abs(error) < 0.25 * self.deadband:
            self._correcting = False
        elif not self._correcting and abs(error) > self.deadband:
            self._correcting = True
        rate = 1.0
        if self._correcting:
            rate = 1.0 + max(-self.max_rate_dev, min(self.max_rate_dev, error / self.correct))
            # Never overshoot within one block.
            if abs((rate - 1.0) * n) > abs(error):
                rate = 1.0 + error / n
        exact = rate == 1.0 and self.read_pos == int(self.read_pos)
        _, high = self._bounds(n, None if exact else rate)
        pos = min(self.read_pos, high)
        out = self._gather(pos, n, rate)
        self.read_pos = pos + rate * n
        if rate != 1.0 and abs(target + n - self.read_pos) < 1e-6:
            self.read_pos = float(round(self.read_pos))  # back on the integer grid: exact copies again
        return out

    def _read_crossfade(self, n: int) -> np.ndarray:
        assert self._fade_to is not None and self.read_pos is not None
        _, high = self._bounds(n, 1.0)
        old_pos, new_pos = min(self.read_pos, high), min(self._fade_to, high)
        old = self._gather(old_pos, n, 1.0)
        new = self._gather(new_pos, n, 1.0)
        k = np.arange(self._fade_done, self._fade_done + n, dtype=np.float32)
        theta = np.clip(k / self.crossfade, 0.0, 1.0) * (np.pi / 2)
        out = np.cos(theta) * old + np.sin(theta) * new
        self._fade_done += n
        self.read_pos, self._fade_to = old_pos + n, new_pos + n
        if self._fade_done >= self.crossfade:
            self.read_pos, self._fade_to = self._fade_to, None
        return out.astype(np.float32)

    def process(self, block: np.ndarray, delay: float) -> np.ndarray:
        """Synchronous use (one callback with input and output): ``block`` delayed by ``delay`` samples."""
        x = np.asarray(block, np.float32).reshape(-1)
        self.write(x)
        return self.read(x.size, self.written - x.size - float(delay))


# --------------------------------------------------------------------------- clocks


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
        self.offset = float(np.percentile(self._values, self.percentile))

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
            median = float(np.median(self._recent))
            if self.value_ms is None or abs(median - self.value_ms) > self.hysteresis_ms:
                self.value_ms = median
        return self.value_ms or 0.0


# --------------------------------------------------------------------------- devices


@contextmanager
def _pulse_env(name: str, value: str | None) -> Iterator[None]:
    """Set ``PULSE_SINK``/``PULSE_SOURCE`` while a stream opens (read by libpulse at connect)."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def resolve_device(sd: Any, spec: str | int | None, kind: str) -> tuple[int | None, str | None, str]:
    """``(portaudio index, pulse name or None, description)`` for a ``--audio-in/--audio-out`` value.

    ``spec`` is a PortAudio device index, a (unique) part of its name, ``default``/None,
    or ``pulse:NAME`` for the PulseAudio/PipeWire sink or source NAME through PortAudio's
    ``pulse`` device. ``kind`` is ``input`` or ``output``.
    """
    pulse_name: str | None = None
    text = "" if spec is None else str(spec).strip()
    if text.lower().startswith("pulse:"):
        pulse_name = text.split(":", 1)[1].strip() or None
        text = "pulse"
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    try:
        if text in ("", "default"):
            info = sd.query_devices(kind=kind)
            index = int(info["index"]) if "index" in info else None
        else:
            key: int | str = int(text) if text.lstrip("-").isdigit() else text
            info = sd.query_devices(key, kind=kind) if isinstance(key, str) else sd.query_devices(key)
            index = int(info.get("index", key if isinstance(key, int) else -1))
    except Exception as exc:  # ValueError (no match / ambiguous), PortAudioError
        names = _device_names(sd, channels_key)
        raise AudioUnavailable(
            f"No audio {kind} device {spec!r} ({_first_line(exc)}); {kind} devices here: {names}. "
            f"See `realtime devices`."
        ) from exc
    if int(info.get(channels_key, 0)) < 1:
        raise AudioUnavailable(
            f"Audio device {info.get('name')!r} has no {kind} channels; "
            f"{kind} devices here: {_device_names(sd, channels_key)}."
        )
    desc = str(info.get("name", text)) + (f" ({pulse_name})" if pulse_name else "")
    return index, pulse_name, desc


def _device_names(sd: Any, channels_key: str) -> str:
    try:
        names = [f"[{i}] {d['name']}" for i, d in enumerate(sd.query_devices()) if d.get(channels_key, 0) > 0]
    except Exception:
        return "unknown"
    return ", ".join(names) or "none"


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:157] + "..." if len(text) > 160 else text


# --------------------------------------------------------------------------- bridge


class AudioBridge:
    """Microphone → delay (video latency + offset) → virtual microphone.

    ``start()`` opens the streams (``AudioUnavailable`` on failure); the engine calls
    ``set_video_latency_ms`` with each new frame's capture→sink latency. ``offset_ms``
    (manual, added to the video latency; may be negative) and ``muted`` may change at
    any time. ``stats()`` has the counters and the A/V offset actually achieved.
    """

    def __init__(
        self,
        input_device: str | int | None = None,
        output_device: str | int | None = None,
        samplerate: int = SAMPLE_RATE,
        blocksize: int = BLOCKSIZE,
        latency: str | float = "low",
        offset_ms: float = 0.0,
        muted: bool = False,
        input_channel: int | None = None,
        input_channels: int | None = None,
        output_channels: int | None = None,
        output_mask: Sequence[int] | None = None,
        smoothing_frames: int = 30,
        hysteresis_ms: float = 3.0,
        max_delay_ms: float = 1500.0,
        path_latency_ms: float | None = None,
    ) -> None:
        self.input_spec = input_device
        self.output_spec = output_device
        self.samplerate = int(samplerate)
        self.blocksize = int(blocksize)
        self.latency = latency
        self.offset_ms = float(offset_ms)
        self.muted = bool(muted)
        self.input_channel = input_channel
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.output_mask = list(output_mask) if output_mask is not None else None
        self.max_delay_ms = float(max_delay_ms)
        self._path_override_ms = path_latency_ms
        self.line = AudioDelayLine(self.samplerate, max_delay_s=max_delay_ms / 1000.0 + 0.5)
        self.tracker = LatencyTracker(smoothing_frames, hysteresis_ms)
        self._in_clock = StreamClock(self.samplerate)
        self._out_clock = StreamClock(self.samplerate)
        self._lock = threading.Lock()
        self._in_stream: Any = None
        self._out_stream: Any = None
        self._in_pos = 0
        self._out_pos = 0
        self._gain = 0.0 if muted else 1.0
        self.input_latency_s = 0.0
        self.output_latency_s = 0.0
        self.input_name = ""
        self.output_name = ""
        self._level_db = SILENCE_DB
        self._last_in_t = 0.0
        self._last_out_t = 0.0
        self._started_at = 0.0
        self._callback_s = 0.0
        self._video_ms: float | None = None
        self._achieved_ms: float | None = None  # total audio delay actually applied (last block)
        self._av_offsets: collections.deque[float] = collections.deque(maxlen=20000)
        self._stalled_logged = False
        self.failed: str | None = None  # why audio stopped, when it did
        self.counters = {
            "input_overflows": 0,
            "input_underflows": 0,
            "output_underflows": 0,
            "output_overflows": 0,
            "priming_outputs": 0,
            "starved_blocks": 0,
            "input_blocks": 0,
            "output_blocks": 0,
        }

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> AudioBridge:
        sd = import_sounddevice()
        in_index, in_pulse, self.input_name = resolve_device(sd, self.input_spec, "input")
        out_index, out_pulse, self.output_name = resolve_device(sd, self.output_spec, "output")
        in_ch = self.input_channels or (1 if self.input_channel is None else self.input_channel + 1)
        out_ch = self.output_channels or (max(self.output_mask) + 1 if self.output_mask else 1)
        try:
            with _pulse_env("PULSE_SOURCE", in_pulse):
                self._in_stream = sd.InputStream(
                    device=in_index, samplerate=self.samplerate, blocksize=self.blocksize, channels=in_ch,
                    dtype="float32", latency=self.latency, callback=self._input_callback,
                    finished_callback=lambda: self._finished("input"),
                )
            with _pulse_env("PULSE_SINK", out_pulse):
                self._out_stream = sd.OutputStream(
                    device=out_index, samplerate=self.samplerate, blocksize=self.blocksize, channels=out_ch,
                    dtype="float32", latency=self.latency, callback=self._output_callback,
                    finished_callback=lambda: self._finished("output"),
                )
            self.input_latency_s = float(self._in_stream.latency)
            self.output_latency_s = float(self._out_stream.latency)
            self._started_at = time.monotonic()
            self._in_stream.start()
            self._out_stream.start()
        except Exception as exc:  # PortAudioError, ValueError (bad channel count / rate)
            self.close()
            raise AudioUnavailable(
                f"Cannot open audio {self.input_name!r} -> {self.output_name!r} at {self.samplerate} Hz: "
                f"{_first_line(exc)}. See `realtime devices`."
            ) from exc
        logger.info(
            "audio: %s -> %s, %d Hz, block %d, path latency %.1f ms (in %.1f + out %.1f)",
            self.input_name, self.output_name, self.samplerate, self.blocksize, self.path_latency_ms,
            self.input_latency_s * 1000, self.output_latency_s * 1000,
        )
        return self

    def close(self) -> None:
        for attr in ("_in_stream", "_out_stream"):
            stream = getattr(self, attr)
            setattr(self, attr, None)
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

    def __enter__(self) -> AudioBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _finished(self, which: str) -> None:
        if self._in_stream is None and self._out_stream is None:
            return  # closed by us
        stream = self._in_stream if which == "input" else self._out_stream
        if stream is not None and not getattr(stream, "closed", False):
            self._fail(f"the audio {which} stream stopped ({self.input_name if which == 'input' else self.output_name})")

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            logger.error("audio: %s; the video keeps running without audio", why)

    # -- settings the engine and the user change -----------------------------------------
    @property
    def path_latency_ms(self) -> float:
        """The audio path's own latency (input + output stream), part of the total delay."""
        if self._path_override_ms is not None:
            return float(self._path_override_ms)
        return (self.input_latency_s + self.output_latency_s) * 1000.0

    def set_video_latency_ms(self, ms: float) -> None:
        """One frame's capture→sink latency; called by the engine for every new frame."""
        with self._lock:
            self._video_ms = self.tracker.add(float(ms))
            achieved = self._achieved_ms
        if achieved is not None and math.isfinite(ms):
            self._av_offsets.append(achieved - float(ms))
        self._check_alive()

    @property
    def video_latency_ms(self) -> float | None:
        """The smoothed video latency the audio follows."""
        return self._video_ms

    @property
    def target_delay_ms(self) -> float:
        """Total audio delay wanted: smoothed video latency + manual offset (>= the path latency)."""
        total = (self._video_ms or 0.0) + self.offset_ms
        return min(self.max_delay_ms, max(total, self.path_latency_ms))

    @property
    def added_delay_ms(self) -> float:
        """What the delay line adds on top of the path latency."""
        return max(0.0, self.target_delay_ms - self.path_latency_ms)

    @property
    def audio_delay_ms(self) -> float | None:
        """Total mic→virtual-mic delay being applied now (path + delay line), or None before audio flows."""
        return self._achieved_ms

    @property
    def level_db(self) -> float:
        """Input level (RMS dBFS, falls back at 20 dB/s) for a meter."""
        return self._level_db

    def _check_alive(self) -> None:
        if self.failed is not None or self._started_at == 0.0 or self._in_stream is None:
            return
        now = time.monotonic()
        last = min(self._last_in_t or self._started_at, self._last_out_t or self._started_at)
        if now - last > 2.0 and not self._stalled_logged:
            self._stalled_logged = True
            which = "input" if (self._last_in_t or self._started_at) <= (self._last_out_t or self._started_at) else "output"
            logger.error("audio: the %s device stopped delivering for %.1f s; the video keeps running", which, now - last)

    # -- callbacks (PortAudio's thread) --------------------------------------------------
    def _input_callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t = time.monotonic()
        c0 = time.perf_counter()
        if status:
            if status.input_overflow:
                self.counters["input_overflows"] += 1
                self._in_clock.reset()
            if status.input_underflow:
                self.counters["input_underflows"] += 1
        if self.input_channel is None:
            mono = indata.mean(axis=1) if indata.shape[1] > 1 else indata[:, 0]
        else:
            mono = indata[:, self.input_channel]
        self.line.write(mono)
        self._in_pos += frames
        self._in_clock.add(t, self._in_pos)
        self.counters["input_blocks"] += 1
        level = level_db(mono)
        fallen = self._level_db - 20.0 * frames / self.samplerate
        self._level_db = max(level, fallen, SILENCE_DB)
        self._last_in_t = t
        self._callback_s += time.perf_counter() - c0

    def _output_callback(self, outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t = time.monotonic()
        c0 = time.perf_counter()
        if status:
            if status.output_underflow:
                self.counters["output_underflows"] += 1
                self._out_clock.reset()
            if status.output_overflow:
                self.counters["output_overflows"] += 1
            if status.priming_output:
                self.counters["priming_outputs"] += 1
        self._out_clock.add(t, self._out_pos)
        self._out_pos += frames
        self.counters["output_blocks"] += 1
        self._last_out_t = t
        c_in, c_out = self._in_clock.offset, self._out_clock.offset
        if c_in is None or c_out is None or self.line.written < frames:
            outdata.fill(0.0)
            self._callback_s += time.perf_counter() - c0
            return
        added_s = self.added_delay_ms / 1000.0
        start = self._out_pos - frames
        target = start + self.samplerate * (c_out - c_in - added_s)
        if target + frames > self.line.written + 1:
            self.counters["starved_blocks"] += 1
        mono = self.line.read(frames, target)
        # What was applied: path latency + the delay line's offset from "now".
        applied_pos = self.line.read_pos - frames if self.line.read_pos is not None else target
        lag_s = (start - applied_pos) / self.samplerate + (c_out - c_in)
        self._achieved_ms = self.path_latency_ms + lag_s * 1000.0
        gain = 0.0 if self.muted else 1.0
        if gain != self._gain or self._gain != 1.0:
            ramp = np.linspace(self._gain, gain, frames, endpoint=False, dtype=np.float32)
            mono = mono * ramp
            self._gain = gain
        if self.output_mask is None:
            outdata[:] = mono[:, None]
        else:
            outdata.fill(0.0)
            for ch in self.output_mask:
                outdata[:, ch] = mono
        self._callback_s += time.perf_counter() - c0

    # -- reporting ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, latencies and the achieved A/V offset (audio delay − video latency, ms)."""
        wall = max(time.monotonic() - self._started_at, 1e-9) if self._started_at else 0.0
        offsets = np.asarray(self._av_offsets, np.float64)
        av: dict[str, float] | None = None
        if offsets.size:
            av = {
                "mean": round(float(offsets.mean()), 2),
                "p50": round(float(np.median(offsets)), 2),
                "p95_abs": round(float(np.percentile(np.abs(offsets), 95)), 2),
            }
        return {
            "input": self.input_name,
            "output": self.output_name,
            "samplerate": self.samplerate,
            "blocksize": self.blocksize,
            "path_latency_ms": round(self.path_latency_ms, 2),
            "added_delay_ms": round(self.added_delay_ms, 2),
            "audio_delay_ms": None if self._achieved_ms is None else round(self._achieved_ms, 2),
            "video_latency_ms": None if self._video_ms is None else round(self._video_ms, 2),
            "offset_ms": self.offset_ms,
            "muted": self.muted,
            "av_offset_ms": av,
            "underruns": self.counters["output_underflows"] + self.counters["input_underflows"],
            "overruns": self.counters["input_overflows"] + self.counters["output_overflows"],
            **self.counters,
            "crossfades": self.line.jumps,
            "callback_cpu_percent": round(100.0 * self._callback_s / wall, 3) if wall else 0.0,
            "failed": self.failed,
        }

    def status_line(self) -> str:
        """One line for the preview overlay: level, delay, offset, mute."""
        if self.failed:
            return "audio: off (" + self.failed[:40] + ")"
        level = max(self._level_db, -60.0)
        bars = int(round((level + 60.0) / 6.0))
        meter = "|" * bars + "." * (10 - bars)
        delay = self._achieved_ms
        delay_text = "--" if delay is None else f"{delay:3.0f}"
        mute = "  MUTED" if self.muted else ""
        return f"audio [{meter}] {level:4.0f} dB  delay {delay_text} ms  offset {self.offset_ms:+.0f} ms{mute}"


def start_bridge(
    input_device: str | int | None,
    output_device: str | int | None,
    offset_ms: float = 0.0,
    muted: bool = False,
) -> AudioBridge | None:
    """A started bridge, or None after logging one clear line: the video never waits for audio."""
    bridge = AudioBridge(input_device, output_device, offset_ms=offset_ms, muted=muted)
    try:
        return bridge.start()
    except AudioUnavailable as exc:
        logger.error("%s The video keeps running without audio.", exc)
    except Exception as exc:  # anything else from PortAudio must not stop the video either
        logger.error("audio failed: %s: %s. The video keeps running without audio.", type(exc).__name__, _first_line(exc))
    return None
