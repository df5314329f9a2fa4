"""Quote a held-out evaluation in a model card and make the model the default only if it wins.

    python -m export.promote weights/refiner.onnx --eval eval.json [--command "realtime eval ..."]

``eval.json`` is what ``realtime eval --generator warp MODEL ... --json`` writes. The bar:
better face-crop L1 and SSIM than the warp, mouth-region L1 at most 0.8x the
warp's, and no clip worse than 1.05x the warp's L1. Whatever the outcome, the card records
the numbers, each check and the verdict, so "default" is never set by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MOUTH_RATIO_MAX = 0.8
CLIP_RATIO_MAX = 1.05


def _find(generators: dict[str, dict], model: Path) -> dict:
    for name, result in generators.items():
        if name == str(model) or Path(name).stem == model.stem:
            return result
    raise SystemExit(f"{model} is not in the evaluation (it has: {', '.join(generators)})")


def verdict(warp: dict, model: dict) -> dict:
    """Each check of the bar, with the numbers it compared."""
    w, m = warp["mean"], model["mean"]
    clip_ratios = {
        wc["clip"]: round(mc["l1"] / max(wc["l1"], 1e-9), 3)
        for wc, mc in zip(warp["clips"], model["clips"], strict=True)
    }
    checks = {
        "l1_better": m["l1"] < w["l1"],
        "ssim_better": m["ssim"] > w["ssim"],
        "mouth_l1_ratio": round(m["mouth_l1"] / max(w["mouth_l1"], 1e-9), 3),
        "worst_clip_l1_ratio": max(clip_ratios.values()),
    }
    checks["mouth_ok"] = checks["mouth_l1_ratio"] <= MOUTH_RATIO_MAX
    checks["clips_ok"] = checks["worst_clip_l1_ratio"] <= CLIP_RATIO_MAX
    checks["beats_warp"] = all(checks[k] for k in ("l1_better", "ssim_better", "mouth_ok", "clips_ok"))
    return {"checks": checks, "clip_l1_ratios": clip_ratios, "warp": w, "model": m}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .onnx whose card (same name, .json) is updated")
    parser.add_argument("--eval", required=True, type=Path, help="JSON written by `realtime eval --json`")
    parser.add_argument("--command", default=None, help="the eval command, quoted in the card")
    args = parser.parse_args(argv)
    card_path = args.model.with_suffix(".json")
    if not card_path.exists():
        raise SystemExit(f"no model card beside {args.model}: export it with export.refiner first")
    evaluation = json.loads(args.eval.read_text())
    generators = evaluation["generators"]
    if "warp" not in generators:
        raise SystemExit("the evaluation has no 'warp' baseline: run `realtime eval --generator warp MODEL`")
    result = verdict(generators["warp"], _find(generators, args.model))
    card = json.loads(card_path.read_text())
    card["evaluation"] = {
        "held_out_clips": [c["clip"] for c in generators["warp"]["clips"]],
        "max_frames": evaluation.get("max_frames"),
        "machine": evaluation.get("machine"),
        "command": args.command,
        **result,
    }
    card["default"] = bool(result["checks"]["beats_warp"])
    card_path.write_text(json.dumps(card, indent=2))
    print(json.dumps(result["checks"], indent=2))
    print(f"{card_path}: default = {card['default']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
