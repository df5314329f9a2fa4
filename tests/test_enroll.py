"""Personal avatars: ``realtime enroll`` makes a self-contained folder whose refiner the
render and live paths pick up; bad input fails in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import cli, media

torch = pytest.importorskip("torch", reason="enrolment trains: needs the 'train' extra (torch)")

CLIP = "clips/LipNet_grid_bbaf2n.mpg"  # 3 s of a GRID speaker: real, short, fast to track
TINY = ("--allow-short", "--steps", "3", "--frames", "24", "--pairs", "16", "--batch", "4")


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory) -> Path:
    clip = media(CLIP)
    out = tmp_path_factory.mktemp("avatars") / "grid_man"
    result = cli("enroll", "--video", clip, "--out", out, *TINY, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"--avatar {out}" in result.stdout
    return out


def test_enrolment_writes_a_self_contained_folder_whose_onnx_passes_parity(enrolled):
    from realtime.export.common import sha256

    manifest = json.loads((enrolled / "avatar.json").read_text())
    assert manifest["kind"] == "avatar" and manifest["steps"] == 3
    for name in (manifest["image"], manifest["refiner"], manifest["card"], manifest["checkpoint"]):
        assert (enrolled / name).is_file(), name
    card = json.loads((enrolled / "refiner.json").read_text())
    parity = card["export"]["parity_fp32"]
    assert max(parity["image_max_abs_diff"], parity["mask_max_abs_diff"]) <= card["export"]["tolerance"]
    assert card["sha256"] == sha256(enrolled / "refiner.onnx") == manifest["refiner_sha256"]
    assert card["crop"] == {"size": 48, "face_scale": 0.32, "layout": "regions"}
    assert card["training"]["data"] == [str(media(CLIP))] and card["training"]["steps"] == 3
    split = card["enrollment"]["split"]
    assert split["train_frames"][1] < split["heldout_frames"][0]  # a gap between train and held out
    assert card["enrollment"]["video"]["sha256"] == sha256(media(CLIP))
    # The held-out part is measured, for the shipped and the enrolled refiner alike.
    scores = card["enrollment"]["heldout_in_crop"]
    assert scores["enrolled"]["mouth_l1"] > 0 and scores["shipped"]["warp_mouth_l1"] > 0
    state = torch.load(enrolled / "refiner.pt", weights_only=True)
    assert state["step"] == 3 and set(state) == {"model", "step", "config"}
    assert not (enrolled / ".enroll_work").exists()


def test_the_folder_avatar_draws_with_its_own_refiner_unless_a_generator_is_given(enrolled):
    from realtime.analysis import read_frames
    from realtime.avatar import load_avatar
    from realtime.frames import Frame, Mode
    from realtime.generators.onnx import OnnxRefinerGenerator
    from realtime.generators.registry import build_generators
    from realtime.pipeline import offline_processor

    avatar = load_avatar(str(enrolled))
    assert avatar.refiner == str(enrolled / "refiner.onnx")
    own = build_generators(None, avatar)
    for mode in Mode:  # reenact and swap both
        generator = own.for_mode(mode)
        assert isinstance(generator, OnnxRefinerGenerator) and generator.name == "grid_man/refiner"
        assert generator.runner.path == str(enrolled / "refiner.onnx")
    assert build_generators("warp", avatar).for_mode(Mode.REENACT).name == "warp"

    frames = list(read_frames(str(media(CLIP)), 40))[30:40]
    outputs = {}
    for name in (None, "warp"):
        processor = offline_processor(avatar, name, occlusion=False)
        outputs[name] = [processor.process(Frame(f, i, i / 25.0)).image for i, f in enumerate(frames)]
        processor.close()
    diff = max(np.abs(a.astype(int) - b).max() for a, b in zip(outputs[None], outputs["warp"], strict=True))
    assert diff > 8  # the folder's refiner really draws


def test_render_and_live_pick_up_the_folder(enrolled, tmp_path):
    from realtime.controls import Controls
    from realtime.live import avatar_paths, make_live_processor

    out, metrics = tmp_path / "out.mp4", tmp_path / "m.json"
    result = cli(
        "render", "--avatar", enrolled, "--driver", media(CLIP), "--out", out, "--metrics-json", metrics
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(metrics.read_text())["generator"] == "grid_man/refiner"
    # A folder of avatars lists the enrolled one as one avatar, not its images.
    assert avatar_paths([str(enrolled.parent)]) == [str(enrolled)]
    live = make_live_processor([str(enrolled)], None, "warp", None, Controls(), live=False, own_refiners=True)
    try:
        assert live.current.has_refiner
        assert live.current.generators.by_mode[live.controls.mode].name == "grid_man/refiner"
    finally:
        live.library.close()
        live.tracker.close()


def _one_line_error(result, *words: str) -> None:
    """Failed with one error line (after any progress bars and warnings), no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("realtime:")]
    assert len(errors) == 1 and errors[0].startswith("realtime: error:"), result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    for word in words:
        assert word in errors[0], errors[0]


def test_bad_videos_fail_in_one_line(tmp_path):
    from skimage import data

    from realtime.frames import Output
    from realtime.sinks import FileSink

    _one_line_error(cli("enroll", "--video", tmp_path / "nope.mp4", "--out", tmp_path / "a"), "not found")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    _one_line_error(cli("enroll", "--video", corrupt, "--out", tmp_path / "a"), "could not be opened")
    _one_line_error(cli("enroll", "--video", media(CLIP), "--out", tmp_path / "a"), "3.0 s", "--allow-short")
    # A real photo with no face in it (scikit-image's cup of coffee), slowly panned.
    faceless = tmp_path / "faceless.mp4"
    coffee = np.ascontiguousarray(data.coffee()[:, :, ::-1])
    sink = FileSink(faceless)
    sink.open(320, 240, 25.0)
    for i in range(80):
        sink.send(Output(image=coffee[i : i + 240, i : i + 320], index=i, t_capture=0.0))
    sink.close()
    _one_line_error(
        cli("enroll", "--video", faceless, "--out", tmp_path / "a", *TINY), "face was found in only"
    )
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    _one_line_error(cli("enroll", "--video", media(CLIP), "--out", other, *TINY), "holds other files")
    assert (other / "notes.txt").read_text() == "keep me"


def test_a_broken_avatar_folder_fails_in_one_line(enrolled, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(enrolled, broken)
    (broken / "refiner.onnx").unlink()
    result = cli("render", "--avatar", broken, "--driver", media(CLIP), "--out", tmp_path / "o.mp4")
    _one_line_error(result, "lacks its refiner")
