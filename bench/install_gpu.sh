#!/usr/bin/env bash
# Install the package with its CUDA ops on the GPU machine (gpu.sh's build stage, gpu_followup.sh's
# build step): the extension prebuilt on the CPU machine (bench/prebuilt.py, carried in .gpu_build)
# when its stamp fits this checkout and this torch, else a build here (~65 s with MAX_JOBS=16).
# Fails unless the CUDA ops load.
set -uo pipefail
cd "$(dirname "$0")/.."
cuda_ops() {
  python -c "from adaptive_encoder import ops; import sys; ok = ops.cpp_available('cuda'); \
print('C++ cuda ops:', 'loaded' if ok else 'MISSING'); sys.exit(0 if ok else 1)"
}
# `python -m pip`, not `pip`: on the GPU image the first `pip` on PATH belongs to another Python,
# without torch (measured 2026-11-26: "torch must be installed before building").
if [ -d .gpu_build ] && python bench/prebuilt.py check; then
  cp .gpu_build/_C.*.so adaptive_encoder/ \
    && ADAPTIVE_ENCODER_PREBUILT=1 python -m pip install -q -e . --no-build-isolation --no-deps \
    && cuda_ops && { echo "install_gpu.sh: prebuilt extension installed (no compile)"; exit 0; }
  echo "install_gpu.sh: the prebuilt extension did not install or load; building"
  rm -f adaptive_encoder/_C.*.so
fi
ADAPTIVE_ENCODER_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} python -m pip install -q -e . --no-build-isolation --no-deps \
  || exit 1
cuda_ops
