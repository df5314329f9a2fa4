"""Export a trained refiner: checkpoint → ONNX (FP32 and FP16), parity check, model card.

    python -m export.refiner runs/NAME/refiner.pt --out weights/refiner.onnx [--fp16] [--tensorrt]

(``python -m realtime.export.refiner`` where the project is installed.)

Checkpoints are loaded with ``torch.load(weights_only=True)``; the runtime only ever
loads the resulting ONNX file.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from realtime.crops import (
    CARD_PASTE_RULES,
    IN_DRIVER,
    IN_FILL_MASK,
    IN_LANDMARKS,
    IN_SOURCE,
    IN_WARPED,
    OUT_FLOW,
    OUT_IMAGE,
    OUT_MASK,
    REFINER_DRIVER_INPUTS,
    REFINER_FLOW_OUTPUTS,
    REFINER_INPUTS,
    REFINER_OUTPUTS,
    crop_count,
)

from .common import run_onnx, save_card, tensorrt_check, write_onnx

logger = logging.getLogger(__name__)


def load_refiner(checkpoint: str | Path):
    import torch

    from realtime.train.models import Refiner

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    net = Refiner(
        tuple(config["widths"]),
        config["size"],
        flow=config.get("flow", False),
        driver=config.get("driver", False),
    )
    net.load_state_dict(state["model"])
    return net.eval(), config, int(state.get("step", 0))


def crops_per_frame(config: dict) -> int:
    """How many crops the runtime feeds per frame: the batch the model is exported with."""
    return crop_count(config.get("layout", "face"))


def example_inputs(size: int, crops: int = 1, seed: int = 0, driver: bool = False) -> dict[str, np.ndarray]:
    """Random inputs by ONNX name, in the order ``models.Refiner.forward`` takes them."""
    rng = np.random.default_rng(seed)
    feeds = {
        IN_WARPED: rng.random((crops, 3, size, size), dtype=np.float32),
        IN_SOURCE: rng.random((crops, 3, size, size), dtype=np.float32),
        IN_LANDMARKS: (rng.random((crops, 1, size, size)) > 0.97).astype(np.float32),
        IN_FILL_MASK: (rng.random((crops, 1, size, size)) > 0.9).astype(np.float32),
    }
    if driver:
        feeds[IN_DRIVER] = (feeds[IN_FILL_MASK] * rng.random((crops, 1, size, size))).astype(np.float32)
    return feeds


def export_onnx(net, size: int, path: str | Path, fp16: bool = False, crops: int = 1) -> Path:
    """Write the ONNX file atomically (temp name, then rename)."""
    import torch

    model = net.half() if fp16 else net.float()
    dtype = torch.float16 if fp16 else torch.float32
    args = tuple(
        torch.from_numpy(v).to(dtype) for v in example_inputs(size, crops, driver=net.driver).values()
    )
    inputs = REFINER_DRIVER_INPUTS if net.driver else REFINER_INPUTS
    try:
        return write_onnx(model, args, path, inputs, REFINER_FLOW_OUTPUTS if net.flow else REFINER_OUTPUTS)
    finally:
        net.float()


def parity(
    net, onnx_path: str | Path, size: int, providers: list[str] | None = None, crops: int = 1
) -> dict[str, float]:
    """Max abs difference between PyTorch (FP32) and the runtime's ``OnnxRunner`` on the same inputs."""
    import torch

    feeds = example_inputs(size, crops, seed=1, driver=net.driver)
    outputs, provider = run_onnx(onnx_path, feeds, providers)
    names = REFINER_FLOW_OUTPUTS if net.flow else REFINER_OUTPUTS
    with torch.no_grad():
        ref = net.float()(*(torch.from_numpy(v) for v in feeds.values()))
    return {
        f"{name}_max_abs_diff": float(np.abs(outputs[name].astype(np.float32) - r.numpy()).max())
        for name, r in zip(names, ref, strict=True)
    } | {"provider": provider}


def write_card(onnx_path: Path, config: dict, step: int, checks: dict, extra: dict | None = None) -> Path:
    layout = config.get("layout", "face")
    n = crops_per_frame(config)
    shown = "face crop" if layout == "face" else "crops of mouth, right eye, left eye (mirrored)"
    card = {
        "name": onnx_path.stem,
        "kind": "refiner",
        "format": "onnx",
        "inputs": {
            IN_WARPED: f"{n}x3xSxS float RGB [0,1]: the warp's output, {shown} aligned on the target landmarks",
            IN_SOURCE: f"{n}x3xSxS float RGB [0,1]: the avatar's own {shown}",
            IN_LANDMARKS: f"{n}x1xSxS float: target landmarks drawn as points, eye and lip contours",
            IN_FILL_MASK: f"{n}x1xSxS float: the target's openings (inner mouth; eyes too in the region "
            "layout): what the warp cannot show",
        }
        | (
            {
                IN_DRIVER: f"{n}x1xSxS float: the user's openings cut around the user's own landmarks, "
                "grey relative to the face around them (0.5 = as bright), 0 outside them and while "
                "no face is tracked (realtime.crops.driver_map)"
            }
            if config.get("driver")
            else {}
        ),
        "outputs": {
            OUT_IMAGE: f"{n}x3xSxS float RGB [0,1]",
            OUT_MASK: f"{n}x1xSxS float [0,1] blend mask (0 at the border)",
        }
        | (
            {
                OUT_FLOW: f"{n}x2xSxS float: where each output pixel was taken from in the warped crop, "
                "(dx, dy) in crop pixels (0 at the border)"
            }
            if config.get("flow")
            else {}
        ),
        "crop": {"size": config["size"], "face_scale": 0.32, "layout": layout},
        # What the runtime applies of the output, as the model was trained to be applied.
        "correction": config.get("correction", "rgb"),
        **({"confine": config["confine"]} if config.get("confine") else {}),
        **{rule: region_list(config[rule]) for rule in CARD_PASTE_RULES if config.get(rule)},
        "architecture": f"U-Net widths {config['widths']}, residual output over the warp, sigmoid mask"
        + (", flow that moves the warp's pixels first" if config.get("flow") else "")
        + (", sees the user's mouth and eye openings" if config.get("driver") else ""),
        "training": {
            "steps": step,
            "batch": config["batch"],
            "lr": config["lr"],
            "data": config.get("data"),
            "losses": "weighted L1 (mouth x5, eyes x4), Laplacian pyramid L1, temporal (consecutive "
            "frames), hinge GAN with 2-scale patch discriminator, feature matching",
        },
    }
    return save_card(onnx_path, card, checks, extra)


def region_list(regions: str | list[str]) -> list[str]:
    """The card's list of regions from the training flag's "mouth,eyes" (or a list already)."""
    return [r for r in (regions.split(",") if isinstance(regions, str) else regions) if r]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--fp16", action="store_true", help="also write NAME.fp16.onnx")
    parser.add_argument("--tensorrt", action="store_true", help="check the TensorRT provider path")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--summary", default=None, help="training summary.json to quote in the card")
    parser.add_argument(
        "--darken-only",
        default=None,
        help="comma-separated regions (mouth, eyes) whose correction may only darken the warp "
        "(default: as trained)",
    )
    parser.add_argument(
        "--dark-centre",
        default=None,
        help="comma-separated regions (mouth, eyes) whose correction may brighten only near the "
        "opening's rim and only darken around its centre line (default: as trained)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    net, config, step = load_refiner(args.checkpoint)
    if args.darken_only is not None:
        config = config | {"darken_only": args.darken_only}
    if args.dark_centre is not None:
        config = config | {"dark_centre": args.dark_centre}
    size, crops = config["size"], crops_per_frame(config)
    out = export_onnx(net, size, args.out, crops=crops)
    checks = {
        "parity_fp32": parity(net, out, size, crops=crops),
        "tolerance": args.tolerance,
        "exported": time.strftime("%Y-%m-%d"),
    }
    worst = max(v for k, v in checks["parity_fp32"].items() if k.endswith("diff"))
    if worst > args.tolerance:
        raise SystemExit(f"parity check failed: max abs diff {worst:.2e} > {args.tolerance:.0e}")
    if args.fp16:
        fp16_path = export_onnx(net, size, out.with_suffix(".fp16.onnx"), fp16=True, crops=crops)
        try:
            checks["parity_fp16"] = parity(net, fp16_path, size, crops=crops)
        except Exception as exc:  # CPU onnxruntime lacks some FP16 kernels; report, don't fail
            checks["parity_fp16"] = {"error": str(exc).splitlines()[0][:200]}
    if args.tensorrt:
        checks["tensorrt"] = tensorrt_check(out)
    extra = {"training_summary": json.loads(Path(args.summary).read_text())} if args.summary else None
    card = write_card(out, config, step, checks, extra)
    print(json.dumps(checks, indent=2))
    print(f"wrote {out} and {card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
