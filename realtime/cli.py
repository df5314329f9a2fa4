"""Command line: parse the flags into a config, hand it to ``realtime.session``, print the result."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from realtime.errors import DeviceUnavailable, UserError

logger = logging.getLogger("realtime")

DEFAULT_DEMO_OUT = "realtime-demo.mp4"
DEFAULT_PIPELINE = "auto"
DEMO_SIZE = (640, 640)
DEMO_CAMERA = (640, 480)
DEMO_FPS = 30.0


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
    ev = sub.add_parser("eval", help="self-reenactment scores on clips (first frame = avatar)")
    ev.add_argument("--data", nargs="+", required=True, help="clips (videos) to evaluate")
    ev.add_argument("--generator", nargs="+", default=["warp"], help="generators to compare side by side")
    ev.add_argument("--provider", action="append", default=None)
    ev.add_argument("--max-frames", type=int, default=120)
    ev.add_argument("--json", default=None, help="write the scores here")
    ev.add_argument("--sheet", default=None, help="write a contact sheet PNG here")


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


# -- flags -> config ---------------------------------------------------------------------------
def pipeline_config(args: argparse.Namespace, **fields):
    """The ``PipelineConfig`` of a command line: the shared pipeline options plus ``fields``."""
    from realtime.frames import Mode
    from realtime.session import PipelineConfig

    return PipelineConfig(
        mode=Mode(args.mode),
        generator=args.generator,
        providers=tuple(args.provider) if args.provider else None,
        size=args.size,
        **fields,
    )


def _audio(args: argparse.Namespace):
    from realtime.session import audio_config

    return audio_config(args.audio_in, args.audio_out, args.audio_offset_ms, args.audio_mute, args.av_sync)


def _finish(summary: dict, metrics_json: str | None) -> None:
    from realtime.metrics import format_summary, write_json

    print(format_summary(summary))
    if metrics_json:
        write_json(metrics_json, summary)
        print(f"metrics: {metrics_json}")


def _print_audio(summary: dict) -> None:
    if "audio" in summary:
        from realtime.audio import format_audio_summary

        print(format_audio_summary(summary["audio"]))


# -- commands ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from realtime.frames import Mode
    from realtime.metrics import machine_description
    from realtime.session import (
        CAMERA_SIZE,
        SourceConfig,
        generator_info,
        make_processor,
        make_source,
        stream,
    )
    from realtime.sinks import make_sink

    audio = _audio(args)
    camera = args.size or CAMERA_SIZE
    config = pipeline_config(
        args,
        avatar=args.avatar,
        # --fps is the output's rate; it asks a camera for that rate but never re-paces a file.
        source=SourceConfig(
            camera=args.camera,
            input=args.input,
            loop=args.loop,
            paced=not args.unpaced,
            size=camera,
            fps=None if args.input else args.fps,
        ),
        fps=args.fps,
        budget_ms=args.budget_ms,
        pipeline=args.pipeline,
        sinks=tuple(args.sink or ["virtualcam"]),
        audio=audio,
        seconds=args.seconds,
    )
    source = make_source(config.source)
    # A reenacted avatar fills the camera's size unless --size says otherwise; a swap keeps the
    # driver's own frame size.
    output_size = config.size or (camera if config.mode is Mode.REENACT else None)
    processor = make_processor(config, output_size, (source.width, source.height))
    fps = config.fps or source.fps or 30.0
    sinks = [make_sink(spec, processor.controls) for spec in config.sinks]
    name, provider = generator_info(processor)
    logger.info("generator %s on %s, %dx%d at %.1f fps", name, provider, *processor.output_size, fps)
    summary, budget_ms = stream(config, source, processor, sinks, fps, config.budget_ms)
    summary.update(
        generator=name,
        provider=provider,
        mode=str(config.mode),
        size=f"{processor.output_size[0]}x{processor.output_size[1]}",
        budget_ms=round(budget_ms, 2),
        machine=machine_description(),
    )
    _print_audio(summary)
    _finish(summary, args.metrics_json)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from realtime.loop import render_offline
    from realtime.session import generator_info, make_processor
    from realtime.sinks import FileSink
    from realtime.sources import VideoFileSource

    if os.path.isdir(args.out):  # found only at the final rename, after the whole render
        raise UserError(
            f"--out {args.out} is a folder; give a file name such as {os.path.join(args.out, 'out.mp4')}"
        )
    config = pipeline_config(args, avatar=args.avatar)
    source = VideoFileSource(args.driver, paced=False)
    driver_size = (source.width // 2 * 2, source.height // 2 * 2)
    processor = make_processor(config, config.size, driver_size, live=False)
    sink = FileSink(args.out, audio_from=args.driver)
    t0 = time.monotonic()
    summary = render_offline(source, processor, [sink], fps=source.fps)
    name, provider = generator_info(processor)
    summary.update(
        generator=name,
        provider=provider,
        mode=str(config.mode),
        driver_fps=source.fps,
        wall_s=round(time.monotonic() - t0, 2),
    )
    _finish(summary, args.metrics_json)
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from realtime.avatar import BUILTIN
    from realtime.session import PipelineConfig, SourceConfig, make_processor, make_source, stream
    from realtime.sinks import FileSink, WindowSink, display_available

    camera = SourceConfig(camera=0, size=DEMO_CAMERA, fps=DEMO_FPS)
    source = make_source(camera)
    try:
        source.open()
        print("driver: webcam 0")
    except DeviceUnavailable:
        source = make_source(SourceConfig(builtin=True, fps=DEMO_FPS))
        print("driver: no webcam, using the built-in driving sequence")
    window = display_available()
    seconds = args.seconds if window else args.seconds or 10.0
    config = PipelineConfig(avatar=BUILTIN, size=DEMO_SIZE, source=camera, fps=DEMO_FPS, seconds=seconds)
    processor = make_processor(config, config.size)
    out = None
    if window:
        sinks = [WindowSink(processor.controls)]
        print("window: n = new neutral pose, m = switch reenact/swap, q = quit")
    else:
        out = os.path.abspath(args.out)
        sinks = [FileSink(out)]
    summary, _ = stream(config, source, processor, sinks, fps=DEMO_FPS)
    _finish(summary, None)
    if out:
        print(f"no display: wrote {out}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from realtime.devices import format_report, probe_devices

    print(format_report(probe_devices()))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from realtime import bench
    from realtime.metrics import write_json
    from realtime.session import CAMERA_SIZE, SourceConfig, make_processor, make_source, stream
    from realtime.sinks import make_sink

    audio = _audio(args)
    size = args.size or CAMERA_SIZE
    config = pipeline_config(
        args,
        avatar=args.avatar,
        source=SourceConfig(
            camera=args.camera,
            input=args.input,
            builtin=args.camera is None and not args.input,
            loop=True,
            paced=not args.unpaced,
            size=size,
            fps=args.fps,
        ),
        budget_ms=args.budget_ms,
        pipeline=args.pipeline,
        sinks=tuple(args.sink or ["null"]),
        audio=audio,
        seconds=args.seconds,
    )
    processor = make_processor(config, size, size)
    runs: dict[str, tuple[dict, object]] = {}
    info = bench.bench_info(processor, config.source.paced)
    for kind in ["engine", "naive"] if args.compare_naive else ["engine"]:
        proc = processor if kind == "engine" else bench.fresh(processor)
        source = make_source(config.source)
        fps = source.fps or 30.0
        budget_ms = config.budget_ms or 2000.0 / fps
        sinks = [make_sink(spec, proc.controls) for spec in config.sinks]
        meter = bench.ResourceMeter()
        if kind == "engine":
            summary, _ = stream(config, source, proc, sinks, fps, budget_ms)
        else:
            summary = bench.run_naive(source, proc, sinks, seconds=config.seconds)
        runs[kind] = (bench.annotate(summary, proc.metrics, budget_ms, meter.stop()), proc.metrics)
        runs[kind][0].update(
            info,
            input=args.input or ("camera" if args.camera is not None else "builtin"),
            input_fps=round(fps, 3),
        )
    summaries = {k: v[0] for k, v in runs.items()}
    print(bench.format_table(summaries))
    _print_audio(summaries["engine"])
    result = dict(summaries["engine"])
    if args.compare_naive:
        result["naive"] = summaries["naive"]
        result["engine_vs_naive"] = bench.engine_vs_naive(summaries["engine"], summaries["naive"])
        r = result["engine_vs_naive"]
        print(
            f"engine vs naive: p95 latency {r['p95_latency_ratio']:.2f}x lower, throughput {r['throughput_ratio']:.2f}x"
        )
    if args.json:
        write_json(args.json, result)
        print(f"json: {args.json}")
    if args.plot:
        title = f"{info['generator']} {info['size']} {'paced' if info['paced'] else 'unpaced'} — {info['machine']}"
        bench.plot(runs, args.plot, title)
        print(f"plot: {args.plot}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("training needs PyTorch: pip install 'realtime[train]'") from None
    if args.model == "swap":
        return _train_swap(args)
    from realtime.train.config import RefinerConfig, config_from_args
    from realtime.train.refiner import train

    result = train(config_from_args(RefinerConfig, args), Path(args.out), resume=not args.fresh)
    final = result["final"]
    print(
        f"trained {result['steps']} steps on {result['device']}: final loss {final.get('loss')}, "
        f"validation {final.get('val')}"
    )
    print(f"run folder: {args.out}")
    return 0


def _train_swap(args: argparse.Namespace) -> int:
    from realtime.train.config import SwapConfig, config_from_args
    from realtime.train.cyclegan import train

    config = config_from_args(SwapConfig, args)
    result = train(config, Path(args.out), resume=not args.fresh)
    final = result["final"]
    print(
        f"trained {result['steps']} steps on {result['device']} in {result['minutes']} min: "
        f"cycle {final.get('cycle')}, validation {final.get('val')}"
    )
    if config.export:
        from realtime.export.translator import export_run

        exported = export_run(Path(args.out), record=True)
        print(f"exported {exported['onnx']} (parity {exported['parity_fp32']['image_max_abs_diff']:.1e})")
    print(f"run folder: {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from realtime.evaluate import contact_sheet, evaluate_clip, format_table, summarise
    from realtime.metrics import machine_description, write_json

    scores = {name: [] for name in args.generator}
    for clip in tqdm(args.data, unit="clip"):
        for name in args.generator:
            scores[name].append(evaluate_clip(clip, name, args.max_frames, args.provider))
    summary = {name: summarise(s) for name, s in scores.items()}
    print(format_table(summary))
    if args.json:
        write_json(
            args.json,
            {"generators": summary, "max_frames": args.max_frames, "machine": machine_description()},
        )
        print(f"scores: {args.json}")
    if args.sheet:
        contact_sheet(scores, args.sheet)
        print(f"contact sheet: {args.sheet}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "render": cmd_render,
    "demo": cmd_demo,
    "devices": cmd_devices,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "train": cmd_train,
}


def main(argv: list[str] | None = None) -> int:
    # mediapipe's native logging would otherwise bury our one-line errors.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Nor may FFmpeg's (inside cv2.VideoCapture): "moov atom not found" on a corrupt video
    # would precede the one-line error. -8 is AV_LOG_QUIET; read when cv2 first opens a video.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"realtime: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything unexpected still ends in one line; --debug shows the trace
        if args.debug:
            raise
        print(
            f"realtime: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
