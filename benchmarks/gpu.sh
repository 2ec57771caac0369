#!/usr/bin/env bash
# GPU figures, in parts that each fit one call of at most ten minutes; every part writes
# into one output folder ($OUT_DIR, default benchmarks/results/gpu) and prints the summary.
#
#   bash benchmarks/gpu.sh throughput   # FSL-SAGE's compute on synthetic CIFAR-shaped data
#                                       # (client and server throughput, alignment, share of the
#                                       # card's peak, fp32 and bf16); with FMNIST_DIR also the
#                                       # floor loop with the paper's batch 256 and 100 alignment
#                                       # epochs, early-stopped alignment timed beside the paper's
#   bash benchmarks/gpu.sh part1        # floor loop, then FSL-SAGE through `flwr run` with the first
#                                       # GPU share per client, aligning one by one, then stacked
#   bash benchmarks/gpu.sh part2        # FSL-SAGE with the further GPU shares, CSE-FSL with the first
#   bash benchmarks/gpu.sh summary      # only the table, from what the parts left
#
# part1/part2 run simulations/presets/fashion-mnist-resnet18.toml for $ROUNDS rounds (40) with
# the Fashion-MNIST IDX files in $FMNIST_DIR. Settings: GPUS="0.25 0.125" (GPU share per client
# actor: 4 and 8 actors per GPU), CPUS_PER_CLIENT=2, DEVICE=auto, BUDGET=570 (seconds a part
# may take), PRESET, RUN_CONFIG (extra run-config overrides). See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${OUT_DIR:-benchmarks/results/gpu}
part=${1:-throughput}
mkdir -p "$out"
case "$part" in
throughput)
    "$python" -m benchmarks.gpu_throughput --device "${DEVICE:-auto}" --out "$out/gpu-throughput.json"
    if [ -n "${FMNIST_DIR:-}" ]; then
        "$python" -m benchmarks.floor --dataset fashion-mnist --data-dir "$FMNIST_DIR" \
            ${PARTITIONS:+--partitions "$PARTITIONS"} --model resnet18 --clients 10 --rounds "${ROUNDS:-30}" \
            --batch-size 256 --upload-interval 5 --align-interval 10 --align-epochs 100 --compare-patience 5 \
            --device "${DEVICE:-auto}" --out "$out/floor-fashion-mnist-resnet18.json"
    fi
    ;;
part1 | part2 | summary)
    preset=${PRESET-simulations/presets/fashion-mnist-resnet18.toml}
    # shellcheck disable=SC2086  # GPUS is a list of shares
    "$python" -m benchmarks.gpu_flower "$part" --out "$out" ${preset:+--preset "$preset"} \
        ${FMNIST_DIR:+--data-dir "$FMNIST_DIR"} --run-config "${RUN_CONFIG:-}" --rounds "${ROUNDS:-40}" \
        --device "${DEVICE:-auto}" --gpus-per-client ${GPUS:-0.25 0.125} \
        --cpus-per-client "${CPUS_PER_CLIENT:-2}" --budget "${BUDGET:-570}"
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh throughput|part1|part2|summary" >&2
    exit 2
    ;;
esac
