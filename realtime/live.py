"""The live extras of `run` and `demo`: several avatars prepared in the background and switched
in one frame, the tuning keys (strength, head/expression split, mirror, refiner), and the
camera frame handed on for the preview window's picture-in-picture.

``AvatarLibrary`` prepares every avatar once (landmarks, warp, refiner crops) on a
low-priority thread; ``LiveProcessor`` is the ``FrameProcessor`` that swaps to a prepared
avatar when the controls ask, so a switch costs a few attribute assignments.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from realtime.avatar import BUILTIN, Avatar, load_avatar
from realtime.controls import Controls, Tuning
from realtime.errors import UserError, one_line
from realtime.frames import FaceTrack, Frame, Mode, Output
from realtime.generators.registry import Generators, build_generators, default_generator, shipped_models
from realtime.metrics import Metrics
from realtime.occlusion import HandOccluder
from realtime.pipeline import FrameProcessor
from realtime.retarget import Retargeter, RetargetLimits
from realtime.stages import Stage, Tracker

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SKIPPED_NOTICE_S = 6.0
BACKGROUND_NICE = 10  # finding the next avatars' faces must not take CPU from the live frames


def _load_in_child(path: str, size: tuple[int, int] | None) -> Avatar:
    """Read an avatar and find its face, in the preparing process (a worker, niced)."""
    return load_avatar(path, size)


def _nice_worker() -> None:
    try:
        os.nice(BACKGROUND_NICE)
    except (AttributeError, OSError):
        pass


def avatar_paths(specs: Sequence[str]) -> list[str]:
    """The avatars named by ``--avatar``: image files, enrolled avatar folders, folders of either
    (by name) or 'builtin'."""
    from realtime.avatar_folder import is_avatar_folder

    paths: list[str] = []
    for spec in specs:
        if spec == BUILTIN:
            paths.append(spec)
        elif os.path.isdir(spec) and is_avatar_folder(spec):
            paths.append(spec)  # an enrolled avatar: one avatar, with its own refiner
        elif os.path.isdir(spec):
            found = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if not name.startswith(".")
                and (name.lower().endswith(IMAGE_SUFFIXES) or is_avatar_folder(os.path.join(spec, name)))
            )
            if not found:
                raise UserError(
                    f"avatar folder {spec} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no "
                    "enrolled avatars; add portraits or name the image files"
                )
            paths.extend(found)
        elif not os.path.exists(spec):
            raise UserError(f"avatar not found: {spec}")
        else:
            paths.append(spec)
    return list(dict.fromkeys(paths))  # the same image twice is one avatar


def refiner_choice(generator: str | None, refiner: bool | None, want_toggle: bool) -> tuple[str, bool]:
    """Which generator to build and whether its refiner starts on.

    A learned ``--generator`` starts on (``--refiner off`` starts it off). With the default
    (the warp, as the shipped refiner has not beaten it on held-out people), the shipped
    refiner is loaded too when it can be switched on (a window's key or ``--refiner on``),
    starting off unless asked for.
    """
    chosen = generator or default_generator()
    if chosen != "warp":
        return chosen, refiner is not False
    if generator is None and (want_toggle or refiner):
        # A model with its card (the fp16 copy has none: its crop layout would be unknown).
        refiners = [
            n
            for n, card in shipped_models().items()
            if len(card) > 1 and card.get("kind", "refiner") == "refiner"
        ]
        if refiners:
            return refiners[0], bool(refiner)
    if refiner:
        raise UserError("--refiner on needs a learned generator: give --generator NAME (see weights/)")
    return "warp", False


@dataclass
class PreparedAvatar:
    """One avatar, ready to draw: its landmarks, generators and retargeter, built once."""

    index: int
    source: str
    avatar: Avatar
    generators: Generators  # with the refiner where one is loaded
    warp_only: Generators  # the same avatar drawn by the warp (refiner off)
    retargeter: Retargeter
    neutral: np.ndarray  # the avatar at rest, at the output size

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.source))[0] or self.source

    @property
    def has_refiner(self) -> bool:
        return any(g is not self.warp_only.by_mode.get(m) for m, g in self.generators.by_mode.items())


class AvatarLibrary(Stage):
    """Every avatar of ``--avatar``, prepared once; the first synchronously, the rest in the background.

    ``get(i)`` is the prepared avatar, or None while it is still being prepared; one with no
    usable face is skipped (``skipped[i]`` says why) and announced on the overlay.
    """

    def __init__(
        self,
        paths: Sequence[str],
        output_size: tuple[int, int] | None,
        generator: str = "warp",
        providers: list[str] | None = None,
        limits: RetargetLimits | None = None,
        controls: Controls | None = None,
        own_refiners: bool = False,
    ) -> None:
        if not paths:
            raise UserError("no avatar given")
        self.paths = list(paths)
        self.output_size = output_size
        self.generator = generator
        self.providers = providers
        self.limits = limits or RetargetLimits()
        self.controls = controls
        # Enrolled avatars draw with their own refiner (no --generator given).
        self.own_refiners = own_refiners
        self._prepared: dict[int, PreparedAvatar] = {}
        self.skipped: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.first = self._load_first()

    def __len__(self) -> int:
        return len(self.paths)

    def prepare(self, index: int, avatar: Avatar | None = None) -> PreparedAvatar:
        """Load, find the face (unless ``avatar`` brings them), build the generators and the
        retargeter of avatar ``index``."""
        path = self.paths[index]
        avatar = avatar if avatar is not None else load_avatar(path, self.output_size)
        own = self.own_refiners and avatar.refiner is not None
        generators = build_generators(None if own else self.generator, avatar, self.providers)
        warp_only = Generators(by_mode=dict(generators.fallback), fallback=dict(generators.fallback))
        size = self.output_size or avatar.size
        neutral = avatar.image
        if (neutral.shape[1], neutral.shape[0]) != size:
            import cv2

            neutral = cv2.resize(neutral, size, interpolation=cv2.INTER_AREA)
        return PreparedAvatar(
            index,
            path,
            avatar,
            generators.open(),
            warp_only,
            Retargeter(avatar.landmarks, self.limits),
            neutral,
        )

    def _load_first(self) -> PreparedAvatar:
        first_error: UserError | None = None
        for index in range(len(self.paths)):
            try:
                prepared = self.prepare(index)
            except UserError as exc:
                if len(self.paths) == 1:
                    raise
                first_error = first_error or exc
                self._skip(index, exc)
                continue
            self._prepared[index] = prepared
            return prepared
        raise UserError(f"none of the {len(self.paths)} avatars can be used (first: {first_error})")

    def _skip(self, index: int, exc: Exception) -> None:
        path = self.paths[index]
        # "no face found in avatar PATH; use a portrait..." -> "no face found": the name is shown apart.
        reason = one_line(str(exc).split(";")[0].replace(f" in avatar {path}", ""), 80)
        self.skipped[index] = f"{os.path.basename(path)}: {reason}"
        logger.warning("avatar %d skipped (%s): %s", index + 1, path, one_line(str(exc), 200))
        if self.controls is not None:
            self.controls.notify(f"avatar {index + 1} skipped: {self.skipped[index]}", SKIPPED_NOTICE_S)

    def open(self) -> AvatarLibrary:
        if self._thread is None and len(self.paths) > 1:
            self._stop.clear()
            self._thread = threading.Thread(target=self._prepare_rest, name="avatars", daemon=True)
            self._thread.start()
        return self

    def _prepare_rest(self) -> None:
        # The face search (mediapipe, the heavy part) runs in a niced worker process: a niced
        # thread here would hold the GIL while descheduled and stall the live threads with it.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        todo = [i for i in range(len(self.paths)) if i not in self._prepared and i not in self.skipped]
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=_nice_worker) as pool:
            loads = {i: pool.submit(_load_in_child, self.paths[i], self.output_size) for i in todo}
            for index in todo:
                if self._stop.is_set():
                    for future in loads.values():
                        future.cancel()
                    return
                try:
                    prepared = self.prepare(index, loads[index].result())
                except Exception as exc:  # one bad avatar never stops the others or the stream
                    self._skip(index, exc)
                    continue
                with self._lock:
                    self._prepared[index] = prepared
                logger.info("avatar %d/%d ready: %s", index + 1, len(self.paths), prepared.name)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every avatar is prepared or skipped (tests, benchmarks)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def get(self, index: int) -> PreparedAvatar | None:
        with self._lock:
            return self._prepared.get(index)

    def pending(self) -> int:
        with self._lock:
            return len(self.paths) - len(self._prepared) - len(self.skipped)

    def step(self, current: int, delta: int) -> int:
        """The index ``delta`` usable avatars away from ``current``, wrapping round."""
        n = len(self.paths)
        index, moved = current, 0
        for _ in range(n * max(1, abs(delta))):
            index = (index + (1 if delta > 0 else -1)) % n
            if index not in self.skipped:
                moved += 1
                if moved == abs(delta):
                    return index
        return current

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            prepared = list(self._prepared.values())
        for item in prepared:
            item.generators.close()


class LiveProcessor(FrameProcessor):
    """A ``FrameProcessor`` that follows the live controls: avatar switches, strength, the
    head/expression split, the mirror and the refiner; its outputs carry the camera frame
    and landmarks for the preview window."""

    def __init__(
        self,
        library: AvatarLibrary,
        tracker: Tracker,
        controls: Controls,
        metrics: Metrics,
        output_size: tuple[int, int],
        occlusion: HandOccluder | None = None,
    ) -> None:
        first = library.first
        super().__init__(
            first.avatar,
            first.generators,
            tracker,
            controls,
            metrics,
            output_size,
            limits=library.limits,
            occlusion=occlusion,
        )
        self.library = library
        self._wanted: int | None = None  # an avatar asked for before it was ready
        self._refiner_on: bool | None = None
        self._pending_shown = -1
        self._tuning_shown: Tuning | None = None
        self.current = first
        self._use(first)

    def open(self) -> LiveProcessor:
        self.tracker.open()
        self.library.open()
        self._wait_for_hands()
        return self

    def close(self) -> None:
        self._close_helpers()
        self.library.close()
        self.tracker.close()

    # -- controls -> state (on the thread that renders, between two frames) --------------
    def _use(self, prepared: PreparedAvatar) -> None:
        previous = self.current.retargeter
        if prepared.retargeter is not previous:
            prepared.retargeter.adopt_neutral(previous)  # the driver's neutral is the driver's
        self.current = prepared
        self.avatar = prepared.avatar
        self.retargeter = prepared.retargeter
        self.targeters[Mode.REENACT] = prepared.retargeter
        self.swap_targeter.retargeter = prepared.retargeter
        self._neutral = self._fit(prepared.neutral)
        self._last_output = None
        self._refiner_on = None  # pick this avatar's generators below
        self._set_status()

    def _set_status(self) -> None:
        n = len(self.library)
        waiting = self.library.pending()
        self._pending_shown = waiting
        line = f"avatar {self.current.index + 1}/{n}: {self.current.name}"
        if waiting:
            line += f"  ({waiting} preparing)"
        self.controls.set_status("avatar", line)

    def apply_controls(self) -> None:
        """Apply what the user changed since the last frame."""
        tuning = self.controls.tuning
        self.limits.pose_gain = tuning.head_gain
        self.limits.expression_gain = tuning.expression_gain
        self.limits.part_gains = tuning.part_gains
        self.swap_targeter.shape = tuning.swap_shape
        if tuning is not self._tuning_shown:  # the overlay keeps what differs from the defaults
            self._tuning_shown = tuning
            self.controls.set_status("tuning", tuning.status())
        request = self.controls.take_avatar_request()
        if request is not None:
            kind, value = request
            current = self._wanted if self._wanted is not None else self.current.index
            index = self.library.step(current, value) if kind == "by" else value
            if not 0 <= index < len(self.library):
                self.controls.notify(f"avatar: there is no avatar {index + 1} (1-{len(self.library)})")
            elif index in self.library.skipped:
                logger.info("avatar %d skipped: %s", index + 1, self.library.skipped[index])
                self.controls.notify(
                    f"avatar {index + 1} skipped: {self.library.skipped[index]}", SKIPPED_NOTICE_S
                )
            else:
                self._wanted = index
        if self._wanted is not None:
            prepared = self.library.get(self._wanted)
            if prepared is not None:
                if prepared is not self.current:
                    self._use(prepared)
                    logger.info("avatar %d/%d: %s", prepared.index + 1, len(self.library), prepared.name)
                self.controls.notify(f"avatar: {prepared.index + 1}/{len(self.library)} {prepared.name}")
                self._wanted = None
            elif self._wanted in self.library.skipped:
                self._wanted = None
            else:
                self.controls.notify(f"avatar: {self._wanted + 1} is still being prepared...")
        if tuning.refiner != self._refiner_on:
            if self._refiner_on is not None and not self.current.has_refiner:
                self.controls.notify("refiner: none loaded, the warp draws (start with --generator NAME)")
            self._refiner_on = tuning.refiner
            self.generators = self.current.generators if tuning.refiner else self.current.warp_only
        if self.library.pending() != self._pending_shown:
            self._set_status()

    def track(self, frame: Frame) -> FaceTrack:
        if self.controls.tuning.mirror:
            frame = replace(frame, image=np.ascontiguousarray(frame.image[:, ::-1]))
        return super().track(frame)

    def render(self, track: FaceTrack) -> Output:
        self.apply_controls()
        out = super().render(track)
        out.track = track
        return out


def make_live_processor(
    paths: Sequence[str],
    output_size: tuple[int, int] | None,
    generator: str,
    providers: list[str] | None,
    controls: Controls,
    driver_size: tuple[int, int] | None = None,
    live: bool = True,
    own_refiners: bool = False,
    occlusion: bool = True,
) -> LiveProcessor:
    """The live processor for ``--avatar`` (files, folders), prepared as ``make_processor`` would;
    ``own_refiners``: enrolled avatars draw with their own refiner; ``occlusion``: in swap mode,
    hands in front of the face stay in front."""
    from realtime.tracking import FaceTracker

    library = AvatarLibrary(
        avatar_paths(paths), output_size, generator, providers, controls=controls, own_refiners=own_refiners
    )
    first = library.first
    swap = controls.mode is Mode.SWAP
    size = driver_size if swap and driver_size and not output_size else (output_size or first.avatar.size)
    hands = HandOccluder(isolated=live) if occlusion else None
    if hands is not None and swap:
        hands.start()  # loads while the rest opens; a later switch to swap mode starts it then
    return LiveProcessor(library, FaceTracker(isolated=live), controls, Metrics(), size, occlusion=hands)
