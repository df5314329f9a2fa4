"""``realtime bench --lips voice|auto``: what the voice's mouth costs and how late it is.

Two measurements. The cost: a real recording fed to ``VoiceStream`` in 20 ms microphone blocks
at 48 kHz, as the live microphone thread does, timing the feature extraction (resampling and
log-mel) and the ONNX model per block, with the thread's CPU time per block (which a busy
host's preemption does not inflate). The latency: bursts of the same speech through a
temporary PulseAudio null sink into the live engine and the A/V bridge
(``realtime.voice_probe.measure_mouth_latency``): when the avatar's mouth opens against
when the delayed voice leaves the bridge.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from realtime.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_SPEECH = Path(__file__).resolve().parents[1] / ".." / "shared" / "media" / "audio"
DEFAULT_SPEECH = DEFAULT_SPEECH / "dreamtalk_out_of_domain_narrative.wav"


def percentiles(values: list[float]) -> dict[str, float]:
    x = np.asarray(values, np.float64)
    return {
        "median_ms": round(float(np.median(x)), 3),
        "p95_ms": round(float(np.percentile(x, 95)), 3),
        "n": len(x),
    }


def block_costs(
    samples: np.ndarray, rate: int = 48000, block: int = 960, model_path: str | None = None
) -> dict:
    """Per-block wall time of the features and the model, and the CPU time per block."""
    from realtime.voice.model import VoiceMouthModel
    from realtime.voice.stream import VoiceStream

    model = VoiceMouthModel(model_path).open()
    stream = VoiceStream(model, rate)
    parts: dict[str, list[float]] = {"features": [], "model": [], "block_total": [], "block_cpu": []}
    run = model.run

    def timed_run(mel: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = run(mel)
        parts["model"].append((time.perf_counter() - t0) * 1000.0)
        return out

    model.run = timed_run  # type: ignore[method-assign]
    try:
        for i in range(0, len(samples) - block, block):
            before = len(parts["model"])
            t0, cpu0 = time.perf_counter(), time.thread_time()
            stream.push(samples[i : i + block])
            total = (time.perf_counter() - t0) * 1000.0
            parts["block_cpu"].append((time.thread_time() - cpu0) * 1000.0)
            parts["block_total"].append(total)
            if len(parts["model"]) > before:  # the rest of the block: resampling, log-mel, the gate
                parts["features"].append(total - parts["model"][-1])
    finally:
        model.run = run  # type: ignore[method-assign]
    return {
        "block": f"{block} samples at {rate} Hz ({1000 * block / rate:.0f} ms)",
        "provider": model.provider,
        **{name: percentiles(values) for name, values in parts.items() if values},
    }


def run_lips_bench(
    lips: str,
    speech: str | None,
    bursts: int = 8,
    fps: float = 30.0,
    avatar: str = "builtin",
    offset_ms: float | None = None,
) -> dict[str, Any]:
    """Both measurements; the latency is skipped (with the reason) when PulseAudio is missing."""
    from realtime.audio import AudioUnavailable
    from realtime.metrics import machine_description
    from realtime.voice.audio_file import read_audio
    from realtime.voice.live import voice_lag_ms

    path = speech or str(DEFAULT_SPEECH)
    if not os.path.exists(path):
        raise UserError(f"bench --lips needs a speech recording: --speech FILE ({path} is not there)")
    report: dict[str, Any] = {
        "lips": lips,
        "speech": Path(path).name,
        "machine": machine_description(),
        "load_1min": round(os.getloadavg()[0], 2),
        "voice_lag_ms": round(voice_lag_ms(), 1),
    }
    report["cost"] = block_costs(read_audio(path, 48000))
    try:
        from realtime.audio_probe import temporary_null_sink
        from realtime.voice_probe import measure_mouth_latency, speech_bursts

        signal = speech_bursts(read_audio(path, 16000), 16000, count=bursts)
        with temporary_null_sink(f"rt_bench_lips_{os.getpid()}") as sink:
            latency = measure_mouth_latency(
                sink, signal, lips=lips, fps=fps, avatar=avatar, offset_ms=offset_ms
            )
        report["latency"] = latency
    except (AudioUnavailable, OSError) as exc:
        logger.warning("mouth latency not measured: %s", exc)
        report["latency"] = {"skipped": str(exc)}
    report["load_1min_after"] = round(os.getloadavg()[0], 2)
    return report


def format_lips(report: dict[str, Any]) -> str:
    cost = report["cost"]
    lines = [
        f"lips {report['lips']}: per {cost['block']} block, median / p95 ms: "
        f"features {cost['features']['median_ms']:.2f} / {cost['features']['p95_ms']:.2f}, "
        f"model {cost['model']['median_ms']:.2f} / {cost['model']['p95_ms']:.2f}, "
        f"CPU {cost['block_cpu']['median_ms']:.2f} / {cost['block_cpu']['p95_ms']:.2f} ({cost['provider']})"
    ]
    latency = report["latency"]
    if "skipped" in latency:
        lines.append(f"mouth vs voice: not measured ({latency['skipped']})")
        return "\n".join(lines)
    out, cmd = latency.get("mouth_vs_output_ms") or {}, latency.get("mouth_vs_input_ms") or {}
    lines.append(
        f"mouth vs delayed voice (bridge offset {latency['bridge_offset_ms']:.0f} ms, + = mouth late): "
        + (
            f"median {out['median']:+.0f} ms, range {out['min']:+.0f}..{out['max']:+.0f} "
            f"(iqr {out['iqr']:.0f}) over {latency['opened']}/{latency['bursts']} bursts"
            if out
            else f"no burst opened the mouth ({latency['bursts']} bursts)"
        )
    )
    if cmd:
        lines.append(f"mouth vs voice at the microphone: median {cmd['median']:+.0f} ms")
    lines.append(f"host load {report['load_1min']} -> {report['load_1min_after']} (1 min)")
    return "\n".join(lines)
