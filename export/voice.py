"""Export the audio-to-mouth model: checkpoint → ONNX, parity through OnnxRunner, model card.

    python -m export.voice runs/voice/best.pt --out weights/voice.onnx [--summary runs/voice/summary.json]

The checkpoint is loaded with ``torch.load(weights_only=True)``; a weights-only copy
(model state and config, nothing else) is written beside the ONNX as NAME.pt.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from realtime.voice import features, mouth
from realtime.voice.model import IN_MEL, OUT_MOUTH

from .common import run_onnx, save_card

logger = logging.getLogger(__name__)


def export_onnx(net, path: str | Path) -> Path:
    """Write the ONNX (dynamic number of frames) atomically."""
    import os

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    example = torch.zeros(1, 64, features.N_MELS)
    torch.onnx.export(
        net.eval(),
        (example,),
        str(tmp),
        input_names=[IN_MEL],
        output_names=[OUT_MOUTH],
        dynamic_axes={IN_MEL: {1: "frames"}, OUT_MOUTH: {1: "frames"}},
        opset_version=17,
        dynamo=False,
        do_constant_folding=True,
    )
    os.replace(tmp, path)
    return path


def parity(net, onnx_path: str | Path, frames: tuple[int, ...] = (1, 37, 400)) -> dict:
    """Max abs difference between PyTorch and the runtime's OnnxRunner on log-mel of
    random noise at several lengths."""
    import torch

    rng = np.random.default_rng(1)
    worst, provider = 0.0, ""
    for n in frames:
        samples = rng.standard_normal((n - 1) * features.HOP + features.WINDOW) * 0.1
        mel = features.log_mel(samples)
        outputs, provider = run_onnx(onnx_path, {IN_MEL: mel[None]})
        with torch.no_grad():
            ref = net(torch.from_numpy(mel)[None]).numpy()
        worst = max(worst, float(np.abs(outputs[OUT_MOUTH] - ref).max()))
    return {"mouth_max_abs_diff": worst, "frames": list(frames), "provider": provider}


def main(argv: list[str] | None = None) -> int:
    import torch

    from realtime.train.voice import LOOKAHEAD_S, load_model, receptive_field

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--summary", default=None, help="training summary.json to quote in the card")
    parser.add_argument("--evaluation", default=None, help="evaluation JSON to quote in the card")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    net = load_model(args.checkpoint)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    config = json.loads(state["config"])
    out = export_onnx(net, args.out)
    checks = {
        "parity_fp32": parity(net, out),
        "tolerance": args.tolerance,
        "exported": time.strftime("%Y-%m-%d"),
    }
    if checks["parity_fp32"]["mouth_max_abs_diff"] > args.tolerance:
        raise SystemExit(
            f"parity check failed: {checks['parity_fp32']['mouth_max_abs_diff']:.2e} > {args.tolerance:.0e}"
        )
    pt_path = out.with_suffix(".pt")
    torch.save({"model": net.state_dict(), "step": int(state["step"]), "config": state["config"]}, pt_path)
    params = sum(p.numel() for p in net.parameters())
    card = {
        "name": out.stem,
        "kind": "audio_to_mouth",
        "format": "onnx",
        "inputs": {
            IN_MEL: f"1 x frames x {features.N_MELS} float: natural-log mel filterbank energies "
            f"(realtime.voice.features.log_mel: {features.RATE} Hz mono, {features.WINDOW_S * 1000:.0f} ms "
            f"Hamming window, {features.HOP_S * 1000:.0f} ms hop, 60-7600 Hz)"
        },
        "outputs": {
            OUT_MOUTH: f"1 x frames x {len(mouth.MOUTH_POINTS)} x 2 float: canonical offsets of the "
            "mouth points from the neutral (face sizes; x along the eye line, y down)"
        },
        "points": list(mouth.MOUTH_POINTS),
        "lookahead_s": LOOKAHEAD_S,
        "receptive_field": receptive_field(tuple(config["dilations"]), config.get("running_mean_frames", 1)),
        "architecture": f"causal dilated 1-D convolutions, {config['channels']} channels, dilations "
        f"{config['dilations']}, GELU, residual; {config['components']}-component PCA basis of the mouth "
        f"motion; {params} parameters",
        "training": {"steps": int(state["step"]), "config": config, "checkpoint": pt_path.name},
    }
    extra = {}
    if args.summary:
        summary = json.loads(Path(args.summary).read_text())
        extra["training_summary"] = {
            k: summary[k]
            for k in (
                "steps",
                "stages",
                "best",
                "groups",
                "minutes",
                "first_loss",
                "last_loss",
                "dropped_out_of_sync",
            )
            if k in summary
        }
    if args.evaluation:
        extra["evaluation"] = json.loads(Path(args.evaluation).read_text())
    card_path = save_card(out, card, checks, extra)
    print(json.dumps(checks, indent=2))
    print(f"wrote {out}, {pt_path} and {card_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
