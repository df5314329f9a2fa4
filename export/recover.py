"""Rebuild a refiner's PyTorch checkpoint from its ONNX file and card, and prove it is the same model.

    python -m export.recover weights/refiner.onnx --out weights/refiner.pt

The ONNX initializers carry the PyTorch parameter names, and the card carries the training
configuration, so a shipped model whose checkpoint was not kept can be trained further.
The rebuilt checkpoint is exported again and must match the original ONNX within
``--tolerance`` on random inputs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from .common import run_onnx
from .refiner import crops_per_frame, example_inputs, export_onnx


def rebuild(onnx_path: Path, card: dict) -> tuple[object, dict]:
    """The ``Refiner`` with the ONNX file's weights, and its training configuration."""
    import onnx
    import torch
    from onnx import numpy_helper

    from realtime.train.config import RefinerConfig
    from realtime.train.models import IN_CHANNELS, Refiner

    weights = {
        i.name: torch.from_numpy(numpy_helper.to_array(i).copy())
        for i in onnx.load(str(onnx_path)).graph.initializer
    }
    if "enc0.0.0.weight" not in weights:
        raise SystemExit(f"{onnx_path} is not a refiner (no enc0.0.0.weight)")
    crop = card["crop"]
    config = RefinerConfig(
        size=int(crop["size"]),
        layout=crop["layout"],
        widths=tuple(int(weights[f"enc{level}.0.0.weight"].shape[0]) for level in range(4)),
        driver=int(weights["enc0.0.0.weight"].shape[1]) > IN_CHANNELS,
        flow=int(weights["head.weight"].shape[0]) > 4,
    )
    net = Refiner(config.widths, config.size, flow=config.flow, driver=config.driver)
    state = net.state_dict()
    missing = sorted(set(state) - set(weights))
    if missing:
        raise SystemExit(f"{onnx_path} lacks parameters {missing[:4]}...: not a refiner of this architecture")
    net.load_state_dict({name: weights[name].reshape(state[name].shape) for name in state})
    return net.eval(), config


def main(argv: list[str] | None = None) -> int:
    from dataclasses import asdict

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx", type=Path, help="a refiner .onnx with its card (.json) beside it")
    parser.add_argument("--out", required=True, type=Path, help="the checkpoint to write (.pt)")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    args = parser.parse_args(argv)
    card = json.loads(args.onnx.with_suffix(".json").read_text())
    net, config = rebuild(args.onnx, card)
    step = int(card.get("training", {}).get("steps", 0))
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / "again.onnx"
        crops = crops_per_frame(asdict(config))
        export_onnx(net, config.size, again, crops=crops)
        feeds = example_inputs(config.size, crops, driver=config.driver)
        (ours, _), (theirs, _) = run_onnx(again, feeds), run_onnx(args.onnx, feeds)
        diff = max(float(np.abs(ours[k] - theirs[k]).max()) for k in theirs)
    if diff > args.tolerance:
        raise SystemExit(f"the rebuilt model differs from {args.onnx} by {diff:.2e} (> {args.tolerance:.0e})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": net.state_dict(), "step": step, "config": json.dumps(asdict(config))}, args.out)
    print(f"wrote {args.out}: same outputs as {args.onnx} within {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
