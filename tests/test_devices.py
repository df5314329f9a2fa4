"""``realtime devices`` probes on this machine (no webcam, no v4l2loopback)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from realtime.devices import format_report, probe_devices


@pytest.fixture(scope="module")
def report():
    return probe_devices()


def test_probe_keys(report):
    assert set(report) >= {"platform", "cameras", "virtual_camera", "audio", "onnxruntime"}
    assert isinstance(report["cameras"]["devices"], list)
    assert isinstance(report["virtual_camera"]["backends"], list)
    assert "virtual_mic_hint" in report["audio"]
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]


def test_report_text(report):
    text = format_report(report)
    for heading in ("Cameras:", "Virtual camera:", "Audio:", "onnxruntime:"):
        assert heading in text
    assert "CPUExecutionProvider" in text
    if platform.system() == "Linux":
        assert "module-null-sink" in text
        if not any(Path("/dev").glob("video*")):
            assert "modprobe v4l2loopback" in text
            assert "none found" in text
    if report["audio"]["error"]:
        assert "fix:" in text


def test_report_survives_broken_probes():
    broken = {
        "platform": "X",
        "cameras": {"devices": [], "error": "boom"},
        "virtual_camera": {"backends": [], "ok": False, "error": "boom", "fix": "do it"},
        "audio": {"error": "PortAudio library not found", "fix": "sudo apt install libportaudio2"},
        "onnxruntime": {"error": "No module named 'onnxruntime'", "fix": "pip install 'realtime[cpu]'"},
    }
    text = format_report(broken)
    assert "libportaudio2" in text and "realtime[cpu]" in text and "do it" in text
    assert format_report({})
