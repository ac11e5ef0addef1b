#!/usr/bin/env bash
# The GPU benchmark's every configuration the device check runs (bench/gpu/compare.py's variants:
# legacy or graph-API convolutions, fp32 or half activations, fp32 and bf16) on the emulated GPU at
# a tiny size: each run must end with its JSON line. Usage: bench_smoke.sh path/to/bench_gpu
set -u
B=$1
failed=0
for c in unet_train ddu_infer; do
  for d in fp32 bf16; do
    for v in "" "--graph yes" "--half-activations yes" "--graph yes --half-activations yes"; do
      # shellcheck disable=SC2086
      out=$("$B" --case $c --dtype $d --size 64 --iters 1 --warmup 1 $v 2>&1)
      if [ $? -eq 0 ] && grep -q '^{"framework": "ddunet".*"median_ms"' <<<"$out"; then
        echo "ok: $c $d $v: $(grep -o '"peak_mem_bytes": [0-9]*, ' <<<"$out")$(grep -o '"graph_fallbacks": [0-9]*' <<<"$out")"
      else
        echo "FAILED: $c $d $v: $out"
        failed=1
      fi
    done
  done
done
exit $failed
