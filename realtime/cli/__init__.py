"""Command line: parse the flags into a config, hand it to ``realtime.session``, print the result."""

from __future__ import annotations

import logging
import os
import sys

from realtime.cli.commands import (
    cmd_bench,
    cmd_demo,
    cmd_devices,
    cmd_enroll,
    cmd_eval,
    cmd_render,
    cmd_run,
    cmd_serve,
    cmd_train,
)
from realtime.cli.parser import build_parser
from realtime.errors import UserError

__all__ = ["build_parser", "main"]

COMMANDS = {
    "run": cmd_run,
    "render": cmd_render,
    "demo": cmd_demo,
    "devices": cmd_devices,
    "eval": cmd_eval,
    "bench": cmd_bench,
    "train": cmd_train,
    "enroll": cmd_enroll,
    "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    # mediapipe's native logging would otherwise bury our one-line errors.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # Nor may FFmpeg's (inside cv2.VideoCapture): "moov atom not found" on a corrupt video
    # would precede the one-line error. -8 is AV_LOG_QUIET; read when cv2 first opens a video.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"realtime: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything unexpected still ends in one line; --debug shows the trace
        if args.debug:
            raise
        print(
            f"realtime: internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1
