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
    """How much of the model's mouth to show per feature frame (causal): speech, not silence
    or noise.

    Two tests, both needed: WebRTC's voice activity detector (aggressive mode) on the last
    10 ms of each frame, held open for a moment (``release`` per frame), rejects breaths,
    clicks and hum; the level over the noise floor (the lowest of the last ``floor_s``,
    minimum statistics), opening over ``open_db`` from ``margin_db``, rejects steady noise
    the detector takes for a voice (a loud hiss). Under SILENCE_DBFS it is shut. State carries
    across calls, so a stream fed block by block gets the whole recording's weights.
    """

    def __init__(
        self,
        margin_db: float = 3.0,
        open_db: float = 12.0,
        floor_s: float = 1.5,
        vad_mode: int = 3,
        attack: float = 0.5,
        release: float = 0.1,
    ) -> None:
        from collections import deque

        import webrtcvad

        self.margin_db, self.open_db = margin_db, open_db
        self.attack, self.release = attack, release
        self._vad = webrtcvad.Vad(vad_mode)
        self._recent: deque[float] = deque(maxlen=max(1, int(floor_s / features.HOP_S)))
        self._voice = 0.0

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Weights of the feature frames of ``samples`` (framed as ``features.log_mel``)."""
        samples = np.asarray(samples, dtype=np.float64)
        if len(samples) < features.WINDOW:
            return np.zeros(0, np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(samples, features.WINDOW)[:: features.HOP]
        levels = 10 * np.log10(np.mean(windows**2, axis=1) + 1e-12)
        pcm = (np.clip(windows[:, -features.HOP :], -1, 1) * 32767).astype(np.int16)
        weights = np.zeros(len(windows), np.float32)
        for i, level in enumerate(levels):
            level = float(level)
            self._recent.append(max(level, SILENCE_DBFS - 10.0))
            loud = np.clip((level - min(self._recent) - self.margin_db) / self.open_db, 0, 1)
            speech = 1.0 if self._vad.is_speech(pcm[i].tobytes(), features.RATE) else 0.0
            self._voice += (speech - self._voice) * (self.attack if speech > self._voice else self.release)
            weights[i] = 0.0 if level < SILENCE_DBFS else min(float(loud), self._voice)
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
        weights = SpeechGate()(samples)
        return times, self.run(mel) * weights[:, None, None]

    def at(self, frame_times: np.ndarray, times: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Offsets at ``frame_times`` (s), linearly interpolated; closed before the first output."""
        flat = offsets.reshape(len(offsets), -1)
        out = np.stack(
            [np.interp(frame_times, times, flat[:, i], left=0.0, right=0.0) for i in range(flat.shape[1])],
            axis=1,
        )
        return out.reshape(len(frame_times), *offsets.shape[1:]).astype(np.float32)
