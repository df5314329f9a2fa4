"""``--lips auto|voice`` with a camera: the mouth's source chooser (``realtime.voice.lips``) on real clips.

A real GRID clip (a frontal speaker with his own voice) is tracked by the real mediapipe
tracker; its voice goes through the shipped voice model; a real hand (HaGRID photo, cut
out along its landmarks) is pasted over the mouth for some frames and other frames are
blanked to lose the face. The real hand model decides when the mouth is covered.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from realtime import mesh
from realtime.frames import Frame
from realtime.stages import Stage
from realtime.voice import mouth
from tests import test_audio_pulse
from tests.conftest import cli, media

# A real PulseAudio server and a fresh null sink per test (tests/test_audio_pulse.py).
pulse, null_sink = test_audio_pulse.pulse, test_audio_pulse.null_sink

FPS = 25.0
BLANK = range(26, 40)  # frames with no face at all (the clip is played twice: 150 frames)
HAND = range(100, 114)  # frames with a hand over the mouth; both while he speaks


class ReplayVoice(Stage):
    """The real model's mouth for a clip's audio, handed out frame by frame as a microphone would."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.offsets, self.index = offsets, 0

    def latest(self) -> np.ndarray:
        return self.offsets[min(self.index, len(self.offsets) - 1)]


def assert_one_line_error(proc, fragment: str) -> None:
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def grid_clip():
    """(frames, voice offsets per frame) of GRID bbaf2n, played twice, with a hand over the
    mouth and blank frames."""
    from realtime.analysis import read_frames
    from realtime.occlusion import HandDetector, hand_mask
    from realtime.tracking import find_face
    from realtime.voice import features
    from realtime.voice.audio_file import read_audio
    from realtime.voice.model import VoiceMouthModel, default_model_path

    if not default_model_path().exists():
        pytest.skip("no shipped voice model in weights/")
    clip = media("clips/LipNet_grid_bbaf2n.mpg")
    frames = [cv2.resize(f, (720, 576)) for f in read_frames(str(clip), 75)] * 2
    model = VoiceMouthModel().open()
    times, offsets = model.offsets(np.tile(read_audio(str(clip), features.RATE), 2))
    voice = model.at(np.arange(len(frames)) / FPS, times, offsets)

    photo = cv2.imread(str(media("occlusion/mediapipe_hagrid_call_5.jpg")))
    with HandDetector(complexity=1, tracking=False) as detector:
        hand = max(detector.detect(photo), key=lambda h: float(np.ptp(h[:, 1])))
    cut = hand_mask([hand], photo.shape[:2], (0, 0), 0)
    face = find_face(frames[HAND.start])
    scale = mesh.face_size(face) / mesh.face_size(find_face(photo))
    shift = face[mesh.LOWER_LIP_INNER_MID, :2] - scale * hand[[0, 5, 9, 13, 17]].mean(axis=0)
    matrix = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]], np.float32)
    size = frames[0].shape[1::-1]
    pasted = cv2.warpAffine(photo, matrix, size)
    alpha = cv2.warpAffine(cut, matrix, size).astype(np.float32)[..., None] / 255.0
    for i in HAND:
        frames[i] = (frames[i] * (1 - alpha) + pasted * alpha).astype(np.uint8)
    for i in BLANK:
        frames[i] = np.zeros_like(frames[i])
    return frames, voice


def run_chooser(frames, voice, mode: str, occlusion: bool = True, camera_delay_s: float = 0.0):
    """Per frame: the chooser's output face, the camera's face (None if lost), the voice's mouth
    offsets, the chooser's state."""
    from dataclasses import replace

    from realtime.occlusion import HandOccluder
    from realtime.tracking import FaceTracker
    from realtime.voice.lips import LipSource

    tracker = FaceTracker()
    replay = ReplayVoice(voice)
    occluder = HandOccluder(isolated=False) if occlusion else None
    seen = []

    class Recording(Stage):
        def process(self, frame):
            track = tracker.process(frame)
            seen.append(None if not track.found else track.landmarks.astype(np.float64))
            return track

    chooser = LipSource(Recording(), replay, mode=mode, occluder=occluder, camera_delay_s=camera_delay_s)
    rows = []
    with chooser:
        for i, image in enumerate(frames):
            replay.index = i
            track = chooser.process(Frame(image, i, i / FPS))
            rows.append((track.landmarks.astype(np.float64), seen[-1], voice[i], replace(chooser.state)))
    tracker.close()
    return rows, chooser


def lower_face(face: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """The mouth points' canonical offsets from the neutral (head pose undone), (K, 2)."""
    return mouth.displacement(face, neutral)


@pytest.mark.slow
def test_auto_follows_the_camera_while_it_sees_the_mouth_and_the_voice_when_it_cannot(grid_clip):
    frames, voice = grid_clip
    rows, chooser = run_chooser(frames, voice, "auto")
    neutral = chooser._neutral
    fade = int(np.ceil(chooser.policy.fade_s * FPS))
    back = fade + int(np.ceil(chooser.policy.trust_after_s * FPS)) + 2  # + the trackers settling

    def error_to(i: int, which: str) -> float:
        out, camera, spoken, _ = rows[i]
        want = lower_face(camera, neutral) if which == "camera" else spoken
        return float(np.abs(lower_face(out, neutral) - want).max())

    camera_frames = [
        i for i in range(len(rows)) if i < BLANK.start or BLANK.stop + back <= i < HAND.start - 1
    ]
    camera_frames += [i for i in range(HAND.stop + back, len(rows))]
    voice_frames = [i for i in BLANK if i >= BLANK.start + fade + 1]
    # The real hand model must see the hand first (about one frame); then the fade.
    hand_voice = [i for i in HAND if i >= HAND.start + fade + 2]
    assert len(camera_frames) > 90 and len(voice_frames) >= 8 and len(hand_voice) >= 4

    for i in camera_frames:  # the camera's mouth; once the head is back too, the camera's face itself
        out, camera, _, state = rows[i]
        assert state.voice_share == 0.0 and state.source == "camera", (i, state)
        assert error_to(i, "camera") < 1e-3, i
        if state.idle_share == 0.0:
            assert np.abs(out - camera).max() < 0.05, i
    for i in voice_frames:
        assert rows[i][3].reason == "lost" and rows[i][3].voice_share == 1.0
        # Face sizes: the voice's mouth, also while the head eases from its last pose into idle motion.
        assert error_to(i, "voice") < 2e-3, i
    reasons = [rows[i][3].reason for i in HAND]
    assert reasons.count("covered") >= len(HAND) - 2, reasons
    for i in hand_voice:
        assert rows[i][3].voice_share == 1.0 and error_to(i, "voice") < 2e-3, (i, rows[i][3])
    # The voice really differs from the camera there (else the test could not tell them apart).
    spread = [float(np.abs(lower_face(rows[i][1], neutral) - rows[i][2]).max()) for i in camera_frames]
    assert np.median(spread) > 0.01

    # Each switch is a cross-fade: the voice's share moves by at most 0.31 a frame (smoothstep over
    # 5 frames), passes through intermediate values, and the mouth moves no faster than its sources.
    shares = np.array([r[3].voice_share for r in rows])
    assert np.abs(np.diff(shares)).max() <= 0.31
    for start in (BLANK.start, BLANK.stop, HAND.start, HAND.stop):
        window = shares[start - 2 : start + back + 3]
        assert ((window > 0.01) & (window < 0.99)).sum() >= 3, (start, window)
    opening = np.array([mesh.mouth_opening(r[0]) for r in rows])
    voice_opening = np.array([mesh.mouth_opening(mouth.apply(neutral, r[2])) for r in rows])
    held = None
    camera_opening = []
    for r in rows:  # the camera's mouth as the chooser fades it: the last trusted one when untrusted
        if r[1] is not None and not r[3].reason:
            held = mesh.mouth_opening(r[1])
        camera_opening.append(held if held is not None else 0.0)
    camera_opening = np.array(camera_opening)
    source_step = np.maximum(np.abs(np.diff(voice_opening)), np.abs(np.diff(camera_opening)))
    gap = np.abs(voice_opening - camera_opening)[1:]
    assert (np.abs(np.diff(opening)) <= source_step + 0.31 * gap + 0.01).all()


@pytest.mark.slow
def test_lips_voice_keeps_the_cameras_head_and_eyes_and_takes_the_voices_mouth(grid_clip):
    frames, voice = grid_clip
    rows, chooser = run_chooser(frames[:20], voice[:20], "voice", occlusion=False)
    neutral = chooser._neutral
    above = np.setdiff1d(
        np.arange(mesh.NUM_LANDMARKS), chooser._lower
    )  # above the nose, and the rigid points
    assert len(above) > 250
    for out, camera, spoken, state in rows:
        assert state.voice_share == 1.0
        assert np.abs(out[above] - camera[above]).max() < 0.05  # head, eyes and brows: the camera's
        assert np.abs(lower_face(out, neutral) - spoken).max() < 1e-3  # the mouth: the voice's


@pytest.mark.slow
def test_a_lost_face_idles_and_keeps_talking(grid_clip):
    """Long after the face is gone the head still moves (idle motion) and the mouth follows the voice."""
    frames, voice = grid_clip
    blank = [np.zeros_like(frames[0])] * 40
    rows, chooser = run_chooser(frames[:10] + blank, voice[:50], "auto", occlusion=False)
    tail = rows[25:]
    assert all(r[3].idle_share == 1.0 and r[3].reason == "lost" for r in tail)
    centres = np.array([r[0][mesh.RIGID, :2].mean(axis=0) for r in tail])
    assert np.ptp(centres, axis=0).max() > 0.3  # px: the head is not frozen
    neutral = chooser._neutral
    errors = [np.abs(lower_face(r[0], neutral) - r[2]).max() for r in tail]
    assert max(errors) < 2e-3
    assert np.ptp([mesh.mouth_opening(r[0]) for r in tail]) > 0.02  # and it talks


def test_lips_choice_and_bad_combinations_fail_in_one_line():
    from realtime.voice.lips import resolve_lips

    # A microphone bridged to a virtual microphone, with a camera: auto. Without a camera: voice.
    assert resolve_lips(None, "pulse:mic", camera=True, swap=False, audio_out="pulse:out") == "auto"
    assert resolve_lips(None, "pulse:mic", camera=False, swap=False) == "voice"
    assert resolve_lips(None, None, camera=True, swap=False) == "video"
    assert resolve_lips(None, "pulse:mic", camera=True, swap=True, audio_out="pulse:out") == "video"
    # --audio-in alone with a camera still asks for --audio-out (the bridge), unless --lips is given.
    assert resolve_lips(None, "pulse:mic", camera=True, swap=False) == "video"
    assert resolve_lips("voice", "pulse:mic", camera=True, swap=False) == "voice"
    proc = cli("run", "--avatar", "builtin", "--lips", "auto", "--sink", "null", "--seconds", "1")
    assert_one_line_error(proc, "--audio-in")
    proc = cli(
        "run", "--avatar", "builtin", "--mode", "swap", "--lips", "voice", "--audio-in", "x", "--sink", "null"
    )
    assert_one_line_error(proc, "--mode reenact")


# ------------------------------------------------------------------ the mouth against the delayed voice


def test_onsets_and_offsets_are_read_on_one_clock():
    """The analysis itself, on a recording with known timings: bursts enter at 1.0 s and 3.0 s,
    leave the bridge 150 ms later; the mouth opens 120 ms after each enters; callbacks run late."""
    from realtime.voice_probe import analyse

    rate, block = 48000, 480
    n = 5 * rate
    x = np.zeros((n, 2), np.float32)
    rng = np.random.default_rng(0)
    for start in (1.0, 3.0):
        i = int(start * rate)
        x[i : i + rate // 2, 0] = rng.uniform(-0.5, 0.5, rate // 2)
        j = i + int(0.150 * rate)
        x[j : j + rate // 2, 1] = rng.uniform(-0.5, 0.5, rate // 2)
    t0 = 100.0
    # Each block's callback runs 0-30 ms after its last sample (never before).
    recorded = [
        (t0 + (k + 1) * block / rate + rng.uniform(0, 0.03), x[k * block : (k + 1) * block])
        for k in range(n // block)
    ]
    frames = np.arange(0, 5, 1 / 30)
    opening = {
        i: (0.1 if any(s + 0.12 <= t < s + 0.6 for s in (1.0, 3.0)) else 0.0) for i, t in enumerate(frames)
    }
    sent = {i: t0 + t for i, t in enumerate(frames)}
    report = analyse(recorded, opening, sent, {}, {}, "voice", 30.0, 100.0, tracked=sent)
    assert report["bursts"] == 2 and report["opened"] == 2
    # The mouth's first open frame is the first 1/30 s tick at or after +120 ms: within one frame.
    assert 120 <= report["mouth_vs_input_ms"]["median"] <= 120 + 1000 / 30 + 1
    assert report["output_vs_input_ms"]["median"] == pytest.approx(150, abs=6)
    assert report["mouth_vs_output_ms"]["median"] == pytest.approx(
        report["mouth_vs_input_ms"]["median"] - 150, abs=6
    )


@pytest.mark.slow
def test_the_mouth_meets_the_delayed_voice_through_pulseaudio(null_sink):
    """Speech bursts into a real null sink: the mouth opens for them and closes between, and it moves
    within a few frames of the voice that the bridge delays by the video latency plus the voice lag."""
    from realtime.voice.audio_file import read_audio
    from realtime.voice.live import voice_lag_ms
    from realtime.voice.model import default_model_path
    from realtime.voice_probe import measure_mouth_latency, speech_bursts

    if not default_model_path().exists():
        pytest.skip("no shipped voice model in weights/")
    speech = read_audio(str(media("audio/dreamtalk_out_of_domain_narrative.wav")), 16000)
    report = measure_mouth_latency(null_sink, speech_bursts(speech, 16000, count=4))
    assert report["microphone_errors"] == 0
    assert report["bursts"] == 4 and report["opened"] >= 3, report["rows"]
    assert report["bridge_offset_ms"] == pytest.approx(voice_lag_ms())
    # The delayed voice leaves the bridge the video latency plus the offset after it came in.
    video = report["video_latency_ms"]["p50"]
    assert report["output_vs_input_ms"]["median"] == pytest.approx(video + voice_lag_ms(), abs=40)
    # Loose on purpose (a busy 2-core host): a mouth that trails by seconds (a starved voice thread,
    # as the callback-bound stream did) or leads by far fails; benchmarks/RESULTS.md has the numbers.
    assert abs(report["mouth_vs_output_ms"]["median"]) < 200, report["rows"]


def test_a_face_turned_away_hands_the_mouth_to_the_voice():
    """Yaw from mediapipe's depth: a frontal GRID speaker reads near 0, Vermeer's girl looking over
    her shoulder about 33 degrees; past the limit the chooser takes the voice."""
    from realtime.analysis import read_frames
    from realtime.tracking import FaceTracker, find_face
    from realtime.voice.lips import LipPolicy, LipSource, yaw_deg

    frontal = next(iter(read_frames(str(media("clips/LipNet_grid_bbaf2n.mpg")), 1)))
    turned = cv2.imread(str(media("avatars/liveportrait_s10.jpg")))
    assert abs(yaw_deg(find_face(frontal))) < 10
    assert abs(yaw_deg(find_face(turned))) > 25
    voice = ReplayVoice(np.zeros((1, len(mouth.MOUTH_POINTS), 2)))
    lines = []
    policy = LipPolicy(max_yaw_deg=25.0)
    with LipSource(FaceTracker(), voice, "auto", policy, on_status=lines.append) as chooser:
        for i in range(8):
            chooser.process(Frame(turned, i, i / FPS))
    assert chooser.state.reason == "turned" and chooser.state.voice_share == 1.0
    assert lines == ["mouth: voice (face turned away)"]  # the overlay's line, told once


@pytest.mark.slow
def test_before_any_face_the_avatar_already_talks_then_the_camera_takes_over(grid_clip):
    """Nobody in view at the start: the voice drives a stand-in rest face (as with --camera none);
    the first real face becomes the driver's neutral and the camera takes the mouth back."""
    from realtime.retarget import Retargeter
    from realtime.tracking import FaceTracker, find_face
    from realtime.voice.lips import LipSource

    frames, voice = grid_clip
    rest = Retargeter.closed_mouth(
        find_face(cv2.imread(str(media("avatars/liveportrait_s0.jpg")))).astype(float)
    )
    start = BLANK.start  # the voice speaks from here on; the face appears 14 frames later
    clip = [np.zeros_like(frames[0])] * 14 + frames[start + 14 : start + 40]
    spoken = voice[start : start + 40]
    neutrals = []
    replay = ReplayVoice(spoken)
    rows = []
    with LipSource(FaceTracker(), replay, "auto", rest_face=rest, set_neutral=neutrals.append) as chooser:
        for i, image in enumerate(clip):
            replay.index = i
            rows.append(
                (chooser.process(Frame(image, i, i / FPS)).landmarks.astype(float), replace_state(chooser))
            )
    assert len(neutrals) == 2 and np.array_equal(neutrals[0], rest)  # the stand-in, then the real face
    for i in range(14):  # the stand-in talks with the voice's mouth
        assert rows[i][1].reason == "lost"
        assert np.abs(lower_face(rows[i][0], rest) - spoken[i]).max() < 2e-3
    assert np.ptp([mouth.opening(spoken[i]) for i in range(14)]) > 0.02
    assert mesh.mouth_opening(neutrals[1]) < 0.03  # the user's own face, closed
    settled = [
        i for i in range(14, len(rows)) if rows[i][1].voice_share == 0.0 and rows[i][1].idle_share == 0.0
    ]
    assert len(settled) > 10 and settled[0] < 14 + 16
    assert all(rows[i][1].source == "camera" and not rows[i][1].reason for i in settled)


def replace_state(chooser):
    from dataclasses import replace

    return replace(chooser.state)


@pytest.mark.slow
def test_run_lips_voice_with_a_camera_talks_with_the_microphone(tmp_path, null_sink):
    """`run --input CLIP --lips voice --audio-in MIC`: the clip is the camera (head, eyes), a real
    PulseAudio monitor the microphone; every tracked frame's mouth is the voice's."""
    import os
    import shutil
    import signal
    import subprocess

    from realtime.analysis import track_video
    from realtime.voice.model import default_model_path

    if not default_model_path().exists():
        pytest.skip("no shipped voice model in weights/")
    if shutil.which("paplay") is None:
        pytest.skip("paplay not installed (pulseaudio-utils)")
    speech = media("audio/dreamtalk_out_of_domain_narrative.wav")
    # Repeated: the run may take longer to start than one playing lasts on a busy host.
    loop = f"for i in 1 2 3 4 5 6; do paplay --device={null_sink} '{speech}'; done"
    player = subprocess.Popen(["sh", "-c", loop], start_new_session=True)
    try:
        out, metrics = tmp_path / "live.mp4", tmp_path / "m.json"
        proc = cli(
            "run",
            "--avatar",
            media("avatars/liveportrait_s0.jpg"),
            "--input",
            media("clips/LipNet_grid_bbaf2n.mpg"),
            "--loop",
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
        os.killpg(player.pid, signal.SIGTERM)  # the loop and its paplay
        player.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(metrics.read_text())
    assert report["lips"] == "voice" and report["voice_errors"] == 0 and report["voice_blocks"] > 50
    assert report["lips_frames"] > 20 and report["lips_voice_frames"] == report["lips_frames"]
    opening = track_video(str(out)).mouth
    assert np.nanmax(opening) > 0.05 and np.nanstd(opening) > 0.01, opening


@pytest.mark.slow
def test_auto_can_hold_the_cameras_mouth_back_to_meet_a_delayed_voice(grid_clip):
    """With the bridge delaying the voice for the voice's mouth, auto shows the camera's mouth that
    much later too (0.1 s: three frames back at 25 fps), while the head stays current."""
    frames, voice = grid_clip
    rows, chooser = run_chooser(frames[:20], voice[:20], "auto", occlusion=False, camera_delay_s=0.1)
    neutral = chooser._neutral
    above = np.setdiff1d(np.arange(mesh.NUM_LANDMARKS), chooser._lower)
    for i in range(3, 20):
        out, camera, _, state = rows[i]
        assert state.source == "camera" and state.voice_share == 0.0
        assert np.abs(out[above] - camera[above]).max() < 0.05
        assert np.abs(lower_face(out, neutral) - lower_face(rows[i - 3][1], neutral)).max() < 1e-3
    moved = [
        np.abs(lower_face(rows[i][1], neutral) - lower_face(rows[i - 3][1], neutral)).max()
        for i in range(3, 20)
    ]
    assert max(moved) > 0.01  # the mouth moved in those frames, so the delay is visible
