#!/usr/bin/env bash
# The whole DynamicDet pipeline on the built-in synthetic shapes data (called by `make demo`):
# make-shapes -> train-detectors -> train-router -> calibrate -> evaluate --sweep -> predict.
set -euo pipefail
PY=${PY:-python3}
DEMO=${DEMO:-runs/demo}
dd() { "$PY" -m dynamicdet_cli "$@"; }

rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "== 1/6 make-shapes: synthetic COCO-format data, easy to hard images"
dd make-shapes "$DEMO/data" --train 2048 --val 512 --size 128 --seed 0

echo "== 2/6 train-detectors: both detectors jointly (step 1)"
# Two torchrun processes with half the cores each (one thread on 2 cores): the tiny model's
# operators are too short for torch's threads to pay, and two processes train faster than one
# (docs/benchmarks.md#demo, bench/bench_processes.py). train.batch_size is the batch of all processes.
train=(train-detectors recipes/shapes-tiny.yaml --data "$DEMO/data/data.yaml" --out "$DEMO/run")
CORES=$(nproc 2>/dev/null || echo 1)
if [ "$CORES" -ge 2 ]; then
  OMP_NUM_THREADS=$((CORES / 2)) "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 -m dynamicdet_cli "${train[@]}"
else
  dd "${train[@]}"
fi

echo "== 3/6 train-router: frozen detectors, cached losses (step 2)"
dd train-router "$DEMO/run/best.pt" --data "$DEMO/data/data.yaml" -o "$DEMO/model.pt"

echo "== 4/6 calibrate: time both routes on the validation images, then the threshold for halfway between them"
# 128 images (the default), 3 passes: fewer images made the passes disagree past the warning
# (docs/benchmarks.md#calibration-accuracy)
dd calibrate "$DEMO/model.pt" --latency 50% --name default --repeats 3

echo "== 5/6 evaluate: the accuracy-latency sweep, then the calibrated point"
dd evaluate "$DEMO/model.pt" --data "$DEMO/data/data.yaml" --sweep --out "$DEMO/eval"
# batch 8, as calibrated: the measured mean latency is comparable with the target
dd evaluate "$DEMO/model.pt" --data "$DEMO/data/data.yaml" --point default --out "$DEMO/eval"

echo "== 6/6 predict: images routed one by one (48 of the validation images, with pictures)"
dd predict "$DEMO/data/val/00000*.png" "$DEMO/data/val/00001*.png" "$DEMO/data/val/00002*.png" "$DEMO/data/val/00003*.png" "$DEMO/data/val/00004[0-7].png" \
  --checkpoint "$DEMO/model.pt" --point default --out "$DEMO/predictions"

echo
echo "done. sweep: $DEMO/eval/sweep.csv (plot: $DEMO/eval/sweep.png if matplotlib is installed)"
echo "      predictions: $DEMO/predictions/predictions.jsonl, pictures: $DEMO/predictions/render/"
