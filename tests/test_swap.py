"""Swap-mode compositing: inner face only, multi-band seam, relighting, camera matching, occlusion."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime import mesh
from realtime.blend import Blender
from realtime.frames import Frame, Mode, Target
from realtime.generators.warp import WarpGenerator
from realtime.swap import SwapCompositor, SwapSettings, inner_face_polygon, laplacian_blend
from realtime.tracking import find_face

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason="needs ../shared/media")


@pytest.fixture(scope="module")
def user(astronaut):
    image = cv2.resize(astronaut[:, ::-1], (640, 480))
    return image, find_face(image)


def _swap(avatar_image, avatar_landmarks, image, landmarks, blender=None, occluder=None):
    generator = WarpGenerator(avatar_image, avatar_landmarks, mode="swap")
    target = Target(
        frame=Frame(image, 0, 0.0),
        landmarks=mesh.with_mouth_centre(landmarks[:, :2]).astype(np.float32),
        mode=Mode.SWAP,
    )
    rendered = generator.render(target)
    rendered.occluder = occluder(rendered) if occluder else None
    return (blender or Blender()).process(rendered), rendered


def _polygon_mask(landmarks, shape, grow=0):
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(inner_face_polygon(landmarks)).astype(np.int32)], 255)
    if grow:
        mask = cv2.dilate(mask, np.ones((2 * grow + 1,) * 2, np.uint8))
    return mask > 0


def test_only_the_inner_face_changes_hair_forehead_and_background_stay(builtin_avatar, user):
    image, landmarks = user
    out, _ = _swap(builtin_avatar.image, builtin_avatar.landmarks, image, landmarks)
    inside = _polygon_mask(landmarks, image.shape)
    # Outside the jaw line / above the brows (2 px for the anti-aliased edge): the user's own pixels.
    outside = ~_polygon_mask(landmarks, image.shape, grow=2)
    assert np.abs(out[outside].astype(int) - image[outside]).max() == 0
    # The forehead top (mediapipe's landmark 10) is outside the mask.
    assert not inside[int(landmarks[10, 1]) + 2, int(landmarks[10, 0])]
    core = cv2.erode(inside.astype(np.uint8), np.ones((15, 15), np.uint8)) > 0
    assert np.abs(out[core].astype(int) - image[core]).mean() > 4


def test_the_mask_follows_the_users_landmarks(builtin_avatar, user):
    image, landmarks = user
    moved = landmarks.copy()
    moved[:, 0] += 40  # the same face 40 px to the right: the swap must move with it
    shifted = np.roll(image, 40, axis=1)
    out, _ = _swap(builtin_avatar.image, builtin_avatar.landmarks, shifted, moved)
    outside = ~_polygon_mask(moved, image.shape, grow=2)
    assert np.abs(out[outside].astype(int) - shifted[outside]).max() == 0
    assert (
        np.abs(
            out[_polygon_mask(moved, image.shape)].astype(int) - shifted[_polygon_mask(moved, image.shape)]
        ).mean()
        > 4
    )


def test_laplacian_blend_is_exact_at_the_ends_and_softer_than_a_hard_paste():
    rng = np.random.default_rng(1)
    front = rng.uniform(0, 255, (64, 96, 3)).astype(np.float32)
    back = np.full_like(front, 40.0)
    ones, zeros = np.ones((64, 96), np.float32), np.zeros((64, 96), np.float32)
    assert np.allclose(laplacian_blend(front, back, ones, 4), front, atol=1e-3)
    assert np.allclose(laplacian_blend(front, back, zeros, 4), back, atol=1e-3)
    # A flat bright patch on a flat dark background: across a hard mask edge the multi-band
    # blend ramps over several pixels instead of one step.
    bright = np.full_like(front, 200.0)
    hard = np.zeros((64, 96), np.float32)
    hard[:, 48:] = 1.0
    row = laplacian_blend(bright, back, hard, 4)[32, :, 0]
    steps = np.abs(np.diff(row))
    assert steps.max() < 0.5 * (200 - 40)
    assert row[10] == pytest.approx(40, abs=2) and row[90] == pytest.approx(200, abs=2)


def test_relighting_takes_the_users_shading_and_keeps_the_avatars_detail(builtin_avatar, user):
    image, landmarks = user
    # The user's face lit from the left: brightness falls off across the face.
    x0, x1 = landmarks[:, 0].min(), landmarks[:, 0].max()
    ramp = np.interp(np.arange(image.shape[1]), [x0, x1], [1.4, 0.45]).astype(np.float32)[None, :, None]
    lit = np.clip(image.astype(np.float32) * ramp, 0, 255).astype(np.uint8)
    out, rendered = _swap(builtin_avatar.image, builtin_avatar.landmarks, lit, landmarks)
    grey = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(np.float32)
    core = cv2.erode(_polygon_mask(landmarks, image.shape).astype(np.uint8), np.ones((21, 21), np.uint8)) > 0
    ys, xs = np.nonzero(core)
    centre = xs.mean()
    left, right = (
        core & (np.arange(image.shape[1]) < centre - 15),
        core & (np.arange(image.shape[1]) > centre + 15),
    )
    user_grey = cv2.cvtColor(lit, cv2.COLOR_BGR2GRAY).astype(np.float32)
    user_ratio = user_grey[left].mean() / user_grey[right].mean()
    out_ratio = grey[left].mean() / grey[right].mean()
    assert user_ratio > 1.5
    assert out_ratio > 1.0 + 0.5 * (user_ratio - 1.0)  # the light falls off on the swapped face too
    # The avatar's detail survives: the output's fine band correlates with the warped avatar's.
    x0, y0 = rendered.origin
    h, w = rendered.patch.shape[:2]
    band = lambda g: g - cv2.GaussianBlur(g, (0, 0), 2.0)  # noqa: E731
    avatar_band = band(cv2.cvtColor(rendered.patch, cv2.COLOR_BGR2GRAY).astype(np.float32))
    out_band = band(grey[y0 : y0 + h, x0 : x0 + w])
    region = core[y0 : y0 + h, x0 : x0 + w]
    assert np.corrcoef(avatar_band[region], out_band[region])[0, 1] > 0.8


def test_a_soft_avatar_is_sharpened_and_grained_to_the_users_camera(builtin_avatar, user):
    image, landmarks = user
    rng = np.random.default_rng(3)
    noisy = np.clip(image.astype(np.float32) + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    soft_avatar = cv2.GaussianBlur(builtin_avatar.image, (0, 0), 2.0)
    core = cv2.erode(_polygon_mask(landmarks, image.shape).astype(np.uint8), np.ones((15, 15), np.uint8)) > 0

    def fine(img):
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        return float(np.abs(cv2.Laplacian(grey, cv2.CV_16S, ksize=1))[core].mean())

    plain = Blender(SwapSettings(grain=False, detail_gain=(1.0, 1.0)))
    matched = Blender()
    flat, _ = _swap(soft_avatar, builtin_avatar.landmarks, noisy, landmarks, plain)
    out, _ = _swap(soft_avatar, builtin_avatar.landmarks, noisy, landmarks, matched)
    assert fine(noisy) > 2 * fine(flat)  # the premise: a soft avatar on a noisy camera
    assert abs(fine(out) - fine(noisy)) < 0.5 * abs(fine(flat) - fine(noisy))


def test_an_open_mouth_shows_the_users_own_mouth(builtin_avatar, user):
    image, landmarks = user
    h, w = 200, 200
    points = landmarks[:, :2] - landmarks[:, :2].min(axis=0) + 20
    opened = points.copy()
    lower = [14, 87, 178, 88, 95, 317, 402, 318, 324]
    opened[lower, 1] += 0.15 * mesh.face_size(points)
    background = np.full((h + 100, w + 100, 3), 30, np.uint8)  # the user: a dark open mouth
    patch = np.full((h, w, 3), 200, np.uint8)  # the avatar: skin everywhere
    mouth = np.zeros(background.shape[:2], np.uint8)
    cv2.fillPoly(mouth, [np.round(opened[mesh.INNER_LIP]).astype(np.int32)], 255)
    mouth = cv2.erode(mouth, np.ones((5, 5), np.uint8)) > 0
    assert mouth.sum() > 20
    settings = dict(grain=False, detail_gain=(1.0, 1.0), relight_gain=(1.0, 1.0))
    out = SwapCompositor(SwapSettings(**settings)).composite(background, patch, (0, 0), opened)
    covered = SwapCompositor(SwapSettings(mouth_from_user=False, **settings)).composite(
        background, patch, (0, 0), opened
    )
    assert out[mouth].mean() < 60  # the user's (dark) mouth, not the avatar's skin
    assert covered[mouth].mean() > 150


def test_a_barely_open_mouth_still_shows_the_users_lip_line(user):
    """A thin opening (about 0.02 face sizes): the user's inner lip line shows, not the avatar's skin
    feathered over it (mediapipe and people read the mouth from that line)."""
    _, landmarks = user
    points = landmarks[:, :2] - landmarks[:, :2].min(axis=0) + 20
    inner = points[mesh.INNER_LIP, 1]
    points[mesh.INNER_LIP, 1] = inner.mean() + (inner - inner.mean()) * 0.25  # nearly closed
    assert 0.02 < mesh.mouth_opening(points) < 0.04
    h, w = (points.max(axis=0) + 20).astype(int)[::-1]
    background = np.full((h, w, 3), 30, np.uint8)  # the user: a dark mouth
    patch = np.full((h, w, 3), 200, np.uint8)  # the avatar: skin everywhere
    line = np.zeros((h, w), np.uint8)
    cv2.polylines(line, [np.round(points[mesh.INNER_LIP]).astype(np.int32)], True, 1, 1)
    settings = dict(grain=False, detail_gain=(1.0, 1.0), relight_gain=(1.0, 1.0))

    def lip_line(**extra) -> float:
        compositor = SwapCompositor(SwapSettings(**settings, **extra))
        return float(compositor.composite(background, patch, (0, 0), points)[line > 0].mean())

    assert lip_line(mouth_grow=0.0) > 45  # the premise: the feathered hole lets skin in
    assert lip_line() < 40


@needs_media
def test_an_open_mouth_avatar_closes_without_mouth_colour_on_the_chin():
    from realtime.analysis import read_frames
    from realtime.avatar import make_avatar
    from realtime.pipeline import offline_processor

    cap = cv2.VideoCapture(str(MEDIA / "clips" / "styletalk_surprisegirl_clip2.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 39)
    ok, avatar_image = cap.read()
    cap.release()
    assert ok
    frames = [
        cv2.resize(f, (1280, 720))
        for f in read_frames(str(MEDIA / "webcam" / "spectre_mead_M003_happy.mp4"), 6)
    ]
    avatar = make_avatar(avatar_image, (1280, 720), "open mouth")
    assert mesh.mouth_opening(avatar.landmarks) > 0.25  # the premise: mouth wide open
    processor = offline_processor(avatar, "warp", mode=Mode.SWAP, size=(1280, 720), occlusion=False)
    try:
        for i, frame in enumerate(frames):
            out = processor.process(Frame(frame, i, i / 30)).image
    finally:
        processor.close()
    user = find_face(frames[-1])
    assert mesh.mouth_opening(user) < 0.08  # the user's mouth is nearly closed
    # The chin: between the lower lip and the chin point, away from the lips.
    lip, chin = user[17, :2], user[152, :2]
    size = mesh.face_size(user)
    box = np.zeros(out.shape[:2], np.uint8)
    centre = lip + 0.6 * (chin - lip)
    cv2.circle(box, tuple(np.round(centre).astype(int)), int(0.12 * size), 255, -1)
    hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.float32)
    skin = cv2.cvtColor(frames[-1], cv2.COLOR_BGR2HSV).astype(np.float32)
    # Mouth colour (a dark cavity, red lips, white teeth) would move saturation and value away
    # from the user's chin skin; the swapped chin stays within skin tones.
    assert abs(hsv[box > 0, 1].mean() - skin[box > 0, 1].mean()) < 35
    assert abs(hsv[box > 0, 2].mean() - skin[box > 0, 2].mean()) < 35
    dark = (hsv[box > 0, 2] < 60).mean()
    assert dark < 0.02


def _face_clip(frames_wanted: int) -> list[np.ndarray]:
    """The first frames of a real talking face (MEAD W023), at 1280x720."""
    from realtime.analysis import read_frames

    path = MEDIA / "webcam" / "spectre_mead_W023_surprised.mp4"
    return [cv2.resize(f, (1280, 720)) for f in read_frames(str(path), frames_wanted)]


def _hand_on_face_clip(frames_wanted: int = 4):
    """A real hand (HaGRID photo, cut out along its landmarks) pasted over the right cheek of
    a real face clip: the frames, the hand's pixels inside the inner face, the face."""
    from realtime.occlusion import HandDetector, hand_mask

    photo = cv2.imread(str(MEDIA / "occlusion" / "mediapipe_hagrid_call_5.jpg"))
    with HandDetector(complexity=1, tracking=False) as detector:
        hands = detector.detect(photo)
    assert hands
    hand = max(hands, key=lambda h: float(np.ptp(h[:, 1])))
    cut = hand_mask([hand], photo.shape[:2], (0, 0), 0)
    frames = _face_clip(frames_wanted)
    face = find_face(frames[0])
    scale = mesh.face_size(face) / mesh.face_size(find_face(photo))
    shift = face[205, :2] - scale * hand.mean(axis=0)  # the hand's centre on the right cheek
    matrix = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]], np.float32)
    pasted = cv2.warpAffine(photo, matrix, (1280, 720))
    alpha = cv2.warpAffine(cut, matrix, (1280, 720)).astype(np.float32)[..., None] / 255.0
    clip = [(f * (1 - alpha) + pasted * alpha).astype(np.uint8) for f in frames]
    hand_pixels = (alpha[..., 0] > 0.99) & _polygon_mask(face, frames[0].shape)
    assert hand_pixels.sum() > 5000  # the premise: the hand covers a good part of the inner face
    return clip, hand_pixels, face


def _hand_pixel_changes(make_processor) -> dict[bool, np.ndarray]:
    """With and without occlusion (``make_processor(occlusion)``), how far the swapped clip's last
    frame moved the pasted hand's pixels."""
    clip, hand_pixels, _ = _hand_on_face_clip()
    diffs = {}
    for occlusion in (True, False):
        with make_processor(occlusion) as processor:
            assert (processor.occlusion is not None) == occlusion
            for i, frame in enumerate(clip):
                out = processor.process(Frame(frame, i, i / 30)).image
        diffs[occlusion] = np.abs(out.astype(int) - clip[-1]).mean(axis=2)[hand_pixels]
    return diffs


@needs_media
def test_a_real_hand_in_front_of_the_face_stays_in_front():
    """With occlusion the pasted hand's pixels survive the swap; without, the swap covers them."""
    from realtime.avatar import load_avatar
    from realtime.pipeline import offline_processor

    avatar = load_avatar(str(MEDIA / "avatars" / "liveportrait_s42.jpg"), (1280, 720))
    diffs = _hand_pixel_changes(
        lambda occlusion: offline_processor(
            avatar, "warp", mode=Mode.SWAP, size=(1280, 720), occlusion=occlusion
        )
    )
    assert diffs[False].mean() > 15  # without occlusion the swap paints over the hand
    assert diffs[True].mean() < 4 and np.percentile(diffs[True], 95) < 12


@needs_media
def test_the_live_commands_swap_keeps_a_real_hand_in_front_too():
    """`realtime run` and `demo` (the live processor, with its avatar switching) keep the hand in
    front as the offline path does; with --no-occlusion they don't look for hands."""
    from realtime.controls import Controls
    from realtime.live import make_live_processor

    avatar = str(MEDIA / "avatars" / "liveportrait_s42.jpg")
    diffs = _hand_pixel_changes(
        lambda occlusion: make_live_processor(
            [avatar], (1280, 720), "warp", None, Controls(mode=Mode.SWAP), live=False, occlusion=occlusion
        )
    )
    assert diffs[False].mean() > 15
    assert diffs[True].mean() < 4 and np.percentile(diffs[True], 95) < 12


@needs_media
def test_the_live_hand_model_runs_in_its_own_process_and_never_blocks_a_frame():
    import time

    from realtime.occlusion import HandOccluder

    clip, hand_pixels, face = _hand_on_face_clip(1)
    occluder = HandOccluder(isolated=True, min_interval_s=0.0)
    try:
        occluder.start()
        deadline = time.monotonic() + 60.0
        worst = 0.0
        while occluder.latest is None or not occluder.latest.landmarks:
            assert time.monotonic() < deadline, "no hands from the hand process within 60 s"
            t0 = time.perf_counter()
            occluder.update(clip[0], face, time.monotonic())
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.01)
        assert occluder._worker is not None and occluder._worker.pid is not None
        mask = occluder.mask(clip[0].shape[:2], (0, 0), occluder.latest.t_capture, mesh.face_size(face))
    finally:
        occluder.close()
    assert mask is not None and (mask[hand_pixels] > 127).mean() > 0.9
    # Handing a box over is a copy, not a wait for the model (generous for a busy test machine).
    assert worst < 0.25


@needs_media
def test_the_live_hand_model_looks_again_when_a_hand_comes_in_not_while_a_face_only_talks():
    """The change gate spares the model a talking, hand-free face and sends it the first box
    with a hand in it; it looks anyway once a second, and always while hands were seen."""
    from realtime.occlusion import RECHECK_S, ChangeGate, HandOccluder
    from realtime.tracking import FaceTracker

    with_hand, _, _ = _hand_on_face_clip(24)
    frames = _face_clip(20) + with_hand[20:]  # the hand comes in at frame 20
    gate = ChangeGate()
    looks = []
    with FaceTracker(smoothing=False) as tracker:
        for i, frame in enumerate(frames):
            face = tracker.detect(frame)[0]
            if i % 3 == 0:  # the live model's 10 Hz at 30 fps
                box, matrix = HandOccluder.searched(frame, face)
                points = face[:, :2] @ matrix[:, :2].T + matrix[:, 2]
                looks.append(gate.look(box, points, i / 30, hands_seen=False))
    assert looks[0]  # nothing to compare with yet
    assert not any(looks[1:7])  # frames 3-18: she talks, no hand
    assert looks[7]  # frame 21: the hand
    assert (gate.looks, gate.unchanged) == (2, 6)
    # The same box again: spared, until the last look is RECHECK_S old; never while hands were seen.
    assert not gate.look(box, points, 0.8, hands_seen=False)
    assert gate.look(box, points, 0.7 + RECHECK_S, hands_seen=False)
    assert gate.look(box, points, 0.8 + RECHECK_S, hands_seen=True)


@needs_media
def test_the_live_hand_process_is_spared_a_still_face_and_finds_the_hand_that_comes_in():
    import time

    from realtime.occlusion import HandOccluder

    clip, _, face = _hand_on_face_clip(1)
    (still,) = _face_clip(1)
    occluder = HandOccluder(isolated=True)
    try:
        occluder.start()
        assert occluder.wait_ready(60.0)
        started = time.monotonic()
        while time.monotonic() - started < 0.6:  # the same hand-free frame at 30 fps
            occluder.update(still, face, time.monotonic())
            time.sleep(1 / 30)
        before = occluder.stats()
        assert before["looks"] == 1 and before["spared_unchanged"] >= 2
        deadline = time.monotonic() + 5.0
        while occluder.latest is None or not occluder.latest.landmarks:
            assert time.monotonic() < deadline, "the hand that came in was not looked for"
            occluder.update(clip[0], face, time.monotonic())
            time.sleep(1 / 30)
        assert occluder.stats()["looks"] - before["looks"] <= 2
    finally:
        occluder.close()


def test_at_the_bottom_of_a_blink_the_users_own_eyelids_show(user):
    """...but not while the eyes are only narrower, as when looking down: the warped lids draw that."""
    image, landmarks = user
    points = landmarks[:, :2] - landmarks[:, :2].min(axis=0) + 20
    closed, narrower = points.copy(), points.copy()
    for lower, upper in ((mesh.RIGHT_EYE[:9], mesh.RIGHT_EYE[9:]), (mesh.LEFT_EYE[:9], mesh.LEFT_EYE[9:])):
        closed[upper, 1] = points[lower, 1].mean() + 1.0
        narrower[upper, 1] = points[upper, 1] + 0.4 * (points[lower, 1].mean() - points[upper, 1])
    assert mesh.eye_opening(closed) < 0.4 * mesh.eye_opening(points)
    assert 0.5 < mesh.eye_opening(narrower) / mesh.eye_opening(points) < 0.7
    background = np.full((300, 300, 3), 30, np.uint8)  # the user's (dark) closed lids
    patch = np.full((200, 200, 3), 200, np.uint8)  # the avatar's (bright) warped eyes
    eyes = np.zeros(background.shape[:2], np.uint8)
    for eye in (mesh.RIGHT_EYE, mesh.LEFT_EYE):
        cv2.fillPoly(eyes, [np.round(points[eye]).astype(np.int32)], 255)
    eyes = eyes > 0
    settings = dict(grain=False, detail_gain=(1.0, 1.0), relight_gain=(1.0, 1.0))
    results = {}
    for blinks in (True, False):
        compositor = SwapCompositor(SwapSettings(blinks_from_user=blinks, **settings))
        for _ in range(5):  # eyes open as usual: the avatar's eyes
            opened = compositor.composite(background, patch, (0, 0), points)
        looking_down = compositor.composite(background, patch, (0, 0), narrower)
        results[blinks] = compositor.composite(background, patch, (0, 0), closed)
        assert looking_down[eyes].mean() > 150
    assert opened[eyes].mean() > 150
    assert results[True][eyes].mean() < 60
    assert results[False][eyes].mean() > 150


@needs_media
def test_a_real_user_looking_down_keeps_the_avatars_eyes_and_a_blink_shows_theirs():
    """The VoxCeleb2 man looks down while he talks (frames 42-50, his eyes at 0.55-0.65 of their
    usual opening) and blinks twice (frames 34-36 and 51-53). Under the light-skinned photo his own
    eyes showed through for all of it, so the face was his own whenever he looked down."""
    from realtime.analysis import read_frames
    from realtime.avatar import make_avatar
    from realtime.pipeline import offline_processor

    frames = list(read_frames(str(MEDIA / "clips" / "Talking-Face_PC-AVS_620900105.mp4"), 56))
    avatar_image = cv2.imread(str(MEDIA / "avatars" / "liveportrait_s42.jpg"))
    size = (frames[0].shape[1], frames[0].shape[0])
    avatar = make_avatar(avatar_image, size, "s42")
    processor = offline_processor(avatar, "warp", mode=Mode.SWAP, size=size, occlusion=False)
    changed = []  # mean |output - input| over the user's eyes and lids
    try:
        for i, image in enumerate(frames):
            tracked = processor.track(Frame(image, i, i / 25.0))
            out = processor.render(tracked).image
            eyes = np.zeros(image.shape[:2], np.uint8)
            for eye in (mesh.RIGHT_EYE, mesh.LEFT_EYE):
                loop = [np.round(tracked.landmarks[eye, :2]).astype(np.int32)]
                cv2.fillPoly(eyes, loop, 255)
                cv2.polylines(eyes, loop, True, 255, 3)
            changed.append(np.abs(out.astype(int) - image.astype(int)).mean(axis=2)[eyes > 0].mean())
    finally:
        processor.close()
    assert min(changed[:30]) > 15  # eyes open: the avatar's
    assert min(changed[42:51]) > 15, changed[42:51]  # looking down: still the avatar's
    assert max(changed[35:37] + changed[52:54]) < 5  # the bottom of each blink: his own


def test_a_live_swap_processor_opens_with_its_hand_model_loaded():
    """The hand model loads while the rest opens, and the stream starts once it is ready: loading
    it during the first frames took a core from them (deadline misses in the first second)."""
    from realtime.session import PipelineConfig, make_processor

    processor = make_processor(PipelineConfig(mode=Mode.SWAP), (640, 480), live=True)
    try:
        assert processor.occlusion is not None
        processor.open()
        assert processor.occlusion.ready
    finally:
        processor.close()


def test_a_hand_model_that_fails_to_start_leaves_the_stream_without_occlusion_and_no_error(monkeypatch):
    import threading

    from realtime.occlusion import HandOccluder

    raised: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: raised.append(args.exc_value))
    occluder = HandOccluder(isolated=True, complexity=7)  # mediapipe has no such model
    try:
        occluder.start()
        assert not occluder.wait_ready(60.0)
        occluder.update(np.zeros((64, 64, 3), np.uint8), np.zeros((478, 3)), 0.0)  # no second start
        assert not occluder.loading
    finally:
        occluder.close()
    assert raised == []


@needs_media
def test_a_turned_avatars_far_half_is_drawn_from_its_near_half_mirrored():
    """Girl with a Pearl Earring, 32 degrees turned: her far cheek is squeezed and her far eye
    half hidden by the nose. Drawn onto a face that looks straight at the camera, the far half
    is her near half mirrored, so the two halves of the swapped face match."""
    from realtime import frontal

    image = cv2.imread(str(MEDIA / "avatars" / "liveportrait_s10.jpg"))
    landmarks = find_face(image).astype(np.float64)
    assert frontal.mirrors_far_half(landmarks)
    # A face towards the camera, upright: hers, turned to it (symmetric), eye line levelled.
    face = frontal.facing_camera(landmarks)
    across = face[mesh.LEFT_EYE_OUTER] - face[mesh.RIGHT_EYE_OUTER]
    angle = -np.arctan2(across[1], across[0])
    level = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = face[mesh.RIGID].mean(axis=0)
    dest = (face - centre) @ level.T + (320.0, 260.0)
    canvas = np.zeros((520, 640, 3), np.uint8)
    target = Target(
        frame=Frame(canvas, 0, 0.0), landmarks=mesh.with_mouth_centre(dest).astype(np.float32), mode=Mode.SWAP
    )
    midline = float(dest[mesh.mirror()[: mesh.NUM_LANDMARKS] == np.arange(mesh.NUM_LANDMARKS), 0].mean())

    def halves_differ(generator: WarpGenerator) -> float:
        rendered = generator.render(target)
        drawn = canvas.copy()
        x0, y0 = rendered.origin
        h, w = rendered.patch.shape[:2]
        drawn[y0 : y0 + h, x0 : x0 + w] = rendered.patch
        grey = cv2.cvtColor(drawn, cv2.COLOR_BGR2GRAY).astype(np.float32)
        inside = _polygon_mask(dest, canvas.shape)
        inside = cv2.erode(inside.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        # mirror the image about the face's midline (x -> 2 m - x) and compare inside the face
        shift = np.float32([[-1.0, 0.0, 2.0 * midline], [0.0, 1.0, 0.0]])
        mirrored = cv2.warpAffine(grey, shift, (grey.shape[1], grey.shape[0]), flags=cv2.INTER_LINEAR)
        both = inside & (cv2.warpAffine(inside.astype(np.uint8), shift, inside.shape[::-1]) > 0)
        return float(np.abs(grey - mirrored)[both].mean())

    generator = WarpGenerator(image, landmarks, mode="swap")
    assert generator.source_triangles is not None
    mirrored = halves_differ(generator)
    generator.source_triangles = None  # her own far half, squeezed and shadowed
    own = halves_differ(generator)
    assert mirrored < 6.0 and own > 5 * mirrored


@needs_media
def test_a_portrait_lit_hard_from_one_side_has_its_shadowed_half_drawn_from_its_lit_half():
    """``liveportrait_s4`` faces the camera with half her face in deep shadow: swapped, that half
    is her lit half mirrored, so both halves are about as bright. Faces lit from the front, and
    portraits in ordinary side light, keep their own halves."""
    from realtime import frontal

    image = cv2.imread(str(MEDIA / "avatars" / "liveportrait_s4.jpg"))
    landmarks = find_face(image).astype(np.float64)
    assert not frontal.mirrors_far_half(landmarks)  # not turned: lit from one side
    shadowed = frontal.shadowed_half(image, landmarks)
    assert shadowed is not None
    lit = ~shadowed & (mesh.mirror() != np.arange(len(shadowed)))

    def shadowed_over_lit(picture: np.ndarray) -> float:
        return frontal.half_brightness(picture, landmarks, shadowed) / frontal.half_brightness(
            picture, landmarks, lit
        )

    assert shadowed_over_lit(image) < frontal.SIDE_LIT_BELOW  # 0.40

    generator = WarpGenerator(image, landmarks, mode="swap")
    assert generator.source_triangles is not None
    points = mesh.with_mouth_centre(landmarks[:, :2]).astype(np.float32)
    rendered = generator.render(Target(frame=Frame(image, 0, 0.0), landmarks=points, mode=Mode.SWAP))
    drawn = image.copy()
    x0, y0 = rendered.origin
    h, w = rendered.patch.shape[:2]
    drawn[y0 : y0 + h, x0 : x0 + w] = rendered.patch
    assert shadowed_over_lit(drawn) > 0.9  # 0.99

    for spec in [
        "avatars/liveportrait_s0.jpg",  # portrait light, ratio about 0.7
        "avatars/liveportrait_s3.jpg",  # and 0.58: the relighting has to do there
        "avatars/liveportrait_s7.jpg",
        "avatars/liveportrait_s42.jpg",
        "clips/extra_rppg_man_darkskin.mp4@0",
        "clips/extra_pexels8048492_man_glasses.mp4@0",
    ]:
        other = _media_image(spec)
        assert frontal.shadowed_half(other, find_face(other).astype(np.float64)) is None, spec


def _media_image(spec: str) -> np.ndarray:
    """An image under ../shared/media, or frame N of a clip (``clip.mp4@N``)."""
    from realtime.analysis import read_frames

    path, _, index = spec.partition("@")
    if not index:
        return cv2.imread(str(MEDIA / path))
    return list(read_frames(str(MEDIA / path), int(index) + 1))[-1]


@needs_media
def test_hair_and_headwear_in_the_swapped_region_are_found_and_nothing_else():
    """A lock of hair at the temple, red hair past a turned cheek, the Mona Lisa's hair, the
    Pearl Earring's turban: found at the region's edge, above the nose. A beard, glasses, a
    painting's shadowed nose, a cartoon and plain portraits: nothing."""
    from realtime.swap import not_face

    with_hair = [
        "clips/styletalk_surprisegirl_clip2.mp4@39",
        "clips/extra_pexels7322716_woman_redhair.mp4@0",
        "avatars/liveportrait_s9.jpg",
        "avatars/liveportrait_s10.jpg",
    ]
    without = [
        "clips/extra_rppg_man_darkskin.mp4@0",
        "clips/extra_pexels8048492_man_glasses.mp4@0",
        "avatars/liveportrait_s8.jpg",
        "avatars/liveportrait_s7.jpg",
        "avatars/liveportrait_s5.jpg",
        "avatars/liveportrait_s42.jpg",
    ]
    for spec in with_hair:
        image = _media_image(spec)
        landmarks = find_face(image)
        found = not_face(image, landmarks)
        assert found is not None, spec
        ys, xs = np.nonzero(found)
        size = mesh.face_size(landmarks)
        region = _polygon_mask(landmarks, image.shape, grow=int(0.05 * size))
        assert region[ys, xs].all(), spec  # inside the swapped region (found blobs are grown a little)
        down = landmarks[152, :2] - landmarks[10, :2]  # forehead to chin
        down /= np.linalg.norm(down)
        depth = np.stack([xs, ys], 1) @ down
        assert depth.max() < landmarks[mesh.NOSE_BOTTOM, :2] @ down + 0.05 * size, spec
    for spec in without:
        image = _media_image(spec)
        assert not_face(image, find_face(image)) is None, spec


@needs_media
def test_a_lock_of_hair_on_the_avatars_temple_is_painted_over_with_its_skin():
    """Swapped, the avatar's hair inside the region would land as a dark streak on the user's
    temple; the swap warp draws her skin there instead."""
    from realtime.swap import not_face

    image = _media_image("clips/styletalk_surprisegirl_clip2.mp4@39")
    landmarks = find_face(image)
    hair = not_face(image, landmarks) > 0
    generator = WarpGenerator(image, landmarks, mode="swap")
    target = Target(
        frame=Frame(image, 0, 0.0),
        landmarks=mesh.with_mouth_centre(landmarks[:, :2]).astype(np.float32),
        mode=Mode.SWAP,
    )
    rendered = generator.render(target)  # drawn at its own landmarks: the avatar as it is, but for that
    drawn = image.copy()
    x0, y0 = rendered.origin
    h, w = rendered.patch.shape[:2]
    drawn[y0 : y0 + h, x0 : x0 + w] = rendered.patch
    lab_image = cv2.cvtColor(image, cv2.COLOR_BGR2LAB).astype(np.float32)
    lab_drawn = cv2.cvtColor(drawn, cv2.COLOR_BGR2LAB).astype(np.float32)
    face_core = (
        cv2.erode(_polygon_mask(landmarks, image.shape).astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    )
    skin = np.median(lab_image[face_core], axis=0)
    before = np.linalg.norm(lab_image[hair] - skin, axis=1).mean()
    after = np.linalg.norm(lab_drawn[hair] - skin, axis=1).mean()
    elsewhere = face_core & ~cv2.dilate(hair.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert before > 2 * after
    # the rest of the face is the avatar's own, to within the warp's resampling
    assert np.abs(lab_drawn[elsewhere] - lab_image[elsewhere]).mean() < 3.0
