"""Audio A/V sync: the microphone, delayed by the video's live latency, to a virtual microphone.

The processed video reaches the call later than the voice (capture → track → render →
virtual camera takes tens of milliseconds), so the lips lag the sound. ``AudioBridge``
captures the microphone, delays it by the engine's measured capture→sink latency and plays
it to an output device that the call app uses as its microphone::

    mic ─InputStream─▶ AudioDelayLine ─OutputStream─▶ virtual mic (null sink / VB-Cable / BlackHole)
                          ▲
    Engine.on_latency ────┘ (per frame, smoothed: median + hysteresis)

The total audio delay (microphone → call app) is ``video latency + manual offset``. The
device path's own latency is part of that total, so the delay line only adds the rest
(see ``AudioBridge.path_latency_ms``). Input and output are separate streams: they may be
different devices with different clocks. Each stream's callbacks are mapped onto
``time.monotonic()`` (a low percentile of ``t - position / rate`` over the last second,
since a callback can be late but never early), which gives the exact input sample that
must be playing at each output block. Clock drift, start-up stalls and xruns all show up
as a moving target that the delay line follows. The delay cannot be shorter than the path
plus one block plus the phase between the two streams' callbacks (about 40-50 ms through
PulseAudio with 10 ms blocks, ``benchmarks/audio_floor.py``); a faster video gets that
minimum, and ``stats()`` says so. The audio threads run real-time (``SCHED_RR``) where
allowed, which keeps 10 ms blocks free of underruns on a loaded machine.

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
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np

from realtime.errors import DeviceUnavailable

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
# 10 ms: the delay's floor is about path (2 blocks) + 1-2 blocks (benchmarks/audio_floor.py:
# 960 → ~100 ms, 480 → ~50 ms, 240 → ~25 ms). 240 underran under CPU load even with real-time
# audio threads (benchmarks/audio_soak.py --busy-loop); 480 did not.
BLOCKSIZE = 480
SILENCE_DB = -120.0
AUDIO_NICE = -11  # the audio threads' nice value where allowed (PulseAudio's own)
AUDIO_RT_PRIORITY = 4  # their SCHED_RR priority where allowed (PulseAudio's I/O threads: 5)
PULSE_WATCH_S = 2.0  # how often a pulse:NAME device is checked for still being there
OFFSET_RELOCK_S = 0.020  # the locked clock offset and the callbacks' timing disagree by more (3 s): re-lock
STALL_S = 3.0  # no callback for this long: the device is gone or hung (PulseAudio start-up can take ~2 s)

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
        '  realtime run ... --audio-in "Microphone" --audio-out "CABLE Input"\n'
        "and pick 'CABLE Output' as the microphone in the call app."
    ),
    "Darwin": (
        "install BlackHole 2ch (brew install blackhole-2ch), then:\n"
        '  realtime run ... --audio-in "MacBook Pro Microphone" --audio-out "BlackHole 2ch"\n'
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


_ALSA_HANDLER: Any = None


def quiet_alsa() -> None:
    """Send ALSA's own error prints (e.g. "underrun occurred") to our debug log, not stderr.

    xruns are counted from PortAudio's callback flags and reported in the summary; the
    library's raw lines would otherwise break the one-line-error rule of the CLI.
    """
    global _ALSA_HANDLER
    if _ALSA_HANDLER is not None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import ctypes.util

        asound = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
        prototype = ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
        )

        def handler(filename: bytes, line: int, function: bytes, err: int, fmt: bytes) -> None:
            logger.debug("alsa: %s (%s)", (fmt or b"").decode("utf-8", "replace"), (function or b"").decode())

        _ALSA_HANDLER = prototype(handler)
        asound.snd_lib_error_set_handler(_ALSA_HANDLER)
    except Exception as exc:  # no libasound: nothing to quiet
        _ALSA_HANDLER = False
        logger.debug("cannot quiet ALSA: %s", exc)


def level_db(block: np.ndarray) -> float:
    """RMS level of ``block`` in dBFS (``SILENCE_DB`` for digital silence)."""
    if block.size == 0:
        return SILENCE_DB
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return max(SILENCE_DB, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DB


# --------------------------------------------------------------------------- offline (render)


def video_start_offset_s(path: str | os.PathLike[str]) -> float:
    """Seconds from the start of ``path`` to its first video frame (0.0 when unknown).

    ffmpeg lines a muxed input up by the file's start (its earliest stream). A driver
    whose video starts after its audio (common in phone and camera recordings) would
    otherwise get its audio that much late in a render, whose video starts at 0.
    """
    import re
    import subprocess

    import imageio_ffmpeg

    try:
        probe = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stderr
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("probing %s failed: %s", path, exc)
        return 0.0
    file_start = re.search(r"Duration:.*?, start: (-?[\d.]+)", probe)
    video = re.search(r"Stream #\d+:\d+.*?: Video: .*", probe)
    if not file_start or not video:
        return 0.0
    # ffmpeg prints a stream's own start only when it is not 0.
    stream_start = re.search(r", start (-?[\d.]+)", video.group(0))
    offset = (float(stream_start.group(1)) if stream_start else 0.0) - float(file_start.group(1))
    return max(0.0, offset)


# --------------------------------------------------------------------------- delay line


class AudioDelayLine:
    """A mono ring buffer read at a steerable position.

    ``write(x)`` appends samples; sample ``i`` of the stream is the ``i``-th sample ever
    written. ``read(n, target)`` returns ``n`` samples whose first one should be input
    sample ``target`` (a float index). The read position follows the target gradually:

    - within ``deadband`` samples of it: read straight on (exact, bit-for-bit copies at
      integer positions);
    - up to ``jump`` samples off: resample at ``1 ± max_rate_dev`` (cubic interpolation)
      until it is exactly on the (rounded) target again, like a PLL; this absorbs clock
      drift and small latency changes with no audible pitch change;
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
        deadband_ms: float = 1.0,
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
        goal = float(round(target))  # integer goals: once there, reads are exact copies again
        if self._fade_to is None and abs(goal - self.read_pos) > self.jump:
            self._fade_to, self._fade_done = goal, 0
            self.jumps += 1
            self._correcting = False
        if self._fade_to is not None:
            return self._read_crossfade(n)
        error = goal - self.read_pos
        if not self._correcting and abs(error) > self.deadband:
            self._correcting = True  # hysteresis: start beyond the deadband, stop only on the goal
        rate = 1.0
        if self._correcting:
            # Proportional, but at least 0.1 % so that it lands in a finite time.
            dev = min(self.max_rate_dev, max(0.001, abs(error) / self.correct))
            rate = 1.0 + math.copysign(dev, error)
            if abs((rate - 1.0) * n) >= abs(error):  # lands on the goal in this block
                rate = 1.0 + error / n
                self._correcting = False
            # Speeding up must not read samples that are not written yet.
            limit = (self.written - 2.0 - self.read_pos) / max(1, n - 1)
            if rate > limit:
                rate = max(limit, 1.0 - self.max_rate_dev)
                self._correcting = True
        exact = rate == 1.0 and self.read_pos == int(self.read_pos)
        _, high = self._bounds(n, None if exact else rate)
        pos = min(self.read_pos, high)  # only when the input stopped coming (a starved block)
        out = self._gather(pos, n, rate)
        self.read_pos = pos + rate * n
        if abs(self.read_pos - round(self.read_pos)) < 1e-6:
            self.read_pos = float(round(self.read_pos))
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
        ordered = sorted(self._values)  # ~50 floats: far cheaper than np.percentile in a callback
        self.offset = ordered[int(self.percentile / 100.0 * (len(ordered) - 1))]

    @property
    def ready(self) -> bool:
        """Enough callbacks since the last reset for a trustworthy offset."""
        return len(self._values) >= 10

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
            median = statistics.median(self._recent)
            if self.value_ms is None or abs(median - self.value_ms) > self.hysteresis_ms:
                self.value_ms = median
        return self.value_ms or 0.0


# --------------------------------------------------------------------------- devices


@contextmanager
def audio_thread_priority(nice: int = AUDIO_NICE, rt_priority: int = AUDIO_RT_PRIORITY) -> Iterator[str]:
    """Raise the calling thread's priority for the block, then restore it.

    Linux threads inherit their creator's scheduling, so the threads created inside
    (PortAudio's callback threads, libpulse's mainloop) keep the raised priority while
    the caller goes back to normal. Where allowed (root, CAP_SYS_NICE or an RLIMIT_RTPRIO)
    they are real-time (``SCHED_RR`` at ``rt_priority``, just below PulseAudio's own I/O
    threads), as audio applications get from rtkit: on a busy machine a normal thread
    can wait longer than a 5 ms block for the CPU. Otherwise the nice value is raised to
    ``nice`` where allowed; failing both nothing changes. Yields what was raised
    (``"SCHED_RR 4"``, ``"nice -11"``) or ``""``.
    """
    if not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        yield ""
        return
    tid = threading.get_native_id()
    try:
        old = os.getpriority(os.PRIO_PROCESS, tid)
        raised = old > nice
        if raised:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        raised = False
    realtime = False
    if rt_priority > 0 and hasattr(os, "sched_setscheduler"):
        try:
            old_policy, old_param = os.sched_getscheduler(0), os.sched_getparam(0)  # 0: this thread
            if old_policy == os.SCHED_OTHER:
                os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(rt_priority))
                realtime = True
        except OSError as exc:  # not allowed: the nice value is what we have
            logger.debug("no real-time scheduling for the audio threads: %s", exc)
    try:
        yield f"SCHED_RR {rt_priority}" if realtime else f"nice {nice}" if raised else ""
    finally:
        try:
            if realtime:
                os.sched_setscheduler(0, old_policy, old_param)
            if raised:
                os.setpriority(os.PRIO_PROCESS, tid, old)
        except OSError as exc:  # going back to normal is always allowed; be safe anyway
            logger.debug("could not restore the thread priority: %s", exc)


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
    if pulse_name:
        _check_pulse_name(pulse_name, kind)
    desc = str(info.get("name", text)) + (f" ({pulse_name})" if pulse_name else "")
    return index, pulse_name, desc


def pulse_names(kind: str) -> list[str] | None:
    """Names of the PulseAudio/PipeWire ``sinks`` or ``sources`` (``pactl``), None when unknown."""
    import subprocess

    try:
        proc = subprocess.run(["pactl", "list", "short", kind], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [line.split("\t")[1] for line in proc.stdout.splitlines() if line.count("\t") >= 1]


def _check_pulse_name(name: str, kind: str) -> None:
    """``AudioUnavailable`` naming the alternatives when PulseAudio has no such sink/source."""
    collection = "sources" if kind == "input" else "sinks"
    names = pulse_names(collection)
    if names is not None and name not in names:
        raise AudioUnavailable(
            f"PulseAudio has no {collection[:-1]} {name!r}; {collection} here: {', '.join(names) or 'none'}. "
            f"See `realtime devices` for the virtual microphone setup."
        )


def _hostapi_name(sd: Any, index: int | None) -> str:
    try:
        info = sd.query_devices(index) if index is not None else sd.query_devices(kind="output")
        return str(sd.query_hostapis(info["hostapi"])["name"])
    except Exception:
        return ""


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
        pulse_latency_msec: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.input_spec = input_device
        # PULSE_LATENCY_MSEC for our streams (None: the ALSA plugin's own buffer attributes,
        # which follow the block). 5 and 10 ms with 5 ms blocks measured worse here (a higher,
        # less steady floor: benchmarks/audio_floor.py --pulse-latency-msec).
        self.pulse_latency_msec = pulse_latency_msec
        self._now = clock  # monotonic seconds; tests drive the callbacks with their own clock
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
        self.hostapis = ("", "")
        self.boosted = ""  # how the audio threads' priority was raised ("SCHED_RR 4", "nice -11"), if at all
        self.output_name = ""
        self._level_db = SILENCE_DB
        self._last_in_t = 0.0
        self._last_out_t = 0.0
        self._started_at = 0.0
        self._callback_s = 0.0
        self._video_ms: float | None = None
        self._achieved_ms: float | None = None  # total audio delay actually applied (last block)
        self._av_offsets: collections.deque[float] = collections.deque(maxlen=20000)
        self._stalled = False
        self.failed: str | None = None  # why audio stopped, when it did
        self._closing = False
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        # The phase between the streams' callbacks over the last 2 s (see _output_callback).
        self._need: collections.deque[float] = collections.deque(
            maxlen=max(10, int(2.0 * self.samplerate / self.blocksize))
        )
        self._offset_lock: float | None = None  # output clock - input clock, locked (s)
        self._reacquire = False
        self._disagree_s = 0.0
        self.relocks = 0
        self._floor_s = 0.0
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
        quiet_alsa()
        in_index, in_pulse, self.input_name = resolve_device(sd, self.input_spec, "input")
        out_index, out_pulse, self.output_name = resolve_device(sd, self.output_spec, "output")
        in_ch = self.input_channels or (1 if self.input_channel is None else self.input_channel + 1)
        out_ch = self.output_channels or (max(self.output_mask) + 1 if self.output_mask else 1)
        pulse_latency = None if self.pulse_latency_msec is None else str(int(self.pulse_latency_msec))
        scope = ExitStack()
        try:
            self.boosted = scope.enter_context(audio_thread_priority())
            # libpulse reads PULSE_LATENCY_MSEC whenever the ALSA plugin (re)connects a
            # stream: at open and again at start.
            scope.enter_context(_pulse_env("PULSE_LATENCY_MSEC", pulse_latency))
            with _pulse_env("PULSE_SOURCE", in_pulse):
                self._in_stream = sd.InputStream(
                    device=in_index,
                    samplerate=self.samplerate,
                    blocksize=self.blocksize,
                    channels=in_ch,
                    dtype="float32",
                    latency=self.latency,
                    callback=self._input_callback,
                    finished_callback=lambda: self._finished("input"),
                )
            with _pulse_env("PULSE_SINK", out_pulse):
                self._out_stream = sd.OutputStream(
                    device=out_index,
                    samplerate=self.samplerate,
                    blocksize=self.blocksize,
                    channels=out_ch,
                    dtype="float32",
                    latency=self.latency,
                    callback=self._output_callback,
                    finished_callback=lambda: self._finished("output"),
                )
            self.input_latency_s = float(self._in_stream.latency)
            self.output_latency_s = float(self._out_stream.latency)
            self.hostapis = (_hostapi_name(sd, in_index), _hostapi_name(sd, out_index))
            self._started_at = self._now()
            self._in_stream.start()
            self._out_stream.start()
        except Exception as exc:  # PortAudioError, ValueError (bad channel count / rate)
            self.close()
            raise AudioUnavailable(
                f"Cannot open audio {self.input_name!r} -> {self.output_name!r} at {self.samplerate} Hz: "
                f"{_first_line(exc)}. See `realtime devices`."
            ) from exc
        finally:
            scope.close()
        watched = [(kind, name) for kind, name in (("sources", in_pulse), ("sinks", out_pulse)) if name]
        if watched:
            # PulseAudio moves the streams of a sink that goes away to the default one (the
            # speakers, or our own input: an echo). Watch for that and stop instead.
            self._watcher = threading.Thread(
                target=self._watch_pulse, args=(watched,), name="audio-watch", daemon=True
            )
            self._watcher.start()
        logger.info(
            "audio: %s -> %s, %d Hz, block %d, path latency %.1f ms (in %.1f + out %.1f)",
            self.input_name,
            self.output_name,
            self.samplerate,
            self.blocksize,
            self.path_latency_ms,
            self.input_latency_s * 1000,
            self.output_latency_s * 1000,
        )
        return self

    def _watch_pulse(self, watched: list[tuple[str, str]]) -> None:
        """Every ``PULSE_WATCH_S``: is our PulseAudio sink/source still there? If not, stop.

        A short ``pactl list`` per check, nothing long-lived: a process that waits for
        events (``pactl subscribe``) would outlive us if we were killed.
        """
        while not self._closed.wait(PULSE_WATCH_S):
            for collection, name in watched:
                names = pulse_names(collection)
                if names is not None and name not in names:
                    self._fail(f"PulseAudio {collection[:-1]} {name!r} is gone")
                    self.close()
                    return

    def close(self) -> None:
        self._closing = True
        self._closed.set()
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
        if self._closing:
            return  # closed by us
        stream = self._in_stream if which == "input" else self._out_stream
        if stream is not None and not getattr(stream, "closed", False):
            self._fail(
                f"the audio {which} stream stopped ({self.input_name if which == 'input' else self.output_name})"
            )

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
        its whole buffer for both directions (2 blocks with latency 'low' or any smaller
        explicit latency); measured here (blocks of 240, 480 and 960, cross-correlating a
        burst through a null sink, ``measure_bridge_delay``) the real path is the output
        latency alone: a captured block reaches us as soon as it is complete. Other host
        APIs report what PortAudio documents: input + output latency.
        """
        if self._path_override_ms is not None:
            return float(self._path_override_ms)
        if self.hostapis[0] == "ALSA" and self.hostapis[1] == "ALSA":
            return self.output_latency_s * 1000.0
        return (self.input_latency_s + self.output_latency_s) * 1000.0

    def set_smoothed_video_latency_ms(self, ms: float | None) -> None:
        """The video latency to follow, already smoothed (``AudioBridgeProcess`` smooths in the parent)."""
        self._video_ms = ms

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
    def min_delay_ms(self) -> float:
        """The smallest total delay this path can give (path + a block + the streams' phase)."""
        return self.path_latency_ms + self._floor_s * 1000.0

    @property
    def audio_delay_ms(self) -> float | None:
        """Total mic→virtual-mic delay being applied now (path + delay line), or None before audio flows."""
        return self._achieved_ms

    @property
    def level_db(self) -> float:
        """Input level (RMS dBFS, falls back at 20 dB/s) for a meter."""
        return self._level_db

    @property
    def stalled(self) -> bool:
        """True while a stream has had no callback for ``STALL_S`` (a vanished or hung device)."""
        return self._stalled

    def _check_alive(self) -> None:
        """Called from the engine's thread: notice (and log once) a device that stopped."""
        if self.failed is not None or self._started_at == 0.0 or self._in_stream is None:
            return
        now = self._now()
        last_in = self._last_in_t or self._started_at
        last_out = self._last_out_t or self._started_at
        quiet = now - min(last_in, last_out)
        if quiet > STALL_S and not self._stalled:
            self._stalled = True
            which = self.input_name if last_in <= last_out else self.output_name
            logger.error(
                "audio: %r has delivered nothing for %.1f s (device gone?); the video keeps running",
                which,
                quiet,
            )
        elif self._stalled and quiet < 0.5:
            self._stalled = False
            logger.warning("audio: flowing again")

    # -- callbacks (PortAudio's thread) --------------------------------------------------
    def _input_callback(self, indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        t = self._now()
        c0 = time.perf_counter()
        if status:
            if status.input_overflow:
                self.counters["input_overflows"] += 1
                self._in_clock.reset()
                self._reacquire = True
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
        t = self._now()
        c0 = time.perf_counter()
        if status:
            if status.output_underflow:
                self.counters["output_underflows"] += 1
                self._out_clock.reset()
                self._reacquire = True
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
        offset = self._lock_offset(c_out - c_in, frames / self.samplerate)
        start = self._out_pos - frames
        base = start + self.samplerate * offset  # the input sample arriving right now
        # The smallest delay that never reads unwritten samples: a block, plus the phase
        # between the two streams' callbacks (the worst case over the last 2 s).
        # It rises at once and falls by at most 1 ms per second, so an occasional late
        # callback does not make the delay wander.
        self._need.append(base + frames - self.line.written)
        floor = max(0.0, max(self._need) / self.samplerate + 0.001)
        self._floor_s = max(floor, self._floor_s - 0.001 * frames / self.samplerate)
        added_s = max(self.added_delay_ms / 1000.0, self._floor_s)
        target = base - self.samplerate * added_s
        if target + frames > self.line.written + 1:
            self.counters["starved_blocks"] += 1
        mono = self.line.read(frames, target)
        # What was applied: path latency + the delay line's offset from "now".
        applied_pos = self.line.read_pos - frames if self.line.read_pos is not None else target
        lag_s = (start - applied_pos) / self.samplerate + offset
        self._achieved_ms = self.path_latency_ms + lag_s * 1000.0
        gain = 0.0 if self.muted else 1.0
        if not gain == self._gain == 1.0:  # mute and unmute ramp over one block: no click
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

    def _lock_offset(self, measured: float, dt: float) -> float:
        """The two streams' clock offset, locked once the clocks have settled.

        Without an xrun no sample is lost, so input and output positions keep a fixed
        relation. The callbacks' timing, which ``measured`` comes from, also moves when the
        sound server changes its buffering (PulseAudio grows a stream's buffer by 5 ms
        steps now and then, or another client connects): following it would move the
        audio by up to ~10 ms for nothing, as a 10-minute run showed. So the lock holds,
        and is taken again only after an xrun, or when the two disagree by more than
        ``OFFSET_RELOCK_S`` for 3 s: a stall nobody flagged, or two devices' clocks having
        drifted apart (at 50 ppm, every ~7 minutes; the delay line crossfades there).
        """
        if self._offset_lock is None or self._reacquire:
            if not (self._in_clock.ready and self._out_clock.ready):
                return self._offset_lock if self._offset_lock is not None else measured
            self._offset_lock, self._reacquire, self._disagree_s = measured, False, 0.0
            return measured
        if abs(measured - self._offset_lock) > OFFSET_RELOCK_S:
            self._disagree_s += dt
            if self._disagree_s > 3.0:
                logger.debug("audio clocks re-locked by %.1f ms", (measured - self._offset_lock) * 1000.0)
                self._offset_lock, self._disagree_s = measured, 0.0
                self.relocks += 1
        else:
            self._disagree_s = 0.0
        return self._offset_lock

    # -- reporting ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, latencies and the achieved A/V offset (audio delay − video latency, ms)."""
        wall = max(self._now() - self._started_at, 1e-9) if self._started_at else 0.0
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
            "min_delay_ms": round(self.min_delay_ms, 2),
            "audio_delay_ms": None if self._achieved_ms is None else round(self._achieved_ms, 2),
            "video_latency_ms": None if self._video_ms is None else round(self._video_ms, 2),
            "offset_ms": self.offset_ms,
            "muted": self.muted,
            "av_offset_ms": av,
            "underruns": self.counters["output_underflows"] + self.counters["input_underflows"],
            "overruns": self.counters["input_overflows"] + self.counters["output_overflows"],
            **self.counters,
            "crossfades": self.line.jumps,
            "clock_relocks": self.relocks,
            "callback_cpu_percent": round(100.0 * self._callback_s / wall, 3) if wall else 0.0,
            "failed": self.failed,
            "stalled": self._stalled,
            "raised_priority": bool(self.boosted),
            "audio_scheduling": self.boosted or "normal",
        }

    def status_line(self) -> str:
        """One line for the preview overlay: level meter, delay, offset, mute."""
        return status_line(self._level_db, self._achieved_ms, self.offset_ms, self.muted, self.failed)


def status_line(
    level: float, delay_ms: float | None, offset_ms: float, muted: bool, failed: str | None
) -> str:
    """The overlay's audio line: a 10-step meter over -60..0 dBFS, the delay, offset and mute."""
    if failed:
        return "audio: off (" + failed[:40] + ")"
    level = max(level, -60.0)
    bars = int(round((level + 60.0) / 6.0))
    meter = "|" * bars + "." * (10 - bars)
    delay_text = "--" if delay_ms is None else f"{delay_ms:3.0f}"
    mute = "  MUTED" if muted else ""
    return f"audio [{meter}] {level:4.0f} dB  delay {delay_text} ms  offset {offset_ms:+.0f} ms{mute}"


# Shared-memory slots between AudioBridgeProcess (parent) and its child.
_CTRL_VIDEO, _CTRL_OFFSET, _CTRL_MUTED = range(3)
_ST_LEVEL, _ST_DELAY, _ST_PATH, _ST_MIN = range(4)


class _PipeLogHandler(logging.Handler):
    """In the child: log records go to the parent, which logs them as its own."""

    def __init__(self, conn: Any, send_lock: threading.Lock) -> None:
        super().__init__(logging.DEBUG)
        self.conn, self.send_lock = conn, send_lock  # (logging.Handler has a lock of its own)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            with self.send_lock:
                self.conn.send(("log", record.levelno, record.getMessage()))
        except Exception:  # the parent is gone: nobody to tell
            pass


def _bridge_worker(conn: Any, ctrl: Any, status: Any, kwargs: dict[str, Any], level: int) -> None:
    """Child process: run an ``AudioBridge``; settings in through ``ctrl``, state out through ``status``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle; it closes us
    lock = threading.Lock()
    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(conn, lock)]
    root.setLevel(level)
    parent = os.getppid()
    if hasattr(os, "setpriority"):
        # This process only serves the audio: its main thread (settings, the pipe) at the
        # audio threads' nice value too, so that it never holds their GIL for long.
        try:
            if os.getpriority(os.PRIO_PROCESS, 0) > AUDIO_NICE:
                os.setpriority(os.PRIO_PROCESS, 0, AUDIO_NICE)
        except OSError:
            pass
    try:
        bridge = AudioBridge(**kwargs).start()
    except AudioUnavailable as exc:
        conn.send(("error", str(exc)))
        return
    except Exception as exc:
        conn.send(("error", f"audio failed: {type(exc).__name__}: {_first_line(exc)}"))
        return
    with lock:
        conn.send(("ready", {"input": bridge.input_name, "output": bridge.output_name}))
    state: tuple[str | None, bool] = (None, False)
    try:
        while os.getppid() == parent:
            if (bridge.failed, bridge.stalled) != state:
                state = (bridge.failed, bridge.stalled)
                with lock:
                    conn.send(("state", *state))
            if conn.poll(0.05):
                message = conn.recv()
                if message == "close":
                    break
                if message == "stats":
                    with lock:
                        conn.send(("stats", bridge.stats()))
            video = ctrl[_CTRL_VIDEO]
            bridge.set_smoothed_video_latency_ms(None if math.isnan(video) else video)
            bridge.offset_ms = ctrl[_CTRL_OFFSET]
            bridge.muted = ctrl[_CTRL_MUTED] > 0.5
            bridge._check_alive()
            status[_ST_LEVEL] = bridge.level_db
            delay = bridge.audio_delay_ms
            status[_ST_DELAY] = math.nan if delay is None else delay
            status[_ST_PATH] = bridge.path_latency_ms
            status[_ST_MIN] = bridge.min_delay_ms
    except (EOFError, OSError):  # the parent closed the pipe
        pass
    finally:
        bridge.close()
        try:
            with lock:
                conn.send(("stats", bridge.stats()))
        except (OSError, ValueError):
            pass


class AudioBridgeProcess:
    """``AudioBridge`` in a child process, with the same controls and reports.

    Audio callbacks are Python: in the engine's process they would wait for the GIL while
    the render thread runs numpy, and a 10 ms block would miss its deadline (an underrun,
    audible as a click). In a process of their own they only compete for the CPU, at a
    raised priority where allowed. The engine's per-frame latency is smoothed here and
    handed over in shared memory; the child reports level and delay the same way.
    """

    def __init__(
        self,
        input_device: str | int | None = None,
        output_device: str | int | None = None,
        offset_ms: float = 0.0,
        muted: bool = False,
        smoothing_frames: int = 30,
        hysteresis_ms: float = 3.0,
        start_timeout_s: float = 30.0,
        **bridge_kwargs: Any,
    ) -> None:
        import multiprocessing as mp

        self._context = mp.get_context("spawn")  # never fork a process that runs threads
        self._kwargs = {"input_device": input_device, "output_device": output_device, **bridge_kwargs}
        self._ctrl = self._context.RawArray("d", 3)
        self._status = self._context.RawArray("d", 4)
        self._ctrl[_CTRL_VIDEO] = math.nan
        self._status[_ST_LEVEL] = SILENCE_DB
        self._status[_ST_DELAY] = math.nan
        self.offset_ms = offset_ms
        self.muted = muted
        self.tracker = LatencyTracker(smoothing_frames, hysteresis_ms)
        self.start_timeout_s = start_timeout_s
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Any = None
        self._av_offsets: collections.deque[float] = collections.deque(maxlen=20000)
        self._final: dict[str, Any] | None = None
        self.failed: str | None = None
        self.stalled = False
        self.input_name = str(input_device)
        self.output_name = str(output_device)

    # -- settings (shared memory: never blocks) -------------------------------------------
    @property
    def offset_ms(self) -> float:
        return self._ctrl[_CTRL_OFFSET]

    @offset_ms.setter
    def offset_ms(self, value: float) -> None:
        self._ctrl[_CTRL_OFFSET] = float(value)

    @property
    def muted(self) -> bool:
        return self._ctrl[_CTRL_MUTED] > 0.5

    @muted.setter
    def muted(self, value: bool) -> None:
        self._ctrl[_CTRL_MUTED] = 1.0 if value else 0.0

    @property
    def level_db(self) -> float:
        return self._status[_ST_LEVEL]

    @property
    def audio_delay_ms(self) -> float | None:
        delay = self._status[_ST_DELAY]
        return None if math.isnan(delay) else delay

    @property
    def video_latency_ms(self) -> float | None:
        return self.tracker.value_ms

    @property
    def min_delay_ms(self) -> float:
        """The shortest delay the audio path can give now (its floor), 0 until it runs."""
        floor = self._status[_ST_MIN]
        return 0.0 if math.isnan(floor) else float(floor)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> AudioBridgeProcess:
        parent, child = self._context.Pipe()
        self._conn = parent
        self._process = self._context.Process(
            target=_bridge_worker,
            args=(child, self._ctrl, self._status, self._kwargs, logger.getEffectiveLevel()),
            name="realtime-audio",
            daemon=True,
        )
        self._process.start()
        child.close()
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self._conn.poll(0.1):
                if not self._process.is_alive():
                    break
                continue
            try:
                kind, *payload = self._conn.recv()
            except (EOFError, OSError):  # the child ended without a word
                self._process.join(timeout=2.0)
                break
            if kind == "log":
                logger.log(payload[0], "%s", payload[1])
            elif kind == "ready":
                self.input_name, self.output_name = payload[0]["input"], payload[0]["output"]
                return self
            elif kind == "error":
                self.close()
                raise AudioUnavailable(payload[0])
        alive = self._process is not None and self._process.is_alive()
        code = None if self._process is None else self._process.exitcode
        self.close()
        if alive:
            raise AudioUnavailable(f"the audio process did not start within {self.start_timeout_s:.0f} s")
        raise AudioUnavailable(f"the audio process ended before it was ready (exit code {code})")

    def close(self) -> None:
        conn, process = self._conn, self._process
        if conn is not None:
            try:
                with self._lock:
                    conn.send("close")
                    deadline = time.monotonic() + 3.0
                    while time.monotonic() < deadline and conn.poll(max(0.0, deadline - time.monotonic())):
                        kind, *payload = conn.recv()
                        if kind == "stats":
                            self._final = payload[0]
                            break
                        if kind == "log":
                            logger.log(payload[0], "%s", payload[1])
            except (EOFError, OSError, BrokenPipeError):
                pass
            conn.close()
            self._conn = None
        if process is not None:
            process.join(timeout=3.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=1.0)
            self._process = None

    def __enter__(self) -> AudioBridgeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the engine's side -------------------------------------------------------------
    def set_video_latency_ms(self, ms: float) -> None:
        """One frame's capture→sink latency (every new frame); smoothed here, applied in the child."""
        value = self.tracker.add(float(ms))
        self._ctrl[_CTRL_VIDEO] = value
        delay = self.audio_delay_ms
        if delay is not None and math.isfinite(ms):
            self._av_offsets.append(delay - float(ms))
        self._drain()

    def _drain(self) -> None:
        """Log what the child reported (device gone, stalls); never blocks."""
        conn = self._conn
        if conn is None:
            return
        with self._lock:
            try:
                while conn.poll():
                    kind, *payload = conn.recv()
                    if kind == "log":
                        logger.log(payload[0], "%s", payload[1])
                    elif kind == "state":
                        self.failed, self.stalled = payload
                    elif kind == "stats":
                        self._final = payload[0]
            except (EOFError, OSError):
                if self.failed is None:
                    self.failed = "the audio process ended"
                    logger.error("audio: the audio process ended; the video keeps running without audio")
                self._conn = None

    def stats(self) -> dict[str, Any]:
        """The child's ``AudioBridge.stats()`` with the A/V offset measured against every frame here."""
        base: dict[str, Any] | None = self._final
        conn = self._conn
        if conn is not None:
            with self._lock:
                try:
                    conn.send("stats")
                    deadline = time.monotonic() + 2.0
                    while time.monotonic() < deadline and conn.poll(max(0.0, deadline - time.monotonic())):
                        kind, *payload = conn.recv()
                        if kind == "stats":
                            base = payload[0]
                            break
                        if kind == "log":
                            logger.log(payload[0], "%s", payload[1])
                except (EOFError, OSError, BrokenPipeError):
                    pass
        result = dict(base or {"input": self.input_name, "output": self.output_name})
        offsets = np.asarray(self._av_offsets, np.float64)
        result["av_offset_ms"] = (
            None
            if not offsets.size
            else {
                "mean": round(float(offsets.mean()), 2),
                "p50": round(float(np.median(offsets)), 2),
                "p95_abs": round(float(np.percentile(np.abs(offsets), 95)), 2),
            }
        )
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


def start_bridge(
    input_device: str | int | None,
    output_device: str | int | None,
    offset_ms: float = 0.0,
    muted: bool = False,
    isolated: bool = True,
) -> AudioBridge | AudioBridgeProcess | None:
    """A started bridge, or None after logging one clear line: the video never waits for audio.

    ``isolated`` (default) runs it in its own process, away from the engine's GIL.
    """
    kind = AudioBridgeProcess if isolated else AudioBridge
    bridge = kind(input_device, output_device, offset_ms=offset_ms, muted=muted)
    try:
        return bridge.start()
    except AudioUnavailable as exc:
        logger.error("%s The video keeps running without audio.", exc)
    except Exception as exc:  # anything else from PortAudio must not stop the video either
        logger.error(
            "audio failed: %s: %s. The video keeps running without audio.",
            type(exc).__name__,
            _first_line(exc),
        )
    return None


def format_audio_summary(stats: dict[str, Any]) -> str:
    """The audio lines of a ``run``/``bench`` summary, from ``AudioBridge.stats()``."""
    lines = [f"audio {stats.get('input')} -> {stats.get('output')}"]
    if stats.get("failed"):
        lines[0] += f": stopped ({stats['failed']})"
    delay, video = stats.get("audio_delay_ms"), stats.get("video_latency_ms")
    lines.append(
        f"  audio delay {_ms(delay)} = path {_ms(stats.get('path_latency_ms'))} + added "
        f"{_ms(None if delay is None else delay - stats.get('path_latency_ms', 0.0))} "
        f"(follows video {_ms(video)} {stats.get('offset_ms', 0.0):+.0f} ms offset; "
        f"shortest possible here {_ms(stats.get('min_delay_ms'))})"
    )
    av = stats.get("av_offset_ms")
    if av:
        lines.append(
            f"  A/V offset (audio delay - frame latency): mean {av['mean']:+.1f} ms, "
            f"p95 |offset| {av['p95_abs']:.1f} ms"
        )
    lines.append(
        f"  underruns {stats.get('underruns', 0)}  overruns {stats.get('overruns', 0)}  "
        f"crossfades {stats.get('crossfades', 0)}  callback cpu {stats.get('callback_cpu_percent', 0.0):.2f}%"
        + ("  MUTED" if stats.get("muted") else "")
    )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "--" if value is None else f"{value:.1f} ms"
