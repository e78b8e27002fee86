#!/usr/bin/env bash
# Run one test file N times in a row and report the count of passes, e.g.
#   bash scripts/loop-test.sh 20 test/chaos/cluster.test.ts
# Each run's output is kept in .loop/<file>-<i>.log; the loop stops at the first failure unless
# KEEP_GOING=1.
set -uo pipefail
cd "$(dirname "$0")/.."
n=${1:?usage: loop-test.sh N FILE...}
shift
mkdir -p .loop
pass=0
for i in $(seq 1 "$n"); do
  log=".loop/$(basename "$1" .ts)-${LOOP_TAG:-$(date +%H%M%S)}-$i.log"
  start=$(date +%s)
  if npx vitest run "$@" --no-file-parallelism >"$log" 2>&1; then
    pass=$((pass + 1))
    echo "run $i: pass ($(($(date +%s) - start)) s)"
  else
    echo "run $i: FAIL ($(($(date +%s) - start)) s), see $log"
    [ "${KEEP_GOING:-0}" = 1 ] || break
  fi
done
echo "$pass/$n passed: $*"
