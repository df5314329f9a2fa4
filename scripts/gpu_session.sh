#!/usr/bin/env bash
# One GPU window, used well (issue 20): train side by side on the one GPU what this CPU can't,
# within a wall-clock budget, and bring everything back in $OUT. The logic is in
# realtime/train/gpu_session.py (its docstring says what each job is).
#
# BEFORE THE WINDOW, here on the CPU, in the checkout the session started in (the device tool
# sends that checkout, e.g. /work/main, whichever worktree calls it); needs mediapipe and
# ../shared/media; 10-20 min on this CPU (mediapipe tracks all 2448 frames of the swap pair):
#     scripts/gpu_session.sh --prepare            # writes gpu_carry/ (ignored by git), ~39 MiB:
#                                                 # the refiner's clip caches (.train_cache, re-encoded
#                                                 # as WebP, 16 pairs per clip: 26 MiB) and every frame
#                                                 # of the demo swap pair (13 MiB); it checks that the
#                                                 # caches and the working tree fit the 64 MiB carried
#     scripts/gpu_session.sh --prepare --resume-runs runs   # also carry runs/gpu_*/checkpoint_compact.pt
#                                                 # of the last window, so its jobs go on from there
#     scripts/gpu_session.sh --dry-run            # the whole path on this CPU, tiny (gpu_carry_dry/
#                                                 # from `--prepare --dry-run`), no GPU, no mediapipe
#
# THE WINDOW: first the device tool's `status` (no cost); if a device is lent, ONE call:
#     run(command="bash scripts/gpu_session.sh --minutes 8", carry=["gpu_carry"], timeout_s=590)
# It records nvidia-smi and the image's packages first (environment.json), then trains until
# minute ~6.75, exports and times every model, and ends by minute 8; checkpoints are packed into
# $OUT each minute, so a timeout still brings back the latest. What comes back (at most 8 files):
#     environment.json  summary.json  cyclegan.tar  recycle.tar  refiner_continue.tar
#     refiner_quality.tar  [voice.tar: the audio-to-mouth model, only if --prepare found its cache
#     .train_cache_voice and it fitted the carry budget; today's (44 MB) does not fit beside the others]
# If it fails within the first minute (output_tail says why), fix and rerun at once while the
# machine is warm; otherwise call give_back. A fresh machine will not start with < 4 min left.
#
# AFTERWARDS, here on the CPU (unpack, export/evaluate, gate, keep the checkpoints):
#     scripts/gpu_afterwards.sh FILES_AT          # FILES_AT: the device reply's files_at folder
#
# Usage: scripts/gpu_session.sh [--minutes M] [--dry-run] [--out DIR]
#        scripts/gpu_session.sh --prepare [--dry-run] [--refiner-cache DIR] [--pairs N] [--resume-runs DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# The GPU image's python3 holds torch; here the project's venv does (with mediapipe, for --prepare).
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mode=run
args=()
for arg in "$@"; do
    case "$arg" in
        --prepare) mode=prepare ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) args+=("$arg") ;;
    esac
done
if [ "$mode" = prepare ]; then
    exec "$PY" -m realtime.train.gpu_session prepare "${args[@]}"
fi
if [ -z "${OUT:-}" ]; then
    OUT=out/gpu_session   # on the device machine the tool sets $OUT
    for arg in "${args[@]}"; do [ "$arg" = --dry-run ] && OUT=out/gpu_session_dry; done
    export OUT
fi
mkdir -p "$OUT"
exec "$PY" -m realtime.train.gpu_session run "${args[@]}"
