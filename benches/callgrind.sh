#!/usr/bin/env bash
# Instructions per request of the overhead client under callgrind: the
# difference of a 1.5 s and a 4 s run over the difference in requests.
#
# Two figures:
# - whole process: everything the client process ran (the issue's
#   measure); the runtime's parking and timer wheel are in it, and they
#   move with the machine's load (a busy machine parks the workers more
#   often per request), so compare these on a quiet machine;
# - request path: the instructions inside the benchmark's per-request
#   future (`overhead::closed_loop`'s task, inclusive: building the
#   request, the stack or session call, polling it, the events, the
#   spans), which load does not move; the connection's router task and
#   the scheduler are outside it. Use it to compare two builds.
#
# usage: benches/callgrind.sh <side: raw|stack> [extra overhead args...]
# OVERHEAD_BIN=path measures another build of the overhead tool (an A/B
# against an older commit: pass it --testkit target/release/cql-testkit).
# CONCURRENCY=64 benches/callgrind.sh ... measures with that many requests
# in flight (default 1): the raw driver batches many requests per system
# call and wake-up then, so its count per read drops while the stack's
# added instructions stay.
set -euo pipefail
cd "$(dirname "$0")/.."
side=$1; shift
declare -A ir ops path
for secs in 1.5 4; do
  out=$(mktemp -d)
  valgrind --tool=callgrind --callgrind-out-file=$out/cg.out ${OVERHEAD_BIN:-target/release/overhead} --json --concurrency ${CONCURRENCY:-1} --rows 50 \
    --warmup-secs 0 --rounds 1 --round-secs $secs --only $side "$@" > $out/json 2>$out/err
  ir[$secs]=$(grep -m1 '^summary:' $out/cg.out | awk '{print $2}')
  ops[$secs]=$(python3 -c "import json,sys; d=json.load(open('$out/json')); print(d['per_round'][0]['$side']['ops'])")
  path[$secs]=$(callgrind_annotate --inclusive=yes --auto=no --threshold=100 $out/cg.out 2>/dev/null \
    | grep -E 'overhead\.rs:overhead::closed_loop::\{\{closure\}\}::\{\{closure\}\}( \[.*\])?$' \
    | awk '{gsub(",","",$1); if ($1+0 > m) m = $1+0} END {print m}')
  rm -rf $out
done
python3 -c "
d = ${ops[4]} - ${ops[1.5]}
print('$side $*:', round((${ir[4]} - ${ir[1.5]}) / d), 'instructions/request (whole process);',
      round((${path[4]} - ${path[1.5]}) / d), 'on the request path', '(requests', ${ops[1.5]}, ${ops[4]}, ')')"
