"""Cost of lips from the voice on the live path: per 20 ms microphone block at 48 kHz.

    python benchmarks/voice_bench.py [--audio SPEECH] [--json benchmarks/results/voice_bench.json]

Feeds a real recording block by block through ``VoiceStream`` (resampling to 16 kHz, log-mel
features of the new frames, the ONNX model on its receptive field) and times each part per
block; also the offline path (``VoiceMouthModel.offsets`` on the whole recording) per second
of audio. Medians and 95th percentiles of wall time, and the CPU time of the pushing thread per
block (``block_cpu``), which a busy host's preemption does not inflate.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from realtime.metrics import machine_description
from realtime.voice import features
from realtime.voice.audio_file import read_audio
from realtime.voice.model import VoiceMouthModel
from realtime.voice.stream import VoiceStream

MEDIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "media"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", default=str(MEDIA / "audio" / "SadTalker_answer.wav"))
    parser.add_argument("--block", type=int, default=960)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    mic = read_audio(args.audio, args.rate)
    model = VoiceMouthModel().open()
    stream = VoiceStream(model, args.rate)
    parts: dict[str, list[float]] = {
        "resample": [],
        "features": [],
        "model": [],
        "block_total": [],
        "block_cpu": [],
    }
    original_run = model.run

    def timed_run(mel):
        t0 = time.perf_counter()
        out = original_run(mel)
        parts["model"].append((time.perf_counter() - t0) * 1000)
        return out

    model.run = timed_run  # type: ignore[method-assign]
    original_resample = stream.resample

    def timed_resample(block):
        t0 = time.perf_counter()
        out = original_resample(block)
        parts["resample"].append((time.perf_counter() - t0) * 1000)
        return out

    stream.resample = timed_resample  # type: ignore[assignment]
    for i in range(0, len(mic) - args.block, args.block):
        t0, cpu0 = time.perf_counter(), time.thread_time()
        before = len(parts["model"])
        stream.push(mic[i : i + args.block])
        total = (time.perf_counter() - t0) * 1000
        parts["block_cpu"].append((time.thread_time() - cpu0) * 1000)
        parts["block_total"].append(total)
        if len(parts["model"]) > before:
            parts["features"].append(total - parts["model"][-1] - parts["resample"][-1])
    speech16 = read_audio(args.audio)
    t0 = time.perf_counter()
    model.offsets(speech16)
    offline_ms_per_s = (time.perf_counter() - t0) * 1000 / (len(speech16) / features.RATE)
    result = {
        "audio": Path(args.audio).name,
        "block": f"{args.block} samples at {args.rate} Hz ({1000 * args.block / args.rate:.0f} ms)",
        "receptive_field_frames": model.receptive_field,
        "provider": model.provider,
        "machine": machine_description(),
        "offline_ms_per_audio_s": round(offline_ms_per_s, 2),
    }
    for name, values in parts.items():
        v = np.array(values)
        result[name] = {
            "median_ms": round(float(np.median(v)), 3),
            "p95_ms": round(float(np.percentile(v, 95)), 3),
            "n": len(v),
        }
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
