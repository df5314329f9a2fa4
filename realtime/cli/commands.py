"""The commands: flags become a ``PipelineConfig``, ``realtime.session`` runs it, the result is printed."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from realtime.cli.parser import NO_CAMERA
from realtime.errors import DeviceUnavailable, UserError

if TYPE_CHECKING:
    from realtime.pipeline import FrameProcessor
    from realtime.session import PipelineConfig

logger = logging.getLogger("realtime")

DEMO_SIZE = (640, 640)
DEMO_CAMERA = (640, 480)
DEMO_FPS = 30.0


# -- flags -> config ---------------------------------------------------------------------------
def pipeline_config(args: argparse.Namespace, **fields):
    """The ``PipelineConfig`` of a command line: the shared pipeline options plus ``fields``."""
    from realtime.controls import Tuning
    from realtime.frames import Mode
    from realtime.session import PipelineConfig

    if getattr(args, "swap_shape", None) is not None:
        fields["tuning"] = replace(fields.get("tuning", Tuning()), swap_shape=args.swap_shape)
    if getattr(args, "keep_glasses", False):
        fields["tuning"] = replace(fields.get("tuning", Tuning()), keep_glasses=True)
    return PipelineConfig(
        mode=Mode(args.mode),
        generator=args.generator,
        providers=tuple(args.provider) if args.provider else None,
        size=args.size,
        occlusion=not getattr(args, "no_occlusion", False),
        **fields,
    )


def _source_config(args: argparse.Namespace, **fields):
    """Where a ``run``/``bench`` reads frames: ``--camera`` (at ``--size``) or ``--input``."""
    from realtime.session import CAMERA_SIZE, SourceConfig

    return SourceConfig(
        camera=args.camera, input=args.input, paced=not args.unpaced, size=args.size or CAMERA_SIZE, **fields
    )


def _audio(args: argparse.Namespace):
    from realtime.session import audio_config

    return audio_config(args.audio_in, args.audio_out, args.audio_offset_ms, args.audio_mute, args.av_sync)


def _live_fields(args: argparse.Namespace) -> dict:
    """The live settings of `run`/`demo` as ``PipelineConfig`` fields."""
    from realtime.controls import Tuning
    from realtime.live import avatar_paths

    return dict(
        avatar=args.avatar[0],
        avatars=tuple(avatar_paths(args.avatar)),
        tuning=Tuning(
            strength=args.strength,
            head_share=args.head_share,
            mirror=args.mirror,
            mouth=args.mouth,
            eyes=args.eyes,
            brows=args.brows,
        ),
        refiner=None if args.refiner is None else args.refiner == "on",
        record_dir=args.record_dir,
    )


def _live_sinks(
    config: PipelineConfig, processor: FrameProcessor, sinks: list, pip: bool, keys: bool = False
) -> list:
    """With a window: its picture-in-picture setting; with keys (a window's or the terminal's):
    the recorder they start."""
    from realtime.sinks import WindowSink
    from realtime.sinks.recorder import RecorderSink

    windows = [sink for sink in sinks if isinstance(sink, WindowSink)]
    for window in windows:
        window.pip = pip
    if windows or keys:
        audio_out = config.audio.audio_out if config.audio is not None else None
        sinks = [*sinks, RecorderSink(processor.controls, config.record_dir, audio_out)]
    return sinks


def _finish(summary: dict, metrics_json: str | None) -> None:
    from realtime.metrics import format_summary, write_json

    print(format_summary(summary))
    if "remote" in summary:
        from realtime.generators.remote import format_remote

        print(format_remote(summary["remote"]))
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
    from realtime.keys import TerminalKeys
    from realtime.session import (
        CAMERA_SIZE,
        generator_info,
        make_live,
        make_source,
        stream,
    )
    from realtime.sinks import make_sink
    from realtime.voice.lips import resolve_lips

    lips = resolve_lips(
        args.lips,
        args.audio_in,
        camera=args.camera != NO_CAMERA,
        swap=args.mode == "swap",
        audio_out=args.audio_out,
    )
    if args.camera == NO_CAMERA:
        return _run_voice(args, lips)
    audio = _audio(args) if lips == "video" else _voice_audio(args, lips)
    camera = args.size or CAMERA_SIZE
    config = pipeline_config(
        args,
        **_live_fields(args),
        # --fps is the output's rate; it asks a camera for that rate but never re-paces a file.
        source=_source_config(args, loop=args.loop, fps=None if args.input else args.fps),
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
    window = any(spec.strip().lower() == "window" for spec in config.sinks)
    processor = make_live(config, output_size, (source.width, source.height), window)
    fps = config.fps or source.fps or 30.0
    sinks = [make_sink(spec, processor.controls) for spec in config.sinks]
    # No window: the same keys from the terminal (the virtual camera alone can switch avatars too).
    terminal = None if window or not sys.stdin.isatty() else TerminalKeys(processor.controls)
    sinks = _live_sinks(config, processor, sinks, pip=not args.no_pip, keys=terminal is not None)
    name, provider = generator_info(processor)
    logger.info("generator %s on %s, %dx%d at %.1f fps", name, provider, *processor.output_size, fps)
    chooser = None
    if lips != "video":
        from realtime.voice.live import use_lips

        chooser = use_lips(
            processor,
            lips,
            args.audio_in,
            occlusion=config.occlusion,
            camera_delay_s=_camera_delay_s(lips, audio),
            # With a bridge on the same microphone, its one line already says the microphone failed.
            report_voice_failure=audio is None,
        )
    with terminal or contextlib.nullcontext():
        summary, budget_ms = stream(config, source, processor, sinks, fps, config.budget_ms)
    extra = {}
    if chooser is not None:
        voice = chooser.voice
        extra = chooser.summary() | dict(
            microphone=voice.name, voice_blocks=voice.blocks, voice_errors=voice.errors
        )
    return _finish_live(args, summary, processor, budget_ms, mode=str(config.mode), **extra)


def _voice_audio(args: argparse.Namespace, lips: str):
    """The audio of a run whose mouth may come from the voice: --audio-out (the delayed voice for a
    call) is optional, and the delayed voice waits for the voice's mouth, which trails its sound."""
    if not args.audio_in:
        raise UserError(f"--lips {lips} needs the microphone: --audio-in DEVICE (see `realtime devices`)")
    if args.mode != "reenact":
        raise UserError(f"--lips {lips} drives the avatar's mouth: use it with --mode reenact")
    if not args.audio_out:
        return None
    from dataclasses import replace

    from realtime.voice.live import voice_lag_ms

    return replace(_audio(args), offset_ms=args.audio_offset_ms + voice_lag_ms())


def _camera_delay_s(lips: str, audio) -> float:
    """auto with a delayed voice: the camera's mouth waits as long as the voice's mouth trails its
    sound, so both meet the voice (head and eyes stay undelayed)."""
    if lips != "auto" or audio is None:
        return 0.0
    from realtime.voice.live import voice_lag_ms

    return voice_lag_ms() / 1000.0


def _run_voice(args: argparse.Namespace, lips: str) -> int:
    """``run --lips voice --camera none``: the avatar speaks the microphone, no camera."""
    import numpy as np

    from realtime.session import SourceConfig, make_processor, stream
    from realtime.sinks import make_sink
    from realtime.sources import ImageSource
    from realtime.voice.live import use_voice

    if lips == "video":
        raise UserError("--camera none needs --lips voice (the mouth from --audio-in)")
    if len(args.avatar) > 1:
        raise UserError("--lips voice takes one --avatar for now (switching avatars needs a camera)")
    audio = _voice_audio(args, "voice")
    fps = args.fps or 30.0
    config = pipeline_config(
        args,
        avatar=args.avatar[0],
        source=SourceConfig(camera=None, fps=fps),
        fps=fps,
        budget_ms=args.budget_ms,
        pipeline=args.pipeline,
        sinks=tuple(args.sink or ["virtualcam"]),
        audio=audio,
        seconds=args.seconds,
    )
    processor = make_processor(config, config.size)  # the avatar's own canvas unless --size
    voice = use_voice(processor, args.audio_in)
    source = ImageSource(np.zeros((64, 64, 3), np.uint8), fps=fps)  # the clock; nothing to track
    sinks = [make_sink(spec, processor.controls) for spec in config.sinks]
    summary, budget_ms = stream(config, source, processor, sinks, fps, config.budget_ms)
    return _finish_live(
        args,
        summary,
        processor,
        budget_ms,
        lips="voice",
        microphone=voice.microphone.name,
        voice_blocks=voice.microphone.blocks,
        voice_errors=voice.microphone.errors,
    )


def _finish_live(
    args: argparse.Namespace, summary: dict, processor: FrameProcessor, budget_ms: float, **extra
) -> int:
    """A live run's summary: what ran (a remote generator knows its provider once opened) and how."""
    from realtime.metrics import machine_description
    from realtime.session import generator_info

    name, provider = generator_info(processor)
    summary.update(
        generator=name,
        provider=provider,
        **extra,
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
    if args.audio:
        return _render_voice(args)
    if not args.driver:
        raise UserError("render needs --driver VIDEO, --audio SPEECH, or both")
    config = pipeline_config(args, avatar=args.avatar)
    source = VideoFileSource(args.driver, paced=False)
    driver_size = (source.width // 2 * 2, source.height // 2 * 2)
    processor = make_processor(config, config.size, driver_size, live=False)
    sink = FileSink(args.out, audio_from=args.driver)
    t0 = time.monotonic()
    summary = render_offline(source, processor, [sink], fps=source.fps)
    name, provider = generator_info(processor)
    from realtime.generators.remote import remote_summary

    if (remote := remote_summary(processor.generators)) is not None:
        summary["remote"] = remote
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


def _render_voice(args: argparse.Namespace) -> int:
    from realtime.voice.render import DEFAULT_FPS, render_voice

    if args.mode != "reenact":
        raise UserError("--audio drives the avatar's mouth: use it with --mode reenact")
    summary = render_voice(
        args.avatar,
        args.audio,
        args.out,
        size=args.size,
        fps=args.fps or DEFAULT_FPS,
        driver=args.driver,
        generator=args.generator,
        providers=list(args.provider) if args.provider else None,
        model_path=args.voice_model,
        seed=args.seed,
    )
    _finish(summary, args.metrics_json)
    print(f"wrote {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from realtime.session import PipelineConfig, SourceConfig, make_live, make_source, stream
    from realtime.sinks import FileSink, WindowSink, display_available

    driver = SourceConfig(camera=0, size=DEMO_CAMERA, fps=DEMO_FPS)
    source = make_source(driver)
    try:
        source.open()
        print("driver: webcam 0")
    except DeviceUnavailable:
        driver = SourceConfig(builtin=True, fps=DEMO_FPS)
        source = make_source(driver)
        print("driver: no webcam, using the built-in driving sequence")
    window = display_available()
    seconds = args.seconds if window else args.seconds or 10.0
    config = PipelineConfig(
        generator=args.generator,
        size=DEMO_SIZE,
        source=driver,
        fps=DEMO_FPS,
        seconds=seconds,
        **_live_fields(args),
    )
    processor = make_live(config, config.size, None, window)
    out = None
    if window:
        sinks = _live_sinks(config, processor, [WindowSink(processor.controls)], pip=not args.no_pip)
        print("window: h = keys, p = your camera, 1-9 = avatar, r = record, s = snapshot, q = quit")
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


def _bench_lips(args: argparse.Namespace) -> int:
    from realtime.bench_lips import format_lips, run_lips_bench
    from realtime.metrics import write_json

    report = run_lips_bench(
        args.lips, args.speech, bursts=args.bursts, fps=args.fps or 30.0, avatar=args.avatar
    )
    print(format_lips(report))
    if args.json:
        write_json(args.json, report)
        print(f"json: {args.json}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from realtime import bench
    from realtime.metrics import write_json

    if args.lips:
        return _bench_lips(args)
    audio = _audio(args)
    config = pipeline_config(
        args,
        avatar=args.avatar,
        source=_source_config(args, builtin=args.camera is None and not args.input, loop=True, fps=args.fps),
        budget_ms=args.budget_ms,
        pipeline=args.pipeline,
        sinks=tuple(args.sink or ["null"]),
        audio=audio,
        seconds=args.seconds,
    )
    if args.clients:
        return _bench_clients(args, config)
    runs, info = bench.run_bench(config, compare_naive=args.compare_naive)
    summaries = {k: v[0] for k, v in runs.items()}
    print(bench.format_table(summaries))
    if "remote" in summaries["engine"]:
        from realtime.generators.remote import format_remote

        print(format_remote(summaries["engine"]["remote"]))
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


def _bench_clients(args: argparse.Namespace, config) -> int:
    from realtime import bench_clients
    from realtime.metrics import machine_description, write_json

    counts = bench_clients.parse_clients(args.clients)
    rows = bench_clients.run_load(config, counts, args.compare_unbatched, args.metrics_url, args.server_only)
    print(bench_clients.format_load_table(rows))
    if args.json:
        write_json(args.json, {"machine": machine_description(), "seconds": config.seconds, "rounds": rows})
        print(f"json: {args.json}")
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


def cmd_enroll(args: argparse.Namespace) -> int:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError("enrolment trains a model and needs PyTorch: pip install 'realtime[train]'") from None
    from realtime.train.config import EnrollConfig, config_from_args
    from realtime.train.enroll import enroll

    manifest = enroll(config_from_args(EnrollConfig, args))
    heldout = manifest.get("heldout_in_crop")
    print(f"enrolled {manifest['name']}: {manifest['steps']} steps in {manifest['wall_minutes']:.1f} min")
    if heldout:
        shipped, mine = heldout["shipped"], heldout["enrolled"]
        print(
            f"held-out frames, in-crop L1 (warp / shipped refiner / enrolled): "
            f"mouth {mine['warp_mouth_l1']:.4f} / {shipped['mouth_l1']:.4f} / {mine['mouth_l1']:.4f}, "
            f"eyes {mine['warp_eyes_l1']:.4f} / {shipped['eyes_l1']:.4f} / {mine['eyes_l1']:.4f}"
        )
    print(f"avatar folder: {args.out} (use it with --avatar {args.out})")
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

    from realtime import evaluate, evaluate_cross
    from realtime.metrics import machine_description, write_json

    if not args.data and not args.pairs:
        raise UserError("give clips to evaluate (--data) and/or AVATAR:DRIVER pairs (--pairs)")
    pairs = [evaluate_cross.parse_pair(text) for text in args.pairs]
    result: dict = {"max_frames": args.max_frames, "machine": machine_description()}
    if args.data:
        scores = {name: [] for name in args.generator}
        for clip in tqdm(args.data, unit="clip"):
            for name in args.generator:
                scores[name].append(evaluate.evaluate_clip(clip, name, args.max_frames, args.provider))
        result["generators"] = {name: evaluate.summarise(s) for name, s in scores.items()}
        print(evaluate.format_table(result["generators"]))
        if args.sheet:
            evaluate.contact_sheet(scores, args.sheet)
            print(f"contact sheet: {args.sheet}")
    if pairs:
        cross = evaluate_cross.evaluate_pairs(
            pairs, args.generator, args.max_frames, args.provider, args.pairs_sheet, args.pairs_size
        )
        result["cross_identity"] = {
            "size": "x".join(map(str, args.pairs_size)) if args.pairs_size else "driver",
            "generators": cross,
        }
        print(evaluate_cross.format_table(cross))
        if args.pairs_sheet:
            print(f"cross-identity contact sheet: {args.pairs_sheet}")
    if args.json:
        write_json(args.json, result)
        print(f"scores: {args.json}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from realtime.serve import ServeConfig, TritonService

    config = ServeConfig(
        models=tuple(args.model or ()),
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        batching=args.batching,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        providers=tuple(args.provider) if args.provider else None,
        threads=args.threads,
        expose=args.expose,
    )
    import signal

    def stop(signum, frame):  # SIGTERM (systemd, docker, kill) stops cleanly, as ctrl-c does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where a shell ignores it
    with TritonService(config) as service:
        print(service.ready_line(), flush=True)
        deadline = time.monotonic() + args.seconds if args.seconds else float("inf")
        try:
            while time.monotonic() < deadline:
                if not service.alive():
                    raise UserError(f"the Triton server stopped; its log: {service.log_path}")
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass
    return 0
