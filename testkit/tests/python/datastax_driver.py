"""Drives a testkit cluster with the DataStax Python driver (cassandra-driver).

Usage: python3 datastax_driver.py HOST:PORT NODES
Exits non-zero with a message on the first thing that is wrong.
"""
import logging
import sys

from cassandra import InvalidRequest, OperationTimedOut  # noqa: F401
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import RoundRobinPolicy
from cassandra.query import SimpleStatement, BatchStatement

logging.basicConfig(level=logging.ERROR)


def check(cond, what):
    if not cond:
        print("FAILED: " + what, file=sys.stderr)
        sys.exit(1)


host, port = sys.argv[1].rsplit(":", 1)
nodes = int(sys.argv[2])
profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
cluster = Cluster([host], port=int(port), execution_profiles={EXEC_PROFILE_DEFAULT: profile})
s = cluster.connect()
# The driver asked for v5+, got the protocol error, and downgraded to v4.
check(cluster.protocol_version == 4, "negotiated protocol %r" % cluster.protocol_version)
hosts = sorted(str(h.address) for h in cluster.metadata.all_hosts())
check(len(hosts) == nodes, "hosts %r" % hosts)

s.execute("CREATE KEYSPACE py WITH replication = {'class': 'SimpleStrategy', 'replication_factor': %d}" % nodes)
s.execute("CREATE TABLE py.t (k int, c int, v text, PRIMARY KEY (k, c))")
ins = s.prepare("INSERT INTO py.t (k, c, v) VALUES (?, ?, ?)")
for c in range(95):
    s.execute(ins, (1, c, "v%d" % c))
rs = s.execute(SimpleStatement("SELECT c, v FROM py.t WHERE k = 1", fetch_size=10))
pages = 0
rows = []
while True:
    pages += 1
    rows.extend(rs.current_rows)
    if not rs.has_more_pages:
        break
    rs.fetch_next_page()
check(pages == 10 and len(rows) == 95, "pages %d rows %d" % (pages, len(rows)))
check([r.c for r in rows] == list(range(95)), "row order")

sel = s.prepare("SELECT v FROM py.t WHERE k = ? AND c = ?")
check(s.execute(sel, (1, 42)).one().v == "v42", "prepared read")

batch = BatchStatement()
batch.add(ins, (2, 1, "a"))
batch.add(ins, (2, 2, "b"))
s.execute(batch)
check(s.execute("SELECT COUNT(*) FROM py.t WHERE k = 2").one()[0] == 2, "batch count")

r = s.execute("INSERT INTO py.t (k, c, v) VALUES (1, 1, 'x') IF NOT EXISTS").one()
check(r.applied is False and r.v == "v1", "lwt %r" % (r,))

# Schema metadata from system_schema, refreshed by schema-change events.
check("py" in cluster.metadata.keyspaces, "keyspace metadata")
check(list(cluster.metadata.keyspaces["py"].tables["t"].columns.keys()) == ["k", "c", "v"], "table metadata")

try:
    s.execute("SELECT * FROM py.nope")
    check(False, "query on a missing table succeeded")
except InvalidRequest as e:
    check("unconfigured table nope" in str(e), "error message %s" % e)

# Issue #19: testkit answers as Cassandra 4.x does.

# 1. Empty non-frozen collections are null; an empty frozen one is empty.
s.execute("CREATE TABLE py.ec (k int PRIMARY KEY, l list<int>, st set<text>, m map<text, int>, fl frozen<list<int>>)")
s.execute("INSERT INTO py.ec (k, l, st, m, fl) VALUES (1, [], {}, {}, [])")
s.execute(s.prepare("INSERT INTO py.ec (k, l, st, m) VALUES (?, ?, ?, ?)"), (2, [], set(), {}))
for k in (1, 2):
    r = s.execute("SELECT l, st, m FROM py.ec WHERE k = %d" % k).one()
    check(r.l is None and r.st is None and r.m is None, "empty collections of row %d: %r" % (k, r))
check(s.execute("SELECT fl FROM py.ec WHERE k = 1").one().fl == [], "empty frozen list")
s.execute("INSERT INTO py.ec (k, l) VALUES (3, [7])")
s.execute("UPDATE py.ec SET l = l - [7] WHERE k = 3")
check(s.execute("SELECT l FROM py.ec WHERE k = 3").one().l is None, "list emptied by removal")

cluster.shutdown()
print("datastax python driver: ok (protocol v4, %d hosts, 10 pages)" % len(hosts))
