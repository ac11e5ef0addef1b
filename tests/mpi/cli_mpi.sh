#!/usr/bin/env bash
# The ddunet tool under mpirun gives what one process gives: `train` on 2 ranks writes the same
# log (losses, mIoU) as on 1, and `predict` on 3 ranks (each reading only its own subimages of the
# input) writes the same class map, byte for byte.
#   cli_mpi.sh MPIEXEC DDUNET
set -euo pipefail
M="bash $(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/mpirun.sh $1"
D=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
args=(--k 4 --circles-train 64 --circles-val 16 --grid 1x4 --F 8 --depth 2 --base 4 --epochs 2 --min-epochs 2 --batch 8
      --quiet --threads 1)
"$D" train "${args[@]}" --out one > one.txt 2>&1
$M -np 2 "$D" train "${args[@]}" --out two > two.txt 2>&1
grep -q "2 ranks" two.txt || { echo "FAIL: train did not run on 2 ranks"; cat two.txt; exit 1; }
# Everything but the timings (columns 7, 8) must agree to the last digit.
cmp <(cut -d, -f1-6 one/log.csv) <(cut -d, -f1-6 two/log.csv) || { echo "FAIL: logs differ"; paste one/log.csv two/log.csv; exit 1; }
"$D" synth --output big.png --size 256x384 > /dev/null
"$D" predict --checkpoint one/best.safetensors --input big.png --grid 2x3 --output c1.png --threads 1 > p1.txt 2>&1
$M -np 3 "$D" predict --checkpoint one/best.safetensors --input big.png --grid 2x3 --output c3.png --overlay o3.png \
  --threads 1 > p3.txt 2>&1
grep -q "on 3 ranks" p3.txt || { echo "FAIL: predict did not run on 3 ranks"; cat p3.txt; exit 1; }
cmp c1.png c3.png || { echo "FAIL: class maps differ"; exit 1; }
test -s o3.png || { echo "FAIL: no overlay"; exit 1; }
# A rank that fails ends the job with its message (a grid smaller than the rank count).
set +e
timeout 60 $M -np 3 "$D" predict --checkpoint one/best.safetensors --input big.png --grid 1x2 --output x.png > e.txt 2>&1
status=$?
set -e
[[ $status -ne 0 && $status -ne 124 ]] || { echo "FAIL: bad grid on 3 ranks gave status $status"; cat e.txt; exit 1; }
grep -q "cannot be spread over 3 ranks" e.txt || { echo "FAIL: no clear message"; cat e.txt; exit 1; }
echo "cli_mpi: PASS (train on 2 ranks = 1 rank, predict on 3 ranks = 1 rank, bad grid ends the job: status $status)"
