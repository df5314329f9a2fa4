"""Personal avatars: ``realtime enroll --video PERSON.mp4 --out avatars/NAME``.

The shipped refiner is fine-tuned on one person's own video, so live it draws that person's
real teeth, eye shape and skin. One pass over the video tracks the frames used; the video is
split in time (the first part trains, the last ``holdout`` share, after a gap, is only ever
measured on); training runs the refiner's own loop (``realtime.train.refiner.train``) within
a wall-clock budget, and the result is exported with the parity check into a self-contained
folder (``realtime.avatar_folder``): the reference frame, the refiner ONNX + card + its
weights_only checkpoint, and a manifest. ``realtime run/render/demo/bench --avatar FOLDER``
then draw with that folder's refiner.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from realtime import mesh
from realtime.avatar_folder import IMAGE_NAME, MANIFEST_NAME, REFINER_NAME, is_avatar_folder
from realtime.errors import UserError
from realtime.train.config import EnrollConfig, RefinerConfig, paste_rules_of
from realtime.train.data import context_matrix, make_dataset, write_clip_cache

logger = logging.getLogger(__name__)

SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[2] / "weights" / "refiner.pt"
MIN_FACE_SHARE = 0.5  # of the tracked frames: fewer faces than this and the video is refused
HARD_MIN_SECONDS = 2.0  # below this not even --allow-short helps: too few frames to split
WORK_NAME = ".enroll_work"


@dataclass
class Tracked:
    """The frames of one pass over the video that have a face: index -> image, landmarks."""

    fps: float
    frame_count: int
    width: int
    height: int
    scale: float  # the images were shrunk by this (the face needs no more than the crops use)
    images: dict[int, np.ndarray]
    landmarks: dict[int, np.ndarray]
    wanted: int


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_video(cfg: EnrollConfig) -> tuple[float, int, int, int]:
    """(fps, frames, width, height) of a usable video, or one-line UserErrors: missing,
    unreadable, too short (a warning only with ``allow_short``)."""
    from realtime.analysis import video_frame_count
    from realtime.sources import probe_video

    fps, count, width, height = probe_video(cfg.video)
    if count <= 0:  # some containers do not say
        count = video_frame_count(cfg.video)
    seconds = count / fps
    if seconds < HARD_MIN_SECONDS or count < 16:
        raise UserError(
            f"video {cfg.video} is only {seconds:.1f} s long; enrolment needs 30-120 s of the person"
        )
    if seconds < cfg.min_seconds:
        if not cfg.allow_short:
            raise UserError(
                f"video {cfg.video} is {seconds:.1f} s long; enrolment needs at least {cfg.min_seconds:.0f} s "
                "of the person (30-120 s, talking and blinking); --allow-short enrols anyway"
            )
        logger.warning(
            "video is %.1f s long (< %.0f s): the personal model will learn less", seconds, cfg.min_seconds
        )
    return fps, count, width, height


def split_frames(count: int, fps: float, holdout: float, gap_seconds: float) -> tuple[range, range]:
    """(training frames, held-out frames): the first part and the last ``holdout`` share,
    ``gap_seconds`` apart so no held-out frame is a neighbour of a training one."""
    if not 0.0 <= holdout < 0.9:
        raise UserError(f"--holdout must be in [0, 0.9), got {holdout}")
    if holdout == 0:
        return range(0, count), range(0)
    start = int(round(count * (1.0 - holdout)))
    gap = max(2, int(round(gap_seconds * fps)))
    return range(0, max(0, start - gap)), range(start, count)


def pair_indices(frames: range, pairs: int) -> list[int]:
    """``pairs`` pairs of consecutive frames spread evenly over ``frames``."""
    if len(frames) < 4:
        return []
    starts = np.unique(np.linspace(frames.start, frames.stop - 2, min(pairs, len(frames) - 1)).astype(int))
    return sorted({int(i) for s in starts for i in (s, s + 1)})


def track_video(path: str, wanted: list[int], fps: float, count: int, size: tuple[int, int]) -> Tracked:
    """One pass over the video: the face landmarks of the ``wanted`` frames (tqdm progress)."""
    from tqdm import tqdm

    from realtime.analysis import read_frames
    from realtime.tracking import FaceTracker

    todo = set(wanted)
    images: dict[int, np.ndarray] = {}
    landmarks: dict[int, np.ndarray] = {}
    scale = 0.0
    tracker = FaceTracker(smoothing=False, track_width=0)
    last = max(wanted)
    try:
        with tqdm(total=len(todo), desc="tracking", unit="frame") as bar:
            for index, image in enumerate(read_frames(path)):
                if index > last:
                    break
                if index not in todo:
                    continue
                bar.update(1)
                faces = tracker.detect(image)
                if not faces:
                    continue
                if not scale:
                    # Faces bigger than ~2x the training crops' 80 px are shrunk once for the
                    # whole clip, so a long 1080p video fits in memory.
                    scale = min(1.0, 160.0 / max(mesh.face_size(faces[0]), 1.0))
                if scale < 1.0:
                    image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                images[index] = image
                landmarks[index] = faces[0] * scale
    finally:
        tracker.close()
    return Tracked(fps, count, size[0], size[1], scale or 1.0, images, landmarks, len(todo))


def reference_frame(tracked: Tracked, frames: range) -> int:
    """The avatar's still: a frontal face, mouth closed, eyes open, from the training part."""
    candidates = [i for i in frames if i in tracked.landmarks]
    lms = np.stack([tracked.landmarks[i] for i in candidates])
    mouth = np.array([mesh.mouth_opening(lm) for lm in lms])
    eyes = np.array([mesh.eye_opening(lm) for lm in lms])
    # Frontal: the nose tip half way between the outer eye corners.
    nose, right, left = lms[:, 1, 0], lms[:, 33, 0], lms[:, 263, 0]
    turn = np.abs((nose - right) / np.maximum(left - right, 1e-6) - 0.5)
    closed = mouth <= np.quantile(mouth, 0.3)
    score = np.where(closed, eyes / max(eyes.max(), 1e-6) - 2.0 * turn, -np.inf)
    return candidates[int(np.argmax(score))]


def read_frame(path: str, index: int) -> np.ndarray | None:
    """Frame ``index`` of the video at full resolution (the avatar's still)."""
    cap = cv2.VideoCapture(path)
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, image = cap.read()
        return image if ok else None
    finally:
        cap.release()


def shipped_config(init: Path) -> dict:
    import torch

    if not init.exists():
        raise UserError(f"refiner checkpoint not found: {init} (the shipped weights/refiner.pt, or --init)")
    state = torch.load(init, map_location="cpu", weights_only=True)
    return json.loads(state["config"])


def refiner_config(cfg: EnrollConfig, init: Path, minutes: float) -> RefinerConfig:
    """The shipped recipe (crop layout, size, widths, driver input) fine-tuned on one person:
    no GAN, no other people's openings (there are none), no painted or grey samples (the
    avatar is this person's own photo), the correction as ``cfg`` says."""
    base = shipped_config(init)
    return RefinerConfig(
        size=base["size"],
        layout=base["layout"],
        widths=tuple(base["widths"]),
        flow=base.get("flow", False),
        driver=base.get("driver", False),
        driver_dropout=base.get("driver_dropout", 0.1),
        correction=cfg.correction,
        confine=cfg.confine,
        steps=cfg.steps,
        max_minutes=max(minutes, 0.05),
        checkpoint_minutes=cfg.checkpoint_minutes,
        batch=cfg.batch,
        lr=cfg.lr,
        schedule="cosine",
        init=str(init),
        pairs_per_clip=cfg.pairs,
        gan_start=10**9,
        eval_every=10**9,  # validation by time (checkpoint_minutes), so the budget ends training at once
        seed=cfg.seed,
        workers=cfg.workers,
        device="cpu",
        data=[cfg.video],
    )


def make_data(rcfg: RefinerConfig, caches: dict[str, Path], cfg: EnrollConfig):
    """Training pairs from the training part; the held-out part's pairs (measured, never chosen
    on); the 'selection' pairs the loop asks for are more training-part pairs."""
    from realtime.crops import CropSpec
    from realtime.train.refiner import Data

    spec = CropSpec(rcfg.size, layout=rcfg.layout)
    train = make_dataset([caches["train"]], cfg.pairs, spec, cfg.seed, cfg.workers)
    selection = make_dataset([caches["train"]], 40, spec, cfg.seed + 20_000, 1)
    heldout = (
        make_dataset([caches["heldout"]], 40, spec, cfg.seed + 10_000, 1)
        if "heldout" in caches
        else selection
    )
    holdout_clips = [caches["heldout"]] if "heldout" in caches else []
    return Data([caches["train"]], [caches["train"]], holdout_clips, train, heldout, selection)


def in_crop_scores(checkpoint: Path, pairs: dict[str, np.ndarray]) -> dict[str, float]:
    """The refiner of ``checkpoint`` on ``pairs`` as the runtime applies it (its own correction
    and confine), next to the warp: in-crop L1 of the crop, the mouth and the eyes."""
    import torch

    from realtime.train import models
    from realtime.train.refiner import evaluate

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    net = models.Refiner(
        tuple(config["widths"]),
        config["size"],
        flow=config.get("flow", False),
        driver=config.get("driver", False),
    )
    net.load_state_dict(state["model"])
    fields = {k: v for k, v in config.items() if k in RefinerConfig.__dataclass_fields__}
    card = checkpoint.with_suffix(".json")  # an export may choose paste rules: the card says what applies
    if card.exists():
        fields |= paste_rules_of(json.loads(card.read_text()))
    applied = RefinerConfig(**{**fields, "widths": tuple(config["widths"])})
    return evaluate(net, pairs, torch.device("cpu"), cfg=applied)


def prepare_out(out: Path) -> None:
    """An empty or new folder, or an earlier enrolment (replaced); never someone's other files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder such as avatars/NAME")
    if out.is_dir() and any(p.name != WORK_NAME for p in out.iterdir()) and not is_avatar_folder(out):
        raise UserError(
            f"--out {out} holds other files; give a new or empty folder (or an earlier enrolment)"
        )


def enroll(cfg: EnrollConfig) -> dict:
    """Enrol the person of ``cfg.video`` into the avatar folder ``cfg.out``; the manifest."""
    import torch

    started = time.time()
    torch.set_num_threads(1)
    out = Path(cfg.out)
    prepare_out(out)
    init = Path(cfg.init) if cfg.init else SHIPPED_CHECKPOINT
    shipped_config(init)  # a missing or unreadable checkpoint fails before the long work
    fps, count, width, height = check_video(cfg)
    train_frames, heldout_frames = split_frames(count, fps, cfg.holdout, cfg.gap_seconds)
    if len(train_frames) < 16:
        raise UserError(
            f"video {cfg.video} leaves only {len(train_frames)} frames to train on after holding out "
            f"{cfg.holdout:.0%}; give a longer video (30-120 s) or a smaller --holdout"
        )
    train_wanted = pair_indices(train_frames, cfg.frames // 2)
    heldout_wanted = pair_indices(heldout_frames, cfg.heldout_frames // 2)
    tracked = track_video(cfg.video, train_wanted + heldout_wanted, fps, count, (width, height))
    found_train = [i for i in train_wanted if i in tracked.landmarks]
    if len(found_train) < max(8, MIN_FACE_SHARE * len(train_wanted)):
        raise UserError(
            f"a face was found in only {len(found_train)} of {len(train_wanted)} sampled frames of {cfg.video}; "
            "enrol from a video where the person's face is visible most of the time"
        )
    found_heldout = [i for i in heldout_wanted if i in tracked.landmarks]

    work = out / WORK_NAME
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    all_found = np.stack([tracked.landmarks[i] for i in found_train + found_heldout])
    matrix = context_matrix(all_found)
    caches = {
        "train": write_clip_cache(
            work / "train.npz",
            [tracked.images[i] for i in found_train],
            np.stack([tracked.landmarks[i] for i in found_train]),
            found_train,
            matrix,
        )
    }
    if len(found_heldout) >= 8:
        caches["heldout"] = write_clip_cache(
            work / "heldout.npz",
            [tracked.images[i] for i in found_heldout],
            np.stack([tracked.landmarks[i] for i in found_heldout]),
            found_heldout,
            matrix,
        )
    reference = reference_frame(tracked, train_frames)
    still = read_frame(cfg.video, reference)
    if still is None:  # a container that cannot seek: the tracked copy (maybe shrunk)
        still = tracked.images[reference]
    del tracked

    from realtime.train.refiner import train

    minutes_left = cfg.max_minutes - (time.time() - started) / 60.0 - cfg.export_minutes
    rcfg = refiner_config(cfg, init, minutes_left)
    t_pairs = time.time()
    data = make_data(rcfg, caches, cfg)
    rcfg = replace(
        rcfg, max_minutes=max(cfg.max_minutes - (time.time() - started) / 60.0 - cfg.export_minutes, 0.05)
    )
    pairs_s = time.time() - t_pairs
    logger.info(
        "%d training examples in %.0f s; training for %.1f min",
        len(data.train["warped0"]),
        pairs_s,
        rcfg.max_minutes,
    )
    t_train = time.time()
    result = train(rcfg, work / "run", resume=False, data=data)
    train_s = time.time() - t_train

    checkpoint = work / "run" / "refiner.pt"
    heldout_scores = None
    if "heldout" in caches:
        heldout_scores = {
            "pairs": int(len(data.validation["warped0"]) // 3),
            "shipped": in_crop_scores(init, data.validation),
            "enrolled": in_crop_scores(checkpoint, data.validation),
        }
    manifest = _write_folder(
        cfg,
        out,
        work,
        checkpoint,
        still,
        reference,
        {
            "fps": fps,
            "frames": count,
            "width": width,
            "height": height,
            "train_frames": [train_frames.start, train_frames.stop],
            "heldout_frames": [heldout_frames.start, heldout_frames.stop] if len(heldout_frames) else None,
            "tracked": {
                "train": len(found_train),
                "heldout": len(found_heldout),
                "wanted": len(train_wanted) + len(heldout_wanted),
            },
            "steps": result["steps"],
            "train_examples": int(len(data.train["warped0"]) // 3),
            "pairs_seconds": round(pairs_s, 1),
            "train_seconds": round(train_s, 1),
            "heldout_in_crop": heldout_scores,
            "init": str(init),
            "config": rcfg,
        },
        started,
    )
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _write_folder(
    cfg: EnrollConfig,
    out: Path,
    work: Path,
    checkpoint: Path,
    still: np.ndarray,
    reference: int,
    info: dict,
    started: float,
) -> dict:
    """Export the refiner (parity-checked), write the still, the card and the manifest."""
    import torch

    from realtime.export.refiner import crops_per_frame, export_onnx, load_refiner, parity, write_card

    net, config, step = load_refiner(checkpoint)
    size, crops = config["size"], crops_per_frame(config)
    onnx_path = out / REFINER_NAME
    export_onnx(net, size, onnx_path, crops=crops)
    tolerance = 1e-4
    checks = {
        "parity_fp32": parity(net, onnx_path, size, crops=crops),
        "tolerance": tolerance,
        "exported": time.strftime("%Y-%m-%d"),
    }
    worst = max(v for k, v in checks["parity_fp32"].items() if k.endswith("diff"))
    if worst > tolerance:
        onnx_path.unlink(missing_ok=True)
        raise UserError(
            f"the exported refiner does not match the trained one (max abs diff {worst:.1e} > {tolerance:.0e})"
        )
    # The weights only (no optimiser, no discriminator): a few MB, loadable with weights_only.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save(
        {"model": state["model"], "step": state["step"], "config": state["config"]}, out / "refiner.pt"
    )
    if not cv2.imwrite(str(out / IMAGE_NAME), still):
        raise UserError(f"could not write {out / IMAGE_NAME}")
    seconds = info["frames"] / info["fps"]
    rcfg: RefinerConfig = info.pop("config")
    video = {
        "path": str(cfg.video),
        "sha256": sha256_file(cfg.video),
        "seconds": round(seconds, 2),
        **{k: info[k] for k in ("fps", "frames", "width", "height")},
    }
    enrollment = {
        "video": video,
        "split": {
            "train_frames": info["train_frames"],
            "heldout_frames": info["heldout_frames"],
            "gap_seconds": cfg.gap_seconds,
            "note": "the held-out frames are never trained on and never used to choose anything; they are only measured",
        },
        "reference_frame": reference,
        "tracked_frames": info["tracked"],
        "train_examples": info["train_examples"],
        "heldout_in_crop": info["heldout_in_crop"],
        "timing_seconds": {
            "pairs": info["pairs_seconds"],
            "train": info["train_seconds"],
            "total": round(time.time() - started, 1),
        },
        "settings": asdict(cfg),
    }
    command = (
        f"realtime enroll --video {cfg.video} --out {cfg.out} --max-minutes {cfg.max_minutes:g} "
        f"--correction {cfg.correction} --confine {cfg.confine or repr('')}"
    )
    card_path = write_card(onnx_path, config, step, checks, {"enrollment": enrollment})
    card = json.loads(card_path.read_text())
    card["name"] = out.name
    card["kind"] = "refiner"
    card["training"].update(
        {
            "data": [str(cfg.video)],
            "losses": "weighted L1 (mouth x5, eyes x4), Laplacian pyramid L1, temporal (consecutive frames), "
            "on the output as the runtime applies it; no adversarial terms",
            "command": command,
            "init": info["init"],
            "lr": rcfg.lr,
            "schedule": "cosine over the time budget",
            "machine": "CPU, torch threads 1",
        }
    )
    card_path.write_text(json.dumps(card, indent=2))
    manifest = {
        "kind": "avatar",
        "version": 1,
        "name": out.name,
        "image": IMAGE_NAME,
        "refiner": REFINER_NAME,
        "card": card_path.name,
        "checkpoint": "refiner.pt",
        "refiner_sha256": card["sha256"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "video": video,
        "steps": step,
        "correction": cfg.correction,
        "confine": cfg.confine or None,
        "heldout_in_crop": info["heldout_in_crop"],
        "wall_minutes": round((time.time() - started) / 60.0, 2),
    }
    samples = sorted((work / "run").glob("samples_*.png"))
    if samples:  # warp | enrolled | real on held-out crops, at the last validation
        shutil.copyfile(samples[-1], out / "heldout_samples.png")
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    from realtime.avatar import load_avatar

    load_avatar(str(out))  # the folder loads as the live modes will load it (a face in the still)
    return manifest
