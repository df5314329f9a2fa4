"""Decode the audio of any file ffmpeg reads (wav, mp3, m4a, a video's sound) to mono float32."""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np

from realtime.errors import UserError


def probe_audio(path: str) -> str:
    """ffmpeg's description of the file's first audio stream, or raise UserError in one line."""
    import imageio_ffmpeg

    if not os.path.exists(path):
        raise UserError(f"audio file not found: {path}")
    if os.path.isdir(path):
        raise UserError(f"audio is a folder, not a sound file: {path}")
    if not os.access(path, os.R_OK):
        raise UserError(f"audio file is not readable (permissions): {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"audio file is empty (0 bytes): {path}")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.path.abspath(path)]
    try:
        probe = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"could not run ffmpeg on {path}: {exc}") from None
    if "Invalid data found" in probe or "could not find codec" in probe.lower() or "Stream #" not in probe:
        raise UserError(f"not a sound or video file ffmpeg can read: {path}")
    audio = re.search(r"Stream #\d+:\d+.*?: Audio: .*", probe)
    if audio is None:
        raise UserError(
            f"no audio stream in {path}: give a file with sound (wav, mp3, m4a, or a video with audio)"
        )
    return audio.group(0)


def read_audio(path: str, rate: int = 16000, start_s: float = 0.0) -> np.ndarray:
    """The file's first audio stream as mono float32 in [-1, 1] at ``rate`` Hz (any source rate
    or channel count), from ``start_s`` seconds; one-line UserError for unreadable input."""
    import imageio_ffmpeg

    probe_audio(path)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    if start_s > 0:
        cmd += ["-ss", f"{start_s:.6f}"]
    cmd += ["-i", os.path.abspath(path), "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(rate)]
    cmd += ["-f", "f32le", "pipe:1"]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"could not decode the audio of {path}: {exc}") from None
    samples = np.frombuffer(done.stdout, dtype=np.float32)
    if done.returncode != 0 and samples.size == 0:
        last = done.stderr.decode(errors="replace").strip().splitlines()
        raise UserError(f"could not decode the audio of {path}: {last[-1] if last else 'ffmpeg failed'}")
    if samples.size < rate // 10:
        raise UserError(f"the audio of {path} is shorter than 0.1 s")
    return np.nan_to_num(samples.copy(), nan=0.0, posinf=0.0, neginf=0.0).clip(-1.0, 1.0)
