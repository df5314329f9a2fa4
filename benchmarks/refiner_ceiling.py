"""How far can a refiner go under each paste rule? The ceiling of ``realtime eval``'s own scores.

    python benchmarks/refiner_ceiling.py [--max-frames 150] [--clips A.mp4 ...] [--json J]

The region refiner corrects the warp in 48-px crops of the mouth and the eyes, and the model
card's paste rules say what of its correction is applied: its brightness only (``correction:
luma``) or its colour too, inside the openings only or the lips too (``confine``), and for the
mouth perhaps only darker (``darken_only``) or brighter only near the lips (``dark_centre``).
This puts the perfect correction through each rule: self-reenactment as ``realtime eval`` runs
it (the clip's first frame is the avatar, the warp drives it), and in place of a model's output,
the real frame, cut by the runtime's own crops at the tracked landmarks and put through the
runtime's own paste rules (``realtime.generators.onnx.applied_correction``). Scored exactly as ``realtime eval``
scores (``realtime.evaluate.scored_crop``): mouth and eye L1 against the real frame.

A model under a rule cannot beat that rule's ceiling, so an issue bar below it needs another
rule, not more training. The ceiling is optimistic: the perfect correction also paints over
where the warp put the face a pixel off, which no model can know.

By default the clips are the held-out ones of the shipped card's evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from realtime import mesh
from realtime.analysis import read_frames
from realtime.avatar import make_avatar
from realtime.crops import REGIONS, CropSpec, antialiased_warp, crop_matrices, fill_mask
from realtime.evaluate import CROP, scored_crop
from realtime.frames import Frame
from realtime.generators.onnx import CONFINES, applied_correction
from realtime.metrics import machine_description, write_json
from realtime.pipeline import offline_processor
from realtime.sources import probe_video
from realtime.tracking import FaceTracker

ROOT = Path(__file__).resolve().parent.parent
CARD = ROOT / "weights" / "refiner.json"
MEDIA = ROOT.parent / "shared" / "media"
# name: (correction, confine, the mouth's rule); the first is the shipped card's.
RULES = {
    "shipped: luma, openings, mouth darken-only": ("luma", "openings", "darken_only"),
    "luma, openings, mouth dark-centre": ("luma", "openings", "dark_centre"),
    "luma, openings": ("luma", "openings", ""),
    "rgb, openings": ("rgb", "openings", ""),
    "luma, lips and eyes": ("luma", "features", ""),
    "rgb, lips and eyes": ("rgb", "features", ""),
}


def corrected(
    warp: np.ndarray,
    real: np.ndarray,
    landmarks: np.ndarray,
    spec: CropSpec,
    rule: tuple[str, str, str],
    to_scored: np.ndarray,
) -> np.ndarray:
    """The warp's frame with the real frame's crops as the model's output, pasted under ``rule``,
    in the scored crop (float BGR, 0-255)."""
    correction, confine, mouth_rule = rule
    out = cv2.warpAffine(warp, to_scored, (CROP.size, CROP.size), flags=cv2.INTER_AREA).astype(np.float32)
    for k, (matrix, region) in enumerate(zip(crop_matrices(landmarks, spec), REGIONS, strict=True)):
        delta = antialiased_warp(real, matrix, spec.size).astype(np.float32) - antialiased_warp(
            warp, matrix, spec.size
        ).astype(np.float32)
        points = landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        mouth = region == "mouth"
        applied_correction(
            delta,
            points,
            fill_mask(points, spec),
            correction == "luma",
            mouth and mouth_rule == "darken_only",
            mouth and mouth_rule == "dark_centre",
            [CONFINES[confine][k]],
        )
        # crop → frame → scored crop, in one warp
        back = np.vstack([cv2.invertAffineTransform(matrix), [0, 0, 1]])
        out += cv2.warpAffine(delta, to_scored @ back, (CROP.size, CROP.size), flags=cv2.INTER_LINEAR)
    return np.clip(out, 0, 255)


def clip_ceilings(path: Path, max_frames: int, spec: CropSpec) -> dict[str, dict[str, float]]:
    """Mean mouth and eye L1 (0-1) of the warp and of each rule's perfect correction."""
    fps = probe_video(str(path))[0]
    frames = list(read_frames(str(path), max_frames))
    avatar = make_avatar(frames[0], (frames[0].shape[1], frames[0].shape[0]), str(path))
    processor = offline_processor(avatar, "warp")
    judge = FaceTracker(smoothing=False, track_width=0)
    errors: dict[str, dict[str, list[float]]] = {name: {"mouth": [], "eyes": []} for name in ["warp", *RULES]}
    try:
        for index, real in enumerate(frames):
            track = processor.track(Frame(real, index, index / fps))
            warp = processor.render(track).image
            faces = judge.detect(real)
            if not faces or track.landmarks is None:
                continue
            scored = scored_crop(faces[0])
            truth = scored.cut(real).astype(np.float32)
            landmarks = mesh.with_mouth_centre(track.landmarks[:, :2])
            outputs = {"warp": scored.cut(warp).astype(np.float32)}
            for name, rule in RULES.items():
                outputs[name] = corrected(warp, real, landmarks, spec, rule, scored.matrix)
            for name, image in outputs.items():
                diff = np.abs(image - truth).mean(axis=2) / 255.0
                errors[name]["mouth"].append(float(diff[scored.mouth].mean()))
                errors[name]["eyes"].append(float(diff[scored.eyes].mean()))
    finally:
        judge.close()
        processor.close()
    return {name: {r: float(np.mean(v)) for r, v in regions.items()} for name, regions in errors.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", nargs="*", help="clips (default: the shipped card's held-out clips)")
    parser.add_argument("--max-frames", type=int, default=150)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "refiner_ceiling.json")
    args = parser.parse_args(argv)
    card = json.loads(CARD.read_text())
    clips = (
        [Path(c) for c in args.clips]
        if args.clips
        else [MEDIA / "clips" / name for name in card["evaluation"]["held_out_clips"]]
    )
    missing = [str(c) for c in clips if not c.exists()]
    if missing:
        print(
            f"error: clip not found: {missing[0]} (the default clips need ../shared/media)", file=sys.stderr
        )
        return 1
    spec = CropSpec(size=card["crop"]["size"], face_scale=card["crop"]["face_scale"], layout="regions")
    per_clip = {c.name: clip_ceilings(c, args.max_frames, spec) for c in tqdm(clips, unit="clip")}
    names = next(iter(per_clip.values())).keys()
    # As `realtime eval` reports: the mean over clips of each clip's mean.
    mean = {
        n: {r: float(np.mean([s[n][r] for s in per_clip.values()])) for r in ("mouth", "eyes")} for n in names
    }
    print(f"{'':46s} {'mouth L1':>9s} {'x warp':>7s} {'eyes L1':>9s} {'x warp':>7s}")
    for name, score in mean.items():
        ratio = {r: score[r] / mean["warp"][r] for r in score}
        print(
            f"{name:46s} {score['mouth']:9.4f} {ratio['mouth']:7.3f} {score['eyes']:9.4f} {ratio['eyes']:7.3f}"
        )
    write_json(
        args.json,
        {
            "command": "python " + " ".join(["benchmarks/refiner_ceiling.py", *(argv or sys.argv[1:])]),
            "machine": machine_description(),
            "max_frames": args.max_frames,
            "rules": {n: {"correction": c, "confine": f, "mouth": m} for n, (c, f, m) in RULES.items()},
            "mean": mean,
            "clips": per_clip,
        },
    )
    print(f"scores: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
