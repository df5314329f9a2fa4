"""The per-frame path, shared by the live engine and offline render: track, target, generate, blend.

It knows nothing of threads or time; ``realtime.loop`` decides when each call happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from realtime import mesh
from realtime.avatar import Avatar
from realtime.blend import Blender
from realtime.controls import Controls, Tuning
from realtime.frames import FaceTrack, Frame, Mode, Output, Rendered, Target
from realtime.generators.registry import Generators, build_generators
from realtime.metrics import Metrics
from realtime.occlusion import HandOccluder
from realtime.retarget import SWAP_SHAPE, Retargeter, RetargetLimits, SwapTargeter
from realtime.stages import Stage, Targeter, Tracker
from realtime.steady import CoveredHold

logger = logging.getLogger(__name__)

# How long opening waits for the hand model's process, which loads in 1-3 s.
HANDS_START_WAIT_S = 15.0


class OnceLogger:
    """Log an error the first time per key, then only count it."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._seen: set[str] = set()

    def error(self, key: str, message: str, *args: object) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self._log.error(message + " (further errors of this kind are counted, not logged)", *args)


class FrameProcessor(Stage):
    """``process(frame) -> Output``; ``track`` and ``render`` are its two halves."""

    def __init__(
        self,
        avatar: Avatar,
        generators: Generators,
        tracker: Tracker,
        controls: Controls,
        metrics: Metrics,
        output_size: tuple[int, int],
        limits: RetargetLimits | None = None,
        occlusion: HandOccluder | None = None,
        hold_covered: bool = True,
    ) -> None:
        self.avatar = avatar
        # Swap mode: hands in front of the face stay in front (None: no hand model).
        self.occlusion = occlusion
        # ... and the landmarks under them hold rather than jump (None: follow the tracker).
        self.covered_hold = CoveredHold() if occlusion is not None and hold_covered else None
        self.generators = generators
        self.tracker = tracker
        self.controls = controls
        self.metrics = metrics
        self.output_size = output_size
        self.limits = limits or RetargetLimits()
        self.retargeter = Retargeter(avatar.landmarks, self.limits)
        self.swap_targeter = SwapTargeter(self.limits, self.retargeter, shape=controls.tuning.swap_shape)
        self.targeters: dict[Mode, Targeter] = {Mode.REENACT: self.retargeter, Mode.SWAP: self.swap_targeter}
        self.blender = Blender()
        self._errors = OnceLogger(logger)
        self._last_output: np.ndarray | None = None
        self._neutral = self._fit(avatar.image)
        # Swap mode from a camera larger than the output: the frame is scaled here while the
        # tracker (mostly a wait for its process) works on the full frame.
        self._scaler: ThreadPoolExecutor | None = None

    def open(self) -> FrameProcessor:
        with ExitStack() as opened:  # a generator that fails to open must not leave the tracker running
            opened.enter_context(self.tracker)
            self.generators.open()
            opened.pop_all()
        self._wait_for_hands()
        return self

    def _wait_for_hands(self) -> None:
        # A hand model still loading takes a core from the stream's first frames, which then
        # miss their deadline on two cores; past the wait, the stream starts without it.
        hands = self.occlusion
        if hands is not None and hands.loading and not hands.wait_ready(HANDS_START_WAIT_S):
            logger.info("the hand model is not ready: the stream starts without hand occlusion")

    def close(self) -> None:
        self._close_helpers()
        self.generators.close()
        self.tracker.close()

    def _close_helpers(self) -> None:
        """The output scaler's thread and the hand model's process."""
        if self._scaler is not None:
            self._scaler.shutdown(wait=True)
            self._scaler = None
        if self.occlusion is not None:
            self.occlusion.close()

    def _fit(self, image: np.ndarray) -> np.ndarray:
        if (image.shape[1], image.shape[0]) == self.output_size:
            return image
        return cv2.resize(image, self.output_size, interpolation=cv2.INTER_AREA)

    def _fit_camera(self, image: np.ndarray) -> np.ndarray:
        """A camera frame at the output size, every frame: bilinear below a 2x reduction (a
        1080p camera to 720p costs about 1.5 ms instead of area averaging's 4-9), area above."""
        factor = image.shape[1] / self.output_size[0]
        if factor < 1.0 or factor >= 2.0:
            return self._fit(image)
        return cv2.resize(image, self.output_size, interpolation=cv2.INTER_LINEAR)

    def neutral_image(self) -> np.ndarray:
        """The avatar in its neutral pose: what the sinks show before the first frame."""
        return self._neutral

    def generator(self) -> Any:
        """The generator drawing the current mode."""
        return self.generators.for_mode(self.controls.mode)

    def _timed(self, name: str, fn: Callable[[], Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        result = fn()
        ms = (time.perf_counter() - t0) * 1000.0
        self.metrics.add_stage(name, ms)
        return result, ms

    def track(self, frame: Frame) -> FaceTrack:
        if (
            self.controls.mode is Mode.SWAP
            and (frame.image.shape[1], frame.image.shape[0]) != self.output_size
        ):
            return self._track_and_scale(frame)
        track, ms = self._timed("track", lambda: self.tracker.process(frame))
        track.stage_ms["track"] = ms
        return track

    def _track_and_scale(self, frame: Frame) -> FaceTrack:
        """Swap mode from a camera of another size: the tracker works on the camera frame (a
        1080p frame halves exactly to its 960-px tracking width, cheaper than 720p's 3/4)
        while another thread scales it to the output (OpenCV releases the GIL), then the
        landmarks are brought into the output's pixels."""
        if self._scaler is None:
            self._scaler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scale")
        scaled = self._scaler.submit(self._fit_camera, frame.image)
        try:
            track, ms = self._timed("track", lambda: self.tracker.process(frame))
        finally:
            image = scaled.result()
        factor = np.array(
            [image.shape[1] / frame.image.shape[1], image.shape[0] / frame.image.shape[0]], np.float32
        )
        # z is in x's scale
        factor = np.append(factor, factor[0])

        def to_output(points: np.ndarray | None) -> np.ndarray | None:
            return None if points is None else points * factor[: points.shape[1]]

        track = replace(
            track,
            frame=replace(frame, image=image),
            landmarks=to_output(track.landmarks),
            raw_landmarks=to_output(track.raw_landmarks),
        )
        track.stage_ms["track"] = ms
        return track

    def _generate(self, target: Target, mode: Mode) -> Rendered | None:
        generator = self.generators.for_mode(mode)
        try:
            return generator.render(target)
        except Exception as exc:  # a learned generator failing on one frame must not stop the stream
            self.metrics.add_error("generate")
            self._errors.error(
                f"generate:{type(exc).__name__}", "generator %s failed: %s", generator.name, exc
            )
            fallback = self.generators.fallback.get(mode)
            if fallback is None or fallback is generator:
                return None
            return fallback.render(target)

    def render(self, track: FaceTrack) -> Output:
        stage_ms = dict(track.stage_ms)
        if self.controls.take_recalibrate():
            self.retargeter.recalibrate()
        mode = self.controls.mode
        targeter = self.targeters[mode]
        image: np.ndarray | None = None
        occluding = mode is Mode.SWAP and self.occlusion is not None
        if occluding:
            # Handed over first: in its own process the hand model runs while this one renders.
            _, stage_ms["occlusion"] = self._timed(
                "occlusion",
                lambda: self.occlusion.update(track.frame.image, track.landmarks, track.frame.t_capture),
            )
            track = self._hold_covered(track)
        target, stage_ms["retarget"] = self._timed("retarget", lambda: targeter.process(track))
        if target is not None:
            rendered, stage_ms["generate"] = self._timed("generate", lambda: self._generate(target, mode))
            if rendered is not None and occluding and rendered.driver_landmarks is not None:
                rendered.occluder = self.occlusion.mask(
                    rendered.patch.shape[:2],
                    rendered.origin,
                    track.frame.t_capture,
                    mesh.face_size(rendered.driver_landmarks),
                )
            if rendered is not None:
                rendered.keep_glasses = self.controls.tuning.keep_glasses
                image, stage_ms["blend"] = self._timed("blend", lambda: self.blender.process(rendered))
        if image is None:
            # Swap with no face for a while: the user's own frame (there is no face in it to hide).
            # A failed generator: the previous output, or the neutral avatar.
            if mode is Mode.SWAP and target is None:
                image = track.frame.image
            else:
                image = self._last_output if self._last_output is not None else self._neutral
        image = self._fit(image)
        self._last_output = image
        return Output(
            image=image,
            index=track.frame.index,
            t_capture=track.frame.t_capture,
            t_done=time.monotonic(),
            face_found=track.found,
            stage_ms=stage_ms,
        )

    def _hold_covered(self, track: FaceTrack) -> FaceTrack:
        """Swap mode: the landmarks a hand covers hold their last seen shape (``CoveredHold``)."""
        if self.covered_hold is None or self.occlusion is None:
            return track
        if not track.found:
            self.covered_hold.reset()
            return track
        covered = self.occlusion.covered(
            track.landmarks, track.frame.t_capture, mesh.face_size(track.landmarks)
        )
        return replace(track, landmarks=self.covered_hold(track.landmarks, covered))

    def process(self, frame: Frame) -> Output:
        return self.render(self.track(frame))


def offline_processor(
    avatar: Avatar,
    generator: str | None,
    providers: list[str] | None = None,
    mode: Mode = Mode.REENACT,
    size: tuple[int, int] | None = None,
    occlusion: bool = True,
    hold_covered: bool = True,
    swap_shape: float = SWAP_SHAPE,
) -> FrameProcessor:
    """The per-frame path with mediapipe in this process: for evaluations and scripts."""
    from realtime.tracking import FaceTracker

    generators = build_generators(generator, avatar, providers)
    return FrameProcessor(
        avatar,
        generators,
        FaceTracker(),
        Controls(mode, Tuning(swap_shape=swap_shape)),
        Metrics(),
        size or avatar.size,
        occlusion=HandOccluder(isolated=False) if occlusion else None,
        hold_covered=hold_covered,
    )
