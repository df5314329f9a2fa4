"""What every training loop here shares: the device, plain checkpoints, the time budget.

Checkpoints are dicts of state dicts plus ``step`` and the JSON ``config``, loaded with
``weights_only=True`` (never a pickle of code).
"""

from __future__ import annotations

import json
import logging
import os
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
    """``parts``: modules and optimizers (their state dicts are saved) or plain values. Written
    under a temporary name, then renamed, so a reader copying it mid-run never gets half a file."""
    path = Path(path)
    state = {name: part.state_dict() if hasattr(part, "state_dict") else part for name, part in parts.items()}
    tmp = path.with_name(f".{path.name}.part")
    torch.save({**state, "step": step, "config": json.dumps(asdict(cfg))}, tmp)
    os.replace(tmp, path)


def resume_checkpoint(path: Path, device: torch.device, **parts: Any) -> int:
    """Load ``parts`` (modules and optimizers, by the names they were saved under) from
    ``path`` if it exists; the step to go on from (0 without a checkpoint). A compact
    checkpoint (weights only, as scripts/gpu_session.sh brings back) restarts the optimizers."""
    if not path.exists():
        return 0
    state = torch.load(path, map_location=device, weights_only=True)
    for name, part in parts.items():
        if name not in state and isinstance(part, torch.optim.Optimizer):
            logger.warning("%s holds no %s: it starts afresh", path, name)
            continue
        part.load_state_dict(state[name])
    step = int(state["step"])
    logger.info("resumed at step %d", step)
    return step


class TimeBudget:
    """``max_minutes`` of training (0: no limit), counted from construction, and never past
    ``deadline`` (Unix seconds; 0: none), so jobs sharing one time window stop together."""

    def __init__(self, max_minutes: float, deadline: float = 0.0) -> None:
        self.t_start = time.time()
        self.max_s = max_minutes * 60.0
        if deadline:
            left = max(deadline - self.t_start, 0.0)  # already past: spent at once
            self.max_s = min(self.max_s, left) if self.max_s else left
        self.limited = bool(max_minutes) or bool(deadline)

    @property
    def elapsed_s(self) -> float:
        return time.time() - self.t_start

    def spent(self) -> bool:
        return self.limited and self.elapsed_s >= self.max_s

    def progress(self, step: int, steps: int) -> float:
        """How far the run is, 0 to 1: by steps, or by time when the time budget ends it
        sooner, so a learning-rate schedule still finishes in a run cut short by time."""
        done = step / max(steps, 1)
        if self.limited:
            done = max(done, self.elapsed_s / max(self.max_s, 1e-9))
        return min(done, 1.0)


class CheckpointTimer:
    """Due every ``minutes`` of wall-clock time (0: never), so a job cut off from outside
    still leaves a recent checkpoint."""

    def __init__(self, minutes: float) -> None:
        self.period_s = minutes * 60.0
        self.last = time.time()

    def due(self) -> bool:
        return bool(self.period_s) and time.time() - self.last >= self.period_s

    def reset(self) -> None:
        self.last = time.time()
