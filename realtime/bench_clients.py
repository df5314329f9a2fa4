"""`realtime bench --clients N --generator triton://...`: N paced streams against one Triton server.

Each client is a whole live stream in this process (its own tracker process, warp, crops,
blend, null sink and engine), all started together; the server's batch sizes come from its
Prometheus metrics endpoint, read before and after each round.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import replace

import numpy as np

from realtime.errors import UserError
from realtime.generators.remote import TritonConnection, is_remote, parse_address
from realtime.metrics import percentiles
from realtime.serve import UNBATCHED_SUFFIX
from realtime.session import CAMERA_SIZE, PipelineConfig, make_processor, make_source, stream

logger = logging.getLogger(__name__)

COUNTERS = (
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_success",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
)


def parse_clients(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(n < 1 or n > 64 for n in counts):
        raise UserError(f"--clients takes numbers from 1 to 64, e.g. 1,2,4,8,16; got {text!r}")
    return counts


def metrics_url_for(generator: str) -> str:
    """Triton's metrics port sits one above its gRPC port (``realtime serve``'s layout)."""
    address = parse_address(generator)
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"http://{host}:{address.port + 1}/metrics"


def read_counters(url: str, model: str) -> dict[str, float] | None:
    """The model's inference counters from Triton's metrics endpoint; None if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=10.0) as response:
            text = response.read().decode()
    except OSError as exc:
        logger.warning("Triton metrics %s unreachable (%s): no batch sizes", url, exc)
        return None
    counters: dict[str, float] = {}
    for name in COUNTERS:
        match = re.search(rf'^{name}{{model="{re.escape(model)}",version="1"}} ([0-9.e+]+)$', text, re.M)
        if match:
            counters[name] = float(match.group(1))
    return counters


def _round(config: PipelineConfig, clients: int, metrics_url: str | None) -> dict:
    """N streams at once for ``config.seconds``; their summaries merged."""
    size = config.size or CAMERA_SIZE
    model = parse_address(config.generator).model
    processors = [make_processor(config, size, size) for _ in range(clients)]
    summaries: list[dict | None] = [None] * clients
    failures: list[str] = []
    with ExitStack() as stack:
        for processor in processors:  # trackers and connections up before any clock starts
            stack.enter_context(processor)
        start = threading.Barrier(clients)
        sources = _sources(config, clients)

        def client(index: int) -> None:
            source = sources[index]
            fps = source.fps or 30.0
            budget_ms = config.budget_ms or 2000.0 / fps
            try:
                start.wait(timeout=120)
                summary, _ = stream(config, source, processors[index], [_null_sink()], fps, budget_ms)
                latency = np.asarray(processors[index].metrics.latency_ms)
                summary["late_frames"] = int(np.sum(latency > budget_ms))
                summary["deadline_misses"] = int(summary["dropped"]) + summary["late_frames"]
                summary["rtt_samples"] = np.asarray(
                    processors[index].generators.for_mode(config.mode).connection.stats.rtt_ms
                ).tolist()
                summary["latency_samples"] = latency.tolist()
                summaries[index] = summary
            except Exception as exc:  # one failed client is reported, the round goes on
                failures.append(f"client {index}: {exc}")

        before = read_counters(metrics_url, model) if metrics_url else None
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,), name=f"client{i}") for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - t0
        after = read_counters(metrics_url, model) if metrics_url else None
    done = [s for s in summaries if s is not None]
    if not done:
        raise UserError(f"no client finished: {'; '.join(failures)}")
    rtt = np.concatenate([np.asarray(s["rtt_samples"]) for s in done])
    latency = np.concatenate([np.asarray(s["latency_samples"]) for s in done])
    duration = float(np.mean([s["duration_s"] for s in done]))
    result = {
        "model": model,
        "clients": clients,
        "failed_clients": failures,
        "seconds": round(duration, 2),
        "frames": int(sum(s["frames"] for s in done)),
        "fps_per_client": round(float(np.mean([s["fps"] for s in done])), 2),
        "throughput_fps": round(sum(s["frames"] for s in done) / duration, 1) if duration else 0.0,
        "rtt_ms": percentiles(rtt),
        "latency_ms": percentiles(latency),
        "deadline_misses": int(sum(s["deadline_misses"] for s in done)),
        "remote_frames": int(sum(s["remote"]["remote_frames"] for s in done)),
        "warp_frames": int(sum(s["remote"]["warp_frames"] for s in done)),
        "warp_frames_by_reason": {
            reason: int(sum(s["remote"]["warp_frames_by_reason"][reason] for s in done))
            for reason in done[0]["remote"]["warp_frames_by_reason"]
        },
        "provider": done[0]["remote"]["provider"],
        "wall_s": round(wall, 1),
    }
    result["remote_fps"] = round(result["remote_frames"] / duration, 1) if duration else 0.0
    _add_batches(result, before, after)
    return result


def _sources(config: PipelineConfig, clients: int) -> list:
    """One source per client; the built-in driver's frames are drawn once, before any clock
    starts (each client would otherwise warp the same frames itself while being measured)."""
    from realtime.sources import BuiltinDriverSource

    sources = [make_source(config.source) for _ in range(clients)]
    first = sources[0]
    if isinstance(first, BuiltinDriverSource):
        frames = {i: first.render(i) for i in range(first.frame_count)}
        for source in sources:
            source._cache = dict(frames)
    return sources


def _null_sink():
    from realtime.sinks import make_sink

    return make_sink("null")


def _server_round(config: PipelineConfig, clients: int, metrics_url: str | None, fps: float) -> dict:
    """N paced request streams with the model's input shapes and nothing else: the server's
    capacity apart from the clients' CPU (no tracking, warp, crops or blend here). A conv net
    takes as long on random crops as on real ones."""
    address = parse_address(config.generator)
    connections = [TritonConnection(address) for _ in range(clients)]
    with ExitStack() as stack:
        for connection in connections:
            stack.enter_context(connection)
            if not connection.up:
                raise UserError(f"{address} does not answer; start `realtime serve` first")
        info = connections[0].info
        rng = np.random.default_rng(0)
        feeds = {name: rng.random(dims).astype(np.float32) for name, dims in info.inputs.items()}
        frames = max(1, int(round((config.seconds or 10.0) * fps)))
        start = threading.Barrier(clients)

        def client(connection: TritonConnection) -> None:
            start.wait(timeout=60)
            t0 = time.monotonic()
            for k in range(frames):
                delay = t0 + k / fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                connection.infer(feeds)

        before = read_counters(metrics_url, address.model) if metrics_url else None
        t0 = time.monotonic()
        threads = [
            threading.Thread(target=client, args=(c,), name=f"requests{i}") for i, c in enumerate(connections)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        duration = time.monotonic() - t0
        after = read_counters(metrics_url, address.model) if metrics_url else None
        stats = [c.stats.summary() for c in connections]
        rtt = np.concatenate([np.asarray(c.stats.rtt_ms) for c in connections])
        deadline_ms = connections[0].summary()["deadline_ms"]
    remote = sum(s["remote_frames"] for s in stats)
    warp = sum(s["warp_frames"] for s in stats)
    result = {
        "model": address.model,
        "clients": clients,
        "server_only": True,
        "deadline_ms": deadline_ms,
        "seconds": round(duration, 2),
        "frames": clients * frames,
        "fps_per_client": round(remote / duration / clients, 2),
        "throughput_fps": round(remote / duration, 1),
        "rtt_ms": percentiles(rtt),
        "latency_ms": percentiles([]),
        "deadline_misses": warp,
        "remote_frames": remote,
        "warp_frames": warp,
        "warp_frames_by_reason": {
            reason: int(sum(s["warp_frames_by_reason"][reason] for s in stats))
            for reason in stats[0]["warp_frames_by_reason"]
        },
        "provider": info.provider,
        "remote_fps": round(remote / duration, 1),
    }
    _add_batches(result, before, after)
    return result


def _add_batches(result: dict, before: dict | None, after: dict | None) -> None:
    if before and after and "nv_inference_exec_count" in after:
        executions = after["nv_inference_exec_count"] - before.get("nv_inference_exec_count", 0.0)
        inferences = after["nv_inference_count"] - before.get("nv_inference_count", 0.0)
        result["server_executions"] = int(executions)
        result["server_mean_batch"] = round(inferences / executions, 2) if executions else 0.0
        delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in COUNTERS}
        requests = delta["nv_inference_request_success"]
        # Triton's durations are cumulative per request (each request of a batch is charged the
        # whole run), so per request they give the queue wait and the time of the run it was in.
        result["server_queue_ms"] = (
            round(delta["nv_inference_queue_duration_us"] / requests / 1000, 2) if requests else 0.0
        )
        result["server_compute_ms"] = (
            round(delta["nv_inference_compute_infer_duration_us"] / inferences / 1000, 2)
            if inferences
            else 0.0
        )


def run_load(
    config: PipelineConfig,
    counts: list[int],
    compare_unbatched: bool,
    metrics_url: str | None,
    server_only: bool = False,
) -> list[dict]:
    """Every client count against the model, then (``compare_unbatched``) against NAME-nobatch."""
    if not is_remote(config.generator):
        raise UserError("--clients load-tests a server: give --generator triton://HOST:PORT/NAME")
    metrics_url = metrics_url or metrics_url_for(config.generator)
    generators = [config.generator]
    if compare_unbatched:
        generators.append(_unbatched(config.generator))
    rows = []
    for generator in generators:
        for clients in counts:
            logger.info("load test: %d clients on %s", clients, generator)
            if server_only:
                fps = config.source.fps or 30.0
                rows.append(_server_round(replace(config, generator=generator), clients, metrics_url, fps))
            else:
                rows.append(_round(replace(config, generator=generator), clients, metrics_url))
    return rows


def _unbatched(generator: str) -> str:
    head, _, query = generator.partition("?")
    return head.rstrip("/") + UNBATCHED_SUFFIX + (f"?{query}" if query else "")


def format_load_table(rows: list[dict]) -> str:
    lines = [
        f"{'model':<18}{'clients':>8}{'rtt p50':>9}{'rtt p95':>9}{'lat p95':>9}{'misses':>8}{'warp':>7}"
        f"{'batch':>7}{'run ms':>8}{'queue ms':>9}{'fps/cl':>8}{'total fps':>10}{'remote fps':>11}"
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<18}{r['clients']:>8}{r['rtt_ms']['p50']:>9.1f}{r['rtt_ms']['p95']:>9.1f}"
            f"{'-' if r.get('server_only') else format(r['latency_ms']['p95'], '.1f'):>9}"
            f"{r['deadline_misses']:>8}{r['warp_frames']:>7}"
            f"{r.get('server_mean_batch', float('nan')):>7.2f}{r.get('server_compute_ms', float('nan')):>8.1f}"
            f"{r.get('server_queue_ms', float('nan')):>9.1f}{r['fps_per_client']:>8.1f}"
            f"{r['throughput_fps']:>10.1f}{r['remote_fps']:>11.1f}"
        )
    return "\n".join(lines)
