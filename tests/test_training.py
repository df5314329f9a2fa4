"""The refiner's training and export code, on a tiny synthetic set so it can't rot.

Data: two short clips of the built-in driving sequence (a public-domain portrait animated
by the warp), one mirrored, so the test needs nothing outside the repository.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training tests need the 'train' extra (torch)")


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    from realtime.frames import Output
    from realtime.sinks import FileSink
    from realtime.sources import BuiltinDriverSource

    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for name, mirror in (("driver_a", False), ("driver_b", True)):
        source = BuiltinDriverSource(320, 240, 25.0, seconds=2.0, paced=False, loop=False)
        sink = FileSink(str(folder / f"{name}.mp4"))
        sink.open(320, 240, 25.0)
        while (frame := source.read()) is not None:
            image = frame.image[:, ::-1].copy() if mirror else frame.image
            sink.send(Output(image=image, index=frame.index, t_capture=0.0))
        sink.close()
        paths.append(folder / f"{name}.mp4")
    return paths


@pytest.fixture(scope="module")
def tiny_run(tiny_clips, tmp_path_factory):
    from realtime.train.refiner import Config, train

    out = tmp_path_factory.mktemp("run")
    cfg = Config(
        data=[str(p) for p in tiny_clips],
        steps=40,
        batch=4,
        size=64,
        widths=(8, 16, 16, 24),
        pairs_per_clip=12,
        val_pairs_per_clip=4,
        cache_pairs=10,
        eval_every=20,
        gan_start=20,
        device="cpu",
        validation_clips=["driver_b"],
    )
    return out, cfg, train(cfg, out)


def test_training_loss_falls_and_stays_finite(tiny_run):
    out, cfg, result = tiny_run
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == cfg.steps and all(np.isfinite(losses))
    recon = [h["l1"] for h in result["history"]]
    assert np.mean(recon[-8:]) < 0.8 * np.mean(recon[:8])
    assert (out / "samples_000040.png").exists() and (out / "checkpoint.pt").exists()
    val = result["history"][-1]["val"]
    assert set(val) >= {"l1", "warp_l1", "mouth_l1", "warp_mouth_l1"}


def test_training_resumes_from_its_checkpoint(tiny_run):
    from realtime.train.refiner import train

    out, cfg, _ = tiny_run
    cfg.steps = 45
    result = train(cfg, out, resume=True)
    assert len(result["history"]) == 5  # continued at step 40, not from zero


def test_export_round_trip_matches_pytorch(tiny_run, tmp_path):
    from export.refiner import export_onnx, load_refiner, parity, write_card

    out, _, _ = tiny_run
    net, config, step = load_refiner(out / "refiner.pt")
    onnx_path = export_onnx(net, config["size"], tmp_path / "tiny.onnx")
    checks = parity(net, onnx_path, config["size"])
    assert checks["image_max_abs_diff"] < 1e-4 and checks["mask_max_abs_diff"] < 1e-4
    card = json.loads(write_card(onnx_path, config, step, {"parity_fp32": checks}).read_text())
    assert len(card["sha256"]) == 64 and card["crop"]["size"] == 64


def test_exported_model_runs_in_the_live_pipeline(tiny_run, tmp_path, builtin_avatar):
    from export.refiner import export_onnx, load_refiner
    from realtime import expression, mesh
    from realtime.blend import Blender
    from realtime.frames import Frame, Target
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.warp import WarpGenerator

    out, _, _ = tiny_run
    net, config, _ = load_refiner(out / "refiner.pt")
    path = export_onnx(net, config["size"], tmp_path / "tiny.onnx")
    warp = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    learned = OnnxRefinerGenerator(str(path), warp)
    assert learned.provider == "CPUExecutionProvider"
    pts = expression.open_mouth(builtin_avatar.landmarks[:, :2].astype(np.float64), 0.15)
    target = Target(
        frame=Frame(builtin_avatar.image, 0, 0.0), landmarks=mesh.with_mouth_centre(pts).astype(np.float32)
    )
    plain = Blender().process(warp.render(target))
    refined = Blender().process(learned.render(target))
    assert refined.shape == plain.shape
    changed = np.abs(refined.astype(int) - plain).max(axis=2) > 2
    assert changed.any()
    # Only around the face: the refiner's crop, never the far background.
    ys, xs = np.nonzero(changed)
    face = builtin_avatar.landmarks[:, :2]
    size = mesh.face_size(face)
    assert np.hypot(xs - face[:, 0].mean(), ys - face[:, 1].mean()).max() < 3.0 * size
