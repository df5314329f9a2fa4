"""Train the face refiner: ``realtime train refiner --data DIR... --out runs/NAME``.

A short, readable loop in the spirit of nanoGPT: configuration in ``config.RefinerConfig``,
one dataset in memory, one loop of small steps, plain checkpoints (state dicts, loaded with
``weights_only=True``).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from realtime.crops import CropSpec, crop_count, dark_centre_weight
from realtime.train import models
from realtime.train.config import RefinerConfig as Config
from realtime.train.data import build_clip_cache, make_dataset
from realtime.train.people import person_of, split
from realtime.train.runs import CheckpointTimer, TimeBudget, pick_device, resume_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

# data.region_weights gives the mouth 5, the eyes 4 and the rest of the crop 1.
MOUTH_WEIGHT = 4.5
VIDEO_SUFFIXES = {".mp4", ".mpg", ".mov", ".avi", ".mkv", ".webm"}


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


def painted(t: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """A painted or drawn look: smoothed, then posterised to ``levels`` (N,1,1,1; 0: not)."""
    smooth = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(t, (1, 1, 1, 1), mode="replicate"), 3, 1)
    poster = torch.round(smooth * levels.clamp(min=1)) / levels.clamp(min=1)
    return torch.where(levels > 0, poster, smooth)


def augment(
    b: dict[str, torch.Tensor], generator: torch.Generator, grey: float = 0.0, style: float = 0.0
) -> dict[str, torch.Tensor]:
    """The same random flip and colour change for every image of a sample; a ``grey`` share of
    the samples made black and white, a ``style`` share painted."""
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
    if grey > 0:  # drawn only when asked, so runs without it keep their random sequence
        made_grey = (torch.rand(n, generator=generator) < grey).to(device)[:, None, None, None]
        luma = torch.tensor([0.299, 0.587, 0.114], device=device)[None, :, None, None]  # RGB
        for key, t in out.items():
            if key.startswith(("warped", "target", "source")):
                out[key] = torch.where(made_grey, (t * luma).sum(1, keepdim=True).expand_as(t), t)
    if style > 0:
        made_painted = (torch.rand(n, generator=generator) < style).to(device)[:, None, None, None]
        # Half of the painted samples are also posterised (6-16 levels), like a cartoon.
        levels = torch.randint(6, 17, (n,), generator=generator).float()
        levels = torch.where(torch.rand(n, generator=generator) < 0.5, levels, 0.0).to(device)[
            :, None, None, None
        ]
        for key, t in out.items():
            if key.startswith(("warped", "target", "source")):
                out[key] = torch.where(made_painted, painted(t, levels), t)
    return out


LUMA_RGB = (0.299, 0.587, 0.114)


def opening_gate(fill: torch.Tensor) -> torch.Tensor:
    """The runtime's confine gate (realtime.generators.onnx.region_gate for crops up to 66 px):
    the openings dilated by a 3x3 cross, then blurred with sigma 1."""
    padded = torch.nn.functional.pad(fill, (1, 1, 1, 1))
    grown = torch.stack(
        [fill, padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]]
    ).amax(0)
    x = torch.arange(-4, 5, dtype=fill.dtype, device=fill.device)  # cv2's kernel for float images
    kernel = torch.exp(-(x**2) / 2)
    kernel = kernel / kernel.sum()
    blurred = torch.nn.functional.conv2d(
        torch.nn.functional.pad(grown, (4, 4, 0, 0), mode="reflect"), kernel.view(1, 1, 1, 9)
    )
    return torch.nn.functional.conv2d(
        torch.nn.functional.pad(blurred, (0, 0, 4, 4), mode="reflect"), kernel.view(1, 1, 9, 1)
    )


def crops_per_row(cfg: Config) -> int:
    """How many crops each frame gives (the data's rows cycle through them)."""
    return crop_count(cfg.layout)


def region_rows(regions: str, kind: torch.Tensor) -> torch.Tensor:
    """(N,1,1,1) bool: the rows whose crop is one of ``regions`` ("mouth", "eyes" or
    "mouth,eyes"; crops of the regions layout: kind 0 the mouth, 1 and 2 the eyes)."""
    names = regions.split(",")
    rows = torch.zeros_like(kind, dtype=torch.bool)
    if "mouth" in names:
        rows |= kind == 0
    if "eyes" in names:
        rows |= kind > 0
    return rows[:, None, None, None]


def as_applied(cfg: Config, image: torch.Tensor, b: dict[str, torch.Tensor], step: int) -> torch.Tensor:
    """What the runtime makes of the model's ``image``: the warp plus the correction it applies
    (its brightness only with ``cfg.correction`` luma, no brightening with ``cfg.darken_only`` or,
    with ``cfg.dark_centre``, only near the openings' rims; inside the openings with ``cfg.confine``)."""
    if cfg.correction == "rgb" and not cfg.confine and not cfg.darken_only and not cfg.dark_centre:
        return image
    warped = b[f"warped{step}"]
    delta = image - warped
    if cfg.correction == "luma":
        luma = torch.tensor(LUMA_RGB, device=image.device, dtype=image.dtype)[None, :, None, None]
        delta = (delta * luma).sum(1, keepdim=True).expand_as(delta)
    if cfg.darken_only:
        delta = torch.where(region_rows(cfg.darken_only, b["kind"]), delta.clamp(max=0.0), delta)
    if cfg.dark_centre:
        fills = (b[f"fill{step}"][:, 0] > 0.5).cpu().numpy()
        rim = torch.from_numpy(np.stack([dark_centre_weight(f) for f in fills])[:, None]).to(delta)
        centred = delta.clamp(max=0.0) + delta.clamp(min=0.0) * rim
        delta = torch.where(region_rows(cfg.dark_centre, b["kind"]), centred, delta)
    if cfg.confine == "openings":
        delta = delta * opening_gate(b[f"fill{step}"])
    return (warped + delta).clamp(0.0, 1.0)


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
    net: models.Refiner,
    val: dict[str, np.ndarray],
    device: torch.device,
    batch: int = 64,
    cfg: Config | None = None,
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
        b["kind"] = torch.arange(start, start + len(b["warped0"]), device=device) % (
            crops_per_row(cfg) if cfg else 1
        )
        image, _ = run_generator(net, b, 0)
        image = as_applied(cfg, image, b, 0) if cfg else image
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
    cfg: Config,
    net: models.Refiner,
    val: dict[str, np.ndarray],
    device: torch.device,
    path: Path,
    rows: int = 6,
) -> None:
    """Rows of warp | generator | ground truth."""
    import cv2

    net.eval()
    pick = np.linspace(0, len(val["warped0"]) - 1, rows).astype(int)
    b = to_tensors({k: v[pick] for k, v in val.items() if k.endswith("0")}, device)
    b["kind"] = torch.from_numpy(pick % crops_per_row(cfg)).to(device)
    image = as_applied(cfg, run_generator(net, b, 0)[0], b, 0)
    net.train()
    to_img = lambda t: (t.clamp(0, 1).permute(0, 2, 3, 1).flip(-1).cpu().numpy() * 255).astype(np.uint8)  # noqa: E731
    grid = np.concatenate(
        [np.concatenate(list(to_img(t)), axis=0) for t in (b["warped0"], image, b["target0"])], 1
    )
    zoom = max(1, -(-128 // (grid.shape[1] // 3)))  # small crops are shown at least 128 px wide
    cv2.imwrite(str(path), cv2.resize(grid, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST))


@dataclass
class Data:
    """The clips of each group and the pairs made from them, all in memory."""

    train_clips: list[Path]
    selection_clips: list[Path]
    validation_clips: list[Path]
    train: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    selection: dict[str, np.ndarray]  # the validation pairs themselves when there are no selection people


@dataclass
class Nets:
    """The refiner, its discriminator, their optimisers and the weight average (or None)."""

    net: models.Refiner
    disc: models.MultiScaleDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    average: models.Refiner | None = None

    @property
    def shown(self) -> models.Refiner:
        """What is validated and saved: the average when there is one."""
        return self.average if self.average is not None else self.net

    def parts(self) -> dict[str, object]:
        """Everything a checkpoint holds, by the names it is saved under."""
        extra = {"average": self.average} if self.average is not None else {}
        return {"model": self.net, "disc": self.disc, "opt_g": self.opt_g, "opt_d": self.opt_d, **extra}


def split_clips(cfg: Config, caches: list[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, selection, validation) clips: by person, or ``cfg.validation_clips`` by name."""
    if cfg.validation_clips:
        val = [p for p in caches if p.stem in cfg.validation_clips]
        train = [p for p in caches if p.stem not in cfg.validation_clips]
        selection: list[Path] = []
    else:
        train, selection, val = split(caches)
    if not train or not val:
        raise SystemExit(f"need clips of both training and validation people; got {len(train)} / {len(val)}")
    logger.info("train people: %s", sorted({person_of(p) for p in train}))
    logger.info("selection people: %s", sorted({person_of(p) for p in selection}))
    logger.info("validation people: %s", sorted({person_of(p) for p in val}))
    if not selection:
        logger.warning("no selection people: the best checkpoint is chosen on the validation people")
    return train, selection, val


def load_data(cfg: Config, out: Path) -> Data:
    """Cache the clips (in ``out/cache``), split them by person and make the pairs of each group."""
    spec = CropSpec(cfg.size, layout=cfg.layout)
    train, selection, val = split_clips(cfg, collect_caches(cfg.data, out / "cache", cfg.cache_pairs))
    t0 = time.time()
    motion = cfg.flow and cfg.w_motion > 0
    pairs = make_dataset(
        train,
        cfg.pairs_per_clip,
        spec,
        cfg.seed,
        cfg.workers,
        cfg.retargeted,
        motion,
        cfg.driver_swap if cfg.driver else 0.0,
        cfg.blink_boost,
    )
    val_pairs = make_dataset(
        val, cfg.val_pairs_per_clip, spec, cfg.seed + 10_000, cfg.workers, cfg.retargeted
    )
    selection_pairs = (
        make_dataset(selection, cfg.val_pairs_per_clip, spec, cfg.seed + 20_000, cfg.workers, cfg.retargeted)
        if selection
        else val_pairs
    )
    logger.info(
        "pairs: %d train, %d validation (%.0f s)",
        len(pairs["warped0"]),
        len(val_pairs["warped0"]),
        time.time() - t0,
    )
    return Data(train, selection, val, pairs, val_pairs, selection_pairs)


def start_from(cfg: Config, net: models.Refiner, device: torch.device) -> None:
    """Load ``cfg.init`` into ``net``: as it is, widened to ``cfg.widths``, or with the flow or
    driver input ``cfg`` adds (which then start out doing nothing)."""
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


def build_nets(cfg: Config, device: torch.device, ckpt_path: Path, resume: bool) -> tuple[Nets, int]:
    """The networks and optimisers, resumed from ``ckpt_path`` or started from ``cfg.init``;
    and the step to go on from."""
    net = models.Refiner(cfg.widths, cfg.size, flow=cfg.flow, driver=cfg.driver).to(device)
    disc = models.MultiScaleDiscriminator().to(device)
    opt_g = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=(0.5, 0.999), weight_decay=1e-4)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.999), weight_decay=1e-4)
    nets = Nets(net, disc, opt_g, opt_d)
    step = resume_checkpoint(ckpt_path, device, **nets.parts()) if resume else 0
    if step == 0 and cfg.init:
        start_from(cfg, net, device)
    if cfg.ema:
        nets.average = copy.deepcopy(net).requires_grad_(False)
        if step:
            saved = torch.load(ckpt_path, map_location=device, weights_only=True)
            if "average" in saved:
                nets.average.load_state_dict(saved["average"])
    return nets, step


def sample_batch(
    cfg: Config, data: dict[str, np.ndarray], gen: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """A random, augmented batch; with ``cfg.driver``, some samples' driver input blanked."""
    idx = torch.randint(0, len(data["warped0"]), (cfg.batch,), generator=gen).numpy()
    b = augment(to_tensors({k: v[idx] for k, v in data.items()}, device), gen, cfg.grey, cfg.style)
    b["kind"] = torch.from_numpy(idx % crops_per_row(cfg)).to(device)  # rows cycle through the crops
    if cfg.driver and cfg.driver_dropout > 0:
        kept = (torch.rand(cfg.batch, generator=gen) >= cfg.driver_dropout).float().to(device)
        for key in ("driver0", "driver1"):
            b[key] = b[key] * kept[:, None, None, None]
    if cfg.perfect_warp > 0:  # drawn only when asked, so runs without it keep their random sequence
        b = with_perfect_warps(b, cfg.perfect_warp, gen)
    return b


def with_perfect_warps(
    b: dict[str, torch.Tensor], share: float, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """``b`` with a ``share`` of its samples' warps replaced by their targets (a warp that is
    already right), and half of those also with the target as the avatar's own crop (the avatar
    at rest): their loss asks the model to change nothing."""
    n = b["warped0"].shape[0]
    device = b["warped0"].device
    perfect = (torch.rand(n, generator=gen) < share).to(device)[:, None, None, None]
    at_rest = perfect & (torch.rand(n, generator=gen) < 0.5).to(device)[:, None, None, None]
    out = dict(b)
    for step in (0, 1):
        target = b[f"target{step}"]
        out[f"warped{step}"] = torch.where(perfect, target, b[f"warped{step}"])
        out[f"source{step}"] = torch.where(at_rest, target, b[f"source{step}"])
    return out


def boosted(cfg: Config, weight: torch.Tensor) -> torch.Tensor:
    """The loss weights with the mouth's and the eyes' shares multiplied by their boosts."""
    eyes = (weight > 1.5) & (weight < MOUTH_WEIGHT)
    weight = torch.where(weight >= MOUTH_WEIGHT, weight * cfg.mouth_boost, weight)
    return torch.where(eyes, weight * cfg.eye_boost, weight)


def train_step(
    cfg: Config, nets: Nets, b: dict[str, torch.Tensor], step: int, autocast: torch.autocast
) -> dict[str, float]:
    """One optimiser step of the refiner (and of the discriminator once ``cfg.gan_start`` is
    reached); the loss terms it logs."""
    net, disc = nets.net, nets.disc
    with autocast:
        img0, flow0 = run_generator(net, b, 0)
        img1, flow1 = run_generator(net, b, 1)
    img0, img1 = as_applied(cfg, img0.float(), b, 0), as_applied(cfg, img1.float(), b, 1)
    w0, w1 = (boosted(cfg, w) for w in (b["weight0"], b["weight1"]))
    loss_l1 = ((img0 - b["target0"]).abs() * w0).mean() + ((img1 - b["target1"]).abs() * w1).mean()
    loss_lap = models.laplacian_loss(img0, b["target0"], w0) + models.laplacian_loss(img1, b["target1"], w1)
    # Temporal: the output should change from frame to frame the way the real face does.
    loss_temporal = ((img1 - img0) - (b["target1"] - b["target0"])).abs().mean()
    loss = cfg.w_l1 * loss_l1 + cfg.w_lap * loss_lap + cfg.w_temporal * loss_temporal
    if cfg.flow:
        loss = loss + cfg.w_flow_smooth * (flow_roughness(flow0) + flow_roughness(flow1))
    if cfg.flow and cfg.w_motion > 0:
        loss = loss + cfg.w_motion * ((flow0.float() - b["motion0"]).abs() * b["motion_trust0"]).mean()
    adversarial = step >= cfg.gan_start
    if adversarial:
        with autocast:
            fake = disc(img0, b["landmarks0"])
            real = disc(b["target0"], b["landmarks0"])
        loss = loss + cfg.w_adv * models.hinge_g(fake) + cfg.w_fm * models.feature_matching(real, fake)
    nets.opt_g.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    nets.opt_g.step()
    if nets.average is not None:
        # The usual warm-up: early on the average follows the weights closely.
        update_average(nets.average, net, min(cfg.ema, (1 + step) / (10 + step)))
    if adversarial:
        with autocast:
            loss_d = models.hinge_d(disc(b["target0"], b["landmarks0"]), disc(img0.detach(), b["landmarks0"]))
        nets.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        nets.opt_d.step()
    return {
        "loss": round(float(loss.detach()), 5),
        "l1": round(float(loss_l1.detach()), 5),
        "temporal": round(float(loss_temporal.detach()), 5),
    }


def checkpoint(
    cfg: Config, nets: Nets, data: Data, out: Path, step: int, record: dict, device: torch.device
) -> float:
    """Validate (into ``record``), write samples and the checkpoint; the selection score,
    lower is better."""
    record["val"] = evaluate(nets.shown, data.validation, device, cfg=cfg)
    record["selection"] = (
        evaluate(nets.shown, data.selection, device, cfg=cfg)
        if data.selection is not data.validation
        else record["val"]
    )
    sample_grid(cfg, nets.shown, data.validation, device, out / f"samples_{step:06d}.png")
    save_checkpoint(out / "checkpoint.pt", cfg, step, **nets.parts())
    logger.info("step %d: validation %s, selection %s", step, record["val"], record["selection"])
    # Whole crop plus mouth, where the warp fails most; on the selection people, so the
    # validation people stay unseen by every choice.
    return record["selection"]["l1"] + record["selection"]["mouth_l1"]


def train(cfg: Config, out: Path, resume: bool = True, data: Data | None = None) -> dict:
    """Train in the run folder ``out`` (going on from its checkpoint when ``resume``); the
    run's summary and history. ``data``: pairs made by the caller (``realtime.train.enroll``)
    instead of from ``cfg.data``'s clips split by person."""
    from tqdm import tqdm

    both = set(filter(None, cfg.darken_only.split(","))) & set(filter(None, cfg.dark_centre.split(",")))
    if both:
        raise SystemExit(f"--darken-only and --dark-centre both name {','.join(sorted(both))}: choose one")
    if (cfg.darken_only or cfg.dark_centre) and cfg.layout != "regions":
        raise SystemExit("--darken-only and --dark-centre act on region crops: they need --layout regions")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = pick_device(cfg.device)
    data = data if data is not None else load_data(cfg, out)
    nets, step = build_nets(cfg, device, out / "checkpoint.pt", resume)
    gen = torch.Generator().manual_seed(cfg.seed + step)
    history = []
    log = open(out / "log.jsonl", "a", buffering=1)  # line-buffered: a running job can be watched
    bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="refiner")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" or cfg.bf16)
    if cfg.bf16 and device.type == "cpu":
        # oneDNN's bf16 convolutions (AMX) are fastest on channels-last tensors.
        nets.net.to(memory_format=torch.channels_last)
        nets.disc.to(memory_format=torch.channels_last)
    budget = TimeBudget(cfg.max_minutes, cfg.deadline)
    timer = CheckpointTimer(cfg.checkpoint_minutes)
    best_score = math.inf
    saved_at = step

    def save(record: dict) -> None:
        nonlocal best_score, saved_at
        # The adversarial terms trade some L1 for realism: keep the best checkpoint too.
        score = checkpoint(cfg, nets, data, out, step, record, device)
        if score < best_score:
            best_score = score
            save_checkpoint(out / "refiner_best.pt", cfg, step, model=nets.shown)
        timer.reset()
        saved_at = step

    while step < cfg.steps:
        # With timed checkpoints the run stops at once (and saves below), else at the next
        # --eval-every step, which saves.
        if budget.spent() and (step % cfg.eval_every == 0 or cfg.checkpoint_minutes):
            logger.info("time budget reached at step %d", step)
            break
        if cfg.schedule == "cosine":
            for group in nets.opt_g.param_groups + nets.opt_d.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * budget.progress(step, cfg.steps)))
        losses = train_step(cfg, nets, sample_batch(cfg, data.train, gen, device), step, autocast)
        step += 1
        bar.update(1)
        record = {"step": step, **losses}
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"loss became {record['loss']} at step {step}")
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps or timer.due():
            save(record)
        history.append(record)
        log.write(json.dumps(record) + "\n")
    if step != saved_at and history:
        save(history[-1])
        log.write(
            json.dumps({"step": step, "val": history[-1]["val"], "selection": history[-1]["selection"]})
            + "\n"
        )
    bar.close()
    log.close()
    save_checkpoint(out / "refiner.pt", cfg, step, model=nets.shown)
    summary = {
        "steps": step,
        "device": str(device),
        "train_clips": [p.stem for p in data.train_clips],
        "selection_clips": [p.stem for p in data.selection_clips],
        "validation_clips": [p.stem for p in data.validation_clips],
        "train_pairs": len(data.train["warped0"]),
        "validation_pairs": len(data.validation["warped0"]),
        "final": history[-1] if history else {},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {"history": history, **summary}
