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
#
# Two more figures per request, each slower to take, for what an
# instruction count does not show (both whole process, repeatable):
# - CACHE_SIM=1: callgrind's cache simulation (the machine's own L1 and
#   last-level sizes): instruction-cache misses (I1mr) and data-cache
#   read and write misses (D1mr, D1mw) per request;
# - ATOMICS=1: the atomic read-modify-writes run per request (`lock`-
#   prefixed and `xchg` instructions, found with objdump by
#   benches/callgrind_locks.py in a profile of every instruction).
set -euo pipefail
cd "$(dirname "$0")/.."
side=$1; shift
declare -A ir ops path misses locks
for secs in 1.5 4; do
  out=$(mktemp -d)
  valgrind --tool=callgrind ${CACHE_SIM:+--cache-sim=yes} ${ATOMICS:+--dump-instr=yes} \
    --callgrind-out-file=$out/cg.out ${OVERHEAD_BIN:-target/release/overhead} --json --concurrency ${CONCURRENCY:-1} --rows 50 \
    --warmup-secs 0 --rounds 1 --round-secs $secs --only $side "$@" > $out/json 2>$out/err
  ir[$secs]=$(grep -m1 '^summary:' $out/cg.out | awk '{print $2}')
  ops[$secs]=$(python3 -c "import json,sys; d=json.load(open('$out/json')); print(d['per_round'][0]['$side']['ops'])")
  path[$secs]=$(callgrind_annotate --inclusive=yes --auto=no --threshold=100 $out/cg.out 2>/dev/null \
    | grep -E 'overhead\.rs:overhead::closed_loop::\{\{closure\}\}::\{\{closure\}\}( \[.*\])?$' \
    | awk '{gsub(",","",$1); if ($1+0 > m) m = $1+0} END {print m}')
  # the cache simulation's I1mr, D1mr and D1mw, found by name in the
  # profile's list of events (0 0 0 without it)
  misses[$secs]=$(awk '/^events:/ {for (i = 2; i <= NF; i++) col[$i] = i}
    /^summary:/ {print $(col["I1mr"]) + 0, $(col["D1mr"]) + 0, $(col["D1mw"]) + 0; exit}' $out/cg.out)
  locks[$secs]=0
  if [ -n "${ATOMICS:-}" ]; then
    locks[$secs]=$(python3 benches/callgrind_locks.py $out/cg.out)
  fi
  rm -rf $out
done
python3 -c "
d = ${ops[4]} - ${ops[1.5]}
print('$side $*:', round((${ir[4]} - ${ir[1.5]}) / d), 'instructions/request (whole process);',
      round((${path[4]} - ${path[1.5]}) / d), 'on the request path', '(requests', ${ops[1.5]}, ${ops[4]}, ')')
if '${CACHE_SIM:-}':
    a, b = [int(x) for x in '${misses[1.5]}'.split()], [int(x) for x in '${misses[4]}'.split()]
    print('  cache misses per request: I1 %.0f, D1 read %.0f, D1 write %.0f' % tuple((y - x) / d for x, y in zip(a, b)))
if '${ATOMICS:-}':
    print('  atomic read-modify-writes per request: %.1f' % ((${locks[4]} - ${locks[1.5]}) / d))"
