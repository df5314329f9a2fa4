"""The onnxruntime runner's thread choice and the refiner's per-frame inputs, on the shipped models."""

from pathlib import Path

import numpy as np
import pytest

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
INT8_REFINER = WEIGHTS / "refiner.int8.onnx"


def test_one_thread_is_kept_only_when_it_is_nearly_as_fast_as_the_pool():
    from realtime.generators.onnx import one_thread_pays

    assert one_thread_pays([2.1, 2.2, 2.0], [2.1, 2.0, 2.2])  # the int8 refiner on this VM
    assert one_thread_pays([2.3], [2.1])  # within 10 %
    assert not one_thread_pays([3.8, 3.9, 3.7], [2.7, 2.8, 2.7])  # the float refiner: the pool pays


@pytest.mark.parametrize("one_thread", [True, False])
def test_a_runner_that_picks_its_threads_gives_the_same_outputs(monkeypatch, one_thread):
    import realtime.generators.onnx as onnx

    monkeypatch.setattr(onnx.os, "cpu_count", lambda: 2)  # the choice is made on a multi-core CPU only
    monkeypatch.setattr(onnx, "one_thread_pays", lambda one_ms, pool_ms: one_thread)
    plain = onnx.OnnxRunner(str(INT8_REFINER), ["CPUExecutionProvider"], warmup=0)
    picking = onnx.OnnxRunner(str(INT8_REFINER), ["CPUExecutionProvider"], threads="auto", warmup=1)
    rng = np.random.default_rng(0)
    feeds = {
        name: rng.random([3 if not isinstance(d, int) else d for d in plain.input_shape(name)], np.float32)
        for name in plain.inputs
    }
    picking.warm_up(feeds)
    assert picking.threads == (1 if one_thread else 0)
    assert picking.session.get_session_options().intra_op_num_threads == (1 if one_thread else 0)
    for name, value in plain.run(feeds).items():
        np.testing.assert_allclose(picking.run(feeds)[name], value, atol=1e-5)


def test_the_refiners_driver_maps_match_cutting_each_crop_from_the_colour_frame(builtin_avatar):
    """The runtime greys the crops' part of the frame once; each map must be what cutting its
    crop from the colour frame gives (as training cuts it), to a rounding."""
    from realtime import mesh
    from realtime.crops import crop_matrices, driver_map
    from realtime.frames import Frame, Target
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.warp import WarpGenerator

    refiner = OnnxRefinerGenerator(
        str(INT8_REFINER), WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    )
    image = builtin_avatar.image
    for shift in (0.0, 60.0):  # the second face sits nearer the frame's edge
        points = builtin_avatar.landmarks[:, :2].astype(np.float64) + (shift, shift * 0.5)
        frame = np.ascontiguousarray(np.roll(image, (int(shift * 0.5), int(shift)), axis=(0, 1)))
        target = Target(frame=Frame(frame, 0, 0.0), landmarks=points, driver_landmarks=points)
        maps = refiner._driver_maps(target, 3)[:, 0] * 255.0
        centred = mesh.with_mouth_centre(points)
        expected = [driver_map(frame, centred, m, refiner.spec) for m in crop_matrices(centred, refiner.spec)]
        assert maps.shape == (3, refiner.spec.size, refiner.spec.size)
        for got, want in zip(maps, expected, strict=True):
            assert np.array_equal(got > 0, want > 0)  # the same openings
            assert np.abs(got - want).max() <= 3.0
            assert np.abs(got - want).mean() < 0.5


def _refined_against_warp(avatar_image, avatar_points, scale):
    """The shipped int8 refiner's and the warp's renders of the avatar, scaled by ``scale``,
    with its mouth opened, and the mouth's box in them."""
    import cv2

    from realtime import expression, mesh
    from realtime.blend import Blender
    from realtime.frames import Frame, Target
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.warp import WarpGenerator

    image = cv2.resize(avatar_image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    points = avatar_points * scale
    warp = WarpGenerator(image, points)
    refiner = OnnxRefinerGenerator(str(INT8_REFINER), warp)
    opened = mesh.with_mouth_centre(expression.open_mouth(points[:, :2].astype(np.float64), 0.25))
    target = Target(frame=Frame(image, 0, 0.0), landmarks=opened.astype(np.float32), driver_landmarks=opened)
    plain = Blender().process(warp.render(target)).astype(int)
    refined = Blender().process(refiner.render(target)).astype(int)
    lips = opened[mesh.OUTER_LIP]
    x0, y0 = np.floor(lips.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(lips.max(axis=0)).astype(int) + 2
    return plain[y0:y1, x0:x1], refined[y0:y1, x0:x1], plain, refined


def test_the_mouth_of_a_face_too_small_for_the_refiners_crop_is_the_warps(builtin_avatar):
    """A mouth a few pixels wide is not pasted over (MOUTH_UPSCALE_MAX); on a face big enough,
    the same refiner shades the opened mouth."""
    from realtime import mesh

    points = builtin_avatar.landmarks[:, :2].astype(np.float64)
    big_plain, big_refined, _, _ = _refined_against_warp(builtin_avatar.image, points, 1.0)
    assert np.abs(big_refined - big_plain).max() > 8  # the opening is shaded
    scale = 40.0 / mesh.face_size(points)  # eye corners 40 px apart: the 48-px mouth crop enlarges
    small_plain, small_refined, plain, refined = _refined_against_warp(builtin_avatar.image, points, scale)
    assert np.array_equal(small_refined, small_plain)
    assert np.abs(refined - plain).max() > 0  # the eyes are still refined
