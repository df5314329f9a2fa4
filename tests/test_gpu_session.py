"""scripts/gpu_session.sh in its dry-run mode: the whole GPU window on this CPU, tiny.

The caches are prepared from ../shared/media (mediapipe), then the session runs every job with
mediapipe unimportable and CUDA hidden, as on the GPU image, and what it leaves in $OUT must be
what the device tool brings back: at most 8 files, each under 16 MiB, with the machine's
record, the summary, and per job a tar holding a resumable compact checkpoint and an ONNX
export that the runtime's own runner loads.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from realtime.train.runs import CheckpointTimer, TimeBudget

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
JOBS = ("cyclegan", "recycle", "refiner_continue", "refiner_quality")


def test_time_budget_deadline_and_checkpoint_timer():
    assert TimeBudget(0, deadline=time.time() - 5).spent()
    budget = TimeBudget(10, deadline=time.time() + 60)
    assert not budget.spent() and 55 < budget.max_s <= 60
    assert TimeBudget(0.5, deadline=time.time() + 600).max_s == 30
    assert TimeBudget(0).max_s == 0 and not TimeBudget(0).spent()
    timer = CheckpointTimer(0)
    assert not timer.due()
    timer = CheckpointTimer(1e-6)
    time.sleep(0.01)
    assert timer.due()
    timer.reset()
    assert CheckpointTimer(1).due() is False


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_dry_run_brings_back_checkpoints_exports_versions_and_summary(tmp_path):
    pytest.importorskip("torch", reason="training needs torch")
    pytest.importorskip("onnxruntime")
    if not MEDIA.is_dir():
        pytest.skip("needs ../shared/media")
    import torch

    from realtime.generators.onnx import OnnxRunner

    carry, out, runs = tmp_path / "carry", tmp_path / "out", tmp_path / "runs"
    script = REPO / "scripts" / "gpu_session.sh"
    env = {**os.environ, "OUT": str(out)}
    subprocess.run(
        ["bash", str(script), "--prepare", "--dry-run", "--out", str(carry)], env=env, check=True, timeout=300
    )
    manifest = json.loads((carry / "manifest.json").read_text())
    assert manifest["refiner_clips"] == 4 and set(manifest["swap"]) == {"a", "b"}
    done = subprocess.run(
        ["bash", str(script), "--dry-run", "--carry", str(carry), "--runs", str(runs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["environment.json", "summary.json", *(f"{j}.tar" for j in JOBS)])
    assert all((out / f).stat().st_size < 16 << 20 for f in files)
    environment = json.loads((out / "environment.json").read_text())
    assert environment["torch"]["version"] == torch.__version__
    assert environment["torch"]["cuda_available"] is False
    assert "CPUExecutionProvider" in environment["onnxruntime"]["available_providers"]
    assert "nvidia_smi" in environment and environment["pip_freeze"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["dry_run"]
    for name in JOBS:
        job = summary["jobs"][name]
        assert job["exit_code"] == 0, (name, job)
        assert job["steps"] == 2
        export = job["export"]
        assert "error" not in export, (name, export)
        assert export["latency"]["p50_ms"] > 0
        assert export["latency"]["runtime"].startswith("onnxruntime CPU")
        parity = export["parity"]["parity_fp32"]
        assert max(v for k, v in parity.items() if k.endswith("diff")) <= 1e-4

        with tarfile.open(out / f"{name}.tar") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        assert {"summary.json", "log.jsonl", "checkpoint_compact.pt", "export.json"} <= set(members)
        state = torch.load(io.BytesIO(members["checkpoint_compact.pt"]), weights_only=True)
        assert state["step"] == 2 and not any(k.startswith("opt") for k in state)
        onnx_name = "refiner.onnx" if name.startswith("refiner") else "translator.onnx"
        model = tmp_path / f"{name}.onnx"
        model.write_bytes(members[onnx_name])
        runner = OnnxRunner(str(model), ["CPUExecutionProvider"], warmup=0)
        feeds = {
            n: np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
            for n, i in runner.inputs.items()
        }
        outputs = runner.run(feeds)
        assert all(np.isfinite(v).all() for v in outputs.values())

    # The swap jobs kept the same step count; the continued refiner kept the shipped shape.
    continue_config = summary["jobs"]["refiner_continue"]["config"]
    assert continue_config["init"] == "weights/refiner.pt" and continue_config["widths"] == [16, 24, 32, 48]
    quality_config = summary["jobs"]["refiner_quality"]["config"]
    assert quality_config["size"] > continue_config["size"]
    assert summary["jobs"]["recycle"]["config"]["recycle"] is True

    # Afterwards, here: every tar becomes a run folder the exporters and evaluations read.
    from realtime.train.gpu_session import afterwards

    unpacked = tmp_path / "unpacked"
    afterwards(out, unpacked)
    for name in JOBS:
        assert (unpacked / f"gpu_{name}" / "checkpoint_compact.pt").is_file()
        assert json.loads((unpacked / f"gpu_{name}" / "summary.json").read_text())["steps"] == 2
    assert (unpacked / "gpu_summary.json").is_file() and (unpacked / "gpu_environment.json").is_file()

    # A compact checkpoint resumes training (optimizers restart): the next window goes on from it.
    from realtime.train.gpu_session import make_config
    from realtime.train.refiner import train

    resumed = runs / "refiner_continue"
    (resumed / "checkpoint.pt").unlink()
    (resumed / "checkpoint_compact.pt").rename(resumed / "checkpoint.pt")
    config = make_config(
        "refiner", {**json.loads((resumed / "job_config.json").read_text()), "steps": 3, "deadline": 0.0}
    )
    assert train(config, resumed, resume=True)["steps"] == 3
