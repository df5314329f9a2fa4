"""The speech gate's price and worth, at the model's output (no rendering): per clip of a group,
mouth-opening r against the real video (clean, and with pink noise at 10 dB SNR) and the share of
silence-segment frames whose commanded mouth is closed, with and without ``SpeechGate``.

    python benchmarks/voice_gate.py [--group selection|validation] [--cache .train_cache_voice]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from realtime.train.voice_data import load
from realtime.voice import features, mouth
from realtime.voice.model import SpeechGate, VoiceMouthModel

try:
    from benchmarks.voice_eval import COMMANDED_CLOSED, frame_db, pink, silent
except ImportError:  # run as a script from the repository root
    from voice_eval import COMMANDED_CLOSED, frame_db, pink, silent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".train_cache_voice"))
    parser.add_argument("--group", default="validation")
    args = parser.parse_args()
    model = VoiceMouthModel()
    rng = np.random.default_rng(0)
    scores: dict[str, list[float]] = {}
    for clip in load(args.cache):
        if clip["group"] != args.group:
            continue
        speech, fps, count = clip["audio"], clip["fps"], len(clip["offsets"])
        real = mouth.opening(clip["offsets"])
        found = ~np.isnan(real)
        mask = silent(frame_db(speech, count, fps), fps)
        noisy = speech + pink(len(speech), rng) * np.sqrt(np.mean(speech**2) / 10)
        for audio_kind, audio in (("clean", speech), ("noisy", noisy)):
            raw = model.run(features.log_mel(audio))
            times = features.frame_end_s(np.arange(len(raw))) - model.lookahead_s
            for gate_kind, weights in (("ungated", np.ones(len(raw))), ("gated", SpeechGate()(audio))):
                opening = np.interp(
                    np.arange(count) / fps, times, mouth.opening(raw * weights[:, None, None])
                )
                scores.setdefault(f"r_{audio_kind}_{gate_kind}", []).append(
                    float(np.corrcoef(opening[found], real[found])[0, 1])
                )
                if audio_kind == "clean" and mask.any():
                    scores.setdefault(f"closed_{gate_kind}", []).append(
                        float(np.mean(opening[mask] < COMMANDED_CLOSED))
                    )
    summary = {k: round(float(np.nanmean(v)), 3) for k, v in scores.items()}
    print(json.dumps({"group": args.group, "model": model.path.name, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
