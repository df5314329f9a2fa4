"""The irises drawn as layers of their own (``realtime.generators.irises``): a glance comes
through at its size, an unmoved eye is the avatar's own, and eyes the cut cannot handle stay in
the warp's fan."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import media

from realtime import mesh
from realtime.frames import Frame, Mode, Target
from realtime.generators.irises import IrisLayers
from realtime.generators.warp import WarpGenerator
from realtime.tracking import find_face

GLANCE = 0.12  # eye widths, towards the image's right


def glanced(points: np.ndarray, shift: float) -> np.ndarray:
    """``points`` with both irises moved ``shift`` eye widths along their corner lines."""
    moved = points.copy()
    for iris, towards, away in (
        (mesh.RIGHT_IRIS, mesh.RIGHT_EYE_INNER, mesh.RIGHT_EYE_OUTER),
        (mesh.LEFT_IRIS, mesh.LEFT_EYE_OUTER, mesh.LEFT_EYE_INNER),
    ):
        moved[iris, :2] += shift * (points[towards, :2] - points[away, :2])
    return moved


def drawn(generator: WarpGenerator, frame_image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The generator's patch pasted onto ``frame_image`` (no blending: the drawn pixels)."""
    out = generator.render(Target(Frame(frame_image, 0, 0.0), landmarks.astype(np.float32)))
    canvas = (out.background if out.background is not None else frame_image).copy()
    x, y = out.origin
    height, width = out.patch.shape[:2]
    canvas[y : y + height, x : x + width] = out.patch
    return canvas


def judged_glance(generator: WarpGenerator, frame_image: np.ndarray, points: np.ndarray) -> float:
    """How far mediapipe sees the eyes move when the target glances ``GLANCE`` eye widths."""
    still = find_face(drawn(generator, frame_image, points))
    moved = find_face(drawn(generator, frame_image, glanced(points, GLANCE)))
    assert still is not None and moved is not None
    return mesh.gaze(moved) - mesh.gaze(still)


def test_gaze_reads_a_glance_in_eye_widths():
    points = np.random.default_rng(0).normal(size=(478, 2)) * 0.01
    points[[mesh.RIGHT_EYE_OUTER, mesh.RIGHT_EYE_INNER, mesh.LEFT_EYE_INNER, mesh.LEFT_EYE_OUTER]] = [
        [0, 0],
        [30, 0],
        [60, 0],
        [90, 0],
    ]
    points[mesh.RIGHT_IRIS_CENTRE], points[mesh.LEFT_IRIS_CENTRE] = [15, 0], [75, 0]
    assert mesh.gaze(points) == pytest.approx(0.0, abs=1e-3)
    assert mesh.gaze(glanced(points, 0.1)) == pytest.approx(0.1, abs=1e-3)
    assert mesh.gaze(glanced(points, -0.2)) == pytest.approx(-0.2, abs=1e-3)


@pytest.mark.parametrize("mode", [Mode.REENACT, Mode.SWAP])
def test_a_glance_comes_through_at_twice_the_fans_size(builtin_avatar, mode):
    """The fan moves an iris's edge half as far as its centre; the layer moves the whole iris."""
    image, landmarks = builtin_avatar.image, builtin_avatar.landmarks
    points = mesh.with_mouth_centre(landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
    fan = judged_glance(WarpGenerator(image, landmarks, mode, iris_layers=False), image, points)
    layer = WarpGenerator(image, landmarks, mode)
    assert layer._irises.eyes == 2
    moved = judged_glance(layer, image, points)
    assert moved >= 0.5 * GLANCE, (fan, moved)
    assert moved >= 1.8 * fan, (fan, moved)


def test_an_unmoved_eye_is_the_avatars_own(builtin_avatar):
    image, landmarks = builtin_avatar.image, builtin_avatar.landmarks
    points = mesh.with_mouth_centre(landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
    with_layers = drawn(WarpGenerator(image, landmarks), image, points).astype(np.int16)
    plain = drawn(WarpGenerator(image, landmarks, iris_layers=False), image, points).astype(np.int16)
    for loop in (mesh.RIGHT_EYE, mesh.LEFT_EYE):
        (x0, y0), (x1, y1) = (
            points[loop].min(axis=0).astype(int) - 3,
            points[loop].max(axis=0).astype(int) + 4,
        )
        assert np.abs(with_layers[y0:y1, x0:x1] - plain[y0:y1, x0:x1]).max() <= 3


def test_the_iris_is_cut_out_of_what_the_warp_samples(builtin_avatar):
    """Where the iris was, the warp's source shows the eye's white: much lighter than the iris."""
    image, landmarks = builtin_avatar.image, builtin_avatar.landmarks
    layers = IrisLayers(image, landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
    grey_before = image.mean(axis=2)
    grey_after = layers.source.mean(axis=2)
    for centre in (mesh.RIGHT_IRIS_CENTRE, mesh.LEFT_IRIS_CENTRE):
        x, y = np.round(landmarks[centre, :2]).astype(int)
        before, after = (
            grey_before[y - 1 : y + 2, x - 1 : x + 2].mean(),
            grey_after[y - 1 : y + 2, x - 1 : x + 2].mean(),
        )
        assert after >= before + 40, (before, after)
    untouched = np.ones(image.shape[:2], bool)
    for loop in (mesh.RIGHT_EYE, mesh.LEFT_EYE):
        (x0, y0), (x1, y1) = (
            landmarks[loop, :2].min(axis=0).astype(int) - 2,
            landmarks[loop, :2].max(axis=0).astype(int) + 3,
        )
        untouched[y0:y1, x0:x1] = False
    assert (layers.source[untouched] == image[untouched]).all()


def test_a_cartoons_eyes_drawn_past_the_lid_loop_are_cut_by_the_drawn_lids():
    """The 3D cartoon's eyes are drawn well past mediapipe's lid loop: cut by the loop, the iris's
    rim would stay behind on the lids, so the loop grown to the drawn lids cuts them; the photos'
    and paintings' lids are mediapipe's own."""
    from realtime.avatar import load_avatar

    for name, drawn_lids in (
        ("liveportrait_s7.jpg", True),
        ("liveportrait_s42.jpg", False),
        ("liveportrait_s9.jpg", False),
    ):
        avatar = load_avatar(str(media(f"avatars/{name}")))
        layers = IrisLayers(avatar.image, avatar.landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
        assert layers.eyes == 2, name
        assert all((layer.grow >= 1.3) == drawn_lids for layer in layers._layers), name
    # At 1280x720 one of its eyes shows a fainter line (1.2): the other's clear one vouches for it.
    wide = load_avatar(str(media("avatars/liveportrait_s7.jpg")), (1280, 720))
    layers = IrisLayers(wide.image, wide.landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
    assert layers.eyes == 2 and all(layer.grow > 1.0 for layer in layers._layers)
    # A glance to the image's right moves the cartoon's whole iris: a little inside its left edge
    # the eye's white shows, where the fan leaves the iris's edge behind.
    cartoon = load_avatar(str(media("avatars/liveportrait_s7.jpg")))
    points = mesh.with_mouth_centre(cartoon.landmarks[: mesh.NUM_LANDMARKS, :2].astype(np.float64))
    centre = points[mesh.RIGHT_IRIS_CENTRE]
    radius = np.linalg.norm(points[mesh.RIGHT_IRIS[1:]] - centre, axis=1).mean()
    x, y = np.round(centre - [0.8 * radius, 0]).astype(int)
    opening = np.zeros(cartoon.image.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round(points[mesh.RIGHT_EYE]).astype(np.int32)], 1)
    white = np.percentile(cartoon.image.mean(axis=2)[opening > 0], 95)
    seen = {}
    for layers in (False, True):
        generator = WarpGenerator(cartoon.image, cartoon.landmarks, iris_layers=layers)
        moved = drawn(generator, cartoon.image, glanced(points, 0.15)).astype(np.float32)
        seen[layers] = moved[y - 1 : y + 2, x - 1 : x + 2].mean()
    assert seen[False] < white - 60 <= seen[True] - 20, (seen, white)


def test_swap_mode_gives_the_avatars_eyes_the_users_gaze(builtin_avatar):
    """A portrait that looks sideways, swapped onto a user who looks into the camera, looks into
    the camera: the swap takes the avatar's eye shape, not its gaze."""
    from realtime.retarget import Retargeter, SwapTargeter

    user = builtin_avatar.landmarks[: mesh.NUM_LANDMARKS].astype(np.float64)
    sideways = glanced(user, 0.1)  # the same face as an avatar looking a tenth of an eye aside
    assert mesh.gaze(sideways) - mesh.gaze(user) == pytest.approx(0.1, abs=1e-3)
    targeter = SwapTargeter(retargeter=Retargeter(sideways))
    for glance in (0.0, -0.08, 0.08):
        looking = glanced(user, glance)
        drawn_at = targeter.landmarks(looking)
        assert mesh.gaze(drawn_at) == pytest.approx(mesh.gaze(looking), abs=0.005), glance


def test_a_turned_avatars_far_iris_is_its_near_iris_mirrored_in_swap_mode():
    """Swap mode draws a turned avatar's far half from its near half, mirrored (``frontal``);
    the far eye's iris layer comes from the near eye too, or the far eye would show its own
    squeezed iris over the near eye's mirrored white."""
    from realtime import frontal
    from realtime.avatar import load_avatar

    avatar = load_avatar(str(media("avatars/liveportrait_s10.jpg")))  # the Pearl Earring, turned
    assert frontal.mirrors_far_half(avatar.landmarks)
    generator = WarpGenerator(avatar.image, avatar.landmarks, Mode.SWAP)
    assert generator._irises.eyes == 2
    first, second = generator._irises._layers
    assert np.array_equal(first.texture, second.texture[:, ::-1])
