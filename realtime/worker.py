"""A worker function in a spawned child process: handshake, calls, events, logs, shutdown.

The parent owns a ``ChildWorker``; the child runs ``target(channel, *args)`` with a
``WorkerChannel``. The child sets itself up, says ``channel.ready(info)`` (or
``channel.fail(why)``), then serves requests from ``channel.requests()`` until the parent
closes it; what ``target`` returns comes back as ``ChildWorker.result``::

    def serve(channel: WorkerChannel, scale: float) -> None:
        channel.ready()
        for request in channel.requests():
            channel.reply(request * scale)

    with ChildWorker(serve, (2.0,), name="doubler") as worker:
        assert worker.call(21) == 42.0

The child ignores SIGINT (Ctrl+C is the parent's to handle; it closes the child), and its
log records are logged in the parent under their own logger names.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from realtime.errors import one_line
from realtime.stages import Stage

logger = logging.getLogger(__name__)

IDLE = None  # what ``WorkerChannel.requests`` yields when no request came within ``idle_s``


class WorkerError(RuntimeError):
    """The child could not start, has gone, or failed a call; ``str()`` is one line."""


# --------------------------------------------------------------------------- the child's side


class _ForwardLogs(logging.Handler):
    """In the child: each log record goes to the parent, which logs it as its own."""

    def __init__(self, channel: WorkerChannel) -> None:
        super().__init__(logging.DEBUG)
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel._send("log", (record.name, record.levelno, record.getMessage()))
        except Exception:  # the parent is gone: nobody to tell
            pass


class WorkerChannel:
    """The child's end of the pipe, handed to the worker function."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # the worker's threads log too: one message at a time
        self._parent = os.getppid()
        self._request_id: int | None = None
        self.is_ready = False

    def _send(self, kind: str, payload: Any = None) -> None:
        with self._lock:
            self._conn.send((kind, payload))

    def ready(self, info: Any = None) -> None:
        """Set up: the parent's ``open()`` returns, with ``info`` as ``ChildWorker.info``."""
        self._send("ready", info)
        self.is_ready = True

    def fail(self, why: str) -> None:
        """Could not set up: the parent's ``open()`` raises ``WorkerError(why)``."""
        self._send("error", why)

    def notify(self, event: Any) -> None:
        """An unsolicited report; the parent collects it with ``ChildWorker.events()``."""
        self._send("event", event)

    def reply(self, value: Any) -> None:
        """The answer to the request last yielded by ``requests()``."""
        self._send("reply", (self._request_id, True, value))

    def reply_error(self, why: str) -> None:
        """The request last yielded failed: the parent's ``call`` raises ``WorkerError(why)``."""
        self._send("reply", (self._request_id, False, why))

    def requests(self, idle_s: float | None = None) -> Iterator[Any]:
        """Each request as it comes; ``IDLE`` after ``idle_s`` without one (None: never).

        Ends when the parent asks to close, closes the pipe, or is gone.
        """
        while os.getppid() == self._parent:
            try:
                if not self._conn.poll(0.5 if idle_s is None else idle_s):
                    if idle_s is not None:
                        yield IDLE
                    continue
                kind, request_id, request = self._conn.recv()
            except (EOFError, OSError):  # the parent closed the pipe
                return
            if kind == "close":
                return
            self._request_id = request_id
            yield request


def _child_main(conn: Any, target: Callable[..., Any], args: tuple[Any, ...], level: int) -> None:
    """The child process: logs to the parent, SIGINT ignored, ``target`` run, its result sent."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the parent's to handle; it closes us
    channel = WorkerChannel(conn)
    root = logging.getLogger()
    root.handlers[:] = [_ForwardLogs(channel)]
    root.setLevel(level)
    try:
        result = target(channel, *args)
    except Exception as exc:  # before ``ready`` the parent's open() raises it; after, it is logged
        why = f"{type(exc).__name__}: {one_line(str(exc), 160)}"
        try:
            if channel.is_ready:
                logger.error("the worker failed: %s", why)
            else:
                channel.fail(why)
        except (OSError, ValueError):
            pass
        return
    try:
        channel._send("result", result)
    except (OSError, ValueError):  # the parent is gone
        pass


# --------------------------------------------------------------------------- the parent's side


class ChildWorker(Stage):
    """``target(channel, *args)`` in a spawned child process, owned by this object.

    The constructor only configures; ``open()`` spawns the child and waits up to
    ``start_timeout_s`` for its ``ready`` (``WorkerError`` with one line otherwise);
    ``close()`` asks it to finish, then terminates, then kills it. ``name`` names the
    process and the errors ("the tracker process did not start within 60 s").
    """

    def __init__(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] = (),
        name: str = "worker",
        start_timeout_s: float = 30.0,
        close_timeout_s: float = 3.0,
        log_level_from: str = "",
    ) -> None:
        self.target = target
        self.args = args
        self.name = name
        self.start_timeout_s = start_timeout_s
        self.close_timeout_s = close_timeout_s
        self.log_level_from = log_level_from  # the child logs at this parent logger's level
        self.info: Any = None  # what the child said when ready
        self.result: Any = None  # what the child's function returned, once closed
        self._lock = threading.RLock()  # the engine's thread and the main thread both talk to it
        self._process: Any = None
        self._conn: Any = None
        self._next_id = 0
        self._events: collections.deque[Any] = collections.deque()

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> ChildWorker:
        if self._process is not None:
            return self
        import multiprocessing as mp

        context = mp.get_context("spawn")  # never fork a process that runs threads
        parent, child = context.Pipe()
        level = logging.getLogger(self.log_level_from).getEffectiveLevel()
        self._conn = parent
        self._process = context.Process(
            target=_child_main,
            args=(child, self.target, self.args, level),
            name=f"realtime-{self.name}",
            daemon=True,
        )
        try:
            self._process.start()
            child.close()
            self.info = self._handshake()
        except BaseException:
            self.close()
            raise
        return self

    def _handshake(self) -> Any:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            try:
                message = self._receive(("ready", "error"), 0.1)
            except WorkerError:  # the child ended without a word
                self._process.join(timeout=2.0)
                break
            if message is not None:
                kind, payload = message
                if kind == "error":
                    raise WorkerError(payload)
                return payload
            if not self._process.is_alive():
                break
        if self._process.is_alive():
            raise WorkerError(f"the {self.name} process did not start within {self.start_timeout_s:.0f} s")
        code = self._process.exitcode
        raise WorkerError(f"the {self.name} process ended before it was ready (exit code {code})")

    def close(self) -> None:
        """Ask the child to finish (its result becomes ``result``), then terminate, then kill."""
        with self._lock:
            conn, process = self._conn, self._process
            self._conn = self._process = None
            if conn is not None:
                try:
                    conn.send(("close", None, None))
                    deadline = time.monotonic() + self.close_timeout_s
                    while (left := deadline - time.monotonic()) > 0:
                        message = self._receive(("result",), left, conn)
                        if message is not None:
                            self.result = message[1]
                            break
                except (WorkerError, OSError, ValueError):
                    pass
                conn.close()
        if process is not None:
            process.join(timeout=self.close_timeout_s)
            for stop in (process.terminate, process.kill):
                if not process.is_alive():
                    break
                stop()
                process.join(timeout=1.0)

    @property
    def alive(self) -> bool:
        """Open, with the child running and its pipe intact."""
        return self._conn is not None and self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # -- talking to the child ------------------------------------------------------------
    def call(self, request: Any, timeout_s: float | None = None) -> Any:
        """Send ``request`` and wait for the reply (``WorkerError`` on timeout, failure or death)."""
        with self._lock:
            if self._conn is None:
                raise WorkerError(f"the {self.name} process is not running")
            self._next_id += 1
            request_id = self._next_id
            try:
                self._conn.send(("call", request_id, request))
            except (OSError, ValueError) as exc:
                self._gone()
                raise WorkerError(f"the {self.name} process has gone: {exc}") from exc
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while deadline is None or (left := deadline - time.monotonic()) > 0:
                message = self._receive(("reply",), 0.5 if deadline is None else left)
                if message is None:
                    if deadline is None and not self._process.is_alive():
                        self._gone()
                        raise WorkerError(f"the {self.name} process has gone")
                    continue
                answered, ok, value = message[1]
                if answered != request_id:  # the late answer to a call that timed out
                    continue
                if not ok:
                    raise WorkerError(value)
                return value
            raise WorkerError(f"the {self.name} process did not answer within {timeout_s:.1f} s")

    def post(self, request: Any) -> None:
        """Send ``request`` without waiting; the child answers with ``notify`` (its reply, if
        any, is dropped). ``WorkerError`` if the child has gone."""
        with self._lock:
            if self._conn is None:
                raise WorkerError(f"the {self.name} process is not running")
            self._next_id += 1
            try:
                self._conn.send(("call", self._next_id, request))
            except (OSError, ValueError) as exc:
                self._gone()
                raise WorkerError(f"the {self.name} process has gone: {exc}") from exc

    def events(self) -> list[Any]:
        """What the child reported with ``notify`` since the last look; never blocks.

        Also logs the child's pending log records. ``WorkerError`` once the child has gone.
        """
        with self._lock:
            if self._conn is not None:
                self._receive((), 0.0)
            events = list(self._events)
            self._events.clear()
        return events

    def _receive(self, wanted: tuple[str, ...], timeout_s: float, conn: Any = None) -> tuple[str, Any] | None:
        """The one place messages are read: logs are logged and events kept until a
        message of a ``wanted`` kind arrives (returned) or ``timeout_s`` passes (None)."""
        conn = self._conn if conn is None else conn
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if not conn.poll(max(0.0, deadline - time.monotonic())):
                    return None
                kind, payload = conn.recv()
            except (EOFError, OSError) as exc:
                if conn is self._conn:
                    self._gone()
                raise WorkerError(f"the {self.name} process has gone") from exc
            if kind == "log":
                name, level, text = payload
                logging.getLogger(name).log(level, "%s", text)
            elif kind == "event":
                self._events.append(payload)
            elif kind in wanted:
                return kind, payload
            elif kind == "result":
                self.result = payload

    def _gone(self) -> None:
        """The pipe broke: the child has gone (``alive`` is False from now on)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
