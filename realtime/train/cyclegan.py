"""Identity models for swap mode: CycleGAN / Recycle-GAN face-to-face translation.

    realtime train swap --a VIDEO_OR_DIR... --b VIDEO_OR_DIR... --out runs/NAME [--recycle]

Two people, A (the user) and B (who they become), no paired frames. Both are cached with
the refiner's clip caches (every frame, tracked by the engine's own mediapipe tracker) and
aligned with the runtime's ``alignment``/``CropSpec``, so training crops are exactly what
the live generator will feed the model. The last ``holdout`` fraction of every video's
frames is never trained on: evaluation (``benchmarks/swap_eval.py``) uses them.

- CycleGAN: generators A→B and B→A (ResNet: 2 down, residual blocks, 2 up), one 2-scale
  patch discriminator per domain (the refiner's, its landmark channel left blank), hinge
  adversarial loss, cycle and identity L1.
- Recycle-GAN (``--recycle``): adds temporal predictors P_A, P_B (frame t+1 from t-1, t)
  trained on consecutive triplets with the recurrent loss, and the recycle loss
  ``x_{t+1} ≈ G_BA(P_B(G_AB(x_{t-1}), G_AB(x_t)))`` (both directions), which penalises
  translations that don't move consistently over time.

Same loop style as the refiner: configuration in ``config.SwapConfig``, data in memory,
plain state-dict checkpoints (``weights_only=True``) and resume, tqdm, sample grids. Training
ends with ``translator.pt``; the caller exports it to ONNX with a parity check and a model
card (``realtime.export.translator.export_run``), so training never imports the exporter.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from realtime.crops import CropSpec, alignment, landmark_map
from realtime.train import models
from realtime.train.config import SwapConfig as Config
from realtime.train.data import ClipCache
from realtime.train.refiner import collect_caches
from realtime.train.runs import CheckpointTimer, TimeBudget, pick_device, resume_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)


# -- models ----------------------------------------------------------------------------
def _norm_act(ch: int) -> list[nn.Module]:
    return [nn.InstanceNorm2d(ch, affine=True), nn.ReLU(inplace=True)]


class _ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            *_norm_act(ch),
            nn.ReflectionPad2d(1),
            nn.Conv2d(ch, ch, 3),
            nn.InstanceNorm2d(ch, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN's ResNet generator, small: RGB [0, 1] in, RGB [0, 1] out.

    Upsampling is bilinear + conv (no transposed-conv checkerboards). ``in_ch`` > 3 is
    used by the temporal predictor (two frames stacked); with ``residual_from`` set, the
    output is a correction of that input frame.
    """

    def __init__(
        self,
        in_ch: int = 3,
        width: int = 32,
        n_down: int = 2,
        n_res: int = 4,
        residual_from: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, width, 7), *_norm_act(width)]
        ch = width
        for _ in range(n_down):
            layers += [nn.Conv2d(ch, ch * 2, 3, 2, 1), *_norm_act(ch * 2)]
            ch *= 2
        layers += [_ResBlock(ch) for _ in range(n_res)]
        for _ in range(n_down):
            layers += [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(ch, ch // 2, 3, 1, 1),
                *_norm_act(ch // 2),
            ]
            ch //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ch, 3, 7)]
        self.net = nn.Sequential(*layers)
        self.residual_from = residual_from

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x * 2.0 - 1.0)
        if self.residual_from is None:
            return (torch.tanh(out) + 1.0) * 0.5
        base = x[:, self.residual_from * 3 : self.residual_from * 3 + 3]
        return torch.clamp(base + torch.tanh(out), 0.0, 1.0)


def make_generator(cfg: Config) -> ResnetGenerator:
    return ResnetGenerator(3, cfg.width, cfg.n_down, cfg.n_res)


def make_predictor(cfg: Config) -> ResnetGenerator:
    """Recycle-GAN's temporal predictor: (x_{t-1}, x_t) → x_{t+1}, as a change of x_t."""
    return ResnetGenerator(6, cfg.pred_width, 2, 2, residual_from=1)


# -- data ------------------------------------------------------------------------------
@dataclass
class FaceSet:
    """Aligned face crops of one identity (RGB float-ready uint8, NHWC), their landmark maps,
    and where consecutive triplets start; training and held-out frames apart."""

    crops: np.ndarray  # (N, S, S, 3) uint8 RGB
    marks: np.ndarray  # (N, S, S) uint8 landmark maps
    triplets: np.ndarray  # positions k with k, k+1, k+2 consecutive video frames
    held_crops: np.ndarray
    held_marks: np.ndarray
    clips: list[dict]  # per clip: name, frames cached, cut (first held-out frame index)


def align_cache(clip: ClipCache, spec: CropSpec) -> tuple[np.ndarray, np.ndarray]:
    """Every cached frame as an aligned RGB crop plus its landmark map (runtime alignment)."""
    crops, marks = [], []
    for image, lm in zip(clip.images, clip.landmarks, strict=True):
        matrix = alignment(lm, spec)
        crop = cv2.warpAffine(
            image, matrix, (spec.size, spec.size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
        )
        points = lm[:, :2] @ matrix[:, :2].T + matrix[:, 2]
        crops.append(crop[:, :, ::-1])
        marks.append((landmark_map(points, spec.size)[0, 0] * 255).astype(np.uint8))
    return np.stack(crops), np.stack(marks)


def load_faces(caches: list[Path], spec: CropSpec, holdout: float) -> FaceSet:
    crops, marks, held_c, held_m, triplets, clips = [], [], [], [], [], []
    offset = 0
    for path in caches:
        clip = ClipCache.load(path)
        c, m = align_cache(clip, spec)
        index = clip.frame_index.astype(int)
        cut = (
            int(math.floor((int(index.max()) + 1) * (1.0 - holdout))) if holdout > 0 else int(index.max()) + 1
        )
        train = index < cut
        if train.sum() == 0:  # a still or a very short clip: keep it for training
            train[:] = True
        tr_index = index[train]
        crops.append(c[train])
        marks.append(m[train])
        held_c.append(c[~train])
        held_m.append(m[~train])
        starts = [
            k
            for k in range(len(tr_index) - 2)
            if tr_index[k + 1] == tr_index[k] + 1 and tr_index[k + 2] == tr_index[k] + 2
        ]
        triplets.append(np.array(starts, dtype=np.int64) + offset)
        offset += int(train.sum())
        clips.append(
            {
                "clip": clip.name,
                "frames": len(index),
                "train_frames": int(train.sum()),
                "held_out_frames": int((~train).sum()),
                "cut": cut,
            }
        )
    size = spec.size
    cat = lambda xs, shape: np.concatenate(xs) if xs else np.zeros((0, *shape), np.uint8)  # noqa: E731
    return FaceSet(
        cat(crops, (size, size, 3)),
        cat(marks, (size, size)),
        np.concatenate(triplets),
        cat(held_c, (size, size, 3)),
        cat(held_m, (size, size)),
        clips,
    )


def faces_for(inputs: list[str], cache_dir: Path, cfg: Config) -> FaceSet:
    caches = collect_caches(inputs, cache_dir, cfg.cache_frames)
    if not caches:
        raise SystemExit(f"no usable faces in {inputs}")
    return load_faces(caches, CropSpec(cfg.size, cfg.face_scale), cfg.holdout)


def _to_tensor(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255.0


def batch_of(
    faces: FaceSet, idx: np.ndarray, flip: torch.Tensor, device: torch.device, frames: int = 1
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``frames`` consecutive crops from each start in ``idx`` (one random flip per sample)."""
    images, marks = [], []
    f = flip.to(device)[:, None, None, None]
    for k in range(frames):
        img = _to_tensor(faces.crops[idx + k], device)
        mark = torch.from_numpy(faces.marks[idx + k]).to(device)[:, None].float() / 255.0
        images.append(torch.where(f, img.flip(-1), img))
        marks.append(torch.where(f, mark.flip(-1), mark))
    return images, marks


# -- training --------------------------------------------------------------------------
class Nets(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.g_ab, self.g_ba = make_generator(cfg), make_generator(cfg)
        self.d_a = models.MultiScaleDiscriminator(cfg.disc_scales, cfg.disc_width)
        self.d_b = models.MultiScaleDiscriminator(cfg.disc_scales, cfg.disc_width)
        if cfg.recycle:
            self.p_a, self.p_b = make_predictor(cfg), make_predictor(cfg)

    def generator_parameters(self) -> list[nn.Parameter]:
        nets = [self.g_ab, self.g_ba] + ([self.p_a, self.p_b] if hasattr(self, "p_a") else [])
        return [p for n in nets for p in n.parameters()]

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return [*self.d_a.parameters(), *self.d_b.parameters()]


def _blank(x: torch.Tensor) -> torch.Tensor:
    """The discriminators' landmark channel, left empty: conditioning a fake B on A's landmarks
    lets the discriminator tell A's geometry from B's and ignore the image (the generator then
    only learns noise)."""
    return torch.zeros_like(x[:, :1])


def generator_losses(
    nets: Nets,
    cfg: Config,
    a: list[torch.Tensor],
    ma: list[torch.Tensor],
    b: list[torch.Tensor],
    mb: list[torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict]:
    """All generator-side losses for one batch; ``a``/``b`` hold 1 frame (CycleGAN) or 3 (Recycle-GAN).

    ``ma``/``mb`` are the frames' landmark maps (kept for conditioning experiments; the
    discriminators currently see a blank channel). Returns the loss terms and the fakes."""
    fake_b = [nets.g_ab(x) for x in a]
    fake_a = [nets.g_ba(x) for x in b]
    last = len(a) - 1
    terms: dict[str, torch.Tensor] = {}
    adv = sum(models.hinge_g(nets.d_b(fb, _blank(fb))) for fb in fake_b)
    adv = adv + sum(models.hinge_g(nets.d_a(fa, _blank(fa))) for fa in fake_a)
    terms["adv"] = adv / len(a)
    terms["cycle"] = (nets.g_ba(fake_b[last]) - a[last]).abs().mean() + (
        nets.g_ab(fake_a[last]) - b[last]
    ).abs().mean()
    terms["identity"] = (nets.g_ab(b[last]) - b[last]).abs().mean() + (
        nets.g_ba(a[last]) - a[last]
    ).abs().mean()
    total = cfg.w_adv * terms["adv"] + cfg.w_cycle * terms["cycle"] + cfg.w_identity * terms["identity"]
    if cfg.recycle:
        # Recurrent: each domain's predictor learns its own motion.
        terms["recurrent"] = (nets.p_a(torch.cat(a[:2], 1)) - a[2]).abs().mean() + (
            nets.p_b(torch.cat(b[:2], 1)) - b[2]
        ).abs().mean()
        # Recycle: translate two frames, predict the next in the other domain, translate back.
        terms["recycle"] = (nets.g_ba(nets.p_b(torch.cat(fake_b[:2], 1))) - a[2]).abs().mean() + (
            nets.g_ab(nets.p_a(torch.cat(fake_a[:2], 1))) - b[2]
        ).abs().mean()
        total = total + cfg.w_recurrent * terms["recurrent"] + cfg.w_recycle * terms["recycle"]
    terms["loss"] = total
    return terms, {"fake_a": fake_a, "fake_b": fake_b}


def discriminator_loss(nets: Nets, a: list[torch.Tensor], b: list[torch.Tensor], fakes: dict) -> torch.Tensor:
    loss = sum(
        models.hinge_d(nets.d_b(x, _blank(x)), nets.d_b(f.detach(), _blank(f)))
        for x, f in zip(b, fakes["fake_b"], strict=True)
    )
    loss = loss + sum(
        models.hinge_d(nets.d_a(x, _blank(x)), nets.d_a(f.detach(), _blank(f)))
        for x, f in zip(a, fakes["fake_a"], strict=True)
    )
    return loss / len(a)


@torch.no_grad()
def validate(nets: Nets, a: FaceSet, b: FaceSet, device: torch.device, limit: int = 64) -> dict[str, float]:
    """Held-out cycle and identity L1 (the adversarial terms don't mean much alone)."""
    nets.eval()
    out = {}
    for name, faces, there, back in (("a", a, nets.g_ab, nets.g_ba), ("b", b, nets.g_ba, nets.g_ab)):
        crops = faces.held_crops if len(faces.held_crops) else faces.crops
        pick = np.linspace(0, len(crops) - 1, min(limit, len(crops))).astype(int)
        x = _to_tensor(crops[pick], device)
        out[f"cycle_{name}"] = round(float((back(there(x)) - x).abs().mean()), 5)
        out[f"identity_{name}"] = round(float((back(x) - x).abs().mean()), 5)
    nets.train()
    return out


@torch.no_grad()
def sample_grid(nets: Nets, a: FaceSet, b: FaceSet, device: torch.device, path: Path, rows: int = 6) -> None:
    """Held-out frames, columns: A | A→B | A→B→A || B | B→A | B→A→B."""
    nets.eval()
    cols = []
    for faces, there, back in ((a, nets.g_ab, nets.g_ba), (b, nets.g_ba, nets.g_ab)):
        crops = faces.held_crops if len(faces.held_crops) else faces.crops
        x = _to_tensor(crops[np.linspace(0, len(crops) - 1, rows).astype(int)], device)
        y = there(x)
        cols += [x, y, back(y)]
    nets.train()
    to_img = lambda t: (t.clamp(0, 1).permute(0, 2, 3, 1).flip(-1).cpu().numpy() * 255).astype(np.uint8)  # noqa: E731
    grid = np.concatenate([np.concatenate(list(to_img(t)), axis=0) for t in cols], axis=1)
    cv2.imwrite(str(path), grid)


def load_identities(cfg: Config, out: Path) -> tuple[FaceSet, FaceSet]:
    """Both people's aligned faces (clips cached in ``out/cache``)."""
    t0 = time.time()
    faces_a = faces_for(cfg.a, out / "cache" / "a", cfg)
    faces_b = faces_for(cfg.b, out / "cache" / "b", cfg)
    for name, faces in (("A", faces_a), ("B", faces_b)):
        logger.info(
            "%s: %d training crops (%d triplets), %d held out, from %s",
            name,
            len(faces.crops),
            len(faces.triplets),
            len(faces.held_crops),
            [c["clip"] for c in faces.clips],
        )
        if cfg.recycle and len(faces.triplets) == 0:
            raise SystemExit(f"--recycle needs videos: no consecutive frames for {name}")
    logger.info("data ready in %.0f s", time.time() - t0)
    return faces_a, faces_b


def train_step(
    cfg: Config,
    nets: Nets,
    opts: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    batches: tuple[list[torch.Tensor], ...],
    autocast: torch.autocast,
) -> dict[str, float]:
    """One step of the generators, then one of the discriminators; the rounded loss terms."""
    opt_g, opt_d = opts
    a, ma, b, mb = batches
    with autocast:
        terms, fakes = generator_losses(nets, cfg, a, ma, b, mb)
    opt_g.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt_g.step()
    with autocast:
        loss_d = discriminator_loss(nets, a, b, fakes)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    return {
        **{k: round(float(v.detach()), 5) for k, v in terms.items()},
        "disc": round(float(loss_d.detach()), 5),
    }


def train(cfg: Config, out: Path, resume: bool = True) -> dict:
    """Train in the run folder ``out`` (going on from its checkpoint when ``resume``), ending
    with ``out/translator.pt``; the run's summary and history."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    faces_a, faces_b = load_identities(cfg, out)
    frames = 3 if cfg.recycle else 1
    nets = Nets(cfg).to(device)
    opt_g = torch.optim.Adam(nets.generator_parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(nets.discriminator_parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    ckpt_path = out / "checkpoint.pt"
    step = resume_checkpoint(ckpt_path, device, nets=nets, opt_g=opt_g, opt_d=opt_d) if resume else 0
    gen = torch.Generator().manual_seed(cfg.seed + step)
    history = []
    log = open(out / "log.jsonl", "a", buffering=1)  # line-buffered: a running job can be watched
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="recycle-gan" if cfg.recycle else "cyclegan")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or cfg.bf16)
    budget = TimeBudget(cfg.max_minutes, cfg.deadline)
    timer = CheckpointTimer(cfg.checkpoint_minutes)
    pool_a = faces_a.triplets if cfg.recycle else np.arange(len(faces_a.crops))
    pool_b = faces_b.triplets if cfg.recycle else np.arange(len(faces_b.crops))
    while step < cfg.steps:
        if budget.spent():
            logger.info("time budget reached at step %d", step)
            break
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                # Linear decay over the second half (of the steps or of the time), as in CycleGAN.
                group["lr"] = cfg.lr * min(1.0, 2.0 * (1.0 - budget.progress(step, cfg.steps)))
        ia = pool_a[torch.randint(0, len(pool_a), (cfg.batch,), generator=gen).numpy()]
        ib = pool_b[torch.randint(0, len(pool_b), (cfg.batch,), generator=gen).numpy()]
        a, ma = batch_of(faces_a, ia, torch.rand(cfg.batch, generator=gen) < 0.5, device, frames)
        b, mb = batch_of(faces_b, ib, torch.rand(cfg.batch, generator=gen) < 0.5, device, frames)
        losses = train_step(cfg, nets, (opt_g, opt_d), (a, ma, b, mb), autocast)
        step += 1
        bar.update(1)
        record = {"step": step, **losses}
        if not all(math.isfinite(v) for k, v in record.items() if k != "step"):
            raise FloatingPointError(f"loss became non-finite at step {step}: {record}")
        bar.set_postfix(loss=f"{record['loss']:.3f}", cyc=f"{record['cycle']:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps or budget.spent() or timer.due():
            record["val"] = validate(nets, faces_a, faces_b, device)
            sample_grid(nets, faces_a, faces_b, device, out / f"samples_{step:06d}.png")
            save_checkpoint(ckpt_path, cfg, step, nets=nets, opt_g=opt_g, opt_d=opt_d)
            timer.reset()
            logger.info("step %d: %s", step, record["val"])
        history.append(record)
        log.write(json.dumps(record) + "\n")
    bar.close()
    log.close()
    seconds_trained = budget.elapsed_s
    save_checkpoint(out / "translator.pt", cfg, step, model=nets.g_ab, reverse=nets.g_ba)
    summary = {
        "steps": step,
        "device": str(device),
        "minutes": round(seconds_trained / 60, 2),
        "recycle": cfg.recycle,
        "a": faces_a.clips,
        "b": faces_b.clips,
        "train_crops": {"a": len(faces_a.crops), "b": len(faces_b.crops)},
        "final": history[-1] if history else {},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"history": history, **summary}
