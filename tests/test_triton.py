"""A real Triton server on 127.0.0.1 (`realtime serve`, the shipped refiner) and the remote generator.

The server is started once for the module (about 5 s); the kill-and-restart test restarts it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="the 'serve' extra (nvidia-pytriton) is not installed")
grpcclient = pytest.importorskip(
    "tritonclient.grpc", reason="the 'serve' extra (tritonclient) is not installed"
)

from realtime.avatar import load_avatar  # noqa: E402
from realtime.controls import Controls  # noqa: E402
from realtime.frames import Mode  # noqa: E402
from realtime.generators.registry import build_generators, shipped_models  # noqa: E402
from realtime.generators.remote import TritonGenerator, remote_summary  # noqa: E402
from realtime.loop import render_offline  # noqa: E402
from realtime.metrics import Metrics  # noqa: E402
from realtime.pipeline import FrameProcessor  # noqa: E402
from realtime.sources import BuiltinDriverSource  # noqa: E402
from realtime.stages import SinkBase  # noqa: E402
from realtime.tracking import FaceTracker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if "refiner" not in shipped_models():
    pytest.skip("weights/refiner.onnx is not shipped in this checkout", allow_module_level=True)

# Remote and local frames run the same graph on the same onnxruntime; the server runs a batch
# as one call on a graph with an open first dimension (checked to 1e-4 at start), so a pixel
# may round to the neighbouring grey level.
MAX_ABS_DIFF = 2
SIZE = (320, 320)


def _free_port_triple() -> int:
    """A gRPC port whose neighbours (HTTP below, metrics above) are free too."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port >= 65535 or port < 1025:
            continue
        free = True
        for candidate in (port - 1, port, port + 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", candidate))
                except OSError:
                    free = False
        if free:
            return port
    raise RuntimeError("no three free neighbouring ports")


class Server:
    """`realtime serve` in its own process group, so a kill takes tritonserver with it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None
        self.ready_line = ""

    def start(self, timeout_s: float = 90.0) -> Server:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "realtime.cli", "serve", "--port", str(self.port), "--batching", "both"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if "ready at" in line:
                self.ready_line = line.strip()
                return self
            if not line and self.process.poll() is not None:
                break
        self.kill()
        raise RuntimeError(f"realtime serve did not become ready on port {self.port}")

    def kill(self) -> None:
        """What a crashed or unplugged server looks like: no goodbye."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            time.sleep(0.3)  # a backend stub being started as the group died
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            # PyTriton names its shared memory after the serving process; a killed one leaves it.
            for region in Path("/dev/shm").glob(f"pytrtion{self.process.pid}-*"):
                region.unlink(missing_ok=True)
        self.process = None

    @property
    def url(self) -> str:
        return f"triton://127.0.0.1:{self.port}/refiner"


@pytest.fixture(scope="module")
def server():
    served = Server(_free_port_triple()).start()
    yield served
    served.kill()


@pytest.fixture(scope="module")
def avatar():
    return load_avatar("builtin", SIZE)


class ListSink(SinkBase):
    """Keeps every frame; ``on_frame(index)`` runs after each one (to act mid-render)."""

    name = "list"

    def __init__(self, on_frame=None) -> None:
        self.images: list[np.ndarray] = []
        self.on_frame = on_frame

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def send(self, out) -> None:
        self.images.append(out.image.copy())
        if self.on_frame is not None:
            self.on_frame(len(self.images))


def _render(
    avatar, generator: str, seconds: float, on_frame=None
) -> tuple[dict, list[np.ndarray], FrameProcessor]:
    generators = build_generators(generator, avatar, live=False)
    processor = FrameProcessor(avatar, generators, FaceTracker(), Controls(Mode.REENACT), Metrics(), SIZE)
    source = BuiltinDriverSource(320, 240, 30.0, seconds=seconds, paced=False, loop=False)
    sink = ListSink(on_frame)
    summary = render_offline(source, processor, [sink], fps=30.0, progress=False)
    return summary, sink.images, processor


def test_ready_line_names_the_url(server):
    assert f"triton://127.0.0.1:{server.port}" in server.ready_line
    assert "refiner-nobatch" in server.ready_line  # --batching both


def test_server_rejects_a_wrong_shape(server):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    config = client.get_model_config("refiner", as_json=True)["config"]
    inputs = []
    for spec in config["input"]:
        dims = [1, *(int(d) for d in spec["dims"])]
        if spec["name"] == "warped":
            dims[-1] -= 8  # a crop of the wrong size
        item = grpcclient.InferInput(spec["name"], dims, "FP32")
        item.set_data_from_numpy(np.zeros(dims, np.float32))
        inputs.append(item)
    with pytest.raises(grpcclient.InferenceServerException, match="unexpected shape"):
        client.infer("refiner", inputs)
    client.close()


def test_remote_frames_match_local_onnx(server, avatar):
    local_summary, local, _ = _render(avatar, "refiner", seconds=1.0)
    remote_summary_, remote, processor = _render(avatar, server.url, seconds=1.0)
    stats = remote_summary(processor.generators)
    assert len(remote) == len(local) == local_summary["frames"] == 30
    assert stats["remote_frames"] >= 25 and stats["warp_frames"] == 0  # frames with a face all went remote
    assert stats["provider"] == "CPUExecutionProvider"
    assert stats["rtt_ms"]["p50"] > 0
    diffs = [
        int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) for a, b in zip(local, remote, strict=True)
    ]
    assert max(diffs) <= MAX_ABS_DIFF, diffs
    # The refiner does change the picture: the remote frames are not simply the warp's.
    _, warped, _ = _render(avatar, "warp", seconds=1.0)
    assert (
        max(
            int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
            for a, b in zip(warped, remote, strict=True)
        )
        > 8
    )


def test_killed_server_falls_back_to_the_warp_and_a_restart_resumes(server, avatar):
    events: dict[str, int] = {}
    holder: dict = {}

    def on_frame(index: int) -> None:
        generator = holder["processor"].generators.for_mode(Mode.REENACT)
        assert isinstance(generator, TritonGenerator)
        if index == 15:
            events["remote_before_kill"] = generator.connection.stats.remote_frames
            server.kill()
        elif index == 30:
            events["warp_while_down"] = generator.connection.stats.summary()["warp_frames"]
            server.start()
            deadline = time.monotonic() + 15.0
            while not generator.connection.up and time.monotonic() < deadline:
                time.sleep(0.1)  # the reconnect thread's backoff is at most a few seconds here
            events["remote_at_restart"] = generator.connection.stats.remote_frames

    generators = build_generators(server.url, avatar, live=False)
    processor = FrameProcessor(avatar, generators, FaceTracker(), Controls(Mode.REENACT), Metrics(), SIZE)
    holder["processor"] = processor
    source = BuiltinDriverSource(320, 240, 30.0, seconds=2.0, paced=False, loop=False)
    sink = ListSink(on_frame)
    summary = render_offline(source, processor, [sink], fps=30.0, progress=False)
    images = sink.images
    stats = remote_summary(processor.generators)
    assert len(images) == summary["frames"] == 60  # the render completed
    assert events["remote_before_kill"] >= 10
    assert events["warp_while_down"] >= 10  # frames 16-30 were drawn with the warp
    assert stats["warp_frames"] == events["warp_while_down"]  # and none after the restart
    assert stats["warp_frames_by_reason"]["down"] == stats["warp_frames"]
    assert stats["remote_frames"] > events["remote_at_restart"] >= events["remote_before_kill"]
    assert stats["reconnects"] == 1 and stats["outages"] == 1
    assert summary["errors"] == {}  # a dead server is no generator error: the warp stands in


def test_unreachable_server_still_starts_with_the_warp():
    port = _free_port_triple()  # nothing listens there
    url = f"triton://127.0.0.1:{port}/refiner"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "realtime.cli",
            "bench",
            "--seconds",
            "2",
            "--generator",
            url,
            "--size",
            "320x240",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "unreachable" in line]
    assert len(warnings) == 1, result.stderr  # once, not per frame
    assert f"127.0.0.1:{port}" in warnings[0] and "drawing with the warp" in warnings[0]
    assert "0 frames remote" in result.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--host", "0.0.0.0"], "--expose"),
        (["bench", "--seconds", "1", "--generator", "triton://h/x"], "not a Triton address"),
        (["bench", "--seconds", "1", "--generator", "triton://h:1/x?deadline_ms=0"], "deadline_ms"),
    ],
)
def test_bad_serve_and_address_flags_are_one_line_errors(argv, message, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def _bench_clients(server, tmp_path, *extra: str) -> dict[str, dict]:
    out = tmp_path / "load.json"
    argv = ["bench", "--generator", server.url, "--seconds", "2", "--size", "320x240", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "realtime.cli", *argv, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {r["model"]: r for r in json.loads(out.read_text())["rounds"]}


def test_load_test_streams_report_rtt_latency_and_the_servers_batches(server, tmp_path):
    from realtime.bench_clients import metrics_url_for, read_counters

    before = read_counters(metrics_url_for(server.url), "refiner")
    row = _bench_clients(server, tmp_path, "--clients", "2")["refiner"]
    assert row["clients"] == 2 and row["failed_clients"] == []
    # Frames reach the sink in time only if the host gives the clients the CPU; answers come anyway.
    assert row["frames"] + row["deadline_misses"] > 0 and row["remote_frames"] > 0
    assert row["latency_ms"]["p95"] > 0 or row["frames"] == 0
    assert row["rtt_ms"]["p50"] > 0 and row["server_executions"] > 0 and row["server_mean_batch"] >= 1.0
    after = read_counters(metrics_url_for(server.url), "refiner")
    assert after["nv_inference_count"] - before["nv_inference_count"] >= row["remote_frames"]


def test_load_test_compares_batching_on_and_off_on_one_server(server, tmp_path):
    rounds = _bench_clients(server, tmp_path, "--clients", "4", "--server-only", "--compare-unbatched")
    assert set(rounds) == {"refiner", "refiner-nobatch"}
    for row in rounds.values():
        assert row["server_only"] and row["frames"] == 4 * 60
        assert row["remote_frames"] + row["warp_frames"] == row["frames"]  # every request accounted for
        assert row["server_executions"] > 0
    assert rounds["refiner-nobatch"]["server_mean_batch"] == 1.0  # batches of one
    assert rounds["refiner"]["server_mean_batch"] >= 1.0


def test_serve_on_a_busy_port_is_a_quick_one_line_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "realtime.cli", "serve", "--port", str(port), "--http-port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0], result.stderr
