"""Lips from the voice: features, the model's training and export, ``render --audio``, bad audio."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from realtime import mesh
from realtime.voice import features, mouth
from tests import test_audio_pulse
from tests.conftest import cli, media
from tests.test_cli import assert_one_line_error

RATE = features.RATE
# A real PulseAudio server and a fresh null sink per test (tests/test_audio_pulse.py).
pulse, null_sink = test_audio_pulse.pulse, test_audio_pulse.null_sink


def syllables(seconds: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A voiced buzz switched on and off like syllables, and its 0/1 envelope per sample."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    envelope = np.zeros(n)
    t = int(0.3 * RATE)
    while t < n:
        on = int(rng.uniform(0.1, 0.3) * RATE)
        envelope[t : t + on] = 1.0
        t += on + int(rng.uniform(0.1, 0.4) * RATE)
    time = np.arange(n) / RATE
    pitch = rng.uniform(100, 220)
    buzz = sum(np.sin(2 * np.pi * pitch * k * time) / k for k in range(1, 12))
    return (0.2 * buzz * envelope + 1e-4 * rng.standard_normal(n)).astype(np.float32), envelope


def synthetic_clip(name: str, group: str, seed: int, fps: float = 25.0) -> dict:
    audio, envelope = syllables(8.0, seed)
    frames = int(8.0 * fps)
    opening = np.array([envelope[int(i / fps * RATE)] for i in range(frames)]) * 0.1
    offsets = np.zeros((frames, len(mouth.MOUTH_POINTS), 2), np.float32)
    offsets[:, mouth.LOWER_MID, 1] = opening
    offsets[:, mouth.UPPER_MID, 1] = -0.2 * opening
    return {"name": name, "group": group, "person": name, "audio": audio, "offsets": offsets, "fps": fps}


def tiny_config(tmp_path, **changes):
    from realtime.train.voice import VoiceConfig

    base = dict(
        out=str(tmp_path / "run"),
        channels=16,
        dilations=(1, 2, 4),
        components=4,
        dropout=0.0,
        running_mean_frames=20,
        steps=120,
        batch=8,
        crop_frames=100,
        lr=3e-3,
        warmup_steps=10,
        eval_every=60,
        noise_only_p=0.1,
        noise_p=0.2,
        noise_seconds=4.0,
        max_minutes=2.0,
    )
    return VoiceConfig(**(base | changes))


# ----------------------------------------------------------------------------- features, frame


def test_features_of_a_block_match_the_stream():
    audio, _ = syllables(2.0, 0)
    whole = features.log_mel(audio)
    start = 37 * features.HOP
    block = features.log_mel(audio[start : start + 50 * features.HOP + features.WINDOW])
    np.testing.assert_allclose(block[5:], whole[37 + 5 : 37 + len(block)], atol=1e-4)
    assert whole.shape[1] == features.N_MELS and len(features.frame_level_db(audio)) == len(whole)


def test_mouth_offsets_round_trip_on_a_tilted_face(builtin_avatar):
    from realtime.expression import head_pose, open_mouth

    face = builtin_avatar.landmarks.astype(np.float64)
    opened = head_pose(open_mouth(face, 0.15), roll_deg=12.0, shift=(0.1, 0.0))
    offsets = mouth.displacement(opened, face)
    assert mouth.opening(offsets) > 0.1  # the jaw dropped by 0.15 face sizes; the head turn is undone
    back = mouth.apply(face, offsets)
    assert mesh.mouth_opening(back) == pytest.approx(mesh.mouth_opening(open_mouth(face, 0.15)), abs=0.01)


# ----------------------------------------------------------------------------- training, export


def test_a_tiny_model_trains_and_its_loss_falls(tmp_path):
    pytest.importorskip("torch")
    from realtime.train.voice import train

    clips = [synthetic_clip(f"train{i}", "train", i) for i in range(3)] + [
        synthetic_clip("sel", "selection", 9)
    ]
    summary = train(tiny_config(tmp_path), clips)
    assert summary["last_loss"] < 0.5 * summary["first_loss"], summary
    assert summary["best"]["opening_r"] > 0.5, summary["best"]
    assert (tmp_path / "run" / "best.pt").exists()


def test_training_resumes_from_a_checkpoint_with_averaged_weights(tmp_path):
    pytest.importorskip("torch")
    from realtime.train.voice import train

    clips = [synthetic_clip(f"train{i}", "train", i) for i in range(3)] + [
        synthetic_clip("sel", "selection", 9)
    ]
    first = train(tiny_config(tmp_path, ema_decay=0.9), clips)
    again = train(
        tiny_config(tmp_path, out=str(tmp_path / "again"), init=str(tmp_path / "run" / "best.pt"), steps=20),
        clips,
    )
    # The resumed run starts where the first one ended, not from scratch.
    assert again["first_loss"] < 0.5 * first["first_loss"], (first["first_loss"], again["first_loss"])
    assert first["best"]["opening_r"] > 0.5 and again["best"]["opening_r"] > 0.5


def test_stretched_crops_keep_sound_and_mouth_together_and_babble_joins_the_noise(tmp_path):
    pytest.importorskip("torch")
    from realtime.train.voice import Batches, clip_arrays, noise_bank

    arrays = [clip_arrays(synthetic_clip(f"c{i}", "train", i)) for i in range(2)]
    rng = np.random.default_rng(0)
    plain = noise_bank(2.0, rng)
    voices = [syllables(6.0, 10 + i)[0] for i in range(4)]
    bank = noise_bank(2.0, rng, voices, babble_seconds=3.0, babble_voices=3)
    assert len(bank) - len(plain) == pytest.approx(300, abs=3)  # 3 s of babble, 100 frames a second
    babble = bank[len(plain) :]
    assert babble.mean(axis=1).std() > 0.3  # voices come and go: not a steady hiss
    cfg = tiny_config(tmp_path, stretch=0.25, noise_p=0.0, noise_only_p=0.0, eq_db=0.0, warp=0.0, batch=16)
    mel, target, mask = Batches(arrays, bank, cfg, seed=3)()
    assert mel.shape == (16, cfg.crop_frames, features.N_MELS) and target.shape[:2] == (16, cfg.crop_frames)
    # Sound and mouth are stretched alike: the synthetic mouth opens with the buzz, and output j's
    # target is the mouth 80 ms (8 frames) before frame j's sound ends, so loudness matches the
    # target 8 frames on, better than at no shift.
    loud, opened, m = mel.mean(dim=2).numpy(), mouth.opening(target.numpy()), mask.numpy()

    def r_at(lag: int) -> float:
        a, b, keep = loud[:, : loud.shape[1] - lag], opened[:, lag:], m[:, lag:]
        return float(np.corrcoef(a[keep], b[keep])[0, 1])

    assert r_at(8) > 0.6 and r_at(8) > r_at(0) + 0.2, (r_at(0), r_at(8))


def test_export_round_trip_matches_through_the_runtime(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from export.voice import export_onnx, parity
    from realtime.train.voice import VoiceToMouth
    from realtime.voice.model import SpeechGate, VoiceMouthModel

    torch.manual_seed(0)
    net = VoiceToMouth(tiny_config(tmp_path)).eval()
    with torch.no_grad():
        net.basis.normal_(0, 0.05)
    path = export_onnx(net, tmp_path / "voice.onnx")
    checks = parity(net, path)
    assert checks["mouth_max_abs_diff"] < 1e-4, checks
    audio, _ = syllables(1.5, 3)
    times, offsets = VoiceMouthModel(path).offsets(audio)
    assert offsets.shape == (len(times), len(mouth.MOUTH_POINTS), 2)
    with torch.no_grad():
        expected = net(torch.from_numpy(features.log_mel(audio))[None])[0].numpy()
    weights = SpeechGate()(audio)
    np.testing.assert_allclose(offsets, expected * weights[:, None, None], atol=1e-4)
    assert weights.max() == 1.0 and np.all(weights[features.frame_level_db(audio) < -55.0] == 0)


# ----------------------------------------------------------------------------- render --audio


def duration_s(path, kind: str) -> float | None:
    import imageio_ffmpeg

    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    return (
        float(m.group(1))
        if (m := re.search(r"Duration: \d+:\d+:([\d.]+)", probe)) and kind in probe
        else None
    )


@pytest.mark.slow
def test_render_audio_moves_the_mouth_with_speech_and_closes_it_in_silence(tmp_path):
    from realtime.analysis import track_video
    from realtime.voice.audio_file import read_audio
    from realtime.voice.model import default_model_path

    if not default_model_path().exists():
        pytest.skip("no shipped voice model in weights/")
    speech = media("clips/LipNet_grid_bbaf2n.mpg")  # a held-out speaker, silence before and after
    avatar = media("avatars/liveportrait_s0.jpg")
    out = tmp_path / "talking.mp4"
    proc = cli(
        "render", "--avatar", avatar, "--audio", speech, "--out", out, "--size", "320x384", timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    audio = read_audio(str(speech))
    assert duration_s(out, "Audio: aac") == pytest.approx(len(audio) / RATE, abs=0.05)
    opening = track_video(str(out)).mouth
    assert len(opening) == int(np.ceil(len(audio) / RATE * 25))
    level = np.array(
        [
            10 * np.log10(np.mean(audio[int(i / 25 * RATE) : int((i + 1) / 25 * RATE)] ** 2) + 1e-12)
            for i in range(len(opening))
        ]
    )
    loud = level > np.percentile(level, 90) - 15
    quiet = level < np.percentile(level, 90) - 30
    assert loud.sum() > 20 and quiet.sum() > 8
    assert np.nanmean(opening[loud]) > np.nanmean(opening[quiet]) + 0.02, (opening[loud], opening[quiet])
    assert np.nanmean(opening[quiet] < 0.03) >= 0.9, opening[quiet]
    assert np.nanstd(opening[loud]) > 0.01  # it moves with the syllables, not just open


@pytest.mark.parametrize(
    "audio, message",
    [
        ("missing.wav", "audio file not found"),
        ("junk.wav", "not a sound or video file"),
        ("notes.txt", "no audio stream"),  # ffmpeg reads text as an ANSI-art video
        ("IMAGE", "no audio stream"),
        ("folder", "is a folder"),
        ("SILENT_VIDEO", "no audio stream"),
    ],
)
def test_bad_audio_gives_one_line(tmp_path, audio, message):
    (tmp_path / "notes.txt").write_text("not a sound\n" * 50)
    (tmp_path / "junk.wav").write_bytes(np.random.default_rng(0).bytes(20000))
    (tmp_path / "folder").mkdir()
    given = {"SILENT_VIDEO": "clips/dreamtalk_mead_W009_neutral.mp4", "IMAGE": "avatars/liveportrait_s0.jpg"}
    path = media(given[audio]) if audio in given else tmp_path / audio
    proc = cli("render", "--avatar", "builtin", "--audio", path, "--out", tmp_path / "out.mp4")
    assert_one_line_error(proc, message)
    assert not (tmp_path / "out.mp4").exists()


def test_render_needs_a_driver_or_audio(tmp_path):
    proc = cli("render", "--avatar", "builtin", "--out", tmp_path / "out.mp4")
    assert_one_line_error(proc, "--driver", "--audio")


def test_the_speech_gate_closes_on_steady_noise_and_opens_on_speech():
    from realtime.voice.model import SpeechGate

    rng = np.random.default_rng(0)
    hiss = 0.03 * rng.standard_normal(3 * RATE)  # -30 dBFS, steady
    assert SpeechGate()(hiss)[50:].max() < 0.1
    speech, envelope = syllables(4.0, 1)
    weights = SpeechGate()(speech + 0.003 * rng.standard_normal(len(speech)))
    on = envelope[features.WINDOW :: features.HOP][: len(weights)] > 0
    assert weights[on].mean() > 0.8 and weights[~on].mean() < 0.2


def test_the_stream_gives_the_whole_recordings_mouth_block_by_block(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from scipy.signal import resample_poly

    from export.voice import export_onnx
    from realtime.train.voice import VoiceToMouth, receptive_field
    from realtime.voice.model import VoiceMouthModel
    from realtime.voice.stream import VoiceStream

    torch.manual_seed(1)
    cfg = tiny_config(tmp_path)
    net = VoiceToMouth(cfg).eval()
    with torch.no_grad():
        net.basis.normal_(0, 0.05)
    path = export_onnx(net, tmp_path / "voice.onnx")
    field = receptive_field(cfg.dilations, cfg.running_mean_frames)
    (tmp_path / "voice.json").write_text(json.dumps({"lookahead_s": 0.08, "receptive_field": field}))
    model = VoiceMouthModel(path)
    audio16, _ = syllables(3.0, 5)
    mic = resample_poly(audio16, 3, 1)  # a 48 kHz microphone
    stream = VoiceStream(model, 48000)
    streamed = [out for i in range(0, len(mic), 960) if (out := stream.push(mic[i : i + 960])) is not None]
    times, offline = model.offsets(stream.resample.__class__(48000)(mic))
    t_last, mouth_last = streamed[-1]
    j = int(np.argmin(np.abs(times - t_last)))
    assert times[j] == pytest.approx(t_last, abs=1e-6)
    np.testing.assert_allclose(mouth_last, offline[j], atol=1e-4)
    # Every 20 ms block gives the newest mouth, two feature frames later than the last.
    assert len(streamed) >= len(mic) // 960 - 2


@pytest.mark.slow
def test_render_audio_over_a_driver_keeps_the_head_and_lasts_as_long_as_the_audio(tmp_path):
    from realtime.voice.model import default_model_path

    if not default_model_path().exists():
        pytest.skip("no shipped voice model in weights/")
    speech = media("clips/LipNet_grid_bbaf2n.mpg")  # 3.0 s of sound
    driver = media("clips/liveportrait_d0.mp4")  # 3.1 s of another person's head, no sound
    out = tmp_path / "driven.mp4"
    proc = cli(
        "render",
        "--avatar",
        "builtin",
        "--driver",
        driver,
        "--audio",
        speech,
        "--out",
        out,
        "--size",
        "320x320",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert duration_s(out, "Audio: aac") == pytest.approx(3.0, abs=0.05)


# ----------------------------------------------------------------------------- live: --lips voice


@pytest.mark.slow
@pytest.mark.parametrize("speaking", [True, False])
def test_run_lips_voice_without_a_camera_talks_with_the_microphone(tmp_path, null_sink, speaking):
    """A real PulseAudio path: a recording played into a null sink, its monitor as the microphone."""
    import os
    import shutil
    import signal

    from realtime.analysis import track_video
    from realtime.voice.model import default_model_path

    if not default_model_path().exists():
        pytest.skip("no shipped voice model in weights/")
    if shutil.which("paplay") is None:
        pytest.skip("paplay not installed (pulseaudio-utils)")
    speech = media("audio/dreamtalk_out_of_domain_narrative.wav")
    # Repeated: the run may take longer to start than one playing lasts on a busy host.
    loop = f"for i in 1 2 3 4 5 6; do paplay --device={null_sink} '{speech}'; done"
    player = subprocess.Popen(["sh", "-c", loop], start_new_session=True) if speaking else None
    try:
        out, metrics = tmp_path / "live.mp4", tmp_path / "m.json"
        proc = cli(
            "run",
            "--avatar",
            media("avatars/liveportrait_s0.jpg"),
            "--camera",
            "none",
            "--lips",
            "voice",
            "--audio-in",
            f"pulse:{null_sink}.monitor",
            "--sink",
            f"file:{out}",
            "--seconds",
            "6",
            "--size",
            "320x384",
            "--metrics-json",
            metrics,
            timeout=180,
        )
    finally:
        if player is not None:
            os.killpg(player.pid, signal.SIGTERM)  # the loop and its paplay
            player.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(metrics.read_text())
    assert report["lips"] == "voice" and report["voice_blocks"] > 50 and report["voice_errors"] == 0
    opening = track_video(str(out)).mouth
    if speaking:
        assert np.nanmax(opening) > 0.05 and np.nanstd(opening) > 0.01, opening
    else:
        assert np.nanmax(opening) < 0.03, opening  # a silent microphone: the mouth stays closed


def test_lips_voice_needs_a_microphone_and_no_camera(tmp_path):
    proc = cli("run", "--avatar", "builtin", "--camera", "none", "--sink", "null", "--seconds", "1")
    assert_one_line_error(proc, "--lips voice")
    proc = cli("run", "--avatar", "builtin", "--camera", "none", "--lips", "voice", "--sink", "null")
    assert_one_line_error(proc, "--audio-in")
