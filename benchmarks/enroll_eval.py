"""Personal avatars (``realtime enroll``): the gain on the person's held-out frames, and swap mode.

    python benchmarks/enroll_eval.py --avatar avatars/A [avatars/B ...] [--max-frames 150]
        [--still] [--json J] [--sheet PNG]
    python benchmarks/enroll_eval.py --swap avatars/A --driver CLIP [--frames 90] --sheet PNG

Held-out: each folder's manifest names its video and the frames kept out of the fine-tune
(the last part, after a gap). Those frames are cut to a clip and scored as ``realtime eval``
scores self-reenactment (``realtime.evaluate``: face-crop, mouth and eye L1 on crops re-centred
on the real frame, mouth/blink r, flicker) for the warp, the shipped refiner and the folder's
own refiner. The avatar is the clip's first frame, or with ``--still`` the folder's own still
(taken from the training part), as live.

Swap: the folder's avatar is swapped onto another user's clip with the warp, the shipped
refiner and the folder's refiner; the sheet shows face crops of a few frames side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np

from realtime import evaluate
from realtime.avatar_folder import read_avatar_folder
from realtime.metrics import machine_description

logger = logging.getLogger("enroll_eval")
GENERATORS = ("warp", "shipped", "enrolled")


def cut_heldout(manifest: dict, out: Path, max_frames: int) -> Path:
    """The held-out frames of the enrolment video as a near-lossless clip (ffmpeg, CRF 8)."""
    import imageio_ffmpeg

    video = manifest["video"]
    start, stop = manifest_split(manifest)
    frames = min(stop - start, max_frames)
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-v",
        "error",
        "-y",
        "-ss",
        f"{start / video['fps']:.4f}",
        "-i",
        video["path"],
        "-frames:v",
        str(frames),
        "-an",
        "-c:v",
        "libx264",
        "-crf",
        "8",
        "-pix_fmt",
        "yuv420p",
        str(out),
    ]
    subprocess.run(command, check=True)
    return out


def manifest_split(manifest: dict) -> tuple[int, int]:
    card = json.loads((Path(manifest["_folder"]) / manifest["card"]).read_text())
    heldout = card["enrollment"]["split"]["heldout_frames"]
    if not heldout:
        raise SystemExit(f"{manifest['_folder']} was enrolled without held-out frames (--holdout 0)")
    return int(heldout[0]), int(heldout[1])


def generator_of(name: str, folder) -> str:
    return {"warp": "warp", "shipped": "refiner", "enrolled": folder.refiner}[name]


def heldout(folders: list[str], max_frames: int, still: bool, sheet: str | None) -> dict:
    """Each folder's refiner on its held-out frames, next to the warp and the shipped refiner
    (scored once per video and split: folders enrolled from one video with different settings
    share them)."""
    scores: dict[str, list] = {name: [] for name in GENERATORS}
    rows = {}
    shared: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in folders:
            folder = read_avatar_folder(path)
            manifest = dict(folder.manifest, _folder=path)
            key = (manifest["video"]["sha256"], manifest_split(manifest), still and folder.image)
            if key not in shared:
                clip = cut_heldout(manifest, Path(tmp) / f"{len(shared)}_heldout.mp4", max_frames)
                image = cv2.imread(folder.image) if still else None
                shared[key] = {"clip": clip, "image": image}
                for name in ("warp", "shipped"):
                    shared[key][name] = evaluate.evaluate_clip(
                        str(clip), generator_of(name, folder), max_frames, None, image
                    )
            clip, image = shared[key]["clip"], shared[key]["image"]
            per = {
                "warp": shared[key]["warp"],
                "shipped": shared[key]["shipped"],
                "enrolled": evaluate.evaluate_clip(str(clip), folder.refiner, max_frames, None, image),
            }
            for name in GENERATORS:
                scores[name].append(per[name])
            label = Path(path).name
            rows[label] = {
                name: {k: round(float(getattr(per[name], k)), 4) for k in evaluate.SCORES}
                for name in GENERATORS
            }
            warp = rows[label]["warp"]
            for name in GENERATORS:
                r = rows[label][name]
                print(
                    f"{label:>18} {name:>9}: face {r['l1']:.4f} ({r['l1'] / warp['l1']:.3f}x)  "
                    f"mouth {r['mouth_l1']:.4f} ({r['mouth_l1'] / warp['mouth_l1']:.3f}x)  "
                    f"eyes {r['eyes_l1']:.4f} ({r['eyes_l1'] / warp['eyes_l1']:.3f}x)  "
                    f"lips {r['lips_l1']:.4f}  mouth r {r['mouth_r']:.3f}  blink r {r['blink_r']:.3f}  "
                    f"frames {per[name].frames}",
                    flush=True,
                )
    if sheet:
        evaluate.contact_sheet(scores, sheet)
        print(f"contact sheet: {sheet}")
        zoom = str(Path(sheet).with_name(Path(sheet).stem + "_zoom.png"))
        zoom_sheet(scores, list(rows), zoom)
        print(f"eyes and mouth, 2x: {zoom}")
    return {"avatars": rows, "mean": {name: evaluate.summarise(scores[name])["mean"] for name in GENERATORS}}


# Where the eyes and the mouth lie in realtime.evaluate's 256 px face crop.
EYES_BAND = (slice(92, 128), slice(72, 184))
MOUTH_BAND = (slice(148, 204), slice(86, 170))


def zoom_sheet(scores: dict[str, list], labels: list[str], path: str, zoom: int = 2) -> None:
    """Rows: samples of each avatar's held-out frames; columns: real, then each generator; each
    cell the eyes over the mouth at ``zoom``x, where the generators differ."""

    def cell(crop: np.ndarray) -> np.ndarray:
        eyes = cv2.resize(crop[EYES_BAND], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
        mouth = cv2.resize(crop[MOUTH_BAND], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
        pad = (eyes.shape[1] - mouth.shape[1]) // 2
        mouth = np.pad(
            mouth, ((0, 0), (pad, eyes.shape[1] - mouth.shape[1] - pad), (0, 0)), constant_values=255
        )
        return np.concatenate([eyes, mouth], axis=0)

    rows = []
    for i, label in enumerate(labels):
        for j, (real, _) in enumerate(scores[GENERATORS[0]][i].samples[:3]):
            cells = [cell(real)] + [cell(scores[name][i].samples[j][1]) for name in GENERATORS]
            row = np.concatenate(
                [np.pad(c, ((0, 0), (0, 4), (0, 0)), constant_values=255) for c in cells], axis=1
            )
            cv2.putText(row, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
            rows.append(np.pad(row, ((0, 4), (0, 0), (0, 0)), constant_values=255))
    if not rows:
        return
    grid = np.concatenate(rows, axis=0)
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    text = "held-out frames, eyes over mouth: real | " + " | ".join(GENERATORS)
    cv2.putText(header, text, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(path, np.concatenate([header, grid], axis=0))


def face_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 192) -> np.ndarray:
    from realtime.crops import CropSpec, alignment

    matrix = alignment(landmarks, CropSpec(size=size, face_scale=0.30))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA)


def swap_sheet(path: str, driver: str, frames: int, sheet: str, shown: int = 4) -> dict:
    """Rows: frames of the driver; columns: the driver, then the swap by each generator."""
    from realtime.analysis import read_frames
    from realtime.avatar import load_avatar
    from realtime.frames import Frame, Mode
    from realtime.pipeline import offline_processor
    from realtime.tracking import FaceTracker

    folder = read_avatar_folder(path)
    clip = list(read_frames(driver, frames))
    size = (clip[0].shape[1] // 2 * 2, clip[0].shape[0] // 2 * 2)
    avatar = load_avatar(path)
    picks = set(np.linspace(frames // 6, len(clip) - 1, shown).astype(int).tolist())
    judge = FaceTracker(smoothing=False, track_width=0)
    columns: dict[str, dict[int, np.ndarray]] = {"driver": {}}
    landmarks: dict[int, np.ndarray] = {}
    for index in sorted(picks):
        faces = judge.detect(clip[index])
        if faces:
            landmarks[index] = faces[0]
            columns["driver"][index] = face_crop(clip[index], faces[0])
    judge.close()
    for name in GENERATORS:
        processor = offline_processor(
            avatar, generator_of(name, folder), mode=Mode.SWAP, size=size, occlusion=False
        )
        columns[name] = {}
        for index, image in enumerate(clip):
            out = processor.process(Frame(image[: size[1], : size[0]], index, index / 25.0)).image
            if index in landmarks:
                columns[name][index] = face_crop(out, landmarks[index])
        processor.close()
    rows = [np.concatenate([columns[c][i] for c in columns], axis=1) for i in sorted(landmarks)]
    grid = np.concatenate(rows, axis=0)
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    label = f"swap {folder.name} onto {Path(driver).stem}: " + " | ".join(columns)
    cv2.putText(header, label, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(sheet, np.concatenate([header, grid], axis=0))
    print(f"swap sheet: {sheet}")
    return {"avatar": path, "driver": driver, "frames": sorted(landmarks)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avatar", nargs="+", default=[], help="enrolled avatar folders")
    parser.add_argument("--max-frames", type=int, default=150)
    parser.add_argument("--still", action="store_true", help="the folder's still is the avatar")
    parser.add_argument("--swap", default=None, help="an enrolled avatar folder to swap onto --driver")
    parser.add_argument("--driver", default=None, help="another user's clip for --swap")
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--json", default=None)
    parser.add_argument("--sheet", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result: dict = {"machine": machine_description(), "max_frames": args.max_frames, "still": args.still}
    if args.avatar:
        result["heldout"] = heldout(args.avatar, args.max_frames, args.still, args.sheet)
    if args.swap:
        if not args.driver or not args.sheet:
            raise SystemExit("--swap needs --driver and --sheet")
        result["swap"] = swap_sheet(args.swap, args.driver, args.frames, args.sheet)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
