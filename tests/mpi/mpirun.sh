#!/usr/bin/env bash
# Runs an MPI program the way the tests need it, in CI containers as well as on workstations:
#   mpirun.sh MPIEXEC [mpiexec arguments...] PROGRAM [program arguments...]
# With Open MPI: --oversubscribe (more ranks than cores), --bind-to none (ranks are not pinned to
# cores shared with other jobs), no openib BTL (it only warns where there is no InfiniBand),
# OMP_NUM_THREADS=1 exported to the ranks (unless set: then that value), and --allow-run-as-root
# when running as root (CI containers). Other MPI implementations get the arguments unchanged.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 MPIEXEC [mpiexec arguments...] PROGRAM [arguments...]" >&2
  exit 2
fi
mpiexec="$1"
shift

flags=()
if "$mpiexec" --version 2>&1 | grep -q "Open MPI\|OpenRTE"; then
  flags+=(--oversubscribe --bind-to none --mca btl ^openib -x "OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}")
  if [[ "$(id -u)" -eq 0 ]]; then
    flags+=(--allow-run-as-root)
  fi
fi
exec "$mpiexec" "${flags[@]}" "$@"
