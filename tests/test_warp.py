from __future__ import annotations

import cv2
import numpy as np
import pytest

from realtime import expression, mesh
from realtime.blend import Blender, match_colour
from realtime.frames import Frame, Target
from realtime.generators.piecewise import rasterise_map
from realtime.generators.warp import WarpGenerator
from realtime.tracking import find_face


def test_piecewise_map_is_exact_for_an_affine_motion():
    rng = np.random.default_rng(1)
    source = rng.uniform(0, 200, size=(40, 2))
    from scipy.spatial import Delaunay

    triangles = Delaunay(source).simplices
    matrix = np.array([[1.1, 0.2], [-0.15, 0.9]])
    dest = source @ matrix.T + [7.0, -3.0]
    roi = (40, 40, 150, 150)
    for stride in (1, 3):
        map_x, map_y = rasterise_map(dest, source, triangles, roi, stride)
        ys, xs = np.mgrid[roi[1] : roi[3], roi[0] : roi[2]]
        pts = np.stack([xs, ys], -1).reshape(-1, 2).astype(np.float64)
        expected = (pts - [7.0, -3.0]) @ np.linalg.inv(matrix).T
        inside = Delaunay(dest).find_simplex(pts) >= 0
        got = np.stack([map_x.ravel(), map_y.ravel()], -1)
        # Exact at stride 1; the bilinear upsampled map is exact for an affine motion too,
        # except at the hull border where grid cells straddle the edge.
        border = (
            np.array(
                [
                    Delaunay(dest).find_simplex(p + d) < 0
                    for p in pts[inside][::50]
                    for d in ((3, 0), (-3, 0), (0, 3), (0, -3))
                ]
            )
            .reshape(-1, 4)
            .any(1)
        )
        err = np.abs(got[inside][::50] - expected[inside][::50]).max(axis=1)
        assert err[~border].max() < 1e-2


def test_identity_target_reproduces_the_avatar(builtin_avatar):
    gen = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    target = Target(
        frame=Frame(builtin_avatar.image, 0, 0.0),
        landmarks=mesh.with_mouth_centre(builtin_avatar.landmarks[:, :2]).astype(np.float32),
    )
    out = Blender().process(gen.render(target))
    assert np.abs(out.astype(int) - builtin_avatar.image).max() <= 1


@pytest.fixture(scope="module")
def opened(builtin_avatar):
    gen = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    pts = expression.open_mouth(builtin_avatar.landmarks[:, :2].astype(np.float64), 0.2)
    pts = expression.head_pose(pts, 4.0, (0.05, 0.0))
    target = Target(
        frame=Frame(builtin_avatar.image, 0, 0.0), landmarks=mesh.with_mouth_centre(pts).astype(np.float32)
    )
    return pts, Blender().process(gen.render(target))


def test_the_coarse_map_skips_the_faces_own_triangles_without_changing_a_pixel(builtin_avatar, monkeypatch):
    """The face's fine map covers its box, so the coarse map leaves out the triangles inside it:
    the same warp, pixel for pixel, as rasterising every triangle on both grids."""
    gen = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    base = builtin_avatar.landmarks[:, :2].astype(np.float64)
    targets = []
    for opening, degrees, shift in (
        (0.0, 0.0, (0.0, 0.0)),
        (0.2, 4.0, (0.05, 0.0)),
        (0.1, -8.0, (-0.1, 0.04)),
    ):
        pts = expression.head_pose(expression.open_mouth(base, opening), degrees, shift)
        targets.append(
            Target(
                frame=Frame(builtin_avatar.image, 0, 0.0),
                landmarks=mesh.with_mouth_centre(pts).astype(np.float32),
            )
        )
    counts = []
    original = WarpGenerator._outside

    def counting(self, *args):
        kept = original(self, *args)
        counts.append(len(kept))
        return kept

    monkeypatch.setattr(WarpGenerator, "_outside", counting)
    skipping = [gen.render(t).patch for t in targets]
    assert len(counts) == len(targets) and max(counts) < len(gen.triangles) / 2  # it skips most
    monkeypatch.setattr(WarpGenerator, "_outside", lambda self, dest, box, margin: self.triangles)
    everything = [gen.render(t).patch for t in targets]
    for fast, full in zip(skipping, everything, strict=True):
        assert np.array_equal(fast, full)


def test_open_mouth_target_opens_the_avatar_mouth(builtin_avatar, opened):
    pts, out = opened
    seen = find_face(out)
    assert seen is not None
    assert mesh.mouth_opening(seen) > mesh.mouth_opening(builtin_avatar.landmarks) + 0.08
    # The tracker sees the mouth where the target put it (within a few percent of face size).
    err = np.linalg.norm(seen[mesh.INNER_LIP, :2] - pts[mesh.INNER_LIP], axis=1).mean()
    assert err < 0.12 * mesh.face_size(pts)


def test_mouth_interior_is_filled_not_stretched_lips(builtin_avatar, opened):
    pts, out = opened
    hole = np.zeros(out.shape[:2], np.uint8)
    cv2.fillPoly(hole, [np.round(pts[mesh.INNER_LIP]).astype(np.int32)], 255)
    hole = cv2.erode(hole, np.ones((3, 3), np.uint8))
    gray = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)[hole > 0]
    assert gray.size > 50
    # A cavity with teeth: a clearly dark part and a bright part.
    assert (gray < 80).mean() > 0.2
    assert np.percentile(gray, 95) > 150
    # Without the fill the same pixels would be stretched lips/teeth: not dark.
    plain = WarpGenerator(builtin_avatar.image, builtin_avatar.landmarks)
    plain._fill_mouth = lambda *args: None
    target = Target(
        frame=Frame(builtin_avatar.image, 0, 0.0), landmarks=mesh.with_mouth_centre(pts).astype(np.float32)
    )
    stretched = cv2.cvtColor(Blender().process(plain.render(target)), cv2.COLOR_BGR2GRAY)[hole > 0]
    assert (stretched < 80).mean() < (gray < 80).mean() - 0.15


def test_background_far_from_the_head_stays_still(builtin_avatar, opened):
    _, out = opened
    oval = builtin_avatar.landmarks[mesh.face_oval(), :2]
    centre = oval.mean(0)
    radius = np.linalg.norm(oval - centre, axis=1).max()
    ys, xs = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    far = np.hypot(xs - centre[0], ys - centre[1]) > 3.0 * radius
    assert far.sum() > 1000
    assert np.abs(out[far].astype(int) - builtin_avatar.image[far]).max() == 0
    near = np.hypot(xs - centre[0], ys - centre[1]) < radius
    assert np.abs(out[near].astype(int) - builtin_avatar.image[near]).mean() > 3


def test_swap_paints_inside_the_face_only(builtin_avatar, astronaut):
    user = cv2.resize(astronaut[:, ::-1], (640, 480))
    user_lm = find_face(user)
    # Mark the avatar's nose with a checkerboard: it must travel onto the user's nose.
    avatar = builtin_avatar.image.copy()
    nose = builtin_avatar.landmarks[1, :2].astype(int)
    half = int(0.12 * mesh.face_size(builtin_avatar.landmarks))
    checker = (np.indices((2 * half, 2 * half)).sum(0) // 3 % 2 * 255).astype(np.uint8)
    avatar[nose[1] - half : nose[1] + half, nose[0] - half : nose[0] + half] = checker[..., None]
    gen = WarpGenerator(avatar, builtin_avatar.landmarks, mode="swap")
    frame = Frame(user, 0, 0.0)
    rendered = gen.render(
        Target(frame=frame, landmarks=mesh.with_mouth_centre(user_lm[:, :2]).astype(np.float32), mode="swap")
    )
    out = Blender().process(rendered)
    oval = np.zeros(user.shape[:2], np.uint8)
    cv2.fillPoly(oval, [np.round(user_lm[mesh.face_oval(), :2]).astype(np.int32)], 255)
    oval = cv2.dilate(oval, np.ones((5, 5), np.uint8))  # the mask's edge is anti-aliased
    assert np.abs(out[oval == 0].astype(int) - user[oval == 0]).max() == 0
    x, y = user_lm[1, :2].astype(int)
    r = max(3, int(0.06 * mesh.face_size(user_lm)))
    before = cv2.cvtColor(user, cv2.COLOR_BGR2GRAY)[y - r : y + r, x - r : x + r]
    after = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY)[y - r : y + r, x - r : x + r]
    assert after.std() > 2 * before.std() + 10


def test_colour_match_moves_statistics_towards_reference():
    rng = np.random.default_rng(0)
    patch = rng.integers(60, 120, (40, 40, 3)).astype(np.uint8)
    reference = rng.integers(140, 220, (40, 40, 3)).astype(np.uint8)
    out = match_colour(patch, reference, np.ones((40, 40), np.float32))
    assert abs(out.mean() - reference.mean()) < 0.25 * abs(patch.mean() - reference.mean())


@pytest.mark.parametrize("scale", [0.5, 0.25])
def test_small_crops_are_area_averaged_not_aliased_and_land_in_the_same_place(astronaut, scale):
    from realtime.crops import ALIASING_SCALE, antialiased_warp

    angle = np.deg2rad(12.0)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.concatenate([rotation, [[-40.0 * scale], [30.0 * scale]]], axis=1)
    size = int(400 * scale)

    def warp(image):
        return cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        ).astype(np.float32)

    # What an ideal low-pass-then-sample crop looks like, and what a plain bilinear warp gives.
    reference = warp(cv2.GaussianBlur(astronaut, (0, 0), 0.45 / scale))
    plain_error = np.abs(warp(astronaut) - reference).mean()
    error = np.abs(antialiased_warp(astronaut, matrix, size).astype(np.float32) - reference).mean()
    assert error < 0.5 * plain_error  # measured 0.35x (1/2 scale) and 0.29x (1/4)
    assert error < 2.5  # not shifted: half a pixel off would cost several grey levels
    big = matrix.copy()
    big[:, :2] *= ALIASING_SCALE / scale
    np.testing.assert_array_equal(
        antialiased_warp(astronaut, big, size),
        cv2.warpAffine(astronaut, big, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE),
    )


@pytest.mark.parametrize("mirrored", [False, True])
def test_a_crop_flow_moves_the_full_resolution_image_the_same_way(astronaut, mirrored):
    """A flow refiner says where each crop pixel should come from; the runtime applies it
    to the full-resolution frame instead. Cropping the moved frame must give the moved crop
    (eye crops are mirrored, so a reflection is checked too)."""
    from realtime.crops import displace
    from realtime.generators.onnx import _image_flow

    image = astronaut.astype(np.float32)
    angle, scale, size = np.deg2rad(12.0), 0.5, 96
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if mirrored:
        linear = np.diag([-1.0, 1.0]) @ linear
    to_crop = np.concatenate([linear, [[0.0], [0.0]]], axis=1)
    to_crop[:, 2] = size / 2 - to_crop[:, :2] @ np.array([250.0, 220.0])  # crop around the face

    def crop(img: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(
            img, to_crop, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.stack([2.5 * np.sin(ys / 9.0), 2.0 * np.cos(xs / 11.0)], axis=-1).astype(np.float32)
    moved_crop = displace(crop(image), flow)
    image_flow = _image_flow(flow, cv2.invertAffineTransform(to_crop), image.shape[1::-1])
    from_full_resolution = crop(displace(image, image_flow))
    inner = (slice(8, -8), slice(8, -8))
    error = np.abs(from_full_resolution - moved_crop)[inner].mean()
    change = np.abs(moved_crop - crop(image))[inner].mean()
    assert change > 10.0  # the flow really moves things (measured 21 grey levels)
    # Measured 2.6 (resampling twice); leaving out the crop→image turn costs 12 (21 mirrored).
    assert error < 0.2 * change
