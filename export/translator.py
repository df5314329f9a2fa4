"""Export a trained face translator (CycleGAN / Recycle-GAN A→B generator) to ONNX.

    python -m export.translator runs/NAME [--out weights/NAME.onnx] [--reverse] [--tensorrt]

(``python -m realtime.export.translator`` where the project is installed; ``realtime train
swap`` calls ``export_run`` when training ends.)

Contract of the exported model (what ``realtime.generators.translator`` runs): input
``face`` 1x3xSxS float RGB in [0, 1], the user's face crop aligned by
``realtime.crops.alignment`` with the card's ``crop`` spec; output ``image``, the same crop
as the other person. Checkpoints are loaded with ``torch.load(weights_only=True)``;
the runtime only ever loads the ONNX file.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from realtime.crops import IN_FACE, OUT_IMAGE, TRANSLATOR_INPUTS, TRANSLATOR_OUTPUTS

from .common import run_onnx, save_card, tensorrt_check, write_onnx

logger = logging.getLogger(__name__)


def load_translator(checkpoint: str | Path, reverse: bool = False):
    """(generator, config dict, step) from ``translator.pt`` or a training ``checkpoint.pt``."""
    import torch

    from realtime.train.config import SwapConfig
    from realtime.train.cyclegan import make_generator

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    fields = SwapConfig.__dataclass_fields__
    net = make_generator(SwapConfig(**{k: v for k, v in config.items() if k in fields}))
    if "nets" in state:  # a training checkpoint: every network of the run
        prefix = "g_ba." if reverse else "g_ab."
        weights = {k[len(prefix) :]: v for k, v in state["nets"].items() if k.startswith(prefix)}
    else:
        weights = state["reverse" if reverse else "model"]
    net.load_state_dict(weights)
    return net.eval(), config, int(state.get("step", 0))


def example_input(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, size, size), dtype=np.float32)


def export_onnx(net, size: int, path: str | Path) -> Path:
    """Write the ONNX file atomically (temp name, then rename)."""
    import torch

    with warnings.catch_warnings():
        # Instance norm always normalises by the input's own statistics, in training and
        # export alike; the legacy exporter's notes about it and about Slice folding are noise.
        warnings.filterwarnings("ignore", message=".*(instance_norm|Constant folding).*")
        return write_onnx(
            net.float().eval(),
            (torch.from_numpy(example_input(size)),),
            path,
            TRANSLATOR_INPUTS,
            TRANSLATOR_OUTPUTS,
        )


def parity(net, onnx_path: str | Path, size: int, providers: list[str] | None = None) -> dict:
    """Max abs difference between PyTorch (FP32) and the runtime's ``OnnxRunner`` on the same input."""
    import torch

    face = example_input(size, seed=1)
    outputs, provider = run_onnx(onnx_path, {IN_FACE: face}, providers)
    with torch.no_grad():
        ref = net.float().eval()(torch.from_numpy(face)).numpy()
    return {f"{OUT_IMAGE}_max_abs_diff": float(np.abs(outputs[OUT_IMAGE] - ref).max()), "provider": provider}


def write_card(
    onnx_path: Path, config: dict, step: int, checks: dict, extra: dict | None = None, reverse: bool = False
) -> Path:
    size = config["size"]
    mode = "Recycle-GAN" if config.get("recycle") else "CycleGAN"
    card = {
        "name": onnx_path.stem,
        "kind": "translator",
        "format": "onnx",
        "direction": "b_to_a" if reverse else "a_to_b",
        "inputs": {IN_FACE: f"1x3x{size}x{size} float RGB [0,1]: the user's face crop, aligned as in 'crop'"},
        "outputs": {OUT_IMAGE: f"1x3x{size}x{size} float RGB [0,1]: the same crop as the other identity"},
        "crop": {
            "size": size,
            "face_scale": config.get("face_scale", 0.32),
            "alignment": "realtime.crops.alignment(landmarks, CropSpec(size, face_scale)): a "
            "similarity from mediapipe's 478 landmarks; outer eye corners (33, 263) level and "
            "face_scale*size apart, the rigid points' centroid at (size/2, 0.47*size); "
            "border replicated",
        },
        "paste": "face-oval mask from the user's landmarks, eroded and feathered, then Lab colour match",
        "identities": {
            "a": [c["clip"] for c in config.get("clips_a", [])] or config.get("a"),
            "b": [c["clip"] for c in config.get("clips_b", [])] or config.get("b"),
        },
        "architecture": f"{mode} ResNet generator: width {config['width']}, {config['n_down']} down/up, "
        f"{config['n_res']} residual blocks, instance norm, bilinear upsampling",
        "training": {
            "steps": step,
            "batch": config["batch"],
            "lr": config["lr"],
            "recycle": config.get("recycle"),
            "holdout": config.get("holdout"),
            "losses": "hinge GAN (2-scale patch discriminators), "
            f"cycle L1 x{config['w_cycle']}, identity L1 x{config['w_identity']}"
            + (
                f", recurrent x{config['w_recurrent']}, recycle x{config['w_recycle']}"
                if config.get("recycle")
                else ""
            ),
        },
    }
    return save_card(onnx_path, card, checks, extra)


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    tolerance: float = 1e-4,
    reverse: bool = False,
    tensorrt: bool = False,
    record: bool = False,
) -> dict:
    """Export a run folder's generator (``translator.pt``, else ``checkpoint.pt``) with parity
    check and card. ``record``: also keep the result in the run's ``summary.json`` (under
    ``export``), as ``realtime train swap`` does."""
    run = Path(run)
    checkpoint = run / "translator.pt" if (run / "translator.pt").exists() else run / "checkpoint.pt"
    net, config, step = load_translator(checkpoint, reverse)
    target = Path(out) if out else run / ("translator_b_to_a.onnx" if reverse else "translator.onnx")
    path = export_onnx(net, config["size"], target)
    checks = {
        "parity_fp32": parity(net, path, config["size"]),
        "tolerance": tolerance,
        "exported": time.strftime("%Y-%m-%d"),
    }
    worst = checks["parity_fp32"][f"{OUT_IMAGE}_max_abs_diff"]
    if worst > tolerance:
        raise SystemExit(f"parity check failed: max abs diff {worst:.2e} > {tolerance:.0e}")
    if tensorrt:
        checks["tensorrt"] = tensorrt_check(path)
    summary_path = run / "summary.json"
    extra = {}
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        config = {**config, "clips_a": summary.get("a", []), "clips_b": summary.get("b", [])}
        extra["training_summary"] = {
            k: summary[k] for k in ("steps", "device", "minutes", "a", "b", "train_crops") if k in summary
        }
    card = write_card(path, config, step, checks, extra, reverse)
    logger.info("exported %s (parity %.1e)", path, worst)
    result = {"onnx": str(path), "card": str(card), **checks}
    if record and summary_path.exists():
        summary = json.loads(summary_path.read_text())
        summary["export"] = result
        summary_path.write_text(json.dumps(summary, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run folder of `realtime train swap`")
    parser.add_argument("--out", default=None, help="the .onnx file to write (default: RUN/translator.onnx)")
    parser.add_argument("--reverse", action="store_true", help="export B→A instead of A→B")
    parser.add_argument("--tensorrt", action="store_true", help="check the TensorRT provider path")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = export_run(args.run, args.out, args.tolerance, args.reverse, args.tensorrt)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
