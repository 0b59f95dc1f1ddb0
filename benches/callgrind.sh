#!/usr/bin/env bash
# Instructions per request of the overhead client under callgrind: the
# difference of a 1.5 s and a 4 s run over the difference in requests.
# usage: benches/callgrind.sh <side: raw|stack> [extra overhead args...]
set -euo pipefail
cd "$(dirname "$0")/.."
side=$1; shift
declare -A ir ops
for secs in 1.5 4; do
  out=$(mktemp -d)
  valgrind --tool=callgrind --callgrind-out-file=$out/cg.out target/release/overhead --json --concurrency 1 --rows 50 \
    --warmup-secs 0 --rounds 1 --round-secs $secs --only $side "$@" > $out/json 2>$out/err
  ir[$secs]=$(grep -m1 '^summary:' $out/cg.out | awk '{print $2}')
  ops[$secs]=$(python3 -c "import json,sys; d=json.load(open('$out/json')); print(d['per_round'][0]['$side']['ops'])")
  rm -rf $out
done
python3 -c "print('$side $*:', round(( ${ir[4]} - ${ir[1.5]} ) / ( ${ops[4]} - ${ops[1.5]} )), 'instructions/request', '(requests', ${ops[1.5]}, ${ops[4]}, ')')"
