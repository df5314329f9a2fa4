"""Audio-to-mouth training data: per clip, the voice and the mouth's motion in the normalised face frame.

``python -m realtime.train.voice_data --out .train_cache_voice`` tracks every shared clip with
speech (mediapipe, no smoothing), takes each person's neutral (the median face over the
clip's most closed-mouth frames) and stores, per clip, the mouth points' canonical
displacement from it per video frame, the raw landmarks and the 16 kHz mono audio.
Features are computed later (``realtime.train.voice``), so augmentation can change the audio.
"""

from __future__ import annotations

import argparse
import csv
import logging
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from realtime import mesh
from realtime.train import people
from realtime.voice import features, mouth
from realtime.voice.audio_file import read_audio

logger = logging.getLogger(__name__)

MEDIA = Path(__file__).resolve().parents[2] / ".." / "shared" / "media"
# Clips with sound whose audio does not go with the lips: not talking, or re-timed out of sync.
EXCLUDED = {"extra_evm_face_man_glasses", "extra_lipreader_man_glasses", "extra_faceswapss_woman_spikyhair"}
# The voice model's own held-out speakers, on top of people.tsv's selection and validation
# people (few of whom have sound). Each is a person with no other clip in the training set
# (the two GRID women are held out together: the corpus does not say whether they differ).
VOICE_GROUPS = {
    "LipNet_grid_lrwp9a": "validation",
    "LipNet_grid_brbk7n": "validation",
    "Talking-Face_PC-AVS_00067": "validation",
    "Talking-Face_PC-AVS_517600055": "validation",
    "Linly-Talker_WDA_KatieHill_000": "validation",
    "VisualVoice_noisy_restaurant": "validation",
    "headGAN_driving": "validation",
    "LipNet_grid_sbia1a": "selection",
    "Talking-Face_PC-AVS_00473": "selection",
    "V-Express_RD_Radio10_0_clip_0": "selection",
    "AniPortrait_pose_ref_video": "selection",
}
NEUTRAL_QUANTILE = 0.1


def voice_group(clip: str) -> str:
    """train / selection / validation for the voice model, by person."""
    person = people.person_of(clip)
    shared = "validation" if person in people.VALIDATION_PEOPLE else None
    shared = shared or ("selection" if person in people.SELECTION_PEOPLE else None)
    own = VOICE_GROUPS.get(clip)
    if shared and own and shared != own:
        raise ValueError(f"{clip}: people.tsv puts {person} in {shared}, the voice split in {own}")
    return shared or own or "train"


def speech_clips(media: Path = MEDIA) -> list[Path]:
    """Videos in the shared media with an audio track, in manifest order."""
    with open(media / "MANIFEST.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    out = []
    for row in rows:
        path = media / row["file"]
        if row["audio"] != "yes" or not row["file"].startswith(("clips/", "webcam/")):
            continue
        if path.stem in EXCLUDED or not path.exists():
            continue
        out.append(path)
    return out


def track_clip(path: Path, max_seconds: float) -> tuple[np.ndarray, float]:
    """(frames, 478, 3) raw landmarks (NaN where no face) and the clip's fps."""
    from realtime.tracking import FaceTracker

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    tracker = FaceTracker(smoothing=False, track_width=640)
    faces = []
    try:
        while len(faces) < max_seconds * fps:
            ok, image = cap.read()
            if not ok:
                break
            found = tracker.detect(image)
            faces.append(found[0] if found else np.full((mesh.NUM_LANDMARKS, 3), np.nan, np.float32))
    finally:
        cap.release()
        tracker.close()
    return np.asarray(faces, dtype=np.float32), float(fps)


def mouth_track(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frames, K, 2) canonical mouth displacement from the clip's neutral (NaN where no face),
    and the neutral (478, 3)."""
    found = ~np.isnan(landmarks[:, 0, 0])
    reference = landmarks[np.flatnonzero(found)[0]].astype(np.float64)
    unposed = np.stack([mouth.unpose(face.astype(np.float64), reference) for face in landmarks[found]])
    openings = np.array([mesh.mouth_opening(face) for face in unposed])
    closed = openings <= np.quantile(openings, NEUTRAL_QUANTILE)
    neutral = np.median(unposed[closed], axis=0)
    offsets = np.full((len(landmarks), len(mouth.MOUTH_POINTS), 2), np.nan, np.float32)
    offsets[found] = np.stack([mouth.displacement(face, neutral) for face in landmarks[found]])
    return offsets, neutral.astype(np.float32)


def extract(out: Path, media: Path, max_seconds: float, budget_min: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    done = {}
    for path in tqdm(speech_clips(media), unit="clip"):
        target = out / f"{path.stem}.npz"
        if target.exists():
            done[path.stem] = "cached"
            continue
        if (time.monotonic() - t0) / 60 > budget_min:
            logger.warning("budget of %.0f min spent; %s and later clips left out", budget_min, path.name)
            break
        from realtime.media import video_start_offset_s

        landmarks, fps = track_clip(path, max_seconds)
        found = ~np.isnan(landmarks[:, 0, 0])
        if found.mean() < 0.5:
            logger.warning("%s: face in only %.0f%% of frames, skipped", path.name, 100 * found.mean())
            continue
        audio = read_audio(str(path), features.RATE, start_s=video_start_offset_s(path))
        audio = audio[: int(len(landmarks) / fps * features.RATE)]
        offsets, neutral = mouth_track(landmarks)
        np.savez_compressed(
            target,
            offsets=offsets,
            landmarks=landmarks.astype(np.float16),
            neutral=neutral,
            fps=fps,
            audio=(audio * 32767).astype(np.int16),
            group=voice_group(path.stem),
            person=people.person_of(path.stem),
            source=str(path.relative_to(media)),
        )
        done[path.stem] = f"{len(landmarks)} frames, {found.mean():.0%} tracked, {voice_group(path.stem)}"
        logger.info("%s: %s", path.stem, done[path.stem])
    return done


def load(cache: Path) -> list[dict]:
    """Every cached clip as a dict of arrays (audio as float32)."""
    clips = []
    for path in sorted(cache.glob("*.npz")):
        with np.load(path) as data:
            clip = {k: data[k] for k in data.files}
        clip["name"] = path.stem
        clip["audio"] = clip["audio"].astype(np.float32) / 32767.0
        clip["group"], clip["person"] = str(clip["group"]), str(clip["person"])
        clip["fps"] = float(clip["fps"])
        clips.append(clip)
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".train_cache_voice"))
    parser.add_argument("--media", type=Path, default=MEDIA)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="at most this much of each clip")
    parser.add_argument("--budget-min", type=float, default=25.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name, what in extract(args.out, args.media.resolve(), args.max_seconds, args.budget_min).items():
        print(f"{name}\t{what}")


if __name__ == "__main__":
    main()
