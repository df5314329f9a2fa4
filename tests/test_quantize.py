"""The int8 refiner export (``export.quantize``): calibrated on real crops of training people."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MEDIA, REPO

pytest.importorskip("onnx", reason="quantization needs the 'train' extra (onnx)")


def test_an_int8_refiner_stays_close_to_the_float_one_and_runs_live(tmp_path, builtin_avatar):
    if not (MEDIA / "clips").is_dir():
        pytest.skip(f"calibration needs real clips: {MEDIA / 'clips'} is absent")
    from export.quantize import main
    from realtime.frames import Frame, Mode
    from realtime.pipeline import offline_processor
    from realtime.train.people import SELECTION_PEOPLE, VALIDATION_PEOPLE, person_of

    out = tmp_path / "refiner.int8.onnx"
    assert main([str(REPO / "weights" / "refiner.onnx"), "--out", str(out), "--frames", "16"]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["default"] is False  # its own evaluations are still to come
    assert not {"evaluation", "cross_identity_evaluation", "cross_identity_evaluation_live"} & set(card)
    assert card["quantization"]["checkpoint"] == "refiner.pt"  # training goes on from the float model's
    people = {person_of(clip) for clip in card["quantization"]["calibration_clips"]}
    assert people and not people & (SELECTION_PEOPLE | VALIDATION_PEOPLE)
    assert {person_of(c) for c in card["quantization"]["parity_clips"]} <= SELECTION_PEOPLE
    # Worse than float32's 1e-7, far below what the paste rules let through
    assert 0.01 < card["export"]["parity_int8"]["image_mean_abs_diff_grey"] < 3.0
    assert card["crop"] == json.loads((REPO / "weights" / "refiner.json").read_text())["crop"]

    # Live, the int8 model draws what the float one draws, to within a grey level or so
    outputs = {}
    for model in (REPO / "weights" / "refiner.onnx", out):
        processor = offline_processor(builtin_avatar, str(model), occlusion=False)
        try:
            assert processor.generators.for_mode(Mode.REENACT).name == model.stem
            output = processor.process(Frame(builtin_avatar.image, 0, 0.0)).image
        finally:
            processor.close()
        outputs[model.stem] = output.astype(np.float32)
    difference = np.abs(outputs["refiner"] - outputs["refiner.int8"])
    assert 0 < difference.max() and difference.mean() < 0.5


def test_quantizing_what_is_not_a_refiner_is_a_one_line_error(tmp_path):
    if not (MEDIA / "clips").is_dir():
        pytest.skip(f"calibration needs real clips: {MEDIA / 'clips'} is absent")
    from export.quantize import main

    garbage = tmp_path / "broken.onnx"
    garbage.write_bytes(b"not a model")
    garbage.with_suffix(".json").write_text("{}")
    for model in (REPO / "weights" / "voice.onnx", garbage, tmp_path / "missing.onnx"):
        with pytest.raises(SystemExit) as raised:
            main([str(model), "--out", str(tmp_path / "out.onnx")])
        message = str(raised.value)
        assert message.startswith("error: ") and "\n" not in message and str(model.name) in message
    assert not (tmp_path / "out.onnx").exists()
