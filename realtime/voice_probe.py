"""Measuring when the voice's mouth moves against the delayed voice, through the real audio path.

Used by ``realtime bench --lips voice|auto``, ``benchmarks/voice_latency.py`` and the tests,
never by a live run (like ``realtime.audio_probe``).

One stereo PulseAudio null sink carries everything (as ``audio_probe.measure_bridge_delay``):
bursts of real speech separated by silence are played into its left channel; the
microphone the voice model listens to is the left channel of its monitor; the A/V bridge
records that same left channel and plays the delayed voice into the right channel. One
recording of the monitor then holds the voice as it entered (left) and as it leaves the
bridge (right), sample-aligned by the sound server. The live engine runs the real
per-frame path (voice tracker or ``LipSource``, retargeter, warp) at the video rate and
feeds the bridge its measured latency; each frame's commanded mouth opening is stamped
with the time the frame reached the sink. Per burst: the mouth's onset (first frame over a
third of that burst's widest opening) minus the sound's onset in each channel.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from realtime import mesh
from realtime.audio import SAMPLE_RATE, import_sounddevice, pulse_env
from realtime.audio_probe import loopback_bridge, wait_flowing
from realtime.frames import FaceTrack, Frame, Output
from realtime.stages import SinkBase, SourceBase, Stage

logger = logging.getLogger(__name__)

RECORD_BLOCK = 480  # 10 ms: the recorder's timestamps are that fine


def speech_bursts(
    speech: np.ndarray, rate: int, count: int, burst_s: float = 0.6, gap_s: float = 1.5
) -> np.ndarray:
    """``count`` bursts of the loudest stretches of ``speech`` (mono), each followed by silence,
    as 48 kHz float32 peaking at 0.5. Starts with a gap (the mouth must be closed before)."""
    from scipy.signal import resample_poly

    x = resample_poly(np.asarray(speech, np.float64), SAMPLE_RATE, rate) if rate != SAMPLE_RATE else speech
    x = np.asarray(x, np.float64)
    n = int(burst_s * SAMPLE_RATE)
    hop = n // 2
    starts = np.arange(0, max(1, len(x) - n), hop)
    energy = np.array([np.mean(x[s : s + n] ** 2) for s in starts])
    chosen: list[int] = []
    for i in np.argsort(-energy):  # loudest first, not overlapping
        if all(abs(starts[i] - c) >= n for c in chosen):
            chosen.append(int(starts[i]))
        if len(chosen) == count:
            break
    gap = np.zeros(int(gap_s * SAMPLE_RATE))
    ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * SAMPLE_RATE))
    pieces = [gap]
    for start in sorted(chosen):
        burst = x[start : start + n] * ramp
        pieces += [0.5 * burst / (np.abs(burst).max() + 1e-9), gap]
    return np.concatenate(pieces).astype(np.float32)


def onsets_s(
    signal: np.ndarray, rate: int, threshold_db: float = -30.0, min_gap_s: float = 0.6
) -> np.ndarray:
    """Sample times (s) where the 5 ms level first rises over ``threshold_db`` re the peak after at
    least ``min_gap_s`` below it."""
    hop = rate // 200
    frames = len(signal) // hop
    level = np.sqrt(np.mean(signal[: frames * hop].reshape(frames, hop) ** 2, axis=1))
    loud = 20 * np.log10(level / (level.max() + 1e-12) + 1e-12) > threshold_db
    out, quiet = [], min_gap_s  # the recording starts quiet
    for i, on in enumerate(loud):
        if on and quiet >= min_gap_s:
            out.append(i * hop / rate)
        quiet = 0.0 if on else quiet + hop / rate
    return np.array(out)


class MouthLog(Stage):
    """A tracker wrapper that notes each frame's commanded mouth opening (face sizes)."""

    def __init__(self, tracker: Stage) -> None:
        self.tracker = tracker
        self.opening: dict[int, float] = {}
        self.tracked: dict[int, float] = {}  # when each frame's mouth was commanded

    def open(self) -> MouthLog:
        self.tracker.open()
        return self

    def close(self) -> None:
        self.tracker.close()

    def process(self, frame: Frame) -> FaceTrack:
        track = self.tracker.process(frame)
        if track.found:
            self.opening[frame.index] = mesh.mouth_opening(track.landmarks)
            self.tracked[frame.index] = time.monotonic()
        return track

    def __getattr__(self, name: str) -> Any:  # the wrapped stage's own state (summary, voice)
        return getattr(self.__dict__["tracker"], name)


class UntilSource(SourceBase):
    """A still image at ``fps`` until ``done`` is set (the probe's clock; nothing to track)."""

    live = False

    def __init__(self, image: np.ndarray, fps: float, done: Any) -> None:
        from realtime.sources import ImageSource

        self._images = ImageSource(image, fps=fps)
        self.fps, self.done = fps, done
        self.width, self.height = image.shape[1], image.shape[0]

    def read(self) -> Frame | None:
        return None if self.done.is_set() else self._images.read()


class StampSink(SinkBase):
    """Notes when each frame first reached the sink (``time.monotonic()``)."""

    def __init__(self) -> None:
        self.name = "stamp"
        self.sent: dict[int, float] = {}

    def open(self, width: int, height: int, fps: float) -> None:
        self.sent = {}

    def send(self, out: Output) -> None:
        self.sent.setdefault(out.index, time.monotonic())  # a repeated frame was shown when first sent

    def close(self) -> None:
        pass


def measure_mouth_latency(
    sink: str,
    bursts: np.ndarray,
    lips: str = "voice",
    fps: float = 30.0,
    avatar: str = "builtin",
    size: tuple[int, int] = (320, 384),
    offset_ms: float | None = None,
    model_path: str | None = None,
) -> dict[str, Any]:
    """Play ``bursts`` (48 kHz mono) through the null sink ``sink`` and time the avatar's mouth.

    ``lips``: voice (the camera-less voice tracker of ``run --camera none``) or auto (``LipSource``
    with no face in view, so the voice drives; its camera side sees a blank frame). ``offset_ms``
    is the bridge's offset (default: what ``realtime run`` adds, ``voice_lag_ms()``).

    Returns per burst the mouth onset minus the sound's onset as it entered the microphone
    (``mouth_vs_input_ms``) and as it left the bridge (``mouth_vs_output_ms``: the A/V offset,
    positive = the mouth late), their medians and spread, and the bridge's stats.
    """
    from realtime.frames import Mode
    from realtime.loop import Engine
    from realtime.session import PipelineConfig, make_processor
    from realtime.voice.live import LiveVoiceTracker, MicrophoneMouth, voice_lag_ms

    sd = import_sounddevice()
    offset = voice_lag_ms(model_path) if offset_ms is None else offset_ms
    processor = make_processor(
        PipelineConfig(avatar=avatar, mode=Mode.REENACT, generator="warp", size=size, occlusion=False), size
    )
    microphone = MicrophoneMouth(f"pulse:{sink}.monitor", model_path, input_channels=2, input_channel=0)
    from realtime.retarget import Retargeter

    rest = Retargeter.closed_mouth(processor.avatar.landmarks.astype(np.float64))
    if lips == "auto":
        from realtime.voice.driver import IdleMotion
        from realtime.voice.lips import LipSource

        # A blank camera never shows a face: the chooser's stand-in (the avatar's rest face) talks.
        tracker: Stage = LipSource(
            processor.tracker,
            microphone,
            mode="auto",
            idle=IdleMotion(0),
            neutral_of=lambda: processor.retargeter.neutral,
            rest_face=rest,
            set_neutral=processor.retargeter.set_neutral,
        )
    else:
        from realtime.voice.driver import IdleMotion, VoiceFace

        tracker = LiveVoiceTracker(VoiceFace(rest, IdleMotion(0)), microphone)
        processor.retargeter.set_neutral(rest)
    log = MouthLog(tracker)
    processor.tracker = log
    stamps = StampSink()
    bridge = loopback_bridge(sink, isolated=True, offset_ms=offset)
    recorded: list[tuple[float, np.ndarray]] = []
    position: list[int | None] = [None]
    played = [0]
    stereo = np.zeros((len(bursts), 2), np.float32)
    stereo[:, 0] = bursts

    def play(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        played[0] += 1
        outdata.fill(0)
        if position[0] is not None:
            chunk = stereo[position[0] : position[0] + frames]
            outdata[: len(chunk)] = chunk
            position[0] += frames

    def record(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        recorded.append((time.monotonic(), indata.copy()))

    import threading

    done = threading.Event()
    source = UntilSource(np.zeros((64, 64, 3), np.uint8), fps=fps, done=done)
    engine = Engine(source, processor, [stamps], fps=fps, on_latency=bridge.set_video_latency_ms)

    bridge.open()
    recorder = player = None
    result: dict[str, Any] = {}
    try:
        probe = {"device": "pulse", "samplerate": SAMPLE_RATE, "channels": 2, "dtype": "float32"}
        with pulse_env("PULSE_SOURCE", f"{sink}.monitor"):
            recorder = sd.InputStream(**probe, blocksize=RECORD_BLOCK, latency="low", callback=record)
        with pulse_env("PULSE_SINK", sink):
            # Its own latency doesn't matter (the recording is the reference): large, so a busy host
            # doesn't break the bursts up.
            player = sd.OutputStream(**probe, blocksize=2048, latency="high", callback=play)
        recorder.start()
        player.start()
        runner = threading.Thread(target=lambda: result.update(engine.run()), name="probe-engine")
        runner.start()
        # The engine, the microphone and the bridge start and settle; then the bursts play.
        wait_flowing(lambda: len(recorded), per_s=50.0, timeout_s=20.0)
        wait_flowing(lambda: microphone.blocks, per_s=25.0, timeout_s=20.0)
        wait_flowing(lambda: len(stamps.sent), per_s=fps / 2, timeout_s=20.0)
        time.sleep(1.5)
        position[0] = 0
        give_up = time.monotonic() + 3.0 * len(bursts) / SAMPLE_RATE + 10.0
        while position[0] < len(stereo) and time.monotonic() < give_up:
            time.sleep(0.05)
        # What the player has buffered still has to reach the sink, then pass the bridge.
        time.sleep(float(player.latency) + offset / 1000.0 + 0.8)
        done.set()
        runner.join(timeout=30.0)
    finally:
        done.set()
        for stream in (player, recorder):
            if stream is not None:
                stream.stop()
                stream.close()
        bridge_stats = bridge.stats()
        bridge.close()
    report = analyse(recorded, log.opening, stamps.sent, bridge_stats, result, lips, fps, offset, log.tracked)
    report["microphone_blocks"], report["microphone_errors"] = microphone.blocks, microphone.errors
    return report


def sample_times(recorded: list[tuple[float, np.ndarray]], window_s: float = 2.0) -> np.ndarray:
    """``time.monotonic()`` of every recorded sample.

    A block's callback can run late (a busy host) but never before its last sample exists, so
    the stream's start is the lowest ``callback time - samples so far / rate`` among the blocks
    within ``window_s`` of each block (the window follows drift and a lost block)."""
    callback = np.array([t for t, _ in recorded])
    ends = np.cumsum([len(block) for _, block in recorded])
    start = callback - ends / SAMPLE_RATE
    out = []
    for i, (t, block) in enumerate(recorded):
        near = np.abs(callback - t) <= window_s
        first = float(start[near].min()) + (ends[i] - len(block)) / SAMPLE_RATE
        out.append(first + np.arange(len(block)) / SAMPLE_RATE)
    return np.concatenate(out)


def mouth_onset(
    t: np.ndarray,
    opening: np.ndarray,
    t_sound: float,
    before_s: float = 0.3,
    after_s: float = 1.2,
    min_peak: float = 0.02,
) -> float | None:
    """When the mouth first opens past a third of its widest for the sound starting at ``t_sound``:
    the first crossing after it was last below that (a mouth still open from before doesn't count);
    None when it hardly opens."""
    window = (t >= t_sound - before_s) & (t <= t_sound + after_s)
    if window.sum() < 3 or opening[window].max() < min_peak:
        return None
    level = opening[window].max() / 3.0
    x, times = opening[window], t[window]
    below = np.flatnonzero(x <= level)
    if not len(below):
        return None
    above = np.flatnonzero((x > level) & (np.arange(len(x)) > below[0]))
    return float(times[above[0]]) if len(above) else None


def analyse(
    recorded: list[tuple[float, np.ndarray]],
    opening: dict[int, float],
    sent: dict[int, float],
    bridge_stats: dict,
    engine_summary: dict,
    lips: str,
    fps: float,
    offset_ms: float,
    tracked: dict[int, float] | None = None,
) -> dict[str, Any]:
    """Onsets of the sound (both channels) and of the mouth on one monotonic clock; per burst offsets."""
    if not recorded:
        return {"clean": False, "why": "nothing was recorded"}
    blocks = np.concatenate([block for _, block in recorded])
    times = sample_times(recorded)
    shown = sorted(i for i in opening if i in sent)
    t_shown, mouth_shown = np.array([sent[i] for i in shown]), np.array([opening[i] for i in shown])
    commanded = sorted(i for i in opening if i in (tracked or {}))
    t_cmd = np.array([tracked[i] for i in commanded]) if tracked else np.zeros(0)
    mouth_cmd = np.array([opening[i] for i in commanded])
    index = np.arange(len(times))
    rows = []
    outs = onsets_s(blocks[:, 1], SAMPLE_RATE)
    for t_in in onsets_s(blocks[:, 0], SAMPLE_RATE):
        t_in_abs = float(np.interp(t_in * SAMPLE_RATE, index, times))
        after = [t for t in outs if t >= t_in - 0.01]
        t_out_abs = float(np.interp(after[0] * SAMPLE_RATE, index, times)) if after else np.nan
        t_open = mouth_onset(t_shown, mouth_shown, t_in_abs)
        if t_open is None:
            rows.append({"t_in": t_in_abs, "opened": False})
            continue
        row = {
            "t_in": t_in_abs,
            "opened": True,
            "mouth_vs_input_ms": round(1000.0 * (t_open - t_in_abs), 1),
            "mouth_vs_output_ms": round(1000.0 * (t_open - t_out_abs), 1),
            "output_vs_input_ms": round(1000.0 * (t_out_abs - t_in_abs), 1),
        }
        t_cmd_open = mouth_onset(t_cmd, mouth_cmd, t_in_abs)
        if t_cmd_open is not None:
            row["commanded_vs_input_ms"] = round(1000.0 * (t_cmd_open - t_in_abs), 1)
        rows.append(row)
    opened = [r for r in rows if r["opened"]]

    def stats(key: str) -> dict[str, float]:
        values = np.array([r[key] for r in opened if key in r and np.isfinite(r[key])])
        if not len(values):
            return {}
        return {
            "median": round(float(np.median(values)), 1),
            "min": round(float(values.min()), 1),
            "max": round(float(values.max()), 1),
            "iqr": round(float(np.subtract(*np.percentile(values, [75, 25]))), 1),
        }

    return {
        "lips": lips,
        "fps": fps,
        "bridge_offset_ms": round(offset_ms, 1),
        "bursts": len(rows),
        "opened": len(opened),
        "mouth_vs_output_ms": stats("mouth_vs_output_ms"),
        "mouth_vs_input_ms": stats("mouth_vs_input_ms"),
        "output_vs_input_ms": stats("output_vs_input_ms"),
        "commanded_vs_input_ms": stats("commanded_vs_input_ms"),
        "video_latency_ms": engine_summary.get("latency_ms", {}),
        "bridge_delay_ms": bridge_stats.get("audio_delay_ms"),
        "rows": rows,
    }
