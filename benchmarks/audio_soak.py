"""Long run of the audio bridge against a real PulseAudio server: xruns, CPU, delay accuracy.

    python benchmarks/audio_soak.py [--seconds 600] [--json benchmarks/results/audio_soak.json]

Needs a running PulseAudio (``make audio-server``). A temporary null sink carries both sides,
like the tests: ``pacat`` (a separate process, so its CPU is not counted) loops a noise
burst per second into the sink's left channel; the bridge reads that channel of the monitor
and plays the delayed sound into the right channel. The engine is simulated: 30 times a
second a "video latency" between ~60 and ~170 ms (slow swings, 30 s steps, frame jitter and
spikes). ``parec`` records the monitor throughout; every ``--check-every`` seconds the
latency holds still for 5 s and the last 3 s are cross-correlated: the measured delay is
compared with the one the bridge reports.

The bridge runs as ``realtime run`` runs it: ``AudioBridgeProcess``, in a child process.
Reported: underruns/overruns (PortAudio callback flags), starved blocks, crossfades, the
audio process's CPU time (callbacks, PortAudio and PulseAudio client threads), the
callbacks' own share, and the engine side (smoothing, 30 calls a second).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from realtime.audio_probe import loopback_bridge  # noqa: E402

SR = 48000


def pactl(*args: str) -> str:
    return subprocess.run(
        ["pactl", *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


def burst_pattern() -> bytes:
    """One second of s16le stereo: a 100 ms Hann-windowed noise burst on the left, silence elsewhere."""
    rng = np.random.default_rng(0)
    pattern = np.zeros((SR, 2), np.float32)
    pattern[4800 : 4800 + 4800, 0] = rng.uniform(-0.5, 0.5, 4800) * np.hanning(4800)
    return (pattern * 32767).astype("<i2").tobytes()


class Recorder:
    """``parec`` (its own process) records the sink's monitor for the whole run; the last
    seconds are kept here. One stream from start to end: a recorder connecting for each
    check would itself shift the sink's timing and disturb what it measures."""

    def __init__(self, sink: str, keep_s: float = 4.0) -> None:
        self.proc = subprocess.Popen(
            [
                "parec",
                f"--device={sink}.monitor",
                "--rate=48000",
                "--channels=2",
                "--format=s16le",
                "--raw",
                "--latency-msec=20",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._chunks: collections.deque[bytes] = collections.deque(maxlen=int(keep_s * SR * 4 / 4096) + 1)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read(4096):
            with self._lock:
                self._chunks.append(chunk)

    def clear(self) -> None:
        with self._lock:
            self._chunks.clear()

    def take(self) -> np.ndarray:
        with self._lock:
            raw = b"".join(self._chunks)
        data = np.frombuffer(raw[: len(raw) // 4 * 4], "<i2").reshape(-1, 2)
        return data.astype(np.float64) / 32767.0

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)


def measured_delay_ms(x: np.ndarray) -> tuple[float, float]:
    """Delay of the right channel behind the left (cross-correlation) and the match quality."""
    left, right = x[:, 0], x[:, 1]
    n = len(left)
    if n < SR // 2 or not left.any() or not right.any():
        return float("nan"), 0.0
    corr = np.fft.irfft(np.fft.rfft(right, 2 * n) * np.conj(np.fft.rfft(left, 2 * n)))[: SR // 2]
    lag = int(np.argmax(corr))
    quality = corr[lag] / (math.sqrt(float(np.sum(left**2) * np.sum(right**2))) + 1e-12)
    return lag / SR * 1000.0, float(quality)


def video_latency(t: float, rng: np.random.Generator, shift_ms: float = 0.0) -> float:
    """A synthetic engine: slow swings, a step every 30 s, frame jitter and rare spikes.

    Before and during each delay check ``t`` is held, so the check measures a steady state.
    """
    base = shift_ms + 110.0 + 40.0 * math.sin(2 * math.pi * t / 97.0) + (15.0 if int(t // 30) % 2 else -15.0)
    spike = 150.0 if rng.random() < 0.01 else 0.0
    return base + rng.normal(0.0, 5.0) + spike


def parse_latency(text: str) -> str | float:
    return text if text in ("low", "high") else float(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--check-every", type=float, default=60.0)
    parser.add_argument("--json", default=str(HERE / "results" / "audio_soak.json"))
    parser.add_argument("--blocksize", type=int, default=None, help="the bridge's (default: its own)")
    parser.add_argument("--latency", default=None, help="the bridge's: low, high or seconds")
    parser.add_argument(
        "--video-shift-ms", type=float, default=0.0, help="added to the synthetic video latency (~60-170 ms)"
    )
    parser.add_argument(
        "--busy-loop", action="store_true", help="load one core with a `python -c` busy loop meanwhile"
    )
    args = parser.parse_args()

    import psutil

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # run the cleanup below (streams, pacat, the null sink)

    signal.signal(signal.SIGTERM, stop)

    sink = f"rt_soak_{os.getpid()}"
    module = pactl("load-module", "module-null-sink", f"sink_name={sink}", "rate=48000")
    pattern = Path(tempfile.mkdtemp()) / "burst.raw"
    pattern.write_bytes(burst_pattern())
    player = subprocess.Popen(
        [
            "sh",
            "-c",
            f"while :; do cat '{pattern}'; done | pacat --playback --device={sink} --rate=48000 "
            "--channels=2 --format=s16le --raw --latency-msec=20",
        ],
        start_new_session=True,
    )
    # As `realtime run` uses it: in its own process (away from the engine's GIL).
    bridge = loopback_bridge(
        sink,
        isolated=True,
        **({} if args.blocksize is None else {"blocksize": args.blocksize}),
        **({} if args.latency is None else {"latency": parse_latency(args.latency)}),
    )
    busy = (
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy_loop else None
    )  # CPU load on one core, at normal priority
    rng = np.random.default_rng(1)
    checks: list[dict] = []
    process = psutil.Process()
    recorder: Recorder | None = None
    try:
        bridge.open()
        recorder = Recorder(sink)
        child = psutil.Process(bridge.pid)
        cpu0, child0, t0 = process.cpu_times(), child.cpu_times(), time.monotonic()
        next_check = t0 + min(args.check_every, 20.0)
        reported: list[float] = []
        frozen = 0.0  # the engine's latency holds still for a check: 2 s to settle, 3 s recorded
        while (now := time.monotonic()) - t0 < args.seconds:
            bridge.set_video_latency_ms(video_latency(frozen or now - t0, rng, args.video_shift_ms))
            if not frozen and now >= next_check - 2.0:
                frozen = now - t0
            if frozen and now >= next_check and not reported:
                recorder.clear()
            if frozen and now >= next_check and bridge.audio_delay_ms is not None:
                reported.append(bridge.audio_delay_ms)
            if frozen and now >= next_check + 3.0:
                delay, quality = measured_delay_ms(recorder.take())
                mean = float(np.mean(reported)) if reported else float("nan")
                checks.append(
                    {
                        "t_s": round(now - t0, 1),
                        "video_ms": round(bridge.video_latency_ms or float("nan"), 2),
                        "measured_ms": round(delay, 2),
                        "reported_ms": round(mean, 2),
                        "error_ms": round(delay - mean, 2),
                        "quality": round(quality, 3),
                    }
                )
                st = bridge.stats()
                print(
                    f"[{now - t0:6.0f} s] measured {delay:6.1f} ms, bridge reports {mean:6.1f} ms, "
                    f"underruns {st['underruns']}, overruns {st['overruns']}, crossfades {st['crossfades']}",
                    flush=True,
                )
                reported, next_check, frozen = [], now + args.check_every, 0.0
            time.sleep(1 / 30)
        wall = time.monotonic() - t0
        cpu1, child1 = process.cpu_times(), child.cpu_times()
    finally:
        if busy is not None:
            busy.terminate()
            busy.wait(timeout=5)
        if recorder is not None:
            recorder.close()
        bridge.close()
        os.killpg(player.pid, signal.SIGTERM)
        player.wait(timeout=10)
        subprocess.run(["pactl", "unload-module", module], capture_output=True, timeout=10)
        pattern.unlink(missing_ok=True)
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    used_child = (child1.user - child0.user) + (child1.system - child0.system)
    stats = bridge.stats()
    errors = [abs(c["error_ms"]) for c in checks if c["quality"] > 0.3 and not math.isnan(c["error_ms"])]
    result = {
        "seconds": round(wall, 1),
        "underruns": stats["underruns"],
        "overruns": stats["overruns"],
        "counters": {
            k: stats[k]
            for k in (
                "input_overflows",
                "input_underflows",
                "output_underflows",
                "output_overflows",
                "starved_blocks",
                "input_blocks",
                "output_blocks",
            )
        },
        "crossfades": stats["crossfades"],
        "stalled_or_failed": bool(stats["stalled"] or stats["failed"]),
        "audio_process_cpu_percent_of_one_core": round(100.0 * used_child / wall, 2),
        "callback_cpu_percent_of_one_core": stats["callback_cpu_percent"],
        "driver_side_cpu_percent_of_one_core": round(100.0 * used / wall, 2),  # smoothing + the recorder
        "raised_priority": stats.get("raised_priority"),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_cores": os.cpu_count(),
        "path_latency_ms": stats["path_latency_ms"],
        "min_delay_ms": stats["min_delay_ms"],
        "delay_checks": checks,
        "delay_check_max_abs_error_ms": round(max(errors), 2) if errors else None,
        "samplerate": stats["samplerate"],
        "blocksize": stats["blocksize"],
        "latency": args.latency,
        "video_shift_ms": args.video_shift_ms,
        "busy_loop": args.busy_loop,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "delay_checks"}, indent=2))
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
