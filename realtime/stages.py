"""The contract every pipeline stage follows.

    Source ─Frame─▶ Tracker ─FaceTrack─▶ Targeter ─Target─▶ Generator ─Rendered─▶ Blender ─image─▶ Sink

One lifecycle for all of them, as pyvirtualcam's ``Camera`` and mediapipe's solutions:
the constructor only configures (and validates, so a bad argument fails early);
``open()`` acquires what the stage holds (a device, a child process, a session) and is
idempotent; ``close()`` releases it and is idempotent too; ``with stage:`` does both.
The engine opens every stage in one ``ExitStack`` and closes them in reverse order.
A sink is the one stage whose ``open`` takes arguments: its format is negotiated by the
engine once the output size is known, as GStreamer negotiates caps.
"""

from __future__ import annotations

from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from realtime.frames import FaceTrack, Frame, Output, Rendered, Target

StageT = TypeVar("StageT", bound="Stage")
SinkT = TypeVar("SinkT", bound="SinkBase")


class Stage:
    """Base for stages: ``open``/``close`` with nothing to hold, and the context manager."""

    def open(self: StageT) -> StageT:
        return self

    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self: StageT) -> StageT:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


@runtime_checkable
class Closeable(Protocol):
    def open(self) -> object: ...

    def close(self) -> None: ...

    def __enter__(self) -> object: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Source(Closeable, Protocol):
    """Frames from a camera, a file or a built-in sequence; ``read() -> None`` ends the stream."""

    fps: float
    # False: read as fast as the pipeline takes frames (a file being processed), not on a clock.
    paced: bool
    frame_count: int | None

    def read(self) -> Frame | None: ...

    def reopen(self) -> None:
        """Called after ``read`` raised, before the engine tries again."""

    def preview(self) -> np.ndarray | None:
        """Once open, an image like the first frames (None: unknown), for warming the pipeline."""


@runtime_checkable
class Tracker(Closeable, Protocol):
    def process(self, frame: Frame) -> FaceTrack: ...


@runtime_checkable
class Targeter(Closeable, Protocol):
    """Where the avatar's face should be drawn for this track; None: draw nothing."""

    def process(self, track: FaceTrack) -> Target | None: ...


@runtime_checkable
class Generator(Closeable, Protocol):
    name: str
    provider: str

    def render(self, target: Target) -> Rendered: ...


@runtime_checkable
class Blender(Closeable, Protocol):
    def process(self, rendered: Rendered) -> np.ndarray: ...


@runtime_checkable
class Sink(Protocol):
    """Where finished frames go."""

    name: str

    def open(self, width: int, height: int, fps: float) -> None: ...

    def send(self, out: Output) -> None: ...

    def close(self) -> None:
        """Finish the output (a file is completed)."""

    def abort(self) -> None:
        """Stop without finishing the output (a half-written file is removed)."""


class SourceBase(Stage):
    """Defaults for sources: paced, unknown length, nothing to reconnect."""

    fps: float = 30.0
    paced: bool = True
    frame_count: int | None = None

    def reopen(self) -> None:
        """A source that cannot reconnect is simply read again."""

    def preview(self) -> np.ndarray | None:
        """Nothing known before the first read by default."""
        return None


class SinkBase:
    """Defaults for sinks: aborting is closing; ``with`` closes, or aborts on an error."""

    name: str = "sink"

    def close(self) -> None:
        """Nothing to finish by default."""

    def abort(self) -> None:
        self.close()

    def __enter__(self: SinkT) -> SinkT:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
