"""The command line's flags: one small function per command."""

from __future__ import annotations

import argparse

DEFAULT_DEMO_OUT = "realtime-demo.mp4"
DEFAULT_PIPELINE = "auto"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1280x720, got {text!r}") from None
    if not (16 <= w <= 7680 and 16 <= h <= 4320):
        raise argparse.ArgumentTypeError(f"size {text} is out of range (16x16 .. 7680x4320)")
    return w // 2 * 2, h // 2 * 2


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(2, f"realtime: error: {message} (see `{self.prog} --help`)\n")


# -- flags shared by several commands ------------------------------------------------------
def _add_pipeline_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pipeline",
        choices=["auto", "serial", "parallel"],
        default=DEFAULT_PIPELINE,
        help="serial: track then render in one thread (least latency); parallel: overlap them on "
        "different frames (most throughput); auto (default): serial while both fit in a frame "
        "interval, parallel when they do not or when the input is unpaced",
    )


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["reenact", "swap"], default="reenact")
    p.add_argument(
        "--generator",
        default=None,
        help="warp, a model shipped in weights/, or PATH.onnx (default: the best shipped generator)",
    )
    p.add_argument(
        "--provider",
        action="append",
        default=None,
        help="onnxruntime execution provider to prefer (repeatable)",
    )
    p.add_argument("--size", type=_size, default=None, help="output WxH")
    p.add_argument(
        "--no-occlusion",
        action="store_true",
        help="swap mode: don't look for hands in front of the face (saves the hand model's CPU)",
    )


def _add_audio_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--audio-in",
        default=None,
        metavar="DEVICE",
        help="microphone to delay in sync with the video: index, part of a name, 'default' "
        "or pulse:SOURCE (see `realtime devices`)",
    )
    p.add_argument(
        "--audio-out",
        default=None,
        metavar="DEVICE",
        help="virtual microphone to play into (pulse:SINK, 'CABLE Input', 'BlackHole 2ch')",
    )
    p.add_argument(
        "--audio-offset-ms",
        type=float,
        default=0.0,
        help="added to the live video latency (negative: less delay)",
    )
    p.add_argument("--audio-mute", action="store_true", help="start with the audio muted (window hotkey a)")
    p.add_argument(
        "--av-sync",
        choices=["audio", "both"],
        default="audio",
        help="audio (default): delay the voice by the video latency, so the video stays as fast as it "
        "can; when the video is faster than the audio path's floor (about 50 ms on PulseAudio) the "
        "voice is late by the difference. both: also hold each video frame until the audio can "
        "match it, so lips and voice line up exactly, at the cost of that much video latency",
    )


# -- one parser per command ------------------------------------------------------------------
def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="zero-configuration demo")
    demo.add_argument(
        "--seconds",
        type=_positive,
        default=None,
        help="stop after this long (default: until q with a window, else 10 s)",
    )
    demo.add_argument("--out", default=DEFAULT_DEMO_OUT, help="MP4 written when there is no display")


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the live loop")
    run.add_argument("--avatar", required=True, help="portrait image, or 'builtin'")
    src = run.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, default=None, help="webcam index (default 0)")
    src.add_argument("--input", default=None, help="video file played as if it were a camera")
    run.add_argument("--loop", action="store_true", help="loop --input")
    run.add_argument("--unpaced", action="store_true", help="read --input as fast as possible")
    run.add_argument(
        "--sink",
        action="append",
        default=None,
        help="virtualcam[:BACKEND] | window | file:PATH | null (repeatable; default virtualcam)",
    )
    _add_pipeline_options(run)
    run.add_argument("--fps", type=_positive, default=None, help="output fps (default: the source's, or 30)")
    run.add_argument(
        "--budget-ms",
        type=_positive,
        default=None,
        help="drop frames older than this (default: two frame intervals)",
    )
    run.add_argument("--seconds", type=_positive, default=None, help="stop after this long")
    run.add_argument("--metrics-json", default=None, help="write the metrics here as JSON")
    _add_pipeline_choice(run)
    _add_audio_options(run)


def _add_render(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="offline: every driver frame, no drops, audio muxed")
    render.add_argument("--avatar", required=True)
    render.add_argument("--driver", required=True, help="driving video")
    render.add_argument("--out", required=True, help="output .mp4")
    render.add_argument("--metrics-json", default=None)
    _add_pipeline_options(render)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser(
        "bench", help="camera-to-output latency percentiles, deadline misses, naive comparison"
    )
    bsrc = bench.add_mutually_exclusive_group()
    bsrc.add_argument("--input", default=None, help="video file, looped (default: the built-in driver)")
    bsrc.add_argument("--camera", type=int, default=None)
    bench.add_argument("--avatar", default="builtin")
    _add_pipeline_options(bench)
    pace = bench.add_mutually_exclusive_group()
    pace.add_argument(
        "--fps", type=_positive, default=None, help="pace the input at this fps (default: its own)"
    )
    pace.add_argument("--unpaced", action="store_true", help="read the input as fast as possible")
    bench.add_argument("--seconds", type=_positive, default=20.0)
    bench.add_argument("--budget-ms", type=_positive, default=None)
    bench.add_argument("--sink", action="append", default=None, help="null (default) or virtualcam[:BACKEND]")
    bench.add_argument("--json", default=None)
    bench.add_argument("--plot", default=None, help="PNG: latency over time and histogram")
    bench.add_argument("--compare-naive", action="store_true", help="also run a naive sequential loop")
    _add_pipeline_choice(bench)
    _add_audio_options(bench)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from realtime.train.config import RefinerConfig, SwapConfig, add_config_flags

    train = sub.add_parser("train", help="train a model (needs the 'train' extra: torch)")
    train_sub = train.add_subparsers(dest="model", required=True, parser_class=_Parser)
    refiner = train_sub.add_parser("refiner", help="the face refiner used by the learned generator")
    add_config_flags(refiner, RefinerConfig)
    refiner.add_argument("--out", required=True, help="run folder (checkpoints, samples, log)")
    swap = train_sub.add_parser("swap", help="CycleGAN / Recycle-GAN identity translator A→B for swap mode")
    add_config_flags(swap, SwapConfig)
    swap.add_argument("--out", required=True, help="run folder (checkpoints, samples, log, translator.onnx)")
    for p in (refiner, swap):
        p.add_argument(
            "--fresh", action="store_true", help="ignore an existing checkpoint instead of resuming"
        )


def _add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="self-reenactment scores on clips (first frame = avatar) and cross-identity scores on pairs",
    )
    ev.add_argument("--data", nargs="+", default=[], help="clips (videos) to evaluate in self-reenactment")
    ev.add_argument(
        "--pairs",
        nargs="+",
        default=[],
        metavar="AVATAR:DRIVER",
        help="cross-identity pairs: an image or a video's first frame (grey:PATH makes it black and white) "
        "driven by another person's clip",
    )
    ev.add_argument("--generator", nargs="+", default=["warp"], help="generators to compare side by side")
    ev.add_argument("--provider", action="append", default=None)
    ev.add_argument("--max-frames", type=int, default=120)
    ev.add_argument("--json", default=None, help="write the scores here")
    ev.add_argument("--sheet", default=None, help="write the self-reenactment contact sheet PNG here")
    ev.add_argument("--pairs-sheet", default=None, help="write the cross-identity contact sheet PNG here")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="realtime", description="Real-time face reenactment to a virtual camera.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_demo(sub)
    _add_run(sub)
    _add_render(sub)
    _add_bench(sub)
    sub.add_parser("devices", help="cameras, virtual camera, audio devices, onnxruntime providers")
    _add_train(sub)
    _add_eval(sub)
    return parser
