#!/usr/bin/env bash
# GPU check: builds the CUDA backend, runs the GPU tests, the GPU benchmark against PyTorch and the
# circles main job on the GPU, and prints a summary. For a machine with an NVIDIA GPU, nvcc, CMake
# and PyTorch (whose pip packages provide cuDNN, cuBLAS and NCCL) but no package manager: carry the
# header-only dependencies there in .deps/ (scripts/stage-gpu-deps.sh makes it).
#   usage: scripts/gpu-check.sh [LOGDIR]      (DD_GPU_CHECK_PARTS="tests bench circles" to choose)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG=${1:-gpu-check-logs}
PARTS=${DD_GPU_CHECK_PARTS:-"tests bench circles"}
mkdir -p "$LOG"
PY=${PYTHON:-python3}
start=$(date +%s)
stamp() { echo "[gpu-check $(($(date +%s) - start))s] $*"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nvcc --version | tail -1
  g++ --version | head -1; cmake --version | head -1; } 2>&1 | tee "$LOG/gpu.txt"

# cuDNN / NCCL / cuBLAS from PyTorch's pip packages: find their folders.
SITE=$($PY -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
find_lib() { find "$SITE/nvidia" /usr/local/cuda/lib64 -name "$1" 2>/dev/null | head -1; }
CUDNN_SO=$(find_lib 'libcudnn.so.9')
NCCL_SO=$(find_lib 'libnccl.so.2')
CUBLAS_SO=$(find_lib 'libcublas.so.1[0-9]')
stamp "cuDNN $CUDNN_SO"; stamp "NCCL $NCCL_SO"; stamp "cuBLAS $CUBLAS_SO"
STAGE=/tmp/dd-gpu-stage  # outside the source and build trees (exported include paths)
mkdir -p "$STAGE/cudnn/lib" "$STAGE/nccl/lib" "$STAGE/cublas/lib"
stage_root() {  # name, library path: include/ from the package (or .deps/cuda-include), lib/ symlinks
  local dir=$STAGE/$1 so=$2 inc
  inc=$(dirname "$(dirname "$so")")/include
  if [ -f "$inc/$1.h" ]; then ln -sfn "$inc" "$dir/include"; else ln -sfn "$PWD/.deps/cuda-include" "$dir/include"; fi
  ln -sf "$so" "$dir/lib/lib$1.so"
}
stage_root cudnn "$CUDNN_SO"
stage_root nccl "$NCCL_SO"
ln -sf "$CUBLAS_SO" "$STAGE/cublas/lib/libcublas.so"
export LD_LIBRARY_PATH="$(dirname "$CUDNN_SO"):$(dirname "$NCCL_SO"):$(dirname "$CUBLAS_SO"):${LD_LIBRARY_PATH:-}"

stamp "configure"
GEN=(); command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B build-gpu "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DDD_CUDA=ON -DDD_DEPS_DIR="$PWD/.deps" \
  -DDD_CUDNN_ROOT="$STAGE/cudnn" -DDD_NCCL_ROOT="$STAGE/nccl" -DDD_CUBLAS_ROOT="$STAGE/cublas" -DDD_BUILD_TOOLS=OFF \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" >"$LOG/configure.log" 2>&1 \
  || { tail -40 "$LOG/configure.log"; exit 1; }
stamp "build"
cmake --build build-gpu -j"$(nproc)" --target dd_cuda_tests bench_gpu circles >"$LOG/build.log" 2>&1 \
  || { grep -E "error|Error" "$LOG/build.log" | head -40; exit 1; }
stamp "built"

status=0
if [[ " $PARTS " == *" tests "* ]]; then
  stamp "GPU tests"
  ./build-gpu/tests/dd_cuda_tests -s 2>&1 | grep -vE "^\s*$" >"$LOG/tests.log"
  rc=${PIPESTATUS[0]}
  grep -E "MESSAGE|relative error|peak|test cases|assertions|Status|ERROR|FAILED|CHECK" "$LOG/tests.log" | head -80
  [ "$rc" = 0 ] || status=1
fi
if [[ " $PARTS " == *" bench "* ]]; then
  stamp "benchmark against PyTorch"
  $PY bench/gpu/compare.py --ours build-gpu/bench/gpu/bench_gpu ${DD_BENCH_ARGS:---rounds 3} 2>&1 | tee "$LOG/bench.log" || status=1
fi
if [[ " $PARTS " == *" circles "* ]]; then
  stamp "circles main job on the GPU"
  timeout "${DD_CIRCLES_TIMEOUT:-3600}" ./build-gpu/examples/circles --device cuda --quiet ${DD_CIRCLES_ARGS:-} 2>&1 \
    | tee "$LOG/circles.log" || status=1
fi
stamp "done (status $status)"
exit $status
