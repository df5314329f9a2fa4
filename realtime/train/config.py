"""Training configurations, and the command-line flags made from them.

Each option is declared once, as a dataclass field; a field with ``flag`` metadata is also a
command-line flag (its help, choices and spelling in the metadata), in the spirit of
nanoGPT's configurator. Needs no torch, so the CLI can build its parser without it.

    parser = argparse.ArgumentParser()
    add_config_flags(parser, RefinerConfig)
    cfg = config_from_args(RefinerConfig, parser.parse_args())
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

from realtime.crops import CARD_PASTE_RULES

T = TypeVar("T")


def flag(
    default: Any = dataclasses.MISSING,
    help: str | None = None,
    *,
    default_factory: Any = dataclasses.MISSING,
    choices: tuple[str, ...] | None = None,
    name: str | None = None,
    metavar: str | None = None,
    required: bool = False,
) -> Any:
    """A dataclass field that is also a command-line flag (``--field-name`` unless ``name``)."""
    metadata = {
        "flag": {"help": help, "choices": choices, "name": name, "metavar": metavar, "required": required}
    }
    return field(default=default, default_factory=default_factory, metadata=metadata)


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(w) for w in text.split(","))


def flag_fields(config_class: type) -> list[dataclasses.Field]:
    """The fields of ``config_class`` that are command-line flags, in declaration order."""
    return [f for f in dataclasses.fields(config_class) if "flag" in f.metadata]


def add_config_flags(
    parser: argparse.ArgumentParser, config_class: type, exclude: Collection[str] = ()
) -> None:
    """Declare a flag on ``parser`` for each flag field of ``config_class`` (but ``exclude``).

    Booleans are ``store_true``, ``tuple[int, ...]`` reads ``16,24,32``, ``list[str]`` takes
    one or more values; every flag defaults to None, so ``config_from_args`` only overrides
    the fields the user gave. The argparse ``dest`` is always the field name."""
    hints = typing.get_type_hints(config_class)
    for f in flag_fields(config_class):
        if f.name in exclude:
            continue
        spec = f.metadata["flag"]
        kind = hints[f.name]
        options: dict[str, Any] = {"dest": f.name, "default": None, "help": spec["help"]}
        if kind is bool:
            options["action"] = "store_true"
        elif typing.get_origin(kind) is list:
            options.update(nargs="+", required=spec["required"])
        elif typing.get_origin(kind) is tuple:
            options["type"] = _int_tuple
        else:
            options["type"] = kind
        if spec["required"]:
            options["required"] = True
        if spec["choices"]:
            options["choices"] = spec["choices"]
        if spec["metavar"]:
            options["metavar"] = spec["metavar"]
        parser.add_argument(spec["name"] or "--" + f.name.replace("_", "-"), **options)


def config_from_args(config_class: type[T], args: argparse.Namespace, **given: Any) -> T:
    """``config_class(**given)``, with every flag the user gave (not None in ``args``) on top."""
    values = dict(given)
    for f in flag_fields(config_class):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = list(value) if isinstance(value, list) else value
    return config_class(**values)


def paste_rules_of(card: dict) -> dict[str, str]:
    """The card's paste rules as training flags ("mouth", "mouth,eyes" or "")."""
    return {name: ",".join(card.get(name, [])) for name in CARD_PASTE_RULES}


@dataclass
class RefinerConfig:
    """``realtime train refiner``: the face refiner of the learned generator."""

    size: int = flag(128, "crop side in pixels")
    layout: str = flag(
        "face",
        "crops the model refines: the whole face, or mouth and eyes (much cheaper live)",
        choices=("face", "regions"),
    )
    widths: tuple[int, ...] = flag((16, 32, 64, 96), "U-Net channel widths per level, e.g. 16,24,32,48")
    flow: bool = flag(
        False, "the refiner may also move the warp's pixels (a small flow), not only recolour them"
    )
    driver: bool = flag(
        False,
        "the refiner also sees the driver's mouth and eye openings (teeth, a dark cavity), "
        "which the landmarks do not describe",
    )
    # Share of training examples whose driver input is blanked (as live, when the face is
    # lost), so the model still works without it.
    driver_dropout: float = 0.1
    # Live, the user is not the avatar: examples that see another person's openings teach
    # the model to take openings from the driver input, not the person's appearance.
    driver_swap: float = flag(
        0.0,
        "share of training examples whose driver openings come from another person at about the "
        "same opening (0-1)",
    )
    grey: float = flag(0.0, "share of training examples made black and white (0-1)")
    style: float = flag(
        0.0, "share of training examples given a painted look (smoothed, some posterised), as portraits have"
    )
    # At rest the warp shows the avatar's own pixels; a model that repaints them moves the
    # avatar's identity (a cartoon's eyes darkened), so some examples teach it to leave them.
    perfect_warp: float = flag(
        0.0,
        "share of training examples whose warp is already right (the real frame; half of them with "
        "the avatar's own crop the same frame, as at rest): the model learns to leave it alone (0-1)",
    )
    # What the runtime applies of the model's output (its card says the same): the loss sees that.
    correction: str = flag(
        "rgb",
        "the correction applied live: rgb, or luma (its brightness only, so the avatar keeps its colours)",
        choices=("rgb", "luma"),
    )
    confine: str = flag(
        "",
        "where the correction applied live may land: everywhere (default), or the openings only "
        "(inner mouth, eyes; the lips, skin and moustache stay the warp's)",
        choices=("", "openings"),
    )
    darken_only: str = flag(
        "",
        "regions whose correction applied live may only darken the warp: mouth, eyes, or mouth,eyes "
        "(a bright band over a cavity reads as a closed mouth)",
        choices=("", "mouth", "eyes", "mouth,eyes"),
    )
    dark_centre: str = flag(
        "",
        "regions whose correction applied live may brighten only near the opening's rim (teeth under "
        "the lips), only darken around its centre line: mouth, eyes, or mouth,eyes",
        choices=("", "mouth", "eyes", "mouth,eyes"),
    )
    steps: int = flag(2000)
    max_minutes: float = flag(0.0, "stop after this much training time")  # 0: no limit
    checkpoint_minutes: float = flag(
        0.0, "also validate and write the checkpoint every this many minutes (0: by --eval-every only)"
    )
    # Unix time by which training ends whatever max_minutes says (0: none); set by
    # scripts/gpu_session.sh so the jobs sharing one GPU window stop together.
    deadline: float = 0.0
    batch: int = flag(16)
    lr: float = flag(2e-4, "learning rate (AdamW)")
    schedule: str = flag(
        "constant",
        "learning rate: constant, or cosine decay to 0 by --steps or --max-minutes, whichever is first",
        choices=("constant", "cosine"),
    )
    init: str = flag(
        "", "start from this model checkpoint (e.g. refiner_best.pt); a narrower one is widened to --widths"
    )
    pairs_per_clip: int = flag(200)
    val_pairs_per_clip: int = 40
    retargeted: float = flag(0.0, "share of pairs whose target landmarks come from the live retargeter (0-1)")
    cache_pairs: int = 40  # consecutive-frame pairs cached per clip
    gan_start: int = flag(500, "step at which the adversarial losses join")
    w_l1: float = 10.0
    mouth_boost: float = flag(1.0, "multiplies the mouth's weight in the loss")
    eye_boost: float = flag(1.0, "multiplies the eyes' weight in the loss")
    # Blinks are a few percent of the frames, and a refiner that rarely sees one leaves lids half open.
    blink_boost: float = flag(
        0.0, "training targets whose eyes close are drawn up to 1 + this many times as often"
    )
    w_lap: float = 5.0
    w_temporal: float = 5.0
    w_adv: float = 0.1
    w_fm: float = 1.0
    w_flow_smooth: float = 0.0  # weight of the mean flow gradient, in crop pixels
    # L1 to the optical flow that carries the warp onto the real face (data.motion_target),
    # where it is trusted: the photometric loss alone moves pixels only slowly.
    w_motion: float = flag(
        0.0,
        "with --flow: weight of the loss that pulls the flow to the optical flow from the warp "
        "to the real face (0: learn it from the image loss alone)",
        name="--motion-weight",
        metavar="W",
    )
    eval_every: int = flag(250)
    seed: int = 0
    workers: int = flag(1, "processes that build training pairs")
    device: str = flag("auto", "auto (CUDA when present), cpu or cuda")
    bf16: bool = flag(False, "bf16 autocast on CPU too (CPUs with AVX512-BF16/AMX)")  # always on CUDA
    data: list[str] = flag(
        default_factory=list, help="videos, cached clips (.npz) or folders of them", required=True
    )
    # Clip names to validate on instead of the held-out people of realtime.train.people.
    validation_clips: list[str] = field(default_factory=list)
    # Weights are also kept as an exponential moving average (this decay per step; 0: off):
    # validation, samples and the saved models use the average, which is far steadier
    # from one checkpoint to the next than the raw weights.
    ema: float = 0.999


@dataclass
class SwapConfig:
    """``realtime train swap``: a CycleGAN / Recycle-GAN identity translator A→B."""

    size: int = flag(64, "face crop side (default 64)")
    face_scale: float = 0.32  # CropSpec.face_scale: eye-corner distance / crop side
    width: int = flag(32, "generator base width (default 32)")  # x2 per down step
    n_down: int = 2
    n_res: int = flag(4, "generator residual blocks (default 4)")
    disc_width: int = 32
    disc_scales: int = 2
    pred_width: int = 16  # Recycle-GAN temporal predictor width
    recycle: bool = flag(False, "Recycle-GAN: add temporal predictors and the recycle loss")
    steps: int = flag(3000)
    max_minutes: float = flag(0.0, "stop after this much training time")  # 0: no limit
    checkpoint_minutes: float = flag(
        0.0, "also validate and write the checkpoint every this many minutes (0: by --eval-every only)"
    )
    # Unix time by which training ends whatever max_minutes says (0: none); set by
    # scripts/gpu_session.sh so the jobs sharing one GPU window stop together.
    deadline: float = 0.0
    batch: int = flag(4)
    lr: float = 2e-4
    w_adv: float = 1.0
    w_cycle: float = 10.0
    w_identity: float = 5.0
    w_recurrent: float = 10.0
    w_recycle: float = 10.0
    holdout: float = flag(0.15, "last fraction of each video never trained on")
    cache_frames: int = 100_000  # frames cached per video (all of them, normally)
    eval_every: int = flag(250)
    seed: int = 0
    device: str = flag("auto", "auto (CUDA when present), cpu or cuda")
    bf16: bool = flag(False, "bf16 autocast on CPU too (CPUs with AVX512-BF16/AMX)")  # always on CUDA
    # Whether the A→B generator is exported to ONNX once training ends; the caller does it
    # (realtime.export.translator.export_run), so training never imports the exporter.
    export: bool = True
    a: list[str] = flag(
        default_factory=list, help="the user: videos, cached clips (.npz) or folders of them", required=True
    )
    b: list[str] = flag(
        default_factory=list, help="who the user becomes: videos, cached clips or folders", required=True
    )


@dataclass
class EnrollConfig:
    """``realtime enroll``: the refiner fine-tuned on one person's video, as a personal avatar."""

    video: str = flag("", "30-120 s of the person, face visible, talking and blinking", required=True)
    out: str = flag("", "the avatar folder to write, e.g. avatars/NAME", required=True)
    max_minutes: float = flag(20.0, "wall-clock budget of the whole enrolment (tracking, training, export)")
    steps: int = flag(3000, "most training steps (the time budget usually ends training first)")
    init: str = flag("", "the refiner checkpoint to start from (default: the shipped weights/refiner.pt)")
    # The shipped recipe's luma/openings by default: its model never learnt colour (the runtime
    # applied brightness only) nor anything outside the openings, and ~30 CPU-starved steps of rgb
    # fine-tuning left green/yellow casts on eyes and teeth (RESULTS.md, "Personal avatars").
    correction: str = flag(
        "luma",
        "the correction applied live: luma (brightness only, as the shipped refiner) or rgb (the person's "
        "own colours too; needs more steps than the shipped model's luma start gives for free)",
        choices=("rgb", "luma"),
    )
    confine: str = flag(
        "openings",
        "where the correction may land: the openings (inner mouth, eyes; default) or everywhere ('')",
        choices=("", "openings"),
    )
    holdout: float = flag(0.25, "last share of the video kept out of training, to measure the gain on")
    gap_seconds: float = 1.0  # between the training part and the held-out part
    min_seconds: float = 30.0
    allow_short: bool = flag(False, "enrol from a video shorter than 30 s anyway (the model learns less)")
    frames: int = flag(400, "frames tracked in the training part (in consecutive pairs)")
    heldout_frames: int = 80  # frames tracked in the held-out part, for the card's metrics
    pairs: int = flag(600, "training examples made from the tracked frames")
    batch: int = flag(32)
    lr: float = flag(1e-4, "learning rate (AdamW, cosine decay over the budget)")
    checkpoint_minutes: float = 4.0  # validate on the held-out part (reported, never chosen on)
    workers: int = flag(1, "processes that build training examples")
    seed: int = 0
    # Kept from the budget for the held-out scores, the export and its checks: 1.5 min overran by
    # up to 1.2 min at load 15-21 (RESULTS.md, "Personal avatars").
    export_minutes: float = 2.5
