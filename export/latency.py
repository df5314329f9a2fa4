"""Latency of one exported model on the machine's accelerator, with whatever runtime it has.

    python -m export.latency MODEL.onnx --checkpoint RUN/refiner_best.pt --kind refiner [--json OUT]

In order of preference:

1. onnxruntime's CUDA provider on the exported graph itself (what a GPU deployment runs),
   used only if a session really runs on it (``session.get_providers()``, not the list of
   available providers, which names CUDA even where it cannot load);
2. else PyTorch on CUDA as a stand-in: the same network from its checkpoint, FP32 and FP16,
   clearly labelled as such, with the reason onnxruntime's CUDA provider could not run;
3. else (no GPU, as in the dry run) onnxruntime on the CPU, labelled so.

Every figure is per call at the runtime's batch (one frame: 3 crops for the region refiner),
median and p90 of ``--runs`` calls after ``--warmup`` calls; a CUDA call is timed to its
synchronisation, host-to-device copies included for onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def feeds_for(kind: str, checkpoint: str | Path) -> tuple[object, dict[str, np.ndarray]]:
    """(the PyTorch network, example inputs by ONNX name) of a ``kind`` model's checkpoint."""
    if kind == "translator":
        from .translator import example_input, load_translator

        net, config, _ = load_translator(checkpoint)
        from realtime.crops import IN_FACE

        return net, {IN_FACE: example_input(config["size"])}
    if kind == "refiner":
        from .refiner import crops_per_frame, example_inputs, load_refiner

        net, config, _ = load_refiner(checkpoint)
        return net, example_inputs(config["size"], crops_per_frame(config), driver=net.driver)
    raise ValueError(f"unknown model kind {kind!r}")


def _stats(times_s: list[float]) -> dict[str, float]:
    ms = np.array(times_s) * 1000.0
    return {"p50_ms": round(float(np.median(ms)), 4), "p90_ms": round(float(np.percentile(ms, 90)), 4)}


def onnxruntime_latency(
    onnx_path: str | Path,
    feeds: dict[str, np.ndarray],
    provider: str,
    runs: int,
    warmup: int,
    threads: int = 0,
) -> dict:
    """Times ``OnnxRunner.run`` on ``provider`` (``threads``: onnxruntime's, 0 its default); the
    provider that really ran is reported."""
    from realtime.generators.onnx import OnnxRunner

    providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))
    runner = OnnxRunner(str(onnx_path), providers, threads=threads, warmup=0)
    for _ in range(warmup):
        runner.run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(feeds)
        times.append(time.perf_counter() - t0)
    return {"provider": runner.provider, **_stats(times)}


def torch_cuda_latency(net, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> dict:
    """The PyTorch network on CUDA, FP32 and FP16, each call timed to its synchronisation."""
    import torch

    device = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(0)}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        model = net.to(device=device, dtype=dtype).eval()
        inputs = [torch.from_numpy(v).to(device=device, dtype=dtype) for v in feeds.values()]
        times = []
        with torch.inference_mode():
            for k in range(warmup + runs):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(*inputs)
                torch.cuda.synchronize()
                if k >= warmup:
                    times.append(time.perf_counter() - t0)
        result[name] = _stats(times)
    net.to(device="cpu", dtype=torch.float32)
    return result


def cuda_provider_status() -> tuple[bool, str]:
    """Whether onnxruntime can run on CUDA here, and why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return (
            False,
            f"onnxruntime {ort.__version__} is a CPU build (providers: {ort.get_available_providers()})",
        )
    return True, ""


def measure(
    onnx_path: str | Path, checkpoint: str | Path, kind: str, runs: int = 200, warmup: int = 20
) -> dict:
    """The latency record of one exported model (see the module's docstring for the order)."""
    net, feeds = feeds_for(kind, checkpoint)
    batch = {name: list(value.shape) for name, value in feeds.items()}
    cuda_ok, why_not = cuda_provider_status()
    record: dict = {"model": Path(onnx_path).name, "kind": kind, "inputs": batch, "runs": runs}
    if cuda_ok:
        result = onnxruntime_latency(onnx_path, feeds, "CUDAExecutionProvider", runs, warmup)
        if result["provider"] == "CUDAExecutionProvider":
            return record | {"runtime": "onnxruntime CUDAExecutionProvider (the exported graph)", **result}
        why_not = f"onnxruntime lists CUDA but a session fell back to {result['provider']}"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return record | {
            "runtime": "torch CUDA stand-in (the PyTorch network, not the exported graph)",
            "why_not_onnxruntime_cuda": why_not,
            **torch_cuda_latency(net, feeds, runs, warmup),
        }
    result = onnxruntime_latency(onnx_path, feeds, "CPUExecutionProvider", runs, warmup)
    return record | {"runtime": "onnxruntime CPU (no GPU on this machine)", "why_not_gpu": why_not, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the exported .onnx")
    parser.add_argument("--checkpoint", required=True, help="the checkpoint it was exported from")
    parser.add_argument("--kind", required=True, choices=("refiner", "translator"))
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", default=None, help="also write the record here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    record = measure(args.model, args.checkpoint, args.kind, args.runs, args.warmup)
    text = json.dumps(record, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
