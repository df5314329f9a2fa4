"""Per-stage timings, capture-to-sink latency and drop counts; percentiles and JSON."""

from __future__ import annotations

import json
import os
import platform
import threading
from collections import defaultdict

import numpy as np


def percentiles(values) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
    }


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


class Series:
    """The most recent ``capacity`` samples of a per-frame number, in a fixed numpy ring.

    A live run may last all day: memory stays flat, and percentiles describe the last
    ``capacity`` frames (about 73 minutes at 30 fps by default). ``total`` counts every sample.
    """

    def __init__(self, capacity: int = 1 << 17) -> None:
        self._data = np.zeros(capacity, np.float64)
        self.total = 0

    def append(self, value: float) -> None:
        self._data[self.total % len(self._data)] = value
        self.total += 1

    def __len__(self) -> int:
        return min(self.total, len(self._data))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        n, cap = len(self), len(self._data)
        start = self.total % cap if self.total > cap else 0
        out = np.concatenate([self._data[start:n], self._data[:start]]) if start else self._data[:n].copy()
        return out.astype(dtype) if dtype is not None else out

    def __iter__(self):
        return iter(np.asarray(self).tolist())

    def __getitem__(self, index: int) -> float:
        return (
            float(np.asarray(self)[index])
            if index != -1
            else float(self._data[(self.total - 1) % len(self._data)])
        )


class Metrics:
    """Thread-safe collector. Stages add durations; the sink adds each emitted frame."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stage_ms: dict[str, Series] = defaultdict(Series)
        self.latency_ms = Series()
        self.emit_times = Series()
        self.latency_times = Series()  # emit time of each latency sample (new frames)
        self.dropped: dict[str, int] = defaultdict(int)
        # A stream's first second has its own costs (the first detection, first-frame estimates):
        # drops there and drops later are different problems.
        self.dropped_in_first_second = 0
        self.captured = 0
        self.repeats = 0
        self.faces_found = 0
        self.errors: dict[str, int] = defaultdict(int)
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.warm_up_ms: float | None = None  # the engine's warm-up before the stream (None: none)

    def add_stage(self, name: str, ms: float) -> None:
        with self._lock:
            self.stage_ms[name].append(ms)

    def add_captured(self) -> None:
        with self._lock:
            self.captured += 1

    def add_drop(self, reason: str, t: float | None = None) -> None:
        with self._lock:
            self.dropped[reason] += 1
            # ``t``: when, on the clock that set ``t_start``
            if t is not None and self.t_start is not None and t - self.t_start < 1.0:
                self.dropped_in_first_second += 1

    def add_error(self, where: str) -> None:
        with self._lock:
            self.errors[where] += 1

    def add_output(self, latency_ms: float, t_emit: float, face_found: bool) -> None:
        with self._lock:
            self.latency_ms.append(latency_ms)
            self.latency_times.append(t_emit)
            self.emit_times.append(t_emit)
            self.faces_found += int(face_found)

    def add_repeat(self, t_emit: float) -> None:
        with self._lock:
            self.repeats += 1
            self.emit_times.append(t_emit)

    @property
    def frames(self) -> int:
        """New (non-repeated) frames that reached the sinks."""
        return self.latency_ms.total

    def summary(self, **extra: object) -> dict:
        with self._lock:
            duration = (self.t_end or 0.0) - (self.t_start or 0.0)
            emits = np.asarray(self.emit_times)
            gaps = np.diff(emits) * 1000.0 if emits.size > 1 else np.zeros(0)
            frames = self.latency_ms.total
            out = {
                "frames": frames,
                "captured": self.captured,
                "repeats": self.repeats,
                "dropped": int(sum(self.dropped.values())),
                "dropped_by_reason": dict(self.dropped),
                "dropped_in_first_second": self.dropped_in_first_second,
                "warm_up_ms": None if self.warm_up_ms is None else round(self.warm_up_ms, 1),
                "errors": dict(self.errors),
                "duration_s": round(duration, 3),
                "fps": round(frames / duration, 2) if duration > 0 else 0.0,
                "output_fps": round(self.emit_times.total / duration, 2) if duration > 0 else 0.0,
                "face_found_ratio": round(self.faces_found / frames, 4) if frames else 0.0,
                "latency_ms": percentiles(self.latency_ms),
                "sink_gap_ms": percentiles(gaps),
                "stages": {name: percentiles(values) for name, values in self.stage_ms.items()},
            }
        out.update(extra)
        return out


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.part"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def format_summary(s: dict) -> str:
    lat = s["latency_ms"]
    lines = [
        f"frames {s['frames']}  fps {s['fps']:.1f}  latency p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms"
        f"  p99 {lat['p99']:.1f} ms  max {lat['max']:.1f} ms  drops {s['dropped']}  repeats {s['repeats']}",
    ]
    stages = "  ".join(f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in s["stages"].items())
    if stages:
        lines.append(f"stages p50/p95 ms: {stages}")
    return "\n".join(lines)
