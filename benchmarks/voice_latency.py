"""When the voice's mouth moves, against the voice delayed by the A/V bridge, through real PulseAudio.

    python benchmarks/voice_latency.py [--lips voice|auto] [--bursts 8] [--runs 3] [--offset-ms MS]
        [--audio SPEECH] [--json benchmarks/results/voice_latency.json]

Bursts of real speech (the loudest stretches of ``--audio``, 0.6 s each, 1.5 s of silence
between) are played into a temporary PulseAudio null sink; the voice model listens to its
monitor, the A/V bridge delays the same sound into the sink's other channel, and the live
engine renders the avatar at 30 fps (``realtime.voice_probe``). Reports per burst the mouth's
onset minus the delayed voice's onset (the A/V offset, positive = the mouth late) and minus
the voice's onset at the microphone, medians and spread over all runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

MEDIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "media"


def summarise(values: list[float]) -> dict[str, float]:
    x = np.array([v for v in values if np.isfinite(v)])
    if not len(x):
        return {}
    return {
        "median": round(float(np.median(x)), 1),
        "p10": round(float(np.percentile(x, 10)), 1),
        "p90": round(float(np.percentile(x, 90)), 1),
        "min": round(float(x.min()), 1),
        "max": round(float(x.max()), 1),
        "n": len(x),
    }


def measure(lips: str, bursts: int, runs: int, offset_ms: float | None, audio: str) -> dict:
    from realtime.audio_probe import temporary_null_sink
    from realtime.metrics import machine_description
    from realtime.voice.audio_file import read_audio
    from realtime.voice.live import voice_lag_ms
    from realtime.voice_probe import measure_mouth_latency, speech_bursts

    signal = speech_bursts(read_audio(audio, 16000), 16000, count=bursts)
    results = []
    for run in range(runs):
        with temporary_null_sink(f"rt_voice_latency_{os.getpid()}_{run}") as sink:
            results.append(measure_mouth_latency(sink, signal, lips=lips, offset_ms=offset_ms))
    rows = [row for r in results for row in r["rows"] if row.get("opened")]
    return {
        "lips": lips,
        "audio": Path(audio).name,
        "bridge_offset_ms": results[0]["bridge_offset_ms"],
        "voice_lag_ms (the offset run adds)": round(voice_lag_ms(), 1),
        "bursts": sum(r["bursts"] for r in results),
        "opened": len(rows),
        "mouth_vs_output_ms": summarise([row["mouth_vs_output_ms"] for row in rows]),
        "mouth_vs_input_ms": summarise([row["mouth_vs_input_ms"] for row in rows]),
        "output_vs_input_ms": summarise([row["output_vs_input_ms"] for row in rows]),
        "commanded_vs_input_ms": summarise([row.get("commanded_vs_input_ms", np.nan) for row in rows]),
        "video_latency_p50_ms": [r["video_latency_ms"].get("p50") for r in results],
        "load_1min": round(os.getloadavg()[0], 2),
        "machine": machine_description(),
        "runs": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lips", choices=["voice", "auto"], default="voice")
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--offset-ms", type=float, default=None, help="bridge offset (default: run's)")
    parser.add_argument("--audio", default=str(MEDIA / "audio" / "dreamtalk_out_of_domain_narrative.wav"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report = measure(args.lips, args.bursts, args.runs, args.offset_ms, args.audio)
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
