#!/usr/bin/env bash
# A failing rank ends the whole MPI job quickly: runs dead_rank (rank 1 throws while rank 0 waits
# in a collective) on 2 ranks under a 60 s timeout and checks that the job failed (exit status not
# 0, and not 124: the timeout did not have to end it), that rank 1's error was reported, and that
# it all took under 30 s.
#   dead_rank.sh MPIEXEC DEAD_RANK_PROGRAM
set -uo pipefail
if [[ $# -ne 2 ]]; then
  echo "usage: $0 MPIEXEC DEAD_RANK_PROGRAM" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

start=$(date +%s.%N)
timeout -k 10 60 bash "$here/mpirun.sh" "$1" -np 2 "$2" >"$log" 2>&1
status=$?
end=$(date +%s.%N)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')

echo "---- job output ----"
cat "$log"
echo "--------------------"
echo "dead_rank: exit status $status, ${elapsed} s"

ok=1
if [[ $status -eq 0 ]]; then
  echo "FAIL: the job succeeded although rank 1 threw" >&2; ok=0
elif [[ $status -eq 124 || $status -eq 137 ]]; then
  echo "FAIL: the job hung and was ended by the 60 s timeout" >&2; ok=0
fi
if ! grep -q "rank 1 of 2: error: simulated failure" "$log"; then
  echo "FAIL: no 'rank 1 of 2: error: simulated failure' in the output" >&2; ok=0
fi
if ! awk -v t="$elapsed" 'BEGIN { exit !(t < 30) }'; then
  echo "FAIL: took ${elapsed} s, expected under 30 s" >&2; ok=0
fi

# A rank that dies without a word (crash, kill): mpirun notices and ends the job.
start=$(date +%s.%N)
timeout -k 10 60 bash "$here/mpirun.sh" "$1" -np 2 "$2" crash >"$log" 2>&1
cstatus=$?
end=$(date +%s.%N)
celapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
echo "---- job output (crash) ----"
cat "$log"
echo "----------------------------"
echo "dead_rank crash: exit status $cstatus, ${celapsed} s"
if [[ $cstatus -eq 0 || $cstatus -eq 124 || $cstatus -eq 137 ]]; then
  echo "FAIL: a crashed rank did not end the job by itself (status $cstatus)" >&2; ok=0
fi
if ! grep -qiE "exited|terminated|abort" "$log"; then
  echo "FAIL: mpirun did not say which process ended the job" >&2; ok=0
fi
if ! awk -v t="$celapsed" 'BEGIN { exit !(t < 30) }'; then
  echo "FAIL: the crashed job took ${celapsed} s, expected under 30 s" >&2; ok=0
fi

if [[ $ok -eq 1 ]]; then
  echo "dead_rank: PASS (error: status $status in ${elapsed} s; crash: status $cstatus in ${celapsed} s)"
  exit 0
fi
exit 1
