"""The refiner's training and export code, on a tiny synthetic set so it can't rot.

Data: two short clips of the built-in driving sequence (a public-domain portrait animated
by the warp), one mirrored, so the test needs nothing outside the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from realtime.crops import IN_DRIVER, OUT_FLOW, REFINER_FLOW_OUTPUTS, REFINER_OUTPUTS

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


def tiny_config(clips, **overrides):
    from realtime.train.refiner import Config

    settings = dict(
        data=[str(p) for p in clips],
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
    return Config(**(settings | overrides))


@pytest.fixture(scope="module")
def tiny_run(tiny_clips, tmp_path_factory):
    from realtime.train.refiner import train

    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(tiny_clips)
    return out, cfg, train(cfg, out)


def test_training_loss_falls_and_stays_finite(tiny_run):
    out, cfg, result = tiny_run
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == cfg.steps and all(np.isfinite(losses))
    recon = [h["l1"] for h in result["history"]]
    assert np.mean(recon[-8:]) < 0.8 * np.mean(recon[:8])
    assert (out / "samples_000040.png").exists() and (out / "checkpoint.pt").exists()
    # The best validation checkpoint is kept beside the last one, as a plain state dict.
    best = torch.load(out / "refiner_best.pt", weights_only=True)
    assert best["step"] in (20, 40) and set(best) == {"model", "step", "config"}
    val = result["history"][-1]["val"]
    assert set(val) >= {"l1", "warp_l1", "mouth_l1", "warp_mouth_l1"}


def test_training_resumes_from_its_checkpoint(tiny_run):
    from realtime.train.refiner import train

    out, cfg, _ = tiny_run
    cfg.steps = 45
    result = train(cfg, out, resume=True)
    assert len(result["history"]) == 5  # continued at step 40, not from zero


def test_a_run_can_start_from_another_runs_model_and_anneal(tiny_run, tiny_clips, tmp_path):
    from realtime.train.refiner import train

    out, _, first = tiny_run
    cfg = tiny_config(
        tiny_clips, steps=6, eval_every=3, lr=1e-3, schedule="cosine", init=str(out / "refiner.pt")
    )
    result = train(cfg, tmp_path / "anneal")
    fresh_start = np.mean([h["l1"] for h in first["history"][:3]])
    warm_start = np.mean([h["l1"] for h in result["history"][:3]])
    assert warm_start < 0.8 * fresh_start  # it began where the other run ended, not from scratch
    state = torch.load(tmp_path / "anneal" / "checkpoint.pt", weights_only=True)
    last_lr = state["opt_g"]["param_groups"][0]["lr"]
    assert last_lr < 0.1 * cfg.lr  # the cosine schedule has brought the rate down to near 0


def test_bf16_training_on_the_cpu_follows_the_float32_run_and_saves_float32_weights(
    tiny_run, tiny_clips, tmp_path
):
    from realtime.train.refiner import train

    out, _, _ = tiny_run
    runs = {}
    for bf16 in (False, True):
        cfg = tiny_config(tiny_clips, steps=6, eval_every=6, init=str(out / "refiner.pt"), bf16=bf16)
        runs[bf16] = train(cfg, tmp_path / f"bf16_{bf16}")
    losses = {bf16: np.array([h["loss"] for h in r["history"]]) for bf16, r in runs.items()}
    assert np.isfinite(losses[True]).all()
    # bf16 keeps 8 bits of mantissa: the same steps, the loss within a few percent, not equal
    assert np.abs(losses[True] - losses[False]).max() < 0.05 * losses[False].max()
    assert not np.array_equal(losses[True], losses[False])
    state = torch.load(tmp_path / "bf16_True" / "refiner.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())


def test_a_narrow_model_grows_wider_computing_the_same_function(tiny_run, tiny_clips, tmp_path):
    from realtime.crops import CropSpec
    from realtime.train import models
    from realtime.train.data import make_dataset
    from realtime.train.refiner import to_tensors, train

    out, cfg, first = tiny_run
    narrow = models.Refiner(cfg.widths, cfg.size).eval()
    narrow.load_state_dict(torch.load(out / "refiner.pt", weights_only=True)["model"])
    wide = models.Refiner((16, 24, 32, 40), cfg.size).eval()
    models.widen_refiner(narrow.state_dict(), wide, noise=0.0)
    real = make_dataset([out / "cache" / "driver_b.npz"], 4, CropSpec(cfg.size), seed=1)
    b = to_tensors({k: v for k, v in real.items() if k.endswith("0")}, torch.device("cpu"))
    inputs = (b["warped0"], b["source0"], b["landmarks0"], b["fill0"])
    with torch.no_grad():
        (image_narrow, mask_narrow), (image_wide, mask_wide) = narrow(*inputs), wide(*inputs)
    assert sum(p.numel() for p in wide.parameters()) > 2 * sum(p.numel() for p in narrow.parameters())
    assert float((image_wide - image_narrow).abs().max()) < 1e-5
    assert float((mask_wide - mask_narrow).abs().max()) < 1e-5
    # Training a wider model from the narrow checkpoint starts where the narrow one ended.
    grown = train(
        tiny_config(tiny_clips, steps=3, eval_every=3, widths=(16, 24, 32, 40), init=str(out / "refiner.pt")),
        tmp_path / "wide",
    )
    fresh_start = np.mean([h["l1"] for h in first["history"][:3]])
    assert np.mean([h["l1"] for h in grown["history"]]) < 0.8 * fresh_start
    with pytest.raises(ValueError, match="cannot narrow"):
        models.widen_refiner(wide.state_dict(), models.Refiner(cfg.widths, cfg.size))


def test_mouth_boost_weighs_the_mouth_more_in_the_loss(tiny_run, tiny_clips, tmp_path):
    from realtime.train.refiner import train

    out, _, _ = tiny_run
    first_l1 = {}
    for boost in (1.0, 3.0):
        cfg = tiny_config(tiny_clips, steps=1, eval_every=1, init=str(out / "refiner.pt"), mouth_boost=boost)
        first_l1[boost] = train(cfg, tmp_path / f"boost{boost}")["history"][0]["l1"]
    # Same model, same batch: only the mouth's weight differs, and the mouth has errors.
    assert first_l1[3.0] > 1.1 * first_l1[1.0]


def test_export_round_trip_matches_pytorch(tiny_run, tmp_path):
    from realtime.export.refiner import export_onnx, load_refiner, parity, write_card

    out, _, _ = tiny_run
    net, config, step = load_refiner(out / "refiner.pt")
    onnx_path = export_onnx(net, config["size"], tmp_path / "tiny.onnx")
    checks = parity(net, onnx_path, config["size"])
    assert checks["image_max_abs_diff"] < 1e-4 and checks["mask_max_abs_diff"] < 1e-4
    card = json.loads(write_card(onnx_path, config, step, {"parity_fp32": checks}).read_text())
    assert len(card["sha256"]) == 64 and card["crop"]["size"] == 64


def test_exported_model_runs_in_the_live_pipeline(tiny_run, tmp_path, builtin_avatar):
    from realtime import expression, mesh
    from realtime.blend import Blender
    from realtime.export.refiner import export_onnx, load_refiner
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


@pytest.fixture(scope="module")
def tiny_region_run(tiny_clips, tmp_path_factory):
    from realtime.train.refiner import train

    out = tmp_path_factory.mktemp("region_run")
    cfg = tiny_config(tiny_clips, **REGION_SETTINGS)
    return out, cfg, train(cfg, out)


REGION_SETTINGS = dict(
    layout="regions",
    steps=30,
    batch=6,
    size=32,
    widths=(8, 8, 16, 16),
    pairs_per_clip=8,
    eval_every=15,
    gan_start=15,
)


def test_region_validation_averages_each_region_over_the_crops_that_show_it(tiny_region_run):
    from realtime.crops import CropSpec
    from realtime.train import models
    from realtime.train.data import make_dataset
    from realtime.train.refiner import MOUTH_WEIGHT, evaluate

    out, cfg, _ = tiny_region_run
    val = make_dataset([out / "cache" / "driver_b.npz"], 4, CropSpec(cfg.size, layout="regions"), seed=3)
    scores = evaluate(models.Refiner(cfg.widths, cfg.size), val, torch.device("cpu"))
    # The warp's scores by hand: crops come mouth, right eye, left eye per sample.
    error = np.abs(val["warped0"].astype(np.float32) - val["target0"].astype(np.float32)).mean(-1) / 255
    weight = val["weight0"]
    mouth_crops = error[0::3]
    mouth = weight[0::3] >= MOUTH_WEIGHT
    expected = np.mean([e[m].mean() for e, m in zip(mouth_crops, mouth, strict=True)])
    assert not (weight[1::3] >= MOUTH_WEIGHT).any()  # the eye crops show no mouth
    assert scores["warp_mouth_l1"] == pytest.approx(expected, abs=2e-5)
    assert scores["warp_l1"] == pytest.approx(error.mean(), abs=2e-5)


def test_region_crops_centre_the_mouth_and_mirror_the_left_eye(builtin_avatar):
    from realtime import mesh
    from realtime.crops import REGIONS, CropSpec, crop_matrices

    points = mesh.with_mouth_centre(builtin_avatar.landmarks[:, :2].astype(np.float64))
    spec = CropSpec(48, layout="regions")
    matrices = crop_matrices(points, spec)
    assert len(matrices) == len(REGIONS) == 3
    local = [points @ m[:, :2].T + m[:, 2] for m in matrices]
    mouth, right, left = local
    assert np.allclose(mouth[mesh.OUTER_LIP].mean(axis=0), 24.0, atol=1e-6)
    assert np.all((mouth[mesh.OUTER_LIP] > 0) & (mouth[mesh.OUTER_LIP] < 48))
    for eye, loop in ((right, mesh.RIGHT_EYE), (left, mesh.LEFT_EYE)):
        assert np.all((eye[loop] > 0) & (eye[loop] < 48))
    # Mirrored: each eye's outer corner lands on the same side of its crop.
    assert (right[mesh.RIGHT_EYE_OUTER, 0] < 24) == (left[mesh.LEFT_EYE_OUTER, 0] < 24)
    # Same scale for both eyes: the crops differ only by the mirror.
    assert np.isclose(abs(np.linalg.det(matrices[1][:, :2])), abs(np.linalg.det(matrices[2][:, :2])))


def test_region_refiner_trains_exports_and_touches_only_mouth_and_eyes(
    tiny_region_run, tmp_path, builtin_avatar
):
    from realtime import expression, mesh
    from realtime.export.refiner import crops_per_frame, export_onnx, load_refiner, parity, write_card
    from realtime.frames import Frame, Target
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.warp import WarpGenerator

    out, cfg, result = tiny_region_run
    recon = [h["l1"] for h in result["history"]]
    assert all(np.isfinite(recon)) and np.mean(recon[-6:]) < np.mean(recon[:6])
    net, config, step = load_refiner(out / "refiner.pt")
    crops = crops_per_frame(config)
    assert crops == 3
    path = export_onnx(net, config["size"], tmp_path / "regions.onnx", crops=crops)
    checks = parity(net, path, config["size"], crops=crops)
    assert checks["image_max_abs_diff"] < 1e-4
    write_card(path, config, step, {"parity_fp32": checks})  # the runtime reads the layout from it

    warp = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    learned = OnnxRefinerGenerator(str(path), warp)
    assert learned.spec.layout == "regions"
    pts = mesh.with_mouth_centre(
        expression.open_mouth(builtin_avatar.landmarks[:, :2].astype(np.float64), 0.15)
    )
    target = Target(frame=Frame(builtin_avatar.image, 0, 0.0), landmarks=pts.astype(np.float32))
    assert_changes_only_inside_the_crops(warp, learned, target)


def assert_changes_only_inside_the_crops(warp, learned, target) -> None:
    import cv2

    from realtime.blend import Blender
    from realtime.crops import crop_matrices

    plain = Blender().process(warp.render(target))
    refined = Blender().process(learned.render(target))
    changed = np.abs(refined.astype(int) - plain).max(axis=2) > 2
    assert changed.any()
    # Every changed pixel lies inside one of the three crops.
    inside = np.zeros(changed.shape, bool)
    size = learned.spec.size
    for matrix in crop_matrices(target.landmarks, learned.spec):
        corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64)
        inverse = np.vstack([matrix, [0, 0, 1]])
        quad = (np.linalg.inv(inverse)[:2, :2] @ corners.T).T + np.linalg.inv(inverse)[:2, 2]
        mask = np.zeros(changed.shape, np.uint8)
        cv2.fillConvexPoly(mask, np.round(quad).astype(np.int32), 1)
        inside |= cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)
    assert not (changed & ~inside).any()


def export_three_crops(net, config: dict, step: int, path, outputs: tuple[str, ...]) -> tuple[object, dict]:
    """Export with the region layout's 3 crops, check parity on ``outputs``, write the card."""
    from realtime.export.refiner import export_onnx, parity, write_card

    path = export_onnx(net, config["size"], path, crops=3)
    checks = parity(net, path, config["size"], crops=3)
    assert max(checks[f"{name}_max_abs_diff"] for name in outputs) < 1e-4
    return path, json.loads(write_card(path, config, step, {"parity_fp32": checks}).read_text())


def open_mouth_points(avatar) -> np.ndarray:
    from realtime import expression, mesh

    points = expression.open_mouth(avatar.landmarks[:, :2].astype(np.float64), 0.15)
    return mesh.with_mouth_centre(points).astype(np.float32)


def mouth_rule_setup(run_folder: Path, folder: Path, avatar, rule: str):
    """The tiny region refiner exported with the card rule ``rule`` on the mouth, and the warp of
    ``avatar`` with its mouth open: (net, onnx path, card, warp, target, the warp's blended frame)."""
    from realtime.blend import Blender
    from realtime.export.refiner import export_onnx, load_refiner, write_card
    from realtime.frames import Frame, Target
    from realtime.generators.warp import WarpGenerator

    net, config, step = load_refiner(run_folder / "refiner.pt")
    path = export_onnx(net, config["size"], folder / f"{rule}.onnx", crops=3)
    card = json.loads(write_card(path, config | {rule: "mouth"}, step, {}).read_text())
    assert card[rule] == ["mouth"]
    warp = WarpGenerator(avatar.image, avatar.landmarks)
    target = Target(frame=Frame(avatar.image, 0, 0.0), landmarks=open_mouth_points(avatar))
    plain = Blender().process(warp.render(target)).astype(int)
    return net, path, card, warp, target, plain


def test_a_flow_refiner_starts_as_the_plain_one_learns_to_move_pixels_and_runs_live(
    tiny_region_run, tiny_clips, tmp_path, builtin_avatar
):
    from realtime.crops import CropSpec
    from realtime.export.refiner import load_refiner
    from realtime.frames import Frame, Target
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.warp import WarpGenerator
    from realtime.train import models
    from realtime.train.data import make_dataset
    from realtime.train.refiner import to_tensors, train

    out, cfg, _ = tiny_region_run
    real = make_dataset([out / "cache" / "driver_b.npz"], 4, CropSpec(cfg.size, layout="regions"), seed=2)
    b = to_tensors({k: v for k, v in real.items() if k.endswith("0")}, torch.device("cpu"))
    inputs = (b["warped0"], b["source0"], b["landmarks0"], b["fill0"])
    plain, _, _ = load_refiner(out / "refiner.pt")
    flowing = models.Refiner(cfg.widths, cfg.size, flow=True).eval()
    models.add_flow(plain.state_dict(), flowing)
    with torch.no_grad():
        (image_plain, _), (image_flowing, _, flow) = plain(*inputs), flowing(*inputs)
    assert float((image_flowing - image_plain).abs().max()) < 1e-5 and not flow.any()

    settings = REGION_SETTINGS | dict(steps=8, eval_every=4, lr=3e-3, flow=True, init=str(out / "refiner.pt"))
    result = train(tiny_config(tiny_clips, **settings), tmp_path / "flow")
    assert all(np.isfinite(h["loss"]) for h in result["history"])
    net, config, step = load_refiner(tmp_path / "flow" / "refiner.pt")
    with torch.no_grad():
        flow = net(*inputs)[2]
    assert config["flow"] and float(flow.abs().max()) > 0.01  # pixels now move (crop pixels)
    assert float(flow.abs().max()) <= models.Refiner.MAX_FLOW * cfg.size + 1e-6
    path, card = export_three_crops(net, config, step, tmp_path / "flow.onnx", REFINER_FLOW_OUTPUTS)
    assert OUT_FLOW in card["outputs"]

    warp = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    learned = OnnxRefinerGenerator(str(path), warp)
    target = Target(frame=Frame(builtin_avatar.image, 0, 0.0), landmarks=open_mouth_points(builtin_avatar))
    assert_changes_only_inside_the_crops(warp, learned, target)


def test_the_driver_map_shows_only_the_openings_and_ignores_the_lighting(builtin_avatar):
    """What a driver refiner sees of the user: grey levels inside the mouth and eye openings
    relative to the face around them, so a darker room gives (nearly) the same map."""
    from realtime import mesh
    from realtime.crops import CropSpec, crop_matrices, driver_map, fill_mask

    spec = CropSpec(48, layout="regions")
    points = mesh.with_mouth_centre(builtin_avatar.landmarks[:, :2].astype(np.float64))
    darker = (builtin_avatar.image.astype(np.float32) * 0.6).round().astype(np.uint8)
    for matrix in crop_matrices(points, spec):
        bright = driver_map(builtin_avatar.image, points, matrix, spec)
        openings = fill_mask(points @ matrix[:, :2].T + matrix[:, 2], spec) > 0
        assert openings.any() and np.array_equal(bright > 0, openings)
        dim = driver_map(darker, points, matrix, spec).astype(int)
        assert np.median(np.abs(dim - bright)[openings]) <= 2
        assert np.abs(dim - bright)[openings].mean() < 4
        # Relative, not absolute: the astronaut's openings are darker than her skin.
        assert np.median(bright[openings]) < 128


def test_a_driver_refiner_starts_as_the_plain_one_learns_to_use_the_users_mouth_and_runs_live(
    tiny_region_run, tiny_clips, tmp_path, builtin_avatar
):
    from realtime.blend import Blender
    from realtime.crops import CropSpec
    from realtime.export.refiner import load_refiner
    from realtime.frames import Frame, Target
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.warp import WarpGenerator
    from realtime.train import models
    from realtime.train.data import make_dataset
    from realtime.train.refiner import to_tensors, train

    out, cfg, _ = tiny_region_run
    real = make_dataset([out / "cache" / "driver_b.npz"], 4, CropSpec(cfg.size, layout="regions"), seed=2)
    b = to_tensors({k: v for k, v in real.items() if k.endswith("0")}, torch.device("cpu"))
    assert b["driver0"].shape == b["fill0"].shape and bool((b["driver0"] > 0).any())
    inputs = (b["warped0"], b["source0"], b["landmarks0"], b["fill0"])
    plain, _, _ = load_refiner(out / "refiner.pt")
    seeing = models.Refiner(cfg.widths, cfg.size, driver=True).eval()
    seeing.load_state_dict(models.with_driver_input(plain.state_dict()))
    with torch.no_grad():
        image_plain, image_seeing = plain(*inputs)[0], seeing(*inputs, b["driver0"])[0]
    assert float((image_seeing - image_plain).abs().max()) < 1e-5

    settings = REGION_SETTINGS | dict(
        steps=8, eval_every=4, lr=3e-3, driver=True, init=str(out / "refiner.pt")
    )
    result = train(tiny_config(tiny_clips, **settings), tmp_path / "driver")
    assert all(np.isfinite(h["loss"]) for h in result["history"])
    net, config, step = load_refiner(tmp_path / "driver" / "refiner.pt")
    with torch.no_grad():
        seen, blind = net(*inputs, b["driver0"])[0], net(*inputs, torch.zeros_like(b["driver0"]))[0]
    assert config["driver"] and float((seen - blind).abs().max()) > 1e-3  # it uses what it sees
    with torch.no_grad():  # 8 steps learn little: louder, so that live it shows in grey levels
        net.enc0[0][0].weight[:, -1] *= 100.0
    path, card = export_three_crops(net, config, step, tmp_path / "driver.onnx", REFINER_OUTPUTS)
    assert IN_DRIVER in card["inputs"]

    # Live: the user is the astronaut; the avatar her own still image, its mouth opened.
    warp = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    learned = OnnxRefinerGenerator(str(path), warp)
    frame, points = Frame(builtin_avatar.image, 0, 0.0), open_mouth_points(builtin_avatar)
    user = builtin_avatar.landmarks[:, :2].astype(np.float32)
    seeing_target = Target(frame=frame, landmarks=points, driver_landmarks=user)
    blind_target = Target(frame=frame, landmarks=points)
    assert_changes_only_inside_the_crops(warp, learned, seeing_target)
    with_user = Blender().process(learned.render(seeing_target)).astype(int)
    without = Blender().process(learned.render(blind_target)).astype(int)
    assert np.abs(with_user - without).max() > 2  # the user's openings reach the output


def test_promotion_needs_every_check_of_the_bar():
    from realtime.export.promote import verdict

    def result(l1, ssim, mouth, clips):
        return {
            "mean": {"l1": l1, "ssim": ssim, "mouth_l1": mouth},
            "clips": [{"clip": f"c{k}", "l1": v} for k, v in enumerate(clips)],
        }

    warp = result(0.030, 0.85, 0.060, [0.02, 0.04])
    assert verdict(warp, result(0.028, 0.86, 0.045, [0.019, 0.037]))["checks"]["beats_warp"]
    # Mouth only 0.85x the warp's: not enough.
    assert not verdict(warp, result(0.028, 0.86, 0.051, [0.019, 0.037]))["checks"]["beats_warp"]
    # Better on average but one clip 1.1x worse.
    losing_clip = verdict(warp, result(0.028, 0.86, 0.045, [0.022, 0.030]))
    assert not losing_clip["checks"]["clips_ok"] and losing_clip["clip_l1_ratios"]["c0"] == 1.1


@pytest.mark.parametrize("clip_name", ["clips/IP_LAP_ip_lap_129.mp4", "clips/LipNet_grid_bbaf2n.mpg"])
def test_retargeted_pairs_aim_where_the_live_retargeter_would(clip_name, tmp_path):
    """Real talking heads: with any frame as the avatar and the clip driving it, the
    retargeter's landmarks land near the real face, differ from it, and follow its mouth."""
    from realtime import mesh
    from realtime.analysis import pearson
    from realtime.train.data import ClipCache, build_clip_cache, driver_neutral, retargeted_landmarks
    from tests.conftest import media

    clip = ClipCache.load(build_clip_cache(media(clip_name), tmp_path, pairs=20))
    neutral = driver_neutral(clip)
    # The settled neutral has the clip's most closed mouth (lips together).
    assert mesh.mouth_opening(neutral) <= min(mesh.mouth_opening(lm) for lm in clip.landmarks) + 0.01
    rng = np.random.default_rng(0)
    distances, real_opening, aimed_opening = [], [], []
    for source in rng.choice(len(clip.landmarks), 4, replace=False):
        targets = tuple(range(len(clip.landmarks)))
        for target, aim in zip(
            targets, retargeted_landmarks(clip, neutral, int(source), targets), strict=True
        ):
            distances.append(mesh.landmark_distance(aim, clip.landmarks[target]))
            real_opening.append(mesh.mouth_opening(clip.landmarks[target]))
            aimed_opening.append(mesh.mouth_opening(aim))
    assert 0.002 < np.median(distances) < 0.04
    assert pearson(np.array(real_opening), np.array(aimed_opening)) > 0.9


def test_retargeted_share_changes_the_aims_not_the_ground_truth(tiny_run):
    from realtime.crops import CropSpec
    from realtime.train.data import ClipCache, make_sample

    out, _, _ = tiny_run
    clip = ClipCache.load(out / "cache" / "driver_a.npz")
    spec = CropSpec(48, layout="regions")
    real = make_sample(clip, 0, 5, spec)
    aim = clip.landmarks[5].copy()
    aim[:, 0] += 0.05 * (aim[:, 0].max() - aim[:, 0].min())  # the retargeter put the face off by a bit
    shifted = make_sample(clip, 0, 5, spec, aim)
    for a, b in zip(real, shifted, strict=True):
        # Crops are cut on the aimed landmarks (as live), so the landmark map matches...
        assert np.array_equal(a["landmarks"], b["landmarks"])
        # ...while the real face, and the loss weights that follow it, sit elsewhere in the crop.
        assert np.abs(a["target"].astype(int) - b["target"]).mean() > 2
        assert not np.array_equal(a["weight"], b["weight"])


def test_motion_targets_carry_the_warp_onto_a_real_face_and_mirror_with_the_flip(tmp_path):
    """The optical-flow targets a flow refiner learns from, on a real talking head: moving
    the warped mouth crop by them brings it closer to the real mouth, the trust map is a
    weight in [0, 1], and the flip augmentation mirrors them with the images."""
    from realtime.crops import CropSpec, displace
    from realtime.train.data import build_clip_cache, make_pairs
    from realtime.train.refiner import augment, to_tensors
    from tests.conftest import media

    cache = build_clip_cache(media("clips/IP_LAP_ip_lap_129.mp4"), tmp_path, pairs=20)
    pairs = make_pairs(cache, 12, CropSpec(48, layout="regions"), seed=0, motion=True)
    assert "motion0" in pairs and "motion1" not in pairs  # the first frame of each pair only
    motion, warped, target = (pairs[k].astype(np.float32) for k in ("motion0", "warped0", "target0"))
    mouth = pairs["weight0"] >= 4.5
    before, after = [], []
    for k in range(0, len(warped), 3):  # mouth crops
        before.append(np.abs(warped[k] - target[k]).mean(-1)[mouth[k]].mean())
        after.append(np.abs(displace(warped[k], motion[k]) - target[k]).mean(-1)[mouth[k]].mean())
    assert np.mean(after) < 0.9 * np.mean(before)
    assert np.abs(motion).max() > 0.5  # crop pixels: something really moves

    batch = to_tensors({k: v[:6] for k, v in pairs.items()}, torch.device("cpu"))
    trust = batch["motion_trust0"]
    assert trust.shape == (6, 1, 48, 48) and 0.0 <= float(trust.min()) and float(trust.max()) <= 1.0
    # Find a seed whose coin flips every sample, then check the mirrored motion still works.
    seed = next(
        s for s in range(100) if bool((torch.rand(6, generator=torch.Generator().manual_seed(s)) < 0.5).all())
    )
    flipped = augment(batch, torch.Generator().manual_seed(seed))
    mirrored = flipped["motion0"][0].permute(1, 2, 0).numpy()
    assert np.allclose(mirrored[:, ::-1, 0], -batch["motion0"][0, 0].numpy())
    image = batch["warped0"][0].permute(1, 2, 0).numpy()
    assert np.allclose(
        displace(np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mirrored))[:, ::-1],
        displace(image, batch["motion0"][0].permute(1, 2, 0).numpy()),
        atol=1e-4,
    )


def test_people_fall_into_exactly_one_of_train_selection_and_validation():
    """The shared clips split by person: nobody trains on a validation or selection face,
    and the checkpoint choice never sees a validation face."""
    from realtime.train.people import SELECTION_PEOPLE, VALIDATION_PEOPLE, person_of, split
    from tests.conftest import media

    # The training data: the talking-head clips and the webcam folder's videos.
    clips = sorted(media("clips").iterdir()) + sorted(media("webcam").glob("*.mp4"))
    train, selection, validation = split(clips)
    assert len(train) + len(selection) + len(validation) == len(clips)
    people = [{person_of(p) for p in group} for group in (train, selection, validation)]
    assert not (people[0] & people[1]) and not (people[0] & people[2]) and not (people[1] & people[2])
    assert people[1] == SELECTION_PEOPLE and people[2] == VALIDATION_PEOPLE  # every one has clips
    # A person with several clips stays in one group (MEAD actor W011: happy and neutral).
    assert {p.stem for p in validation} >= {"dreamtalk_mead_W011_happy", "dreamtalk_mead_W011_neutral"}


def test_saved_models_are_the_weight_average_and_resume_keeps_it(tiny_run):
    out, cfg, _ = tiny_run
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    saved = torch.load(out / "refiner.pt", weights_only=True)["model"]
    average, raw = checkpoint["average"], checkpoint["model"]
    assert all(torch.equal(saved[k], average[k]) for k in saved)
    # Averaged, not a copy of the last weights (40+ steps with the warm-up: decay ~0.8).
    assert max(float((average[k] - raw[k]).abs().max()) for k in raw) > 1e-4


def test_driver_swap_gives_examples_another_persons_openings_of_the_same_kind_and_size():
    from realtime.train.data import swap_drivers

    rows, crops = 60, 3  # two clips of 30 rows: mouth, right eye, left eye, ...
    clip_of_row = np.repeat([0, 1], 30)
    opening = np.arange(rows) % 10  # how open each example's target is (its fill mask area)
    data = {
        "fill0": np.repeat(opening[:, None, None], 4, axis=1).repeat(4, axis=2).astype(np.uint8),
        "driver0": np.arange(rows, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2),
        "driver1": (100 + np.arange(rows, dtype=np.uint8))[:, None, None].repeat(4, 1).repeat(4, 2),
    }
    before = data["driver0"].copy()
    swapped = swap_drivers(data, clip_of_row, crops, share=0.5, seed=3)
    changed = np.flatnonzero(data["driver0"][:, 0, 0] != before[:, 0, 0])
    assert 15 <= swapped <= 45 and len(changed) == swapped
    for row in changed:
        donor = int(data["driver0"][row, 0, 0])
        assert clip_of_row[donor] != clip_of_row[row]  # somebody else's openings
        assert donor % crops == row % crops  # of the same crop: a mouth for a mouth
        assert abs(opening[donor] - opening[row]) <= 1  # about as open
        assert int(data["driver1"][row, 0, 0]) == 100 + donor  # the pair's next frame from the same donor


def test_grey_augmentation_makes_whole_samples_black_and_white_and_costs_nothing_when_off():
    torch = pytest.importorskip("torch")
    from realtime.train.refiner import augment

    batch = {k: torch.rand(32, 3, 8, 8) for k in ("warped0", "target0", "source0")}
    plain = augment(batch, torch.Generator().manual_seed(1))
    again = augment(batch, torch.Generator().manual_seed(1), grey=0.0)
    assert all(torch.equal(plain[k], again[k]) for k in batch)  # off: the same random sequence
    grey = augment(batch, torch.Generator().manual_seed(1), grey=0.5)
    is_grey = [bool((grey["warped0"][i] == grey["warped0"][i][:1]).all()) for i in range(32)]
    assert 4 <= sum(is_grey) <= 28
    for i in range(32):  # the whole sample, all of its images, or none
        flags = {bool((grey[k][i] == grey[k][i][:1]).all()) for k in batch}
        assert len(flags) == 1


def test_painted_augmentation_smooths_whole_samples_and_costs_nothing_when_off():
    from realtime.train.refiner import augment

    batch = {k: torch.rand(32, 3, 8, 8) for k in ("warped0", "target0", "source0")}
    plain = augment(batch, torch.Generator().manual_seed(1))
    again = augment(batch, torch.Generator().manual_seed(1), style=0.0)
    assert all(torch.equal(plain[k], again[k]) for k in batch)  # off: the same random sequence
    painted = augment(batch, torch.Generator().manual_seed(1), style=0.5)
    roughness = {k: (v[..., 1:] - v[..., :-1]).abs().mean(dim=(1, 2, 3)) for k, v in painted.items()}
    plain_roughness = {k: (v[..., 1:] - v[..., :-1]).abs().mean(dim=(1, 2, 3)) for k, v in plain.items()}
    smoothed = roughness["warped0"] < 0.7 * plain_roughness["warped0"]
    assert 4 <= int(smoothed.sum()) <= 28
    for k in batch:  # the whole sample, all of its images, or none
        assert torch.equal(roughness[k] < 0.7 * plain_roughness[k], smoothed)


def test_perfect_warp_examples_show_the_real_frame_as_the_warp_and_some_as_the_avatar_too():
    torch = pytest.importorskip("torch")
    from realtime.train.refiner import with_perfect_warps

    keys = [f"{k}{s}" for k in ("warped", "target", "source") for s in (0, 1)]
    batch = {k: torch.rand(64, 3, 8, 8) for k in keys}
    out = with_perfect_warps(batch, 0.5, torch.Generator().manual_seed(3))
    perfect = [bool(torch.equal(out["warped0"][i], batch["target0"][i])) for i in range(64)]
    at_rest = [bool(torch.equal(out["source0"][i], batch["target0"][i])) for i in range(64)]
    assert 16 <= sum(perfect) <= 48
    assert 4 <= sum(at_rest) < sum(perfect)
    for i in range(64):
        # both frames of the pair alike; the avatar at rest only where the warp is perfect
        assert torch.equal(out["warped1"][i], batch["target1"][i]) == perfect[i]
        assert torch.equal(out["source1"][i], batch["target1"][i]) == at_rest[i]
        assert perfect[i] or (torch.equal(out["warped0"][i], batch["warped0"][i]) and not at_rest[i])
        assert torch.equal(out["target0"][i], batch["target0"][i])  # the truth never changes
    assert all(torch.equal(out[k], batch[k]) for k in keys if k.startswith("target"))


def test_the_training_loss_sees_the_correction_as_the_runtime_applies_it(builtin_avatar):
    import cv2

    from realtime import mesh
    from realtime.crops import CropSpec, crop_matrices, fill_mask
    from realtime.generators.onnx import CONFINES, region_gate
    from realtime.train.refiner import as_applied, opening_gate

    spec = CropSpec(48, layout="regions")
    points = open_mouth_points(builtin_avatar).astype(np.float64)
    for k, matrix in enumerate(crop_matrices(points, spec)):
        local = points @ matrix[:, :2].T + matrix[:, 2]
        fill = torch.from_numpy(fill_mask(local, spec)[None, None].astype(np.float32) / 255.0)
        runtime = region_gate(local, 48, [CONFINES["openings"][k]])
        assert runtime.max() > 0.9
        assert np.abs(opening_gate(fill)[0, 0].numpy() - runtime).max() < 0.02

    cfg = tiny_config([], layout="regions", size=48, correction="luma", confine="openings")
    local = points @ crop_matrices(points, spec)[0][:, :2].T + crop_matrices(points, spec)[0][:, 2]
    fill = fill_mask(local, spec)
    warped = torch.rand(1, 3, 48, 48)
    image = (warped + torch.tensor([0.3, -0.1, 0.05])[None, :, None, None]).clamp(0, 1)
    b = {"warped0": warped, "fill0": torch.from_numpy(fill[None, None].astype(np.float32) / 255.0)}
    applied = as_applied(cfg, image, b, 0)
    delta = (applied - warped)[0].numpy()
    far = cv2.dilate(fill, np.ones((9, 9), np.uint8)) == 0
    assert np.abs(delta[:, far]).max() < 1e-3  # outside the openings: the warp
    inside = fill > 0
    changed = inside & (warped[0].numpy() > 0.1).all(0) & (warped[0].numpy() < 0.9).all(0)
    assert np.allclose(delta[0, changed], delta[1, changed], atol=1e-5)  # brightness only
    assert np.allclose(delta[1, changed], delta[2, changed], atol=1e-5)
    assert mesh.INNER_LIP == CONFINES["openings"][0]


def test_a_confined_brightness_refiner_changes_only_the_openings_and_keeps_colours(
    tiny_region_run, tmp_path, builtin_avatar
):
    import cv2

    from realtime import mesh
    from realtime.blend import Blender
    from realtime.errors import UserError
    from realtime.export.refiner import export_onnx, load_refiner, write_card
    from realtime.frames import Frame, Target
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.warp import WarpGenerator

    out, _, _ = tiny_region_run
    net, config, step = load_refiner(out / "refiner.pt")
    path = export_onnx(net, config["size"], tmp_path / "confined.onnx", crops=3)
    card = json.loads(
        write_card(path, config | {"correction": "luma", "confine": "openings"}, step, {}).read_text()
    )
    assert card["correction"] == "luma" and card["confine"] == "openings"

    warp = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    target = Target(frame=Frame(builtin_avatar.image, 0, 0.0), landmarks=open_mouth_points(builtin_avatar))
    plain = Blender().process(warp.render(target)).astype(int)
    refined = Blender().process(OnnxRefinerGenerator(str(path), warp).render(target)).astype(int)
    changed = np.abs(refined - plain).max(axis=2) > 1  # a 30-step model's correction is small
    assert changed.any()
    openings = np.zeros(changed.shape, np.uint8)
    for loop in (mesh.INNER_LIP, mesh.RIGHT_EYE, mesh.LEFT_EYE):
        cv2.fillPoly(openings, [np.round(target.landmarks[loop, :2]).astype(np.int32)], 1)
    near = cv2.dilate(openings, np.ones((15, 15), np.uint8)).astype(bool)
    assert not (changed & ~near).any()
    spread = np.ptp(refined - plain, axis=2)  # the same change in B, G and R: colours kept
    assert spread[changed].max() <= 3

    card["confine"] = "lips"
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="confine"):
        OnnxRefinerGenerator(str(path), warp)


def test_a_darken_only_mouth_never_brightens_the_warp_and_training_sees_the_same(
    tiny_region_run, tmp_path, builtin_avatar
):
    import cv2

    from realtime import mesh
    from realtime.blend import Blender
    from realtime.errors import UserError
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.train.refiner import as_applied, evaluate, sample_grid

    cfg = tiny_config([], layout="regions", size=48, correction="luma", darken_only="mouth")
    warped = torch.full((6, 3, 48, 48), 0.5)
    image = warped + torch.linspace(-0.3, 0.3, 48)[None, None, None, :]  # darker left, brighter right
    b = {"warped0": warped, "kind": torch.arange(6) % 3}
    delta = as_applied(cfg, image, b, 0) - warped
    assert delta[b["kind"] == 0].max() <= 0 and delta[b["kind"] == 0].min() < -0.2  # mouth: shade only
    assert delta[b["kind"] > 0].max() > 0.2  # the eyes still brighten

    out, _, _ = tiny_region_run
    net, path, card, warp, target, plain = mouth_rule_setup(out, tmp_path, builtin_avatar, "darken_only")
    # Validation and the sample grid apply it too (they cut their own batches).
    rng, n = np.random.default_rng(0), card["crop"]["size"]
    val = {
        f"{k}0": rng.integers(0, 255, (6, n, n, 3), dtype=np.uint8) for k in ("warped", "target", "source")
    }
    val |= {f"{k}0": rng.integers(0, 255, (6, n, n), dtype=np.uint8) for k in ("landmarks", "fill", "driver")}
    val["weight0"] = np.ones((6, n, n), np.float32)
    assert evaluate(net, val, torch.device("cpu"), cfg=cfg)["l1"] > 0
    sample_grid(cfg, net, val, torch.device("cpu"), tmp_path / "grid.png")
    assert (tmp_path / "grid.png").exists()
    free = json.loads(json.dumps(card))
    del free["darken_only"]
    path.with_suffix(".json").write_text(json.dumps(free))
    brightened = Blender().process(OnnxRefinerGenerator(str(path), warp).render(target)).astype(int)
    path.with_suffix(".json").write_text(json.dumps(card))
    darkened = Blender().process(OnnxRefinerGenerator(str(path), warp).render(target)).astype(int)
    mouth = np.zeros(plain.shape[:2], np.uint8)
    cv2.fillPoly(mouth, [np.round(target.landmarks[mesh.OUTER_LIP, :2]).astype(np.int32)], 1)
    mouth = cv2.dilate(mouth, np.ones((9, 9), np.uint8)).astype(bool)
    assert (brightened - plain)[mouth].max() > 3  # the untrained model does brighten somewhere
    assert (darkened - plain)[mouth].max() <= 1  # rounding only

    card["darken_only"] = ["lips"]
    path.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(UserError, match="darken_only"):
        OnnxRefinerGenerator(str(path), warp)


def test_a_dark_centre_mouth_brightens_only_at_the_rim_of_the_opening(
    tiny_region_run, tmp_path, builtin_avatar
):
    import cv2

    from realtime import mesh
    from realtime.blend import Blender
    from realtime.crops import dark_centre_weight
    from realtime.errors import UserError
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.train.refiner import as_applied, train

    # The weight: 1 outside and at the rim, 0 on the centre line; nothing bright in a slit.
    square = np.zeros((48, 48), np.uint8)
    square[10:31, 10:31] = 255
    weight = dark_centre_weight(square)
    assert weight[20, 20] == 0 and weight[10, 20] == 1 and weight[2, 2] == 1
    slit = np.zeros((48, 48), np.uint8)
    slit[20, 10:31] = 255
    assert dark_centre_weight(slit)[20, 20] == 0 and dark_centre_weight(slit)[5, 5] == 1

    # Training applies the same to the mouth crops (kind 0), from their fill masks.
    cfg = tiny_config([], layout="regions", size=48, correction="luma", dark_centre="mouth")
    warped = torch.full((6, 3, 48, 48), 0.5)
    b = {
        "warped0": warped,
        "kind": torch.arange(6) % 3,
        "fill0": torch.from_numpy(square / 255.0)[None, None].repeat(6, 1, 1, 1).float(),
    }
    delta = as_applied(cfg, warped + 0.2, b, 0) - warped
    mouth, eyes = b["kind"] == 0, b["kind"] > 0
    assert delta[mouth][..., 20, 20].abs().max() < 1e-6  # the centre line: not brightened
    assert delta[mouth][..., 10, 20].min() > 0.19 and delta[eyes][..., 20, 20].min() > 0.19
    assert (as_applied(cfg, warped - 0.2, b, 0) - warped)[mouth][..., 20, 20].max() < -0.19  # shading stays

    out, _, _ = tiny_region_run
    _, path, card, warp, target, plain = mouth_rule_setup(out, tmp_path, builtin_avatar, "dark_centre")
    centred = Blender().process(OnnxRefinerGenerator(str(path), warp).render(target)).astype(int)
    path.with_suffix(".json").write_text(json.dumps({k: v for k, v in card.items() if k != "dark_centre"}))
    free = Blender().process(OnnxRefinerGenerator(str(path), warp).render(target)).astype(int)
    opening = np.zeros(plain.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round(target.landmarks[mesh.INNER_LIP, :2]).astype(np.int32)], 255)
    depth = cv2.distanceTransform(opening, cv2.DIST_L2, 3)
    assert depth.max() > 4  # the mouth is open
    centre_line = depth >= 0.8 * depth.max()
    assert (free - plain)[centre_line].max() > 3  # the untrained model brightens the centre line
    assert (centred - plain)[centre_line].max() <= 1  # rounding only
    rim = (depth > 0) & (depth <= 0.3 * depth.max())
    assert np.abs(centred - free)[rim].max() <= 2  # under the lips, teeth come in as before

    path.with_suffix(".json").write_text(json.dumps(card | {"darken_only": ["mouth"]}))
    with pytest.raises(UserError, match="both darken_only and dark_centre"):
        OnnxRefinerGenerator(str(path), warp)
    with pytest.raises(SystemExit, match="choose one"):  # training refuses it too, before any data
        train(tiny_config([], layout="regions", darken_only="mouth", dark_centre="mouth"), tmp_path / "run")


def test_blink_boost_draws_the_frames_of_a_real_blink_more_often(tmp_path):
    from realtime.train.data import ClipCache, build_clip_cache, eye_closure, target_odds
    from tests.conftest import media

    clip = ClipCache.load(build_clip_cache(media("clips/liveportrait_d9.mp4"), tmp_path, pairs=60))
    starts = clip.consecutive()
    closure = eye_closure(clip, starts)
    blinking = closure > 0.5
    assert 0 < blinking.sum() < 0.2 * len(starts)  # the premise: a few pairs catch a blink
    assert target_odds(clip, starts, 0.0) is None
    odds = target_odds(clip, starts, 6.0)
    assert odds is not None and abs(odds.sum() - 1.0) < 1e-9
    share = odds[blinking].sum()
    assert share > 2.5 * blinking.mean()  # 17 % of the pairs, drawn 48 % of the time
    assert odds[blinking].min() > odds[closure < 0.1].max()
