"""Which generators exist: the analytic warp plus every ONNX model shipped in ``weights/``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from realtime.avatar import Avatar
from realtime.errors import UserError
from realtime.frames import Mode
from realtime.generators.warp import WarpGenerator
from realtime.stages import Generator


@dataclass
class Generators:
    """The generator for each mode, plus the warp used as a fallback for learned ones."""

    by_mode: dict[Mode, Generator]
    fallback: dict[Mode, Generator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_mode = {Mode(mode): g for mode, g in self.by_mode.items()}
        self.fallback = {Mode(mode): g for mode, g in self.fallback.items()}

    def for_mode(self, mode: Mode | str) -> Generator:
        return self.by_mode[Mode(mode)]

    def _distinct(self) -> list[Generator]:
        unique: dict[int, Generator] = {}
        for generator in [*self.by_mode.values(), *self.fallback.values()]:
            unique.setdefault(id(generator), generator)
        return list(unique.values())

    def open(self) -> Generators:
        for generator in self._distinct():
            generator.open()
        return self

    def close(self) -> None:
        for generator in reversed(self._distinct()):
            generator.close()


# Models in weights/ that draw no image (the voice's audio-to-mouth model, realtime.voice).
NOT_GENERATORS = ("audio_to_mouth",)


def weights_dir() -> Path:
    override = os.environ.get("REALTIME_WEIGHTS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "weights"


def shipped_models(directory: Path | None = None) -> dict[str, dict]:
    """name -> model card for each ``weights/NAME.onnx`` that has a ``NAME.json`` card."""
    directory = directory or weights_dir()
    models: dict[str, dict] = {}
    if not directory.is_dir():
        return models
    for onnx_path in sorted(directory.glob("*.onnx")):
        card_path = onnx_path.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        if card.get("kind") in NOT_GENERATORS:
            continue
        card["path"] = str(onnx_path)
        models[onnx_path.stem] = card
    return models


def default_generator(directory: Path | None = None) -> str:
    """The best shipped generator: a card marked ``"default": true`` (set only when it beat
    the warp on held-out people), else the warp."""
    for name, card in shipped_models(directory).items():
        if card.get("default") and card.get("kind", "refiner") == "refiner":
            return name
    return "warp"


def swap_warp(avatar: Avatar) -> WarpGenerator:
    """Swap mode's warp, from the avatar's full-resolution face when it has one."""
    if avatar.face_image is not None and avatar.face_landmarks is not None:
        return WarpGenerator(avatar.face_image, avatar.face_landmarks, mode=Mode.SWAP)
    return WarpGenerator(avatar.image, avatar.landmarks, mode=Mode.SWAP)


def build_generators(
    name: str | None, avatar: Avatar, providers: list[str] | None = None, live: bool = True
) -> Generators:
    """Generators for both modes (the mode can be switched live).

    ``live``: a remote generator (``triton://``) gives each frame only its share of the frame
    budget; offline it waits for every answer. Without ``name``, an enrolled avatar's own
    refiner, else the best shipped generator."""
    own = name is None and avatar.refiner is not None
    name = name or avatar.refiner or default_generator()
    warps = {
        Mode.REENACT: WarpGenerator(avatar.image, avatar.landmarks, mode=Mode.REENACT),
        Mode.SWAP: swap_warp(avatar),
    }
    from realtime.generators.remote import build_remote, is_remote, parse_address

    if is_remote(name):
        return Generators(by_mode=build_remote(parse_address(name), warps, live), fallback=dict(warps))
    if name == "warp":
        return Generators(by_mode=dict(warps), fallback=dict(warps))
    path = name
    if not name.endswith(".onnx"):
        models = shipped_models()
        if name not in models:
            known = ", ".join(["warp", *models]) or "warp"
            raise UserError(f"unknown generator {name!r}; available: {known}, or a path to an .onnx file")
        path = models[name]["path"]
    from realtime.generators.translator import TranslatorGenerator, is_translator

    if is_translator(path):
        # An identity translator (`realtime train swap`) draws swap mode; reenact keeps the warp.
        return Generators(
            by_mode={Mode.REENACT: warps[Mode.REENACT], Mode.SWAP: TranslatorGenerator(path, providers)},
            fallback=dict(warps),
        )
    from realtime.generators.onnx import OnnxRefinerGenerator

    learned = {mode: OnnxRefinerGenerator(path, warps[mode], providers) for mode in Mode}
    if own:  # "NAME/refiner" in summaries, not just "refiner"
        for generator in learned.values():
            generator.name = f"{os.path.basename(os.path.normpath(avatar.source))}/{generator.name}"
    return Generators(by_mode=learned, fallback=dict(warps))
