"""Identity translation for swap mode (CycleGAN / Recycle-GAN): training, export, live path.

Data: two synthetic identities, both made from the built-in driving sequence (a public-domain
portrait animated by the warp): A as it is, B colour-shifted and mirrored. Nothing outside
the repository is needed.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from realtime import mesh
from realtime.crops import TRANSLATOR_INPUTS, TRANSLATOR_OUTPUTS

torch = pytest.importorskip("torch", reason="training tests need the 'train' extra (torch)")


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    from realtime.frames import Output
    from realtime.sinks import FileSink
    from realtime.sources import BuiltinDriverSource

    folder = tmp_path_factory.mktemp("identities")
    paths = {}
    for name in ("a", "b"):
        source = BuiltinDriverSource(320, 240, 25.0, seconds=2.0, paced=False, loop=False)
        sink = FileSink(str(folder / f"person_{name}.mp4"))
        sink.open(320, 240, 25.0)
        while (frame := source.read()) is not None:
            image = frame.image
            if name == "b":  # another "person": warm tint, mirrored
                image = np.clip(image[:, ::-1].astype(np.float32) * [0.55, 0.85, 1.25] + [0, 10, 25], 0, 255)
                image = image.astype(np.uint8)
            sink.send(Output(image=np.ascontiguousarray(image), index=frame.index, t_capture=0.0))
        sink.close()
        paths[name] = folder / f"person_{name}.mp4"
    return paths


def _tiny_config(identities, **kw):
    from realtime.train.cyclegan import Config

    return Config(
        a=[str(identities["a"])],
        b=[str(identities["b"])],
        size=32,
        width=8,
        n_res=1,
        disc_width=8,
        pred_width=8,
        batch=2,
        steps=30,
        eval_every=15,
        device="cpu",
        **kw,
    )


@pytest.fixture(scope="module")
def cyclegan_run(identities, tmp_path_factory):
    from realtime.export.translator import export_run
    from realtime.train.cyclegan import train

    out = tmp_path_factory.mktemp("cyclegan")
    cfg = _tiny_config(identities)
    result = train(cfg, out)
    assert "export" not in result  # training never exports: the CLI does, as here
    result["export"] = export_run(out, record=True)
    return out, cfg, result


@pytest.fixture(scope="module")
def recycle_run(identities, cyclegan_run, tmp_path_factory):
    from realtime.train.cyclegan import train

    out = tmp_path_factory.mktemp("recycle")
    cfg = _tiny_config(identities, recycle=True, export=False)
    # The first run's clip caches (.npz) stand in for the videos: no second tracking pass.
    cache = cyclegan_run[0] / "cache"
    cfg.a, cfg.b = [str(cache / "a" / "person_a.npz")], [str(cache / "b" / "person_b.npz")]
    return out, cfg, train(cfg, out)


def _falls(history, key, factor=0.9):
    values = [h[key] for h in history]
    return np.mean(values[-6:]) < factor * np.mean(values[:6])


def test_cyclegan_trains_with_finite_falling_losses(cyclegan_run):
    out, cfg, result = cyclegan_run
    history = result["history"]
    assert len(history) == cfg.steps
    assert all(np.isfinite([h[k] for h in history for k in ("loss", "adv", "cycle", "identity", "disc")]))
    assert _falls(history, "cycle") and _falls(history, "identity")
    assert (out / "samples_000030.png").exists() and (out / "checkpoint.pt").exists()
    # The last ~15% of every video is held out of training.
    for clip in result["a"] + result["b"]:
        assert clip["held_out_frames"] >= 0.1 * clip["frames"] and clip["train_frames"] > 0
    assert set(history[-1]["val"]) == {"cycle_a", "identity_a", "cycle_b", "identity_b"}


def test_recycle_gan_trains_with_finite_falling_losses(recycle_run):
    _, cfg, result = recycle_run
    history = result["history"]
    assert len(history) == cfg.steps and result["recycle"]
    assert all(np.isfinite([h[k] for h in history for k in ("loss", "recurrent", "recycle", "cycle")]))
    assert _falls(history, "recurrent") and _falls(history, "recycle") and _falls(history, "cycle")


def test_training_resumes_from_its_checkpoint(recycle_run):
    from realtime.train.cyclegan import train

    out, cfg, _ = recycle_run
    cfg.steps = 33
    result = train(cfg, out, resume=True)
    assert len(result["history"]) == 3  # continued at step 30, not from zero


def test_export_round_trip_matches_pytorch(cyclegan_run):
    out, cfg, result = cyclegan_run
    export = result["export"]
    assert export["parity_fp32"]["image_max_abs_diff"] < 1e-4
    assert json.loads((out / "summary.json").read_text())["export"] == export
    card = json.loads((out / "translator.json").read_text())
    assert card["kind"] == "translator" and card["crop"]["size"] == cfg.size and len(card["sha256"]) == 64
    assert card["identities"]["a"] == ["person_a"] and card["identities"]["b"] == ["person_b"]
    import onnx

    model = onnx.load(str(out / "translator.onnx"))
    assert [i.name for i in model.graph.input] == list(TRANSLATOR_INPUTS)
    assert [o.name for o in model.graph.output] == list(TRANSLATOR_OUTPUTS)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, cfg.size, cfg.size]


def test_aligned_crop_shrinks_big_faces_without_moving_them():
    from realtime.avatar import builtin_portrait
    from realtime.crops import CropSpec, alignment
    from realtime.generators.translator import aligned_crop
    from realtime.tracking import find_face

    image = cv2.resize(builtin_portrait(), (1024, 1024))
    landmarks = find_face(image)
    spec = CropSpec(48)
    crop, matrix = aligned_crop(image, landmarks[:, :2], spec)
    assert np.allclose(matrix, alignment(landmarks[:, :2], spec))
    reference = cv2.warpAffine(cv2.GaussianBlur(image, (0, 0), 3), matrix, (48, 48), flags=cv2.INTER_LINEAR)
    assert np.abs(crop.astype(float) - reference).mean() < 8.0


def test_swap_mode_runs_the_exported_translator_end_to_end(cyclegan_run, builtin_avatar):
    from realtime.controls import Controls
    from realtime.frames import Frame
    from realtime.generators.registry import build_generators
    from realtime.generators.translator import TranslatorGenerator
    from realtime.generators.warp import WarpGenerator
    from realtime.metrics import Metrics
    from realtime.pipeline import FrameProcessor
    from realtime.sources import BuiltinDriverSource
    from realtime.tracking import FaceTracker

    out, _, _ = cyclegan_run
    generators = build_generators(str(out / "translator.onnx"), builtin_avatar)
    assert isinstance(generators.for_mode("swap"), TranslatorGenerator)
    assert isinstance(generators.for_mode("reenact"), WarpGenerator)  # reenact keeps the warp
    processor = FrameProcessor(
        builtin_avatar, generators, FaceTracker(), Controls(mode="swap"), Metrics(), (640, 480)
    )
    source = BuiltinDriverSource(640, 480, 25.0, seconds=0.4, paced=False, loop=False)
    judge = FaceTracker(smoothing=False, track_width=0)
    changed_any = False
    try:
        while (frame := source.read()) is not None:
            image = frame.image
            output = processor.process(Frame(image, frame.index, frame.index / 25.0)).image
            assert output.shape == image.shape
            changed = np.abs(output.astype(int) - image).max(axis=2) > 3
            if not changed.any():
                continue
            changed_any = True
            # Only inside the face outline of this frame, never the background.
            landmarks = judge.detect(image)[0]
            oval = np.zeros(image.shape[:2], np.uint8)
            cv2.fillPoly(oval, [np.round(landmarks[mesh.face_oval(), :2]).astype(np.int32)], 255)
            oval = cv2.dilate(oval, np.ones((9, 9), np.uint8))
            assert (changed & (oval == 0)).sum() == 0
    finally:
        processor.close()
        judge.close()
    assert changed_any
    assert processor.metrics.errors.get("generate", 0) == 0  # no fallback to the warp


def test_cli_render_swap_with_translator(cyclegan_run, identities, tmp_path):
    from realtime.analysis import video_frame_count
    from realtime.cli import main

    out, _, _ = cyclegan_run
    video = tmp_path / "swapped.mp4"
    code = main(
        [
            "render",
            "--avatar",
            "builtin",
            "--driver",
            str(identities["a"]),
            "--out",
            str(video),
            "--mode",
            "swap",
            "--generator",
            str(out / "translator.onnx"),
            "--metrics-json",
            str(tmp_path / "m.json"),
        ]
    )
    assert code == 0
    assert video_frame_count(str(video)) == video_frame_count(str(identities["a"]))
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["generator"] == "translator"


def test_cli_parses_train_swap():
    from realtime.cli import build_parser

    args = build_parser().parse_args(
        [
            "train",
            "swap",
            "--a",
            "x.mp4",
            "--b",
            "y.mp4",
            "z/",
            "--out",
            "runs/s",
            "--recycle",
            "--size",
            "64",
            "--steps",
            "10",
        ]
    )
    assert args.model == "swap" and args.recycle and args.b == ["y.mp4", "z/"] and args.size == 64
