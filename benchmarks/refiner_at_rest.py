"""How much a refiner repaints an avatar that is not moving: every avatar of the cross-identity
pairs drawn at its own landmarks (the warp then is the avatar itself, so any correction is an
error), per model the mean |change| in grey levels over the lips and each eye.

    python benchmarks/refiner_at_rest.py MODEL.onnx... [--pairs benchmarks/cross_identity_pairs.txt]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from realtime import mesh
from realtime.avatar import make_avatar
from realtime.evaluate_cross import avatar_image, parse_pair
from realtime.frames import Frame, Mode, Target
from realtime.generators.registry import build_generators

REGIONS = {"mouth": mesh.OUTER_LIP, "right_eye": mesh.RIGHT_EYE, "left_eye": mesh.LEFT_EYE}
PAIRS = Path(__file__).resolve().parent / "cross_identity_pairs.txt"


def change_at_rest(model: str, spec: str) -> dict[str, float]:
    """Mean |refined − warp| per region, grey levels, with the avatar at its own landmarks and
    its own openings as the user's."""
    avatar = make_avatar(avatar_image(spec), None, spec)
    generator = build_generators(model, avatar).for_mode(Mode.REENACT)
    points = avatar.landmarks[:, :2].astype(np.float32)
    target = Target(
        frame=Frame(avatar.image, 0, 0.0), landmarks=mesh.with_mouth_centre(points), driver_landmarks=points
    )
    warp, refined = generator.warp.render(target), generator.render(target)
    change = np.abs(refined.patch.astype(np.float32) - warp.patch.astype(np.float32)).mean(axis=2)
    local = points - warp.origin
    out = {}
    for name, loop in REGIONS.items():
        inside = np.zeros(change.shape, np.uint8)
        cv2.fillPoly(inside, [np.round(local[loop]).astype(np.int32)], 1)
        out[name] = round(float(change[inside > 0].mean()), 2) if inside.any() else float("nan")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--pairs", type=Path, default=PAIRS, help="a pairs file: its avatars are used")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    lines = [line.strip() for line in args.pairs.read_text().splitlines()]
    avatars = list(dict.fromkeys(parse_pair(line)[0] for line in lines if line and not line.startswith("#")))
    results = {model: {spec: change_at_rest(model, spec) for spec in avatars} for model in args.models}
    print("| avatar | " + " | ".join(f"{Path(m).stem} mouth / r-eye / l-eye" for m in args.models) + " |")
    print("|---|" + "---|" * len(args.models))
    for spec in avatars:
        cells = [" / ".join(f"{v:.2f}" for v in results[m][spec].values()) for m in args.models]
        grey = "grey " if spec.startswith("grey:") else ""
        print(f"| {grey}{spec.split('/')[-1]} | " + " | ".join(cells) + " |")
    means = [
        " / ".join(f"{np.mean([results[m][s][r] for s in avatars]):.2f}" for r in REGIONS)
        for m in args.models
    ]
    print("| **mean** | " + " | ".join(means) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
