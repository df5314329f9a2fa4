"""Sinks against real components: pyvirtualcam.Camera with a registered backend, real ffmpeg."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
import wave
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import pyvirtualcam
from pyvirtualcam.camera import BACKENDS
from pyvirtualcam.util import decode_fourcc

from realtime.controls import Controls
from realtime.errors import DeviceUnavailable, UserError
from realtime.frames import Output
from realtime.sinks import (
    FileSink,
    NullSink,
    VirtualCamSink,
    WindowSink,
    draw_overlay,
    fps_rational,
    make_sink,
    overlay_lines,
)

BLUE = (255, 0, 0)  # BGR
RED = (0, 0, 255)


def split_image(width: int, height: int) -> np.ndarray:
    """Pure blue left half, pure red right half (BGR)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = BLUE
    img[:, width // 2 :] = RED
    return img


def output(image: np.ndarray, index: int = 0, face_found: bool = True) -> Output:
    return Output(image=image, index=index, t_capture=time.monotonic(), face_found=face_found)


class MemoryBackend:
    """A pyvirtualcam backend that keeps what it receives."""

    instances: list[MemoryBackend] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: object):
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.frames: list[np.ndarray] = []
        self.closed = False
        MemoryBackend.instances.append(self)

    def send(self, frame: np.ndarray) -> None:
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return "memory0"

    def native_fourcc(self) -> None:
        return None


@pytest.fixture
def memory_backend():
    MemoryBackend.instances.clear()
    pyvirtualcam.register_backend("memory", MemoryBackend)
    try:
        yield MemoryBackend
    finally:
        BACKENDS.pop("memory", None)


def count_video_frames(path: Path) -> int:
    nframes, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return nframes


def stream_info(path: Path) -> str:
    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
    )
    return proc.stderr


def first_frame(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


# --------------------------------------------------------------------------- virtual camera


def test_virtualcam_memory_backend_gets_bgr_frames(memory_backend):
    sink = VirtualCamSink(backend="memory")
    sink.open(320, 240, 30)
    assert sink.device_name == "memory0"
    for i in range(10):
        sink.send(output(split_image(320, 240), i))
    sink.close()

    (backend,) = memory_backend.instances
    assert backend.closed
    assert sink.frames == 10
    assert len(backend.frames) == 10
    # pyvirtualcam's Camera does no conversion in Python: the backend is told the input
    # format (fourcc '24BG' = BGR) and receives the BGR bytes, flattened. Converting to the
    # device's format is each native backend's job.
    assert decode_fourcc(backend.fourcc) == "24BG"
    assert (backend.width, backend.height) == (320, 240)
    for flat in backend.frames:
        assert flat.dtype == np.uint8 and flat.ndim == 1 and flat.size == 320 * 240 * 3
        img = flat.reshape(240, 320, 3)
        assert (img[:, :160] == BLUE).all(), "left half must be blue"
        assert (img[:, 160:] == RED).all(), "right half must be red"


def test_virtualcam_resizes_other_sizes(memory_backend):
    sink = make_sink("virtualcam:memory")
    sink.open(320, 240, 30)
    sink.send(output(split_image(640, 480)))
    sink.close()
    img = memory_backend.instances[0].frames[0].reshape(240, 320, 3)
    assert tuple(img[120, 10]) == BLUE and tuple(img[120, 310]) == RED


@pytest.mark.skipif(
    platform.system() != "Linux" or any(Path("/dev").glob("video*")),
    reason="needs a Linux machine without v4l2loopback",
)
def test_default_virtualcam_unavailable_tells_fix(memory_backend):
    # A registered test backend must not be picked up by the plain default either.
    sink = VirtualCamSink()
    with pytest.raises(DeviceUnavailable) as info:
        sink.open(320, 240, 30)
    msg = str(info.value)
    assert "\n" not in msg
    assert "modprobe v4l2loopback" in msg
    assert "v4l2loopback-dkms" in msg
    assert "No v4l2 loopback device" in msg  # the backend's own error, briefly
    assert not memory_backend.instances


def test_virtualcam_unknown_backend():
    with pytest.raises(UserError, match="Unknown virtual camera backend"):
        VirtualCamSink(backend="nope").open(64, 48, 30)


# --------------------------------------------------------------------------- file


def test_file_sink_h264_exact_frames(tmp_path):
    path = tmp_path / "out.mp4"
    sink = FileSink(path)
    sink.open(320, 240, 30000 / 1001)
    for i in range(25):
        sink.send(output(split_image(320, 240), i))
    sink.close()

    assert sink.frames == 25
    assert path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert count_video_frames(path) == 25
    info = stream_info(path)
    assert "h264" in info and "320x240" in info and "yuv420p" in info
    assert "29.97 fps" in info
    frame = first_frame(path)
    assert frame.shape == (240, 320, 3)
    # colour order survives bgr24 -> yuv420p -> decode
    assert np.abs(frame[120, 40].astype(int) - BLUE).max() < 30
    assert np.abs(frame[120, 280].astype(int) - RED).max() < 30


def write_sine_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (12000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())


def duration_s(path: Path) -> float:
    m = re.search(r"Duration: (\d+):(\d+):([\d.]+)", stream_info(path))
    assert m, stream_info(path)
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


@pytest.mark.parametrize("trim_audio", [True, False])
def test_file_sink_muxes_audio_keeps_frames(tmp_path, trim_audio):
    wav = tmp_path / "tone.wav"
    write_sine_wav(wav, 10.0)
    path = tmp_path / "with_audio.mp4"
    sink = FileSink(path, audio_from=str(wav), trim_audio=trim_audio)
    sink.open(160, 120, 30)
    for i in range(12):  # 0.4 s of video against 10 s of audio
        sink.send(output(split_image(160, 120), i))
    sink.close()

    info = stream_info(path)
    assert re.search(r"Stream #0:\d.*Audio: aac", info), info
    assert count_video_frames(path) == 12
    assert not list(tmp_path.glob(".*part*"))
    if trim_audio:
        # audio cut near the last frame (ffmpeg's -shortest may let it run a little over)
        assert duration_s(path) < 2.0
    else:
        assert duration_s(path) > 9.5  # whole audio track kept


def test_file_sink_audio_shorter_than_video(tmp_path):
    wav = tmp_path / "blip.wav"
    write_sine_wav(wav, 0.2)
    path = tmp_path / "out.mp4"
    sink = FileSink(path, audio_from=str(wav))
    sink.open(160, 120, 30)
    for i in range(45):  # 1.5 s of video against 0.2 s of audio
        sink.send(output(split_image(160, 120), i))
    sink.close()
    assert count_video_frames(path) == 45
    assert "Audio: aac" in stream_info(path)


def test_file_sink_audio_source_without_audio(tmp_path):
    driver = tmp_path / "silent.mp4"
    sink = FileSink(driver)
    sink.open(64, 48, 25)
    for i in range(5):
        sink.send(output(split_image(64, 48), i))
    sink.close()

    path = tmp_path / "out.mp4"
    sink = FileSink(path, audio_from=str(driver))
    sink.open(64, 48, 25)
    for i in range(7):
        sink.send(output(split_image(64, 48), i))
    sink.close()
    assert count_video_frames(path) == 7
    assert "Audio:" not in stream_info(path)


def test_file_sink_odd_size(tmp_path):
    path = tmp_path / "odd.mp4"
    sink = FileSink(path)
    sink.open(161, 121, 24)
    for i in range(6):
        sink.send(output(split_image(161, 121), i))
    sink.close()
    assert count_video_frames(path) == 6
    assert first_frame(path).shape == (122, 162, 3)


def test_file_sink_failure_cleans_up(tmp_path):
    bogus = tmp_path / "not_media.wav"
    bogus.write_text("this is not audio\n")
    path = tmp_path / "fail.mp4"
    sink = FileSink(path, audio_from=str(bogus))
    sink.open(64, 48, 30)
    with pytest.raises(UserError) as info:
        for i in range(200):
            sink.send(output(split_image(64, 48), i))
            time.sleep(0.001)
        sink.close()
    msg = str(info.value)
    assert "\n" not in msg and "ffmpeg exit" in msg
    assert "no error output" not in msg
    assert not path.exists()
    assert os.listdir(tmp_path) == ["not_media.wav"]


def test_file_sink_missing_inputs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        FileSink(tmp_path / "nope" / "x.mp4").open(64, 48, 30)
    with pytest.raises(UserError, match="not found"):
        FileSink(tmp_path / "x.mp4", audio_from=str(tmp_path / "missing.wav")).open(64, 48, 30)


def test_file_sink_no_frames_writes_nothing(tmp_path):
    sink = FileSink(tmp_path / "empty.mp4")
    sink.open(64, 48, 30)
    sink.close()
    assert os.listdir(tmp_path) == []


def test_fps_rational():
    assert fps_rational(30) == "30/1"
    assert fps_rational(30000 / 1001) == "30000/1001"
    assert fps_rational(29.97) == "2997/100"
    with pytest.raises(UserError):
        fps_rational(0)


# --------------------------------------------------------------------------- others


def test_null_sink_counts():
    sink = NullSink()
    sink.open(64, 48, 30)
    for i in range(5):
        sink.send(output(split_image(64, 48), i))
    sink.close()
    assert sink.frames == 5


def test_make_sink_specs(tmp_path):
    controls = Controls()
    assert isinstance(make_sink("null"), NullSink)
    vc = make_sink("virtualcam")
    assert isinstance(vc, VirtualCamSink) and vc.backend is None
    assert make_sink("virtualcam:obs").backend == "obs"
    assert make_sink("virtualcam:v4l2loopback").backend == "v4l2loopback"
    win = make_sink("window", controls)
    assert isinstance(win, WindowSink) and win.controls is controls
    fs = make_sink(f"file:{tmp_path / 'a.mp4'}")
    assert isinstance(fs, FileSink) and fs.path == tmp_path / "a.mp4"
    for bad in ("", "webcam", "file:", "virtualcam:", "null:x", "window:2"):
        with pytest.raises(UserError) as info:
            make_sink(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="virtualcam:BACKEND"):
        make_sink("bogus")


def test_draw_overlay_changes_pixels_on_a_copy():
    img = np.full((240, 320, 3), 128, np.uint8)
    out = output(img, face_found=False)
    out.stage_ms = {"track": 3.2, "gen": 11.0}
    lines = overlay_lines(out, fps=29.9, latency_ms=42.0)
    assert ("NO FACE", (0, 0, 255)) in lines
    assert any("latency" in str(line) for line in lines)
    assert any("track 3.2" in str(line) for line in lines)
    drawn = draw_overlay(img, lines)
    assert drawn.shape == img.shape and drawn.dtype == np.uint8
    assert (drawn != img).any()
    assert (img == 128).all(), "input must not be modified"
    # the NO FACE line is drawn in red somewhere
    assert ((drawn[:, :, 2] > 200) & (drawn[:, :, 0] < 60)).any()


def test_window_hotkeys_and_no_display(monkeypatch):
    controls = Controls()
    win = WindowSink(controls)
    win.handle_key(ord("n"))
    assert controls.take_recalibrate()
    win.handle_key(ord("m"))
    assert controls.mode == "swap"
    win.handle_key(-1)
    assert not controls.quit.is_set()
    win.handle_key(27)
    assert controls.quit.is_set()
    if platform.system() == "Linux":
        monkeypatch.delenv("DISPLAY", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        with pytest.raises(DeviceUnavailable) as info:
            win.open(320, 240, 30)
        assert "\n" not in str(info.value)
