"""What every exporter shares: atomic ONNX writing, hashing, the TensorRT check, model cards."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_onnx(model, args: tuple, path: str | Path, inputs: Sequence[str], outputs: Sequence[str]) -> Path:
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
        input_names=list(inputs),
        output_names=list(outputs),
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


def runner(onnx_path: str | Path, providers: list[str] | None = None):
    """The runtime's own ``OnnxRunner`` on ``onnx_path`` (CPU unless ``providers`` say
    otherwise, no warm-up), so a parity check runs the model the way the runtime will."""
    from realtime.generators.onnx import OnnxRunner

    return OnnxRunner(str(onnx_path), providers or ["CPUExecutionProvider"], warmup=0)


def run_onnx(
    onnx_path: str | Path, feeds: dict[str, np.ndarray], providers: list[str] | None = None
) -> tuple[dict[str, np.ndarray], str]:
    """(outputs by name, the provider that ran) of one run through ``OnnxRunner``; the feeds
    are cast to the model's input precision (FP16 models take half floats)."""
    session = runner(onnx_path, providers)
    half = any(i.type == "tensor(float16)" for i in session.inputs.values())
    dtype = np.float16 if half else np.float32
    outputs = session.run({name: value.astype(dtype) for name, value in feeds.items()})
    return outputs, session.provider


def tensorrt_check(onnx_path: str | Path) -> dict:
    """Build/load a TensorRT engine through onnxruntime's TensorRT provider, where present."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"available": False, "reason": "onnxruntime not installed"}
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return {"available": False, "reason": "this onnxruntime build has no TensorRT provider"}
    session = runner(
        onnx_path, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    return {"available": session.provider == "TensorrtExecutionProvider", "provider": session.provider}


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
