#!/usr/bin/env bash
# Instructions per request through one `hot_path` case (the default stack
# or a layer around a no-op service) under callgrind: the difference of a
# 10,000- and a 20,000-request run over 10,000. Deterministic: the same
# build gives the same count on a busy machine or a quiet one.
# usage: benches/hot_path.sh <case: noop|metrics|trace|limits|stack|timed|on-only|otel|prometheus> [hot_path args...]
set -euo pipefail
cd "$(dirname "$0")/.."
case=$1; shift
declare -A ir
for n in 10000 20000; do
  out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file=$out target/release/hot_path --case $case --iters $n "$@" >/dev/null 2>&1
  ir[$n]=$(grep -m1 '^summary:' $out | awk '{print $2}')
  rm -f $out
done
echo "hot_path --case $case $*: $(( (${ir[20000]} - ${ir[10000]}) / 10000 )) instructions/request"
