"""The preview window for real: an X server (Xvfb), OpenCV's window, keys sent with xdotool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    not (shutil.which("Xvfb") and shutil.which("xdotool")),
    reason="needs Xvfb and xdotool (apt-get install xvfb xdotool)",
)


@pytest.fixture()
def display():
    number = 90 + os.getpid() % 9
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1280x800x24"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def _xdotool(display: str, *args: str) -> str:
    env = dict(os.environ, DISPLAY=display)
    return subprocess.run(
        ["xdotool", *args], capture_output=True, text=True, env=env, timeout=20
    ).stdout.strip()


def test_window_shows_the_overlay_and_obeys_hotkeys(display):
    from PIL import ImageGrab

    env = dict(os.environ, DISPLAY=display)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "realtime.cli",
            "-v",
            "run",
            "--avatar",
            "builtin",
            "--sink",
            "window",
            "--input",
            _driver_clip(),
            "--loop",
            "--seconds",
            "60",
            "--fps",
            "25",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        window = ""
        for _ in range(60):
            window = _xdotool(display, "search", "--name", "^realtime$")
            if window:
                break
            time.sleep(0.5)
        assert window, "no window appeared"
        # The overlay is a dark translucent panel with white text in the top-left corner. The
        # first frame can take a while to be painted on a loaded machine: wait up to 20 s.
        for _ in range(40):
            time.sleep(0.5)
            shot = np.asarray(ImageGrab.grab(xdisplay=display).convert("RGB"))
            panel = shot[40:110, 60:700]
            if (panel.max(axis=2) > 230).mean() > 0.01:
                break
        assert (panel.max(axis=2) > 230).mean() > 0.01  # text
        assert shot[200:600, 320:960].std() > 20  # the portrait, not an empty window
        wid = window.splitlines()[0]
        for key in ("m", "n", "q"):
            _xdotool(display, "key", "--window", wid, key)
            time.sleep(0.7)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-1500:]
    assert "mode: swap" in err and "recalibrate requested" in err
    assert "frames" in out and "latency p50" in out  # q ended the run early and printed its summary
    assert "Traceback" not in err


def _driver_clip() -> str:
    """A short synthetic driving clip (the built-in driver), written once per session."""
    import tempfile

    from realtime.frames import Output
    from realtime.sinks import FileSink
    from realtime.sources import BuiltinDriverSource

    path = os.path.join(tempfile.gettempdir(), f"realtime-window-driver-{os.getpid()}.mp4")
    if not os.path.exists(path):
        source = BuiltinDriverSource(320, 240, 25.0, seconds=2.0, paced=False, loop=False)
        sink = FileSink(path)
        sink.open(320, 240, 25.0)
        while (frame := source.read()) is not None:
            sink.send(Output(image=frame.image, index=frame.index, t_capture=0.0))
        sink.close()
    return path
