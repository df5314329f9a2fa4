"""What every exporter shares: atomic ONNX writing, hashing, the TensorRT check, model cards."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def write_onnx(model, args: tuple, path: str | Path, inputs: list[str], outputs: list[str]) -> Path:
    """Export with the TorchScript exporter (opset 17) under a temporary name, then rename,
    so a failed export never leaves a half-written model where the runtime looks."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    torch.onnx.export(
        model,
        args,
        str(tmp),
        input_names=inputs,
        output_names=outputs,
        opset_version=17,
        dynamo=False,
        do_constant_folding=True,
    )
    os.replace(tmp, path)
    return path


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensorrt_check(onnx_path: str | Path) -> dict:
    """Build/load a TensorRT engine through onnxruntime's TensorRT provider, where present."""
    from realtime.generators.onnx import OnnxRunner

    try:
        import onnxruntime as ort
    except ImportError:
        return {"available": False, "reason": "onnxruntime not installed"}
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return {"available": False, "reason": "this onnxruntime build has no TensorRT provider"}
    runner = OnnxRunner(
        str(onnx_path), ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    return {"available": runner.provider == "TensorrtExecutionProvider", "provider": runner.provider}


def save_card(onnx_path: Path, card: dict, checks: dict, extra: dict | None = None) -> Path:
    """Complete a model card (export checks, sha256, size; never the default until an
    evaluation says so) and write it beside the .onnx."""
    card.update(
        {"export": checks, "sha256": sha256(onnx_path), "bytes": onnx_path.stat().st_size, "default": False}
    )
    if extra:
        card.update(extra)
    card_path = onnx_path.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2))
    return card_path
