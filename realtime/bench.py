"""`realtime bench`: the real live loop measured like a deadline, optionally against a naive loop.

The engine run is `realtime run` with a null (or virtual camera) sink. The naive loop is
what most tools do: read → track → generate → blend → write in one thread, never
dropping, so it falls behind whenever a frame takes longer than the frame interval.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
import time
from contextlib import ExitStack

import numpy as np

from realtime.metrics import Metrics, machine_description
from realtime.pipeline import FrameProcessor
from realtime.session import CAMERA_SIZE, PipelineConfig, make_processor, make_source, stream
from realtime.stages import Sink, Source

logger = logging.getLogger(__name__)


# Threads the engine does not name: decoders, OpenCV's and onnxruntime's pools.
NATIVE_THREADS = "native"


class ResourceMeter:
    """CPU utilisation (percent of all cores) over the stream, and RSS over the run.

    The CPU counts the engine's helper processes too (the tracker's and the hand model's), which
    compete for the cores as much as the main process does, and starts when the stream's clock
    does (``metrics.t_start``): loading models is not streaming. The main process's CPU is also
    split by thread, read ten times a second: a thread that ends before the meter stops loses at
    most its last tenth of a second.
    """

    SAMPLE_S = 0.1

    def __init__(self, metrics: Metrics | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._process = psutil.Process()
        self._metrics = metrics
        self._start = (time.monotonic(), *self._cpu_seconds())
        self._threads_start: dict[int, float] = {}
        self._threads_seen: dict[int, float] = {}
        self._thread_names: dict[int, str] = {}
        self._stopped = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="cpu-meter", daemon=True)
        self._watcher.start()
        self.rss_start_mb = self._process.memory_info().rss / 2**20

    def _cpu_seconds(self) -> tuple[float, float]:
        """(this process, its children: running ones and those it has waited for), CPU seconds."""
        own = self._process.cpu_times()
        children = own.children_user + own.children_system
        for child in self._process.children(recursive=True):
            try:
                times = child.cpu_times()
            except self._psutil.Error:  # it ended in between
                continue
            children += times.user + times.system
        return own.user + own.system, children

    def _thread_seconds(self) -> dict[int, float]:
        """CPU seconds of each thread of this process now, noting the names of Python's."""
        for thread in threading.enumerate():
            if thread.native_id is not None:
                self._thread_names.setdefault(thread.native_id, thread.name.rstrip("_0123456789"))
        try:
            return {t.id: t.user_time + t.system_time for t in self._process.threads()}
        except self._psutil.Error:  # no per-thread times on this platform
            return {}

    def _watch(self) -> None:
        if self._wait_for_stream():
            while not self._stopped.wait(self.SAMPLE_S):
                self._threads_seen.update(self._thread_seconds())

    def _wait_for_stream(self) -> bool:
        while self._metrics is not None and not self._stopped.wait(0.005):
            if self._metrics.t_start is not None:
                self._start = (time.monotonic(), *self._cpu_seconds())
                self._threads_start = self._thread_seconds()
                return True
        return False

    def _by_thread(self, wall: float, cores: int) -> dict[str, float]:
        self._threads_seen.update(self._thread_seconds())
        grouped: dict[str, float] = {}
        for tid, seconds in self._threads_seen.items():
            name = self._thread_names.get(tid, NATIVE_THREADS)
            grouped[name] = grouped.get(name, 0.0) + seconds - self._threads_start.get(tid, 0.0)
        shares = {name: round(100.0 * s / wall / cores, 1) for name, s in grouped.items()}
        return dict(sorted(shares.items(), key=lambda item: -item[1]))

    def stop(self) -> dict:
        self._stopped.set()
        self._watcher.join()
        t0, own0, children0 = self._start
        own1, children1 = self._cpu_seconds()
        wall = max(time.monotonic() - t0, 1e-6)
        own, everything = own1 - own0, own1 - own0 + children1 - children0
        cores = os.cpu_count() or 1
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mb = peak_kb / 1024 if sys.platform != "darwin" else peak_kb / 2**20
        report = {
            "cpu_percent": round(100.0 * everything / wall / cores, 1),
            "cpu_cores_used": round(everything / wall, 2),
            "cpu_percent_main_process": round(100.0 * own / wall / cores, 1),
            "cpu_percent_helper_processes": round(100.0 * (everything - own) / wall / cores, 1),
            "rss_start_mb": round(self.rss_start_mb, 1),
            "rss_end_mb": round(self._process.memory_info().rss / 2**20, 1),
            "peak_rss_mb": round(peak_mb, 1),
        }
        if self._threads_start:
            report["cpu_percent_main_process_by_thread"] = self._by_thread(wall, cores)
        return report


def run_naive(source: Source, processor: FrameProcessor, sinks: list[Sink], seconds: float | None) -> dict:
    """One thread, every frame in order, nothing dropped: the baseline the engine must beat."""
    metrics = processor.metrics
    with ExitStack() as stack:
        for sink in sinks:
            sink.open(processor.output_size[0], processor.output_size[1], source.fps)
            stack.callback(sink.close)
        stack.enter_context(source)
        stack.enter_context(processor)
        metrics.t_start = time.monotonic()
        deadline = metrics.t_start + seconds if seconds else float("inf")
        try:
            while time.monotonic() < deadline and (frame := source.read()) is not None:
                metrics.add_captured()
                out = processor.process(frame)
                t0 = time.perf_counter()
                for sink in sinks:
                    sink.send(out)
                now = time.monotonic()
                metrics.add_stage("sink", (time.perf_counter() - t0) * 1000.0)
                metrics.add_output((now - frame.t_capture) * 1000.0, now, out.face_found)
        finally:
            metrics.t_end = time.monotonic()
    return metrics.summary()


def annotate(summary: dict, metrics: Metrics, budget_ms: float, meter: dict) -> dict:
    late = int(np.sum(np.asarray(metrics.latency_ms) > budget_ms))
    summary["late_frames"] = late
    summary["deadline_misses"] = int(summary["dropped"]) + late
    summary["budget_ms"] = round(budget_ms, 2)
    summary.update(meter)
    return summary


def plot(results: dict[str, tuple[dict, Metrics]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_hist) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for name, (summary, metrics) in results.items():
        t = np.asarray(metrics.latency_times) - (metrics.t_start or 0.0)
        lat = np.asarray(metrics.latency_ms)
        ax_time.plot(t, lat, lw=0.8, label=f"{name}: p95 {summary['latency_ms']['p95']:.1f} ms")
        if lat.size:
            ax_hist.hist(lat, bins=60, alpha=0.6, label=name)
    budget = next(iter(results.values()))[0].get("budget_ms")
    if budget:
        ax_time.axhline(budget, color="red", ls="--", lw=1, label=f"budget {budget:.0f} ms")
        ax_hist.axvline(budget, color="red", ls="--", lw=1)
    ax_time.set_xlabel("time (s)")
    ax_time.set_ylabel("capture → sink latency (ms)")
    ax_time.legend(fontsize=8)
    ax_hist.set_xlabel("latency (ms)")
    ax_hist.set_ylabel("frames")
    ax_hist.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(results: dict[str, dict]) -> str:
    lines = []
    for name, s in results.items():
        lat = s["latency_ms"]
        lines.append(
            f"[{name}] frames {s['frames']}  fps {s['fps']:.1f}  capture→sink p50 {lat['p50']:.1f}  p95 {lat['p95']:.1f}"
            f"  p99 {lat['p99']:.1f}  max {lat['max']:.1f} ms  deadline misses {s['deadline_misses']}"
            f" (dropped {s['dropped']}, {s.get('dropped_in_first_second', 0)} in the first second; late {s['late_frames']})  cpu {s['cpu_percent']:.0f}%  peak rss {s['peak_rss_mb']:.0f} MB"
        )
        if "pipeline" in s:
            frames = s["pipeline"]["frames"]
            lines.append(
                f"  pipeline {s['pipeline']['mode']}: {frames['serial']} frames serial, "
                f"{frames['parallel']} parallel"
            )
        if "cpu_percent_main_process_by_thread" in s:
            threads = ", ".join(f"{k} {v:.0f}%" for k, v in s["cpu_percent_main_process_by_thread"].items())
            lines.append(
                f"  cpu: helper processes {s['cpu_percent_helper_processes']:.0f}%; main process: {threads}"
            )
        lines.append(f"  {'stage':<10}{'p50':>8}{'p95':>8}{'p99':>8}  ms")
        for stage, v in s["stages"].items():
            lines.append(f"  {stage:<10}{v['p50']:>8.2f}{v['p95']:>8.2f}{v['p99']:>8.2f}")
    return "\n".join(lines)


def bench_info(processor: FrameProcessor, paced: bool) -> dict:
    generator = processor.generator()
    return {
        "generator": generator.name,
        "provider": generator.provider,
        "size": f"{processor.output_size[0]}x{processor.output_size[1]}",
        "machine": machine_description(),
        "paced": paced,
    }


def engine_vs_naive(engine: dict, naive: dict) -> dict[str, float]:
    """How much lower the engine's p95 latency is, and how much more it delivers."""
    return {
        "p95_latency_ratio": round(naive["latency_ms"]["p95"] / max(engine["latency_ms"]["p95"], 1e-6), 3),
        "throughput_ratio": round(engine["fps"] / max(naive["fps"], 1e-6), 3),
    }


def fresh(processor: FrameProcessor) -> FrameProcessor:
    """A processor with the same avatar and generators but new tracker state and metrics."""
    from realtime.controls import Controls
    from realtime.tracking import FaceTracker

    controls = Controls(mode=processor.controls.mode)
    return FrameProcessor(
        processor.avatar,
        processor.generators,
        FaceTracker(),
        controls,
        Metrics(),
        processor.output_size,
        processor.limits,
    )


def run_bench(
    config: PipelineConfig, compare_naive: bool = False
) -> tuple[dict[str, tuple[dict, Metrics]], dict]:
    """The live engine on the config (and a naive loop on a fresh processor after it).

    Returns each run's annotated summary with its metrics, and what was measured.
    """
    from realtime.sinks import make_sink

    size = config.size or CAMERA_SIZE
    processor = make_processor(config, size, size)
    info = bench_info(processor, config.source.paced)
    source_name = config.source.input or ("camera" if config.source.camera is not None else "builtin")
    runs: dict[str, tuple[dict, Metrics]] = {}
    for kind in ["engine", "naive"] if compare_naive else ["engine"]:
        proc = processor if kind == "engine" else fresh(processor)
        source = make_source(config.source)
        fps = source.fps or 30.0
        budget_ms = config.budget_ms or 2000.0 / fps
        sinks = [make_sink(spec, proc.controls) for spec in config.sinks]
        meter = ResourceMeter(proc.metrics)
        if kind == "engine":
            summary, _ = stream(config, source, proc, sinks, fps, budget_ms)
        else:
            summary = run_naive(source, proc, sinks, seconds=config.seconds)
        runs[kind] = (annotate(summary, proc.metrics, budget_ms, meter.stop()), proc.metrics)
        runs[kind][0].update(info, input=source_name, input_fps=round(fps, 3))
    return runs, info
