"""Cross-identity reenactment (a portrait driven by someone else): mouth sheet and steadiness.

    python benchmarks/cross_identity.py --avatar AVATAR.jpg --driver CLIP.mp4 \\
        --generator warp refiner [OTHER.onnx ...] [--sheet PNG] [--json JSON]

``benchmarks/results/refiner_cross_identity.{png,json}``: avatar ``liveportrait_s0.jpg``,
driver ``clips/liveportrait_d9.mp4``, generators ``warp``, the refiner shipped before the
driver input (``git show 3dda26f:weights/refiner.onnx``, with its card, as ``stage1.onnx``)
and ``refiner``.

``realtime eval`` scores self-reenactment, where the driver's own frame is the ground truth.
Here there is none, so this shows and measures what can be judged without it:

- a sheet of the mouth at the driver's widest openings: the driver, then each generator;
- steadiness: the mean |frame-to-frame change| (grey levels) in the avatar's mouth region,
  per generator, over the whole clip. A generator that flickers there scores higher than
  the warp it starts from.

Every generator runs the live per-frame path (``FrameProcessor``, reenact mode), frame by
frame in order, as ``realtime render`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from realtime import mesh
from realtime.analysis import read_frames
from realtime.avatar import load_avatar
from realtime.frames import Frame
from realtime.pipeline import offline_processor
from realtime.tracking import FaceTracker

TILE = 200  # px per sheet tile
ROWS = 5  # the driver's widest mouth openings shown


def render(avatar_path: str, driver: list[np.ndarray], generator: str) -> np.ndarray:
    """(T, H, W, 3) uint8: the avatar driven by every driver frame, in order."""
    height, width = driver[0].shape[:2]
    avatar = load_avatar(avatar_path, (width, height))
    processor = offline_processor(avatar, generator)
    return np.stack([processor.process(Frame(image, i, i / 30.0)).image for i, image in enumerate(driver)])


def mouth_tile(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    centre = landmarks[mesh.OUTER_LIP, :2].mean(axis=0)
    half = 0.45 * mesh.face_size(landmarks)
    matrix = np.array([[TILE / (2 * half), 0, 0], [0, TILE / (2 * half), 0]])
    matrix[:, 2] = TILE / 2 - matrix[:, :2] @ centre
    return cv2.warpAffine(image, matrix, (TILE, TILE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avatar", required=True)
    parser.add_argument("--driver", required=True)
    parser.add_argument("--generator", nargs="+", default=["warp", "refiner"])
    parser.add_argument("--max-frames", type=int, default=600)
    parser.add_argument("--sheet", default=None, help="write the mouth sheet PNG here")
    parser.add_argument("--json", default=None, help="write the steadiness numbers here")
    args = parser.parse_args(argv)

    driver = list(read_frames(args.driver, args.max_frames))
    judge = FaceTracker(smoothing=False, track_width=0)
    driver_faces = [judge.detect(image) for image in driver]
    openings = [(mesh.mouth_opening(f[0]), i) for i, f in enumerate(driver_faces) if f]
    # The widest openings, at least half a second apart so the rows differ.
    picked: list[int] = []
    for _, i in sorted(openings, reverse=True):
        if all(abs(i - j) >= 15 for j in picked):
            picked.append(i)
        if len(picked) == ROWS:
            break
    picked.sort()

    height, width = driver[0].shape[:2]
    avatar_landmarks = load_avatar(args.avatar, (width, height)).landmarks
    region = np.zeros((height, width), np.uint8)
    cv2.fillPoly(region, [np.round(avatar_landmarks[mesh.OUTER_LIP, :2]).astype(np.int32)], 1)
    region = cv2.dilate(region, np.ones((15, 15), np.uint8)).astype(bool)

    columns = [[mouth_tile(driver[i], driver_faces[i][0]) for i in picked]]
    steadiness = {}
    for name in args.generator:
        frames = render(args.avatar, driver, name)
        change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=-1)[:, region]
        steadiness[name] = round(float(change.mean()), 3)
        columns.append([mouth_tile(frames[i], avatar_landmarks) for i in picked])
        print(f"{name}: mean |frame-to-frame change| in the mouth region {steadiness[name]:.3f} grey levels")
    result = {
        "avatar": args.avatar,
        "driver": args.driver,
        "frames": len(driver),
        "sheet_frames": picked,
        "mouth_change": steadiness,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.sheet:
        sheet = np.concatenate([np.concatenate(column, axis=0) for column in columns], axis=1)
        label = np.full((28, sheet.shape[1], 3), 255, np.uint8)
        text = "  |  ".join(["driver", *(Path(name).stem for name in args.generator)])
        cv2.putText(label, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.imwrite(args.sheet, np.concatenate([label, sheet], axis=0))
        print(f"sheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
