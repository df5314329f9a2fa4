"""Cross-identity evaluation and the promotion gate: a portrait driven by somebody else."""

from __future__ import annotations

import json

import cv2
import pytest

from tests.conftest import cli, media, write_astronaut_clip


def tinting_refiner(path, size: int = 48, correction: str = "rgb") -> str:
    """A refiner-shaped model (three 48 px crops) that paints the warp's crops pink."""
    torch = pytest.importorskip("torch")
    from export.common import write_onnx
    from realtime.crops import IN_WARPED, REFINER_OUTPUTS

    class Tint(torch.nn.Module):
        def forward(self, warped):
            tint = torch.tensor([0.25, -0.1, 0.05]).view(1, 3, 1, 1)  # RGB: towards pink
            return (warped + tint).clamp(0, 1), torch.ones_like(warped[:, :1])

    write_onnx(Tint(), (torch.rand(3, 3, size, size),), path, [IN_WARPED], REFINER_OUTPUTS)
    card = {"crop": {"size": size, "face_scale": 0.32, "layout": "regions"}, "correction": correction}
    path.with_suffix(".json").write_text(json.dumps(card))
    return str(path)


def test_the_colour_check_catches_a_model_that_tints_a_grey_avatar(tmp_path, astronaut):
    from realtime.evaluate_cross import CrossIdentityPair

    grey = cv2.cvtColor(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    driver = write_astronaut_clip(tmp_path / "driver.mp4", 12)
    pair = CrossIdentityPair(str(tmp_path / "grey.png"), str(driver), max_frames=12)
    scores = {}
    for name in ("warp", tinting_refiner(tmp_path / "tint.onnx")):
        scores[name] = pair.score(name, pair.render(name))
    warp, tint = scores["warp"], scores[str(tmp_path / "tint.onnx")]
    assert abs(warp.chroma_face) < 1.0 and abs(warp.chroma_features) < 1.5  # the warp keeps it grey
    assert tint.chroma_features > warp.chroma_features + 3.0  # the pink lips and eyelids show
    from export.promote import CHROMA_TOLERANCE

    assert tint.chroma_features - warp.chroma_features > CHROMA_TOLERANCE
    # The same model with brightness-only corrections keeps the avatar's colours: grey stays grey.
    luma = tinting_refiner(tmp_path / "tint_luma.onnx", correction="luma")
    kept = pair.score(luma, pair.render(luma))
    assert kept.chroma_features <= warp.chroma_features + CHROMA_TOLERANCE
    assert abs(kept.chroma_face - warp.chroma_face) < 0.2


def test_pairs_are_drawn_at_the_live_output_size(tmp_path, astronaut):
    """--pairs-size: the avatar fills the output canvas as live, not the driver clip's small frame."""
    from realtime import mesh
    from realtime.evaluate_cross import CrossIdentityPair

    cv2.imwrite(str(tmp_path / "avatar.png"), astronaut)
    driver = write_astronaut_clip(tmp_path / "driver.mp4", 6)
    small = CrossIdentityPair(str(tmp_path / "avatar.png"), str(driver), max_frames=6)
    live = CrossIdentityPair(str(tmp_path / "avatar.png"), str(driver), max_frames=6, size=(960, 540))
    assert live.size == (960, 540) and small.size == small.frames[0].shape[1::-1]
    outputs = live.render("warp")
    assert len(outputs) == 6 and all(image.shape == (540, 960, 3) for image in outputs)
    # the face grows with the canvas: the driver clip's frame is 320x320
    assert mesh.face_size(live.avatar.landmarks) > 1.4 * mesh.face_size(small.avatar.landmarks)


def test_a_full_length_portrait_on_a_live_canvas_is_still_judged():
    """The judge reads the output around the avatar's face: on a 1280x720 canvas a full-length
    painting's face is too small for mediapipe's detector in the whole frame."""
    import numpy as np

    from realtime.evaluate_cross import CrossIdentityPair, _openings
    from realtime.tracking import FaceTracker

    pair = CrossIdentityPair(
        str(media("avatars/liveportrait_s0.jpg")), str(media("clips/liveportrait_d9.mp4")), 6, (1280, 720)
    )
    outputs = pair.render("warp")
    assert pair.score("warp", outputs).face_found == 1.0
    with FaceTracker(smoothing=False, track_width=0) as judge:
        whole_frame, _, _ = _openings(judge, outputs)
    assert np.isnan(whole_frame).all()


def cross_summary(**overrides) -> dict:
    pair = {
        "avatar": "a.jpg",
        "driver": "d.mp4",
        "identity_to_avatar": 0.30,
        "identity_to_driver": 0.70,
        "chroma_face": 0.1,
        "chroma_features": 0.5,
        "mouth_r": 0.90,
        "blink_r": 0.70,
    }
    return {"pairs": [{**pair, **overrides}], "mean": {**pair, **overrides}}


def self_summary(l1: float, mouth_l1: float) -> dict:
    mean = {"l1": l1, "ssim": 0.86 if l1 < 0.0267 else 0.84, "mouth_l1": mouth_l1}
    return {"mean": mean, "clips": [{"clip": "c.mp4", "l1": l1}]}


@pytest.mark.parametrize(
    ("self_ok", "cross", "expected"),
    [
        (True, {}, True),
        (False, {}, False),  # worse in self-reenactment
        (True, {"identity_to_avatar": 0.33}, False),  # drifts from the avatar
        (True, {"chroma_features": 1.5}, False),  # more colourful than the warp
        (True, {"mouth_r": 0.85}, False),  # stops following the driver's mouth
        (True, {"blink_r": 0.60}, False),  # blinks followed worse on average
        (True, None, False),  # no cross-identity evaluation at all
    ],
)
def test_promotion_needs_both_evaluations(tmp_path, self_ok, cross, expected):
    from export.promote import main

    model, evaluation = promotion_files(tmp_path, self_ok, cross)
    assert main([str(model), "--eval", str(evaluation)]) == 0
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["default"] is expected
    assert "evaluation" in card and "cross_identity_evaluation" in card


def promotion_files(tmp_path, self_ok: bool, cross: dict | None):
    """A model with its card and an evaluation JSON: self-reenactment better than the warp or
    not, and cross-identity with ``cross`` over the model's pair (None: no cross-identity)."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    model.with_suffix(".json").write_text(json.dumps({"name": "m"}))
    evaluation = {
        "generators": {
            "warp": self_summary(0.0267, 0.0508),
            "m": self_summary(0.0260, 0.035) if self_ok else self_summary(0.0270, 0.049),
        }
    }
    if cross is not None:
        evaluation["cross_identity"] = {"generators": {"warp": cross_summary(), "m": cross_summary(**cross)}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    return model, tmp_path / "eval.json"


@pytest.mark.parametrize(("live", "expected"), [({}, True), ({"identity_to_avatar": 0.33}, False)])
def test_promotion_with_a_live_size_evaluation_needs_it_passed_too(tmp_path, live, expected):
    from export.promote import main

    model, evaluation = promotion_files(tmp_path, True, {})
    at_size = {"size": "1280x720", "generators": {"warp": cross_summary(), "m": cross_summary(**live)}}
    (tmp_path / "live.json").write_text(json.dumps({"cross_identity": at_size}))
    assert main([str(model), "--eval", str(evaluation), "--live-eval", str(tmp_path / "live.json")]) == 0
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["cross_identity_evaluation"]["checks"]["passes"]  # at the driver's size it passes
    assert card["cross_identity_evaluation_live"]["size"] == "1280x720"
    assert card["default"] is expected


def test_cross_identity_eval_on_real_footage(tmp_path):
    avatar = media("avatars/liveportrait_s42.jpg")
    driver = media("clips/dreamtalk_mead_W011_happy.mp4")
    out = tmp_path / "cross.json"
    proc = cli(
        "eval", "--generator", "warp", "--max-frames", "45", "--pairs", f"grey:{avatar}:{driver}",
        "--json", out, "--pairs-sheet", tmp_path / "sheet.png", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (score,) = json.loads(out.read_text())["cross_identity"]["generators"]["warp"]["pairs"]
    assert score["avatar"].startswith("grey:") and score["frames"] == 45
    assert abs(score["chroma_face"]) < 1.0  # a black-and-white photo stays black and white
    assert score["mouth_r"] > 0.7 and 0.5 < score["mouth_amplitude"] < 2.0  # the mouth follows the driver
    assert score["face_found"] > 0.9 and (tmp_path / "sheet.png").exists()


def test_a_bad_pair_is_one_line(tmp_path):
    proc = cli("eval", "--pairs", "nocolon.jpg", cwd=tmp_path)
    assert proc.returncode != 0 and "AVATAR:DRIVER" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("eval", cwd=tmp_path)
    assert proc.returncode != 0 and "--pairs" in proc.stderr and "Traceback" not in proc.stderr
