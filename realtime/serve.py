"""`realtime serve`: the shipped generators behind a real NVIDIA Triton Inference Server.

The ``tritonserver`` binary comes inside the ``nvidia-pytriton`` wheel (the ``serve`` extra).
That wheel ships only Triton's Python backend, not its onnxruntime backend, so each model
runs in this process on onnxruntime through ``OnnxRunner`` (CUDA where onnxruntime-gpu finds
it, CPU otherwise) and Triton does what a serving engine is for: the network endpoints,
dynamic batching across clients, shape checks, health and Prometheus metrics.

Clients (``--generator triton://HOST:PORT/NAME``, ``realtime.generators.remote``) read the
model card and the provider from the model's config parameters.
"""

from __future__ import annotations

import json
import logging
import os
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.errors import UserError
from realtime.generators.onnx import PASTE_CARD_FIELDS, OnnxRunner
from realtime.stages import Stage

logger = logging.getLogger(__name__)

SERVE_HINT = "pip install 'realtime[serve]'"
CARD_PARAMETER = "realtime-card"
PROVIDER_PARAMETER = "realtime-provider"
# The same model without the dynamic batcher (--batching both): the load test compares them.
UNBATCHED_SUFFIX = "-nobatch"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
BATCHING_CHOICES = ("on", "off", "both")
# What a client needs from the model card to cut and paste crops (the rest stays on the server).
CARD_FIELDS = ("name", "kind", "default", *PASTE_CARD_FIELDS)
# A request still queued after this long is rejected (clients ask for less: their frame deadline).
QUEUE_TIMEOUT_US = 500_000
# Crops a batched call may differ from one frame at a time (float32 reassociation).
STACKED_PARITY = 1e-4


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def import_pytriton():
    try:
        import pytriton.triton as triton
    except ImportError as exc:
        raise UserError(f"serving needs NVIDIA PyTriton: {SERVE_HINT}") from exc
    return triton


def libpython_dir() -> str | None:
    """The folder holding this Python's shared library, when the loader would not find it.

    Triton's Python backend stub links ``libpython3.X.so``; pyenv and conda builds keep it
    in their own LIBDIR, which the loader does not search (the stub then finds a system
    libpython of another patch release, or none)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("LDLIBRARY")
    if libdir and name and os.path.exists(os.path.join(libdir, name)):
        return libdir
    return None


def server_environment() -> dict[str, str]:
    """The environment the ``tritonserver`` child process needs (set in ``os.environ``)."""
    env: dict[str, str] = {}
    libdir = libpython_dir()
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        env["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir
    return env


def servable_models(paths: list[str] | None) -> dict[str, str]:
    """name -> ONNX path: the given files, or every shipped refiner with a model card."""
    from realtime.generators.registry import shipped_models

    if paths:
        models: dict[str, str] = {}
        for path in paths:
            if not path.endswith(".onnx"):
                raise UserError(f"--model takes an .onnx file (models are never unpickled): {path}")
            if not os.path.isfile(path):
                raise UserError(f"model not found: {path}")
            models[Path(path).stem] = path
        return models
    # fp16 and int8 copies (NAME.fp16, NAME.int8) are served only when asked for by path.
    shipped = {
        name: card["path"]
        for name, card in shipped_models().items()
        if card.get("kind", "refiner") == "refiner" and "." not in name and "name" in card
    }
    if not shipped:
        raise UserError("no shipped generator model (weights/*.onnx with a card); give --model PATH.onnx")
    return shipped


def served_card(path: str) -> dict:
    card_path = os.path.splitext(path)[0] + ".json"
    card = json.loads(Path(card_path).read_text()) if os.path.exists(card_path) else {}
    return {key: card[key] for key in CARD_FIELDS if key in card}


class StackedRunner:
    """A per-frame ONNX model run on a batch of frames in one onnxruntime call.

    Triton stacks B requests of the model's per-frame shape (N crops, ...) into (B, N, ...).
    The exported models fix N, so the first dimension is opened in a copy of the graph and
    B frames run as B·N crops; that copy is used only if it matches the original on a test
    batch. Otherwise (a graph that bakes N in) frames run one after another.
    """

    def __init__(self, path: str, providers: list[str] | None = None, threads: int = 0) -> None:
        self.path = path
        self.single = OnnxRunner(path, providers, threads)
        self.provider = self.single.provider
        self.inputs = {name: self.single.input_shape(name) for name in self.single.inputs}
        self.outputs = list(self.single.outputs)
        self.output_shapes = {o.name: list(o.shape) for o in self.single.session.get_outputs()}
        self.output_types = {o.name: o.type for o in self.single.session.get_outputs()}
        self.input_types = {i.name: i.type for i in self.single.session.get_inputs()}
        self.stacked: OnnxRunner | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()
        try:
            self._open_first_dimension(providers, threads)
        except Exception as exc:  # the per-frame loop still serves correctly, only slower
            logger.info("%s: batches run frame by frame (%s)", Path(path).name, exc)
            self.stacked = None

    def _open_first_dimension(self, providers: list[str] | None, threads: int) -> None:
        import onnx

        model = onnx.load(self.path)
        for value in [*model.graph.input, *model.graph.output]:
            dim = value.type.tensor_type.shape.dim[0]
            dim.ClearField("dim_value")
            dim.dim_param = "crops"
        self._tmp = tempfile.TemporaryDirectory(prefix="realtime-serve-")
        stacked_path = os.path.join(self._tmp.name, Path(self.path).name)
        onnx.save(model, stacked_path)
        self.stacked = OnnxRunner(stacked_path, [self.provider], threads, warmup=0)
        rng = np.random.default_rng(0)
        frames = {name: self._example(name, rng, 2) for name in self.inputs}
        together = self._run_stacked(frames)
        for b in range(2):
            alone = self.single.run({name: value[b] for name, value in frames.items()})
            for name in self.outputs:
                diff = float(np.abs(together[name][b] - alone[name]).max())
                if diff > STACKED_PARITY:
                    raise ValueError(f"a batched run differs by {diff:.2g} on '{name}'")

    def _example(self, name: str, rng: np.random.Generator, batch: int) -> np.ndarray:
        shape = [d if isinstance(d, int) else 1 for d in self.inputs[name]]
        dtype = np.float16 if "float16" in self.input_types[name] else np.float32
        return rng.random((batch, *shape)).astype(dtype)

    def _run_stacked(self, frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = next(iter(frames.values())).shape[0]
        flat = {name: value.reshape(-1, *value.shape[2:]) for name, value in frames.items()}
        out = self.stacked.run(flat)
        return {name: value.reshape(batch, -1, *value.shape[1:]) for name, value in out.items()}

    def __call__(self, frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """(B, per-frame shape...) inputs -> (B, ...) outputs."""
        if self.stacked is not None:
            return self._run_stacked(frames)
        batch = next(iter(frames.values())).shape[0]
        results = [self.single.run({name: value[b] for name, value in frames.items()}) for b in range(batch)]
        return {name: np.stack([r[name] for r in results]) for name in self.outputs}

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _numpy_dtype(onnx_type: str) -> type:
    return np.float16 if "float16" in onnx_type else np.float32


def _dims(shape: list) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in shape)


@dataclass(frozen=True)
class ServeConfig:
    """What ``realtime serve`` runs: models, where it listens, how it batches."""

    models: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8001
    http_port: int | None = None
    metrics_port: int | None = None
    batching: str = "on"
    max_batch: int = 16
    queue_delay_us: int = 1000
    providers: tuple[str, ...] | None = None
    threads: int = 0
    expose: bool = False

    def __post_init__(self) -> None:
        if self.batching not in BATCHING_CHOICES:
            raise UserError(f"--batching must be one of {', '.join(BATCHING_CHOICES)}")
        if not is_loopback(self.host) and not self.expose:
            raise UserError(
                f"--host {self.host} would let anyone who reaches it use the server (Triton has no "
                "authentication); add --expose to do it anyway, ideally behind a proxy or on a private network"
            )
        for port in (self.port, self.http_port, self.metrics_port):
            if port is not None and not 1 <= port <= 65535:
                raise UserError(f"port {port} is out of range (1..65535)")
        if self.max_batch < 1:
            raise UserError("--max-batch must be at least 1")

    @property
    def ports(self) -> tuple[int, int, int]:
        """gRPC, HTTP and metrics ports: Triton's 8001/8000/8002 pattern around ``port``."""
        return (
            self.port,
            self.http_port if self.http_port is not None else self.port - 1,
            self.metrics_port if self.metrics_port is not None else self.port + 1,
        )


class TritonService(Stage):
    """A running Triton server with the configured models bound; ``open`` returns once it is ready."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.models = servable_models(list(config.models) or None)
        self._triton = None
        self._runners: list[StackedRunner] = []
        self.log_path: str | None = None
        self.served: list[str] = []

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"triton://{host}:{self.config.port}"

    @property
    def metrics_url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.config.ports[2]}/metrics"

    def open(self) -> TritonService:
        if self._triton is not None:
            return self
        triton = import_pytriton()
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction

        os.environ.update(server_environment())
        grpc_port, http_port, metrics_port = self.config.ports
        check_ports_free(self.config.host, (grpc_port, http_port, metrics_port))
        log_dir = tempfile.mkdtemp(prefix="realtime-triton-")
        self.log_path = os.path.join(log_dir, "tritonserver.log")
        server_config = triton.TritonConfig(
            grpc_address=self.config.host,
            grpc_port=grpc_port,
            http_address=self.config.host,
            http_port=http_port,
            metrics_address=self.config.host,
            metrics_port=metrics_port,
            log_file=Path(self.log_path),
            exit_on_error=True,
            exit_timeout_secs=5,  # in-flight frames are worthless after a few seconds anyway
        )
        providers = list(self.config.providers) if self.config.providers else None
        server = triton.Triton(config=server_config)
        try:
            for name, path in self.models.items():
                runner = StackedRunner(path, providers, self.config.threads)
                self._runners.append(runner)
                inputs = [
                    Tensor(name=n, dtype=_numpy_dtype(runner.input_types[n]), shape=_dims(s))
                    for n, s in runner.inputs.items()
                ]
                outputs = [
                    Tensor(name=n, dtype=_numpy_dtype(runner.output_types[n]), shape=_dims(s))
                    for n, s in runner.output_shapes.items()
                ]
                variants = {
                    "on": [(name, True)],
                    "off": [(name, False)],
                    "both": [(name, True), (name + UNBATCHED_SUFFIX, False)],
                }[self.config.batching]
                for served_name, dynamic in variants:
                    # Unbatched is the same scheduler with batches of one, so a comparison
                    # isolates batching. Requests that waited longer than their sender's
                    # deadline (or QUEUE_TIMEOUT_US) are rejected, not run for nobody.
                    batcher = DynamicBatcher(
                        max_queue_delay_microseconds=self.config.queue_delay_us if dynamic else 0,
                        default_queue_policy=QueuePolicy(
                            timeout_action=TimeoutAction.REJECT,
                            default_timeout_microseconds=QUEUE_TIMEOUT_US,
                            allow_timeout_override=True,
                        ),
                    )
                    config = ModelConfig(
                        max_batch_size=self.config.max_batch if dynamic else 1, batcher=batcher
                    )
                    server.bind(
                        served_name, _infer_function(runner), inputs, outputs, config=config, strict=True
                    )
                    self._publish(server, served_name, path, runner.provider)
                    self.served.append(served_name)
            quiet_server_output(triton, server.run)
        except UserError:
            server.stop()
            raise
        except Exception as exc:
            server.stop()
            raise UserError(
                f"Triton did not start on {self.config.host}:{grpc_port} ({str(exc).strip()[:200]}); "
                f"its log: {self.log_path}"
            ) from exc
        self._triton = server
        return self

    def _publish(self, server, served_name: str, path: str, provider: str) -> None:
        """Put the model card and provider in the model's config, where clients read them.

        PyTriton 0.7.0 (pinned) offers no parameters of its own; a model bound before the
        server runs sends this config when ``run`` loads it, so they are added to it here."""
        for model in server._model_manager.models:
            if model.model_name == served_name:
                config = model._get_triton_model_config()
                config.backend_parameters[CARD_PARAMETER] = json.dumps(served_card(path))
                config.backend_parameters[PROVIDER_PARAMETER] = provider

    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def close(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None
        for runner in self._runners:
            runner.close()
        self._runners = []

    def ready_line(self) -> str:
        names = ", ".join(self.served)
        first = self.served[0] if self.served else "NAME"
        providers = ", ".join(sorted({r.provider for r in self._runners}))
        return (
            f"realtime serve: ready at {self.url} (models {names} on {providers}; batching "
            f"{self.config.batching}); clients: --generator {self.url}/{first}; metrics {self.metrics_url}"
        )


def check_ports_free(host: str, ports: tuple[int, ...]) -> None:
    """Fail at once on a busy port (Triton itself would exit, and PyTriton wait minutes for it)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for port in ports:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise UserError(
                    f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port "
                    "(Triton also uses the ports just below and above it for HTTP and metrics, "
                    "or set --http-port/--metrics-port)"
                ) from None


def quiet_server_output(triton, run) -> None:
    """``run()`` with the server's console output kept out of ours (it goes to the log file;
    what it prints besides, such as "Failed to initialize NVML" on a machine without a GPU, is noise).
    PyTriton 0.7.0 echoes it unless its TritonServer is made with verbose=False."""
    original = triton.TritonServer

    def quiet(*args, **kwargs):
        return original(*args, **{**kwargs, "verbose": False})

    triton.TritonServer = quiet
    try:
        run()
    finally:
        triton.TritonServer = original


def _infer_function(runner: StackedRunner):
    from pytriton.decorators import batch

    @batch
    def infer(**frames: np.ndarray) -> dict[str, np.ndarray]:
        return runner(frames)

    return infer
