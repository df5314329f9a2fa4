"""Swap mode with a hand over part of the face: do the swapped face's landmarks hold or jump?

    python benchmarks/swap_occlusion.py [--frames 48] [--json J]

There are no videos of hands over faces in ``../shared/media``, but there are photos of real
hands at the cheek (``occlusion/``, HaGRID 'call' gesture). Each hand is cut out along its
mediapipe landmarks and pasted, at the face's scale, onto a real face clip: it sweeps in
from beside the face, rests over a cheek, the mouth or the chin, and sweeps out. Because the
clean clip is known, so are the true landmarks under the hand (the same tracker on the
clean frames). Per run, over the frames where the hand covers part of the inner face and the
landmarks it covers:

- error: mean distance of the landmarks the swap uses from the clean clip's, in face sizes;
- jitter: mean frame-to-frame change of that error (how much they jump beyond the face's
  own motion), in face sizes;
- mask jump: the inner-face polygon's (the swap's mask) mean vertex jump beyond the clean
  clip's, in face sizes, mean and 95th percentile over frames.

``hold`` (``CoveredHold``, the default) against ``raw`` (the tracker's landmarks as they come),
both with the hand mask on.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from realtime import mesh
from realtime.analysis import read_frames
from realtime.avatar import load_avatar
from realtime.frames import Frame, Mode
from realtime.metrics import machine_description
from realtime.occlusion import HandDetector, hand_mask
from realtime.pipeline import offline_processor
from realtime.swap import inner_face_polygon
from realtime.tracking import FaceTracker

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
FACES = ["webcam/spectre_mead_W023_surprised.mp4", "webcam/spectre_mead_M003_happy.mp4"]
# where the hand rests: right cheek, left cheek, mouth, chin
RESTS = [205, 425, 13, 152]
HAND_PER_FACE_WIDTH = 0.7


def cut_hand(photo: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The photo's largest hand: its alpha (0..1), its centre and its extent (px)."""
    with HandDetector(complexity=1, tracking=False) as detector:
        hands = detector.detect(photo)
    if not hands:
        raise ValueError("no hand found in the photo")
    hand = max(hands, key=lambda h: float(np.ptp(h[:, 1])))
    alpha = hand_mask([hand], photo.shape[:2], (0, 0), 0).astype(np.float32) / 255.0
    return alpha, hand.mean(axis=0), float(np.ptp(hand, axis=0).max())


def hand_sweep_clip(
    photo: np.ndarray, frames: list[np.ndarray], rest: int, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``frames`` with the photo's hand pasted over them: in from the side over the first quarter,
    resting on landmark ``rest`` (with a small wobble), out over the last quarter.
    Returns the frames, each frame's hand alpha, and the clean frames' tracked landmarks."""
    alpha, centre, extent = cut_hand(photo)
    tracker = FaceTracker()
    clean = [tracker.process(Frame(f, i, i / 30.0)).landmarks for i, f in enumerate(frames)]
    tracker.close()
    rng = np.random.default_rng(seed)
    n = len(frames)
    out, alphas = [], []
    for i, (frame, face) in enumerate(zip(frames, clean, strict=True)):
        size = mesh.face_size(face)
        # thumb to little finger spread a little less than the face is wide
        scale = HAND_PER_FACE_WIDTH * float(np.ptp(face[mesh.face_oval(), 0])) / extent
        aside = face[234 if rest in (205, 13, 152) else 454, :2] + np.array(
            [-1.2 * size if rest in (205, 13, 152) else 1.2 * size, 0.0]
        )
        target = face[rest, :2]
        t = np.clip(min(i / (0.25 * n), (n - 1 - i) / (0.25 * n)), 0.0, 1.0)
        t = 0.5 - 0.5 * np.cos(np.pi * t)
        where = aside + t * (target - aside) + rng.normal(0.0, 0.01 * size, 2)
        shift = where - scale * centre
        matrix = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]], np.float32)
        h, w = frame.shape[:2]
        pasted = cv2.warpAffine(photo, matrix, (w, h))
        a = cv2.warpAffine(alpha, matrix, (w, h))[..., None]
        out.append((frame * (1 - a) + pasted * a).astype(np.uint8))
        alphas.append(a[..., 0])
    return out, alphas, clean


def swap_landmarks(
    clip: list[np.ndarray], avatar, hold: bool, size: tuple[int, int]
) -> list[np.ndarray | None]:
    """The landmarks the swap draws with, per frame (through the live per-frame path)."""
    processor = offline_processor(avatar, "warp", mode=Mode.SWAP, size=size, hold_covered=hold)
    generator = processor.generators.for_mode(Mode.SWAP)
    used: list[np.ndarray | None] = []
    render = generator.render

    def recording(target):
        used.append(None if target.driver_landmarks is None else target.driver_landmarks.copy())
        return render(target)

    generator.render = recording
    try:
        for i, frame in enumerate(clip):
            before = len(used)
            processor.process(Frame(frame, i, i / 30.0))
            if len(used) == before:
                used.append(None)
    finally:
        processor.close()
    return used


def measure(used: list[np.ndarray | None], clean: list[np.ndarray], alphas: list[np.ndarray]) -> dict:
    errors, jitters, jumps = [], [], []
    previous = None
    for lm, truth, alpha in zip(used, clean, alphas, strict=True):
        size = mesh.face_size(truth)
        polygon = inner_face_polygon(truth)
        inner = np.zeros(alpha.shape, np.uint8)
        cv2.fillPoly(inner, [np.round(polygon).astype(np.int32)], 1)
        if lm is None or (alpha[inner > 0] > 0.5).sum() < 0.03 * inner.sum():
            previous = None
            continue
        # the landmarks under the hand (within a tenth of a face size of it)
        grown = cv2.dilate(
            (alpha > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=max(1, int(0.1 * size))
        )
        pts = np.round(truth[:, :2]).astype(int)
        ok = (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] < alpha.shape[1]) & (pts[:, 1] < alpha.shape[0])
        covered = np.zeros(len(truth), bool)
        covered[ok] = grown[pts[ok, 1], pts[ok, 0]] > 0
        if not covered.any():
            previous = None
            continue
        offset = (lm[:, :2] - truth[:, :2]) / size
        errors.append(float(np.linalg.norm(offset[covered], axis=1).mean()))
        poly_offset = (inner_face_polygon(lm) - polygon) / size
        if previous is not None:
            prev_offset, prev_poly, prev_covered = previous
            both = covered & prev_covered
            if both.any():
                jitters.append(float(np.linalg.norm(offset[both] - prev_offset[both], axis=1).mean()))
            jumps.append(float(np.linalg.norm(poly_offset - prev_poly, axis=1).mean()))
        previous = (offset, poly_offset, covered)
    return {
        "covered_frames": len(errors),
        "error": round(float(np.mean(errors)), 4) if errors else None,
        "jitter": round(float(np.mean(jitters)), 4) if jitters else None,
        "mask_jump": round(float(np.mean(jumps)), 4) if jumps else None,
        "mask_jump_p95": round(float(np.percentile(jumps, 95)), 4) if jumps else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--avatar", default=str(MEDIA / "avatars" / "liveportrait_s42.jpg"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    photos = sorted((MEDIA / "occlusion").glob("*.jpg"))
    size = (1280, 720)
    avatar = load_avatar(args.avatar, size)
    rows = []
    for k, photo_path in enumerate(photos):
        face_clip = FACES[k % len(FACES)]
        frames = [cv2.resize(f, size) for f in read_frames(str(MEDIA / face_clip), args.frames)]
        rest = RESTS[k % len(RESTS)]
        try:
            clip, alphas, clean = hand_sweep_clip(cv2.imread(str(photo_path)), frames, rest, seed=k)
        except ValueError as exc:
            print(f"{photo_path.name}: skipped ({exc})")
            continue
        row = {"photo": photo_path.name, "face": face_clip, "rest": rest}
        for hold in (False, True):
            row["hold" if hold else "raw"] = measure(swap_landmarks(clip, avatar, hold, size), clean, alphas)
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for key in ("raw", "hold"):
        summary[key] = {
            m: round(float(np.mean([r[key][m] for r in rows if r[key][m] is not None])), 4)
            for m in ("error", "jitter", "mask_jump", "mask_jump_p95")
        }
    print("| run | error | jitter | mask jump | mask jump p95 |  (face sizes, mean over runs)")
    print("|---|---|---|---|---|")
    for key, s in summary.items():
        print(f"| {key} | {s['error']} | {s['jitter']} | {s['mask_jump']} | {s['mask_jump_p95']} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "summary": summary, "machine": machine_description()}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
