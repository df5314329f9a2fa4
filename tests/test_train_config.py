"""Training options are declared once, as config fields; the command-line flags come from them."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from realtime.train.config import RefinerConfig, SwapConfig, add_config_flags, config_from_args


def parse(config_class: type, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, config_class)
    return parser.parse_args(argv)


def test_refiner_flags_override_only_what_is_given():
    args = parse(
        RefinerConfig,
        ["--data", "a.mp4", "clips/", "--widths", "16,24,32,48", "--flow", "--motion-weight", "0.5"]
        + [
            "--layout",
            "regions",
            "--max-minutes",
            "1.5",
            "--steps",
            "10",
            "--init",
            "runs/x/refiner_best.pt",
        ],
    )
    cfg = config_from_args(RefinerConfig, args)
    assert cfg.data == ["a.mp4", "clips/"] and cfg.widths == (16, 24, 32, 48)
    assert cfg.flow is True and cfg.w_motion == 0.5 and cfg.layout == "regions"
    assert cfg.max_minutes == 1.5 and cfg.steps == 10 and cfg.init == "runs/x/refiner_best.pt"
    # Not given: the field's default, booleans included.
    default = RefinerConfig()
    assert cfg.driver is False and cfg.batch == default.batch and cfg.schedule == default.schedule


def test_refiner_flags_are_the_ones_the_cli_declared():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, RefinerConfig)
    flags = {a.option_strings[0]: a.dest for a in parser._actions if a.option_strings[0] != "-h"}
    assert flags == {
        "--data": "data",
        "--steps": "steps",
        "--max-minutes": "max_minutes",
        "--eval-every": "eval_every",
        "--batch": "batch",
        "--pairs-per-clip": "pairs_per_clip",
        "--workers": "workers",
        "--device": "device",
        "--bf16": "bf16",
        "--layout": "layout",
        "--size": "size",
        "--widths": "widths",
        "--lr": "lr",
        "--gan-start": "gan_start",
        "--schedule": "schedule",
        "--init": "init",
        "--mouth-boost": "mouth_boost",
        "--eye-boost": "eye_boost",
        "--blink-boost": "blink_boost",
        "--retargeted": "retargeted",
        "--flow": "flow",
        "--driver": "driver",
        "--driver-swap": "driver_swap",
        "--grey": "grey",
        "--style": "style",
        "--perfect-warp": "perfect_warp",
        "--correction": "correction",
        "--confine": "confine",
        "--darken-only": "darken_only",
        "--dark-centre": "dark_centre",
        "--checkpoint-minutes": "checkpoint_minutes",
        "--motion-weight": "w_motion",
    }
    assert all(a.help for a in parser._actions if a.dest in ("layout", "schedule", "w_motion", "flow"))


def test_choices_and_required_flags_are_enforced():
    with pytest.raises(SystemExit):
        parse(RefinerConfig, ["--data", "a.mp4", "--schedule", "linear"])
    with pytest.raises(SystemExit):
        parse(RefinerConfig, ["--steps", "10"])  # --data is required
    with pytest.raises(SystemExit):
        parse(SwapConfig, ["--a", "x.mp4"])  # so is --b


def test_swap_flags_and_values_given_by_the_caller():
    args = parse(
        SwapConfig,
        ["--a", "x.mp4", "--b", "y.mp4", "z/", "--recycle", "--size", "48", "--n-res", "2", "--bf16"],
    )
    cfg = config_from_args(SwapConfig, args, export=False, steps=5)
    assert cfg.a == ["x.mp4"] and cfg.b == ["y.mp4", "z/"] and cfg.recycle and cfg.bf16
    assert cfg.size == 48 and cfg.n_res == 2 and cfg.export is False and cfg.steps == 5
    # A flag the user gave wins over the caller's value.
    args = parse(SwapConfig, ["--a", "x.mp4", "--b", "y.mp4", "--steps", "7"])
    assert config_from_args(SwapConfig, args, steps=5).steps == 7
    assert config_from_args(SwapConfig, args).recycle is False


def test_configs_and_the_crop_contract_import_without_torch_or_onnxruntime():
    code = (
        "import sys, realtime.train.config, realtime.crops, realtime.train.people; "
        "assert not {'torch', 'onnxruntime'} & set(sys.modules), sorted({'torch', 'onnxruntime'} & set(sys.modules))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
