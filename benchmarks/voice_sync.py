"""How well the voice's loudness predicts the mouth in the training data, clip by clip and by lag.

    python benchmarks/voice_sync.py [--cache .train_cache_voice] [--json benchmarks/results/voice_sync.json]

For every cached speech clip (``realtime.train.voice_data``): the Pearson r between the audio's
loudness (dB of the log-mel filterbank's total energy, 25 ms windows centred on each video
frame) and the tracked mouth opening (inner-lip gap over face size, ``mesh.mouth_opening``), with
the audio shifted by -400..+400 ms (positive: the sound comes after the lips). Also: r of the
opening against the model's training target (the canonical gap of ``realtime.voice.mouth``), the
share of the opening's variance that is slow (a 1 s moving average), and per dataset and pooled
(weighted by length) the lag where the loudness agrees best. A consistent offset per clip or
dataset would show as a peak away from 0; a weak peak everywhere means the loudness is a poor
predictor of the mouth in these clips, not an alignment bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter1d

from realtime import mesh
from realtime.voice import features, mouth

LAGS_MS = np.arange(-400, 401, 20)
DATASETS = ("LipNet_grid", "Talking-Face_PC-AVS", "spectre_mead", "DFRF", "LatentSync", "Linly-Talker")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 5 or np.std(a[keep]) < 1e-12 or np.std(b[keep]) < 1e-12:
        return float("nan")
    return float(np.corrcoef(a[keep], b[keep])[0, 1])


def clip_sync(clip: dict) -> dict:
    fps = float(clip["fps"])
    faces = clip["landmarks"].astype(np.float64)
    opening = np.array([np.nan if np.isnan(f[0, 0]) else mesh.mouth_opening(f) for f in faces])
    mel = features.log_mel(clip["audio"])
    centre_s = features.frame_end_s(np.arange(len(mel))) - features.WINDOW_S / 2
    loud_db = 10 * np.log10(np.exp(mel.astype(np.float64)).sum(axis=1) + 1e-12)
    video_s = np.arange(len(opening)) / fps
    by_lag = [
        pearson(np.interp(video_s + lag / 1000, centre_s, loud_db, left=np.nan, right=np.nan), opening)
        for lag in LAGS_MS
    ]
    best = int(np.nanargmax(by_lag))
    filled = np.where(np.isfinite(opening), opening, np.nanmean(opening))
    slow = uniform_filter1d(filled, max(1, int(round(fps))), mode="nearest")
    return {
        "clip": clip["name"],
        "group": clip["group"],
        "fps": fps,
        "seconds": round(len(opening) / fps, 2),
        "r_at_0": by_lag[int(np.flatnonzero(LAGS_MS == 0)[0])],
        "best_lag_ms": int(LAGS_MS[best]),
        "r_at_best": by_lag[best],
        "r_opening_vs_target": pearson(opening, mouth.opening(clip["offsets"])),
        "slow_share": float(np.var(slow) / np.nanvar(opening)),
        "by_lag": by_lag,
    }


def main() -> int:
    from realtime.train.voice_data import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".train_cache_voice"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [clip_sync(clip) for clip in load(args.cache)]
    print(f"{'clip':44s} group       s    r@0  best lag  r@best  r(open,target)  slow share")
    for r in rows:
        print(
            f"{r['clip'][:44]:44s} {r['group']:10s} {r['seconds']:5.1f} {r['r_at_0']:6.2f} {r['best_lag_ms']:6d} ms"
            f" {r['r_at_best']:6.2f} {r['r_opening_vs_target']:10.2f} {r['slow_share']:10.2f}"
        )
    table = np.array([r["by_lag"] for r in rows])
    weights = np.array([r["seconds"] for r in rows])[:, None] * np.isfinite(table)
    pooled = np.nansum(table * weights, axis=0) / weights.sum(axis=0)
    summary = {
        "mean_r_at_0": float(np.nanmean([r["r_at_0"] for r in rows])),
        "median_r_at_0": float(np.nanmedian([r["r_at_0"] for r in rows])),
        "pooled_best_lag_ms": int(LAGS_MS[int(np.nanargmax(pooled))]),
        "pooled_r_by_lag": {int(lag): round(float(r), 3) for lag, r in zip(LAGS_MS, pooled, strict=True)},
        "datasets": {},
    }
    for name in DATASETS:
        picked = [i for i, r in enumerate(rows) if r["clip"].startswith(name)]
        mean = np.nanmean(table[picked], axis=0)
        summary["datasets"][name] = {
            "clips": len(picked),
            "best_lag_ms": int(LAGS_MS[int(np.nanargmax(mean))]),
            "r_at_best": round(float(np.nanmax(mean)), 3),
            "r_at_0": round(float(mean[LAGS_MS == 0][0]), 3),
        }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "clips": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
