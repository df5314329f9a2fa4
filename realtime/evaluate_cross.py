"""Cross-identity evaluation: a portrait driven by somebody else, as users use it.

There is no ground truth, so each output is judged against what it must keep and what it
must follow:

- identity: dlib's descriptor distance from the output to the avatar (it must stay the
  avatar) and to the driver (it must not become the driver); needs the ``eval`` extra;
- colour: the mean chroma (Lab) of the output minus the avatar's own, over the face and
  over the mouth and eyes, where a refiner draws: a grey portrait must stay grey;
- expression: Pearson r of the output's mouth opening and eye opening with the driver's,
  and the ratio of their spreads (amplitude);
- steadiness: the mean frame-to-frame change in the avatar's mouth region (grey levels).

An avatar is an image, a video's frame (``clip.mp4@N``; the first without ``@N``), or either
with ``grey:`` in front (a black-and-white photo made from it).

The avatar is drawn on a canvas of the driver's frame size, or of ``size`` (``realtime eval
--pairs-size``): live, it fills the output (1280x720 by default), so a portrait that is a 24-px
face in a 256-px driver clip is a 68-px face in a call.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import cv2
import numpy as np

from realtime import mesh
from realtime.analysis import pearson, read_frames
from realtime.avatar import Avatar, make_avatar
from realtime.errors import UserError
from realtime.frames import Frame
from realtime.media import read_image
from realtime.pipeline import offline_processor
from realtime.sources import probe_video
from realtime.tracking import FaceTracker

logger = logging.getLogger(__name__)

GREY = "grey:"
VIDEO_SUFFIXES = (".mp4", ".mpg", ".mov", ".avi", ".mkv", ".webm")
EMBED_EVERY = 3  # frames between identity measurements: 50 of 150 frames (dlib takes ~80 ms a face)
TILE = 160  # px per contact-sheet tile


def parse_pair(text: str) -> tuple[str, str]:
    """``AVATAR:DRIVER`` (the avatar may start with ``grey:``)."""
    grey = text.startswith(GREY)
    avatar, sep, driver = text.removeprefix(GREY).rpartition(":")
    if not sep or not avatar or not driver:
        raise UserError(f"a pair is AVATAR:DRIVER (e.g. portrait.jpg:clip.mp4), not {text!r}")
    return (GREY if grey else "") + avatar, driver


def avatar_image(spec: str) -> np.ndarray:
    """The avatar's picture: an image, or a video's frame (``clip.mp4@N``, the first without
    ``@N``), made grey after ``grey:``."""
    path = spec.removeprefix(GREY)
    stem, at, index = path.rpartition("@")
    if at and index.isdigit() and stem.lower().endswith(VIDEO_SUFFIXES):
        path, frame = stem, int(index)
    else:
        frame = 0
    if path.lower().endswith(VIDEO_SUFFIXES):
        probe_video(path)
        frames = list(read_frames(path, frame + 1))
        if len(frames) <= frame:
            raise UserError(f"{path} has no frame {frame}")
        image = frames[frame]
    else:
        image = read_image(path, "avatar")
    if spec.startswith(GREY):
        image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return image


def chroma(image: np.ndarray) -> np.ndarray:
    """Per-pixel chroma: the distance from grey in Lab's a-b plane (0 for a grey pixel)."""
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    return np.hypot(lab[..., 1] - 128.0, lab[..., 2] - 128.0)


def region_masks(landmarks: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The avatar's face (inside its oval) and features (lips and eyes, grown by a tenth of a face)."""
    points = landmarks[:, :2]
    face = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(face, [np.round(points[mesh.face_oval()]).astype(np.int32)], 1)
    features = np.zeros(shape[:2], np.uint8)
    for loop in (mesh.OUTER_LIP, mesh.RIGHT_EYE, mesh.LEFT_EYE):
        cv2.fillPoly(features, [np.round(points[loop]).astype(np.int32)], 1)
    grow = max(3, int(0.1 * mesh.face_size(points)) | 1)
    features = cv2.dilate(features, np.ones((grow, grow), np.uint8)) & face
    mouth = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mouth, [np.round(points[mesh.OUTER_LIP]).astype(np.int32)], 1)
    mouth = cv2.dilate(mouth, np.ones((grow, grow), np.uint8))
    return {"face": face.astype(bool), "features": features.astype(bool), "mouth": mouth.astype(bool)}


@dataclass
class PairScore:
    avatar: str
    driver: str
    generator: str
    frames: int
    identity_to_avatar: float | None  # mean dlib distance, output to avatar (lower: still the avatar)
    identity_to_driver: float | None  # mean dlib distance, output to driver (higher: not the driver)
    identity_at_rest: float | None  # to the avatar, where the driver's eyes are open and mouth closed
    chroma_face: float  # mean chroma inside the face, output minus avatar
    chroma_features: float  # the same over lips and eyes
    mouth_r: float
    mouth_amplitude: float  # spread of the output's mouth opening / the driver's
    blink_r: float
    blink_amplitude: float
    gaze_r: float  # where the eyes look across, output vs driver (mesh.gaze)
    gaze_amplitude: float
    mouth_change: float  # mean |frame-to-frame change| in the avatar's mouth region, grey levels
    face_found: float  # share of output frames where the tracker finds the face


def judge_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """Rows and columns of three times the face's box around it: the judge reads the output
    there, so a small face on a large canvas (a full-length portrait filling a 1280x720 output)
    is not too small for its face detector."""
    low, high = landmarks[:, :2].min(axis=0), landmarks[:, :2].max(axis=0)
    x0, y0 = np.maximum(np.floor(2 * low - high), 0).astype(int)
    x1, y1 = np.ceil(2 * high - low).astype(int)
    return slice(y0, min(y1, shape[0])), slice(x0, min(x1, shape[1]))


def _openings(
    judge: FaceTracker, frames: list[np.ndarray], box: tuple[slice, slice] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mouth and eye openings and gaze per frame (NaN where no face is found), read inside ``box``."""
    mouth, eyes, gaze = (np.full(len(frames), np.nan) for _ in range(3))
    for i, image in enumerate(frames):
        faces = judge.detect(np.ascontiguousarray(image[box]) if box else image)
        if faces:
            mouth[i], eyes[i], gaze[i] = (
                mesh.mouth_opening(faces[0]),
                mesh.eye_opening(faces[0]),
                mesh.gaze(faces[0]),
            )
    return mouth, eyes, gaze


def _following(driver: np.ndarray, output: np.ndarray) -> tuple[float, float]:
    both = np.isfinite(driver) & np.isfinite(output)
    if both.sum() < 3:
        return float("nan"), float("nan")
    spread = float(np.std(driver[both]))
    return pearson(driver[both], output[both]), float(np.std(output[both]) / spread) if spread > 0 else float(
        "nan"
    )


class CrossIdentityPair:
    """One avatar and one driver: the driver's frames and measurements, shared by every generator."""

    def __init__(
        self, avatar: str, driver: str, max_frames: int = 150, size: tuple[int, int] | None = None
    ) -> None:
        self.avatar_spec, self.driver_path = avatar, driver
        self.fps, _, _, _ = probe_video(driver)
        self.frames = list(read_frames(driver, max_frames))
        height, width = self.frames[0].shape[:2]
        self.size = size or (width, height)
        self.avatar: Avatar = make_avatar(avatar_image(avatar), self.size, avatar)
        self.masks = region_masks(self.avatar.landmarks, self.avatar.image.shape)
        chroma_avatar = chroma(self.avatar.image)
        self.avatar_chroma = {k: float(chroma_avatar[self.masks[k]].mean()) for k in ("face", "features")}
        with FaceTracker(smoothing=False, track_width=0) as judge:
            self.driver_mouth, self.driver_eyes, self.driver_gaze = _openings(judge, self.frames)

    def render(self, generator: str, providers: list[str] | None = None) -> list[np.ndarray]:
        """The avatar driven by every driver frame in order, through the live per-frame path."""
        with offline_processor(self.avatar, generator, providers) as processor:
            return [
                processor.process(Frame(image, i, i / self.fps)).image for i, image in enumerate(self.frames)
            ]

    def score(self, generator: str, outputs: list[np.ndarray], embedder=None) -> PairScore:
        with FaceTracker(smoothing=False, track_width=0) as judge:
            mouth, eyes, gaze = _openings(
                judge, outputs, judge_box(self.avatar.landmarks, self.avatar.image.shape)
            )
        mouth_r, mouth_amp = _following(self.driver_mouth, mouth)
        blink_r, blink_amp = _following(self.driver_eyes, eyes)
        gaze_r, gaze_amp = _following(self.driver_gaze, gaze)
        face, features, around_mouth = self.masks["face"], self.masks["features"], self.masks["mouth"]
        chroma_means = np.array([(c[face].mean(), c[features].mean()) for c in map(chroma, outputs)])
        mouths = [image[around_mouth].astype(np.float32) for image in outputs]
        change = [np.abs(b - a).mean() for a, b in pairwise(mouths)]
        to_avatar = to_driver = at_rest = None
        if embedder is not None:
            to_avatar, to_driver, at_rest = self._identity(outputs, embedder)
        return PairScore(
            avatar=self.avatar_spec,
            driver=self.driver_path,
            generator=generator,
            frames=len(outputs),
            identity_to_avatar=to_avatar,
            identity_to_driver=to_driver,
            identity_at_rest=at_rest,
            chroma_face=float(chroma_means[:, 0].mean() - self.avatar_chroma["face"]),
            chroma_features=float(chroma_means[:, 1].mean() - self.avatar_chroma["features"]),
            mouth_r=mouth_r,
            mouth_amplitude=mouth_amp,
            blink_r=blink_r,
            blink_amplitude=blink_amp,
            gaze_r=gaze_r,
            gaze_amplitude=gaze_amp,
            mouth_change=float(np.mean(change)) if change and around_mouth.any() else 0.0,
            face_found=float(np.isfinite(mouth).mean()),
        )

    def _identity(
        self, outputs: list[np.ndarray], embedder
    ) -> tuple[float | None, float | None, float | None]:
        """Mean distances from the output to the avatar and to the driver over every third
        frame, and to the avatar over the frames where the driver's eyes are open and its
        mouth closed (at least as much as in half its frames): a face that blinks or opens its
        mouth is further from a portrait with open eyes and a closed mouth, whoever it is."""
        reference = embedder(self.avatar.image, self.avatar.landmarks)
        if reference is None:
            return None, None, None
        picked = set(range(0, len(outputs), EMBED_EVERY))
        eyes, mouth = self.driver_eyes, self.driver_mouth
        if np.isfinite(eyes).any():
            at_rest = (eyes >= np.nanmedian(eyes)) & (mouth <= np.nanmedian(mouth))
            picked |= set(np.flatnonzero(at_rest)[::3].tolist())
        embedded = {
            i: e for i in sorted(picked) if (e := embedder(outputs[i], self.avatar.landmarks)) is not None
        }
        every = [np.linalg.norm(e - reference) for i, e in embedded.items() if i % EMBED_EVERY == 0]
        resting = [
            np.linalg.norm(e - reference)
            for i, e in embedded.items()
            if np.isfinite(eyes).any() and at_rest[i]
        ]
        drv = [e for i in range(0, len(outputs), EMBED_EVERY) if (e := embedder(self.frames[i])) is not None]
        to_driver = [np.linalg.norm(embedded[i] - d) for i in embedded if i % EMBED_EVERY == 0 for d in drv]
        return (
            float(np.mean(every)) if every else None,
            float(np.mean(to_driver)) if to_driver else None,
            float(np.mean(resting)) if resting else None,
        )

    def sheet_row(self, outputs: dict[str, list[np.ndarray]]) -> np.ndarray:
        """The avatar, then at the driver's widest mouth and at its deepest blink: the driver and each output."""
        columns = [self._tile(self.avatar.image, self.avatar.landmarks)]
        for series, pick in ((self.driver_mouth, np.nanargmax), (self.driver_eyes, np.nanargmin)):
            i = int(pick(series)) if np.isfinite(series).any() else 0
            with FaceTracker(smoothing=False, track_width=0, static_images=True) as judge:
                faces = judge.detect(self.frames[i])
            columns.append(self._tile(self.frames[i], faces[0] if faces else None))
            columns += [self._tile(images[i], self.avatar.landmarks) for images in outputs.values()]
        return np.concatenate(columns, axis=1)

    @staticmethod
    def _tile(image: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
        if landmarks is None:
            return cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA)
        centre = landmarks[mesh.RIGID, :2].mean(axis=0)
        half = 0.9 * mesh.face_size(landmarks[:, :2])
        scale = TILE / (2 * half)
        matrix = np.array(
            [[scale, 0, TILE / 2 - scale * centre[0]], [0, scale, TILE / 2 - scale * centre[1]]]
        )
        return cv2.warpAffine(
            image, matrix, (TILE, TILE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )


def summarise(scores: list[PairScore]) -> dict:
    """Per generator: the pairs, and the means over them."""
    numeric = [k for k, v in asdict(scores[0]).items() if isinstance(v, float) or v is None]
    mean = {}
    for key in numeric:
        values = [
            getattr(s, key) for s in scores if getattr(s, key) is not None and np.isfinite(getattr(s, key))
        ]
        mean[key] = round(float(np.mean(values)), 4) if values else None
    return {
        "mean": mean,
        "pairs": [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(s).items()} for s in scores
        ],
    }


def contact_sheet(rows: list[np.ndarray], generators: list[str], path: str) -> None:
    label = (
        "avatar | at the widest mouth: driver, "
        + ", ".join(generators)
        + " | at the deepest blink: driver, "
        + ", ".join(generators)
    )
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    header = np.full((24, width, 3), 255, np.uint8)
    cv2.putText(header, label, (6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(path, np.concatenate([header, *rows], axis=0))


def evaluate_pairs(
    pairs: list[tuple[str, str]],
    generators: list[str],
    max_frames: int = 150,
    providers: list[str] | None = None,
    sheet: str | None = None,
    size: tuple[int, int] | None = None,
) -> dict[str, dict]:
    """Every generator on every pair (on a ``size`` canvas; None: the driver's frame size); per
    generator, the pairs and their means."""
    from tqdm import tqdm

    from realtime.identity import FaceEmbedder, embedder_available

    embedder = FaceEmbedder() if embedder_available() else None
    if embedder is None:
        logger.warning("no dlib (pip install -e '.[eval]'): identity is not measured")
    scores: dict[str, list[PairScore]] = {name: [] for name in generators}
    rows = []
    for avatar, driver in tqdm(pairs, unit="pair", disable=None):
        pair = CrossIdentityPair(avatar, driver, max_frames, size)
        outputs = {name: pair.render(name, providers) for name in generators}
        for name, images in outputs.items():
            scores[name].append(pair.score(name, images, embedder))
        if sheet:
            rows.append(pair.sheet_row(outputs))
    if sheet:
        contact_sheet(rows, [Path(name).stem for name in generators], sheet)
    return {name: summarise(s) for name, s in scores.items()}


def format_table(summary: dict[str, dict]) -> str:
    """One line per generator and pair, then its mean."""

    def cell(value: object, width: int = 8, digits: int = 3) -> str:
        ok = isinstance(value, float) and np.isfinite(value)
        return f"{value:>{width}.{digits}f}" if ok else f"{'-':>{width}}"

    columns = (
        "id->avatar",
        "id@rest",
        "id->driver",
        "chroma",
        "features",
        "mouth r",
        "amp",
        "blink r",
        "gaze r",
        "amp",
        "steady",
    )
    lines = [f"{'generator':<12}{'avatar : driver':<52}" + "".join(f"{c:>11}" for c in columns)]
    for name, result in summary.items():
        for p in [*result["pairs"], {"avatar": "mean", "driver": "", **result["mean"]}]:
            pair = f"{Path(p['avatar']).name} : {Path(p['driver']).name}" if p["driver"] else "mean"
            values = (
                p["identity_to_avatar"],
                p["identity_at_rest"],
                p["identity_to_driver"],
                p["chroma_face"],
                p["chroma_features"],
                p["mouth_r"],
                p["mouth_amplitude"],
                p["blink_r"],
                p.get("gaze_r"),
                p.get("gaze_amplitude"),
                p["mouth_change"],
            )
            lines.append(f"{Path(name).stem:<12}{pair[:50]:<52}" + "".join(cell(v, 11) for v in values))
    return "\n".join(lines)
