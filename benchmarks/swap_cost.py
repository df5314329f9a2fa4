"""CPU cost of each swap-mode stage per frame, as CPU time rather than wall time.

    python benchmarks/swap_cost.py [--input VIDEO] [--avatar IMAGE] [--frames 90]

On a shared, busy machine the live benchmark's latencies say more about the neighbours than
about the code; the CPU time this process spends per frame (all its threads, ``process_time``)
is what the code costs, and is what must fit in the frame interval on a quiet machine. Stages:
tracking (swap mode's ``FrameProcessor.track``: mediapipe in this process, plus scaling a larger
camera frame to the output; ``scale`` alone is shown for reference, not summed), the swap warp (generate), the compositor (blend), and the hand model (occlusion, in this
process; live it runs in its own process at most 10 times a second, so its per-frame share is
about a third of this at 30 fps). It uses only the project's public per-frame API, so
``PYTHONPATH=/old/checkout`` measures an older version.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import cv2
import numpy as np

from realtime.avatar import load_avatar
from realtime.frames import Frame, Mode
from realtime.metrics import machine_description
from realtime.pipeline import offline_processor

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def cpu_ms(fn, *args):
    t0 = time.process_time()
    result = fn(*args)
    return result, (time.process_time() - t0) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(MEDIA / "webcam" / "EAMM_mead_M030_sad_1080p.mp4"))
    parser.add_argument("--avatar", default="builtin")
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    cap = cv2.VideoCapture(args.input)
    frames = []
    while len(frames) < args.frames:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    avatar = load_avatar(args.avatar, size)
    has_occlusion = "occlusion" in inspect.signature(offline_processor).parameters
    processor = offline_processor(
        avatar, "warp", mode=Mode.SWAP, size=size, **({"occlusion": False} if has_occlusion else {})
    )
    hands = None
    if has_occlusion:
        from realtime.occlusion import HandOccluder

        hands = HandOccluder(isolated=False)
    generator = processor.generators.for_mode(Mode.SWAP)
    targeter = processor.targeters[Mode.SWAP]
    costs: dict[str, list[float]] = {"scale": [], "track": [], "generate": [], "blend": [], "occlusion": []}
    try:
        for index, image in enumerate(frames):
            if (image.shape[1], image.shape[0]) != size:
                fit = getattr(processor, "_fit_camera", processor._fit)  # what swap mode's track() does
                _, ms = cpu_ms(fit, image)
                costs["scale"].append(ms)  # for reference: processor.track below includes it
            frame = Frame(image, index, index / 30.0)
            # Swap mode's own track(): scaling a larger camera frame to the output included.
            track, ms = cpu_ms(processor.track, frame)
            costs["track"].append(ms)
            image = track.frame.image
            target = targeter.process(track)
            if target is None:
                continue
            if hands is not None and track.landmarks is not None:
                _, ms = cpu_ms(hands.update, image, track.landmarks, frame.t_capture)
                costs["occlusion"].append(ms)
            rendered, ms = cpu_ms(generator.render, target)
            costs["generate"].append(ms)
            _, ms = cpu_ms(processor.blender.process, rendered)
            costs["blend"].append(ms)
    finally:
        processor.close()
        if hands is not None:
            hands.close()
    skip = 5  # the first frames build caches and mediapipe's graph
    report = {
        name: {
            "p50": round(float(np.median(v[skip:])), 2),
            "p95": round(float(np.percentile(v[skip:], 95)), 2),
        }
        for name, v in costs.items()
        if len(v) > skip
    }
    per_frame = sum(r["p50"] for k, r in report.items() if k not in ("occlusion", "scale"))
    print(
        f"input {Path(args.input).name} ({frames[0].shape[1]}x{frames[0].shape[0]}) -> {args.size}, avatar {args.avatar}"
    )
    for name, r in report.items():
        print(f"  {name:<10} p50 {r['p50']:6.2f}  p95 {r['p95']:6.2f}  CPU ms")
    print(f"  per frame without the hand model (p50 sum of track, generate, blend): {per_frame:.1f} CPU ms")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"stages": report, "machine": machine_description(), "input": args.input}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
