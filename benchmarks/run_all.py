"""Run the standard `realtime bench` scenarios and write benchmarks/RESULTS.md.

    python benchmarks/run_all.py [--quick] [--input VIDEO]

Scenarios: 480p, 720p and 1080p output; the `warp` and the learned `refiner` generators;
input paced at its own 30 fps and unpaced; plus the 720p engine-vs-naive comparison and the
60-second 720p deadline run; and swap mode at 720p output, from 720p and from 1080p input, with
and without hand occlusion (``--swap-only`` runs just these and prints their rows); the mouth from the
voice, ``--lips voice`` and ``auto`` (``--lips-only`` likewise). Numbers are medians/percentiles of one run each on this
machine, measured in the same invocation; the machine is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_INPUT = HERE.parent.parent / "shared" / "media" / "webcam" / "EAMM_mead_M030_sad_1080p.mp4"
SIZES = {"480p": "854x480", "720p": "1280x720", "1080p": "1920x1080"}
# RESULTS.md from this line on is written by hand; a rerun rewrites only what is above it.
HAND_WRITTEN = "<!-- Written by hand from here on:"
# Each input lasts the longest scenario plus this (its start-up), so no run reaches its file's end.
INPUT_MARGIN_S = 5


def bench(name: str, args: list[str]) -> dict:
    out = RESULTS / f"bench_{name}.json"
    cmd = [sys.executable, "-m", "realtime.cli", "bench", *args, "--json", str(out)]
    print("$", " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-1500:], file=sys.stderr)
        return {
            "name": name,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
        }
    print(proc.stdout, flush=True)
    result = json.loads(out.read_text())
    result["name"] = name
    result["command"] = "realtime " + " ".join(cmd[4:])
    return result


def scaled_input(source: str, size: str, folder: Path, seconds: float) -> str:
    """The input at the output resolution, as a webcam set to that mode would deliver it, and
    at least ``seconds`` long.

    Feeding a 720p scenario from a 1080p file would measure the decoder, not the engine
    (decode costs: RESULTS.md, "Bench inputs"). A short clip is repeated inside the file: the
    bench loops a file by opening it again, and that reopening (a decoder start-up every 3.7 s
    of the default clip) dropped frames no camera would. The copy is made in a temporary folder
    and deleted after the run.
    """
    from imageio_ffmpeg import get_ffmpeg_exe

    from realtime.sources import probe_video

    fps, frames, _, _ = probe_video(source)
    repeats = max(0, math.ceil(seconds * fps / max(frames, 1)) - 1)
    width, height = size.split("x")
    out = folder / f"input_{size}.mp4"
    if not out.exists():
        subprocess.run(
            [
                get_ffmpeg_exe(),
                "-y",
                "-loglevel",
                "error",
                "-stream_loop",
                str(repeats),
                "-i",
                source,
                "-vf",
                f"scale={width}:{height}",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "18",
                # 4:2:0 as a camera's H.264 is (its MJPEG is 4:2:2, as cheap to decode here); a
                # 4:4:4 source copied as is decodes three times slower (RESULTS.md, "Bench inputs").
                "-pix_fmt",
                "yuv420p",
                "-an",
                str(out),
            ],
            check=True,
        )
    return str(out)


def row(r: dict) -> str:
    if "error" in r:
        return f"| {r['name']} | error: {r['error']} |" + " |" * 10
    lat, st = r["latency_ms"], r["stages"]
    frames = r.get("pipeline", {}).get("frames", {})
    stage = lambda k: f"{st[k]['p50']:.1f}" if k in st else "-"  # noqa: E731
    return (
        f"| {r['name']} | {r['fps']:.1f} | {lat['p50']:.1f} | {lat['p95']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} "
        f"| {r['deadline_misses']} ({r.get('dropped_in_first_second', '-')}) / {r['captured']} | {stage('track')} | {stage('generate')} | {stage('blend')} "
        f"| {r['cpu_percent']:.0f}% | {r['peak_rss_mb']:.0f} | {frames.get('serial', '-')} / {frames.get('parallel', '-')} |"
    )


def swap_scenarios(inputs: dict[str, str], short: str, long: str) -> list[dict]:
    """Swap mode (the built-in avatar's face on the input's), 720p output, paced at 30 fps: from a
    720p camera, from a 1080p camera scaled down, for a long run, and without hand occlusion."""
    results = []
    for name, label, seconds, extra in [
        ("720p_swap_paced", "720p", short, []),
        ("1080p_in_swap_720p_paced", "1080p", short, []),
        ("720p_swap_paced_60s", "720p", long, []),
        ("720p_swap_no_occlusion_paced", "720p", short, ["--no-occlusion"]),
    ]:
        args = ["--mode", "swap", "--input", inputs[label], "--size", SIZES["720p"], "--generator", "warp"]
        results.append(bench(name, [*args, "--seconds", seconds, *extra]))
    return results


def lips_scenarios() -> list[dict]:
    """``--lips voice`` and ``auto``: the voice's cost per 20 ms block and the mouth against the
    A/V-delayed voice, speech bursts through a PulseAudio null sink (``realtime bench --lips``)."""
    return [bench(f"lips_{lips}", ["--lips", lips, "--bursts", "8"]) for lips in ("voice", "auto")]


def lips_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['name']} | error: {r['error']} |" + " |" * 7
    cost, lat = r["cost"], r["latency"]
    out = lat.get("mouth_vs_output_ms") or {}
    mic = lat.get("mouth_vs_input_ms") or {}
    spread = f"{out['min']:+.0f}..{out['max']:+.0f}" if out else "-"
    return (
        f"| {r['name']} | {cost['features']['median_ms']:.2f} / {cost['features']['p95_ms']:.2f} "
        f"| {cost['model']['median_ms']:.2f} / {cost['model']['p95_ms']:.2f} | {cost['block_cpu']['median_ms']:.2f} "
        f"| {lat.get('bridge_offset_ms', '-')} | {out.get('median', '-')} | {spread} | {mic.get('median', '-')} "
        f"| {lat.get('opened', 0)} / {lat.get('bursts', 0)} | {r['load_1min']} |"
    )


LIPS_HEADER = [
    "| scenario | features ms p50 / p95 | model ms p50 / p95 | CPU ms per block | bridge offset ms "
    "| mouth vs delayed voice p50 ms | range ms | mouth vs microphone p50 ms | bursts opened | load |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", default=str(DEFAULT_INPUT))
    parser.add_argument("--quick", action="store_true", help="5 s per scenario (smoke test)")
    parser.add_argument(
        "--swap-only", action="store_true", help="only the swap scenarios; print, don't write"
    )
    parser.add_argument(
        "--lips-only", action="store_true", help="only the --lips voice/auto scenarios; print, don't write"
    )
    args = parser.parse_args()
    if args.lips_only:
        RESULTS.mkdir(exist_ok=True)
        print("\n".join([*LIPS_HEADER, *(lips_row(r) for r in lips_scenarios())]))
        return 0
    if not Path(args.input).exists():
        print(f"input not found: {args.input} (needs ../shared/media or --input)", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    short, long = ("5", "10") if args.quick else ("20", "60")
    t0 = time.time()
    folder = Path(tempfile.mkdtemp(prefix="realtime-bench-"))
    try:
        seconds = float(long) + INPUT_MARGIN_S
        needed = {"720p", "1080p"} if args.swap_only else set(SIZES)
        inputs = {
            label: scaled_input(args.input, size, folder, seconds)
            for label, size in SIZES.items()
            if label in needed
        }
        return run_scenarios(args, inputs, short, long, t0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_scenarios(args: argparse.Namespace, inputs: dict[str, str], short: str, long: str, t0: float) -> int:
    weights = HERE.parent / "weights" / "refiner.onnx"
    generators = ["warp"] + (["refiner"] if weights.exists() else [])
    results = []
    if args.swap_only:
        for r in swap_scenarios(inputs, short, long):
            print(row(r))
        return 0
    results.append(
        bench(
            "720p_warp_paced_60s",
            [
                "--input",
                inputs["720p"],
                "--size",
                SIZES["720p"],
                "--generator",
                "warp",
                "--seconds",
                long,
                "--plot",
                str(RESULTS / "bench_720p_warp_paced_60s.png"),
            ],
        )
    )
    # Engine vs naive where the naive loop keeps up (warp, 720p or 1080p input) and where
    # the work per frame comes close to the frame interval (the learned generator).
    naive_scenarios = [("720p", "warp"), ("1080p", "warp")] + [("720p", g) for g in generators[1:]]
    for label, gen in naive_scenarios:
        results.append(
            bench(
                f"{label}_{gen}_vs_naive",
                [
                    "--input",
                    inputs[label],
                    "--size",
                    SIZES["720p"],
                    "--generator",
                    gen,
                    "--seconds",
                    short,
                    "--compare-naive",
                    "--plot",
                    str(RESULTS / f"bench_{label}_{gen}_vs_naive.png"),
                ],
            )
        )
    for label, size in SIZES.items():
        for gen in generators:
            for pacing in ("paced", "unpaced"):
                extra = ["--unpaced"] if pacing == "unpaced" else []
                results.append(
                    bench(
                        f"{label}_{gen}_{pacing}",
                        [
                            "--input",
                            inputs[label],
                            "--size",
                            size,
                            "--generator",
                            gen,
                            "--seconds",
                            short,
                            *extra,
                        ],
                    )
                )
    results += swap_scenarios(inputs, short, long)
    lips = lips_scenarios()
    machine = next((r["machine"] for r in results if "machine" in r), "unknown")
    naive_runs = [r for r in results if r.get("name", "").endswith("_vs_naive") and "naive" in r]
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine}. Date: {time.strftime('%Y-%m-%d')}. Input: `{Path(args.input).name}` (30 fps, repeated to {int(long) + INPUT_MARGIN_S} s),",
        "transcoded to each scenario's resolution first, as a webcam in that mode would deliver it.",
        f"Command: `python benchmarks/run_all.py` ({time.time() - t0:.0f} s). Avatar: the built-in portrait, reenact mode",
        "(swap mode where the name says so: its face on the input's, with hand occlusion unless noted),",
        "null sink. Latency is capture→sink (a paced input stamps each frame at its due time, as a camera would).",
        "Deadline misses: frames that never reached the sink (dropped as late or skipped by a newer frame) plus",
        "frames that reached it later than the budget (two frame intervals, 66.7 ms) — the engine sends none late.",
        "CPU: the engine's processes (main, tracker, hand model) while streaming, percent of all cores.",
        "",
        "| scenario | fps | p50 ms | p95 ms | p99 ms | max ms | misses (in the first second) / captured | track p50 | generate p50 | blend p50 | CPU | peak RSS MB | serial / parallel frames |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *[row(r) for r in results],
    ]
    if naive_runs:
        lines += ["", "## Engine vs naive loop (720p output, same input, same run)", ""]
    for naive in naive_runs:
        nv, ratio = naive["naive"], naive["engine_vs_naive"]
        frames = naive.get("pipeline", {}).get("frames", {})
        lines += [
            f"- {naive['name'].split('_')[0]} input, {naive['generator']}, engine ({naive.get('pipeline', {}).get('mode', '?')}: "
            f"{frames.get('serial', 0)} frames serial, {frames.get('parallel', 0)} parallel): "
            f"{naive['fps']:.1f} fps, p95 {naive['latency_ms']['p95']:.1f} ms, misses {naive['deadline_misses']}; "
            f"naive (one thread, never drops): {nv['fps']:.1f} fps, p95 {nv['latency_ms']['p95']:.1f} ms, "
            f"late frames {nv['late_frames']}; p95 latency ratio (naive / engine) {ratio['p95_latency_ratio']:.2f}, "
            f"throughput ratio (engine / naive) {ratio['throughput_ratio']:.2f}",
        ]
    lines += [
        "",
        "## Lips from the voice, live (`realtime bench --lips voice|auto`)",
        "",
        "Per 20 ms microphone block at 48 kHz: features (resampling, log-mel, speech gate) and the ONNX",
        "model (wall ms), the thread's CPU per block; then 8 bursts of speech through a PulseAudio null sink",
        "into the live engine and the A/V bridge: the mouth's onset minus the delayed voice's (+ = mouth late).",
        "",
        *LIPS_HEADER,
        *[lips_row(r) for r in lips],
    ]
    lines += [
        "",
        "## GPU",
        "",
        "Not measured: this machine has no GPU, and the lent GPU machine has no internet while the",
        "onnxruntime-gpu wheel is larger than the 64 MiB the device tool carries, so its CUDA and",
        "TensorRT providers could not be installed there. Where they are installed (the `gpu` extra),",
        "`realtime bench --provider CUDAExecutionProvider` (or `TensorrtExecutionProvider`) measures",
        "them; the runner reports the provider that actually ran.",
    ]
    previous = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").exists() else ""
    if HAND_WRITTEN in previous:
        lines += ["", previous[previous.index(HAND_WRITTEN) :].rstrip("\n")]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
