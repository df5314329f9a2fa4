"""The virtual camera that Zoom, Meet, OBS or a browser picks up, through pyvirtualcam."""

from __future__ import annotations

import logging
import platform

from realtime.errors import DeviceUnavailable, UserError
from realtime.frames import Output
from realtime.sinks.common import as_bgr, one_line
from realtime.stages import SinkBase

logger = logging.getLogger(__name__)

LINUX_VIRTUALCAM_FIX = (
    "sudo apt install v4l2loopback-dkms && "
    'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 video_nr=10 card_label="realtime"'
)
OTHER_VIRTUALCAM_FIX = "install OBS Studio (>= 26) and start its Virtual Camera once"


def virtualcam_fix(system: str | None = None) -> str:
    """The command or step that makes a virtual camera available on ``system``."""
    system = system or platform.system()
    if system == "Linux":
        return LINUX_VIRTUALCAM_FIX
    return OTHER_VIRTUALCAM_FIX


def platform_virtualcam_backends(system: str | None = None) -> list[str]:
    """pyvirtualcam's built-in backends for ``system``, in the order they are tried."""
    system = system or platform.system()
    if system == "Linux":
        return ["v4l2loopback"]
    if system == "Windows":
        return ["obs", "unitycapture"]
    if system == "Darwin":
        return ["obs"]
    return []


class VirtualCamSink(SinkBase):
    """Sends frames to a virtual camera through ``pyvirtualcam`` (BGR in, correct colours out)."""

    def __init__(self, backend: str | None = None, device: str | None = None) -> None:
        self.backend = backend
        self.device = device
        self.name = f"virtualcam:{backend}" if backend else "virtualcam"
        self.frames = 0
        self._cam: object | None = None
        self._size = (0, 0)

    @property
    def device_name(self) -> str | None:
        """The virtual camera device in use (e.g. ``/dev/video10``), ``None`` before ``open``."""
        if self._cam is None:
            return None
        return str(self._cam.device)  # type: ignore[attr-defined]

    def open(self, width: int, height: int, fps: float) -> None:
        import pyvirtualcam
        from pyvirtualcam.camera import BACKENDS

        if self.backend:
            if self.backend not in BACKENDS:
                known = ", ".join(sorted(BACKENDS)) or "none"
                raise UserError(
                    f"Unknown virtual camera backend '{self.backend}' (available here: {known}); "
                    f"use 'virtualcam' or 'virtualcam:<one of those>'."
                )
            names = [self.backend]
        else:
            # Only the platform's built-in backends: test backends registered in the same
            # process must never be picked up by a plain 'virtualcam'.
            names = [n for n in platform_virtualcam_backends() if n in BACKENDS]
        errors: list[str] = []
        for name in names:
            try:
                cam = pyvirtualcam.Camera(
                    int(width),
                    int(height),
                    float(fps),
                    fmt=pyvirtualcam.PixelFormat.BGR,
                    backend=name,
                    device=self.device,
                )
            except Exception as exc:  # backends raise RuntimeError, ValueError, OSError...
                errors.append(one_line(str(exc).replace(" See also pyvirtualcam's documentation.", ""), 160))
                continue
            self._cam = cam
            self._size = (int(width), int(height))
            logger.info(
                "virtual camera open: %s via %s, %dx%d @ %.2f fps", cam.device, name, width, height, fps
            )
            return
        detail = "; ".join(errors) if errors else f"no virtual camera backend on {platform.system()}"
        raise DeviceUnavailable(
            f"No virtual camera available ({one_line(detail, 200)}). Fix: {virtualcam_fix()}, then run again."
        )

    def send(self, out: Output) -> None:
        if self._cam is None:
            raise RuntimeError("VirtualCamSink.send() before open()")
        width, height = self._size
        self._cam.send(as_bgr(out.image, width, height))  # type: ignore[attr-defined]
        self.frames += 1

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.close()  # type: ignore[attr-defined]
            except Exception as exc:
                logger.warning("virtual camera close failed: %s", exc)
            logger.info("virtual camera closed after %d frames", self.frames)
