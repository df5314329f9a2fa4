"""Train the audio-to-mouth model: log-mel features of the voice → lip and jaw motion.

The configuration is at the top (nanoGPT style): edit it, or override any field from the
command line (``python -m realtime.train.voice --steps 500 --out runs/voice``).

Model: a causal dilated 1-D convolution stack over log-mel frames (10 ms hop) whose output
at frame ``j`` is the mouth at ``frame_end(j) - LOOKAHEAD_S``: it hears at most 80 ms of the
future. It predicts a small PCA basis of the canonical mouth displacement
(``realtime.voice.mouth``); the basis, its mean and the feature normalisation are part of
the network, so the exported ONNX takes raw log-mel and gives (K, 2) offsets.

Data (``realtime.train.voice_data``): split by person; the checkpoint is chosen on the
selection people by mouth-opening correlation. Augmentation in the log-mel domain: random
gain, additive coloured noise and hum (filterbank energies of independent sources add),
and crops of noise alone whose target is the closed, neutral mouth.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from realtime.voice import features, mouth

logger = logging.getLogger(__name__)


# -- configuration --------------------------------------------------------------------------------
@dataclass
class VoiceConfig:
    # The defaults are the shipped model's run (weights/voice.json).
    cache: str = ".train_cache_voice"  # realtime.train.voice_data output
    out: str = "runs/voice"
    channels: int = 48
    dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1)
    components: int = 16  # PCA basis of the mouth displacement
    dropout: float = 0.3
    # The features also enter relative to their causal running mean over this many frames:
    # microphones and rooms differ in colour, the motion of speech does not.
    running_mean_frames: int = 150
    steps: int = 1200
    batch: int = 32
    crop_frames: int = 200  # 2 s of audio per sample
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-3
    opening_weight: float = 4.0  # extra loss on the inner-lip gap, the motion viewers judge
    correlation_weight: float = 0.5  # 1 - Pearson r of the gap per crop: its shape over time
    eq_db: float = 12.0  # random spectral tilt (± dB across the band) and ripple: other microphones
    warp: float = 0.12  # stretch the mel axis by up to ± this (vocal tract length): other speakers
    noise_only_p: float = 0.15  # crops of noise alone (target: closed mouth)
    noise_p: float = 0.6  # crops with noise added under the speech
    snr_db: tuple[float, float] = (0.0, 30.0)
    gain_db: tuple[float, float] = (-24.0, 12.0)
    eval_every: int = 100
    noise_seconds: float = 120.0  # of each kind of noise in the augmentation bank
    max_minutes: float = 12.0
    seed: int = 0
    threads: int = 1
    # Training clips whose loudness and mouth opening never agree (best correlation within
    # ±200 ms below this) are dubbed or out of sync: left out of training, never of evaluation.
    min_sync_r: float = 0.15
    # Crops are drawn in proportion to clip length to this power: below 1, the two long news
    # clips (2 min of the 5) stop drowning out the other 20-odd people.
    clip_weight_power: float = 1.0
    # Seconds of babble (``babble_voices`` voices at once, cut from the training clips) in the
    # noise bank: a crowd's chatter alone must not open
    # the mouth, and one voice over it must still drive it.
    babble_seconds: float = 0.0
    babble_voices: int = 6
    # Evaluate and keep an exponential moving average of the weights (0: off): with a few
    # minutes of speech the raw weights swing from step to step.
    ema_decay: float = 0.0
    stretch: float = 0.0  # time-stretch crops by up to ± this (speaking rate)
    # Start from this checkpoint (same architecture; its feature normalisation and PCA basis are
    # kept): fine-tuning with new augmentation costs a fraction of a fresh run.
    init: str = ""


LOOKAHEAD_S = 0.080  # the mouth at time t hears the voice up to t + 80 ms
RECEPTIVE_PAD = 2  # kernel 3: each layer looks (kernel - 1) · dilation frames back


def receptive_field(dilations: tuple[int, ...], running_mean_frames: int = 1) -> int:
    """Feature frames one output depends on."""
    return RECEPTIVE_PAD * (1 + sum(dilations)) + running_mean_frames


def target_time_s(index: np.ndarray) -> np.ndarray:
    """Time (s) of the mouth that output ``index`` predicts."""
    return features.frame_end_s(index) - LOOKAHEAD_S


# -- model ----------------------------------------------------------------------------------------
class CausalConv(nn.Conv1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0)))


class VoiceToMouth(nn.Module):
    """(batch, frames, N_MELS) raw log-mel → (batch, frames, K, 2) canonical mouth offsets."""

    def __init__(self, cfg: VoiceConfig, points: int = len(mouth.MOUTH_POINTS)) -> None:
        super().__init__()
        c = cfg.channels
        self.points = points
        self.register_buffer("mel_mean", torch.zeros(features.N_MELS))
        self.register_buffer("mel_std", torch.ones(features.N_MELS))
        self.register_buffer("basis", torch.zeros(cfg.components, points * 2))
        self.register_buffer("offset_mean", torch.zeros(points * 2))
        self.running = cfg.running_mean_frames
        self.inp = CausalConv(2 * features.N_MELS, c, 3)
        self.blocks = nn.ModuleList(CausalConv(c, c, 3, dilation=d) for d in cfg.dilations)
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Conv1d(c, cfg.components, 1)

    def coefficients(self, mel: torch.Tensor) -> torch.Tensor:
        x = ((mel - self.mel_mean) / self.mel_std).transpose(1, 2)
        # Causal running mean (zeros, the training mean, before the stream starts).
        mean = F.avg_pool1d(F.pad(x, (self.running - 1, 0)), self.running, stride=1)
        x = F.gelu(self.inp(torch.cat([x, x - mean], dim=1)))
        for block in self.blocks:
            x = x + self.drop(F.gelu(block(x)))
        return self.head(x).transpose(1, 2)  # (batch, frames, components)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        flat = self.coefficients(mel) @ self.basis + self.offset_mean
        return flat.reshape(mel.shape[0], mel.shape[1], self.points, 2)


# -- data -----------------------------------------------------------------------------------------
def clip_arrays(clip: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(log-mel (F, N_MELS), target offsets (F, K, 2), mask (F,)) of a cached clip."""
    mel = features.log_mel(clip["audio"])
    times = target_time_s(np.arange(len(mel)))
    offsets = clip["offsets"]
    video_t = np.arange(len(offsets)) / clip["fps"]
    valid = ~np.isnan(offsets[:, 0, 0])
    # Linear interpolation between the video frames around each target time, only where both
    # frames have a face.
    pos = np.clip(times * clip["fps"], 0, len(offsets) - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, len(offsets) - 1)
    w = (pos - lo)[:, None, None]
    target = np.nan_to_num(offsets[lo]) * (1 - w) + np.nan_to_num(offsets[hi]) * w
    mask = valid[lo] & valid[hi] & (times >= 0) & (times <= video_t[-1])
    return mel, target.astype(np.float32), mask


def sync_score(mel: np.ndarray, target: np.ndarray, mask: np.ndarray, max_lag: int = 20) -> float:
    """Best correlation of loudness and mouth opening over lags of ±``max_lag`` frames."""
    loud, gap = mel.mean(axis=1), mouth.opening(target)
    best = -1.0
    for lag in range(-max_lag, max_lag + 1, 2):
        a = loud[max(0, lag) : len(loud) + min(0, lag)]
        b = gap[max(0, -lag) : len(gap) - max(0, lag)]
        m = mask[max(0, -lag) : len(gap) - max(0, lag)]
        best = max(best, correlation(a[m], b[m]))
    return best


def babble(seconds: float, voices: list[np.ndarray], count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` voices at once, each a run of random cuts from ``voices`` at its own level."""
    n = int(seconds * features.RATE)
    usable = [v for v in voices if len(v) > features.RATE]
    mix = np.zeros(n)
    for _ in range(count if usable else 0):
        track, filled = np.zeros(n), 0
        while filled < n:
            voice = usable[rng.integers(len(usable))]
            start = rng.integers(0, len(voice) - features.RATE // 2)
            piece = voice[start : start + min(n - filled, int(rng.uniform(1.0, 4.0) * features.RATE))]
            track[filled : filled + len(piece)] = piece / (np.std(piece) + 1e-6)
            filled += len(piece)
        mix += track * 10 ** (rng.uniform(-6, 6) / 20)
    return mix


def noise_bank(
    seconds: float,
    rng: np.random.Generator,
    voices: list[np.ndarray] | None = None,
    babble_seconds: float = 0.0,
    babble_voices: int = 6,
) -> np.ndarray:
    """Log-mel of non-speech sounds: white, pink and brown noise, mains hum, fan rumble,
    each with a slowly varying level; and babble of ``voices`` when ``babble_seconds``."""
    n = int(seconds * features.RATE)
    spectrum_f = np.fft.rfftfreq(n, 1 / features.RATE)
    parts = []
    for exponent in (0.0, 1.0, 2.0, 0.5):  # white, pink, brown, in between
        shaped = np.fft.rfft(rng.standard_normal(n)) / np.maximum(spectrum_f, 20.0) ** (exponent / 2)
        parts.append(np.fft.irfft(shaped, n))
    t = np.arange(n) / features.RATE
    parts.append(sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6)) / k for k in range(1, 8)))
    if babble_seconds and voices:
        parts.append(babble(babble_seconds, voices, babble_voices, rng))
    banks = []
    for sig in parts:
        sig = sig / (np.std(sig) + 1e-9) * 0.1
        level = np.exp(np.cumsum(rng.standard_normal(len(sig))) * 2e-4)  # slow random level drift
        banks.append(features.log_mel(np.clip(sig * level / level.max(), -1, 1)))
    return np.concatenate(banks)


class Batches:
    """Random crops of the training clips with log-mel augmentation."""

    def __init__(
        self,
        clips: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
        noise: np.ndarray,
        cfg: VoiceConfig,
        seed: int,
    ) -> None:
        self.clips = [c for c in clips if len(c[0]) > cfg.crop_frames]
        self.weights = np.array([len(c[0]) for c in self.clips], dtype=np.float64) ** cfg.clip_weight_power
        self.weights /= self.weights.sum()
        self.noise = noise
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg, rng, n = self.cfg, self.rng, self.cfg.crop_frames
        mels, targets, masks = [], [], []
        floor = math.log(features.ENERGY_FLOOR)
        for _ in range(cfg.batch):
            mel, target, mask = self.clips[rng.choice(len(self.clips), p=self.weights)]
            # Speaking rate: read the crop from a span stretched by up to ± cfg.stretch (the
            # look-ahead in frames changes by a few ms at most).
            span = min(len(mel) - 1, int(round(n * (1 + rng.uniform(-cfg.stretch, cfg.stretch)))))
            start = rng.integers(0, len(mel) - span)
            if span == n:
                mel, target, mask = mel[start : start + n], target[start : start + n], mask[start : start + n]
            else:
                pos = start + np.arange(n) * (span - 1) / (n - 1)
                lo = np.floor(pos).astype(int)
                w = (pos - lo)[:, None]
                hi = np.minimum(lo + 1, len(mel) - 1)
                mel = mel[lo] * (1 - w) + mel[hi] * w
                target = target[lo] * (1 - w[:, :, None]) + target[hi] * w[:, :, None]
                mask = mask[lo] & mask[hi]
            mask = mask.copy()
            bins = np.linspace(-0.5, 0.5, features.N_MELS)
            eq_db = rng.uniform(-1, 1) * cfg.eq_db * bins + rng.uniform(-1, 1) * cfg.eq_db / 4 * np.cos(
                2 * np.pi * rng.uniform(0.5, 2.0) * bins + rng.uniform(0, 2 * np.pi)
            )
            if cfg.warp:
                # Formants move together with vocal tract length: resample the mel axis.
                source = np.clip(
                    np.arange(features.N_MELS) * (1 + rng.uniform(-cfg.warp, cfg.warp)),
                    0,
                    features.N_MELS - 1,
                )
                lo = np.minimum(np.floor(source).astype(int), features.N_MELS - 2)
                frac = source - lo
                mel = mel[:, lo] * (1 - frac) + mel[:, lo + 1] * frac
            speech = np.exp(mel + (rng.uniform(*cfg.gain_db) + eq_db) / 10 * math.log(10))
            draw = rng.random()
            if draw < cfg.noise_only_p + cfg.noise_p:
                ns = rng.integers(0, len(self.noise) - n)
                noise = np.exp(self.noise[ns : ns + n])
                speech_power = (
                    speech.mean() if draw >= cfg.noise_only_p else np.exp(self.noise[ns : ns + n]).mean() * 10
                )
                snr = 10 ** (rng.uniform(*cfg.snr_db) / 10)
                noise = noise / noise.mean() * speech_power / snr
                if draw < cfg.noise_only_p:
                    speech, target, mask = speech * 0, target * 0, np.ones_like(mask)
                speech = speech + noise
            mels.append(np.maximum(np.log(np.maximum(speech, 1e-30)), floor))
            targets.append(target)
            masks.append(mask)
        return (
            torch.from_numpy(np.stack(mels).astype(np.float32)),
            torch.from_numpy(np.stack(targets)),
            torch.from_numpy(np.stack(masks)),
        )


def pca_basis(targets: list[np.ndarray], masks: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    flat = np.concatenate([t[m].reshape(int(m.sum()), -1) for t, m in zip(targets, masks, strict=True)])
    mean = flat.mean(axis=0)
    _, sigma, vt = np.linalg.svd(flat - mean, full_matrices=False)
    explained = float((sigma[:k] ** 2).sum() / (sigma**2).sum())
    logger.info("PCA: %d components explain %.1f%% of the mouth motion", k, 100 * explained)
    return vt[:k].astype(np.float32), mean.astype(np.float32)


def masked_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean Pearson r over the rows of (batch, frames) where ``b`` varies."""
    m = mask.float()
    n = m.sum(dim=1).clamp(min=1)
    a_c = (a - (a * m).sum(1, keepdim=True) / n[:, None]) * m
    b_c = (b - (b * m).sum(1, keepdim=True) / n[:, None]) * m
    var_b = (b_c**2).sum(1)
    r = (a_c * b_c).sum(1) / ((a_c**2).sum(1).sqrt() * var_b.sqrt() + 1e-9)
    rows = var_b > 1e-6
    return r[rows].mean() if rows.any() else a.new_tensor(1.0)


# -- evaluation -----------------------------------------------------------------------------------
def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) < 1e-9 or np.std(b) < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@torch.no_grad()
def evaluate(
    model: VoiceToMouth,
    clips: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    gates: list[np.ndarray] | None = None,
) -> dict:
    """Mean over clips of the opening correlation and the offsets' RMS error (face sizes); with
    ``gates`` (per-frame ``SpeechGate`` weights of each clip) also the correlation of the gated
    mouth, the one the runtime shows."""
    model.eval()
    rs, errors, gated = [], [], []
    for i, (mel, target, mask) in enumerate(clips):
        pred = model(torch.from_numpy(mel)[None])[0].numpy()
        rs.append(correlation(mouth.opening(pred[mask]), mouth.opening(target[mask])))
        errors.append(float(np.sqrt(((pred[mask] - target[mask]) ** 2).mean())))
        if gates is not None:
            shown = mouth.opening(pred) * gates[i][: len(pred)]
            gated.append(correlation(shown[mask], mouth.opening(target[mask])))
    model.train()
    out = {"opening_r": float(np.nanmean(rs)), "rmse": float(np.mean(errors)), "per_clip_r": rs}
    if gates is not None:
        out["opening_r_gated"] = float(np.nanmean(gated))
    return out


# -- training -------------------------------------------------------------------------------------
def train(cfg: VoiceConfig, clips: list[dict] | None = None) -> dict:
    from realtime.train.voice_data import load

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    clips = clips if clips is not None else load(Path(cfg.cache))
    arrays = {c["name"]: clip_arrays(c) for c in clips}
    groups = {g: [c["name"] for c in clips if c["group"] == g] for g in ("train", "selection", "validation")}
    dropped = [n for n in groups["train"] if not sync_score(*arrays[n]) >= cfg.min_sync_r]
    if dropped:
        logger.info("left out of training (voice and lips disagree): %s", ", ".join(dropped))
    groups["train"] = [n for n in groups["train"] if n not in dropped]
    train_set = [arrays[n] for n in groups["train"]]
    selection = [arrays[n] for n in groups["selection"]]
    from realtime.voice.model import SpeechGate

    audio = {c["name"]: c["audio"] for c in clips}
    selection_gates = [SpeechGate()(audio[n]) for n in groups["selection"]]
    if not train_set or not selection:
        raise ValueError(
            f"need training and selection clips, got { ({g: len(v) for g, v in groups.items()}) }"
        )
    model = VoiceToMouth(cfg)
    mels = np.concatenate([a[0] for a in train_set])
    model.mel_mean.copy_(torch.from_numpy(mels.mean(axis=0)))
    model.mel_std.copy_(torch.from_numpy(mels.std(axis=0) + 1e-3))
    basis, mean = pca_basis([a[1] for a in train_set], [a[2] for a in train_set], cfg.components)
    model.basis.copy_(torch.from_numpy(basis))
    model.offset_mean.copy_(torch.from_numpy(mean))
    if cfg.init:
        model.load_state_dict(torch.load(cfg.init, map_location="cpu", weights_only=True)["model"])
    voices = []
    if cfg.babble_seconds:
        # Training people only: the evaluation's babble is mixed from the shared speech-only files.
        voices = [audio[n] for n in groups["train"]]
    noise = noise_bank(
        cfg.noise_seconds, np.random.default_rng(cfg.seed), voices, cfg.babble_seconds, cfg.babble_voices
    )
    batches = Batches(train_set, noise, cfg, cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    averaged = copy.deepcopy(model) if cfg.ema_decay else model
    t0 = time.time()
    best = {"opening_r": -1.0}
    log = []
    losses = []
    step = 0
    for step in range(1, cfg.steps + 1):
        lr = (
            cfg.lr
            * min(1.0, step / max(cfg.warmup_steps, 1))
            * 0.5
            * (1 + math.cos(math.pi * min(step / cfg.steps, 1.0)))
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        mel, target, mask = batches()
        pred = model(mel)
        err = ((pred - target) ** 2).mean(dim=(2, 3))
        pred_gap, target_gap = mouth.opening(pred), mouth.opening(target)
        gap = (pred_gap - target_gap) ** 2
        loss = ((err + cfg.opening_weight * gap) * mask).sum() / mask.sum().clamp(min=1) * 100.0
        if cfg.correlation_weight:
            loss = loss + cfg.correlation_weight * (1 - masked_correlation(pred_gap, target_gap, mask))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cfg.ema_decay:
            with torch.no_grad():
                for mine, ours in zip(averaged.parameters(), model.parameters(), strict=True):
                    mine.lerp_(ours, 1 - cfg.ema_decay)
        losses.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            scores = evaluate(averaged, selection, selection_gates)
            scores["train_r"] = evaluate(averaged, train_set)["opening_r"]
            entry = {
                "step": step,
                "loss": float(np.mean(losses[-cfg.eval_every :])),
                "minutes": round((time.time() - t0) / 60, 2),
            }
            entry.update({k: v for k, v in scores.items() if k != "per_clip_r"})
            entry["selection_r"] = [round(float(r), 3) for r in scores["per_clip_r"]]
            log.append(entry)
            logger.info("%s", entry)
            if scores["opening_r"] > best["opening_r"]:
                best = {**entry}
                torch.save(
                    {"model": averaged.state_dict(), "step": step, "config": json.dumps(asdict(cfg))},
                    out / "best.pt",
                )
        if cfg.max_minutes and (time.time() - t0) / 60 > cfg.max_minutes:
            logger.warning("time budget of %.1f min spent at step %d", cfg.max_minutes, step)
            break
    summary = {
        "steps": step,
        "dropped_out_of_sync": dropped,
        "best": best,
        "log": log,
        "first_loss": losses[0],
        "last_loss": float(np.mean(losses[-50:])),
        "groups": groups,
        "minutes": round((time.time() - t0) / 60, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_model(path: str | Path) -> VoiceToMouth:
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = VoiceConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(state["config"]).items()}
    )
    model = VoiceToMouth(cfg)
    model.load_state_dict(state["model"])
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description="train the audio-to-mouth model")
    for f in dataclasses.fields(VoiceConfig):
        kind = type(f.default)
        if kind is tuple:
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=lambda s: tuple(float(v) for v in s.split(",")),
                default=None,
            )
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    args = parser.parse_args()
    given = {k: v for k, v in vars(args).items() if v is not None}
    if "dilations" in given:
        given["dilations"] = tuple(int(v) for v in given["dilations"])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    summary = train(VoiceConfig(**given))
    print(json.dumps({k: v for k, v in summary.items() if k != "log"}, indent=1))


if __name__ == "__main__":
    main()
