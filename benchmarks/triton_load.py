"""Load test: one `realtime serve` (batching on and off, same server) against 1-16 paced clients.

    python benchmarks/triton_load.py [--clients 1,2,4,8,16] [--seconds 10] [--size 640x480]

Starts `realtime serve --batching both` on free loopback ports and runs against it, twice:
`realtime bench --clients ... --compare-unbatched` (whole live streams: tracker, warp, crops,
blend) and the same with `--server-only` (only the model's inputs, paced: the server apart
from the clients' CPU). Writes benchmarks/results/triton_load.json and prints both tables.
On one machine the server and every client share the CPU: say so wherever the numbers are quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    """A port with both neighbours free (Triton's HTTP below, metrics above)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            for candidate in (port - 1, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue
    raise RuntimeError("no free ports")


def start_server(port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "realtime.cli", "serve", "--port", str(port), "--batching", "both", *extra]
    print("$", " ".join(cmd[2:]), flush=True)
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if "ready at" in line:
            print(line.strip(), flush=True)
            return server
        if not line and server.poll() is not None:
            break
    os.killpg(server.pid, signal.SIGKILL)
    raise RuntimeError("the server did not start")


def calibrate() -> dict:
    """The model's own time on this host right now (in-process, no server): a busy host's
    numbers can be read against it. Medians of 10 runs after one warm-up."""
    import numpy as np

    from realtime.generators.registry import shipped_models
    from realtime.serve import StackedRunner

    runner = StackedRunner(shipped_models()["refiner"]["path"])
    rng = np.random.default_rng(0)
    result = {}
    for batch in (1, 4, 8):
        frames = {n: rng.random((batch, *s)).astype(np.float32) for n, s in runner.inputs.items()}
        runner(frames)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            runner(frames)
            times.append((time.perf_counter() - t0) * 1000.0)
        result[f"batch{batch}_ms"] = round(float(np.median(times)), 1)
    runner.close()
    with open("/proc/loadavg") as f:
        result["loadavg"] = f.read().split()[:3]
    print(f"calibration (model alone, in-process): {result}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--out", default=str(HERE / "results" / "triton_load.json"))
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `realtime serve` flag")
    args = parser.parse_args()
    port = free_port()
    server = start_server(port, args.serve_arg)
    result: dict = {
        "server": {"batching": "both", "extra": args.serve_arg},
        "calibration_before": calibrate(),
    }
    try:
        for kind, extra in (("streams", []), ("server_only", ["--server-only"])):
            part = Path(args.out).with_suffix(f".{kind}.json")
            cmd = [
                sys.executable,
                "-m",
                "realtime.cli",
                "bench",
                "--generator",
                f"triton://127.0.0.1:{port}/refiner",
                "--clients",
                args.clients,
                "--compare-unbatched",
                "--seconds",
                str(args.seconds),
                "--size",
                args.size,
                *extra,
                "--json",
                str(part),
            ]
            print("$", " ".join(cmd[2:]), flush=True)
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            print(proc.stdout, flush=True)
            if proc.returncode != 0:
                return proc.returncode
            result[kind] = json.loads(part.read_text())
            part.unlink()
            with open("/proc/loadavg") as f:
                result[kind]["loadavg_after"] = f.read().split()[:3]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
    result["calibration_after"] = calibrate()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"json: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
