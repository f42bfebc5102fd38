#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a machine with a GPU (e.g. an
# NVIDIA card with its Vulkan driver): builds release, runs the GPU parity
# tests on the real adapter (failing, not skipping, without one), then the
# similarity + top-k benchmark at 1M × 512 (f16 and f32; 1,000 queries and a
# single streaming query) against the device's copy bandwidth. Writes
# everything under ${OUT:-gpu-bench-out}. Budget: well under 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-bench-out}
mkdir -p "$out"
export SQUIRE_REQUIRE_GPU=1
command -v vulkaninfo >/dev/null && vulkaninfo --summary > "$out/vulkaninfo.txt" 2>&1 || true
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
time cargo build --release --bin squire 2>&1 | tail -3
time cargo test --release -p squire-kernels --test gpu_parity -- --nocapture 2>&1 | tee "$out/parity.txt" | tail -25
for rows in 1000000; do
  timeout 300 ./target/release/squire bench kernels --device gpu --rows "$rows" --dim 512 \
      --queries 1000 --stream-queries 1 --k 10 --precision f16 --precision f32 --repeat 5 \
      --json | tee "$out/kernels-gpu-$rows.json"
done
timeout 200 ./target/release/squire bench kernels --device gpu --rows 1000000 --dim 512 \
    --queries 1000 --stream-queries 8 --k 100 --precision f16 --repeat 5 | tee "$out/kernels-gpu-k100.txt"
echo "gpu.sh: done; results in $out"
