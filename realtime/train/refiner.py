"""Train the face refiner: ``realtime train refiner --data DIR... --out runs/NAME``.

A short, readable loop in the spirit of nanoGPT: configuration at the top, one dataset in
memory, one loop, plain checkpoints (state dicts, loaded with ``weights_only=True``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from realtime.generators.onnx import CropSpec
from realtime.train import models
from realtime.train.data import build_clip_cache, make_dataset
from realtime.train.people import person_of, split
from realtime.train.runs import TimeBudget, pick_device, resume_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

# data.region_weights gives the mouth 5, the eyes 4 and the rest of the crop 1.
MOUTH_WEIGHT = 4.5
VIDEO_SUFFIXES = {".mp4", ".mpg", ".mov", ".avi", ".mkv", ".webm"}


@dataclass
class Config:
    size: int = 128
    layout: str = "face"  # "face" (one face crop) or "regions" (mouth and eye crops)
    widths: tuple[int, ...] = (16, 32, 64, 96)
    flow: bool = False  # the refiner may move pixels too (models.Refiner)
    driver: bool = False  # the refiner sees the driver's openings (models.Refiner)
    # Share of training examples whose driver input is blanked (as live, when the face is
    # lost), so the model still works without it.
    driver_dropout: float = 0.1
    steps: int = 2000
    max_minutes: float = 0.0  # stop early after this much training time (0: no limit)
    batch: int = 16
    lr: float = 2e-4
    # "constant", or "cosine": the learning rate falls to 0 by ``steps`` or ``max_minutes``,
    # whichever comes first (the usual last stretch of a run, started from ``init``).
    schedule: str = "constant"
    init: str = ""  # model checkpoint (refiner.pt / refiner_best.pt) to start from
    pairs_per_clip: int = 200
    val_pairs_per_clip: int = 40
    # Share of pairs (training and validation) aimed at retargeted rather than real landmarks.
    retargeted: float = 0.0
    cache_pairs: int = 40  # consecutive-frame pairs cached per clip
    gan_start: int = 500  # adversarial terms join after the reconstruction has settled
    w_l1: float = 10.0
    mouth_boost: float = 1.0  # multiplies the mouth's loss weight (data.region_weights: 5)
    w_lap: float = 5.0
    w_temporal: float = 5.0
    w_adv: float = 0.1
    w_fm: float = 1.0
    w_flow_smooth: float = 0.0  # mean flow gradient, in crop pixels (0.5 held the flow at ~0)
    # L1 to the optical flow that carries the warp onto the real face (data.motion_target),
    # where it is trusted: the photometric loss alone moves pixels only slowly.
    w_motion: float = 0.0
    eval_every: int = 250
    seed: int = 0
    workers: int = 1
    device: str = "auto"
    data: list[str] = field(default_factory=list)
    # Clip names to validate on instead of the held-out people of realtime.train.people.
    validation_clips: list[str] = field(default_factory=list)
    # Weights are also kept as an exponential moving average (this decay per step; 0: off):
    # validation, samples and the saved models use the average, which is far steadier
    # from one checkpoint to the next than the raw weights.
    ema: float = 0.999


def collect_caches(data: list[str], cache_dir: Path, pairs: int) -> list[Path]:
    """Every input is a cached clip (.npz), a video, or a folder of either."""
    from tqdm import tqdm

    items: list[Path] = []
    for entry in data:
        path = Path(entry)
        items += (
            sorted(p for p in path.iterdir() if p.suffix in VIDEO_SUFFIXES | {".npz"})
            if path.is_dir()
            else [path]
        )
    caches = []
    for item in tqdm(items, desc="caching clips", unit="clip"):
        if item.suffix == ".npz":
            caches.append(item)
            continue
        target = cache_dir / f"{item.stem}.npz"
        built = target if target.exists() else build_clip_cache(item, cache_dir, pairs)
        if built is not None:
            caches.append(built)
    return caches


def to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in batch.items():
        t = torch.from_numpy(value).to(device)
        if key.startswith(("warped", "target", "source")):
            t = t.permute(0, 3, 1, 2).flip(1).float() / 255.0  # BGR uint8 -> RGB float
        elif key.startswith("motion_trust"):
            t = t[:, None].float() / 255.0
        elif key.startswith("motion"):
            t = t.permute(0, 3, 1, 2).float()  # (dx, dy) in crop pixels
        elif key.startswith(("landmarks", "fill", "driver")):
            t = t[:, None].float() / 255.0
        else:
            t = t[:, None].float()
        out[key] = t
    return out


def augment(b: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The same random flip and colour change for every image of a sample."""
    n = b["warped0"].shape[0]
    device = b["warped0"].device
    flip = torch.rand(n, generator=generator, device="cpu").to(device) < 0.5
    gain = (0.8 + 0.4 * torch.rand(n, 3, generator=generator)).to(device)[:, :, None, None]
    bias = (0.08 * torch.rand(n, 1, generator=generator) - 0.04).to(device)[:, :, None, None]
    out = {}
    for key, t in b.items():
        t = torch.where(flip[:, None, None, None], t.flip(-1), t)
        if key.startswith("motion") and not key.startswith("motion_trust"):
            mirror_x = torch.tensor([-1.0, 1.0], device=device)[None, :, None, None]
            t = torch.where(flip[:, None, None, None], t * mirror_x, t)
        if key.startswith(("warped", "target", "source")):
            t = torch.clamp(t * gain + bias, 0.0, 1.0)
        out[key] = t
    return out


def run_generator(
    net: models.Refiner, b: dict[str, torch.Tensor], step: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The refined image, and the flow when the refiner has one."""
    driver = b[f"driver{step}"] if net.driver else None
    out = net(b[f"warped{step}"], b[f"source{step}"], b[f"landmarks{step}"], b[f"fill{step}"], driver)
    return out[0], out[2] if len(out) > 2 else None


def flow_roughness(flow: torch.Tensor) -> torch.Tensor:
    dx = (flow[..., :, 1:] - flow[..., :, :-1]).abs().mean()
    dy = (flow[..., 1:, :] - flow[..., :-1, :]).abs().mean()
    return dx + dy


@torch.no_grad()
def update_average(average: models.Refiner, net: models.Refiner, decay: float) -> None:
    for kept, current in zip(average.parameters(), net.parameters(), strict=True):
        kept.lerp_(current, 1.0 - decay)


@torch.no_grad()
def evaluate(
    net: models.Refiner, val: dict[str, np.ndarray], device: torch.device, batch: int = 64
) -> dict[str, float]:
    """Validation on held-out people: the refiner's L1 next to the warp's it started from."""
    net.eval()
    sums: dict[tuple[str, str], float] = {}
    # Region means are over the crops that show the region: in the region layout the eye
    # crops have no mouth and the mouth crop no eyes.
    counts = {"": 0, "mouth_": 0, "eyes_": 0}
    n = len(val["warped0"])
    for start in range(0, n, batch):
        b = to_tensors({k: v[start : start + batch] for k, v in val.items() if k.endswith("0")}, device)
        image, _ = run_generator(net, b, 0)
        target, warped, weight = b["target0"], b["warped0"], b["weight0"]
        errors = {
            name: (pred - target).abs().mean(1, keepdim=True)
            for name, pred in (("", image), ("warp_", warped))
        }
        regions = {
            "": torch.ones_like(weight),
            "mouth_": (weight >= MOUTH_WEIGHT).float(),
            "eyes_": ((weight > 1.5) & (weight < MOUTH_WEIGHT)).float(),
        }
        for region, mask in regions.items():
            area = mask.sum(dim=(1, 2, 3))
            shown = area > 0
            counts[region] += int(shown.sum())
            for name, err in errors.items():
                mean = (err * mask).sum(dim=(1, 2, 3))[shown] / area[shown]
                sums[region, name] = sums.get((region, name), 0.0) + float(mean.sum())
    net.train()
    return {
        f"{name}{region}l1": round(total / max(counts[region], 1), 5)
        for (region, name), total in sums.items()
    }


@torch.no_grad()
def sample_grid(
    net: models.Refiner, val: dict[str, np.ndarray], device: torch.device, path: Path, rows: int = 6
) -> None:
    """Rows of warp | generator | ground truth."""
    import cv2

    net.eval()
    pick = np.linspace(0, len(val["warped0"]) - 1, rows).astype(int)
    b = to_tensors({k: v[pick] for k, v in val.items() if k.endswith("0")}, device)
    image, _ = run_generator(net, b, 0)
    net.train()
    to_img = lambda t: (t.clamp(0, 1).permute(0, 2, 3, 1).flip(-1).cpu().numpy() * 255).astype(np.uint8)  # noqa: E731
    grid = np.concatenate(
        [np.concatenate(list(to_img(t)), axis=0) for t in (b["warped0"], image, b["target0"])], 1
    )
    zoom = max(1, -(-128 // (grid.shape[1] // 3)))  # small crops are shown at least 128 px wide
    cv2.imwrite(str(path), cv2.resize(grid, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST))


def train(cfg: Config, out: Path, resume: bool = True) -> dict:
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    spec = CropSpec(cfg.size, layout=cfg.layout)
    caches = collect_caches(cfg.data, out / "cache", cfg.cache_pairs)
    if cfg.validation_clips:
        val_caches = [p for p in caches if p.stem in cfg.validation_clips]
        train_caches = [p for p in caches if p.stem not in cfg.validation_clips]
        selection_caches: list[Path] = []
    else:
        train_caches, selection_caches, val_caches = split(caches)
    if not train_caches or not val_caches:
        raise SystemExit(
            f"need clips of both training and validation people; got {len(train_caches)} / {len(val_caches)}"
        )
    logger.info("train people: %s", sorted({person_of(p) for p in train_caches}))
    logger.info("selection people: %s", sorted({person_of(p) for p in selection_caches}))
    logger.info("validation people: %s", sorted({person_of(p) for p in val_caches}))
    if not selection_caches:
        logger.warning("no selection people: the best checkpoint is chosen on the validation people")
    t0 = time.time()
    motion = cfg.flow and cfg.w_motion > 0
    data = make_dataset(train_caches, cfg.pairs_per_clip, spec, cfg.seed, cfg.workers, cfg.retargeted, motion)
    val = make_dataset(
        val_caches, cfg.val_pairs_per_clip, spec, cfg.seed + 10_000, cfg.workers, cfg.retargeted
    )
    selection = (
        make_dataset(
            selection_caches, cfg.val_pairs_per_clip, spec, cfg.seed + 20_000, cfg.workers, cfg.retargeted
        )
        if selection_caches
        else val
    )
    logger.info(
        "pairs: %d train, %d validation (%.0f s)", len(data["warped0"]), len(val["warped0"]), time.time() - t0
    )

    net = models.Refiner(cfg.widths, cfg.size, flow=cfg.flow, driver=cfg.driver).to(device)
    disc = models.MultiScaleDiscriminator().to(device)
    opt_g = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.5, 0.999), weight_decay=1e-4)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999), weight_decay=1e-4)
    ckpt_path = out / "checkpoint.pt"
    step = 0
    if resume:
        step = resume_checkpoint(ckpt_path, device, model=net, disc=disc, opt_g=opt_g, opt_d=opt_d)
    if step == 0 and cfg.init:
        state = torch.load(cfg.init, map_location=device, weights_only=True)
        init_config = json.loads(state["config"]) if "config" in state else {}
        init_widths = tuple(init_config.get("widths", cfg.widths))
        model_state = state["model"]
        adds_flow = cfg.flow and not init_config.get("flow", False)
        adds_driver = cfg.driver and not init_config.get("driver", False)
        if (adds_flow or adds_driver) and init_widths != tuple(cfg.widths):
            raise SystemExit("--flow or --driver from a checkpoint without it needs the same --widths")
        if adds_driver:
            model_state = models.with_driver_input(model_state)
        if adds_flow:
            models.add_flow(model_state, net)
        elif init_widths == tuple(cfg.widths):
            net.load_state_dict(model_state)
        else:
            # A narrower model grows to cfg.widths computing the same function, so the wider
            # one starts where the narrow one ended instead of from scratch.
            models.widen_refiner(state["model"], net, seed=cfg.seed)
        logger.info("started from %s (its step %s, widths %s)", cfg.init, state.get("step"), init_widths)
    average = copy.deepcopy(net).requires_grad_(False) if cfg.ema else None
    if average is not None and step:
        saved = torch.load(ckpt_path, map_location=device, weights_only=True)
        if "average" in saved:
            average.load_state_dict(saved["average"])
    shown = average if average is not None else net  # what is validated and saved
    gen = torch.Generator().manual_seed(cfg.seed + step)
    history = []
    log = open(out / "log.jsonl", "a", buffering=1)  # line-buffered: a running job can be watched
    n = len(data["warped0"])
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="refiner")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    budget = TimeBudget(cfg.max_minutes)
    best_score = math.inf
    while step < cfg.steps:
        if budget.spent() and step % cfg.eval_every == 0:
            logger.info("time budget reached at step %d", step)
            break
        if cfg.schedule == "cosine":
            for group in opt_g.param_groups + opt_d.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * budget.progress(step, cfg.steps)))
        idx = torch.randint(0, n, (cfg.batch,), generator=gen).numpy()
        b = augment(to_tensors({k: v[idx] for k, v in data.items()}, device), gen)
        if cfg.driver and cfg.driver_dropout > 0:
            kept = (torch.rand(cfg.batch, generator=gen) >= cfg.driver_dropout).float().to(device)
            for key in ("driver0", "driver1"):
                b[key] = b[key] * kept[:, None, None, None]
        with autocast:
            img0, flow0 = run_generator(net, b, 0)
            img1, flow1 = run_generator(net, b, 1)
        img0, img1 = img0.float(), img1.float()
        w0, w1 = (
            torch.where(w >= MOUTH_WEIGHT, w * cfg.mouth_boost, w) for w in (b["weight0"], b["weight1"])
        )
        loss_l1 = ((img0 - b["target0"]).abs() * w0).mean() + ((img1 - b["target1"]).abs() * w1).mean()
        loss_lap = models.laplacian_loss(img0, b["target0"], w0) + models.laplacian_loss(
            img1, b["target1"], w1
        )
        # Temporal: the output should change from frame to frame the way the real face does.
        loss_temporal = ((img1 - img0) - (b["target1"] - b["target0"])).abs().mean()
        loss = cfg.w_l1 * loss_l1 + cfg.w_lap * loss_lap + cfg.w_temporal * loss_temporal
        if cfg.flow:
            loss = loss + cfg.w_flow_smooth * (flow_roughness(flow0) + flow_roughness(flow1))
        if motion:
            loss = loss + cfg.w_motion * ((flow0.float() - b["motion0"]).abs() * b["motion_trust0"]).mean()
        adversarial = step >= cfg.gan_start
        if adversarial:
            with autocast:
                fake = disc(img0, b["landmarks0"])
                real = disc(b["target0"], b["landmarks0"])
            loss_adv = models.hinge_g(fake)
            loss_fm = models.feature_matching(real, fake)
            loss = loss + cfg.w_adv * loss_adv + cfg.w_fm * loss_fm
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt_g.step()
        if average is not None:
            # The usual warm-up: early on the average follows the weights closely.
            update_average(average, net, min(cfg.ema, (1 + step) / (10 + step)))
        if adversarial:
            with autocast:
                loss_d = models.hinge_d(
                    disc(b["target0"], b["landmarks0"]), disc(img0.detach(), b["landmarks0"])
                )
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        step += 1
        bar.update(1)
        record = {
            "step": step,
            "loss": round(float(loss.detach()), 5),
            "l1": round(float(loss_l1.detach()), 5),
            "temporal": round(float(loss_temporal.detach()), 5),
        }
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"loss became {record['loss']} at step {step}")
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record["val"] = evaluate(shown, val, device)
            record["selection"] = (
                evaluate(shown, selection, device) if selection is not val else record["val"]
            )
            sample_grid(shown, val, device, out / f"samples_{step:06d}.png")
            extra = {"average": average} if average is not None else {}
            save_checkpoint(ckpt_path, cfg, step, model=net, disc=disc, opt_g=opt_g, opt_d=opt_d, **extra)
            logger.info("step %d: validation %s, selection %s", step, record["val"], record["selection"])
            # The adversarial terms trade some L1 for realism: keep the best checkpoint too
            # (whole crop plus mouth, where the warp fails most), chosen on the selection
            # people so the validation people stay unseen by every choice.
            score = record["selection"]["l1"] + record["selection"]["mouth_l1"]
            if score < best_score:
                best_score = score
                save_checkpoint(out / "refiner_best.pt", cfg, step, model=shown)
        history.append(record)
        log.write(json.dumps(record) + "\n")
    bar.close()
    log.close()
    save_checkpoint(out / "refiner.pt", cfg, step, model=shown)
    summary = {
        "steps": step,
        "device": str(device),
        "train_clips": [p.stem for p in train_caches],
        "selection_clips": [p.stem for p in selection_caches],
        "validation_clips": [p.stem for p in val_caches],
        "train_pairs": n,
        "validation_pairs": len(val["warped0"]),
        "final": history[-1] if history else {},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"history": history, **summary}
