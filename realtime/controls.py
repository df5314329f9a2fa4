"""Commands from the user (hotkeys, API) to the running engine, thread-safe."""

from __future__ import annotations

import threading

from realtime.frames import Mode


class Controls:
    """Hotkey requests travel from a sink thread to the processing threads through this."""

    def __init__(self, mode: Mode | str = Mode.REENACT) -> None:
        self._lock = threading.Lock()
        self._recalibrate = False
        self.mode = Mode(mode)
        self.quit = threading.Event()

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
