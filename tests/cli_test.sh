#!/usr/bin/env bash
# End-to-end checks of the ddunet tool: a tiny train / eval / predict / resume round, and the
# errors and exit codes for bad inputs. Usage: cli_test.sh path/to/ddunet
set -u
T=$1
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
passed=0 failed=0

ok() { echo "ok: $1"; passed=$((passed + 1)); }
bad() { echo "FAILED: $1"; failed=$((failed + 1)); }

# expect_fail NAME TEXT CMD...: CMD must exit non-zero and print TEXT.
expect_fail() {
  local name=$1 text=$2
  shift 2
  local out rc
  out=$("$@" 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ]; then bad "$name: exited 0"; return; fi
  if ! grep -qF -- "$text" <<<"$out"; then bad "$name: rc $rc but no '$text' in: $out"; return; fi
  ok "$name (exit $rc): $(grep -F -- "$text" <<<"$out" | head -1)"
}
expect_ok() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1); then ok "$name"; else bad "$name: $out"; fi
}

# A tiny folder data set: gray images and 0/255 masks (the synth discs serve as both).
mkdir -p "$W/img" "$W/mask" "$W/small"
for i in 1 2 3; do
  "$T" synth --output "$W/img/$i.png" --size 64x64 --seed $i >/dev/null
  cp "$W/img/$i.png" "$W/mask/$i.png"
done
"$T" synth --output "$W/small/1.png" --size 32x32 >/dev/null

expect_ok "train on a folder" "$T" train --images "$W/img" --masks "$W/mask" --colors binary --holdout 1 \
  --depth 2 --base 4 --F 4 --grid 2x2 --crop 32 --crops-per-image 2 --batch 2 --epochs 2 --out "$W/run" --quiet
[ -f "$W/run/last.safetensors" ] && [ -f "$W/run/best.safetensors" ] && [ -f "$W/run/log.csv" ] &&
  ok "checkpoints and log written" || bad "checkpoints and log written"
expect_ok "resume to epoch 3" "$T" train --images "$W/img" --masks "$W/mask" --colors binary --holdout 1 \
  --depth 2 --base 4 --F 4 --grid 2x2 --crop 32 --crops-per-image 2 --batch 2 --epochs 3 --out "$W/run" --quiet --resume
[ "$(tail -1 "$W/run/log.csv" | cut -d, -f1)" = 3 ] && ok "resume appended epoch 3" || bad "resume appended epoch 3"
expect_ok "eval on the hold-out" "$T" eval --checkpoint "$W/run/best.safetensors" --images "$W/img" --masks "$W/mask" \
  --colors binary --holdout 1
expect_ok "predict with overlay on another grid" "$T" predict --checkpoint "$W/run/best.safetensors" \
  --input "$W/img/1.png" --output "$W/pred.png" --overlay "$W/overlay.png" --grid 4x2
[ -s "$W/pred.png" ] && [ -s "$W/overlay.png" ] && ok "prediction PNGs written" || bad "prediction PNGs written"

# Bad inputs: clear messages, non-zero exits.
expect_fail "unknown flag" "--bogus" "$T" train --bogus
expect_fail "unknown device" "--device gpu: use cpu or cuda" "$T" train --epochs 1 --device gpu --out "$W/rd"
expect_fail "unknown precision" "--precision fp64: use fp32, tf32, bf16 or fp16" "$T" train --epochs 1 --precision fp64 --out "$W/rp"
expect_fail "half precision on the CPU" "--precision bf16 is for --device cuda" "$T" predict --checkpoint "$W/run/best.safetensors" --input "$W/img/1.png" --output "$W/x.png" --precision bf16
expect_fail "missing image folder" "Directory does not exist" "$T" train --images "$W/nope" --masks "$W/mask"
expect_fail "missing checkpoint" "File does not exist" "$T" predict --checkpoint "$W/nope.safetensors" --input "$W/img/1.png" --output "$W/x.png"
expect_fail "missing input image" "File does not exist" "$T" predict --checkpoint "$W/run/best.safetensors" --input "$W/nope.png" --output "$W/x.png"
mkdir -p "$W/mm"
cp "$W/small/1.png" "$W/mm/1.png"
cp "$W/img/2.png" "$W/mm/2.png"
cp "$W/img/3.png" "$W/mm/3.png"
expect_fail "image/mask size mismatch" "is 64x64 (WxH) but its mask" "$T" train --images "$W/img" --masks "$W/mm" --colors binary --out "$W/r2"
expect_fail "mask colour not in the table" "255" "$T" train --images "$W/img" --masks "$W/mask" --colors "0,0,0;10,10,10" --out "$W/r3"
expect_fail "mask without a mask file" "has no mask" "$T" train --images "$W/img" --masks "$W/small" --colors binary --out "$W/r4"
expect_fail "grid that does not divide the image" "subimage grid 20x20" "$T" predict --checkpoint "$W/run/best.safetensors" --input "$W/img/1.png" --output "$W/x.png" --grid 20x20
"$T" synth --output "$W/odd.png" --size 34x34 >/dev/null
expect_fail "image size not a multiple of 2^D" "is not divisible by 4" "$T" predict --checkpoint "$W/run/best.safetensors" --input "$W/small/../odd.png" --output "$W/x.png" --grid 1x1
expect_fail "malformed grid" "expected ROWSxCOLS" "$T" predict --checkpoint "$W/run/best.safetensors" --input "$W/img/1.png" --output "$W/x.png" --grid 2by2
head -c 1000 "$W/run/best.safetensors" >"$W/trunc.safetensors"
expect_fail "truncated checkpoint" "trunc.safetensors" "$T" eval --checkpoint "$W/trunc.safetensors" --images "$W/img" --masks "$W/mask" --colors binary
expect_fail "resume with other model flags" "use the same model flags" "$T" train --images "$W/img" --masks "$W/mask" --colors binary --holdout 1 \
  --depth 2 --base 8 --F 4 --grid 2x2 --crop 32 --epochs 4 --out "$W/run" --quiet --resume

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
