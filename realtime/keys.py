"""The live keys shared by the preview window and the terminal: what each does to the controls."""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO

from realtime.controls import Controls
from realtime.stages import Stage

logger = logging.getLogger(__name__)

# Arrow keys as cv2.waitKeyEx reports them: X11 keysyms (GTK), Qt key codes, Windows, macOS.
LEFT_KEYS = {0xFF51, 0x1000012, 0x250000, 63234}
UP_KEYS = {0xFF52, 0x1000013, 0x260000, 63232}
RIGHT_KEYS = {0xFF53, 0x1000014, 0x270000, 63235}
DOWN_KEYS = {0xFF54, 0x1000015, 0x280000, 63233}
ESC = 27

# (keys, what they do) for the help overlay, in the order a user looks for them.
HELP: list[tuple[str, str]] = [
    ("h  ?", "show / hide this help"),
    ("p", "your camera and its landmarks (picture-in-picture)"),
    ("1-9  Left/Right", "switch avatar"),
    ("+  -  Up/Down", "motion transfer stronger / weaker"),
    (",  .", "less / more head motion vs expression"),
    ("0", "strength and head/expression back to default"),
    ("f", "mirror the camera"),
    ("g", "refiner on / off"),
    ("n", "take a new neutral pose"),
    ("m", "switch reenact / swap"),
    ("j  k", "swap: less / more of the avatar's face shape"),
    ("o", "swap: keep your glasses on / off"),
    ("r", "record what the virtual camera gets: start / stop"),
    ("s", "snapshot (PNG)"),
    ("q  Esc", "quit"),
]
AUDIO_HELP: list[tuple[str, str]] = [("a", "mute the audio"), ("[  ]", "audio offset -/+ 10 ms")]


@dataclass(frozen=True)
class KeyResult:
    """What a key did: ``text`` for the log, shown on the overlay when ``notice``; ``kind``
    groups notices that replace each other."""

    text: str
    notice: bool = True
    kind: str | None = None


def act(key: int, controls: Controls, audio: Any = None) -> KeyResult | None:
    """Apply one key (a character code or an arrow code above) to the controls; None: not a live key."""
    arrow = key if key > 0xFF else None
    char = chr(key) if 0 <= key <= 0xFF else ""
    if arrow in LEFT_KEYS or arrow in RIGHT_KEYS:
        forward = arrow in RIGHT_KEYS
        controls.step_avatar(1 if forward else -1)
        return KeyResult(f"avatar switch requested ({'next' if forward else 'previous'})", notice=False)
    if arrow in UP_KEYS or char in ("+", "="):
        return KeyResult(controls.adjust_strength(+1).describe(), kind="tuning")
    if arrow in DOWN_KEYS or char in ("-", "_"):
        return KeyResult(controls.adjust_strength(-1).describe(), kind="tuning")
    if arrow is not None or not char:
        return None
    if char == "n":
        controls.request_recalibrate()
        return KeyResult("neutral: recalibrate requested")
    if char == "m":
        return KeyResult(f"mode: {controls.toggle_mode()}")
    if char == "q" or key == ESC:
        controls.request_quit()
        return KeyResult("quit requested", notice=False)
    if char.isdigit() and char != "0":
        controls.request_avatar(int(char) - 1)
        return KeyResult(f"avatar {char} requested", notice=False)
    if char in (",", "<", ".", ">"):
        return KeyResult(
            controls.adjust_head_share(-1 if char in (",", "<") else 1).describe(), kind="tuning"
        )
    if char == "0":
        return KeyResult(controls.reset_strength().describe() + " - default", kind="tuning")
    if char in ("j", "k"):
        shape = controls.adjust_swap_shape(-1 if char == "j" else 1).swap_shape
        return KeyResult(f"swap: avatar's face shape {shape:.1f} (0: yours, 1: the avatar's)", kind="tuning")
    if char == "o":
        kept = controls.toggle_glasses().keep_glasses
        return KeyResult(f"swap: your glasses {'kept' if kept else 'swapped with your face'}", kind="tuning")
    if char == "f":
        mirror = controls.toggle_mirror().mirror
        controls.request_recalibrate()  # a mirrored face against an unmirrored neutral would skew
        return KeyResult(f"mirror: {'on' if mirror else 'off'}")
    if char == "g":
        return KeyResult(f"refiner: {'on' if controls.toggle_refiner().refiner else 'off'}")
    if char == "r":
        controls.request_record()
        return KeyResult("recording toggle requested", notice=False)
    if char == "s":
        controls.request_snapshot()
        return KeyResult("snapshot requested", notice=False)
    if audio is not None and char == "a":
        audio.muted = not audio.muted
        return KeyResult(f"audio {'muted' if audio.muted else 'unmuted'}")
    if audio is not None and char in ("[", "]"):
        audio.offset_ms += 10.0 if char == "]" else -10.0
        return KeyResult(f"audio offset {audio.offset_ms:+.0f} ms")
    return None


# Terminal escape sequences of the arrow keys, as the codes ``act`` takes.
TERMINAL_ARROWS = {"[A": 0xFF52, "[B": 0xFF54, "[C": 0xFF53, "[D": 0xFF51, "OA": 0xFF52, "OB": 0xFF54}
TERMINAL_ARROWS.update({"OC": 0xFF53, "OD": 0xFF51})


class TerminalKeys(Stage):
    """The live keys typed in the terminal, for a `run` with no window (the virtual camera only).

    While open, the terminal reads keys one by one without echo (POSIX terminals); each key
    acts as in the window and says what it did on one line. Without a terminal it does nothing.
    """

    def __init__(self, controls: Controls, audio: Any = None, stream: TextIO | None = None) -> None:
        self.controls = controls
        self.audio = audio
        self.stream = stream if stream is not None else sys.stdin
        self.active = False
        self._saved: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> TerminalKeys:
        if self.active:
            return self
        try:
            import termios
            import tty

            fd = self.stream.fileno()
            if not os.isatty(fd):
                return self
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (ImportError, OSError, ValueError, AttributeError):  # Windows, no terminal
            return self
        self.active = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, args=(fd,), name="keys", daemon=True)
        self._thread.start()
        print(
            "keys: 1-9/arrows avatar, +/- strength, ,/. head vs expression, 0 reset, f mirror, "
            "g refiner, n neutral, m mode, r record, s snapshot, q quit",
            flush=True,
        )
        return self

    def _read(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(fd, 64).decode("utf-8", "replace")
            if not data:
                return
            for key in split_keys(data):
                result = act(key, self.controls, self.audio)
                if result is not None:
                    logger.info("%s (terminal)", result.text)
                    print(result.text, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None
        self.active = False


def split_keys(data: str) -> list[int]:
    """Key codes in what a terminal sent: characters, and arrows from their escape sequences."""
    keys: list[int] = []
    i = 0
    while i < len(data):
        if data[i] == "\x1b" and data[i + 1 : i + 3] in TERMINAL_ARROWS:
            keys.append(TERMINAL_ARROWS[data[i + 1 : i + 3]])
            i += 3
        else:
            keys.append(ord(data[i]))
            i += 1
    return keys
