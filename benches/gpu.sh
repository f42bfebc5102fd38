#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a machine with a GPU (e.g. an
# NVIDIA card with its Vulkan driver): runs the GPU parity tests on the real
# adapter (failing, not skipping, without one), then the similarity + top-k
# benchmark at 1M × 512 (f16 and f32; 1,000 queries and a single streaming
# query) against the device's copy bandwidth, the SuperGlobal refinement
# latency, and the PyTorch (cuBLAS) peer on the same shapes when torch with
# CUDA is importable. Writes everything under ${OUT:-gpu-bench-out}.
#
# Builds release with cargo unless SQUIRE_BIN (a release `squire`) and
# SQUIRE_PARITY_BIN (the release `gpu_parity` test binary) point at prebuilt
# ones, for machines without a Rust toolchain. Budget: well under 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-bench-out}
mkdir -p "$out"
export SQUIRE_REQUIRE_GPU=1 RUST_LOG=${RUST_LOG:-warn}
command -v vulkaninfo >/dev/null && vulkaninfo --summary > "$out/vulkaninfo.txt" 2>&1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
squire=${SQUIRE_BIN:-}
if [ -z "$squire" ]; then
  cargo build --release --bin squire 2>&1 | tail -3
  squire=./target/release/squire
fi
echo "== parity tests"
if [ -n "${SQUIRE_PARITY_BIN:-}" ]; then
  "$SQUIRE_PARITY_BIN" --nocapture 2>&1 | tee "$out/parity.txt" | tail -25
else
  cargo test --release --workspace --test gpu_parity -- --nocapture 2>&1 | tee "$out/parity.txt" | tail -25
fi
echo "== squire bench kernels (wgpu)"
timeout 300 "$squire" bench kernels --device gpu --rows 1000000 --dim 512 \
    --queries 1000 --stream-queries 1 --k 10 --precision f16 --precision f32 --repeat 5 \
    --json > "$out/kernels-gpu.json"
cat "$out/kernels-gpu.json"
echo "== PyTorch peer"
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  timeout 200 python3 benches/kernels_torch.py --rows 1000000 --dim 512 --queries 1000 \
      --stream-queries 1 --k 10 --repeat 5 > "$out/kernels-torch.json"
  cat "$out/kernels-torch.json"
fi
echo "== k = 100, 8 streaming queries (wgpu)"
timeout 120 "$squire" bench kernels --device gpu --rows 1000000 --dim 512 \
    --queries 1000 --stream-queries 8 --k 100 --precision f16 --repeat 5 | tee "$out/kernels-gpu-k100.txt"
echo "gpu.sh: done; results in $out"
