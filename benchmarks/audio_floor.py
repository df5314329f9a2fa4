"""The audio path's floor: the smallest delay the bridge really gives, measured through PulseAudio.

    python benchmarks/audio_floor.py [--delays 0,10,...] [--tries 3] [--blocksize N]
        [--latency low|high|SECONDS] [--pulse-latency-msec MS] [--bridge-arg KEY=VALUE ...]
        [--json PATH]

Needs a running PulseAudio (``make audio-server``). For each requested delay (the engine's
video latency, offset 0) the bridge runs as ``realtime run`` runs it (``AudioBridgeProcess``)
on a temporary null sink, and ``realtime.audio_probe.measure_bridge_delay`` (the helper the tests
use) plays a noise burst into the bridge's input and cross-correlates it with the bridge's
output in one recording of the sink's monitor. Per requested delay: the median measured
delay over the clean tries (flowing, no xrun during the burst, a clear correlation peak).

``--bridge-arg KEY=VALUE`` (repeatable) passes any other ``AudioBridge`` keyword (VALUE is a
Python literal, or else a string), e.g. for an experimental bridge option:
``benchmarks/results/audio_floor_duplex_*.json`` are ``--bridge-arg duplex=true`` with
``benchmarks/results/audio_duplex_experiment.patch`` applied (one PortAudio duplex stream; not
adopted: through PulseAudio's ALSA plugin its capture side builds up a backlog of up to
~300 ms, so the delay is neither lower nor steady). ``run_xruns`` per try: underruns +
overruns over the bridge's whole run (``glitches``: during the burst only).

The floor is the smallest requested delay from which on every larger requested delay in the
table is measured within ``--tolerance-ms`` (5 ms). "path at 0" is what the path delays when
0 ms is requested.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from realtime.audio_probe import measure_bridge_delay, temporary_null_sink  # noqa: E402


def parse_latency(text: str) -> str | float:
    return text if text in ("low", "high") else float(text)


def parse_bridge_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → ``(KEY, value)``: a Python literal (``true``/``false``/``none`` too), else a string."""
    import ast

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    literal = {"true": "True", "false": "False", "none": "None"}.get(value.strip().lower(), value.strip())
    try:
        return key.strip(), ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def floor_of(rows: list[dict[str, Any]], tolerance_ms: float) -> float | None:
    """Smallest requested delay from which on every (larger) row is within the tolerance."""
    floor = None
    for row in sorted(rows, key=lambda r: r["requested_ms"], reverse=True):
        ok = row["measured_ms"] is not None and abs(row["measured_ms"] - row["requested_ms"]) <= tolerance_ms
        if not ok:
            break
        floor = row["requested_ms"]
    return floor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", default="0,10,20,30,40,50,60,70,80,90,100,120,150")
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--blocksize", type=int, default=None, help="the bridge's (default: its own)")
    parser.add_argument("--latency", type=parse_latency, default=None, help="low, high or seconds")
    parser.add_argument(
        "--pulse-latency-msec", type=int, default=None, help="PULSE_LATENCY_MSEC for the bridge only"
    )
    parser.add_argument(
        "--bridge-arg",
        type=parse_bridge_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other AudioBridge keyword (repeatable)",
    )
    parser.add_argument("--sink-args", default="", help="extra module-null-sink arguments")
    parser.add_argument("--tolerance-ms", type=float, default=5.0)
    parser.add_argument("--label", default="")
    parser.add_argument("--json", default=str(HERE / "results" / "audio_floor.json"))
    args = parser.parse_args()

    bridge_kwargs: dict[str, Any] = {}
    if args.blocksize is not None:
        bridge_kwargs["blocksize"] = args.blocksize
    if args.latency is not None:
        bridge_kwargs["latency"] = args.latency
    if args.pulse_latency_msec is not None:
        bridge_kwargs["pulse_latency_msec"] = args.pulse_latency_msec
    bridge_kwargs.update(dict(args.bridge_arg))
    delays = [float(d) for d in args.delays.split(",") if d.strip()]
    rows: list[dict[str, Any]] = []
    last_stats: dict[str, Any] = {}
    t_start = time.monotonic()
    print(f"{'requested ms':>12} {'measured ms':>12} {'error ms':>9} {'reported ms':>12} {'clean':>6}  tries")
    with temporary_null_sink(f"rt_floor_{os.getpid()}", *args.sink_args.split()) as sink:
        for requested in delays:
            tries = []
            for _ in range(args.tries):
                result = measure_bridge_delay(sink, requested, **bridge_kwargs)
                last_stats = result.pop("stats")
                # xruns over the bridge's whole run (``glitches``: during the burst only)
                result["run_xruns"] = last_stats["underruns"] + last_stats["overruns"]
                tries.append({k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items()})
            clean = [t for t in tries if t["clean"]]
            measured = statistics.median(t["measured_ms"] for t in clean) if clean else None
            reported = [t["reported_ms"] for t in clean if t["reported_ms"] is not None]
            row = {
                "requested_ms": requested,
                "measured_ms": None if measured is None else round(measured, 2),
                "error_ms": None if measured is None else round(measured - requested, 2),
                "reported_ms": round(statistics.median(reported), 2) if reported else None,
                "clean_tries": len(clean),
                "tries": tries,
            }
            rows.append(row)
            shown = " ".join(f"{t['measured_ms']:.1f}{'' if t['clean'] else '!'}" for t in tries)
            print(
                f"{requested:12.0f} {_fmt(row['measured_ms']):>12} {_fmt(row['error_ms']):>9} "
                f"{_fmt(row['reported_ms']):>12} {len(clean):>3}/{len(tries)}  {shown}",
                flush=True,
            )
    floor = floor_of(rows, args.tolerance_ms)
    at_zero = next((r["measured_ms"] for r in rows if r["requested_ms"] == 0.0), None)
    result = {
        "label": args.label,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            **bridge_kwargs,
            "blocksize": last_stats.get("blocksize"),
            "sink_args": args.sink_args,
            "tolerance_ms": args.tolerance_ms,
            "tries": args.tries,
        },
        "floor_ms": floor,
        "path_at_zero_ms": at_zero,
        "bridge_path_latency_ms": last_stats.get("path_latency_ms"),
        "bridge_min_delay_ms": last_stats.get("min_delay_ms"),
        "bridge_stream_mode": last_stats.get("stream_mode"),  # None: a bridge that has two streams only
        "rows": rows,
        "seconds": round(time.monotonic() - t_start, 1),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }
    print(
        f"floor (every requested delay from here on measured within ±{args.tolerance_ms:g} ms): "
        f"{_fmt(floor)} ms; the path alone (0 ms requested): {_fmt(at_zero)} ms; "
        f"bridge path latency {_fmt(last_stats.get('path_latency_ms'))} ms, "
        f"its shortest possible delay {_fmt(last_stats.get('min_delay_ms'))} ms"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"json: {args.json}")
    return 0


def _fmt(value: float | None) -> str:
    return "--" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
