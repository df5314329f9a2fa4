"""What every training loop here shares: the device, plain checkpoints, the time budget.

Checkpoints are dicts of state dicts plus ``step`` and the JSON ``config``, loaded with
``weights_only=True`` (never a pickle of code).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU; anything else as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def save_checkpoint(path: Path, cfg: Any, step: int, **parts: Any) -> None:
    """``parts``: modules and optimizers (their state dicts are saved) or plain values."""
    state = {name: part.state_dict() if hasattr(part, "state_dict") else part for name, part in parts.items()}
    torch.save({**state, "step": step, "config": json.dumps(asdict(cfg))}, path)


def resume_checkpoint(path: Path, device: torch.device, **parts: Any) -> int:
    """Load ``parts`` (modules and optimizers, by the names they were saved under) from
    ``path`` if it exists; the step to go on from (0 without a checkpoint)."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location=device, weights_only=True)
    for name, part in parts.items():
        part.load_state_dict(state[name])
    step = int(state["step"])
    logger.info("resumed at step %d", step)
    return step


class TimeBudget:
    """``max_minutes`` of training (0: no limit), counted from construction."""

    def __init__(self, max_minutes: float) -> None:
        self.max_s = max_minutes * 60.0
        self.t_start = time.time()

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.t_start

    def spent(self) -> bool:
        return bool(self.max_s) and self.elapsed_s > self.max_s

    def progress(self, step: int, steps: int) -> float:
        """How far the run is, 0 to 1: by steps, or by time when the time budget ends it
        sooner, so a learning-rate schedule still finishes in a run cut short by time."""
        done = step / max(steps, 1)
        if self.max_s:
            done = max(done, self.elapsed_s / self.max_s)
        return min(done, 1.0)
