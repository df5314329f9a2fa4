"""The user's glasses in swap mode: found as rims round the eyes, kept in front of the swapped face."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from realtime import mesh
from realtime.analysis import read_frames
from realtime.frames import Frame, Mode
from realtime.glasses import BROW_LOOPS, OFF_FRAMES, GlassesFinder
from realtime.swap import inner_face_polygon
from realtime.tracking import FaceTracker, find_face
from tests.conftest import MEDIA

needs_media = pytest.mark.skipif(not MEDIA.is_dir(), reason="needs ../shared/media")


def _with_glasses(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with a dark frame drawn round both eyes and across the nose, and that frame's mask."""
    points = landmarks[:, :2]
    size = mesh.face_size(points)
    rims = np.zeros(image.shape[:2], np.uint8)
    thickness = max(2, int(round(0.03 * size)))
    for eye in (mesh.RIGHT_EYE, mesh.LEFT_EYE):
        centre = np.round(points[eye].mean(axis=0)).astype(int)
        axes = (int(0.24 * size), int(0.17 * size))
        cv2.ellipse(rims, tuple(centre), axes, 0, 0, 360, 255, thickness, cv2.LINE_AA)
    inner = [np.round(points[i]).astype(int) for i in (mesh.RIGHT_EYE_INNER, mesh.LEFT_EYE_INNER)]
    cv2.line(rims, tuple(inner[0]), tuple(inner[1]), 255, thickness, cv2.LINE_AA)
    share = rims.astype(np.float32)[..., None] / 255.0
    framed = (image.astype(np.float32) * (1.0 - share) + 25.0 * share).astype(np.uint8)
    return framed, rims > 127


def test_a_frame_drawn_round_the_eyes_is_found_and_a_bare_face_has_none(astronaut):
    image = cv2.resize(astronaut, (640, 640))
    landmarks = find_face(image)
    framed, rims = _with_glasses(image, landmarks)

    bare = GlassesFinder()
    assert all(bare.find(image, landmarks) is None for _ in range(12)) and not bare.worn

    finder = GlassesFinder()
    masks = [finder.find(framed, landmarks) for _ in range(12)]
    assert masks[0] is None  # one frame is not enough to switch on
    assert finder.worn and masks[-1] is not None
    rims_found, (x, y) = masks[-1]
    found = np.zeros(image.shape[:2], bool)
    found[y : y + rims_found.shape[0], x : x + rims_found.shape[1]] = rims_found > 0.5
    # the frame below the eyes' line (above it, the part over the brows is left to the avatar)
    below_eyes = np.arange(image.shape[0])[:, None] > landmarks[mesh.RIGHT_EYE + mesh.LEFT_EYE, 1].mean()
    assert found[rims & below_eyes].mean() > 0.9 and found[rims].mean() > 0.7
    # and little else: the rest of the face stays the avatar's
    outside = ~cv2.dilate(rims.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert found[outside].sum() < 0.3 * rims.sum()

    # taken off: not dropped at once (a turn or the light can hide the rims for a moment), but
    # after OFF_FRAMES looks without them (the mask is looked for on every other frame)
    calls = 0
    while finder.worn and calls < 3 * OFF_FRAMES:
        finder.find(image, landmarks)
        calls += 1
    assert OFF_FRAMES <= calls <= 2 * OFF_FRAMES + 1 and not finder.worn
    assert finder.find(image, landmarks) is None


def _rims_in(image: np.ndarray) -> np.ndarray:
    """A real frame's dark glasses rims inside the swapped region (brows and eyes left out)."""
    points = find_face(image)[:, :2]
    size = mesh.face_size(points)
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    width = 2 * round(0.045 * size) + 1
    dark = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, np.ones((width, width), np.uint8)) > 40
    inside = np.zeros_like(grey)
    cv2.fillPoly(inside, [np.round(inner_face_polygon(points)).astype(np.int32)], 1)
    features = np.zeros_like(grey)
    for loop in (mesh.RIGHT_EYE, mesh.LEFT_EYE, *BROW_LOOPS):
        cv2.fillPoly(features, [np.round(points[loop]).astype(np.int32)], 1)
    features = cv2.dilate(features, np.ones((width, width), np.uint8))
    return dark & (inside > 0) & (features == 0)


@needs_media
def test_a_real_users_glasses_are_kept_on_request_and_never_flash_in_on_a_blink(monkeypatch):
    """The woman with black rectangular glasses (StyleHEAT) under the dark-skinned avatar.
    Kept (``--keep-glasses``): her frame stays in front of his face. By default the avatar's face
    is drawn as it is, without her glasses; before the finder, her frame flashed back in at the
    bottom of each blink, with the eyelids the blink shows her own (frame 12)."""
    from realtime.avatar import make_avatar
    from realtime.pipeline import offline_processor

    frames = list(read_frames(str(MEDIA / "clips" / "StyleHEAT_video.mp4"), 58))
    avatar_image = next(read_frames(str(MEDIA / "clips" / "extra_rppg_man_darkskin.mp4"), 1))
    size = (frames[0].shape[1], frames[0].shape[0])

    def swapped(keep: bool) -> list[np.ndarray]:
        avatar = make_avatar(avatar_image, size, "dark")
        processor = offline_processor(avatar, "warp", mode=Mode.SWAP, size=size, occlusion=False)
        processor.controls.tune(keep_glasses=keep)
        try:
            return [processor.process(Frame(f, i, i / 25.0)).image for i, f in enumerate(frames)]
        finally:
            processor.close()

    def off(outputs: list[np.ndarray], k: int, where: np.ndarray) -> float:
        grey = cv2.cvtColor(frames[k], cv2.COLOR_BGR2GRAY).astype(int)
        return float(np.abs(cv2.cvtColor(outputs[k], cv2.COLOR_BGR2GRAY) - grey)[where].mean())

    kept, swapped_away = swapped(True), swapped(False)
    monkeypatch.setattr(GlassesFinder, "find", lambda self, image, landmarks, mask=True: None)
    unseen = swapped(False)
    for k in (25, 30, 38, 39):  # 30, 38: the mask moved with the eyes to the face box's edge
        rims = _rims_in(frames[k])
        assert rims.sum() > 2000  # the premise: a frame inside the swapped region
        assert off(kept, k, rims) < 8 and off(swapped_away, k, rims) > 25, k
    blink = 12
    assert mesh.eye_opening(find_face(frames[blink])) < 0.6 * mesh.eye_opening(find_face(frames[50]))
    rims = _rims_in(frames[blink])
    assert off(kept, blink, rims) < 8
    # the flash: the rims came partly back with her eyelids (7.5 grey levels on average here)
    assert off(swapped_away, blink, rims) > off(unseen, blink, rims) + 5


@needs_media
@pytest.mark.parametrize(
    "clip",
    [
        "webcam/spectre_mead_W015_neutral.mp4",
        "clips/Wav2Lip-GFPGAN_kim_7s_raw.mp4",  # eye make-up
        "clips/extra_rppg_man_darkskin.mp4",
        "clips/LatentSync_demo1_video.mp4",
        "webcam/openh264_foreman_cif.mp4",
    ],
)
def test_users_without_glasses_get_none(clip):
    finder = GlassesFinder()
    with FaceTracker(smoothing=False, track_width=0) as tracker:
        for image in read_frames(str(MEDIA / clip), 90):
            faces = tracker.detect(image)
            if faces:
                assert finder.find(image, faces[0]) is None, clip
