"""The audio-to-mouth model in the runtime: ONNX through ``OnnxRunner``, no torch.

Input ``mel`` (1, frames, N_MELS) raw log-mel (``realtime.voice.features``); output
``mouth`` (1, frames, K, 2): canonical offsets of ``realtime.voice.mouth.MOUTH_POINTS`` from
the neutral. Output ``j`` is the mouth at ``frame_end(j) - lookahead_s``. The model is causal,
so a window of ``receptive_field`` frames gives the same last output as the whole stream.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from realtime.errors import UserError
from realtime.generators.registry import weights_dir
from realtime.stages import Stage
from realtime.voice import features, mouth

logger = logging.getLogger(__name__)

MODEL_NAME = "voice"
IN_MEL, OUT_MOUTH = "mel", "mouth"
# Below this level (dB re full scale, per 10 ms) a frame is silence: the mouth rests closed
# whatever the model says.
SILENCE_DBFS = -55.0


class SpeechGate:
    """How much of the model's mouth to show per feature frame, from its level (causal).

    A room's steady noise (a fan, a hiss, a quiet hum) is not speech: the gate follows the
    noise floor (down at once, up by ``rise_db_per_s``) and opens over ``open_db`` above
    ``margin_db`` above it; under SILENCE_DBFS it is shut. State carries across calls, so a
    stream fed block by block gets the same weights as the whole recording.
    """

    def __init__(self, margin_db: float = 8.0, open_db: float = 12.0, rise_db_per_s: float = 3.0) -> None:
        self.margin_db, self.open_db = margin_db, open_db
        self.rise = rise_db_per_s * features.HOP_S
        self._floor: float | None = None

    def __call__(self, level_db: np.ndarray) -> np.ndarray:
        weights = np.zeros(len(level_db), np.float32)
        floor = self._floor
        for i, level in enumerate(level_db):
            level = float(level)
            floor = level if floor is None or level < floor else floor + self.rise
            weights[i] = (
                0.0
                if level < SILENCE_DBFS
                else np.clip((level - floor - self.margin_db) / self.open_db, 0, 1)
            )
        self._floor = floor
        return weights


def default_model_path() -> Path:
    return weights_dir() / f"{MODEL_NAME}.onnx"


class VoiceMouthModel(Stage):
    """``offsets(samples) -> (times_s, (frames, K, 2))`` for a whole recording;
    ``at(times, ...)`` samples them at video frame times."""

    def __init__(self, path: str | Path | None = None, providers: list[str] | None = None) -> None:
        self.path = Path(path) if path else default_model_path()
        self.providers = providers or ["CPUExecutionProvider"]
        self._runner = None
        card_path = self.path.with_suffix(".json")
        if not self.path.exists():
            raise UserError(
                f"voice model not found: {self.path} (train and export it: python -m export.voice)"
            )
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        self.lookahead_s = float(card.get("lookahead_s", 0.08))
        self.receptive_field = int(card.get("receptive_field", 128))
        points = tuple(card.get("points", mouth.MOUTH_POINTS))
        if points != mouth.MOUTH_POINTS:
            raise UserError(f"voice model {self.path} moves other mouth points than this version of realtime")

    def open(self) -> VoiceMouthModel:
        if self._runner is None:
            from realtime.generators.onnx import OnnxRunner

            self._runner = OnnxRunner(str(self.path), self.providers, threads=1, warmup=0)
        return self

    def close(self) -> None:
        self._runner = None

    @property
    def provider(self) -> str:
        return self.open()._runner.provider

    def run(self, mel: np.ndarray) -> np.ndarray:
        """(frames, K, 2) offsets for (frames, N_MELS) log-mel, as the model gives them."""
        if len(mel) == 0:
            return np.zeros((0, len(mouth.MOUTH_POINTS), 2), np.float32)
        return self.open()._runner.run({IN_MEL: mel[None].astype(np.float32)})[OUT_MOUTH][0]

    def offsets(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(target times in s, offsets) for mono ``features.RATE`` audio, gated by ``SpeechGate``."""
        mel = features.log_mel(samples)
        times = features.frame_end_s(np.arange(len(mel))) - self.lookahead_s
        weights = SpeechGate()(features.frame_level_db(samples))
        return times, self.run(mel) * weights[:, None, None]

    def at(self, frame_times: np.ndarray, times: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Offsets at ``frame_times`` (s), linearly interpolated; closed before the first output."""
        flat = offsets.reshape(len(offsets), -1)
        out = np.stack(
            [np.interp(frame_times, times, flat[:, i], left=0.0, right=0.0) for i in range(flat.shape[1])],
            axis=1,
        )
        return out.reshape(len(frame_times), *offsets.shape[1:]).astype(np.float32)
