"""Soak: the real live engine for a long run; memory and latency must stay flat.

    python benchmarks/soak.py [--frames 20000] [--fps 60 | --unpaced] [--size 640x480]
                              [--json benchmarks/results/soak.json]

What runs is `realtime run`'s engine with nothing faked: the built-in avatar, the built-in
driving sequence looping (paced at ``--fps``, or unpaced), mediapipe in its own process
(``FaceTracker(isolated=True)``, as the CLI builds it), the warp generator and a null sink.
The run stops once ``--frames`` new frames have reached the sink.

Every ``--sample-s`` seconds the resident memory of this process and of its children (the
tracker process) is sampled. Per 1,000 frames the table shows the capture-to-sink latency
p50/p95 and the memory at the end of that block. The driver's frames are rendered (and
cached) before the run, so the starting memory already holds them: growth after that is
the engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from realtime.frames import Output  # noqa: E402
from realtime.sinks import NullSink  # noqa: E402

MB = 2**20


class CountingSink(NullSink):
    """A null sink that counts new (not repeated) frames and ends the run after ``limit``."""

    def __init__(self, limit: int, quit_event: threading.Event, on_limit=None) -> None:
        super().__init__()
        self.limit, self.quit_event, self.on_limit = limit, quit_event, on_limit
        self.new_frames = 0
        self._last_index = -1

    def send(self, out: Output) -> None:
        super().send(out)
        if out.index > self._last_index:  # a repeat re-sends the previous Output
            self._last_index = out.index
            self.new_frames += 1
            if self.new_frames == self.limit:
                if self.on_limit is not None:
                    self.on_limit()
                self.quit_event.set()


class MemorySampler:
    """Samples (t, frames so far, drops so far, own RSS, children's RSS) in a thread."""

    def __init__(self, metrics, every_s: float) -> None:
        import psutil

        self.metrics, self.every_s = metrics, every_s
        self._process = psutil.Process()
        self.samples: list[tuple[float, int, int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)

    def rss(self) -> tuple[float, float]:
        """(this process, its children) in MB."""
        own = self._process.memory_info().rss / MB
        children = 0.0
        for child in self._process.children(recursive=True):
            try:
                children += child.memory_info().rss / MB
            except Exception:  # a child that just exited
                pass
        return own, children

    def sample(self) -> None:
        own, children = self.rss()
        dropped = sum(self.metrics.dropped.values())
        self.samples.append((time.monotonic(), self.metrics.frames, dropped, own, children))

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self, final_sample: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if final_sample:
            self.sample()

    def at(self, t: float) -> tuple[float, int, int, float, float]:
        """The last sample taken at or before ``t`` (the first one if none)."""
        times = [s[0] for s in self.samples]
        i = int(np.searchsorted(times, t, side="right")) - 1
        return self.samples[max(0, i)]

    def at_frames(self, frames: int) -> tuple[float, int, int, float, float]:
        """The first sample taken once ``frames`` frames had reached the sink (the last if never)."""
        for s in self.samples:
            if s[1] >= frames:
                return s
        return self.samples[-1]


def run_soak(
    frames: int = 20_000,
    fps: float = 60.0,
    unpaced: bool = False,
    size: tuple[int, int] = (640, 480),
    driver_seconds: float = 3.0,
    budget_ms: float | None = 100.0,
    chunk: int = 1000,
    sample_s: float = 1.0,
    max_seconds: float | None = None,
) -> dict:
    """Run the live engine until ``frames`` new frames reached the sink; memory and latency per chunk."""
    from realtime.avatar import load_avatar
    from realtime.controls import Controls
    from realtime.generators.registry import build_generators
    from realtime.loop import Engine
    from realtime.metrics import Metrics, machine_description, percentiles
    from realtime.pipeline import FrameProcessor
    from realtime.sources import BuiltinDriverSource
    from realtime.tracking import FaceTracker

    avatar = load_avatar("builtin", size)
    controls = Controls(mode="reenact")
    processor = FrameProcessor(
        avatar, build_generators("warp", avatar), FaceTracker(isolated=True), controls, Metrics(), avatar.size
    )
    source = BuiltinDriverSource(size[0], size[1], fps, seconds=driver_seconds, paced=not unpaced, loop=True)
    for i in range(source.frame_count):  # render the looped driver once, before measuring
        source.render(i)
    sampler = MemorySampler(processor.metrics, sample_s)
    # The last sample is taken as the last frame arrives: the engine then closes the source,
    # which frees the driver's cached frames.
    sink = CountingSink(frames, controls.quit, on_limit=sampler.sample)
    try:
        engine = Engine(source, processor, [sink], fps=fps, budget_ms=budget_ms)
        sampler.start()
        summary = engine.run(seconds=max_seconds)
    finally:
        sampler.stop(final_sample=False)
        processor.close()

    metrics = processor.metrics
    latency = np.asarray(metrics.latency_ms)
    times = np.asarray(metrics.latency_times)
    chunks = []
    for start in range(0, len(latency) - chunk + 1, chunk):
        block = latency[start : start + chunk]
        t_end, _, dropped, own, children = sampler.at(float(times[start + chunk - 1]))
        chunks.append(
            {
                "frames": start + chunk,
                "t_s": round(float(times[start + chunk - 1]) - (metrics.t_start or 0.0), 1),
                "latency_p50_ms": round(float(np.percentile(block, 50)), 2),
                "latency_p95_ms": round(float(np.percentile(block, 95)), 2),
                "rss_mb": round(own, 1),
                "tracker_rss_mb": round(children, 1),
                "dropped_so_far": dropped,
            }
        )
    first, mid = sampler.samples[0], sampler.at_frames(len(latency) // 2)
    last = sampler.at(float(times[-1])) if len(times) else sampler.samples[-1]
    warm = sampler.at_frames(min(chunk, len(latency)))

    def memory_over_time(column: int) -> dict[str, float]:
        """One memory column of the samples (3: this process, 4: the tracker) at the key moments."""
        moments = {"start": first, "after_first_chunk": warm, "mid": mid, "end": last}
        profile = {name: round(sample[column], 1) for name, sample in moments.items()}
        return profile | {"max": round(max(s[column] for s in sampler.samples), 1)}

    return {
        "frames": summary["frames"],
        "captured": summary["captured"],
        "dropped": summary["dropped"],
        "dropped_by_reason": summary["dropped_by_reason"],
        "repeats": summary["repeats"],
        "errors": summary["errors"],
        "duration_s": summary["duration_s"],
        "fps": summary["fps"],
        "latency_ms": percentiles(latency),
        "rss_mb": memory_over_time(3),
        "tracker_rss_mb": memory_over_time(4),
        "chunk_frames": chunk,
        "chunks": chunks,
        "samples": len(sampler.samples),
        "settings": {
            "frames": frames,
            "fps": None if unpaced else fps,
            "paced": not unpaced,
            "size": f"{size[0]}x{size[1]}",
            "budget_ms": budget_ms,
            "generator": "warp",
            "avatar": "builtin",
            "driver": f"builtin, {source.frame_count} frames looped",
            "tracker": "mediapipe in its own process",
            "sink": "null",
        },
        "machine": machine_description(),
    }


def format_table(result: dict) -> str:
    lines = [
        f"{'frames':>8} {'t (s)':>8} {'p50 ms':>8} {'p95 ms':>8} {'RSS MB':>8} {'tracker MB':>11} {'drops':>7}"
    ]
    for c in result["chunks"]:
        lines.append(
            f"{c['frames']:>8} {c['t_s']:>8.1f} {c['latency_p50_ms']:>8.1f} {c['latency_p95_ms']:>8.1f}"
            f" {c['rss_mb']:>8.1f} {c['tracker_rss_mb']:>11.1f} {c['dropped_so_far']:>7}"
        )
    rss, trk, lat = result["rss_mb"], result["tracker_rss_mb"], result["latency_ms"]
    lines.append(
        f"frames {result['frames']}  captured {result['captured']}  drops {result['dropped']}"
        f"  repeats {result['repeats']}  errors {result['errors'] or 0}  {result['duration_s']:.0f} s"
        f"  ({result['fps']:.1f} fps)"
    )
    lines.append(f"latency p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  max {lat['max']:.1f} ms")
    lines.append(
        f"RSS MB start {rss['start']}  after first chunk {rss['after_first_chunk']}  mid {rss['mid']}"
        f"  end {rss['end']}  max {rss['max']};  tracker process start {trk['start']}  end {trk['end']}"
    )
    lines.append(result["machine"])
    return "\n".join(lines)


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000, help="new frames at the sink before stopping")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--fps", type=float, default=60.0, help="pace the driver at this fps")
    pace.add_argument("--unpaced", action="store_true", help="read the driver as fast as possible")
    parser.add_argument("--size", type=_size, default=(640, 480), help="driver and output WxH")
    parser.add_argument("--budget-ms", type=float, default=100.0, help="drop frames older than this")
    parser.add_argument("--sample-s", type=float, default=1.0, help="memory sampling interval")
    parser.add_argument("--max-seconds", type=float, default=None, help="stop after this long in any case")
    parser.add_argument("--json", default=str(HERE / "results" / "soak.json"))
    args = parser.parse_args(argv)

    import os

    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = run_soak(
        args.frames,
        args.fps,
        args.unpaced,
        args.size,
        budget_ms=args.budget_ms,
        sample_s=args.sample_s,
        max_seconds=args.max_seconds,
    )
    print(format_table(result))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
