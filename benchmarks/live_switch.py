"""Live demo costs: preparing an avatar, switching to a prepared one, the first frame after a
switch, and encoding a recording.

    python benchmarks/live_switch.py [--avatars IMG ...] [--size 640] [--json PATH]

Prints one table; medians over repeats. The render times use the built-in driver's tracked
face, so they are the per-frame work the live loop does (tracking excluded).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media" / "avatars"


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000.0, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ["builtin", *sorted(str(p) for p in MEDIA.glob("*.jpg"))[:4]]
    parser.add_argument("--avatars", nargs="+", default=default)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--generator", default="warp", help="warp or a shipped refiner (e.g. refiner)")
    parser.add_argument("--switches", type=int, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from realtime.controls import Controls
    from realtime.frames import FaceTrack, Frame, Output
    from realtime.live import AvatarLibrary, LiveProcessor
    from realtime.metrics import Metrics, machine_description
    from realtime.sinks.file import FileSink
    from realtime.sources import BuiltinDriverSource
    from realtime.tracking import find_face

    size = (args.size, args.size)
    controls = Controls()
    prepare_s: list[float] = []
    t0 = time.perf_counter()
    library = AvatarLibrary(args.avatars, size, args.generator, controls=controls)  # prepares the first
    prepare_s.append(time.perf_counter() - t0)
    for index in range(1, len(args.avatars)):
        t0 = time.perf_counter()
        library._prepared[index] = library.prepare(index)  # timed here, in the foreground
        prepare_s.append(time.perf_counter() - t0)

    class Fixed:
        def open(self):
            return self

        def close(self):
            pass

        def process(self, frame):
            return FaceTrack(frame=frame, landmarks=None)

    processor = LiveProcessor(library, Fixed(), controls, Metrics(), size)
    driver = BuiltinDriverSource(640, 480, 30.0, seconds=2.0, paced=False, loop=True)
    driver.open()
    frames = [driver.read() for _ in range(30)]
    driver.close()
    tracks = []
    for frame in frames:
        landmarks = find_face(frame.image)
        tracks.append(FaceTrack(frame=Frame(frame.image, frame.index, time.monotonic()), landmarks=landmarks))

    steady_s, first_s, switch_s = [], [], []
    for i in range(args.switches):
        for track in tracks[:5]:  # steady state on the current avatar
            t0 = time.perf_counter()
            processor.render(track)
            steady_s.append(time.perf_counter() - t0)
        controls.request_avatar((processor.current.index + 1) % len(args.avatars))
        t0 = time.perf_counter()
        processor.apply_controls()
        switch_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        processor.render(tracks[(i * 7) % len(tracks)])
        first_s.append(time.perf_counter() - t0)

    encode: dict[str, float] = {}
    image = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), np.uint8))
    smooth = cv2.resize(tracks[0].frame.image, size)  # a real picture, and noise: both extremes
    for preset in ("ultrafast", "veryfast"):
        with tempfile.TemporaryDirectory() as folder:
            sink = FileSink(Path(folder) / "rec.mp4", preset=preset)
            sink.open(*size, 30.0)
            t0 = time.perf_counter()
            for i in range(90):
                source = smooth if i % 2 else image
                sink.send(Output(image=source, index=i, t_capture=0.0))
            sink.close()
            encode[preset] = round(90 / (time.perf_counter() - t0), 1)

    result = {
        "size": f"{args.size}x{args.size}",
        "generator": args.generator,
        "avatars": len(args.avatars),
        "prepare_ms_median": _ms(prepare_s),
        "prepare_ms_max": round(max(prepare_s) * 1000.0, 1),
        "switch_apply_ms_median": _ms(switch_s),
        "render_ms_steady_median": _ms(steady_s),
        "render_ms_first_after_switch_median": _ms(first_s),
        "recording_encode_fps": encode,
        "machine": machine_description(),
    }
    print(f"avatars prepared: {len(args.avatars)} at {result['size']} ({args.generator})")
    print(
        f"  prepare one avatar       median {result['prepare_ms_median']:.0f} ms  max {result['prepare_ms_max']:.0f} ms"
    )
    print(f"  switch (apply controls)  median {result['switch_apply_ms_median']:.3f} ms")
    print(
        f"  render, steady           median {result['render_ms_steady_median']:.1f} ms; "
        f"first after a switch {result['render_ms_first_after_switch_median']:.1f} ms"
    )
    print(f"  recording encoder        {encode} frames/s (fed as fast as it takes them)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"json: {args.json}")
    library.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
