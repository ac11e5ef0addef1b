#!/usr/bin/env bash
# GPU check: builds the CUDA backend, runs the GPU tests, the GPU benchmark against PyTorch and the
# circles main job on the GPU, and prints a summary. For a machine with an NVIDIA GPU, nvcc, CMake
# and PyTorch (whose pip packages provide cuDNN, cuBLAS and NCCL) but no package manager: carry the
# header-only dependencies there in .deps/ (scripts/stage-gpu-deps.sh makes it).
#   usage: scripts/gpu-check.sh [LOGDIR]      (DD_GPU_CHECK_PARTS="tests bench circles cli" to choose;
#          part "profile" lists the kernels of a U-Net training step and of a DDU-Net inference by
#          time, ours and PyTorch's, with Nsight Compute, and logs cuDNN's algorithm candidates;
#          DD_PROFILE_CASES="unet_train ddu_infer" chooses the cases it profiles; part "sanitize"
#          runs the op cases under compute-sanitizer's memcheck and racecheck)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG=${1:-gpu-check-logs}
PARTS=${DD_GPU_CHECK_PARTS:-"tests bench circles cli"}
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
  -DDD_CUDNN_ROOT="$STAGE/cudnn" -DDD_NCCL_ROOT="$STAGE/nccl" -DDD_CUBLAS_ROOT="$STAGE/cublas" -DDD_BUILD_TOOLS=ON \
  -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" >"$LOG/configure.log" 2>&1 \
  || { tail -40 "$LOG/configure.log"; exit 1; }
stamp "build"
cmake --build build-gpu -j"$(nproc)" --target dd_cuda_tests bench_gpu bench_copies circles ddunet >"$LOG/build.log" 2>&1 \
  || { grep -E "error|Error" "$LOG/build.log" | head -40; exit 1; }
stamp "built"

status=0
if [[ " $PARTS " == *" tests "* ]]; then
  stamp "GPU tests"
  # The half-activation cases run in a process of their own: a fault in code never run on a GPU
  # before (a sticky CUDA error) must not take the other cases down with it.
  half='*half activations*'
  ./build-gpu/tests/dd_cuda_tests -s -tce="$half" 2>&1 | grep -vE "^\s*$" >"$LOG/tests.log"
  rc=${PIPESTATUS[0]}
  ./build-gpu/tests/dd_cuda_tests -s -tc="$half" 2>&1 | grep -vE "^\s*$" >"$LOG/tests_half.log"
  rc_half=${PIPESTATUS[0]}
  for f in tests tests_half; do
    echo "== $f"
    grep -E "MESSAGE|relative error|peak|keeps|test cases|assertions|Status|ERROR|FAILED" "$LOG/$f.log" | head -60
  done
  [ "$rc" = 0 ] && [ "$rc_half" = 0 ] || status=1
fi
if [[ " $PARTS " == *" bench "* ]]; then
  stamp "benchmark against PyTorch"
  # DD_BENCH_OURS_ARGS: flags for our side only, e.g. "--graph yes" (graph-API convolutions);
  # DD_BENCH_VARIANTS: ';'-separated flag sets of ours, one table row each against the same PyTorch runs.
  $PY bench/gpu/compare.py --ours build-gpu/bench/gpu/bench_gpu ${DD_BENCH_ARGS:---rounds 3} \
    ${DD_BENCH_OURS_ARGS:+--ours-args "$DD_BENCH_OURS_ARGS"} \
    ${DD_BENCH_VARIANTS:+--ours-variants "$DD_BENCH_VARIANTS"} 2>&1 | tee "$LOG/bench.log" || status=1
  # The concat copies of a U-Net(4) step against cudaMemcpy2DAsync (~10 s).
  ./build-gpu/bench/gpu/bench_copies 2>&1 | tee "$LOG/copies.log" | grep -v "^{" || status=1
fi
if [[ " $PARTS " == *" profile "* ]]; then
  # Where the time of one U-Net(4) training step and one DDU-Net(4, 64, Y) inference goes, per
  # kernel, ours (both convolution APIs) and PyTorch's (Nsight Compute on the timed step only: both
  # benchmarks bracket it with cudaProfilerStart/Stop, so the warm-up with cuDNN's algorithm search
  # stays out), and the convolution algorithms cuDNN offered and we chose (DD_CUDNN_LOG, in
  # cudnn_choices_<case>.log and cudnn_graph_choices_<case>.log).
  stamp "profile"
  # c:d:cl:g:h = case, dtype, channels-last, graph-API convolutions (cudnn_graph.hpp), half activations
  # (part bench runs the default: legacy algorithms, fp32 activations; these are the alternatives)
  for spec in unet_train:fp32:yes:yes:no unet_train:bf16:yes:no:yes unet_train:bf16:yes:yes:yes \
      ddu_infer:fp32:yes:yes:no ddu_infer:bf16:yes:no:yes; do
    IFS=: read -r c d cl g h <<<"$spec"
    ./build-gpu/bench/gpu/bench_gpu --case "$c" --dtype "$d" --iters 10 --channels-last "$cl" --graph "$g" \
      --half-activations "$h" \
      | tee -a "$LOG/profile_runs.jsonl" | $PY -c 'import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        r = json.loads(line)
        print("run %(case)s %(dtype)s channels-last %(channels_last)s graph %(graph_api)s half activations "
              "%(half_activations)s: %(median_ms).2f ms "
              "(enqueue %(enqueue_ms).2f ms), peak %(mib).0f MiB, graph plans %(graph_plans)s / fallbacks "
              "%(graph_fallbacks)s" % dict(r, mib=r["peak_mem_bytes"] / 2**20))'
  done
  NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
  profile() {  # name, command...: per-kernel times of the profiled range, largest first
    local name=$1; shift
    timeout 240 "$NCU" --metrics gpu__time_duration.sum --csv --profile-from-start off "$@" \
      >"$LOG/ncu_$name.csv" 2>"$LOG/ncu_$name.err" || tail -5 "$LOG/ncu_$name.err"
    echo "== $name"; $PY bench/gpu/ncu_top.py "$LOG/ncu_$name.csv"
  }
  for c in ${DD_PROFILE_CASES:-unet_train ddu_infer}; do
    DD_CUDNN_LOG=1 ./build-gpu/bench/gpu/bench_gpu --case "$c" --iters 1 --warmup 1 \
      >/dev/null 2>"$LOG/cudnn_choices_$c.log"
    DD_CUDNN_LOG=1 ./build-gpu/bench/gpu/bench_gpu --case "$c" --iters 1 --warmup 1 --graph yes \
      >/dev/null 2>"$LOG/cudnn_graph_choices_$c.log"
    grep -c "^dd::cudnn" "$LOG/cudnn_choices_$c.log" "$LOG/cudnn_graph_choices_$c.log"
    profile "ours_$c" ./build-gpu/bench/gpu/bench_gpu --case "$c" --iters 1 --warmup 2 ${DD_PROFILE_ARGS:-}
    profile "ours_graph_$c" ./build-gpu/bench/gpu/bench_gpu --case "$c" --iters 1 --warmup 2 --graph yes
    profile "pytorch_$c" $PY bench/gpu/torch_reference.py --case "$c" --dtype fp32 --iters 1 --warmup 2
  done
fi
if [[ " $PARTS " == *" sanitize "* ]]; then
  # The op cases under compute-sanitizer: memcheck (out-of-bounds and misaligned accesses) and
  # racecheck (shared-memory hazards), what the emulated GPU (one block at a time) cannot show.
  stamp "compute-sanitizer"
  SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  cases='GPU ops match the CPU*,half activations: every op*,GPU strided copies*'
  for tool in memcheck racecheck; do
    timeout 300 "$SAN" --tool $tool --error-exitcode 3 ./build-gpu/tests/dd_cuda_tests -tc="$cases" \
      >"$LOG/sanitize_$tool.log" 2>&1
    rc=$?
    echo "sanitize $tool: exit $rc ($(grep -cE "^========= (Invalid|Race|Error)" "$LOG/sanitize_$tool.log") reports)"
    grep -E "^========= (Invalid|Race|Error)|ERROR SUMMARY|RACECHECK SUMMARY" "$LOG/sanitize_$tool.log" | head -12
    [ "$rc" = 0 ] || status=1
  done
fi
if [[ " $PARTS " == *" circles "* ]]; then
  stamp "circles main job on the GPU"
  timeout "${DD_CIRCLES_TIMEOUT:-3600}" ./build-gpu/examples/circles --device cuda --quiet ${DD_CIRCLES_ARGS:-} 2>&1 \
    | tee "$LOG/circles.log" || status=1
fi
if [[ " $PARTS " == *" cli "* ]]; then
  # The tool on the GPU: the same tiny training on both devices (per-epoch losses must agree), then
  # eval of the GPU checkpoint on both devices (same metrics).
  stamp "ddunet train / eval --device cuda against --device cpu"
  T=./build-gpu/tools/ddunet W=$(mktemp -d)
  mkdir -p "$W/img" "$W/mask"
  for i in 1 2 3 4; do
    $T synth --output "$W/img/$i.png" --size 96x96 --seed $i >/dev/null && cp "$W/img/$i.png" "$W/mask/$i.png"
  done
  data=(--images "$W/img" --masks "$W/mask" --colors binary --holdout 1)
  net=(--depth 3 --base 8 --F 8 --grid 2x2 --crop 64 --crops-per-image 2 --batch 2 --epochs 3 --quiet)
  for d in cpu cuda; do
    $T train "${data[@]}" "${net[@]}" --device $d --out "$W/$d" >"$LOG/cli_train_$d.log" 2>&1 || status=1
    cp "$W/$d/log.csv" "$LOG/cli_log_$d.csv" 2>/dev/null
  done
  # Mixed precision from the tool (half activations; fp16 with loss scaling): it trains, losses finite.
  for p in bf16 fp16; do
    if $T train "${data[@]}" "${net[@]}" --device cuda --precision $p --out "$W/$p" >"$LOG/cli_train_$p.log" 2>&1; then
      echo "cli: --precision $p trains; epoch,train loss: $(tail -n +2 "$W/$p/log.csv" | cut -d, -f1,2 | tr '\n' ' ')"
      if tail -n +2 "$W/$p/log.csv" | grep -qiE "nan|inf"; then echo "cli: --precision $p: a loss is not finite"; status=1; fi
    else
      status=1; tail -3 "$LOG/cli_train_$p.log"
    fi
  done
  for d in cpu cuda; do
    $T eval --checkpoint "$W/cuda/best.safetensors" "${data[@]}" --device $d 2>&1 | tee "$LOG/cli_eval_$d.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
  done
  cmp <(grep -v evaluating "$LOG/cli_eval_cpu.log") <(grep -v evaluating "$LOG/cli_eval_cuda.log") >/dev/null \
    && echo "cli: eval of the GPU checkpoint prints the same metrics on both devices" \
    || echo "cli: eval metrics differ between the devices (see cli_eval_*.log)"
  # predict (tiled, bounded memory) of a larger synthetic image with the GPU checkpoint on both devices.
  $T synth --output "$W/big.png" --size 384x256 --seed 9 >/dev/null
  for d in cpu cuda; do
    $T predict --checkpoint "$W/cuda/best.safetensors" --input "$W/big.png" --output "$W/pred_$d.png" --grid 4x2 \
      --device $d >"$LOG/cli_predict_$d.log" 2>&1 || { status=1; tail -3 "$LOG/cli_predict_$d.log"; }
  done
  $PY - "$W/pred_cpu.png" "$W/pred_cuda.png" <<'PYEOF' || status=1
import sys, zlib, struct
def pixels(path):  # 8-bit gray PNG, non-interlaced: the filtered rows, compared as written
    data = open(path, "rb").read()
    idat, pos = b"", 8
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT": idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    return zlib.decompress(idat)
a, b = pixels(sys.argv[1]), pixels(sys.argv[2])
diff = sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))
print(f"cli: predict --device cuda vs cpu: {diff} of {len(a)} bytes of the class map differ")
sys.exit(0 if diff <= len(a) // 1000 else 1)
PYEOF
  $PY - "$LOG/cli_log_cpu.csv" "$LOG/cli_log_cuda.csv" <<'PYEOF' || status=1
import csv, sys
rows = [list(csv.DictReader(open(p))) for p in sys.argv[1:]]
assert rows[0] and len(rows[0]) == len(rows[1]), "different epoch counts"
worst = 0.0
for a, b in zip(*rows):
    for k in a:
        if "loss" in k or "miou" in k:
            x, y = float(a[k]), float(b[k])
            if "loss" in k:
                worst = max(worst, abs(x - y) / max(abs(x), 1e-3))
            print(f"epoch {a.get('epoch')} {k}: cpu {x:.6f} cuda {y:.6f}")
print(f"cli: worst relative loss difference cpu vs cuda {worst:.2e} (3 epochs; float sums differ in order)")
sys.exit(0 if worst < 5e-2 else 1)
PYEOF
  rm -rf "$W"
fi
stamp "done (status $status)"
exit $status
