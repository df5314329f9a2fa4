"""A screenshot of the live window with the picture-in-picture and the help overlay (for the README).

Runs `realtime run` on a virtual X server (Xvfb) with a real clip as the camera, waits for the
window, presses `h` with xdotool and saves the window's picture:

    python benchmarks/demo_screenshot.py [--input CLIP] [--avatar IMG ...] [--out PNG]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(MEDIA / "webcam" / "spectre_mead_W036_happy.mp4"))
    parser.add_argument(
        "--avatar", nargs="+", default=[str(MEDIA / "avatars" / "liveportrait_s7.jpg"), "builtin"]
    )
    parser.add_argument("--size", default="640x640")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "demo_window.png"))
    parser.add_argument("--display", default=":64")
    args = parser.parse_args()
    from PIL import Image, ImageGrab

    server = subprocess.Popen(
        ["Xvfb", args.display, "-screen", "0", "1280x800x24"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = dict(os.environ, DISPLAY=args.display)
    time.sleep(1.0)
    run = subprocess.Popen(
        [sys.executable, "-m", "realtime.cli", "run", "--avatar", *args.avatar, "--input", args.input]
        + ["--loop", "--sink", "window", "--size", args.size, "--seconds", "60"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def xdotool(*a: str) -> str:
        return subprocess.run(["xdotool", *a], capture_output=True, text=True, env=env).stdout.strip()

    try:
        window = ""
        for _ in range(120):
            window = xdotool("search", "--name", "^realtime$").split("\n")[0]
            if window:
                break
            time.sleep(0.5)
        if not window:
            print("no window appeared", file=sys.stderr)
            return 1
        time.sleep(8.0)  # past the first frames: the neutral is taken, the overlay filled
        xdotool("key", "--window", window, "h")
        time.sleep(1.5)
        geometry = xdotool("getwindowgeometry", window)
        x, y = (int(v) for v in re.search(r"Position: (\d+),(\d+)", geometry).groups())
        w, h = (int(v) for v in re.search(r"Geometry: (\d+)x(\d+)", geometry).groups())
        screen = np.asarray(ImageGrab.grab(xdisplay=args.display).convert("RGB"))
        Image.fromarray(screen[y : y + h, x : x + w]).save(args.out)
        print(f"wrote {args.out}")
        xdotool("key", "--window", window, "q")
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
