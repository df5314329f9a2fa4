"""Self-reenactment evaluation: the first frame of a clip is the avatar, the clip drives it,
and every output frame is compared with the real frame.

Reported per clip and overall (mean over clips), on a face crop re-centred on each real
frame's own landmarks, so body and background motion don't dominate the score.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from realtime import mesh
from realtime.analysis import pearson, read_frames
from realtime.avatar import make_avatar
from realtime.crops import CropSpec, alignment
from realtime.pipeline import offline_processor
from realtime.sources import probe_video
from realtime.tracking import FaceTracker

logger = logging.getLogger(__name__)

CROP = CropSpec(size=256, face_scale=0.30)
# A frame whose eye opening is below this share of the clip's median is a blink. In a clip
# without one, blink r only correlates the tracker's jitter on open eyes.
BLINK_BELOW = 0.5


def _region_mask(points: np.ndarray, loops: list[list[int]], size: int, grow: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for loop in loops:
        cv2.fillPoly(mask, [np.round(points[loop]).astype(np.int32)], 255)
    return cv2.dilate(mask, np.ones((grow, grow), np.uint8)) > 0


@dataclass
class ScoredCrop:
    """Where a frame is scored: the face crop re-centred on the real frame's landmarks, those
    landmarks in it, and the mouth and eye regions whose L1 the evaluation reports."""

    matrix: np.ndarray  # 2x3, frame → crop
    points: np.ndarray  # the real landmarks in crop pixels
    mouth: np.ndarray  # bool (S, S): the lips and a ring of about 1/20 eye distance around them
    eyes: np.ndarray

    def cut(self, image: np.ndarray) -> np.ndarray:
        """``image`` (frame pixels) cut to the crop."""
        return cv2.warpAffine(image, self.matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA)


def scored_crop(real_landmarks: np.ndarray) -> ScoredCrop:
    matrix = alignment(real_landmarks, CROP)
    points = real_landmarks[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    return ScoredCrop(
        matrix,
        points,
        _region_mask(points, [mesh.OUTER_LIP], CROP.size, 9),
        _region_mask(points, [mesh.RIGHT_EYE, mesh.LEFT_EYE], CROP.size, 9),
    )


@dataclass
class ClipScore:
    clip: str
    frames: int
    l1: float
    psnr: float
    ssim: float
    mouth_l1: float  # the lips and a ring of about 1/20 eye distance around them
    lips_l1: float  # inside the outer lip line only: where a generator draws the mouth
    eyes_l1: float
    landmark_error: float  # mean point distance / face size
    mouth_r: float
    blink_r: float
    flicker: float  # mean |Δoutput − Δreal| per pixel between consecutive crops, 0..1
    face_found: float
    driver_blinks: int = 0  # frames where the driver's eyes are closed (``BLINK_BELOW``)
    samples: list = field(default_factory=list, repr=False)


def evaluate_clip(
    path: str,
    generator: str = "warp",
    max_frames: int = 120,
    providers=None,
    avatar_image: np.ndarray | None = None,
) -> ClipScore:
    """``avatar_image``: another still of the same person as the avatar (e.g. an enrolled
    avatar's, from another part of the video) instead of the clip's first frame."""
    fps, _, _, _ = probe_video(path)
    frames = list(read_frames(path, max_frames))
    still = frames[0] if avatar_image is None else avatar_image
    avatar = make_avatar(still, (frames[0].shape[1], frames[0].shape[0]), path)
    processor = offline_processor(avatar, generator, providers)
    # Two judges: mediapipe follows a face from frame to frame, so one judge reading real and
    # output frames in turn would let each generator's output move the real frames' landmarks.
    judge, judge_out = (
        FaceTracker(smoothing=False, track_width=0),
        FaceTracker(smoothing=False, track_width=0),
    )
    rows: dict[str, list[float]] = {
        k: [] for k in ("l1", "psnr", "ssim", "mouth", "lips", "eyes", "lm", "flicker")
    }
    mouth_real, mouth_out, eyes_real, eyes_out = [], [], [], []
    found = 0
    previous: tuple[np.ndarray, np.ndarray] | None = None
    samples = []
    from realtime.frames import Frame

    for index, real in enumerate(frames):
        out = processor.process(Frame(real, index, index / fps)).image
        real_faces = judge.detect(real)
        if not real_faces:
            previous = None
            continue
        real_lm = real_faces[0]
        scored = scored_crop(real_lm)
        crop_real, crop_out = scored.cut(real), scored.cut(out)
        a, b = crop_real.astype(np.float32) / 255.0, crop_out.astype(np.float32) / 255.0
        diff = np.abs(a - b).mean(axis=2)
        mse = float(((a - b) ** 2).mean())
        rows["l1"].append(float(diff.mean()))
        rows["psnr"].append(10 * np.log10(1.0 / max(mse, 1e-10)))
        rows["ssim"].append(float(structural_similarity(crop_real, crop_out, channel_axis=2, data_range=255)))
        rows["mouth"].append(float(diff[scored.mouth].mean()))
        rows["lips"].append(float(diff[_region_mask(scored.points, [mesh.OUTER_LIP], CROP.size, 1)].mean()))
        rows["eyes"].append(float(diff[scored.eyes].mean()))
        if previous is not None:
            rows["flicker"].append(float(np.abs((b - previous[1]) - (a - previous[0])).mean()))
        previous = (a, b)
        out_faces = judge_out.detect(out)
        mouth_real.append(mesh.mouth_opening(real_lm))
        eyes_real.append(mesh.eye_opening(real_lm))
        if out_faces:
            found += 1
            out_lm = out_faces[0]
            rows["lm"].append(mesh.landmark_distance(out_lm, real_lm))
            mouth_out.append(mesh.mouth_opening(out_lm))
            eyes_out.append(mesh.eye_opening(out_lm))
        else:
            mouth_out.append(np.nan)
            eyes_out.append(np.nan)
        if index % max(1, len(frames) // 4) == len(frames) // 8:
            samples.append((crop_real, crop_out))
    judge.close()
    judge_out.close()
    processor.close()
    n = len(rows["l1"])
    eyes_driver = np.array(eyes_real)
    return ClipScore(
        clip=os.path.basename(path),
        frames=n,
        l1=float(np.mean(rows["l1"])),
        psnr=float(np.mean(rows["psnr"])),
        ssim=float(np.mean(rows["ssim"])),
        mouth_l1=float(np.mean(rows["mouth"])),
        lips_l1=float(np.mean(rows["lips"])),
        eyes_l1=float(np.mean(rows["eyes"])),
        landmark_error=float(np.mean(rows["lm"])) if rows["lm"] else float("nan"),
        mouth_r=pearson(np.array(mouth_real), np.array(mouth_out)),
        blink_r=pearson(eyes_driver, np.array(eyes_out)),
        flicker=float(np.mean(rows["flicker"])) if rows["flicker"] else float("nan"),
        face_found=found / max(1, n),
        driver_blinks=int((eyes_driver < BLINK_BELOW * np.median(eyes_driver)).sum()) if n else 0,
        samples=samples,
    )


# The per-clip numbers that are averaged and tabulated, in table order.
SCORES = [
    "l1",
    "psnr",
    "ssim",
    "mouth_l1",
    "lips_l1",
    "eyes_l1",
    "landmark_error",
    "mouth_r",
    "blink_r",
    "flicker",
    "face_found",
]


def summarise(scores: list[ClipScore]) -> dict:
    """Means over clips, and ``blink_r_blinking``: blink r over the clips whose driver blinks."""
    keys = SCORES
    mean = {k: round(float(np.nanmean([getattr(s, k) for s in scores])), 4) for k in keys}
    blinking = [s.blink_r for s in scores if s.driver_blinks > 0 and np.isfinite(s.blink_r)]
    mean["blink_r_blinking"] = round(float(np.mean(blinking)), 4) if blinking else float("nan")
    per_clip = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(s).items() if k != "samples"}
        for s in scores
    ]
    return {"mean": mean, "clips": per_clip}


def contact_sheet(results: dict[str, list[ClipScore]], path: str, thumb: int = 128) -> None:
    """Rows: clips; columns: real | each generator, for a few frames."""
    names = list(results)
    rows = []
    for i in range(len(results[names[0]])):
        cells = []
        for j, (real, _) in enumerate(results[names[0]][i].samples[:3]):
            cells.append(cv2.resize(real, (thumb, thumb)))
            for name in names:
                samples = results[name][i].samples
                if j < len(samples):
                    cells.append(cv2.resize(samples[j][1], (thumb, thumb)))
        if cells:
            rows.append(np.concatenate(cells, axis=1))
    if not rows:
        return
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    header = np.full((24, width, 3), 255, np.uint8)
    label = "  |  ".join(["real", *names])
    cv2.putText(
        header, f"per sample: {label}", (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA
    )
    cv2.imwrite(path, np.concatenate([header, *rows], axis=0))


def format_table(results: dict[str, dict]) -> str:
    cols = [*SCORES, "blink_r_blinking"]
    lines = ["| generator | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, summary in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{summary['mean'][c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)
