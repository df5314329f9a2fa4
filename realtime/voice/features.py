"""Log-mel filterbank features of the voice (python_speech_features' framing and filterbank).

One function serves training, offline rendering and the live audio thread, so the model
always sees the same features. A feature frame ``j`` covers samples ``[j·HOP, j·HOP + WINDOW)``.
"""

from __future__ import annotations

import numpy as np

RATE = 16000
WINDOW_S = 0.025
HOP_S = 0.010
HOP = int(RATE * HOP_S)
WINDOW = int(RATE * WINDOW_S)
N_MELS = 40
N_FFT = 512
# Floor of the filterbank energies: digital silence and a quiet room look alike (-60 dB re full scale).
ENERGY_FLOOR = 1e-6


def log_mel(samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """(frames, N_MELS) float32 log filterbank energies of mono ``samples`` at ``rate`` (= RATE)."""
    from python_speech_features import fbank

    if rate != RATE:
        raise ValueError(f"features need {RATE} Hz audio, got {rate}")
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < WINDOW:
        return np.zeros((0, N_MELS), dtype=np.float32)
    # Only whole frames: a block of audio and the same audio inside a longer stream give the
    # same rows (python_speech_features zero-pads a partial last frame).
    frames = 1 + (len(samples) - WINDOW) // HOP
    samples = samples[: (frames - 1) * HOP + WINDOW]
    energies, _ = fbank(
        samples,
        samplerate=RATE,
        winlen=WINDOW_S,
        winstep=HOP_S,
        nfilt=N_MELS,
        nfft=N_FFT,
        lowfreq=60,
        highfreq=7600,
        preemph=0.97,
        winfunc=np.hamming,
    )
    return np.log(np.maximum(energies, ENERGY_FLOOR)).astype(np.float32)


def frame_end_s(index: np.ndarray | int) -> np.ndarray | float:
    """Time (s from the audio's start) at which feature frame ``index`` is complete."""
    return np.asarray(index) * HOP_S + WINDOW_S


def frame_level_db(samples: np.ndarray) -> np.ndarray:
    """(frames,) level in dB re full scale of each feature frame's samples (same framing as
    ``log_mel``)."""
    samples = np.asarray(samples, dtype=np.float64)
    if len(samples) < WINDOW:
        return np.zeros(0, dtype=np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(samples, WINDOW)[::HOP]
    return (10 * np.log10(np.mean(windows**2, axis=1) + 1e-12)).astype(np.float32)
