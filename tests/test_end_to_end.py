"""End-to-end runs of the CLI on real footage (../shared/media) and on the built-in defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from realtime import mesh
from realtime.analysis import pearson, read_frames, track_video
from tests.conftest import media

CLI = [sys.executable, "-m", "realtime.cli"]


def _run(args: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc


def _streams(path) -> str:
    from imageio_ffmpeg import get_ffmpeg_exe

    probe = subprocess.run(
        [get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    )
    return probe.stderr


def test_headless_demo_writes_a_moving_face(tmp_path):
    out = tmp_path / "demo.mp4"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = _run(["demo", "--seconds", "4", "--out", str(out)], env=env)
    assert str(out) in proc.stdout
    assert "latency p50" in proc.stdout and "drops" in proc.stdout
    faces = track_video(str(out))
    assert len(faces.landmarks) >= 60
    assert faces.found_ratio >= 0.95
    mouth = faces.mouth
    assert np.nanmax(mouth) - np.nanmin(mouth) > 0.06  # the mouth visibly opens and closes


@pytest.fixture(scope="module")
def painting_render(tmp_path_factory):
    avatar = media("avatars/liveportrait_s9.jpg")  # Mona Lisa
    driver = media("webcam/spectre_mead_M003_happy.mp4")  # 1080p, talking, with audio
    out = tmp_path_factory.mktemp("render") / "mona.mp4"
    metrics = out.with_suffix(".json")
    _run(
        [
            "render",
            "--avatar",
            str(avatar),
            "--driver",
            str(driver),
            "--out",
            str(out),
            "--generator",
            "warp",
            "--metrics-json",
            str(metrics),
        ]
    )
    return avatar, driver, out, json.loads(metrics.read_text())


def test_render_keeps_every_frame_fps_and_audio(painting_render):
    _, driver, out, metrics = painting_render
    n_driver = sum(1 for _ in read_frames(str(driver)))
    n_out = sum(1 for _ in read_frames(str(out)))
    assert n_out == n_driver == metrics["frames"]
    assert metrics["dropped"] == 0
    fps_in = cv2.VideoCapture(str(driver)).get(cv2.CAP_PROP_FPS)
    fps_out = cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS)
    assert fps_out == pytest.approx(fps_in, rel=1e-3)
    info = _streams(out)
    assert "Audio:" in info and "h264" in info


def test_render_moves_the_painting_with_the_driver(painting_render):
    avatar, driver, out, _ = painting_render
    driven = track_video(str(driver))
    result = track_video(str(out))
    assert result.found_ratio >= 0.95
    assert pearson(driven.mouth, result.mouth) >= 0.8


def test_render_leaves_pixels_far_from_the_head_unchanged(painting_render):
    avatar, _, out, _ = painting_render
    from realtime.avatar import default_canvas_size, load_avatar
    from realtime.media import read_image

    size = default_canvas_size(read_image(str(avatar)))
    still = load_avatar(str(avatar), size)
    oval = still.landmarks[mesh.face_oval(), :2]
    centre = oval.mean(0)
    radius = np.linalg.norm(oval - centre, axis=1).max()
    ys, xs = np.mgrid[0 : size[1], 0 : size[0]]
    far = np.hypot(xs - centre[0], ys - centre[1]) > 3.2 * radius
    assert far.sum() > 0.2 * far.size
    frames = list(read_frames(str(out)))
    # Far from the head the output is the painting (up to H.264/yuv420 coding noise)...
    assert np.abs(frames[0].astype(np.int16) - still.image)[far].mean() < 4.0
    # ...and it does not move while the face talks.
    for frame in frames[1:]:
        assert np.abs(frame.astype(np.int16) - frames[0])[far].mean() < 1.0
    near = np.hypot(xs - centre[0], ys - centre[1]) < radius
    motion = [np.abs(f.astype(np.int16) - still.image)[near].mean() for f in read_frames(str(out), 60)]
    assert max(motion) > 4.0


def test_swap_keeps_background_and_pose_and_changes_identity(tmp_path):
    avatar = media("avatars/liveportrait_s42.jpg")
    driver = media("webcam/spectre_mead_W023_surprised.mp4")
    out = tmp_path / "swap.mp4"
    _run(
        [
            "render",
            "--mode",
            "swap",
            "--avatar",
            str(avatar),
            "--driver",
            str(driver),
            "--out",
            str(out),
            "--generator",
            "warp",
        ]
    )
    real = list(read_frames(str(driver), 30))
    swapped = list(read_frames(str(out), 30))
    assert swapped[0].shape == real[0].shape
    from realtime.tracking import FaceTracker

    judge = FaceTracker(smoothing=False, track_width=0)
    for a, b in zip(real[::10], swapped[::10], strict=False):
        la, lb = judge.detect(a)[0], judge.detect(b)[0]
        # Same pose and place: the swapped face sits where the user's face is.
        assert np.linalg.norm(la[mesh.RIGID, :2] - lb[mesh.RIGID, :2], axis=1).mean() < 0.08 * mesh.face_size(
            la
        )
        oval = np.zeros(a.shape[:2], np.uint8)
        cv2.fillPoly(oval, [np.round(la[mesh.face_oval(), :2]).astype(np.int32)], 255)
        grown = cv2.dilate(oval, np.ones((31, 31), np.uint8))
        inner = cv2.erode(oval, np.ones((31, 31), np.uint8)) > 0
        diff = np.abs(a.astype(np.int16) - b).mean(axis=2)
        assert diff[grown == 0].mean() < 3.0  # background: H.264 re-encoding noise only
        assert diff[inner].mean() > 8.0  # identity region: changed
