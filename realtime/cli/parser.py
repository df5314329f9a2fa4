"""The command line's flags: one small function per command."""

from __future__ import annotations

import argparse

DEFAULT_DEMO_OUT = "realtime-demo.mp4"
DEFAULT_PIPELINE = "auto"
NO_CAMERA = -1  # --camera none


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1280x720, got {text!r}") from None
    if not (16 <= w <= 7680 and 16 <= h <= 4320):
        raise argparse.ArgumentTypeError(f"size {text} is out of range (16x16 .. 7680x4320)")
    return w // 2 * 2, h // 2 * 2


def _camera(text: str) -> int:
    """A webcam index, or ``none`` (NO_CAMERA)."""
    if text.strip().lower() == "none":
        return NO_CAMERA
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera must be an index or none, got {text!r}") from None


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
        help="warp, a model shipped in weights/, PATH.onnx, or triton://HOST:PORT/NAME (a `realtime serve` "
        "server; default: the best shipped generator)",
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
        help="swap mode and --lips auto: don't look for hands in front of the face (saves the hand "
        "model's CPU)",
    )
    p.add_argument(
        "--swap-shape",
        type=_share,
        default=None,
        help="swap mode: how far your face takes the avatar's proportions (eyes, brows, nose), from 0 "
        "(yours, in the avatar's skin) to 1 (the avatar's); default 0.7 (keys j/k in a window)",
    )
    p.add_argument(
        "--keep-glasses",
        action="store_true",
        help="swap mode: the frame of your glasses stays in front of the avatar's face (default: the "
        "avatar's face as it is; key o in a window)",
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


def _share(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def _strength(text: str) -> float:
    value = _number(text)
    if not 0.0 <= value <= 2.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 2, got {text}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _add_live_options(p: argparse.ArgumentParser) -> None:
    """The settings the window's keys change live (press h in the window for the keys)."""
    live = p.add_argument_group("live settings (the window's keys change them; h lists the keys)")
    live.add_argument(
        "--strength", type=_strength, default=1.0, help="expression transfer strength, 0-2 (default 1)"
    )
    live.add_argument(
        "--head-share",
        type=_share,
        default=0.5,
        help="split between head motion and expression, 0-1: 0.5 (default) both in full, "
        "towards 0 the head stays still, towards 1 the expression does",
    )
    for part, what in (("mouth", "mouth and jaw"), ("eyes", "eyes and lids"), ("brows", "brows")):
        live.add_argument(
            f"--{part}", type=_strength, default=1.0, help=f"{what}: expression strength 0-2 (default 1)"
        )
    live.add_argument("--mirror", action="store_true", help="mirror the camera (keys: f)")
    live.add_argument(
        "--refiner",
        choices=["on", "off"],
        default=None,
        help="draw with the learned refiner or the plain warp (key g); default: on for a learned "
        "--generator, off otherwise",
    )
    live.add_argument(
        "--no-pip", action="store_true", help="start with the window's picture-in-picture hidden (key p)"
    )
    live.add_argument("--record-dir", default=".", help="folder for recordings (key r) and snapshots (key s)")


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
    demo.add_argument(
        "--generator",
        default=None,
        help="as for run, e.g. triton://HOST:PORT/NAME (default: the best shipped)",
    )
    demo.add_argument(
        "--avatar",
        nargs="+",
        default=["builtin"],
        help="portrait images and/or folders of them (keys 1-9 and the arrows switch); default builtin",
    )
    _add_live_options(demo)


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="the live loop")
    run.add_argument(
        "--avatar",
        required=True,
        nargs="+",
        help="portrait images, folders of them, or 'builtin' (keys 1-9 and the arrows switch)",
    )
    src = run.add_mutually_exclusive_group()
    src.add_argument(
        "--camera", type=_camera, default=None, help="webcam index (default 0), or none (with --lips voice)"
    )
    src.add_argument("--input", default=None, help="video file played as if it were a camera")
    run.add_argument("--loop", action="store_true", help="loop --input")
    run.add_argument(
        "--lips",
        choices=["video", "voice", "auto"],
        default=None,
        help="where the mouth comes from: video: the camera; voice: --audio-in (the head, eyes and brows "
        "stay the camera's; with --camera none: idle head motion and blinks); auto (the default with a "
        "camera, --audio-in and --audio-out): the camera while it sees the mouth, the voice when the face "
        "is lost, turned away or the mouth is covered, cross-fading between them",
    )
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
    _add_live_options(run)


def _add_render(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="offline: every driver frame, no drops, audio muxed")
    render.add_argument("--avatar", required=True)
    render.add_argument(
        "--driver",
        default=None,
        help="driving video (with --audio: the head only, the voice drives the mouth)",
    )
    render.add_argument(
        "--audio",
        default=None,
        metavar="SPEECH",
        help="a voice (wav, mp3, m4a, or a video's sound) that drives the mouth; without --driver the head "
        "moves idly and blinks; the output lasts as long as the audio",
    )
    render.add_argument(
        "--fps", type=_positive, default=None, help="with --audio and no --driver (default 25)"
    )
    render.add_argument(
        "--voice-model", default=None, help="audio-to-mouth ONNX (default weights/voice.onnx)"
    )
    render.add_argument("--seed", type=int, default=0, help="idle head motion and blinks (with --audio)")
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
    bench.add_argument(
        "--clients",
        default=None,
        metavar="N[,N...]",
        help="load test: N concurrent paced streams against --generator triton://..., e.g. 1,2,4,8,16",
    )
    bench.add_argument(
        "--compare-unbatched",
        action="store_true",
        help="with --clients: also load NAME-nobatch on the same server (`realtime serve --batching both`)",
    )
    bench.add_argument(
        "--server-only",
        action="store_true",
        help="with --clients: send only the model's inputs at the stream's fps (no tracking, warp or "
        "blend), to measure the server apart from the clients' CPU",
    )
    bench.add_argument(
        "--metrics-url", default=None, help="Triton's metrics endpoint (default: the gRPC port plus 1)"
    )
    bench.add_argument(
        "--lips",
        choices=["voice", "auto"],
        default=None,
        help="measure the mouth from the voice instead: the per-block cost of the features and the "
        "model, and the mouth's lag behind the A/V-delayed voice through a PulseAudio null sink",
    )
    bench.add_argument(
        "--speech", default=None, metavar="FILE", help="with --lips: the recording (default: a shared one)"
    )
    bench.add_argument("--bursts", type=int, default=8, help="with --lips: speech bursts to time (default 8)")
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


def _add_enroll(sub: argparse._SubParsersAction) -> None:
    from realtime.train.config import EnrollConfig, add_config_flags

    enroll = sub.add_parser(
        "enroll",
        help="a personal avatar: the refiner fine-tuned on 30-120 s of one person (needs the 'train' extra)",
    )
    add_config_flags(enroll, EnrollConfig)


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
    ev.add_argument(
        "--pairs-size",
        type=_size,
        default=None,
        help="the cross-identity output WxH, as live (e.g. 1280x720; default: each driver clip's frame size)",
    )


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range (1..65535)")
    return value


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="serve the generators to other machines through NVIDIA Triton (needs the 'serve' extra)"
    )
    serve.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="PATH.onnx",
        help="model to serve (repeatable; default: every weights/*.onnx with a model card)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument(
        "--expose",
        action="store_true",
        help="allow a --host other than loopback: Triton has no authentication, so anyone who can reach "
        "the port can use the server (put it behind a proxy or on a private network)",
    )
    serve.add_argument("--port", type=_port, default=8001, help="gRPC port clients use (default 8001)")
    serve.add_argument("--http-port", type=_port, default=None, help="HTTP port (default --port minus 1)")
    serve.add_argument(
        "--metrics-port", type=_port, default=None, help="Prometheus metrics port (default --port plus 1)"
    )
    serve.add_argument(
        "--batching",
        choices=["on", "off", "both"],
        default="on",
        help="Triton's dynamic batching across clients (both: also serve NAME-nobatch, for comparisons)",
    )
    serve.add_argument("--max-batch", type=int, default=16, help="most frames batched into one run")
    serve.add_argument(
        "--queue-delay-us",
        type=int,
        default=1000,
        help="how long a request may wait for others to batch with",
    )
    serve.add_argument("--provider", action="append", default=None, help="onnxruntime provider to prefer")
    serve.add_argument(
        "--threads", type=int, default=0, help="onnxruntime threads per run (default: one per core)"
    )
    serve.add_argument(
        "--seconds", type=_positive, default=None, help="stop after this long (default: ctrl-c)"
    )


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
    _add_enroll(sub)
    _add_eval(sub)
    _add_serve(sub)
    return parser
