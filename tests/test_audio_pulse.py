"""Audio A/V sync on a real PulseAudio server, and the CLI's audio failure modes.

The PulseAudio tests need ``pulseaudio``/``pactl`` and PortAudio (``make audio-server``
installs and starts them as root, per ../shared/ENVIRONMENT.md). If the server is installed
but not running, this module starts it; without it those tests skip with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from realtime.audio import (
    AudioBridge,
    AudioBridgeProcess,
    AudioUnavailable,
    audio_thread_priority,
)
from realtime.audio_probe import measure_bridge_delay, wait_flowing
from tests.conftest import cli, write_astronaut_clip


def portaudio_or_skip():
    try:
        import sounddevice
    except OSError as exc:
        pytest.skip(f"PortAudio not installed ({exc}); `make audio-server` installs it")
    return sounddevice


def test_an_unknown_device_names_the_ones_that_exist():
    portaudio_or_skip()
    with pytest.raises(AudioUnavailable) as info:
        AudioBridge("no such microphone 1234", "default").open()
    text = str(info.value)
    assert "no such microphone 1234" in text and "input devices here" in text and "\n" not in text


# --------------------------------------------------------------------------- a real PulseAudio server

PULSE_START = [
    "pulseaudio",
    "-D",
    "--exit-idle-time=-1",
    "--disallow-exit",
    "-n",
    "--load=module-native-protocol-unix",
    "--load=module-null-sink sink_name=vsink rate=48000",
    "--load=module-remap-source master=vsink.monitor source_name=vmic",
]


def _pactl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=10)


@pytest.fixture(scope="module")
def pulse():
    """A running PulseAudio server (started here when installed but not running)."""
    portaudio_or_skip()
    if shutil.which("pactl") is None:
        pytest.skip("pactl not installed; `make audio-server` (as root) installs and starts PulseAudio")
    if _pactl("info").returncode != 0:
        if shutil.which("pulseaudio") is None:
            pytest.skip("no PulseAudio server and pulseaudio not installed; run `make audio-server`")
        subprocess.run(PULSE_START, capture_output=True, timeout=20)
        for _ in range(50):
            if _pactl("info").returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip("PulseAudio is installed but did not start (see ENVIRONMENT.md, 'Audio')")
        _pactl("set-default-sink", "vsink")
        _pactl("set-default-source", "vsink.monitor")
    return True


@pytest.fixture
def null_sink(pulse):
    """A fresh null sink for one test, removed afterwards."""
    name = f"rt_test_{os.getpid()}_{time.monotonic_ns() % 100000}"
    proc = _pactl("load-module", "module-null-sink", f"sink_name={name}", "rate=48000")
    assert proc.returncode == 0, proc.stderr
    module = proc.stdout.strip()
    yield name
    _pactl("unload-module", module)


def median_measurement(sink: str, video_ms: float, wanted: int = 3, tries: int = 6) -> tuple[dict, list]:
    """The median (by measured delay) of ``wanted`` clean measurements, and every attempt.

    One measurement is not enough on a busy 2-core machine: a CI run once measured 95.5 ms
    for 80 ms, cleanly; here 30 runs (22 of them beside 3 busy processes) measured
    78.4-87.9 ms, most 80-82 ms. The median of three passes one such outlier and still
    fails a bridge that is wrong most of the time.
    """
    clean, attempts = [], []
    for _ in range(tries):  # the sound server can also glitch (an xrun, no clear peak): retry
        result = measure_bridge_delay(sink, video_ms)
        attempts.append({k: v for k, v in result.items() if k != "stats"})
        if result["clean"]:
            clean.append(result)
            if len(clean) == wanted:
                break
    if len(clean) < wanted:
        pytest.fail(f"only {len(clean)} clean measurements in {tries} attempts: {attempts}")
    return sorted(clean, key=lambda r: r["measured_ms"])[wanted // 2], attempts


@pytest.mark.parametrize("video_ms", [80.0, 120.0, 200.0])
def test_real_server_delay_equals_the_video_latency(null_sink, video_ms):
    """The mic→virtual-mic delay, measured through PulseAudio, is the engine's latency ± 10 ms."""
    result, attempts = median_measurement(null_sink, video_ms)
    assert result["measured_ms"] == pytest.approx(video_ms, abs=10.0), attempts
    # What the bridge reports (for `realtime bench` and the overlay) is what was measured.
    assert result["reported_ms"] == pytest.approx(result["measured_ms"], abs=10.0), attempts


def test_real_server_shortest_delay_is_about_50_ms(null_sink):
    """Asked for no delay at all, the path gives its floor: ~50 ms with 10 ms blocks (it was
    ~100 ms with 20 ms blocks; ``benchmarks/audio_floor.py``), and the bridge knows it."""
    result, attempts = median_measurement(null_sink, 0.0)
    assert result["stats"]["blocksize"] == 480
    assert 20.0 < result["measured_ms"] <= 75.0, attempts
    assert result["reported_ms"] == pytest.approx(result["measured_ms"], abs=10.0), attempts
    assert result["stats"]["min_delay_ms"] == pytest.approx(result["measured_ms"], abs=10.0), attempts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities: Linux")
def test_audio_threads_inherit_the_raised_priority_and_the_caller_gets_its_own_back():
    tid = threading.get_native_id()
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid))
    seen: dict[str, int] = {}

    def child() -> None:
        seen["policy"] = os.sched_getscheduler(0)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with audio_thread_priority() as raised:
        thread = threading.Thread(target=child)  # as PortAudio's and libpulse's threads are
        thread.start()
        thread.join()
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid)) == before
    if raised.startswith("SCHED_RR"):
        assert seen["policy"] == os.SCHED_RR
    elif raised.startswith("nice"):
        assert seen["nice"] < before[1]
    else:  # not allowed here: nothing changed
        assert (seen["policy"], seen["nice"]) == before


@pytest.mark.parametrize("kind", [AudioBridge, AudioBridgeProcess])
def test_a_vanished_device_stops_audio_with_one_line_and_nothing_raises(pulse, caplog, kind):
    proc = _pactl("load-module", "module-null-sink", f"sink_name=rt_vanish_{os.getpid()}", "rate=48000")
    module = proc.stdout.strip()
    bridge = kind("pulse:vsink.monitor", f"pulse:rt_vanish_{os.getpid()}")
    with caplog.at_level(logging.ERROR, logger="realtime.audio"):
        bridge.open()
        try:
            wait_flowing(
                lambda: bridge.stats()["output_blocks"], tick=lambda: bridge.set_video_latency_ms(60.0)
            )
            _pactl("unload-module", module)
            t0 = time.monotonic()
            while bridge.failed is None and time.monotonic() - t0 < 5.0:
                bridge.set_video_latency_ms(60.0)  # the engine goes on calling: must never raise
                time.sleep(0.05)
        finally:
            bridge.close()
    assert bridge.failed and "is gone" in bridge.failed
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "video keeps running" in errors[0], errors


def test_unknown_pulse_sink_is_a_clear_error(pulse):
    with pytest.raises(AudioUnavailable, match="PulseAudio has no sink 'no_such_sink'; sinks here: .*vsink"):
        AudioBridge("pulse:vsink.monitor", "pulse:no_such_sink").open()


# --------------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    return write_astronaut_clip(tmp_path_factory.mktemp("clip") / "driver.mp4", 25)


def test_run_with_a_broken_audio_device_keeps_the_video_running(tmp_path, short_clip):
    metrics = tmp_path / "m.json"
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        str(short_clip),
        "--loop",
        "--sink",
        "null",
        "--seconds",
        "2",
        "--metrics-json",
        str(metrics),
        "--audio-in",
        "no such mic 987",
        "--audio-out",
        "no such out 987",
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "video keeps running" in lines[0] and "Traceback" not in proc.stderr, (
        proc.stderr
    )
    data = json.loads(metrics.read_text())
    assert data["frames"] > 10 and "audio" not in data


def test_run_needs_both_audio_devices():
    proc = cli("run", "--avatar", "builtin", "--audio-in", "default")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("realtime: error:") and "--audio-out" in proc.stderr


def test_run_with_real_audio_devices_reports_the_audio_path(tmp_path, short_clip, null_sink):
    metrics = tmp_path / "m.json"
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        str(short_clip),
        "--loop",
        "--sink",
        "null",
        "--seconds",
        "4",
        "--metrics-json",
        str(metrics),
        "--audio-in",
        "pulse:vsink.monitor",
        "--audio-out",
        f"pulse:{null_sink}",
        "--audio-offset-ms",
        "15",
    )
    assert proc.returncode == 0, proc.stderr
    from realtime.voice.live import voice_lag_ms

    report = json.loads(metrics.read_text())
    audio = report["audio"]
    assert audio["failed"] is None and audio["output_blocks"] > 50
    # A bridged microphone with a camera makes --lips auto the default: the delayed voice also waits
    # for the voice's mouth (tests/test_lips.py).
    assert report["lips"] == "auto"
    assert audio["offset_ms"] == pytest.approx(15.0 + voice_lag_ms()) and audio["audio_delay_ms"] is not None
    assert audio["video_latency_ms"] is not None and audio["av_offset_ms"] is not None
    assert "audio delay" in proc.stdout and "A/V offset" in proc.stdout
