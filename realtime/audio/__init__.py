"""Audio A/V sync: the microphone, delayed by the video's live latency, to a virtual microphone.

The processed video reaches the call later than the voice (capture → track → render →
virtual camera), so the lips would lag the sound. ``AudioBridge`` captures the
microphone, delays it by the engine's measured capture→sink latency and plays it to an
output device that the call app uses as its microphone::

    mic ─InputStream─▶ AudioDelayLine ─OutputStream─▶ virtual mic (null sink / VB-Cable / BlackHole)
                          ▲
    Engine.on_latency ────┘ (per frame, smoothed: median + hysteresis)

The total audio delay (microphone → call app) is ``video latency + manual offset``. The
device path's own latency is part of that total, so the delay line only adds the rest
(``AudioBridge.path_latency_ms``). Input and output are separate streams, possibly on
devices with different clocks: ``ClockSync`` maps both onto ``time.monotonic()``, which
gives the exact input sample that must be playing at each output block. Clock drift,
start-up stalls and xruns all show up as a moving target that the delay line follows.
The delay cannot be shorter than the path plus one block plus the phase between the two
streams' callbacks (``benchmarks/audio_floor.py``); a faster video gets that minimum, and
``stats()`` says so. The audio threads run real-time (``SCHED_RR``) where allowed.

Modules: ``delay`` (the delay line), ``clock`` (stream clocks, latency smoothing),
``devices`` (PortAudio, ALSA, PulseAudio, thread priorities), ``bridge`` (``AudioBridge``),
``process`` (the bridge in its own process), ``report`` (overlay and summary text).

Any audio failure (no PortAudio, no such device, a device that vanishes) is logged as one
line; the video never depends on audio.
"""

from __future__ import annotations

import logging

from realtime.audio.bridge import BLOCKSIZE, AudioBridge, BridgeSettings
from realtime.audio.clock import ClockSync, LatencyTracker, StreamClock
from realtime.audio.delay import SAMPLE_RATE, SILENCE_DB, AudioDelayLine, level_db
from realtime.audio.devices import (
    AudioUnavailable,
    audio_thread_priority,
    first_line,
    import_sounddevice,
    pulse_env,
    pulse_names,
    resolve_device,
    virtual_mic_setup,
)
from realtime.audio.process import AudioBridgeProcess
from realtime.audio.report import format_audio_summary, status_line

__all__ = [
    "BLOCKSIZE",
    "SAMPLE_RATE",
    "SILENCE_DB",
    "AudioBridge",
    "AudioBridgeProcess",
    "AudioDelayLine",
    "AudioUnavailable",
    "BridgeSettings",
    "ClockSync",
    "LatencyTracker",
    "StreamClock",
    "audio_thread_priority",
    "first_line",
    "format_audio_summary",
    "import_sounddevice",
    "level_db",
    "pulse_env",
    "pulse_names",
    "resolve_device",
    "start_bridge",
    "status_line",
    "virtual_mic_setup",
]

logger = logging.getLogger(__name__)


def start_bridge(
    input_device: str | int | None,
    output_device: str | int | None,
    offset_ms: float = 0.0,
    muted: bool = False,
    isolated: bool = True,
) -> AudioBridge | AudioBridgeProcess | None:
    """An opened bridge, or None after logging one clear line: the video never waits for audio.

    ``isolated`` (default) runs it in its own process, away from the engine's GIL.
    """
    kind = AudioBridgeProcess if isolated else AudioBridge
    bridge = kind(input_device, output_device, offset_ms=offset_ms, muted=muted)
    try:
        return bridge.open()
    except AudioUnavailable as exc:
        logger.error("%s The video keeps running without audio.", exc)
    except Exception as exc:  # anything else from PortAudio must not stop the video either
        logger.error(
            "audio failed: %s: %s. The video keeps running without audio.",
            type(exc).__name__,
            first_line(exc),
        )
    return None
