"""A generator whose model runs on a Triton server: ``--generator triton://HOST:PORT/NAME``.

The face is still warped, cut into crops and pasted back here (``OnnxRefinerGenerator``'s
own code); only the model's inputs (the crops and maps, a few hundred KB) travel, over one
gRPC channel. Requests are asynchronous, so several can be in flight while the engine
tracks the next frame; each waits only its share of the frame budget, and a frame whose
answer is late, or whose server is down, is drawn with the local warp. The connection
reconnects with backoff in the background and says so once per outage.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import numpy as np

from realtime.errors import UserError
from realtime.frames import Rendered, Target
from realtime.metrics import Series, percentiles
from realtime.stages import Stage

logger = logging.getLogger(__name__)

SCHEME = "triton://"
# A live frame waits this share of the engine's frame budget for its answer before it is
# drawn with the warp (30 ms at 30 fps with the default two-interval budget), leaving the
# tracker, the warp and the blend theirs. An offline render has no clock and waits much longer.
BUDGET_SHARE = 0.45
LIVE_DEADLINE_MS = 30.0
OFFLINE_DEADLINE_MS = 5000.0
CONNECT_TIMEOUT_S = 2.0
RECONNECT_BACKOFF_S = (0.25, 5.0)
# More requests than this in flight means the server is not keeping up: new frames take
# the warp instead of queueing behind them.
MAX_IN_FLIGHT = 4
# gRPC's own reconnect backoff grows to two minutes by default; keep it near ours.
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(frozen=True)
class TritonAddress:
    host: str
    port: int
    model: str
    deadline_ms: float | None = None

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{SCHEME}{self.target}/{self.model}"


def is_remote(name: str | None) -> bool:
    return bool(name) and name.lower().startswith(SCHEME)


def parse_address(text: str) -> TritonAddress:
    """``triton://HOST:PORT/NAME[?deadline_ms=N]``; a bad one is a one-line error."""
    form = "triton://HOST:PORT/NAME, e.g. triton://127.0.0.1:8001/refiner"
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = None
    model = parts.path.strip("/")
    if parts.scheme.lower() != "triton" or not parts.hostname or port is None or not model or "/" in model:
        raise UserError(f"generator {text!r} is not a Triton address; use {form}")
    deadline_ms = None
    query = parse_qs(parts.query)
    unknown = set(query) - {"deadline_ms"}
    if unknown:
        raise UserError(f"generator {text!r}: unknown option {sorted(unknown)[0]!r} (only deadline_ms)")
    if "deadline_ms" in query:
        try:
            deadline_ms = float(query["deadline_ms"][-1])
        except ValueError:
            deadline_ms = -1.0
        if not deadline_ms > 0:
            raise UserError(f"generator {text!r}: deadline_ms must be a positive number")
    return TritonAddress(parts.hostname, port, model, deadline_ms)


def _import_client():
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:
        raise UserError("a triton:// generator needs tritonclient: pip install 'realtime[serve]'") from exc
    return grpcclient


def _reason(exc: BaseException) -> str:
    """The useful part of a gRPC error, in one short line."""
    text = (getattr(exc, "message", lambda: None)() if hasattr(exc, "message") else None) or str(exc)
    text = " ".join(text.split())
    if "last error:" in text:
        text = text.split("last error:")[-1].strip()
    return text[:160] or type(exc).__name__


def _unavailable(exc: BaseException) -> bool:
    """The server is gone (not merely busy: Triton answers UNAVAILABLE to a request it dropped
    from its queue after the request's own timeout, too)."""
    if _queue_timeout(exc):
        return False
    status = str(getattr(exc, "status", lambda: "")() or "")
    return "UNAVAILABLE" in status or "failed to connect" in str(exc).lower()


def _queue_timeout(exc: BaseException) -> bool:
    return "timeout expired" in str(exc).lower()


def _deadline(exc: BaseException) -> bool:
    return "DEADLINE_EXCEEDED" in str(getattr(exc, "status", lambda: "")() or "")


@dataclass
class ModelInfo:
    """What the server says about the model: tensors, card and execution provider."""

    inputs: dict[str, list[int]]
    input_types: dict[str, str]
    outputs: list[str]
    card: dict
    provider: str


class RemoteStats:
    """Per-connection counts: frames answered remotely, frames drawn with the warp and why, RTT."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rtt_ms = Series()
        self.remote_frames = 0
        self.warp_frames: dict[str, int] = {"down": 0, "late": 0, "busy": 0, "error": 0}
        self.late_answers = 0
        self.outages = 0
        self.reconnects = 0

    def add_rtt(self, ms: float) -> None:
        with self._lock:
            self.rtt_ms.append(ms)

    def add_remote(self) -> None:
        with self._lock:
            self.remote_frames += 1

    def add_warp(self, reason: str) -> None:
        with self._lock:
            self.warp_frames[reason] += 1

    def summary(self) -> dict:
        with self._lock:
            return {
                "remote_frames": self.remote_frames,
                "warp_frames": sum(self.warp_frames.values()),
                "warp_frames_by_reason": dict(self.warp_frames),
                "late_answers": self.late_answers,
                "outages": self.outages,
                "reconnects": self.reconnects,
                "rtt_ms": percentiles(self.rtt_ms),
            }


class TritonConnection(Stage):
    """One gRPC channel to one model on a Triton server, shared by the generators of both modes."""

    def __init__(self, address: TritonAddress, deadline_ms: float = LIVE_DEADLINE_MS) -> None:
        self.address = address
        self.deadline_s = (address.deadline_ms or deadline_ms) / 1000.0
        # An answer later than this is of no use even to a late frame; gRPC cancels it.
        self.request_timeout_s = max(1.0, 4 * self.deadline_s)
        self.stats = RemoteStats()
        self.info: ModelInfo | None = None
        self.version = 0  # bumped whenever the model's description is (re)read
        self._client = None
        self._grpc = None
        self._lock = threading.Lock()
        self._up = False
        self._in_flight = 0
        self._stop = threading.Event()
        self._reconnector: threading.Thread | None = None
        self._opened = False
        self._errors_logged: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> TritonConnection:
        if self._opened:
            return self
        self._grpc = _import_client()
        self._client = self._grpc.InferenceServerClient(self.address.target, channel_args=CHANNEL_ARGS)
        self._stop.clear()
        self._opened = True
        try:
            self._describe(CONNECT_TIMEOUT_S)
        except UserError:
            self.close()
            raise
        except Exception as exc:
            # The stream starts anyway: the warp draws until the server answers.
            logger.warning(
                "triton server %s unreachable (%s): drawing with the warp, retrying in the background",
                self.address.target,
                _reason(exc),
            )
            self._went_down(exc, announce=False)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._reconnector is not None:
            self._reconnector.join(timeout=2.0)
            self._reconnector = None
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing a broken channel is best effort
                pass
            self._client = None
        self._opened = False
        self._up = False

    def set_budget(self, budget_ms: float) -> None:
        """Wait for answers this frame budget's share (unless the URL sets ``deadline_ms``)."""
        if self.address.deadline_ms is None:
            self.deadline_s = BUDGET_SHARE * budget_ms / 1000.0
            self.request_timeout_s = max(1.0, 4 * self.deadline_s)

    @property
    def up(self) -> bool:
        return self._up

    @property
    def provider(self) -> str:
        where = f"triton {self.address.target}"
        return f"{where} ({self.info.provider})" if self.info else f"{where} (unreachable)"

    # -- the model's description ---------------------------------------------------------
    def _describe(self, timeout_s: float) -> None:
        client = self._client
        try:
            ready = client.is_model_ready(self.address.model, client_timeout=timeout_s)
        except self._grpc.InferenceServerException as exc:
            if _unavailable(exc) or _deadline(exc):
                raise
            ready = False
        if not ready:
            raise UserError(
                f"triton server {self.address.target} has no model {self.address.model!r} ready; "
                f"it serves: {self._served_models(timeout_s)}"
            )
        config = client.get_model_config(self.address.model, as_json=True, client_timeout=timeout_s)["config"]
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        batched = int(config.get("max_batch_size", 0)) > 0
        if not batched:
            raise UserError(f"model {self.address} takes no batch dimension; serve it with `realtime serve`")
        info = ModelInfo(
            inputs={i["name"]: [int(d) for d in i["dims"]] for i in config["input"]},
            input_types={i["name"]: i["data_type"].replace("TYPE_", "") for i in config["input"]},
            outputs=[o["name"] for o in config["output"]],
            card=json.loads(parameters.get("realtime-card") or "{}"),
            provider=parameters.get("realtime-provider", "unknown provider"),
        )
        with self._lock:
            self.info = info
            self.version += 1
            self._up = True

    def _served_models(self, timeout_s: float) -> str:
        try:
            index = self._client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
            names = [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]
        except Exception:
            return "(could not list its models)"
        return ", ".join(names) or "nothing"

    # -- failure and reconnection --------------------------------------------------------
    def _went_down(self, exc: BaseException, announce: bool = True) -> None:
        with self._lock:
            if self._stop.is_set() or (not self._up and self._reconnector is not None):
                return  # closing (the channel's own errors), or already reconnecting
            self._up = False
            self.stats.outages += 1
            self._reconnector = threading.Thread(target=self._reconnect, name="triton-reconnect", daemon=True)
            self._reconnector.start()
        if announce:
            logger.warning(
                "triton server %s went away (%s): drawing with the warp, reconnecting",
                self.address.target,
                _reason(exc),
            )

    def _reconnect(self) -> None:
        delay = RECONNECT_BACKOFF_S[0]
        while not self._stop.wait(delay):
            try:
                self._describe(timeout_s=1.0)
            except Exception as exc:  # still down (or restarting without the model yet)
                logger.debug("triton server %s: still unavailable (%s)", self.address.target, _reason(exc))
                delay = min(RECONNECT_BACKOFF_S[1], delay * 2)
                continue
            with self._lock:
                self.stats.reconnects += 1
                self._reconnector = None
            logger.warning("triton server %s answers again: remote frames resume", self.address.target)
            return

    def _log_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._errors_logged:
            self._errors_logged.add(key)
            logger.error(message + " (further errors of this kind are counted, not logged)", *args)

    # -- inference -----------------------------------------------------------------------
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """The model's outputs for one frame, or None: the frame is drawn with the warp."""
        info, client = self.info, self._client
        if not self._up or info is None or client is None:
            self.stats.add_warp("down")
            return None
        with self._lock:
            if self._in_flight >= MAX_IN_FLIGHT:
                self.stats.add_warp("busy")
                return None
            self._in_flight += 1
        grpc = self._grpc
        inputs = []
        for name, value in feeds.items():
            dtype = np.float16 if info.input_types.get(name) == "FP16" else np.float32
            tensor = np.ascontiguousarray(value[None], dtype=dtype)
            item = grpc.InferInput(name, list(tensor.shape), info.input_types.get(name, "FP32"))
            item.set_data_from_numpy(tensor)
            inputs.append(item)
        outputs = [grpc.InferRequestedOutput(name) for name in info.outputs]
        answered = threading.Event()
        box: dict = {}
        started = time.perf_counter()

        def on_answer(result, error) -> None:
            with self._lock:
                self._in_flight -= 1
            if error is None:
                self.stats.add_rtt((time.perf_counter() - started) * 1000.0)
            elif _unavailable(error):
                self._went_down(error)
            box["result"], box["error"] = result, error
            answered.set()
            if box.get("abandoned") and error is None:
                with self._lock:
                    self.stats.late_answers += 1

        try:
            client.async_infer(
                self.address.model,
                inputs,
                on_answer,
                outputs=outputs,
                # The server drops the request if it has waited in its queue longer than the
                # frame would (`realtime serve` allows this override): no work on stale frames.
                timeout=int(self.deadline_s * 1e6),
                client_timeout=self.request_timeout_s,
            )
        except Exception as exc:
            with self._lock:
                self._in_flight -= 1
            if _unavailable(exc):
                self._went_down(exc)
            self.stats.add_warp("error")
            return None
        if not answered.wait(self.deadline_s):
            # Not cancelled: cancelling requests under load (16 clients) crashed the server
            # (pytriton 0.7.0's tritonserver) twice in two runs; its queue timeout drops them.
            box["abandoned"] = True
            self.stats.add_warp("late")
            return None
        error = box["error"]
        if error is not None:
            if _unavailable(error):
                self.stats.add_warp("down")
            elif _deadline(error) or _queue_timeout(error):
                self.stats.add_warp("late")
            else:
                self.stats.add_warp("error")
                self._log_once(
                    f"infer:{getattr(error, 'status', lambda: '')()}",
                    "triton server %s refused a frame: %s",
                    self.address.target,
                    _reason(error),
                )
            return None
        self.stats.add_remote()
        result = box["result"]
        return {name: result.as_numpy(name)[0] for name in info.outputs}

    def summary(self) -> dict:
        info = self.info
        return {
            "server": str(self.address),
            "provider": info.provider if info else "unknown (never reached)",
            "deadline_ms": round(self.deadline_s * 1000.0, 1),
            **self.stats.summary(),
        }


class TritonRunner:
    """OnnxRunner's interface over a Triton connection (one frame per request)."""

    def __init__(self, connection: TritonConnection, info: ModelInfo) -> None:
        self.connection = connection
        self.inputs = dict(info.inputs)
        self.outputs = list(info.outputs)
        self.provider = info.provider

    def input_shape(self, name: str) -> list:
        return list(self.inputs[name])

    def warm_up(self, feeds: dict[str, np.ndarray]) -> None:
        """The server warmed its model when it started; nothing to do here."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        return self.connection.infer(feeds)


class TritonGenerator(Stage):
    """The refiner with its model on a Triton server; the local warp whenever that fails."""

    def __init__(self, connection: TritonConnection, warp) -> None:
        self.connection = connection
        self.warp = warp
        self.name = str(connection.address)
        self._refiner = None
        self._refiner_version = 0
        self._build_failed_version = 0

    @property
    def provider(self) -> str:
        return self.connection.provider

    def open(self) -> TritonGenerator:
        self.connection.open()
        self._current_refiner(strict=True)  # a model that breaks the contract fails at start
        return self

    def close(self) -> None:
        self.connection.close()

    def _current_refiner(self, strict: bool = False):
        """The refiner for the model the server describes now (rebuilt after a reconnect)."""
        from realtime.generators.onnx import OnnxRefinerGenerator

        version, info = self.connection.version, self.connection.info
        if info is None or version in (self._refiner_version, self._build_failed_version):
            return self._refiner
        try:
            self._refiner = OnnxRefinerGenerator(
                f"{self.connection.address.model}.onnx",
                self.warp,
                runner=TritonRunner(self.connection, info),
                card=info.card,
            )
            self._refiner.name = self.name
        except UserError as exc:
            if strict:
                raise UserError(f"{self.name}: {exc}") from exc
            self._build_failed_version = version
            logger.error("%s: %s; drawing with the warp", self.name, exc)
            return self._refiner
        self._refiner_version = version
        return self._refiner

    def render(self, target: Target) -> Rendered:
        refiner = self._current_refiner() if self.connection.up else None
        if refiner is None:
            self.connection.stats.add_warp("down")
            return self.warp.render(target)
        return refiner.render(target)


def build_remote(address: TritonAddress, warps: dict, live: bool = True) -> dict:
    """mode -> TritonGenerator, all on one connection."""
    connection = TritonConnection(address, LIVE_DEADLINE_MS if live else OFFLINE_DEADLINE_MS)
    return {mode: TritonGenerator(connection, warp) for mode, warp in warps.items()}


def set_remote_budget(generators, budget_ms: float) -> None:
    """Give a remote generator's connection its share of the live engine's frame budget."""
    for generator in generators.by_mode.values():
        if isinstance(generator, TritonGenerator):
            generator.connection.set_budget(budget_ms)


def remote_summary(generators) -> dict | None:
    """The remote connection's counts and RTT, for the run's summary; None without one."""
    for generator in [*generators.by_mode.values()]:
        if isinstance(generator, TritonGenerator):
            return generator.connection.summary()
    return None


def format_remote(summary: dict) -> str:
    rtt = summary["rtt_ms"]
    reasons = ", ".join(f"{k} {v}" for k, v in summary["warp_frames_by_reason"].items() if v)
    return (
        f"remote {summary['server']} on {summary['provider']}: {summary['remote_frames']} frames remote, "
        f"{summary['warp_frames']} with the local warp{f' ({reasons})' if reasons else ''}; "
        f"round trip p50 {rtt['p50']:.1f} ms p95 {rtt['p95']:.1f} ms; reconnects {summary['reconnects']}"
    )
