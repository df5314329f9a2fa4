"""A render keeps the driver's audio aligned with its video, also when the video starts late."""

from __future__ import annotations

import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from realtime.media import video_start_offset_s
from tests.conftest import cli
from tests.test_audio_delay import SR, sine

# --------------------------------------------------------------------------- offline render

FPS = 25
FLASH = 40  # the frame with the white flash; the beep starts exactly when it is shown


def make_clip(path: Path, video_starts_at: float = 0.0) -> None:
    """3 s of the built-in driver, a white frame at FLASH and a 1 kHz beep starting with it.

    ``video_starts_at`` > 0 starts the video stream that much after the audio (as phone
    recordings do); the beep still coincides with the flash.
    """
    import imageio_ffmpeg

    from realtime.sources import BuiltinDriverSource

    source = BuiltinDriverSource(320, 240, FPS, seconds=3, paced=False, loop=False)
    frames = []
    while (frame := source.read()) is not None:
        frames.append(frame.image)
    frames[FLASH] = np.full_like(frames[FLASH], 255)
    audio = np.zeros(int(SR * 3.5), np.float32)
    onset = int(round((FLASH / FPS + video_starts_at) * SR))
    audio[onset : onset + SR // 10] = sine(SR // 10, 1000.0, 0.5)
    wav = path.with_suffix(".wav")
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "bgr24",
        "-s",
        "320x240",
        "-framerate",
        str(FPS),
    ]
    if video_starts_at:
        cmd += ["-itsoffset", str(video_starts_at)]
    cmd += [
        "-i",
        "pipe:0",
        "-i",
        str(wav),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        str(path),
    ]
    subprocess.run(cmd, input=np.stack(frames).tobytes(), check=True, timeout=60)


def beep_time(path: Path) -> float:
    """The beep's onset in seconds from the first video frame, on the file's own timeline."""
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    info = subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-i",
            str(path),
            "-vf",
            "showinfo",
            "-frames:v",
            "1",
            "-an",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr
    first_frame = float(re.search(r"pts_time:([-\d.]+)", info).group(1))
    # Audio with any leading gap filled with silence, so sample 0 is the file's time 0.
    raw = subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-loglevel",
            "error",
            "-i",
            str(path),
            "-map",
            "0:a",
            "-af",
            "aresample=async=1:first_pts=0",
            "-ac",
            "1",
            "-ar",
            str(SR),
            "-f",
            "f32le",
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    audio = np.frombuffer(raw, np.float32)
    return int(np.argmax(np.abs(audio) > 0.1)) / SR - first_frame


def flash_time(path: Path) -> float:
    """When the white frame is shown, from the first video frame (decoded with timestamps)."""
    import imageio_ffmpeg

    info = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-i",
            str(path),
            "-vf",
            "signalstats,metadata=print:key=lavfi.signalstats.YAVG",
            "-an",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stderr
    times = [float(t) for t in re.findall(r"pts_time:([-\d.]+)", info)]
    yavg = [float(v) for v in re.findall(r"YAVG=([\d.]+)", info)]
    return times[int(np.argmax(yavg))] - times[0]


@pytest.mark.parametrize("video_starts_at", [0.0, 0.2])
def test_render_keeps_the_driver_audio_aligned_with_the_video(tmp_path, video_starts_at):
    driver = tmp_path / "driver.mp4"
    make_clip(driver, video_starts_at)
    beep = beep_time(driver)
    assert beep == pytest.approx(FLASH / FPS, abs=0.005)  # the clip itself is right
    assert flash_time(driver) == pytest.approx(FLASH / FPS, abs=0.001)
    assert video_start_offset_s(driver) == pytest.approx(video_starts_at, abs=0.001)
    out = tmp_path / "out.mp4"
    proc = cli(
        "render", "--avatar", "builtin", "--driver", str(driver), "--out", str(out), "--generator", "warp"
    )
    assert proc.returncode == 0, proc.stderr
    beep = beep_time(out)
    # The output's frame FLASH (the driver's flash frame, rendered) is at FLASH / FPS.
    assert beep == pytest.approx(FLASH / FPS, abs=1.0 / FPS), (
        f"beep at {beep:.3f} s, frame {FLASH} at {FLASH / FPS} s"
    )
