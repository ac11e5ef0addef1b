#!/usr/bin/env bash
# The tool on the emulated GPU (a ddunet built against tests/cuda_emulated): the same tiny training
# on both devices (per-epoch losses agree), mixed precision from the tool (bf16, fp16 with loss
# scaling: losses finite), eval of the GPU checkpoint on both devices (same metrics). The device
# check runs the same on a GPU (scripts/gpu-check.sh part cli). Usage: cli_gpu.sh path/to/ddunet
set -u
T=$1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
failed=0
bad() { echo "FAILED: $1"; failed=1; }

mkdir -p "$W/img" "$W/mask"
for i in 1 2 3; do
  "$T" synth --output "$W/img/$i.png" --size 64x64 --seed $i >/dev/null && cp "$W/img/$i.png" "$W/mask/$i.png"
done
data=(--images "$W/img" --masks "$W/mask" --colors binary --holdout 1)
net=(--depth 3 --base 8 --F 8 --grid 2x2 --crop 32 --crops-per-image 2 --batch 2 --epochs 2 --quiet)
for d in cpu cuda; do
  "$T" train "${data[@]}" "${net[@]}" --device $d --out "$W/$d" >"$W/train_$d.log" 2>&1 || bad "train --device $d: $(tail -3 "$W/train_$d.log")"
done
# epoch,train loss,... : the two devices within 1e-3 relative (sums in other orders)
paste -d, <(tail -n +2 "$W/cpu/log.csv" | cut -d, -f2) <(tail -n +2 "$W/cuda/log.csv" | cut -d, -f2) |
  awk -F, 'BEGIN { n = 0 } { n++; d = $1 - $2; if (d < 0) d = -d; m = $1 < 0 ? -$1 : $1;
    printf "epoch %d train loss: cpu %s cuda %s\n", n, $1, $2; if (d > 1e-3 * m || $2 == "") bad = 1 }
    END { exit (bad || n != 2) }' || bad "train losses differ between the devices"
for p in bf16 fp16; do
  if "$T" train "${data[@]}" "${net[@]}" --device cuda --precision $p --out "$W/$p" >"$W/train_$p.log" 2>&1; then
    losses=$(tail -n +2 "$W/$p/log.csv" | cut -d, -f2 | tr '\n' ' ')
    echo "--precision $p: train losses $losses"
    grep -qiE "nan|inf" <<<"$losses" && bad "--precision $p: a loss is not finite"
  else
    bad "train --precision $p: $(tail -3 "$W/train_$p.log")"
  fi
done
for d in cpu cuda; do
  "$T" eval --checkpoint "$W/cuda/best.safetensors" "${data[@]}" --device $d 2>&1 | grep -v evaluating >"$W/eval_$d.log" ||
    bad "eval --device $d"
done
cmp -s "$W/eval_cpu.log" "$W/eval_cuda.log" && echo "eval of the GPU checkpoint: the same metrics on both devices" ||
  bad "eval metrics differ: $(cat "$W/eval_cpu.log") / $(cat "$W/eval_cuda.log")"
exit $failed
