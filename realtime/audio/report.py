"""What the bridge shows: the overlay's line, the summary's lines and the A/V offset."""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np


class AvOffsets:
    """The A/V offset actually achieved: audio delay - frame latency, for each frame."""

    def __init__(self, size: int = 20000) -> None:
        self._values: collections.deque[float] = collections.deque(maxlen=size)

    def add(self, audio_delay_ms: float | None, frame_ms: float) -> None:
        if audio_delay_ms is not None and math.isfinite(frame_ms):
            self._values.append(audio_delay_ms - float(frame_ms))

    def summary(self) -> dict[str, float] | None:
        """Mean, median and 95th percentile of |offset| (ms), None before any frame."""
        offsets = np.asarray(self._values, np.float64)
        if not offsets.size:
            return None
        return {
            "mean": round(float(offsets.mean()), 2),
            "p50": round(float(np.median(offsets)), 2),
            "p95_abs": round(float(np.percentile(np.abs(offsets), 95)), 2),
        }


def status_line(
    level: float, delay_ms: float | None, offset_ms: float, muted: bool, failed: str | None
) -> str:
    """The overlay's audio line: a 10-step meter over -60..0 dBFS, the delay, offset and mute."""
    if failed:
        return "audio: off (" + failed[:40] + ")"
    level = max(level, -60.0)
    bars = int(round((level + 60.0) / 6.0))
    meter = "|" * bars + "." * (10 - bars)
    delay_text = "--" if delay_ms is None else f"{delay_ms:3.0f}"
    mute = "  MUTED" if muted else ""
    return f"audio [{meter}] {level:4.0f} dB  delay {delay_text} ms  offset {offset_ms:+.0f} ms{mute}"


def format_audio_summary(stats: dict[str, Any]) -> str:
    """The audio lines of a ``run``/``bench`` summary, from ``AudioBridge.stats()``."""
    lines = [f"audio {stats.get('input')} -> {stats.get('output')}"]
    if stats.get("failed"):
        lines[0] += f": stopped ({stats['failed']})"
    delay, video = stats.get("audio_delay_ms"), stats.get("video_latency_ms")
    lines.append(
        f"  audio delay {_ms(delay)} = path {_ms(stats.get('path_latency_ms'))} + added "
        f"{_ms(None if delay is None else delay - stats.get('path_latency_ms', 0.0))} "
        f"(follows video {_ms(video)} {stats.get('offset_ms', 0.0):+.0f} ms offset; "
        f"shortest possible here {_ms(stats.get('min_delay_ms'))})"
    )
    av = stats.get("av_offset_ms")
    if av:
        lines.append(
            f"  A/V offset (audio delay - frame latency): mean {av['mean']:+.1f} ms, "
            f"p95 |offset| {av['p95_abs']:.1f} ms"
        )
    lines.append(
        f"  underruns {stats.get('underruns', 0)}  overruns {stats.get('overruns', 0)}  "
        f"crossfades {stats.get('crossfades', 0)}  callback cpu {stats.get('callback_cpu_percent', 0.0):.2f}%"
        + ("  MUTED" if stats.get("muted") else "")
    )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "--" if value is None else f"{value:.1f} ms"
