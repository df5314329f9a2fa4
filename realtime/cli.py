"""Command line: parse arguments, build a pipeline, run it. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from realtime.errors import DeviceUnavailable, UserError

logger = logging.getLogger("realtime")

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


def _check_audio_args(args: argparse.Namespace) -> None:
    if (args.audio_in is None) != (args.audio_out is None):
        raise UserError(
            "give both --audio-in (the microphone) and --audio-out (the virtual microphone); "
            "`realtime devices` lists them and explains the setup"
        )


def _start_audio(args: argparse.Namespace):
    """The audio bridge for --audio-in/--audio-out, or None (not asked for, or failed: logged, video goes on)."""
    if args.audio_in is None or args.audio_out is None:
        return None
    from realtime.audio import start_bridge

    return start_bridge(args.audio_in, args.audio_out, offset_ms=args.audio_offset_ms, muted=args.audio_mute)


def audio_hold(audio, args: argparse.Namespace):
    """With --av-sync both: the engine holds each frame until it is as old as the audio's
    shortest possible delay (read live from the bridge), so the two meet."""
    if audio is None or args.av_sync != "both":
        return None
    return lambda: audio.min_delay_ms


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="realtime", description="Real-time face reenactment to a virtual camera.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="zero-configuration demo")
    demo.add_argument(
        "--seconds",
        type=_positive,
        default=None,
        help="stop after this long (default: until q with a window, else 10 s)",
    )
    demo.add_argument("--out", default=DEFAULT_DEMO_OUT, help="MP4 written when there is no display")

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

    render = sub.add_parser("render", help="offline: every driver frame, no drops, audio muxed")
    render.add_argument("--avatar", required=True)
    render.add_argument("--driver", required=True, help="driving video")
    render.add_argument("--out", required=True, help="output .mp4")
    render.add_argument("--metrics-json", default=None)
    _add_pipeline_options(render)

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

    sub.add_parser("devices", help="cameras, virtual camera, audio devices, onnxruntime providers")

    train = sub.add_parser("train", help="train a model (needs the 'train' extra: torch)")
    train_sub = train.add_subparsers(dest="model", required=True, parser_class=_Parser)
    refiner = train_sub.add_parser("refiner", help="the face refiner used by the learned generator")
    refiner.add_argument(
        "--data", nargs="+", required=True, help="videos, cached clips (.npz) or folders of them"
    )
    refiner.add_argument("--out", required=True, help="run folder (checkpoints, samples, log)")
    refiner.add_argument("--steps", type=int, default=None)
    refiner.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    refiner.add_argument("--eval-every", type=int, default=None)
    refiner.add_argument("--batch", type=int, default=None)
    refiner.add_argument("--pairs-per-clip", type=int, default=None)
    refiner.add_argument("--workers", type=int, default=None, help="processes that build training pairs")
    refiner.add_argument("--device", default=None, help="auto (CUDA when present), cpu or cuda")
    refiner.add_argument(
        "--layout",
        choices=["face", "regions"],
        default=None,
        help="crops the model refines: the whole face, or mouth and eyes (much cheaper live)",
    )
    refiner.add_argument("--size", type=int, default=None, help="crop side in pixels")
    refiner.add_argument("--lr", type=float, default=None, help="learning rate (AdamW)")
    refiner.add_argument(
        "--gan-start", type=int, default=None, help="step at which the adversarial losses join"
    )
    refiner.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default=None,
        help="learning rate: constant, or cosine decay to 0 by --steps or --max-minutes, whichever is first",
    )
    refiner.add_argument(
        "--mouth-boost", type=float, default=None, help="multiplies the mouth's weight in the loss"
    )
    refiner.add_argument(
        "--retargeted",
        type=float,
        default=None,
        help="share of pairs whose target landmarks come from the live retargeter (0-1)",
    )
    refiner.add_argument(
        "--init",
        default=None,
        help="start from this model checkpoint (e.g. refiner_best.pt); a narrower one is widened to --widths",
    )
    refiner.add_argument(
        "--widths",
        type=lambda text: tuple(int(w) for w in text.split(",")),
        default=None,
        help="U-Net channel widths per level, e.g. 16,24,32,48",
    )
    refiner.add_argument(
        "--flow",
        action="store_true",
        default=None,
        help="the refiner may also move the warp's pixels (a small flow), not only recolour them",
    )
    refiner.add_argument(
        "--driver",
        action="store_true",
        default=None,
        help="the refiner also sees the driver's mouth and eye openings (teeth, a dark cavity), "
        "which the landmarks do not describe",
    )
    refiner.add_argument(
        "--motion-weight",
        dest="w_motion",
        metavar="W",
        type=float,
        default=None,
        help="with --flow: weight of the loss that pulls the flow to the optical flow from the warp "
        "to the real face (0: learn it from the image loss alone)",
    )
    refiner.add_argument(
        "--fresh", action="store_true", help="ignore an existing checkpoint instead of resuming"
    )
    swap = train_sub.add_parser("swap", help="CycleGAN / Recycle-GAN identity translator A→B for swap mode")
    swap.add_argument(
        "--a", nargs="+", required=True, help="the user: videos, cached clips (.npz) or folders of them"
    )
    swap.add_argument(
        "--b", nargs="+", required=True, help="who the user becomes: videos, cached clips or folders"
    )
    swap.add_argument("--out", required=True, help="run folder (checkpoints, samples, log, translator.onnx)")
    swap.add_argument(
        "--recycle", action="store_true", help="Recycle-GAN: add temporal predictors and the recycle loss"
    )
    swap.add_argument("--size", type=int, default=None, help="face crop side (default 64)")
    swap.add_argument("--steps", type=int, default=None)
    swap.add_argument("--max-minutes", type=float, default=None, help="stop after this much training time")
    swap.add_argument("--batch", type=int, default=None)
    swap.add_argument("--width", type=int, default=None, help="generator base width (default 32)")
    swap.add_argument("--n-res", type=int, default=None, help="generator residual blocks (default 4)")
    swap.add_argument(
        "--holdout", type=float, default=None, help="last fraction of each video never trained on"
    )
    swap.add_argument("--eval-every", type=int, default=None)
    swap.add_argument("--device", default=None, help="auto (CUDA when present), cpu or cuda")
    swap.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on CPU too (CPUs with AVX512-BF16/AMX)"
    )
    swap.add_argument(
        "--fresh", action="store_true", help="ignore an existing checkpoint instead of resuming"
    )

    ev = sub.add_parser("eval", help="self-reenactment scores on clips (first frame = avatar)")
    ev.add_argument("--data", nargs="+", required=True, help="clips (videos) to evaluate")
    ev.add_argument("--generator", nargs="+", default=["warp"], help="generators to compare side by side")
    ev.add_argument("--provider", action="append", default=None)
    ev.add_argument("--max-frames", type=int, default=120)
    ev.add_argument("--json", default=None, help="write the scores here")
    ev.add_argument("--sheet", default=None, help="write a contact sheet PNG here")
    return parser


# -- building blocks ------------------------------------------------------------------
def _processor(
    avatar_path: str,
    args: argparse.Namespace,
    size: tuple[int, int] | None,
    driver_size=None,
    live: bool = True,
):
    from realtime.avatar import load_avatar
    from realtime.controls import Controls
    from realtime.generators.registry import build_generators
    from realtime.loop import FrameProcessor
    from realtime.metrics import Metrics
    from realtime.tracking import FaceTracker

    avatar = load_avatar(avatar_path, size)
    generators = build_generators(args.generator, avatar, args.provider)
    if args.mode == "swap" and driver_size is not None and size is None:
        output_size = driver_size
    else:
        output_size = avatar.size
    controls = Controls(mode=args.mode)
    # Live: mediapipe runs in its own process so tracking overlaps with rendering.
    processor = FrameProcessor(
        avatar, generators, FaceTracker(isolated=live), controls, Metrics(), output_size
    )
    return processor


def _generator_info(processor) -> tuple[str, str]:
    generator = processor.generators.for_mode(processor.controls.mode)
    return getattr(generator, "name", "warp"), getattr(generator, "provider", "numpy+opencv")


def _finish(summary: dict, metrics_json: str | None) -> None:
    from realtime.metrics import format_summary, write_json

    print(format_summary(summary))
    if metrics_json:
        write_json(metrics_json, summary)
        print(f"metrics: {metrics_json}")


def _live_source(args: argparse.Namespace, size: tuple[int, int]):
    from realtime.sources import CameraSource, VideoFileSource

    if args.input:
        return VideoFileSource(args.input, paced=not args.unpaced, loop=args.loop)
    return CameraSource(args.camera if args.camera is not None else 0, size[0], size[1], args.fps or 30.0)


def cmd_run(args: argparse.Namespace) -> int:
    from realtime.loop import Engine
    from realtime.metrics import machine_description
    from realtime.sinks import make_sink

    _check_audio_args(args)
    size = args.size or (1280, 720)
    source = _live_source(args, size)
    driver_size = (source.width, source.height) if hasattr(source, "width") else size
    processor = _processor(
        args.avatar, args, args.size or (size if args.mode == "reenact" else None), driver_size
    )
    audio = None
    try:  # from here on the tracker process and its shared memory must be released on any error
        fps = args.fps or getattr(source, "fps", 30.0) or 30.0
        sinks = [make_sink(spec, processor.controls) for spec in (args.sink or ["virtualcam"])]
        name, provider = _generator_info(processor)
        logger.info("generator %s on %s, %dx%d at %.1f fps", name, provider, *processor.output_size, fps)
        audio = _start_audio(args)
        for sink in sinks:
            if hasattr(sink, "audio"):
                sink.audio = audio  # the window's level meter and audio hotkeys
        engine = Engine(
            source,
            processor,
            sinks,
            fps=fps,
            budget_ms=args.budget_ms,
            pipeline=args.pipeline,
            on_latency=audio.set_video_latency_ms if audio is not None else None,
            min_latency_ms=audio_hold(audio, args),
        )
        summary = engine.run(seconds=args.seconds)
    finally:
        processor.close()
        if audio is not None:
            audio.close()
    summary.update(
        generator=name,
        provider=provider,
        mode=args.mode,
        size=f"{processor.output_size[0]}x{processor.output_size[1]}",
        budget_ms=round(engine.budget_s * 1000.0, 2),
        machine=machine_description(),
    )
    if audio is not None:
        from realtime.audio import format_audio_summary

        summary["audio"] = audio.stats()
        print(format_audio_summary(summary["audio"]))
    _finish(summary, args.metrics_json)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from realtime.loop import render_offline
    from realtime.sinks import FileSink
    from realtime.sources import VideoFileSource

    if os.path.isdir(args.out):  # found only at the final rename, after the whole render
        raise UserError(
            f"--out {args.out} is a folder; give a file name such as {os.path.join(args.out, 'out.mp4')}"
        )
    source = VideoFileSource(args.driver, paced=False)
    processor = _processor(
        args.avatar, args, args.size, (source.width // 2 * 2, source.height // 2 * 2), live=False
    )
    sink = FileSink(args.out, audio_from=args.driver)
    t0 = time.monotonic()
    try:
        summary = render_offline(source, processor, [sink], fps=source.fps)
    finally:
        processor.close()
    name, provider = _generator_info(processor)
    summary.update(
        generator=name,
        provider=provider,
        mode=args.mode,
        driver_fps=source.fps,
        wall_s=round(time.monotonic() - t0, 2),
    )
    _finish(summary, args.metrics_json)
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from realtime.avatar import BUILTIN
    from realtime.loop import Engine
    from realtime.sinks import FileSink, WindowSink, display_available
    from realtime.sources import BuiltinDriverSource, CameraSource

    try:
        source = CameraSource(0, 640, 480, 30.0)
        print("driver: webcam 0")
    except DeviceUnavailable:
        source = BuiltinDriverSource(640, 480, 30.0)
        print("driver: no webcam, using the built-in driving sequence")
    ns = argparse.Namespace(generator=None, provider=None, mode="reenact")
    processor = _processor(BUILTIN, ns, (640, 640))
    if display_available():
        sinks, seconds, out = [WindowSink(processor.controls)], args.seconds, None
        print("window: n = new neutral pose, m = switch reenact/swap, q = quit")
    else:
        out = os.path.abspath(args.out)
        sinks, seconds = [FileSink(out)], args.seconds or 10.0
    engine = Engine(source, processor, sinks, fps=30.0)
    try:
        summary = engine.run(seconds=seconds)
    finally:
        processor.close()
    _finish(summary, None)
    if out:
        print(f"no display: wrote {out}")
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from realtime.devices import format_report, probe_devices

    print(format_report(probe_devices()))
    return 0


def _bench_source(args: argparse.Namespace, size: tuple[int, int]):
    from realtime.sources import BuiltinDriverSource, CameraSource, VideoFileSource

    if args.camera is not None:
        return CameraSource(args.camera, size[0], size[1], args.fps or 30.0)
    if args.input:
        source = VideoFileSource(args.input, paced=not args.unpaced, loop=True)
        if args.fps:
            source.fps = args.fps
        return source
    return BuiltinDriverSource(640, 480, args.fps or 30.0, paced=not args.unpaced)


def cmd_bench(args: argparse.Namespace) -> int:
    from realtime import bench
    from realtime.loop import Engine
    from realtime.metrics import write_json
    from realtime.sinks import make_sink

    _check_audio_args(args)
    size = args.size or (1280, 720)
    processor = _processor(args.avatar, args, size, size)
    runs: dict[str, tuple[dict, object]] = {}
    info = bench.bench_info(processor, args)
    kinds = ["engine", "naive"] if args.compare_naive else ["engine"]
    for kind in kinds:
        proc = processor if kind == "engine" else bench.fresh(processor)
        source = _bench_source(args, size)
        fps = getattr(source, "fps", 30.0) or 30.0
        budget_ms = args.budget_ms or 2000.0 / fps
        sinks = [make_sink(spec, proc.controls) for spec in (args.sink or ["null"])]
        audio = _start_audio(args) if kind == "engine" else None
        meter = bench.ResourceMeter()
        try:
            if kind == "engine":
                summary = Engine(
                    source,
                    proc,
                    sinks,
                    fps=fps,
                    budget_ms=budget_ms,
                    pipeline=args.pipeline,
                    on_latency=audio.set_video_latency_ms if audio else None,
                    min_latency_ms=audio_hold(audio, args),
                ).run(seconds=args.seconds)
            else:
                summary = bench.run_naive(source, proc, sinks, seconds=args.seconds)
        finally:
            proc.close()
            if audio is not None:
                audio.close()
        runs[kind] = (bench.annotate(summary, proc.metrics, budget_ms, meter.stop()), proc.metrics)
        if audio is not None:
            runs[kind][0]["audio"] = audio.stats()
        runs[kind][0].update(
            info,
            input=args.input or ("camera" if args.camera is not None else "builtin"),
            input_fps=round(fps, 3),
        )
    summaries = {k: v[0] for k, v in runs.items()}
    print(bench.format_table(summaries))
    if "audio" in summaries["engine"]:
        from realtime.audio import format_audio_summary

        print(format_audio_summary(summaries["engine"]["audio"]))
    result = dict(summaries["engine"])
    if args.compare_naive:
        engine, naive = summaries["engine"], summaries["naive"]
        result["naive"] = naive
        result["engine_vs_naive"] = {
            "p95_latency_ratio": round(
                naive["latency_ms"]["p95"] / max(engine["latency_ms"]["p95"], 1e-6), 3
            ),
            "throughput_ratio": round(engine["fps"] / max(naive["fps"], 1e-6), 3),
        }
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
    from pathlib import Path

    if args.model == "swap":
        return _train_swap(args)
    from realtime.train.refiner import Config, train

    cfg = Config(data=list(args.data))
    for name in (
        "steps",
        "max_minutes",
        "eval_every",
        "batch",
        "pairs_per_clip",
        "workers",
        "device",
        "layout",
        "size",
        "widths",
        "lr",
        "gan_start",
        "schedule",
        "init",
        "mouth_boost",
        "retargeted",
        "flow",
        "driver",
        "w_motion",
    ):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    result = train(cfg, Path(args.out), resume=not args.fresh)
    final = result["final"]
    print(
        f"trained {result['steps']} steps on {result['device']}: final loss {final.get('loss')}, "
        f"validation {final.get('val')}"
    )
    print(f"run folder: {args.out}")
    return 0


def _train_swap(args: argparse.Namespace) -> int:
    from pathlib import Path

    from realtime.train.cyclegan import Config, train

    cfg = Config(a=list(args.a), b=list(args.b), recycle=args.recycle, bf16=args.bf16)
    for name in (
        "size",
        "steps",
        "max_minutes",
        "batch",
        "width",
        "n_res",
        "holdout",
        "eval_every",
        "device",
    ):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    result = train(cfg, Path(args.out), resume=not args.fresh)
    final = result["final"]
    print(
        f"trained {result['steps']} steps on {result['device']} in {result['minutes']} min: "
        f"cycle {final.get('cycle')}, validation {final.get('val')}"
    )
    if "export" in result:
        print(
            f"exported {result['export']['onnx']} (parity {result['export']['parity_fp32']['image_max_abs_diff']:.1e})"
        )
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
