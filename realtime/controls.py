"""Commands from the user (hotkeys, API) to the running engine, thread-safe."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace

from realtime.frames import Mode
from realtime.retarget import SWAP_SHAPE

STRENGTH_RANGE = (0.0, 2.0)
STRENGTH_STEP = 0.25
HEAD_SHARE_STEP = 0.1
SWAP_SHAPE_STEP = 0.1
NOTICE_S = 1.0  # how long a change stays on the overlay


@dataclass(frozen=True)
class Tuning:
    """What the user can change live (and `run` takes as flags).

    ``strength`` scales the whole transfer (1 = the driver's own motion). ``head_share`` splits
    it between head motion and expression: 0.5 gives both in full, towards 0 the head stays
    still, towards 1 the face stops changing expression. ``swap_shape`` (swap mode): how far the
    swapped face takes the avatar's proportions (eyes, brows, nose) instead of the user's, 0-1.
    ``keep_glasses`` (swap mode): the frame of the user's glasses stays in front of the avatar's
    face (off: the avatar's look, glasses and all, as FaceFusion's default).
    """

    strength: float = 1.0
    head_share: float = 0.5
    mirror: bool = False
    refiner: bool = True
    # Per part of the expression, on top of the strength: mouth and jaw, eyes and lids, brows.
    mouth: float = 1.0
    eyes: float = 1.0
    brows: float = 1.0
    swap_shape: float = SWAP_SHAPE
    keep_glasses: bool = False

    def __post_init__(self) -> None:
        lo, hi = STRENGTH_RANGE
        object.__setattr__(self, "strength", round(min(hi, max(lo, float(self.strength))), 3))
        for share in ("head_share", "swap_shape"):
            object.__setattr__(self, share, round(min(1.0, max(0.0, float(getattr(self, share)))), 3))
        for part in ("mouth", "eyes", "brows"):
            object.__setattr__(self, part, round(min(hi, max(lo, float(getattr(self, part)))), 3))

    @property
    def part_gains(self) -> tuple[float, float, float]:
        return (self.mouth, self.eyes, self.brows)

    @property
    def head_gain(self) -> float:
        return self.strength * min(1.0, 2.0 * self.head_share)

    @property
    def expression_gain(self) -> float:
        return self.strength * min(1.0, 2.0 * (1.0 - self.head_share))

    def status(self) -> str | None:
        """What differs from the defaults, for a line on the overlay; None when nothing does."""
        default = Tuning()
        parts = []
        if (self.strength, self.head_share) != (default.strength, default.head_share):
            parts.append(self.describe())
        parts += [
            f"{name} {getattr(self, name):.2f}"
            for name in ("mouth", "eyes", "brows")
            if getattr(self, name) != 1.0
        ]
        if self.swap_shape != default.swap_shape:
            parts.append(f"avatar shape {self.swap_shape:.1f}")
        if self.keep_glasses:
            parts.append("your glasses kept")
        if self.mirror:
            parts.append("mirror")
        return "  ".join(parts) or None

    def describe(self) -> str:
        return (
            f"strength {self.strength:.2f} (head {self.head_gain:.2f}, expression {self.expression_gain:.2f})"
        )


class Controls:
    """Hotkey requests travel from a sink thread to the processing threads through this."""

    def __init__(self, mode: Mode | str = Mode.REENACT, tuning: Tuning | None = None) -> None:
        self._lock = threading.Lock()
        self._recalibrate = False
        self.mode = Mode(mode)
        self.quit = threading.Event()
        self.tuning = tuning or Tuning()
        self._avatar_step: tuple[str, int] | None = None  # ("to", index) or ("by", delta)
        self._record = False
        self._snapshot = False
        self._notices: list[tuple[float, str, str]] = []  # (until, kind, text)
        # Lines the overlay shows for as long as they hold (the avatar, a recording).
        self.status: dict[str, str] = {}

    def request_recalibrate(self) -> None:
        with self._lock:
            self._recalibrate = True

    def take_recalibrate(self) -> bool:
        """True once per request: the tracker's next face becomes the neutral reference."""
        with self._lock:
            wanted, self._recalibrate = self._recalibrate, False
            return wanted

    def toggle_mode(self) -> Mode:
        with self._lock:
            self.mode = self.mode.other()
            return self.mode

    def request_quit(self) -> None:
        self.quit.set()

    # -- tuning ------------------------------------------------------------------------
    def tune(self, **changes: float | bool) -> Tuning:
        """Replace some tuning fields (clamped to their ranges); returns the new tuning."""
        with self._lock:
            self.tuning = replace(self.tuning, **changes)
            return self.tuning

    def adjust_strength(self, steps: int) -> Tuning:
        return self.tune(strength=self.tuning.strength + steps * STRENGTH_STEP)

    def adjust_head_share(self, steps: int) -> Tuning:
        return self.tune(head_share=self.tuning.head_share + steps * HEAD_SHARE_STEP)

    def adjust_swap_shape(self, steps: int) -> Tuning:
        return self.tune(swap_shape=self.tuning.swap_shape + steps * SWAP_SHAPE_STEP)

    def reset_strength(self) -> Tuning:
        default = Tuning()
        return self.tune(strength=default.strength, head_share=default.head_share)

    def toggle_mirror(self) -> Tuning:
        return self.tune(mirror=not self.tuning.mirror)

    def toggle_refiner(self) -> Tuning:
        return self.tune(refiner=not self.tuning.refiner)

    def toggle_glasses(self) -> Tuning:
        return self.tune(keep_glasses=not self.tuning.keep_glasses)

    # -- avatars -------------------------------------------------------------------------
    def request_avatar(self, index: int) -> None:
        """Switch to avatar ``index`` (0-based) at the next frame."""
        with self._lock:
            self._avatar_step = ("to", int(index))

    def step_avatar(self, delta: int) -> None:
        """Switch to the next (+1) or previous (-1) usable avatar at the next frame."""
        with self._lock:
            kind, value = self._avatar_step or ("by", 0)
            self._avatar_step = ("by", value + delta) if kind == "by" else ("to", value + delta)

    def take_avatar_request(self) -> tuple[str, int] | None:
        with self._lock:
            wanted, self._avatar_step = self._avatar_step, None
            return wanted

    # -- recording -----------------------------------------------------------------------
    def request_record(self) -> None:
        """Start a recording, or stop the one running."""
        with self._lock:
            self._record = not self._record

    def take_record(self) -> bool:
        with self._lock:
            wanted, self._record = self._record, False
            return wanted

    def request_snapshot(self) -> None:
        with self._lock:
            self._snapshot = True

    def take_snapshot(self) -> bool:
        with self._lock:
            wanted, self._snapshot = self._snapshot, False
            return wanted

    # -- what the overlay says -----------------------------------------------------------
    def notify(self, text: str, seconds: float = NOTICE_S, kind: str | None = None) -> None:
        """Show ``text`` on the preview overlay for ``seconds``; a newer notice of the same
        ``kind`` (default: the text before its first colon) replaces it."""
        kind = kind or text.split(":", 1)[0]
        until = time.monotonic() + seconds
        with self._lock:
            self._notices = [(t, k, s) for t, k, s in self._notices if k != kind]
            self._notices.append((until, kind, text))

    def notices(self, now: float | None = None) -> list[str]:
        """The notices still showing, oldest first."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._notices = [(t, k, s) for t, k, s in self._notices if t > now]
            return [s for _, _, s in self._notices]

    def set_status(self, key: str, text: str | None) -> None:
        """A line the overlay keeps showing until it changes (None removes it)."""
        with self._lock:
            if text is None:
                self.status.pop(key, None)
            else:
                self.status[key] = text

    def status_lines(self) -> list[str]:
        with self._lock:
            return list(self.status.values())
