#!/usr/bin/env bash
# One prepared run on a lent GPU machine (see the device tool): build pairs from the carried
# clip caches, train the refiner under a time budget, export ONNX with parity checks, and
# leave the few result files in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
RUN=/tmp/refiner_run
nvidia-smi -L
python3 -c "import torch, cv2, scipy, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cv2', cv2.__version__, 'ort', onnxruntime.__version__)"
# By default it continues the shipped model (weights/refiner.pt) with its recipe: mouth and eye
# crops, the user's openings as an input, half of them another person's, some samples black and
# white; override MODEL for another.
MODEL=${MODEL:---layout regions --size 48 --widths 16,24,32,48 --driver --driver-swap 0.5 --grey 0.15 --init weights/refiner.pt --lr 1.5e-4 --schedule cosine --gan-start 1000000}
# shellcheck disable=SC2086
python3 -m realtime.cli -v train refiner --data .train_cache --out "$RUN" --steps 40000 --max-minutes "${MINUTES:-5.5}" \
    $MODEL --batch 64 --pairs-per-clip "${PAIRS:-300}" --eval-every 500 --workers 14 --fresh 2>&1 \
    | grep -v -E "refiner: +[0-9]+%|Consider using|record = " | tee "$OUT/train.log"
python3 -m export.refiner "$RUN/refiner.pt" --out "$OUT/refiner.onnx" --fp16 --tensorrt --summary "$RUN/summary.json" 2>&1 | tail -30
cp "$RUN/refiner.pt" "$RUN/log.jsonl" "$OUT/" 2>/dev/null
last=$(ls "$RUN"/samples_*.png | tail -1); cp "$last" "$OUT/samples_final.png"
ls -la "$OUT"
