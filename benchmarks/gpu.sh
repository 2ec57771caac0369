#!/usr/bin/env bash
# GPU figures in one command: FSL-SAGE's compute on synthetic CIFAR-shaped data (client and
# server throughput, alignment, share of the card's peak, fp32 and bf16), then, when
# FMNIST_DIR names the Fashion-MNIST IDX files, FSL-SAGE on Fashion-MNIST with the ResNet-18
# split (10 clients, B = 256, q = 5, l = 10, 100 alignment epochs), early-stopped alignment
# timed beside the paper's. Needs only torch and numpy.
#
#   bash benchmarks/gpu.sh
#   FMNIST_DIR=/path/to/fashion-mnist ROUNDS=30 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT_DIR:-benchmarks/results}
mkdir -p "$out"
"$python" -m benchmarks.gpu_throughput --device "${DEVICE:-auto}" --out "$out/gpu-throughput.json"
if [ -n "${FMNIST_DIR:-}" ]; then
    "$python" -m benchmarks.floor --dataset fashion-mnist --data-dir "$FMNIST_DIR" \
        ${PARTITIONS:+--partitions "$PARTITIONS"} --model resnet18 --clients 10 --rounds "${ROUNDS:-30}" \
        --batch-size 256 --upload-interval 5 --align-interval 10 --align-epochs 100 --compare-patience 5 \
        --device "${DEVICE:-auto}" --out "$out/floor-fashion-mnist-resnet18.json"
fi
