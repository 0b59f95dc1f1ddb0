"""Counts the answers to many concurrent requests from the DataStax Python
driver (cassandra-driver): every request must be answered.

Usage: python3 stress.py HOST:PORT NODES REQUESTS [ROUNDS]
Each round puts REQUESTS requests in flight at once: prepared inserts and,
one in fifty, a 1,000-row `SELECT *` of one partition. Exits non-zero,
saying how many went unanswered, if any request got no answer (the driver
gives up on one after 10 s) or an error.
"""
import logging
import sys
import threading
import time

from cassandra import OperationTimedOut
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT

logging.basicConfig(level=logging.ERROR)

host, port = sys.argv[1].rsplit(":", 1)
nodes = int(sys.argv[2])
requests = int(sys.argv[3])
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 1
ROWS = 1000

profile = ExecutionProfile(request_timeout=10)
cluster = Cluster([host], port=int(port), execution_profiles={EXEC_PROFILE_DEFAULT: profile})
s = cluster.connect()
# Schema agreement: after each DDL the driver waits (up to
# max_schema_agreement_wait, 10 s) until system.local and system.peers of
# every node report one schema_version; nodes that disagreed would hold
# every DDL's answer for 10 s. Each must agree at once.
for ddl in [
    "CREATE KEYSPACE stress WITH replication = {'class': 'SimpleStrategy', 'replication_factor': %d}" % nodes,
    "CREATE TABLE stress.t (k int, c int, v text, PRIMARY KEY (k, c))",
    "CREATE TABLE stress.scratch (k int PRIMARY KEY, v int)",
    "ALTER TABLE stress.scratch ADD w text",
    "CREATE INDEX ON stress.scratch (v)",
    "DROP TABLE stress.scratch",
]:
    t0 = time.time()
    f = s.execute_async(ddl)
    f.result()
    took = time.time() - t0
    if not f.is_schema_agreed or took > 2:
        print("FAILED: %s: schema agreed %s after %.2fs" % (ddl, f.is_schema_agreed, took), file=sys.stderr)
        sys.exit(1)
if not cluster.control_connection.wait_for_schema_agreement(wait_time=2):
    print("FAILED: the nodes report different schema versions", file=sys.stderr)
    sys.exit(1)
ins = s.prepare("INSERT INTO stress.t (k, c, v) VALUES (?, ?, ?)")
sel = "SELECT * FROM stress.t WHERE k = 0"
for f in [s.execute_async(ins, (0, c, "row %d " % c + "x" * 40)) for c in range(ROWS)]:
    f.result()


class Count:
    def __init__(self, n):
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.left = n
        self.answered = 0
        self.timed_out = 0
        self.errors = {}
        self.short_reads = 0

    def _one(self):
        self.left -= 1
        if self.left == 0:
            self.done.set()

    def ok(self, rows, what):
        with self.lock:
            self.answered += 1
            if what == "select" and len(list(rows)) != ROWS:
                self.short_reads += 1
            self._one()

    def err(self, e):
        with self.lock:
            if isinstance(e, OperationTimedOut):
                self.timed_out += 1
            else:
                key = "%s: %s" % (type(e).__name__, str(e)[:200])
                self.errors[key] = self.errors.get(key, 0) + 1
            self._one()


total_unanswered = 0
for rnd in range(rounds):
    count = Count(requests)
    t0 = time.time()
    for i in range(requests):
        if i % 50 == 25:
            f = s.execute_async(sel)
            f.add_callbacks(count.ok, count.err, callback_args=("select",))
        else:
            f = s.execute_async(ins, (1 + i % 100, rnd * requests + i, "v%d" % i))
            f.add_callbacks(count.ok, count.err, callback_args=("insert",))
    count.done.wait(60)
    took = time.time() - t0
    with count.lock:
        unanswered = count.timed_out + count.left
        print(
            "round %d: %d requests, %d answered, %d unanswered, %d errors, %d short reads, %.2fs"
            % (rnd, requests, count.answered, unanswered, sum(count.errors.values()), count.short_reads, took),
            flush=True,
        )
        total_unanswered += unanswered
        if count.errors or count.short_reads:
            print("FAILED: errors %r, short reads %d" % (count.errors, count.short_reads), file=sys.stderr)
            sys.exit(1)

cluster.shutdown()
if total_unanswered:
    print("FAILED: %d requests went unanswered" % total_unanswered, file=sys.stderr)
    sys.exit(1)
print("datastax python driver stress: ok (%d rounds of %d requests, all answered)" % (rounds, requests))
