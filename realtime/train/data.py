"""Training data for the refiner: clip caches and self-reenactment pairs.

1. ``build_clip_cache``: a talking-head video becomes a small ``.npz``: sampled frames (in
   pairs of consecutive frames, for the temporal loss) cropped by one fixed per-clip
   similarity to a ``context`` square around the head, stored as JPEG, with their face
   landmarks. Fixed per clip, so head motion inside the clip is kept.
2. ``make_pairs``: the source frame i is warped by the runtime's own ``WarpGenerator`` to the
   landmarks of target frames j and j+1; the real frames are the ground truth. Crops (the
   whole face, or mouth and eyes) are cut exactly as the runtime's ONNX refiner cuts them.
   The target landmarks are either the real ones, or (a ``retargeted`` share of the pairs)
   the ones the live retargeter makes when frame i is the avatar and the clip drives it, so
   the model also learns what the warp gets wrong where the retargeting is off.
   Optionally each first frame carries the motion that would carry the warp onto the real
   face (optical flow, with a trust map), to teach a flow refiner where pixels should move.

Needs numpy, OpenCV and scipy only (no mediapipe, no torch), so pairs can be made on a
machine that only trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from realtime import mesh
from realtime.crops import (
    CropSpec,
    antialiased_warp,
    crop_count,
    crop_matrices,
    displace,
    driver_map,
    fill_mask,
    landmark_map,
)

logger = logging.getLogger(__name__)

CONTEXT = 320  # side of the per-clip context crop
# Eye-corner distance / context side: 80 px, so mouth and eye crops are cut at about their
# runtime resolution instead of being upsampled from a small face.
CONTEXT_FACE_SCALE = 0.25


def encode_image(image: np.ndarray, quality: int = 93, image_format: str = ".jpg") -> np.ndarray:
    """One cached frame, compressed (JPEG, or WebP at about half the bytes); ``ClipCache.load``
    decodes either."""
    option = cv2.IMWRITE_WEBP_QUALITY if image_format == ".webp" else cv2.IMWRITE_JPEG_QUALITY
    ok, data = cv2.imencode(image_format, image, [option, quality])
    if not ok:
        raise ValueError(f"could not encode a frame as {image_format}")
    return data.ravel()


def build_clip_cache(
    video: str | Path,
    out_dir: str | Path,
    pairs: int = 40,
    jpeg_quality: int = 93,
    frames: list[int] | None = None,
    context: int = CONTEXT,
    image_format: str = ".jpg",
) -> Path | None:
    """Cache ``pairs`` consecutive-frame pairs of ``video`` (or exactly the frame indices
    ``frames``) as ``context``-pixel crops. Returns the .npz path, or None when too few frames
    have a face."""
    from realtime.analysis import read_frames, video_frame_count
    from realtime.tracking import FaceTracker

    video = Path(video)
    total = video_frame_count(str(video))
    if total < 4:
        return None
    if frames is None:
        starts = np.unique(np.linspace(0, total - 2, min(pairs, total - 1)).astype(int))
        indices = sorted({int(i) for s in starts for i in (s, s + 1)})
    else:
        indices = sorted({int(i) for i in frames if 0 <= int(i) < total})
    if len(indices) < 8:
        return None
    wanted = set(indices)
    # Only the sampled frames are kept: a long HD clip would not fit in memory whole.
    frames_by_index: dict[int, np.ndarray] = {}
    for i, image in enumerate(read_frames(str(video))):
        if i in wanted:
            frames_by_index[i] = image
        if i >= indices[-1]:  # the rest of the video is not needed
            break
    tracker = FaceTracker(smoothing=False, track_width=0)
    found: dict[int, np.ndarray] = {}
    try:
        for i in sorted(frames_by_index):
            faces = tracker.detect(frames_by_index[i])
            if faces:
                found[i] = faces[0]
    finally:
        tracker.close()
    keep = [i for i in indices if i in found]
    if len(keep) < 8:
        logger.warning("skipping %s: faces in only %d sampled frames", video.name, len(keep))
        return None
    landmarks = np.stack([found[i] for i in keep])
    return write_clip_cache(
        Path(out_dir) / f"{video.stem}.npz",
        [frames_by_index[i] for i in keep],
        landmarks,
        keep,
        context_matrix(landmarks, context),
        context,
        jpeg_quality,
        image_format,
    )


def context_matrix(landmarks: np.ndarray, context: int = CONTEXT) -> np.ndarray:
    """The fixed similarity (2x3) of one clip: its median face centred in a ``context`` square,
    CONTEXT_FACE_SCALE of the side between the eye corners."""
    centre = np.median(landmarks[:, mesh.RIGID, :2].mean(axis=1), axis=0)
    size = float(np.median([mesh.face_size(lm) for lm in landmarks]))
    scale = CONTEXT_FACE_SCALE * context / size
    return np.array(
        [[scale, 0.0, context / 2 - scale * centre[0]], [0.0, scale, context * 0.45 - scale * centre[1]]]
    )


def write_clip_cache(
    out: Path,
    images: list[np.ndarray],
    landmarks: np.ndarray,
    frame_index: list[int],
    matrix: np.ndarray,
    context: int = CONTEXT,
    jpeg_quality: int = 93,
    image_format: str = ".jpg",
) -> Path:
    """Write frames (with their landmarks, in frame pixels) as a clip cache: each cut to the
    ``context`` square by ``matrix`` and compressed; the clip's name is ``out``'s stem."""
    blobs, offsets = [], [0]
    for image in images:
        crop = cv2.warpAffine(
            image, matrix, (context, context), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
        data = encode_image(crop, jpeg_quality, image_format)
        blobs.append(data)
        offsets.append(offsets[-1] + data.size)
    scale = float(matrix[0, 0])
    local = np.asarray(landmarks, np.float64).copy()
    local[..., :2] = local[..., :2] * scale + matrix[:, 2]
    local[..., 2] *= scale
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        jpeg=np.concatenate(blobs),
        offsets=np.array(offsets),
        landmarks=local.astype(np.float32),
        frame_index=np.array(frame_index),
        clip=out.stem,
    )
    return out


@dataclass
class ClipCache:
    name: str
    images: list[np.ndarray]
    landmarks: np.ndarray
    frame_index: np.ndarray

    @classmethod
    def load(cls, path: str | Path) -> ClipCache:
        with np.load(path) as data:
            jpeg, offsets = data["jpeg"], data["offsets"]
            images = [
                cv2.imdecode(jpeg[offsets[k] : offsets[k + 1]], cv2.IMREAD_COLOR)
                for k in range(len(offsets) - 1)
            ]
            landmarks = data["landmarks"]
            if "landmarks_step" in data.files:  # stored as integers (the compact caches the GPU carries)
                landmarks = landmarks.astype(np.float32) * float(data["landmarks_step"])
            return cls(str(data["clip"]), images, landmarks, data["frame_index"])

    def consecutive(self) -> list[int]:
        """Positions k whose frame k+1 is the next video frame."""
        return [
            k for k in range(len(self.frame_index) - 1) if self.frame_index[k + 1] == self.frame_index[k] + 1
        ]


def region_weights(points: np.ndarray, size: int) -> np.ndarray:
    """Loss weights: 1 on the face, more on the mouth and the eyes (where the warp fails)."""
    weight = np.ones((size, size), np.float32)
    for loop, extra in ((mesh.OUTER_LIP, 4.0), (mesh.RIGHT_EYE, 3.0), (mesh.LEFT_EYE, 3.0)):
        region = np.zeros((size, size), np.uint8)
        cv2.fillPoly(region, [np.round(points[loop]).astype(np.int32)], 255)
        region = cv2.dilate(region, np.ones((5, 5), np.uint8))
        weight += extra * (region > 0)
    return weight


# Motion targets are measured on crops this many times the model's size, then shrunk.
MOTION_UPSCALE = 2
# Grey levels of error a pixel must lose by moving for its motion to be fully trusted.
MOTION_TRUST_GAIN = 8.0


def motion_target(
    warped: np.ndarray,
    real: np.ndarray,
    matrix: np.ndarray,
    size: int,
    optical_flow: cv2.DISOpticalFlow,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of the warped crop should be taken from to match the real crop
    (optical flow, crop pixels, (S,S,2)), and how far to trust it (S,S) in [0, 1]: only as
    far as moving the warp's pixels by it really brings them closer to the real face. Where
    the warp cannot be right by moving pixels (teeth the source never showed), it isn't."""
    big = size * MOTION_UPSCALE
    scaled = matrix * MOTION_UPSCALE
    warped_big = antialiased_warp(warped, scaled, big)
    real_big = antialiased_warp(real, scaled, big)
    grey = [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) for image in (real_big, warped_big)]
    motion = optical_flow.calc(grey[0], grey[1], None)
    moved = displace(warped_big, motion)  # as the model and the runtime move pixels
    before = np.abs(warped_big.astype(np.float32) - real_big).mean(axis=2)
    after = np.abs(moved.astype(np.float32) - real_big).mean(axis=2)
    gain = cv2.GaussianBlur(np.maximum(before - after, 0.0), (0, 0), MOTION_UPSCALE)
    shrink = (size, size)
    motion = cv2.resize(motion, shrink, interpolation=cv2.INTER_AREA) / MOTION_UPSCALE
    trust = np.clip(cv2.resize(gain, shrink, interpolation=cv2.INTER_AREA) / MOTION_TRUST_GAIN, 0.0, 1.0)
    return motion, trust


def driver_neutral(clip: ClipCache) -> np.ndarray:
    """The neutral the live retargeter settles on when this clip drives it: the first face
    with its lips closed, then pulled towards a closed mouth and open eyes by every frame."""
    from realtime.retarget import Retargeter

    retargeter = Retargeter(clip.landmarks[0])
    retargeter.neutral = Retargeter.closed_mouth(clip.landmarks[0].astype(np.float64))
    for landmarks in clip.landmarks:
        retargeter.settle_neutral(landmarks.astype(np.float64))
    return retargeter.neutral


def retargeted_landmarks(
    clip: ClipCache, neutral: np.ndarray, source: int, targets: tuple[int, ...]
) -> list[np.ndarray]:
    """Landmarks of ``targets`` as the live retargeter makes them with frame ``source`` as
    the avatar (self-reenactment, as ``realtime eval`` runs it). ``neutral`` is placed in the
    source's head pose, as the first frame's neutral is in the first frame's pose live."""
    from realtime.retarget import Retargeter

    avatar = clip.landmarks[source].astype(np.float64)
    scale, rotation, shift = mesh.umeyama(neutral[mesh.RIGID], avatar[mesh.RIGID])
    retargeter = Retargeter(avatar)
    retargeter.neutral = scale * neutral @ rotation.T + shift
    return [retargeter.transfer(clip.landmarks[j].astype(np.float64)) for j in targets]


def make_sample(
    clip: ClipCache,
    source: int,
    target: int,
    spec: CropSpec,
    target_landmarks: np.ndarray | None = None,
    optical_flow: cv2.DISOpticalFlow | None = None,
) -> list[dict[str, np.ndarray]]:
    """Self-reenactment examples, one per crop of ``spec``'s layout: the source frame warped
    to the target frame's landmarks (or to ``target_landmarks``, e.g. retargeted ones), cut
    exactly as the runtime's ONNX refiner cuts it. The loss weights follow the real face.
    With ``optical_flow``, each example also has its ``motion`` target and ``motion_trust``."""
    from realtime.frames import Frame, Target
    from realtime.generators.warp import WarpGenerator

    src_image, src_lm = clip.images[source], clip.landmarks[source]
    real_points = clip.landmarks[target][:, :2]
    dst_lm = clip.landmarks[target] if target_landmarks is None else target_landmarks
    warp = WarpGenerator(src_image, src_lm)
    target_points = mesh.with_mouth_centre(dst_lm[:, :2]).astype(np.float32)
    rendered = warp.render(Target(frame=Frame(src_image, 0, 0.0), landmarks=target_points))
    canvas = src_image.copy()
    x0, y0 = rendered.origin
    h, w = rendered.patch.shape[:2]
    canvas[y0 : y0 + h, x0 : x0 + w] = rendered.patch
    size = spec.size

    samples = []
    source_matrices = crop_matrices(mesh.with_mouth_centre(src_lm[:, :2]), spec)
    # The driver is the real target frame, cut around its own (real) landmarks, as the
    # runtime cuts the user's face around the user's landmarks.
    driver_points = mesh.with_mouth_centre(real_points)
    driver_matrices = crop_matrices(driver_points, spec)
    for matrix, src_matrix, driver_matrix in zip(
        crop_matrices(target_points, spec), source_matrices, driver_matrices, strict=True
    ):
        points = target_points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        real_in_crop = real_points @ matrix[:, :2].T + matrix[:, 2]
        sample = {
            "warped": antialiased_warp(canvas, matrix, size),
            "target": antialiased_warp(clip.images[target], matrix, size),
            "source": antialiased_warp(src_image, src_matrix, size),
            "landmarks": (landmark_map(points, size)[0, 0] * 255).astype(np.uint8),
            "fill": fill_mask(points, spec),
            "driver": driver_map(clip.images[target], driver_points, driver_matrix, spec),
            "weight": region_weights(real_in_crop, size),
        }
        if optical_flow is not None:
            motion, trust = motion_target(canvas, clip.images[target], matrix, size, optical_flow)
            sample["motion"] = motion.astype(np.float16)
            sample["motion_trust"] = (trust * 255).astype(np.uint8)
        samples.append(sample)
    return samples


# Mean landmark distance (face sizes) above which a retargeted target is not used.
MAX_RETARGET_ERROR = 0.06


def _change(clip: ClipCache, a: int, b: int) -> float:
    la, lb = clip.landmarks[a], clip.landmarks[b]
    return abs(mesh.mouth_opening(la) - mesh.mouth_opening(lb)) + abs(
        mesh.eye_opening(la) - mesh.eye_opening(lb)
    )


def eye_closure(clip: ClipCache, starts: list[int]) -> np.ndarray:
    """How far the eyes of each pair (frames k, k+1) close, against the clip's median opening:
    0 open as usual, 1 shut."""
    opening = np.array([mesh.eye_opening(lm) for lm in clip.landmarks])
    usual = max(float(np.median(opening)), 1e-6)
    least = np.array([min(opening[k], opening[k + 1]) for k in starts])
    return np.clip((usual - least) / usual, 0.0, 1.0)


def target_odds(clip: ClipCache, starts: list[int], blink_boost: float) -> np.ndarray | None:
    """How likely each pair (frames k, k+1) is drawn as a target: None for evenly (the draws
    made before the boost existed), else up to 1 + ``blink_boost`` times as likely where the eyes close."""
    if blink_boost <= 0:
        return None
    odds = 1.0 + blink_boost * eye_closure(clip, starts)
    return odds / odds.sum()


def make_pairs(
    cache_path: str | Path,
    count: int,
    spec: CropSpec,
    seed: int,
    retargeted: float = 0.0,
    motion: bool = False,
    blink_boost: float = 0.0,
) -> dict[str, np.ndarray]:
    """``count`` examples of (target j, target j+1) from one clip, with a shared source frame;
    a ``retargeted`` share of them aims at the retargeter's landmarks instead of the real ones.
    With ``motion``, the first frame of each pair has motion targets (``make_sample``).

    Sources are drawn with a preference for big mouth/eye changes, which is where the
    warp fails and the refiner must learn. Targets are drawn evenly, or with ``blink_boost``
    up to 1 + ``blink_boost`` times as often where the eyes close (``eye_closure``).
    """
    rng = np.random.default_rng(seed)
    clip = ClipCache.load(cache_path)
    consecutive = clip.consecutive()
    target_p = target_odds(clip, consecutive, blink_boost)
    neutral = driver_neutral(clip) if retargeted > 0 else None
    optical_flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if motion else None
    out: dict[str, list[np.ndarray]] = {}
    for _ in range(count):
        j = int(rng.choice(consecutive, p=target_p))
        candidates = np.array(
            [
                k
                for k in range(len(clip.images))
                if abs(int(clip.frame_index[k]) - int(clip.frame_index[j])) > 2
            ]
        )
        if candidates.size == 0:
            continue
        change = np.array([_change(clip, k, j) for k in candidates]) + 0.02
        source = int(rng.choice(candidates, p=change / change.sum()))
        aims: list[np.ndarray | None] = [None, None]
        if neutral is not None and rng.random() < retargeted:
            aims = retargeted_landmarks(clip, neutral, source, (j, j + 1))
            # A head turn past the retargeter's limits is clamped on purpose: such a target
            # is far from the real face and would only teach the model to blur.
            if (
                max(
                    mesh.landmark_distance(aim, clip.landmarks[t])
                    for aim, t in zip(aims, (j, j + 1), strict=True)
                )
                > MAX_RETARGET_ERROR
            ):
                aims = [None, None]
        for step, (target, aim) in enumerate(zip((j, j + 1), aims, strict=True)):
            for sample in make_sample(clip, source, target, spec, aim, optical_flow if step == 0 else None):
                for key, value in sample.items():
                    out.setdefault(f"{key}{step}", []).append(value)
    return {key: np.stack(values) for key, values in out.items()}


def make_dataset(
    caches: list[Path],
    per_clip: int,
    spec: CropSpec,
    seed: int = 0,
    workers: int = 1,
    retargeted: float = 0.0,
    motion: bool = False,
    driver_swap: float = 0.0,
    blink_boost: float = 0.0,
) -> dict[str, np.ndarray]:
    """Pairs from many clips, in parallel processes when ``workers`` > 1; a ``driver_swap``
    share of them with another clip's openings (``swap_drivers``)."""
    jobs = [
        (str(path), per_clip, spec, seed + k, retargeted, motion, blink_boost)
        for k, path in enumerate(caches)
    ]
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.starmap(make_pairs, jobs)
    else:
        parts = [make_pairs(*job) for job in jobs]
    parts = [p for p in parts if p]
    data = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if driver_swap > 0 and "driver0" in data:
        clip_of_row = np.repeat(np.arange(len(parts)), [len(p["warped0"]) for p in parts])
        swap_drivers(data, clip_of_row, crop_count(spec.layout), driver_swap, seed)
    return data


def swap_drivers(
    data: dict[str, np.ndarray],
    clip_of_row: np.ndarray,
    crops: int,
    share: float,
    seed: int,
    candidates: int = 256,
) -> int:
    """Give a ``share`` of the examples the driver openings of another clip's example of the same
    crop (mouth or eye) whose target is about as open (the area of the fill mask), as live,
    where the user's openings are cut from somebody else's face. Returns how many changed."""
    rng = np.random.default_rng(seed)
    rows = len(clip_of_row)
    kind = np.arange(rows) % crops
    opening = data["fill0"].reshape(rows, -1).mean(axis=1)
    chosen = np.flatnonzero(rng.random(rows) < share)
    donors = {key: data[key].copy() for key in ("driver0", "driver1") if key in data}
    swapped = 0
    for row in chosen:
        pool = rng.integers(0, rows, candidates)
        pool = pool[(kind[pool] == kind[row]) & (clip_of_row[pool] != clip_of_row[row])]
        if pool.size == 0:
            continue
        donor = pool[np.argmin(np.abs(opening[pool] - opening[row]))]
        for key, maps in donors.items():
            data[key][row] = maps[donor]
        swapped += 1
    return swapped
