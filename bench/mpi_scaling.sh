#!/usr/bin/env bash
# Strong and weak scaling of DomainDecomposed over 1, 2 and 4 MPI ranks (bench_mpi), printed as a
# table. Strong: one 256x256 RGB image (batch 2) on a 2x2 grid. Weak: two 128x128 subimages per rank
# (1x2, 2x2, 2x4 grids). DDU-Net(3, 32, Y), base 8.
#   bench/mpi_scaling.sh BUILD_DIR
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${1:-build}/bench/bench_mpi"
run() { bash "$here/../tests/mpi/mpirun.sh" mpiexec -np "$1" "$bin" "${@:2}" --depth 3 --base 8 --F 32 --batch 2 --steps 5 --warmup 2; }
{
  for p in 1 2 4; do run "$p" --label strong --image 256x256 --grid 2x2; done
  run 1 --label weak --image 128x256 --grid 1x2
  run 2 --label weak --image 256x256 --grid 2x2
  run 4 --label weak --image 256x512 --grid 2x4
  # The paper's Table 5 network, DDU-Net(4, 64, Y) base 16 on 1024x1024 RGB, 2x2 grid: bytes only.
  for p in 2 4; do
    bash "$here/../tests/mpi/mpirun.sh" mpiexec -np "$p" "$bin" --label paper --image 1024x1024 --grid 2x2 \
      --depth 4 --base 16 --F 64 --batch 1 --estimate-only 1
  done
} | tee /dev/stderr | python3 "$here/mpi_table.py"
