"""The operating system's side of audio: PortAudio, ALSA's messages, thread priorities,
device names (PortAudio's and PulseAudio's) and how to set up a virtual microphone."""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from realtime.errors import DeviceUnavailable, one_line

logger = logging.getLogger(__name__)

AUDIO_NICE = -11  # the audio threads' nice value where allowed (PulseAudio's own)
AUDIO_RT_PRIORITY = 4  # their SCHED_RR priority where allowed (just below PulseAudio's I/O threads)

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


_ALSA_HANDLER: Any = None  # kept alive: ALSA calls it for as long as the process runs


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


@contextmanager
def audio_thread_priority(nice: int = AUDIO_NICE, rt_priority: int = AUDIO_RT_PRIORITY) -> Iterator[str]:
    """Raise the calling thread's priority for the block, then restore it.

    Linux threads inherit their creator's scheduling, so the threads created inside
    (PortAudio's callback threads, libpulse's mainloop) keep the raised priority while
    the caller goes back to normal. Where allowed (root, CAP_SYS_NICE or an RLIMIT_RTPRIO)
    they are real-time (``SCHED_RR`` at ``rt_priority``, just below PulseAudio's own I/O
    threads), as audio applications get from rtkit: on a busy machine a normal thread
    can wait longer than a block for the CPU. Otherwise the nice value is raised to
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
def pulse_env(name: str, value: str | None) -> Iterator[None]:
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
        names = device_names(sd, channels_key)
        raise AudioUnavailable(
            f"No audio {kind} device {spec!r} ({first_line(exc)}); {kind} devices here: {names}. "
            f"See `realtime devices`."
        ) from exc
    if int(info.get(channels_key, 0)) < 1:
        raise AudioUnavailable(
            f"Audio device {info.get('name')!r} has no {kind} channels; "
            f"{kind} devices here: {device_names(sd, channels_key)}."
        )
    if pulse_name:
        check_pulse_name(pulse_name, kind)
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


def check_pulse_name(name: str, kind: str) -> None:
    """``AudioUnavailable`` naming the alternatives when PulseAudio has no such sink/source."""
    collection = "sources" if kind == "input" else "sinks"
    names = pulse_names(collection)
    if names is not None and name not in names:
        raise AudioUnavailable(
            f"PulseAudio has no {collection[:-1]} {name!r}; {collection} here: {', '.join(names) or 'none'}. "
            f"See `realtime devices` for the virtual microphone setup."
        )


def hostapi_name(sd: Any, index: int | None) -> str:
    """The host API (``ALSA``, ``CoreAudio``...) of device ``index``; "" when unknown."""
    try:
        info = sd.query_devices(index) if index is not None else sd.query_devices(kind="output")
        return str(sd.query_hostapis(info["hostapi"])["name"])
    except Exception:
        return ""


def device_names(sd: Any, channels_key: str) -> str:
    """``[index] name`` of each device with ``channels_key`` channels, for an error message."""
    try:
        names = [f"[{i}] {d['name']}" for i, d in enumerate(sd.query_devices()) if d.get(channels_key, 0) > 0]
    except Exception:
        return "unknown"
    return ", ".join(names) or "none"


def first_line(exc: BaseException) -> str:
    """``exc`` as one short line, for a one-line error."""
    return one_line(str(exc), 160)
