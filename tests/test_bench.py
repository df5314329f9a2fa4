"""`realtime bench` JSON: the keys users rely on, and numbers that agree with each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from realtime.generators.registry import default_generator

KEYS = ["latency_ms", "fps", "frames", "dropped", "stages", "provider", "generator", "size", "machine"]


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, plot_path = out / "bench.json", out / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "realtime.cli",
            "bench",
            "--seconds",
            "4",
            "--size",
            "640x480",
            "--compare-naive",
            "--json",
            str(json_path),
            "--plot",
            str(plot_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "engine vs naive" in proc.stdout
    return json.loads(json_path.read_text()), plot_path


def _consistent(report: dict) -> None:
    for key in KEYS:
        assert key in report, key
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    for name, stage in report["stages"].items():
        assert 0 <= stage["p50"] <= stage["p95"] <= stage["p99"], name
    assert {"track", "generate", "blend", "sink"} <= set(report["stages"])
    # `frames` counts what the sink received as new frames: it can't exceed what was captured,
    # and every captured frame was either delivered, dropped, or still in flight at the end.
    assert 0 < report["frames"] <= report["captured"]
    assert report["captured"] - report["frames"] - report["dropped"] <= 4
    assert report["fps"] == pytest.approx(report["frames"] / report["duration_s"], rel=0.02)
    assert report["deadline_misses"] == report["dropped"] + report["late_frames"]
    # No --generator: the bench runs what `realtime run` would, the best shipped generator.
    assert report["size"] == "640x480" and report["generator"] == default_generator()
    assert report["peak_rss_mb"] > 50 and 0 < report["cpu_percent"] <= 100
    assert report["cpu_percent"] >= report["cpu_percent_main_process"] > 0


def test_engine_report_is_complete_and_consistent(bench_json):
    report, plot = bench_json
    _consistent(report)
    # The engine's tracker runs in its own process (the naive loop's doesn't), and the CPU counts it.
    assert report["cpu_percent"] > report["cpu_percent_main_process"]
    assert report["cpu_percent_helper_processes"] > 0
    # The main process's CPU by thread: the engine's named threads, at most all of it.
    by_thread = report["cpu_percent_main_process_by_thread"]
    assert {"capture", "track"} <= set(by_thread) and by_thread["track"] > 0, by_thread
    assert sum(by_thread.values()) <= report["cpu_percent_main_process"] + 1.0, by_thread
    # The engine never sends a frame later than its budget: late frames are dropped instead.
    assert report["late_frames"] == 0
    assert report["latency_ms"]["max"] <= report["budget_ms"] + 1.0
    assert plot.exists() and plot.stat().st_size > 10_000
    # Every frame that reached the sink went down one of the two paths of the auto pipeline.
    pipeline = report["pipeline"]
    assert pipeline["mode"] == "auto"
    assert pipeline["frames"]["serial"] + pipeline["frames"]["parallel"] >= report["frames"]


def test_naive_comparison_is_measured_in_the_same_run(bench_json):
    report, _ = bench_json
    naive = report["naive"]
    _consistent(naive)
    assert naive["dropped"] == 0  # the naive loop never drops
    ratios = report["engine_vs_naive"]
    assert ratios["p95_latency_ratio"] == pytest.approx(
        naive["latency_ms"]["p95"] / report["latency_ms"]["p95"], rel=1e-2
    )
    assert ratios["throughput_ratio"] == pytest.approx(report["fps"] / naive["fps"], rel=1e-2)


def test_metrics_memory_is_bounded_and_ordered():
    from realtime.metrics import Series

    series = Series(capacity=100)
    for i in range(250):
        series.append(float(i))
    assert len(series) == 100 and series.total == 250
    assert np.asarray(series).tolist() == [float(i) for i in range(150, 250)]
    assert series[-1] == 249.0


def test_drops_are_told_apart_by_when_they_happen():
    from realtime.metrics import Metrics

    metrics = Metrics()
    metrics.t_start = 100.0
    for t in (100.05, 100.9, 101.2, 107.0):
        metrics.add_drop("late_at_sink", t)
    metrics.add_drop("skipped_before_track")  # untimed: counted, but in neither second
    metrics.t_end = 110.0
    summary = metrics.summary()
    assert summary["dropped"] == 5 and summary["dropped_in_first_second"] == 2


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_cpu_meter_counts_helper_processes_and_only_the_stream():
    """A helper process's CPU counts; the main process's work before the stream starts doesn't."""
    import multiprocessing

    from realtime.bench import ResourceMeter
    from realtime.metrics import Metrics

    metrics = Metrics()
    meter = ResourceMeter(metrics)
    _burn(0.6)  # loading models, say: before the stream's clock starts
    metrics.t_start = time.monotonic()
    time.sleep(0.05)  # the meter notices the start within 5 ms
    helper = multiprocessing.get_context("spawn").Process(target=_burn, args=(0.8,))
    helper.start()
    helper.join()
    burnt, stopped = threading.Event(), threading.Event()

    def burner() -> None:  # alive until the meter stops, as the engine's threads are not
        _burn(0.5)
        burnt.set()
        stopped.wait(10.0)

    worker = threading.Thread(target=burner, name="burner_0")
    worker.start()
    burnt.wait(10.0)
    report = meter.stop()
    wall_s = time.monotonic() - metrics.t_start
    stopped.set()
    worker.join()
    cores = os.cpu_count() or 1

    def seconds(percent: float) -> float:
        return percent * cores * wall_s / 100.0

    assert seconds(report["cpu_percent_helper_processes"]) > 0.7  # the helper's 0.8 s and its start-up
    main_s = seconds(report["cpu_percent_main_process"])
    assert 0.45 < main_s < 0.8  # the thread's 0.5 s, not the 0.6 s before the stream
    # The thread is named without its pool index, and holds nearly all of the main process's CPU.
    by_thread = report["cpu_percent_main_process_by_thread"]
    assert seconds(by_thread["burner"]) > 0.45, by_thread
    assert sum(by_thread.values()) == pytest.approx(report["cpu_percent_main_process"], abs=2.0)
