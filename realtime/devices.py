"""``realtime devices``: what cameras, virtual cameras, audio devices and ONNX providers exist.

Every probe catches its own failures, so the report always prints.
"""

from __future__ import annotations

import logging
import os
import platform
from typing import Any

from realtime.audio import virtual_mic_setup
from realtime.sinks import one_line, platform_virtualcam_backends, virtualcam_fix

logger = logging.getLogger(__name__)

PORTAUDIO_FIX = {
    "Linux": "sudo apt install libportaudio2",
    "Darwin": "pip install --force-reinstall sounddevice",
    "Windows": "pip install --force-reinstall sounddevice",
}

VIRTUAL_MIC_HINT = {
    "Linux": (
        "pactl load-module module-null-sink sink_name=realtime_mic && "
        "pactl load-module module-remap-source master=realtime_mic.monitor source_name=realtime_mic_src "
        "(play into 'realtime_mic', pick 'realtime_mic_src' as the microphone in your call app)"
    ),
    "Windows": (
        "install VB-Cable (vb-audio.com/Cable): play into 'CABLE Input', "
        "pick 'CABLE Output' as the microphone in your call app"
    ),
    "Darwin": (
        "install BlackHole 2ch (brew install blackhole-2ch): play into 'BlackHole 2ch', "
        "pick it as the microphone in your call app"
    ),
}

ONNXRUNTIME_FIX = "pip install 'realtime[cpu]' (or 'realtime[gpu]' for CUDA)"


def probe_cameras(max_cameras: int = 4) -> dict[str, Any]:
    """Try ``cv2.VideoCapture(i)``; on Linux only for indices whose ``/dev/videoN`` exists."""
    result: dict[str, Any] = {"devices": [], "error": None}
    try:
        import cv2

        system = platform.system()
        indices = list(range(max_cameras))
        if system == "Linux":
            indices = [i for i in indices if os.path.exists(f"/dev/video{i}")]
        for i in indices:
            entry: dict[str, Any] = {"index": i, "opened": False, "frame": False, "width": 0, "height": 0}
            if system == "Linux":
                entry["path"] = f"/dev/video{i}"
            cap = None
            try:
                cap = cv2.VideoCapture(i)
                entry["opened"] = bool(cap.isOpened())
                if entry["opened"]:
                    entry["width"] = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
                    entry["height"] = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                    ok, frame = cap.read()
                    entry["frame"] = bool(ok and frame is not None)
                    if entry["frame"]:
                        entry["height"], entry["width"] = frame.shape[:2]
            except Exception as exc:
                entry["error"] = one_line(str(exc), 160)
            finally:
                if cap is not None:
                    try:
                        cap.release()
                    except Exception:
                        pass
            result["devices"].append(entry)
    except Exception as exc:
        result["error"] = one_line(str(exc), 200)
    return result


def probe_virtual_camera() -> dict[str, Any]:
    """Open and close a tiny ``pyvirtualcam.Camera`` on each of the platform's backends."""
    result: dict[str, Any] = {"backends": [], "ok": False, "fix": virtualcam_fix(), "error": None}
    try:
        import pyvirtualcam

        for name in platform_virtualcam_backends():
            entry: dict[str, Any] = {"backend": name, "ok": False, "device": None, "error": None}
            try:
                cam = pyvirtualcam.Camera(64, 48, 30, backend=name)
                try:
                    entry["device"] = str(cam.device)
                    entry["ok"] = True
                finally:
                    cam.close()
            except Exception as exc:
                entry["error"] = one_line(str(exc), 200)
            result["backends"].append(entry)
        result["ok"] = any(b["ok"] for b in result["backends"])
        if not result["backends"]:
            result["error"] = f"pyvirtualcam has no backend for {platform.system()}"
    except Exception as exc:
        result["error"] = one_line(f"{type(exc).__name__}: {exc}", 200)
    return result


def probe_audio() -> dict[str, Any]:
    """Audio devices through sounddevice (PortAudio), and a virtual-microphone hint."""
    system = platform.system()
    result: dict[str, Any] = {
        "devices": [],
        "default_input": None,
        "default_output": None,
        "error": None,
        "fix": None,
        "virtual_mic_hint": VIRTUAL_MIC_HINT.get(system, VIRTUAL_MIC_HINT["Linux"]),
        "virtual_mic_setup": {name: virtual_mic_setup(name) for name in ("Linux", "Windows", "Darwin")},
        "system": system,
    }
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio missing
        result["error"] = one_line(str(exc), 200)
        result["fix"] = PORTAUDIO_FIX.get(system, PORTAUDIO_FIX["Linux"])
        return result
    except Exception as exc:
        result["error"] = one_line(f"{type(exc).__name__}: {exc}", 200)
        result["fix"] = "pip install sounddevice"
        return result
    try:
        for i, dev in enumerate(sd.query_devices()):
            result["devices"].append(
                {
                    "index": i,
                    "name": str(dev.get("name", "")),
                    "inputs": int(dev.get("max_input_channels", 0)),
                    "outputs": int(dev.get("max_output_channels", 0)),
                }
            )
        default_in, default_out = sd.default.device
        result["default_input"] = int(default_in) if default_in is not None and default_in >= 0 else None
        result["default_output"] = int(default_out) if default_out is not None and default_out >= 0 else None
    except Exception as exc:
        result["error"] = one_line(f"{type(exc).__name__}: {exc}", 200)
    return result


def probe_onnxruntime() -> dict[str, Any]:
    """onnxruntime version and execution providers."""
    result: dict[str, Any] = {"version": None, "providers": [], "error": None, "fix": None}
    try:
        import onnxruntime as ort
    except Exception as exc:
        result["error"] = one_line(f"{type(exc).__name__}: {exc}", 200)
        result["fix"] = ONNXRUNTIME_FIX
        return result
    try:
        result["version"] = str(getattr(ort, "__version__", "unknown"))
        result["providers"] = list(ort.get_available_providers())
    except Exception as exc:
        result["error"] = one_line(f"{type(exc).__name__}: {exc}", 200)
    return result


def probe_devices(max_cameras: int = 4) -> dict[str, Any]:
    """Everything ``realtime devices`` reports, as plain data."""
    return {
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "cameras": probe_cameras(max_cameras),
        "virtual_camera": probe_virtual_camera(),
        "audio": probe_audio(),
        "onnxruntime": probe_onnxruntime(),
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable text for a ``probe_devices()`` result."""
    lines: list[str] = [f"Platform: {report.get('platform', platform.system())}", ""]

    cams = report.get("cameras") or {}
    lines.append("Cameras:")
    if cams.get("error"):
        lines.append(f"  probe failed: {cams['error']}")
    devices = cams.get("devices") or []
    if not devices and not cams.get("error"):
        lines.append("  none found (connect a webcam, or use a video file as input)")
    for d in devices:
        where = f" ({d['path']})" if d.get("path") else ""
        if d.get("error"):
            state = f"error: {d['error']}"
        elif not d.get("opened"):
            state = "cannot open (busy or not a capture device)"
        elif d.get("frame"):
            state = f"{d['width']}x{d['height']}, delivers frames"
        else:
            state = f"{d['width']}x{d['height']}, opened but no frame"
        lines.append(f"  [{d['index']}]{where} {state}")
    lines.append("")

    vcam = report.get("virtual_camera") or {}
    lines.append("Virtual camera:")
    if vcam.get("error"):
        lines.append(f"  probe failed: {vcam['error']}")
    for b in vcam.get("backends") or []:
        if b.get("ok"):
            lines.append(f"  {b['backend']}: ok ({b.get('device')})")
        else:
            lines.append(f"  {b['backend']}: unavailable: {b.get('error')}")
    if not vcam.get("ok"):
        lines.append(f"  fix: {vcam.get('fix') or virtualcam_fix()}")
    lines.append("")

    audio = report.get("audio") or {}
    lines.append("Audio:")
    if audio.get("error"):
        lines.append(f"  unavailable: {audio['error']}")
        if audio.get("fix"):
            lines.append(f"  fix: {audio['fix']}")
    default_in, default_out = audio.get("default_input"), audio.get("default_output")
    for d in audio.get("devices") or []:
        marks = []
        if d["index"] == default_in:
            marks.append("default input")
        if d["index"] == default_out:
            marks.append("default output")
        mark = f"  <- {', '.join(marks)}" if marks else ""
        lines.append(f"  [{d['index']}] {d['name']} (in {d['inputs']}, out {d['outputs']}){mark}")
    if not audio.get("error") and not audio.get("devices"):
        lines.append("  no audio devices")
    setup = audio.get("virtual_mic_setup") or {}
    if setup:
        # A/V-synced audio for calls: `realtime run ... --audio-in MIC --audio-out VIRTUAL_MIC`.
        here = audio.get("system") or platform.system()
        lines.append("  virtual microphone (for `realtime run --audio-in MIC --audio-out DEVICE`):")
        for name in sorted(setup, key=lambda n: n != here):
            label = {"Darwin": "macOS"}.get(name, name) + (" (this machine)" if name == here else "")
            steps = setup[name].splitlines()
            lines.append(f"    {label}: {steps[0]}")
            lines.extend(f"      {step.strip()}" for step in steps[1:])
    elif audio.get("virtual_mic_hint"):
        lines.append(f"  virtual microphone: {audio['virtual_mic_hint']}")
    lines.append("")

    ort = report.get("onnxruntime") or {}
    lines.append("onnxruntime:")
    if ort.get("version"):
        lines.append(f"  version {ort['version']}")
        lines.append(f"  providers: {', '.join(ort.get('providers') or []) or 'none'}")
    if ort.get("error"):
        lines.append(f"  unavailable: {ort['error']}")
    if ort.get("fix"):
        lines.append(f"  fix: {ort['fix']}")
    return "\n".join(lines)
