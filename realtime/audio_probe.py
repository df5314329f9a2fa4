"""Measuring the real audio path: how late the bridge's output really is.

Used by the tests and the audio benchmarks (``benchmarks/audio_floor.py``,
``benchmarks/audio_soak.py``), never by a live run: the runtime package ``realtime.audio``
stays free of measurement code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from realtime.audio import (
    SAMPLE_RATE,
    AudioBridge,
    AudioBridgeProcess,
    AudioUnavailable,
    first_line,
    import_sounddevice,
    pulse_env,
)

PROBE_BLOCKSIZE = 960  # measure_bridge_delay's own streams (as a call app would read), fixed


def wait_flowing(
    count: Callable[[], float],
    per_s: float = 40.0,
    window_s: float = 0.5,
    timeout_s: float = 6.0,
    tick: Callable[[], None] | None = None,
) -> bool:
    """True once ``count()`` grows at ``per_s`` or more over ``window_s`` (PulseAudio may stall for seconds at start)."""
    history: list[tuple[float, float]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if tick:
            tick()
        now = time.monotonic()
        history.append((now, count()))
        old = [h for h in history if h[0] <= now - window_s]
        if old and history[-1][1] - old[-1][1] >= per_s * window_s:
            return True
        time.sleep(1 / 30)
    return False


@contextmanager
def temporary_null_sink(name: str, *args: str) -> Iterator[str]:
    """A PulseAudio null sink ``name`` (48 kHz, ``args`` added to the module's) for the block.

    Unloads exactly the module it loaded (never by name: that would take other sinks too).
    ``AudioUnavailable`` when ``pactl`` cannot load it.
    """
    import subprocess

    try:
        proc = subprocess.run(
            ["pactl", "load-module", "module-null-sink", f"sink_name={name}", "rate=48000", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise AudioUnavailable(f"cannot run pactl: {exc}") from exc
    if proc.returncode != 0:
        raise AudioUnavailable(f"cannot load a null sink: {first_line(Exception(proc.stderr))}")
    module = proc.stdout.strip()
    try:
        yield name
    finally:
        subprocess.run(["pactl", "unload-module", module], capture_output=True, timeout=10)


def burst_delay_ms(recording: np.ndarray, samplerate: int = SAMPLE_RATE) -> dict[str, float]:
    """Delay of a stereo recording's right channel behind its left (cross-correlation).

    ``measured_ms``: the lag of the correlation peak (negative lags wrap to the end, so a
    right channel that leads shows as a lag near the recording's length). ``quality``: the
    normalised correlation at the peak. ``prominence``: the peak over the largest
    correlation more than 25 ms away (the burst's correlation is a few ms wide, wider while
    the delay line resamples); the normalised correlation alone dips when the server adds
    its own noise to a recording.
    """
    x = np.asarray(recording, np.float64)
    left, right = x[:, 0], x[:, 1]
    n = len(left)
    corr = np.fft.irfft(np.fft.rfft(right, 2 * n) * np.conj(np.fft.rfft(left, 2 * n)))[:n]
    lag = int(np.argmax(corr))
    quality = float(corr[lag] / (np.sqrt(np.sum(left**2) * np.sum(right**2)) + 1e-12))
    away = np.abs(np.arange(n) - lag) > samplerate // 40
    prominence = float(corr[lag] / (np.abs(corr[away]).max() + 1e-12)) if away.any() else 0.0
    second = int(np.argmax(np.where(away, np.abs(corr), 0.0))) if away.any() else lag
    return {
        "measured_ms": lag / samplerate * 1000.0,
        "quality": quality,
        "prominence": prominence,
        "second_peak_ms": (second if second < n // 2 else second - n) / samplerate * 1000.0,
    }


def loopback_bridge(
    sink: str, isolated: bool = True, **bridge_kwargs: Any
) -> AudioBridge | AudioBridgeProcess:
    """A bridge on one null sink: it records the left channel of the monitor and plays into
    the right channel, so one recording of the monitor holds both (see measure_bridge_delay)."""
    kind = AudioBridgeProcess if isolated else AudioBridge
    return kind(
        f"pulse:{sink}.monitor",
        f"pulse:{sink}",
        input_channels=2,
        input_channel=0,
        output_channels=2,
        output_mask=[1],
        **bridge_kwargs,
    )


def measure_bridge_delay(
    sink: str,
    video_ms: float,
    jitter_ms: float = 4.0,
    settle_s: float = 1.5,
    isolated: bool = True,
    **bridge_kwargs: Any,
) -> dict[str, Any]:
    """The bridge's real mic→virtual-mic delay through the PulseAudio null sink ``sink``.

    One null sink carries both sides: a noise burst is played into its left channel; the
    bridge records the left channel of its monitor and plays the delayed sound into the
    right channel (no feedback). A single recording of the monitor has the input on the
    left and the output on the right, sample-aligned by the sound server itself, so the
    probe streams' own latencies cancel out. The engine is simulated: 30 times a second a
    video latency of ``video_ms`` ± ``jitter_ms``. ``bridge_kwargs`` go to the bridge
    (``blocksize``, ``latency``, ...); ``isolated`` runs it as ``realtime run`` does, in
    its own process.

    Returns the cross-correlation (``burst_delay_ms``), ``clean`` (audio flowed, no
    xrun during the burst, a clear peak), ``glitches``, the delay the bridge reported
    and its final ``stats``.
    """
    sd = import_sounddevice()
    rng = np.random.default_rng(int(video_ms))
    bridge = loopback_bridge(sink, isolated, **bridge_kwargs)

    def engine_reports() -> None:
        bridge.set_video_latency_ms(video_ms + rng.uniform(-jitter_ms, jitter_ms))

    recorded: list[np.ndarray] = []
    played = [0]
    burst = np.zeros((SAMPLE_RATE // 2, 2), np.float32)
    burst[2400 : 2400 + 4800, 0] = rng.uniform(-0.5, 0.5, 4800) * np.hanning(4800)
    position: list[int | None] = [None]

    def play(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        played[0] += 1
        outdata.fill(0)
        if position[0] is not None:
            chunk = burst[position[0] : position[0] + frames]
            outdata[: len(chunk)] = chunk
            position[0] += frames

    bridge.open()
    recorder = player = None
    try:
        flowing = wait_flowing(lambda: bridge.stats()["input_blocks"], tick=engine_reports)
        probe = {"device": "pulse", "samplerate": SAMPLE_RATE, "blocksize": PROBE_BLOCKSIZE, "channels": 2}
        probe |= {"dtype": "float32", "latency": "low"}
        with pulse_env("PULSE_SOURCE", f"{sink}.monitor"):
            recorder = sd.InputStream(**probe, callback=lambda d, f, t, s: recorded.append(d.copy()))
        with pulse_env("PULSE_SINK", sink):
            player = sd.OutputStream(**probe, callback=play)
        recorder.start()
        player.start()
        flowing = flowing and wait_flowing(lambda: played[0], tick=engine_reports)
        flowing = flowing and wait_flowing(lambda: len(recorded), tick=engine_reports)
        # New streams on the sink change its timing: let the bridge's clocks settle.
        t0 = time.monotonic()
        while time.monotonic() - t0 < settle_s:
            engine_reports()
            time.sleep(1 / 30)
        before = bridge.stats()
        position[0] = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6 + video_ms / 1000.0:
            engine_reports()
            time.sleep(1 / 30)
    finally:
        for stream in (player, recorder):
            if stream is not None:
                stream.stop()
                stream.close()
        bridge.close()
    stats = bridge.stats()
    x = np.concatenate(recorded) if recorded else np.zeros((1, 2))
    result: dict[str, Any] = burst_delay_ms(x)
    glitches = sum(stats[k] - before[k] for k in ("input_overflows", "output_underflows"))
    clear = result["quality"] > 0.3 or (result["quality"] > 0.05 and result["prominence"] > 2.0)
    result.update(
        flowing=flowing,
        glitches=glitches,
        clean=bool(flowing and glitches == 0 and clear),
        reported_ms=stats["audio_delay_ms"],
        stats=stats,
    )
    return result
