#!/usr/bin/env bash
# The checks that need a GPU, as one short script for a machine that has one
# (and the CUDA toolkit), e.g. the project's lent device machine:
#
#   scripts/gpu_check.sh [BUILD_DIR]      # default build-gpu/
#
# Builds only the engine, the CUDA module and the gpu-labelled tests (no
# gRPC, HTTP or Prometheus needed), shows the GPU, then runs `ctest -L gpu`
# verbosely. The tests compare cuBLAS against the f16 reference for every
# weight encoding and the model's logits on the GPU against the CPU's (a tiny
# model written on the fly; the real one too when KVSERVE_MODEL names it).
# Exits non-zero on a failure, and also when the tests skipped because the
# CUDA runtime saw no device: on this script's machine that is a failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build-gpu}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv || echo "gpu_check: nvidia-smi not found"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVSERVE_CUDA=ON \
  -DKVSERVE_BUILD_SERVER=OFF -DKVSERVE_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target cuda_gpu_test kvserve_cuda
cd "$root"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$build/tests/engine/cuda/cuda_gpu_test" 2>&1 | tee "$log"
if grep -q 'no CUDA device' "$log"; then
  echo "gpu_check: the tests skipped: the CUDA runtime saw no usable GPU" >&2
  exit 1
fi
echo "gpu_check: OK"
