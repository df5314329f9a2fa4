"""Lips from the voice on held-out speakers: render each clip's own audio onto its first frame.

    python benchmarks/voice_eval.py [--cache .train_cache_voice] [--json benchmarks/results/voice_eval.json]
        [--sheet benchmarks/results/voice_contact_sheet.png] [--work /tmp/voice_eval]

For every clip of the voice model's validation people (``realtime.train.voice_data``), three
renders of its first frame, each tracked back with mediapipe (no smoothing):

- ``voice``: ``realtime render --audio CLIP`` (the shipped model, idle head motion, blinks);
- ``energy``: the same render with the mouth opened in proportion to the audio's loudness
  (dB above the clip's noise floor, same 80 ms look-ahead), along the average opening motion;
- ``video``: ``realtime render --driver CLIP``, the warp driven by the real video.

Scores per clip: mouth-opening Pearson r against the real video (inner-lip gap over face
size, both tracked); lip-landmark error against the video-driven render (40 lip points, head
pose undone on the rigid points, mean distance in face sizes); silence closed: share of the
frames inside silence segments (quiet for 0.3 s or more: 25 dB under the clip's loud frames, or
under -55 dBFS; 0.1 s trimmed at both ends) whose rendered mouth is closed (tracked gap < 0.03 face sizes, the retargeter's OPEN_FROM), and
whose commanded mouth is closed (the model's gated offsets open the lips < 0.01 face sizes). Also the voice
render with pink noise mixed in at 10 dB SNR, and recordings of noise alone and silence.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.io import wavfile

from realtime import mesh
from realtime.analysis import pearson, read_frames, track_video
from realtime.retarget import OPEN_FROM
from realtime.voice import features, mouth
from realtime.voice.audio_file import read_audio
from realtime.voice.model import SILENCE_DBFS, VoiceMouthModel
from realtime.voice.render import render_voice

logger = logging.getLogger("voice_eval")
LIPS = mesh.INNER_LIP + mesh.OUTER_LIP
SILENT_BELOW_LOUD_DB = 25.0
COMMANDED_CLOSED = 0.01  # face sizes of inner-lip gap over the avatar's rest


def frame_db(samples: np.ndarray, count: int, fps: float) -> np.ndarray:
    """Level (dBFS) of the audio around each video frame (one frame interval)."""
    hop = features.RATE / fps
    out = np.full(count, -120.0)
    for i in range(count):
        chunk = samples[int(i * hop) : int((i + 1) * hop)]
        if len(chunk):
            out[i] = 10 * np.log10(np.mean(chunk.astype(np.float64) ** 2) + 1e-12)
    return out


def silent(levels: np.ndarray, fps: float, min_s: float = 0.3, edge_s: float = 0.1) -> np.ndarray:
    """Frames inside silence segments: quiet (25 dB under the clip's loud frames, or under
    -55 dBFS) for at least ``min_s``, less ``edge_s`` at both ends (lips close and open
    around the sound)."""
    quiet = (levels < np.percentile(levels, 90) - SILENT_BELOW_LOUD_DB) | (levels < SILENCE_DBFS)
    out = np.zeros_like(quiet)
    edge = int(round(edge_s * fps))
    start = None
    for i, q in enumerate([*quiet, False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if i - start >= min_s * fps:
                out[start + (edge if start > 0 else 0) : i - (edge if i < len(quiet) else 0)] = True
            start = None
    return out


def opening_direction(cache_clips: list[dict]) -> np.ndarray:
    """Average mouth offsets per unit of inner-lip opening on the training people."""
    flat, gap = [], []
    for clip in cache_clips:
        if clip["group"] != "train":
            continue
        ok = ~np.isnan(clip["offsets"][:, 0, 0])
        flat.append(clip["offsets"][ok])
        gap.append(mouth.opening(clip["offsets"][ok]))
    flat, gap = np.concatenate(flat), np.concatenate(gap)
    return (np.tensordot(gap, flat, axes=(0, 0)) / (gap @ gap)).astype(np.float32)


def energy_source(direction: np.ndarray, lookahead_s: float = 0.08):
    """Baseline: jaw opening from the loudness envelope (dB over the noise floor, 30 dB = 0.12)."""

    def offsets(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mel = features.log_mel(samples)
        db = 10 * np.log10(np.exp(mel).sum(axis=1) + 1e-12)
        floor = np.percentile(db, 10)
        amount = np.clip((db - floor - 6.0) / 30.0, 0.0, 1.0) * 0.12
        amount = np.convolve(amount, np.ones(5) / 5, mode="full")[: len(amount)]  # causal 50 ms smoothing
        times = features.frame_end_s(np.arange(len(mel))) - lookahead_s
        return times, amount[:, None, None] * direction[None]

    return offsets


def lip_error(faces: list, reference: list, avatar: np.ndarray) -> float:
    errors = []
    size = mesh.face_size(avatar)
    for face, ref in zip(faces, reference, strict=False):
        if face is None or ref is None:
            continue
        a, b = mouth.unpose(face.astype(np.float64), avatar), mouth.unpose(ref.astype(np.float64), avatar)
        errors.append(float(np.linalg.norm(a[LIPS, :2] - b[LIPS, :2], axis=1).mean()) / size)
    return float(np.mean(errors)) if errors else float("nan")


def closed_share(openings: np.ndarray, mask: np.ndarray) -> float:
    values = openings[: len(mask)][mask[: len(openings)]]
    values = values[np.isfinite(values)]
    return float((values < OPEN_FROM).mean()) if len(values) else float("nan")


def write_wav(path: Path, samples: np.ndarray) -> Path:
    wavfile.write(path, features.RATE, (np.clip(samples, -1, 1) * 32767).astype(np.int16))
    return path


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1 / features.RATE)
    sig = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / np.sqrt(np.maximum(f, 20.0)), n)
    return sig / sig.std()


def evaluate_clip(clip: dict, media: Path, work: Path, direction: np.ndarray, max_seconds: float) -> dict:
    from realtime.sinks import FileSink
    from realtime.sources import VideoFileSource

    name, fps = clip["name"], clip["fps"]
    source = media / str(clip["source"])
    work.mkdir(parents=True, exist_ok=True)
    avatar_png = work / f"{name}_avatar.png"
    first = next(read_frames(str(source)))
    cv2.imwrite(str(avatar_png), first)
    real = [None if np.isnan(f[0, 0]) else f.astype(np.float64) for f in clip["landmarks"]]
    count = min(len(real), int(max_seconds * fps))
    # The clip's own audio, cut to the evaluated length (what the renders speak).
    speech = clip["audio"][: int(count / fps * features.RATE)]
    audio = write_wav(work / f"{name}.wav", speech)
    rng = np.random.default_rng(0)
    noise = pink(len(speech), rng) * np.sqrt(np.mean(speech**2) / 10 ** (10 / 10))
    noisy = write_wav(work / f"{name}_noisy10db.wav", speech + noise)
    outs = {}
    t0 = time.monotonic()
    outs["voice"] = work / f"{name}_voice.mp4"
    render_voice(str(avatar_png), str(audio), str(outs["voice"]), fps=fps, progress=False)
    voice_s = time.monotonic() - t0
    outs["energy"] = work / f"{name}_energy.mp4"
    render_voice(
        str(avatar_png),
        str(audio),
        str(outs["energy"]),
        fps=fps,
        progress=False,
        mouth_source=energy_source(direction),
    )
    outs["voice_noisy"] = work / f"{name}_voice_noisy.mp4"
    render_voice(str(avatar_png), str(noisy), str(outs["voice_noisy"]), fps=fps, progress=False)
    outs["video"] = work / f"{name}_video.mp4"
    from realtime.avatar import load_avatar
    from realtime.loop import render_offline
    from realtime.pipeline import offline_processor

    avatar = load_avatar(str(avatar_png))
    processor = offline_processor(avatar, "warp")
    driver = VideoFileSource(str(source), paced=False)
    from realtime.voice.render import FirstFrames

    render_offline(FirstFrames(driver, count), processor, [FileSink(outs["video"])], fps=fps, progress=False)
    tracked = {k: track_video(str(v)).landmarks[:count] for k, v in outs.items()}
    real_open = np.array([mesh.mouth_opening(f) if f is not None else np.nan for f in real[:count]])
    mask = silent(frame_db(speech, count, fps), fps)
    result = {
        "clip": name,
        "person": clip["person"],
        "frames": count,
        "fps": fps,
        "silent_frames": int(mask.sum()),
        "voice_render_s": round(voice_s, 2),
    }
    series = {"real": real_open}
    for kind, faces in tracked.items():
        opening = np.array([mesh.mouth_opening(f) if f is not None else np.nan for f in faces])
        series[kind] = opening
        result[kind] = {
            "opening_r": pearson(opening, real_open),
            "closed_in_silence": closed_share(opening, mask),
            "tracked": float(np.mean([f is not None for f in faces])),
        }
        if kind != "video":
            result[kind]["lip_error"] = lip_error(
                faces, tracked["video"], avatar.landmarks.astype(np.float64)
            )
    result["real_closed_in_silence"] = closed_share(real_open, mask)
    # What the voice commands: the gap the model's offsets ask for (0 = the avatar's rest).
    model = VoiceMouthModel()
    times, offsets = model.offsets(speech)
    commanded = mouth.opening(model.at(np.arange(count) / fps, times, offsets))
    result["voice"]["commanded_closed_in_silence"] = (
        float(np.mean(commanded[mask] < COMMANDED_CLOSED)) if mask.any() else float("nan")
    )
    return result, series, outs


def babble(n: int, media: Path) -> np.ndarray:
    """Six voices at once from the shared speech recordings, each at its own level: a crowded
    room's chatter (speech, but nobody's in particular)."""
    files = sorted((media / "audio").glob("*.wav"))[:6]
    mix = np.zeros(n)
    for i, path in enumerate(files):
        voice = read_audio(str(path))[:n]
        mix[: len(voice)] += voice / (voice.std() + 1e-9) * (0.5 + 0.1 * i)
    return mix / mix.std()


def noise_only(work: Path, avatars: list[Path], media: Path) -> dict:
    """Closed-mouth share for recordings without speech, per avatar: commanded (the gated
    model's gap under COMMANDED_CLOSED) and tracked on the render (gap under OPEN_FROM)."""
    rng = np.random.default_rng(1)
    n = 6 * features.RATE
    cases = {
        "digital_silence": np.zeros(n),
        "room_tone_-60dBFS": pink(n, rng) * 10 ** (-60 / 20),
        "pink_noise_-30dBFS": pink(n, rng) * 10 ** (-30 / 20),
        "white_noise_-20dBFS": rng.standard_normal(n) * 10 ** (-20 / 20),
        "hum_50Hz_-25dBFS": np.sin(2 * np.pi * 50 * np.arange(n) / features.RATE)
        * 10 ** (-25 / 20)
        * np.sqrt(2),
        "babble_6_voices_-30dBFS": babble(n, media) * 10 ** (-30 / 20),
    }
    model = VoiceMouthModel()
    out = {}
    for name, samples in cases.items():
        wav = write_wav(work / f"noise_{name}.wav", samples)
        _, offsets = model.offsets(read_audio(str(wav)))
        commanded = mouth.opening(offsets)
        out[name] = {
            "commanded_closed": float(np.mean(commanded < COMMANDED_CLOSED)),
            "commanded_max_gap": float(commanded.max()),
        }
        for avatar in avatars:
            video = work / f"noise_{name}_{avatar.stem}.mp4"
            render_voice(str(avatar), str(wav), str(video), progress=False)
            faces = track_video(str(video)).landmarks
            opening = np.array([mesh.mouth_opening(f) if f is not None else np.nan for f in faces])
            out[name][f"tracked_closed_{avatar.stem}"] = float(np.nanmean(opening < OPEN_FROM))
            out[name][f"tracked_max_gap_{avatar.stem}"] = float(np.nanmax(opening))
    return out


def contact_sheet(results: list[dict], series: dict, outs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["clip"] for r in results]
    fig, axes = plt.subplots(
        len(names), 2, figsize=(16, 2.6 * len(names)), gridspec_kw={"width_ratios": [1.25, 1]}
    )
    axes = np.atleast_2d(axes)
    for row, name in enumerate(names):
        s = series[name]
        ax = axes[row, 0]
        for kind, style in (("real", "k-"), ("video", "g-"), ("voice", "b-"), ("energy", "r:")):
            ax.plot(np.arange(len(s[kind])) / results[row]["fps"], s[kind], style, lw=1.2, label=kind)
        r = results[row]
        ax.set_title(
            f"{name}: r voice {r['voice']['opening_r']:.2f}, energy {r['energy']['opening_r']:.2f}, "
            f"video {r['video']['opening_r']:.2f}",
            fontsize=9,
        )
        ax.set_ylabel("mouth opening")
        if row == 0:
            ax.legend(fontsize=7, ncol=4)
        # The frame where the real mouth is widest: real, video-driven, voice, energy.
        widest = int(np.nanargmax(s["real"]))
        tiles = []
        for kind in ("real", "video", "voice", "energy"):
            src = outs[name]["source"] if kind == "real" else outs[name][kind]
            frames = list(read_frames(str(src), widest + 1))
            img = frames[min(widest, len(frames) - 1)]
            h = 160
            tiles.append(cv2.resize(img, (int(img.shape[1] * h / img.shape[0]), h)))
        axes[row, 1].imshow(cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_BGR2RGB))
        axes[row, 1].set_title("widest real mouth: real | video warp | voice | energy", fontsize=8)
        axes[row, 1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def summarise(results: list[dict]) -> dict:
    out = {}
    for kind in ("voice", "energy", "video", "voice_noisy"):
        rs = [r[kind]["opening_r"] for r in results]
        out[kind] = {
            "opening_r_mean": float(np.nanmean(rs)),
            "opening_r_median": float(np.nanmedian(rs)),
            "closed_in_silence": float(
                np.nanmean([r[kind]["closed_in_silence"] for r in results if r["silent_frames"]])
            ),
        }
        if kind != "video":
            out[kind]["lip_error"] = float(np.nanmean([r[kind]["lip_error"] for r in results]))
    out["voice"]["commanded_closed_in_silence"] = float(
        np.nanmean([r["voice"]["commanded_closed_in_silence"] for r in results if r["silent_frames"]])
    )
    out["real_closed_in_silence"] = float(
        np.nanmean([r["real_closed_in_silence"] for r in results if r["silent_frames"]])
    )
    return out


def main() -> int:
    from realtime.train.voice_data import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path(".train_cache_voice"))
    parser.add_argument(
        "--media", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "media"
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/voice_eval"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sheet", type=Path, default=None)
    parser.add_argument("--max-seconds", type=float, default=12.0)
    parser.add_argument("--group", default="validation")
    parser.add_argument(
        "--no-speech-only", action="store_true", help="only the recordings without speech; update --json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    clips = load(args.cache)
    direction = opening_direction(clips)
    held_out = [c for c in clips if c["group"] == args.group]
    avatars = [
        args.media.resolve() / "avatars" / "liveportrait_s0.jpg",
        args.work / f"{held_out[0]['name']}_avatar.png",
    ]
    if args.no_speech_only:
        report = json.loads(args.json.read_text())
        report["no_speech"] = noise_only(args.work, avatars, args.media.resolve())
        args.json.write_text(json.dumps(report, indent=1))
        print(json.dumps(report["no_speech"], indent=1))
        return 0
    results, series, outs = [], {}, {}
    for clip in held_out:
        result, s, o = evaluate_clip(clip, args.media.resolve(), args.work, direction, args.max_seconds)
        o["source"] = args.media.resolve() / str(clip["source"])
        results.append(result)
        series[clip["name"]], outs[clip["name"]] = s, o
        print(
            f"{clip['name']:34s} r voice {result['voice']['opening_r']:.2f} energy {result['energy']['opening_r']:.2f} "
            f"video {result['video']['opening_r']:.2f} noisy {result['voice_noisy']['opening_r']:.2f} | "
            f"lip err voice {result['voice']['lip_error']:.3f} energy {result['energy']['lip_error']:.3f} | "
            f"silent {result['silent_frames']} closed voice {result['voice']['closed_in_silence']:.2f}",
            flush=True,
        )
    summary = summarise(results)
    model = VoiceMouthModel()
    report = {
        "model": str(model.path.name),
        "group": args.group,
        "max_seconds": args.max_seconds,
        "summary": summary,
        "clips": results,
        "no_speech": noise_only(args.work, avatars, args.media.resolve()),
    }
    print(json.dumps({"summary": summary, "no_speech": report["no_speech"]}, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.sheet:
        contact_sheet(results, series, outs, args.sheet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
