"""An int8 refiner for CPUs: static quantization calibrated on the crops the runtime cuts.

    python -m export.quantize weights/refiner.onnx --out weights/refiner.int8.onnx [--frames 40]

Calibration: the runtime's own per-frame path (``offline_processor``) drives each calibration
clip's first frame with the clip, and the refiner's inputs of every second frame are kept:
clips of training people only (``realtime.train.people``), so the validation and selection
people stay unseen. Weights int8 per output channel, activations uint8, QDQ format
(``onnxruntime.quantization.quantize_static``, min-max ranges).

The parity check runs both models through the runner that ships (``export.common.runner``) on
the inputs of selection people's clips, and reports the image output's difference in grey levels;
the card also times both models, one thread each. The card is the source model's, its
evaluations dropped (they were of another model) and never the default: run ``realtime eval``
and ``export.promote`` on the int8 model itself.

Needs mediapipe and the clips in ../shared/media (export time only; the runtime loads the .onnx).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import runner, save_card
from .latency import onnxruntime_latency

logger = logging.getLogger(__name__)

MEDIA = Path(__file__).resolve().parents[1].parent / "shared" / "media"
CALIBRATION_CLIPS = 8
PARITY_CLIPS = 2
# Dropped from the source card: they describe the float model, not this one.
SOURCE_ONLY = (
    "evaluation",
    "cross_identity_evaluation",
    "cross_identity_evaluation_live",
    "export",
    "sha256",
    "bytes",
    "default",
)


class Recording:
    """A runner that keeps a copy of every input it is given (the generator's runner contract)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.feeds.append({name: value.copy() for name, value in feeds.items()})
        return self.inner.run(feeds)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def refiner_inputs(model: Path, clip: Path, frames: int) -> list[dict[str, np.ndarray]]:
    """The refiner's feeds on every second of ``frames`` frames of ``clip`` (its first frame
    the avatar, the clip driving it), as the runtime cuts them."""
    from realtime.analysis import read_frames
    from realtime.avatar import make_avatar
    from realtime.frames import Frame, Mode
    from realtime.pipeline import offline_processor

    images = list(read_frames(str(clip), frames))
    avatar = make_avatar(images[0], (images[0].shape[1], images[0].shape[0]), str(clip))
    processor = offline_processor(avatar, str(model), occlusion=False)
    generator = processor.generators.for_mode(Mode.REENACT)
    recording = Recording(generator.runner)
    generator.runner = recording
    try:
        for index, image in enumerate(images[::2]):
            processor.process(Frame(image, index, index / 15.0))
    finally:
        processor.close()
    return recording.feeds


def clips_of(group: str, count: int) -> list[Path]:
    from realtime.train.people import split

    clips = sorted((MEDIA / "clips").glob("*.mp4"))
    train, selection, _ = split(clips)
    chosen = {"train": train, "selection": selection}[group]
    # spread over the list, so not all from one source
    return [chosen[i] for i in np.linspace(0, len(chosen) - 1, min(count, len(chosen))).astype(int)]


def quantize(model: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(model), str(prepared))
        part = out.with_name(f".{out.name}.part")
        quantize_static(
            str(prepared),
            str(part),
            Feeds(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
        )
    part.replace(out)
    return out


def parity(model: Path, quantized: Path, feeds: list[dict[str, np.ndarray]]) -> dict:
    """The int8 model's outputs against the float model's, in grey levels (0-255)."""
    reference, candidate = runner(model), runner(quantized)
    image, mask = [], []
    for feed in feeds:
        a, b = reference.run(feed), candidate.run(feed)
        image.append(np.abs(a["image"] - b["image"]).mean() * 255)
        mask.append(np.abs(a["mask"] - b["mask"]).mean() * 255)
    return {
        "image_mean_abs_diff_grey": round(float(np.mean(image)), 3),
        "image_worst_frame_grey": round(float(np.max(image)), 3),
        "mask_mean_abs_diff_grey": round(float(np.mean(mask)), 3),
        "frames": len(feeds),
        "provider": reference.provider,
    }


def timing(path: Path, feed: dict[str, np.ndarray]) -> float:
    """Median ms of one call, one thread."""
    return onnxruntime_latency(path, feed, "CPUExecutionProvider", runs=300, warmup=20, threads=1)["p50_ms"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the float refiner (.onnx, with its card beside it)")
    parser.add_argument("--out", type=Path, required=True, help="the int8 .onnx to write")
    parser.add_argument("--frames", type=int, default=40, help="frames read per clip (every second is kept)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    card_path = args.model.with_suffix(".json")
    if not args.model.exists() or not card_path.exists():
        raise SystemExit(f"error: no model and card at {args.model} / {card_path}")
    if not (MEDIA / "clips").is_dir():
        raise SystemExit(f"error: calibration needs the clips in {MEDIA / 'clips'}")
    calibration_clips, parity_clips = (
        clips_of("train", CALIBRATION_CLIPS),
        clips_of("selection", PARITY_CLIPS),
    )
    from realtime.errors import UserError

    try:
        calibration = [f for clip in calibration_clips for f in refiner_inputs(args.model, clip, args.frames)]
        held_out = [f for clip in parity_clips for f in refiner_inputs(args.model, clip, args.frames)]
    except UserError as exc:  # not a refiner, or not ONNX at all
        raise SystemExit(f"error: {exc}") from None
    logger.info("calibrating on %d frames of %d clips", len(calibration), len(calibration_clips))
    quantize(args.model, args.out, calibration)
    checks = {
        "parity_int8": parity(args.model, args.out, held_out),
        "ms_per_call_one_thread": {
            "float": timing(args.model, held_out[0]),
            "int8": timing(args.out, held_out[0]),
        },
        "exported": time.strftime("%Y-%m-%d"),
    }
    card = {k: v for k, v in json.loads(card_path.read_text()).items() if k not in SOURCE_ONLY}
    card["name"] = args.out.stem
    card["quantization"] = {
        "from": args.model.name,
        # where training goes on from: the float model's PyTorch checkpoint, beside it
        "checkpoint": checkpoint.name if (checkpoint := args.model.with_suffix(".pt")).exists() else None,
        "method": "onnxruntime quantize_static: QDQ, int8 weights per channel, uint8 activations, min-max",
        "calibration_clips": [c.name for c in calibration_clips],
        "calibration_frames": len(calibration),
        "parity_clips": [c.name for c in parity_clips],
    }
    save_card(args.out, card, checks)
    print(json.dumps(checks, indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
