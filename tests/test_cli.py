"""The command line as a user meets it: a subprocess, real files, real devices (or their absence).

Every bad input ends in exactly one line on stderr, ``realtime: error: ...``, a non-zero
exit code and no traceback; no native library may add lines of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli, write_astronaut_clip

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
CLIP = MEDIA / "clips" / "liveportrait_d0.mp4"
NO_FACE = MEDIA / "negatives" / "liveportrait_s39.jpg"


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    report = f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode != 0, report
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, report
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("realtime: error:"), report
    for text in expected:
        assert text in lines[0], report
    return lines[0]


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared media not available: {path}")
    return path


@pytest.fixture(scope="module")
def driver_video(tmp_path_factory) -> Path:
    return write_astronaut_clip(tmp_path_factory.mktemp("driver") / "driver.mp4", 12)


def no_outputs(folder: Path) -> bool:
    """Nothing written: no output file and no leftover ffmpeg temp file."""
    return not list(folder.glob("*.mp4")) and not list(folder.glob(".*part*"))


# --------------------------------------------------------------------------- bad avatars (render)


def test_missing_avatar(tmp_path, driver_video):
    proc = cli(
        "render",
        "--avatar",
        tmp_path / "nope.jpg",
        "--driver",
        driver_video,
        "--out",
        tmp_path / "o.mp4",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "avatar not found", "nope.jpg")
    assert no_outputs(tmp_path)


def test_corrupt_avatar(tmp_path, driver_video):
    avatar = tmp_path / "x.jpg"
    avatar.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    proc = cli(
        "render", "--avatar", avatar, "--driver", driver_video, "--out", tmp_path / "o.mp4", cwd=tmp_path
    )
    assert_one_line_error(proc, "could not be decoded", "x.jpg")
    assert no_outputs(tmp_path)


def test_empty_avatar(tmp_path, driver_video):
    avatar = tmp_path / "empty.png"
    avatar.write_bytes(b"")
    proc = cli(
        "render", "--avatar", avatar, "--driver", driver_video, "--out", tmp_path / "o.mp4", cwd=tmp_path
    )
    assert_one_line_error(proc, "empty")
    assert no_outputs(tmp_path)


def test_avatar_without_a_face(tmp_path, driver_video):
    proc = cli(
        "render",
        "--avatar",
        need(NO_FACE),
        "--driver",
        driver_video,
        "--out",
        tmp_path / "o.mp4",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "no face found")
    assert no_outputs(tmp_path)


# --------------------------------------------------------------------------- bad driving videos


def test_unreadable_driver_video(tmp_path):
    video = tmp_path / "broken.mp4"
    video.write_bytes(np.random.default_rng(2).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    proc = cli("render", "--avatar", "builtin", "--driver", video, "--out", tmp_path / "o.mp4", cwd=tmp_path)
    assert_one_line_error(proc, "broken.mp4")  # FFmpeg's own "moov atom not found" must not show
    assert not (tmp_path / "o.mp4").exists()


def test_missing_driver_video(tmp_path):
    proc = cli(
        "render",
        "--avatar",
        "builtin",
        "--driver",
        tmp_path / "gone.mp4",
        "--out",
        tmp_path / "o.mp4",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "not found", "gone.mp4")
    assert no_outputs(tmp_path)


# --------------------------------------------------------------------------- live devices and sinks


def test_camera_that_does_not_open(tmp_path):
    if Path("/dev/video7").exists():
        pytest.skip("this machine has a /dev/video7")
    proc = cli(
        "run", "--avatar", "builtin", "--camera", "7", "--sink", "null", "--seconds", "1", cwd=tmp_path
    )
    assert_one_line_error(proc, "camera 7")


def test_unknown_sink(tmp_path, driver_video):
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        driver_video,
        "--sink",
        "bogus",
        "--seconds",
        "1",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "bogus", "file:PATH")


def _no_v4l2_devices() -> None:
    if sys.platform != "linux":
        pytest.skip("the v4l2loopback hint is Linux's")
    if list(Path("/dev").glob("video*")):
        pytest.skip("this machine has video devices; v4l2loopback may be loaded")


def test_virtualcam_without_v4l2loopback_says_how_to_fix_it(tmp_path, driver_video):
    _no_v4l2_devices()
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        driver_video,
        "--sink",
        "virtualcam",
        "--seconds",
        "2",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "No virtual camera available", "modprobe v4l2loopback")


def test_a_sink_that_cannot_open_leaves_no_partial_file(tmp_path, driver_video):
    _no_v4l2_devices()
    out = tmp_path / "also.mp4"
    # The file sink opens (starts ffmpeg) first; the virtual camera then fails.
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        driver_video,
        "--sink",
        f"file:{out}",
        "--sink",
        "virtualcam",
        "--seconds",
        "2",
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("realtime: error: No virtual camera available"), proc.stderr
    assert no_outputs(tmp_path)  # ffmpeg stopped, its temp file removed


# --------------------------------------------------------------------------- bad generators


def _identity_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("text", "could not be loaded as ONNX"),
        ("checkpoint", "not an ONNX file"),
        ("wrong_inputs", "has inputs ['x']"),
        ("missing", "model not found"),
        ("unknown_name", "unknown generator"),
    ],
)
def test_bad_generator(tmp_path, driver_video, kind, expected):
    if kind == "text":
        model = tmp_path / "notes.onnx"
        model.write_text("this is not a model\n")
    elif kind == "checkpoint":
        model = tmp_path / "weights.onnx"  # a torch zip checkpoint renamed: never unpickled
        model.write_bytes(b"PK\x03\x04" + bytes(200))
    elif kind == "wrong_inputs":
        model = _identity_onnx(tmp_path / "identity.onnx")
    elif kind == "missing":
        model = tmp_path / "absent.onnx"
    else:
        model = "no_such_generator"
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        driver_video,
        "--sink",
        "null",
        "--seconds",
        "1",
        "--generator",
        model,
        cwd=tmp_path,
    )
    assert_one_line_error(proc, expected)


# --------------------------------------------------------------------------- commands that work


def test_devices_lists_the_cpu_provider(tmp_path):
    proc = cli("devices", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CPUExecutionProvider" in proc.stdout
    assert "Traceback" not in proc.stderr and not proc.stderr.strip(), proc.stderr


def test_run_on_a_clip_writes_consistent_metrics(tmp_path):
    metrics = tmp_path / "out.json"
    proc = cli(
        "run",
        "--avatar",
        "builtin",
        "--input",
        need(CLIP),
        "--sink",
        "null",
        "--seconds",
        "3",
        "--metrics-json",
        metrics,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr  # no native chatter, no warnings on a clean run
    data = json.loads(metrics.read_text())
    assert data["frames"] > 0 and data["frames"] <= data["captured"]
    latency = data["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert data["duration_s"] >= 2.9 and data["face_found_ratio"] > 0.5
    assert f"frames {data['frames']}" in proc.stdout
