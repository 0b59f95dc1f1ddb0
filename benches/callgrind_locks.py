#!/usr/bin/env python3
"""Atomic read-modify-writes a callgrind run executed.

usage: benches/callgrind_locks.py <callgrind.out> [--by-function N]

Reads a profile taken with `--dump-instr=yes` (`ATOMICS=1
benches/callgrind.sh ...` takes them so), finds the `lock`-prefixed and
memory-operand `xchg` instructions of every object it ran (its binary and
the shared libraries) with `objdump -d`, and prints how many of them ran:
the total, or with `--by-function N` the N functions that ran the most.
Counts are executions, so the difference of two runs over the difference
in requests is the atomic read-modify-writes per request. Each costs about
20 cycles uncontended on x86 and more when another core wrote the line,
which an instruction count does not show.
"""
import collections
import re
import subprocess
import sys


def parse(path):
    """Executions per (object, address), and each address's function."""
    obs, fns = {}, {}
    ob = fn = None
    counts = collections.Counter()
    fn_of = {}
    last = 0
    skip = False
    name = re.compile(r"(c?ob|c?fn)=\((\d+)\)(?: (.*))?")
    for line in open(path, errors="replace"):
        c = line[:1]
        if c in ("o", "f") or line.startswith(("cob=", "cfn=")):
            m = name.match(line.strip())
            if m:
                table = obs if m.group(1).endswith("ob") else fns
                if m.group(3) is not None:
                    table[m.group(2)] = m.group(3)
                if m.group(1) == "ob":
                    ob = table.get(m.group(2))
                elif m.group(1) == "fn":
                    fn = table.get(m.group(2))
            continue
        if line.startswith("calls="):
            # the next cost line is the call's inclusive cost, not an
            # execution of the instruction
            skip = True
            continue
        if c and c in "0123456789+-*":
            t = line.split()
            a = t[0]
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a[0] == "+":
                addr = last + int(a[1:], 0)
            elif a[0] == "-":
                addr = last - int(a[1:], 0)
            elif a == "*":
                addr = last
            else:
                continue
            last = addr
            if skip:
                skip = False
                continue
            if len(t) >= 3 and ob:
                counts[(ob, addr)] += int(t[2])
                fn_of[(ob, addr)] = fn
    return counts, fn_of


def locked(obj):
    """Addresses of the atomic read-modify-write instructions in `obj`."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", obj], capture_output=True, text=True
    ).stdout
    found = set()
    for line in out.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S.*)$", line)
        if m:
            ins = m.group(2)
            if ins.startswith("lock ") or (ins.startswith("xchg") and "(" in ins):
                found.add(int(m.group(1), 16))
    return found


def main():
    counts, fn_of = parse(sys.argv[1])
    by_fn = collections.Counter()
    total = 0
    cache = {}
    for (ob, addr), n in counts.items():
        if not ob.startswith("/"):
            continue
        if ob not in cache:
            cache[ob] = locked(ob)
        if addr in cache[ob]:
            total += n
            by_fn[fn_of[(ob, addr)] or "?"] += n
    if len(sys.argv) > 3 and sys.argv[2] == "--by-function":
        for f, n in by_fn.most_common(int(sys.argv[3])):
            print(n, f)
    else:
        print(total)


if __name__ == "__main__":
    main()
