"""Quote a held-out evaluation in a model card and make the model the default only if it wins.

    python -m export.promote weights/refiner.onnx --eval eval.json [--command "realtime eval ..."]

``eval.json`` is what ``realtime eval --generator warp MODEL --data CLIP... --pairs AVATAR:DRIVER...
--json`` writes. The model must pass both evaluations.

Self-reenactment (the clip's first frame driven by the clip): better face-crop L1 and SSIM
than the warp, mouth-region L1 at most 0.8x the warp's, no clip worse than 1.05x the warp's L1.

Cross-identity (a portrait driven by somebody else), on every pair: no further from the
avatar than the warp by more than 0.01 (dlib distance), no more colourful than the warp
(chroma over the face and over the mouth and eyes, within half a chroma unit), mouth
correlation with the driver at most 0.03 below the warp's; and blink correlation on average
no lower than the warp's.

With ``--live-eval`` (pairs drawn at the live output size, ``realtime eval --pairs-size
1280x720``), the model must pass the same cross-identity checks there as well.

Whatever the outcome, the card records the numbers, each check and the verdict, so
"default" is never set by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MOUTH_RATIO_MAX = 0.8
CLIP_RATIO_MAX = 1.05
IDENTITY_DRIFT_MAX = 0.01
CHROMA_TOLERANCE = 0.5
MOUTH_R_DROP_MAX = 0.03


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


def cross_verdict(warp: dict, model: dict) -> dict:
    """Each cross-identity check, per pair, with the numbers it compared."""
    pairs = []
    for w, m in zip(warp["pairs"], model["pairs"], strict=True):
        drift = None
        if m["identity_to_avatar"] is not None and w["identity_to_avatar"] is not None:
            drift = round(m["identity_to_avatar"] - w["identity_to_avatar"], 4)
        at_rest = None  # informational: the same distance where the driver's face is at rest
        if m.get("identity_at_rest") is not None and w.get("identity_at_rest") is not None:
            at_rest = round(m["identity_at_rest"] - w["identity_at_rest"], 4)
        checks = {
            "identity_drift": drift,
            "identity_drift_at_rest": at_rest,
            "identity_ok": drift is not None and drift <= IDENTITY_DRIFT_MAX,
            "colour_ok": m["chroma_face"] <= w["chroma_face"] + CHROMA_TOLERANCE
            and m["chroma_features"] <= w["chroma_features"] + CHROMA_TOLERANCE,
            "mouth_r_drop": round(w["mouth_r"] - m["mouth_r"], 4),
        }
        checks["mouth_ok"] = checks["mouth_r_drop"] <= MOUTH_R_DROP_MAX
        checks["pair_ok"] = checks["identity_ok"] and checks["colour_ok"] and checks["mouth_ok"]
        pairs.append({"avatar": m["avatar"], "driver": m["driver"], **checks})
    blink_ok = model["mean"]["blink_r"] >= warp["mean"]["blink_r"]
    checks = {
        "pairs_ok": all(p["pair_ok"] for p in pairs),
        "failing_pairs": sum(not p["pair_ok"] for p in pairs),
        "blink_r_ok": blink_ok,
    }
    checks["passes"] = checks["pairs_ok"] and blink_ok
    return {"checks": checks, "pairs": pairs, "warp": warp["mean"], "model": model["mean"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="the .onnx whose card (same name, .json) is updated")
    parser.add_argument("--eval", required=True, type=Path, help="JSON written by `realtime eval --json`")
    parser.add_argument("--command", default=None, help="the eval command, quoted in the card")
    parser.add_argument(
        "--live-eval", type=Path, default=None, help="JSON of `realtime eval --pairs ... --pairs-size WxH`"
    )
    parser.add_argument("--live-command", default=None, help="the live-size eval command, quoted in the card")
    args = parser.parse_args(argv)
    card_path = args.model.with_suffix(".json")
    if not card_path.exists():
        raise SystemExit(f"no model card beside {args.model}: export it with export.refiner first")
    evaluation = json.loads(args.eval.read_text())
    card = json.loads(card_path.read_text())
    generators = evaluation.get("generators", {})
    if "warp" not in generators:
        raise SystemExit(
            "the evaluation has no self-reenactment 'warp' baseline: run `realtime eval --generator warp MODEL --data ...`"
        )
    result = verdict(generators["warp"], _find(generators, args.model))
    card["evaluation"] = {
        "held_out_clips": [c["clip"] for c in generators["warp"]["clips"]],
        "max_frames": evaluation.get("max_frames"),
        "machine": evaluation.get("machine"),
        "command": args.command,
        **result,
    }
    cross = evaluation.get("cross_identity", {}).get("generators", {})
    if "warp" in cross:
        cross_result = cross_verdict(cross["warp"], _find(cross, args.model))
        card["cross_identity_evaluation"] = {"command": args.command, **cross_result}
        passes_cross = cross_result["checks"]["passes"]
        print(json.dumps(cross_result["checks"], indent=2))
    else:
        card["cross_identity_evaluation"] = {"missing": "run `realtime eval --pairs AVATAR:DRIVER ...` too"}
        passes_cross = False
        print("no cross-identity evaluation in the file: the model cannot become the default")
    if args.live_eval is not None:
        live = json.loads(args.live_eval.read_text()).get("cross_identity", {})
        if "warp" not in live.get("generators", {}):
            raise SystemExit(f"{args.live_eval} has no cross-identity 'warp' baseline")
        live_result = cross_verdict(live["generators"]["warp"], _find(live["generators"], args.model))
        card["cross_identity_evaluation_live"] = {
            "size": live.get("size"),
            "command": args.live_command,
            **live_result,
        }
        passes_cross = passes_cross and live_result["checks"]["passes"]
        print("at the live size:", json.dumps(live_result["checks"], indent=2))
    card["default"] = bool(result["checks"]["beats_warp"] and passes_cross)
    card_path.write_text(json.dumps(card, indent=2))
    print(json.dumps(result["checks"], indent=2))
    print(f"{card_path}: default = {card['default']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
