"""The live extras without a display: tuning, avatar library and switching, keys, recorder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import cv2
import imageio_ffmpeg
import numpy as np
import pytest

from realtime import mesh
from realtime.controls import Controls, Tuning
from realtime.errors import UserError
from realtime.frames import FaceTrack, Frame, Output
from tests.test_audio_pulse import null_sink, pulse  # noqa: F401  (fixtures: a real PulseAudio sink)


def test_tuning_splits_the_strength_between_head_and_expression():
    assert (Tuning().head_gain, Tuning().expression_gain) == (1.0, 1.0)
    still_head = Tuning(strength=1.5, head_share=0.0)
    assert (still_head.head_gain, still_head.expression_gain) == (0.0, 1.5)
    still_face = Tuning(head_share=1.0)
    assert (still_face.head_gain, still_face.expression_gain) == (1.0, 0.0)
    assert Tuning(strength=9, head_share=-1).strength == 2.0 and Tuning(head_share=-1).head_share == 0.0
    controls = Controls()
    controls.adjust_strength(-2)
    controls.adjust_head_share(+1)
    assert controls.tuning.strength == 0.5 and controls.tuning.head_share == 0.6
    assert controls.reset_strength() == Tuning()


def test_notices_expire_and_replace_their_kind():
    controls = Controls()
    controls.notify("mirror: on", seconds=0.2)
    controls.notify("mirror: off", seconds=0.2)
    controls.notify("strength 0.75", seconds=0.2, kind="tuning")
    assert controls.notices() == ["mirror: off", "strength 0.75"]
    assert controls.notices(now=time.monotonic() + 0.5) == []


def test_expression_gain_scales_the_avatars_mouth_opening(builtin_avatar):
    from realtime.expression import open_mouth
    from realtime.retarget import Retargeter, RetargetLimits

    driver = builtin_avatar.landmarks.astype(np.float64)
    talking = driver.copy()
    talking[:, :2] = open_mouth(driver[:, :2], 0.12)
    openings = []
    for gain in (0.0, 0.5, 1.0, 1.5):
        retargeter = Retargeter(builtin_avatar.landmarks, RetargetLimits(expression_gain=gain))
        retargeter.neutral = driver.copy()
        openings.append(mesh.mouth_opening(retargeter.transfer(talking)))
    assert openings == sorted(openings) and openings[-1] > openings[0] + 0.05, openings


def test_avatar_paths_expand_folders_and_refuse_what_is_not_there(tmp_path):
    from realtime.live import avatar_paths

    folder = tmp_path / "faces"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "notes.txt", ".hidden.png"):
        (folder / name).write_bytes(b"x")
    assert avatar_paths(["builtin", str(folder), str(folder / "a.jpg")]) == [
        "builtin",
        str(folder / "a.jpg"),
        str(folder / "b.png"),
    ]
    with pytest.raises(UserError, match="not found"):
        avatar_paths([str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        avatar_paths([str(tmp_path / "empty")])


@pytest.fixture(scope="module")
def library_paths(tmp_path_factory):
    from skimage import data

    from realtime.avatar import builtin_portrait

    folder = tmp_path_factory.mktemp("avatars")
    cv2.imwrite(str(folder / "b_other.png"), np.ascontiguousarray(builtin_portrait()[:, ::-1, ::-1]))
    cv2.imwrite(str(folder / "c_noface.png"), data.coffee()[:, :, ::-1])
    return ["builtin", str(folder / "c_noface.png"), str(folder / "b_other.png")]


class _NoTracker:
    def open(self):
        return self

    def close(self):
        pass

    def process(self, frame):
        return FaceTrack(frame=frame, landmarks=None)


def test_switching_uses_the_prepared_avatar_and_keeps_the_drivers_neutral(library_paths):
    from realtime.live import AvatarLibrary, LiveProcessor
    from realtime.metrics import Metrics

    controls = Controls()
    library = AvatarLibrary(library_paths, (320, 320), "warp", controls=controls)
    processor = LiveProcessor(library, _NoTracker(), controls, Metrics(), (320, 320))
    with processor:
        assert library.wait_ready(timeout=120)
        assert set(library.skipped) == {1} and "no face found" in library.skipped[1]
        assert any("avatar 2 skipped" in line for line in controls.notices())
        assert library.step(0, +1) == 2 and library.step(2, +1) == 0  # the faceless one is passed over
        first = processor.current
        first.retargeter.neutral = first.avatar.landmarks.astype(np.float64) + 1.0
        controls.step_avatar(+1)
        frame = Frame(np.zeros((240, 320, 3), np.uint8), 0, time.monotonic())
        out = processor.render(processor.track(frame))
        assert processor.current.index == 2 and processor.avatar.source.endswith("b_other.png")
        np.testing.assert_array_equal(processor.retargeter.neutral, first.retargeter.neutral)
        assert np.abs(out.image.astype(int) - processor.current.neutral.astype(int)).mean() < 1.0
        assert out.track is not None and out.track.frame is frame
        controls.request_avatar(1)
        processor.render(processor.track(frame))
        assert processor.current.index == 2  # skipped: stays, with a line on the overlay
        assert any("avatar 2 skipped" in line for line in controls.notices())
        controls.tune(mirror=True)
        assert processor.track(frame).frame.image is not frame.image
        controls.adjust_swap_shape(-3)  # the swap targeter takes the live shape at the next frame
        processor.render(processor.track(frame))
        assert processor.swap_targeter.shape == pytest.approx(0.4)


def test_a_library_of_faceless_images_is_one_clear_error(library_paths):
    from realtime.live import AvatarLibrary

    with pytest.raises(UserError, match="none of the 1 avatars|no face found"):
        AvatarLibrary([library_paths[1]], (320, 320))
    with pytest.raises(UserError, match="none of the 2 avatars can be used"):
        AvatarLibrary([library_paths[1], library_paths[1] + ".missing.png"], (320, 320))


def test_window_keys_reach_the_controls():
    from realtime.sinks import WindowSink

    controls = Controls()
    window = WindowSink(controls)
    window.handle_key(0xFF53)  # Right, as X11 reports it
    assert controls.take_avatar_request() == ("by", 1)
    window.handle_key(0x1000012)  # Left, as Qt reports it
    window.handle_key(0xFF51)
    assert controls.take_avatar_request() == ("by", -2)
    window.handle_key(ord("3"))
    assert controls.take_avatar_request() == ("to", 2)
    window.handle_key(ord("+"))
    window.handle_key(0xFF52)  # Up
    assert controls.tuning.strength == 1.5
    window.handle_key(ord("-"))
    window.handle_key(ord(","))
    assert controls.tuning.strength == 1.25 and controls.tuning.head_share == 0.4
    window.handle_key(ord("0"))
    assert controls.tuning == Tuning()
    for _ in range(4):  # from 0.7, up to its limit
        window.handle_key(ord("k"))
    assert controls.tuning.swap_shape == 1.0
    window.handle_key(ord("j"))
    assert controls.tuning.swap_shape == 0.9
    window.handle_key(ord("j"))
    assert controls.tuning.swap_shape == 0.8 and "avatar shape 0.8" in (controls.tuning.status() or "")
    window.handle_key(ord("f"))
    assert controls.tuning.mirror and controls.take_recalibrate()
    window.handle_key(ord("g"))
    assert not controls.tuning.refiner
    window.handle_key(ord("o"))
    assert controls.tuning.keep_glasses and "your glasses kept" in (controls.tuning.status() or "")
    assert window.pip and not window.help
    window.handle_key(ord("p"))
    window.handle_key(ord("?"))
    assert not window.pip and window.help
    window.handle_key(ord("r"))
    window.handle_key(ord("s"))
    assert controls.take_record() and controls.take_snapshot()
    window.handle_key(ord("q"))
    assert controls.quit.is_set()


def test_pip_and_help_are_drawn_on_the_windows_copy_only():
    from realtime.sinks.window import WindowSink

    camera = np.full((240, 320, 3), 90, np.uint8)
    landmarks = np.zeros((478, 3), np.float32)
    landmarks[:, 0], landmarks[:, 1] = np.linspace(100, 220, 478), 120
    image = np.full((320, 320, 3), 200, np.uint8)
    out = Output(image=image, index=0, t_capture=time.monotonic())
    out.track = FaceTrack(frame=Frame(camera, 0, 0.0), landmarks=landmarks)
    window = WindowSink(Controls())
    window._size = (320, 320)
    with_pip = window.compose(out, 10.0)
    corner = with_pip[200:, 200:]
    assert ((corner[..., 1] == 255) & (corner[..., 0] == 0)).sum() > 20  # the landmark dots
    window.pip = False
    assert (window.compose(out, 10.0)[200:, 200:, 1] == 255).sum() == 0
    window.help = True
    assert (window.compose(out, 10.0)[120:200] != 200).any()
    assert (image == 200).all(), "the frame the other sinks get is untouched"


def test_recorder_writes_exactly_the_frames_between_its_keys(tmp_path):
    from realtime.sinks.recorder import RecorderSink

    controls = Controls()
    recorder = RecorderSink(controls, tmp_path)
    recorder.open(96, 64, 25.0)
    frames = [np.full((64, 96, 3), 10 * i, np.uint8) for i in range(20)]
    for i, image in enumerate(frames):
        if i in (3, 15):
            controls.request_record()
        if i == 5:
            controls.request_snapshot()
        recorder.send(Output(image=image, index=i, t_capture=0.0))
    recorder.close()
    (video,) = tmp_path.glob("*.mp4")
    (png,) = tmp_path.glob("*.png")
    assert np.abs(cv2.imread(str(png)).astype(int) - 50).max() <= 1
    count, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert count == 12
    info = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video)], capture_output=True, text=True
    ).stderr
    assert "Video: h264" in info and "96x64" in info
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    assert ok and abs(float(first.mean()) - 30) < 3  # frame 3 is the first recorded


def test_recorder_refuses_a_missing_folder(tmp_path):
    from realtime.sinks.recorder import RecorderSink

    with pytest.raises(UserError, match="does not exist"):
        RecorderSink(Controls(), tmp_path / "nope").open(64, 64, 25.0)


def test_a_recording_carries_what_the_virtual_microphone_played(null_sink, tmp_path):  # noqa: F811
    """With the audio bridge's --audio-out, a recording gets the sound the call hears (its monitor)."""
    import sounddevice as sd

    from realtime.sinks.recorder import RecorderSink

    if shutil.which("paplay") is None:
        pytest.skip("paplay not installed (pulseaudio-utils)")
    if not any(d["name"] == "pulse" for d in sd.query_devices()):
        # PortAudio was set up in this test process before the fixture started the server.
        sd._terminate()
        sd._initialize()
    tone = tmp_path / "tone.wav"
    t = np.arange(int(4.0 * 48000)) / 48000
    from realtime.audio.tap import write_wav

    write_wav(tone, (0.5 * np.sin(2 * np.pi * 440 * t))[:, None])
    controls = Controls()
    recorder = RecorderSink(controls, tmp_path, audio_out=f"pulse:{null_sink}")
    recorder.open(96, 64, 25.0)
    player = subprocess.Popen(["paplay", "-d", null_sink, str(tone)])
    try:
        time.sleep(0.5)
        controls.request_record()
        for i in range(51):  # two seconds of frames on the clock, as the engine sends them
            if i == 50:
                controls.request_record()
            recorder.send(Output(image=np.full((64, 96, 3), i, np.uint8), index=i, t_capture=0.0))
            time.sleep(0.04)
        recorder.close()
    finally:
        player.kill()
        player.wait()
    (video,) = tmp_path.glob("realtime-*.mp4")
    info = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(video)], capture_output=True, text=True
    ).stderr
    assert "Video: h264" in info and "Audio: aac" in info
    count, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    assert count == 50
    pcm = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(video), "-map", "0:a"]
        + ["-f", "s16le", "-ac", "1", "-ar", "48000", "-"],
        capture_output=True,
    ).stdout
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    assert abs(len(audio) / 48000 - 2.0) < 0.15  # cut to the video's length
    assert np.sqrt(np.mean(audio[4800:-4800] ** 2)) > 0.1  # the tone, not silence


def test_split_keys_reads_terminal_arrows():
    from realtime.keys import split_keys

    assert split_keys("2\x1b[C\x1b[Dq") == [ord("2"), 0xFF53, 0xFF51, ord("q")]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal (POSIX)")
def test_run_without_a_window_takes_the_keys_from_the_terminal(tmp_path, library_paths):
    """`run --sink null` (as with only the virtual camera) in a terminal: keys switch the avatar and
    record, then q quits with the summary."""
    from tests.conftest import write_astronaut_clip

    clip = write_astronaut_clip(tmp_path / "driver.mp4", 50)
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "realtime.cli", "-v", "run", "--avatar", "builtin", library_paths[2]]
        + ["--input", str(clip), "--loop", "--sink", "null", "--size", "256x256", "--seconds", "60"]
        + ["--record-dir", str(tmp_path)],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 60
        while not any(text in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines[-20:])
            time.sleep(0.1)

    try:
        wait_for("avatar 2/2 ready")
        os.write(master, b"2")
        wait_for("avatar 2/2: b_other")
        os.write(master, b"r")
        time.sleep(1.0)
        os.write(master, b"r")
        wait_for("recorded")
        os.write(master, b"q")
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == 0, "".join(lines[-20:])
    assert "keys: 1-9" in out and "avatar 2 requested" in out and "latency p50" in out
    assert len(list(tmp_path.glob("realtime-*.mp4"))) == 1


def test_run_takes_the_live_settings_as_flags(tmp_path):
    from realtime.cli import build_parser
    from realtime.cli.commands import _live_fields, pipeline_config
    from tests.conftest import cli

    args = build_parser().parse_args(
        ["run", "--avatar", "builtin", "--strength", "1.5", "--head-share", "0.2", "--mirror"]
        + ["--refiner", "off", "--record-dir", str(tmp_path)]
    )
    fields = _live_fields(args)
    assert fields["tuning"] == Tuning(strength=1.5, head_share=0.2, mirror=True)
    assert fields["refiner"] is False and fields["record_dir"] == str(tmp_path)
    swap = build_parser().parse_args(
        ["render", "--avatar", "a.png", "--driver", "d.mp4", "--out", "o.mp4"]
        + ["--mode", "swap", "--swap-shape", "0.25", "--keep-glasses"]
    )
    assert pipeline_config(swap).tuning == Tuning(swap_shape=0.25, keep_glasses=True)
    args.swap_shape = 0.0
    config = pipeline_config(args, **_live_fields(args))
    assert config.tuning == Tuning(strength=1.5, head_share=0.2, mirror=True, swap_shape=0.0)
    for bad in (["--strength", "3"], ["--head-share", "1.5"], ["--refiner", "maybe"], ["--swap-shape", "2"]):
        proc = cli("run", "--avatar", "builtin", "--sink", "null", *bad)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    proc = cli("run", "--avatar", "builtin", "--generator", "warp", "--refiner", "on", "--sink", "null")
    assert proc.returncode != 0 and "--refiner on needs a learned generator" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_part_gains_scale_one_part_and_leave_the_others(builtin_avatar):
    from realtime.expression import close_eyes, open_mouth
    from realtime.retarget import Retargeter, RetargetLimits

    driver = builtin_avatar.landmarks.astype(np.float64)
    moved = driver.copy()
    moved[:, :2] = close_eyes(open_mouth(driver[:, :2], 0.12), 0.6)

    def transfer(gains):
        retargeter = Retargeter(builtin_avatar.landmarks, RetargetLimits(part_gains=gains))
        retargeter.neutral = driver.copy()
        return retargeter.transfer(moved)

    masks = Retargeter(builtin_avatar.landmarks)._parts
    assert masks.sum(axis=1).min() > 10 and masks.sum(axis=0).max() == 1  # three disjoint parts
    full, still_mouth, big_mouth = transfer((1, 1, 1)), transfer((0, 1, 1)), transfer((2, 1, 1))
    rest = transfer((0, 0, 0))
    assert mesh.mouth_opening(still_mouth) == pytest.approx(mesh.mouth_opening(rest), abs=0.005)
    assert mesh.mouth_opening(big_mouth) > mesh.mouth_opening(full) + 0.03
    assert mesh.eye_opening(still_mouth) == pytest.approx(mesh.eye_opening(full), abs=1e-6)
    assert mesh.eye_opening(transfer((1, 0, 1))) > mesh.eye_opening(full) + 0.02


def test_tuning_status_names_only_what_differs_from_the_defaults():
    assert Tuning().status() is None and Tuning(refiner=False).status() is None
    assert Tuning(mirror=True).status() == "mirror"
    line = Tuning(strength=1.5, mouth=0.5, mirror=True).status()
    assert line is not None and "strength 1.50" in line and "mouth 0.50" in line and line.endswith("mirror")
