"""Runs a ``realtime`` command, or a benchmark script, with the warp's irises left in its eyes'
fan as before session 24 (``WarpGenerator(iris_layers=False)``), for before/after measurements
of the iris layers:

    python benchmarks/without_iris_layers.py eval --max-frames 150 --generator warp --data CLIP...
    python benchmarks/without_iris_layers.py benchmarks/swap_pairs.py --frames 150 --json OUT.json
"""

from __future__ import annotations

import runpy
import sys

from realtime.cli import main
from realtime.frames import Mode
from realtime.generators.warp import WarpGenerator

if __name__ == "__main__":
    WarpGenerator.__init__.__defaults__ = (Mode.REENACT, False)
    if sys.argv[1:] and sys.argv[1].endswith(".py"):
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")
    else:
        sys.exit(main(sys.argv[1:]))
