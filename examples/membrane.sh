#!/usr/bin/env bash
# Real data: the ISBI 2012 electron-microscopy membranes (../shared/data/isbi2012-membrane, 30
# images of 512x512). Trains a DDU-Net(4, 32, Y) on 2x2 subimages with the first 26 images,
# evaluates it on the 4 held out, and writes their predicted class maps and overlays.
#   bash examples/membrane.sh [build/tools/ddunet] [data dir] [output dir]
set -euo pipefail
T=${1:-build/tools/ddunet}
D=${2:-../shared/data/isbi2012-membrane}
OUT=${3:-membrane-run}
COLORS="membrane=0,0,0;cell=255,255,255"

"$T" train --images "$D/image" --masks "$D/label" --colors "$COLORS" --holdout 4 \
  --depth 4 --base 8 --F 32 --grid 2x2 --crop 256 --crops-per-image 4 --batch 4 \
  --epochs 25 --min-epochs 25 --out "$OUT"
"$T" eval --checkpoint "$OUT/best.safetensors" --images "$D/image" --masks "$D/label" --colors "$COLORS" --holdout 4
for i in 26 27 28 29; do
  "$T" predict --checkpoint "$OUT/best.safetensors" --input "$D/image/$i.png" --output "$OUT/pred-$i.png" \
    --overlay "$OUT/overlay-$i.png" --colors "255,0,0;0,0,0"
done
echo "predictions: $OUT/pred-*.png (class per pixel), $OUT/overlay-*.png"
