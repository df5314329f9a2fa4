"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


def one_line(text: str, limit: int = 200) -> str:
    """Collapse ``text`` to one line of at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class UserError(Exception):
    """Bad input or an unavailable device: print ``str(exc)`` only, never a traceback."""

    exit_code = 2


class DeviceUnavailable(UserError):
    """A camera, virtual camera or audio device that cannot be opened."""

    exit_code = 3
