"""Wiring: one ``PipelineConfig`` becomes a source, a processor, sinks, audio and a running engine.

``realtime run``, ``bench`` and ``demo`` differ only in the config they build and in what
they print; everything between the flags and the engine lives here, once.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from realtime.controls import Tuning
from realtime.errors import UserError
from realtime.frames import Mode
from realtime.pipeline import FrameProcessor
from realtime.stages import Sink, Source

logger = logging.getLogger(__name__)

CAMERA_SIZE = (1280, 720)


@dataclass(frozen=True)
class AudioConfig:
    """The microphone delayed in sync with the video, into a virtual microphone."""

    audio_in: str
    audio_out: str
    offset_ms: float = 0.0
    muted: bool = False
    # audio: delay the voice only; both: also hold video frames until the voice can meet them.
    av_sync: str = "audio"


@dataclass(frozen=True)
class SourceConfig:
    """Where frames come from: a webcam, a video file, or the built-in driving sequence."""

    camera: int | None = None
    input: str | None = None
    builtin: bool = False
    loop: bool = False
    paced: bool = True
    size: tuple[int, int] = CAMERA_SIZE
    fps: float | None = None


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a live or offline run is made of, built once from the flags."""

    avatar: str = "builtin"
    mode: Mode = Mode.REENACT
    generator: str | None = None
    providers: tuple[str, ...] | None = None
    size: tuple[int, int] | None = None
    source: SourceConfig = field(default_factory=SourceConfig)
    fps: float | None = None
    budget_ms: float | None = None
    pipeline: str = "auto"
    sinks: tuple[str, ...] = ("virtualcam",)
    audio: AudioConfig | None = None
    seconds: float | None = None
    # Live extras (run, demo): every --avatar (files, folders) to switch between, the starting
    # tuning, whether the refiner starts on (None: on for a learned --generator), where
    # recordings and snapshots go.
    avatars: tuple[str, ...] = ()
    tuning: Tuning = field(default_factory=Tuning)
    refiner: bool | None = None
    record_dir: str = "."
    occlusion: bool = True  # swap mode: hands in front of the face stay in front


def audio_config(
    audio_in: str | None, audio_out: str | None, offset_ms: float, muted: bool, av_sync: str
) -> AudioConfig | None:
    """The audio part of a config; both devices or neither."""
    if (audio_in is None) != (audio_out is None):
        raise UserError(
            "give both --audio-in (the microphone) and --audio-out (the virtual microphone); "
            "`realtime devices` lists them and explains the setup"
        )
    if audio_in is None or audio_out is None:
        return None
    return AudioConfig(audio_in, audio_out, offset_ms, muted, av_sync)


def make_source(config: SourceConfig) -> Source:
    """A source for the config; it opens when the engine enters it."""
    from realtime.sources import BuiltinDriverSource, CameraSource, VideoFileSource

    if config.input:
        source = VideoFileSource(config.input, paced=config.paced, loop=config.loop)
        if config.fps:
            source.fps = config.fps
        return source
    if config.builtin:
        return BuiltinDriverSource(640, 480, config.fps or 30.0, paced=config.paced)
    camera = config.camera if config.camera is not None else 0
    return CameraSource(camera, config.size[0], config.size[1], config.fps or 30.0)


def make_processor(
    config: PipelineConfig,
    output_size: tuple[int, int] | None,
    driver_size: tuple[int, int] | None = None,
    live: bool = True,
) -> FrameProcessor:
    """The per-frame path for the config: avatar, generators and tracker.

    ``output_size`` sizes the avatar canvas; in swap mode without one, the output is the
    driver's own frame size. ``live`` runs mediapipe in its own process, so tracking
    overlaps with rendering.
    """
    from realtime.avatar import load_avatar
    from realtime.controls import Controls
    from realtime.generators.registry import build_generators
    from realtime.metrics import Metrics
    from realtime.tracking import FaceTracker

    avatar = load_avatar(config.avatar, output_size)
    generators = build_generators(
        config.generator, avatar, list(config.providers) if config.providers else None, live=live
    )
    size = driver_size if config.mode is Mode.SWAP and driver_size and not output_size else avatar.size
    from realtime.occlusion import HandOccluder

    controls = Controls(mode=config.mode, tuning=config.tuning)
    occlusion = HandOccluder(isolated=live) if config.occlusion else None
    if occlusion is not None and config.mode is Mode.SWAP:
        occlusion.start()  # loads while the stream starts
    return FrameProcessor(
        avatar, generators, FaceTracker(isolated=live), controls, Metrics(), size, occlusion=occlusion
    )


def generator_info(processor: FrameProcessor) -> tuple[str, str]:
    """The name and execution provider of the generator drawing the current mode."""
    generator = processor.generator()
    return generator.name, generator.provider


def make_live(
    config: PipelineConfig,
    output_size: tuple[int, int] | None,
    driver_size: tuple[int, int] | None,
    window: bool,
) -> FrameProcessor:
    """The live processor of `run` and `demo`: every avatar prepared for switching, the tuning
    applied; with a window (whose keys switch it) the shipped refiner is loaded as well."""
    from realtime.avatar_folder import is_avatar_folder
    from realtime.controls import Controls
    from realtime.live import avatar_paths, make_live_processor, refiner_choice

    generator, refiner_on = refiner_choice(config.generator, config.refiner, want_toggle=window)
    paths = config.avatars or (config.avatar,)
    # Enrolled avatars (`realtime enroll`) bring their own refiner: on unless --generator or --refiner off.
    own_refiners = config.generator is None
    if own_refiners and config.refiner is None and any(is_avatar_folder(p) for p in avatar_paths(paths)):
        refiner_on = True
    controls = Controls(mode=config.mode, tuning=config.tuning)
    controls.tune(refiner=refiner_on)
    providers = list(config.providers) if config.providers else None
    return make_live_processor(
        paths,
        output_size,
        generator,
        providers,
        controls,
        driver_size,
        own_refiners=own_refiners,
        occlusion=config.occlusion,
    )


def stream(
    config: PipelineConfig,
    source: Source,
    processor: FrameProcessor,
    sinks: list[Sink],
    fps: float,
    budget_ms: float | None = None,
) -> tuple[dict[str, Any], float]:
    """Run the live engine with the config's audio; the summary and the budget it ran under.

    The engine opens and closes the source, the processor and the sinks; the audio bridge,
    when asked for, runs around it and never stops the video if it fails.
    """
    from realtime.generators.remote import remote_summary, set_remote_budget
    from realtime.loop import Engine
    from realtime.sinks import WindowSink

    pipeline = config.pipeline
    if pipeline == "auto" and remote_summary(processor.generators) is not None:
        pipeline = "parallel"  # a remote generator mostly waits: track the next frame meanwhile

    with ExitStack() as stack:
        audio = open_audio(config.audio)
        if audio is not None:
            stack.callback(audio.close)
            for sink in sinks:
                if isinstance(sink, WindowSink):
                    sink.audio = audio  # the window's level meter and audio hotkeys
        hold = audio is not None and config.audio.av_sync == "both"
        engine = Engine(
            source,
            processor,
            sinks,
            fps=fps,
            budget_ms=budget_ms,
            pipeline=pipeline,
            on_latency=audio.set_video_latency_ms if audio is not None else None,
            # The engine holds each frame until it is as old as the audio's shortest possible
            # delay (read live from the bridge), so lips and voice meet.
            min_latency_ms=(lambda: audio.min_delay_ms) if hold else None,
        )
        set_remote_budget(processor.generators, engine.budget_s * 1000.0)
        summary = engine.run(seconds=config.seconds)
        remote = remote_summary(processor.generators)
        if remote is not None:
            summary["remote"] = remote
        if processor.occlusion is not None and processor.occlusion.isolated:
            summary["hand_model"] = processor.occlusion.stats()
        if audio is not None:
            summary["audio"] = audio.stats()
    return summary, engine.budget_s * 1000.0


def open_audio(config: AudioConfig | None) -> Any:
    """The opened audio bridge, or None (not asked for, or failed: logged, the video goes on)."""
    if config is None:
        return None
    from realtime.audio import start_bridge

    return start_bridge(config.audio_in, config.audio_out, offset_ms=config.offset_ms, muted=config.muted)
