"""Drives a testkit cluster with the DataStax Python driver (cassandra-driver).

Usage: python3 datastax_driver.py HOST:PORT NODES
Exits non-zero with a message on the first thing that is wrong.
"""
import logging
import sys

from cassandra import InvalidRequest, OperationTimedOut  # noqa: F401
from cassandra.cqltypes import UTF8Type
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

# A traced request: the response carries the trace id, and the trace is
# read back from system_traces (ResultSet.get_query_trace).
rs = s.execute(sel, (1, 42), trace=True)
trace = rs.get_query_trace(max_wait_sec=5)
check(trace.duration is not None and trace.request_type == "Execute CQL3 prepared query", "trace %r" % (trace.request_type,))
acts = [e.description for e in trace.events]
check("Executing single-partition query on t" in acts and acts[-1] == "Request complete", "trace events %r" % acts)
check(all("42" not in a for a in acts), "a bound value in the trace: %r" % acts)

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

# 4. Common mistakes: Cassandra's codes (InvalidRequest is 0x2200) and messages.
def invalid(cql, gist, params=None):
    try:
        s.execute(cql, params)
    except InvalidRequest as e:
        check(gist in str(e), "%s: message %s" % (cql, e))
        check("code=2200" in str(e), "%s: code %s" % (cql, e))
        return
    check(False, "%s succeeded" % cql)


s.execute("CREATE TABLE py.em (k int PRIMARY KEY, v int, l list<int>)")
invalid("SELECT * FROM nope.t", "Keyspace nope does not exist")
invalid("SELECT * FROM py.nope", "unconfigured table nope")
invalid("SELECT nope FROM py.em", "Undefined column name nope")
invalid("INSERT INTO py.em (k, v) VALUES (1, 'abc')", 'Invalid STRING constant (abc) for "v" of type int')
invalid("INSERT INTO py.em (k, v) VALUES (1, 99999999999)", "Unable to make int from '99999999999'")
invalid("INSERT INTO py.em (k, l) VALUES (1, {'a': 1})", "Invalid map literal for l of type list<int>")
invalid("USE nope", "Keyspace 'nope' does not exist")
invalid("SELECT * FROM em", "No keyspace has been specified")
# A bound value of the wrong type: the driver is made to send a text's bytes for an int.
wrong = s.prepare("INSERT INTO py.em (k, v) VALUES (?, ?)")
wrong.column_metadata[1] = wrong.column_metadata[1]._replace(type=UTF8Type)
invalid(wrong, "Expected 4 or 0 byte int (3)", (1, "abc"))

# 2. Function selectors and terms, with Cassandra's column names.
rs = s.execute("SELECT now(), toTimestamp(now()), uuid() AS id FROM system.local")
check(rs.column_names == ["system.now()", "system.totimestamp(system.now())", "id"], "names %r" % rs.column_names)
r = rs.one()
check(r[0].version == 1 and r.id.version == 4, "now() and uuid(): %r" % (r,))
s.execute("CREATE TABLE py.fn (k int PRIMARY KEY, id timeuuid, ts timestamp, v int, b blob)")
s.execute("INSERT INTO py.fn (k, id, ts, v, b) VALUES (1, now(), '2020-01-02 03:04:05.678Z', 42, textAsBlob('hi'))")
rs = s.execute("SELECT toDate(ts), toUnixTimestamp(ts), CAST(v AS text), blobAsText(b) AS t FROM py.fn WHERE k = blobAsInt(intAsBlob(1))")
check(rs.column_names == ["system.todate(ts)", "system.tounixtimestamp(ts)", "cast(v as text)", "t"], "names %r" % rs.column_names)
r = rs.one()
check(str(r[0]) == "2020-01-02" and r[1] == 1577934245678 and r[2] == "42" and r.t == "hi", "values %r" % (r,))
invalid("SELECT nope() FROM system.local", "Unknown function 'nope'")
invalid("INSERT INTO py.fn (k, v) VALUES (9, now())", "cannot assign result of function system.now (type timeuuid) to v")

# 5. Single-partition conditional batches.
s.execute("CREATE TABLE py.cb (k int, c int, v text, PRIMARY KEY (k, c))")
r = s.execute("BEGIN BATCH INSERT INTO py.cb (k, c, v) VALUES (1, 1, 'a') IF NOT EXISTS; "
              "INSERT INTO py.cb (k, c, v) VALUES (1, 2, 'b'); APPLY BATCH")
check(r.was_applied, "conditional batch applied")
cupd = s.prepare("UPDATE py.cb SET v = ? WHERE k = ? AND c = ? IF v = ?")
cins = s.prepare("INSERT INTO py.cb (k, c, v) VALUES (?, ?, ?)")
cb = BatchStatement()
cb.add(cupd, ("x", 1, 1, "zzz"))
cb.add(cins, (1, 3, "d"))
r = s.execute(cb)
check(not r.was_applied, "conditional batch not applied")
row = r.one()
check((row.k, row.c, row.v) == (1, 1, "a"), "the row read: %r" % (row,))
check(s.execute("SELECT * FROM py.cb WHERE k = 1 AND c = 3").one() is None, "nothing written")
rs = s.execute("UPDATE py.cb SET v = 'q' WHERE k = 1 AND c = 1 IF v = 'nope'")
check(rs.column_names == ["[applied]", "v"] and tuple(rs.one()) == (False, "a"), "failed LWT: %r %r" % (rs.column_names, rs.one()))
invalid("BEGIN BATCH INSERT INTO py.cb (k, c, v) VALUES (1, 9, 'a') IF NOT EXISTS; "
        "INSERT INTO py.cb (k, c, v) VALUES (2, 9, 'b'); APPLY BATCH",
        "Batch with conditions cannot span multiple partitions")

# 3. Schema changes: ALTER TABLE / KEYSPACE, indexes, and the driver's metadata.
s.execute("CREATE TABLE py.al (k int, c int, v text, PRIMARY KEY (k, c))")
s.execute("INSERT INTO py.al (k, c, v) VALUES (1, 1, 'a')")
sel_v = s.prepare("SELECT v FROM py.al WHERE k = ? AND c = ?")
s.execute("ALTER TABLE py.al ADD (n int, w text)")
s.execute("UPDATE py.al SET n = 5, w = 'w' WHERE k = 1 AND c = 1")
r = s.execute("SELECT * FROM py.al WHERE k = 1").one()
check((r.k, r.c, r.n, r.v, r.w) == (1, 1, 5, "a", "w"), "row after ADD %r" % (r,))
cluster.refresh_table_metadata("py", "al")
check(list(cluster.metadata.keyspaces["py"].tables["al"].columns.keys()) == ["k", "c", "n", "v", "w"],
      "columns after ADD %r" % list(cluster.metadata.keyspaces["py"].tables["al"].columns.keys()))
s.execute("ALTER TABLE py.al DROP v")
try:
    s.execute(sel_v, (1, 1))
    check(False, "a prepared statement naming a dropped column ran")
except InvalidRequest as e:
    check("Undefined column name v" in str(e), "dropped column: %s" % e)
s.execute("ALTER TABLE py.al RENAME c TO cc")
invalid("ALTER TABLE py.al RENAME w TO ww", "Cannot rename non PRIMARY KEY column w")
s.execute("ALTER KEYSPACE py WITH replication = {'class': 'SimpleStrategy', 'replication_factor': %d}" % nodes)
s.execute("INSERT INTO py.al (k, cc, w) VALUES (2, 1, 'w')")
invalid("SELECT k FROM py.al WHERE w = 'w'", "ALLOW FILTERING")
s.execute("CREATE INDEX IF NOT EXISTS al_w ON py.al (w)")
check(sorted(r.k for r in s.execute("SELECT k FROM py.al WHERE w = 'w'")) == [1, 2], "indexed query")
cluster.refresh_table_metadata("py", "al")
check("al_w" in cluster.metadata.keyspaces["py"].tables["al"].indexes, "index metadata")
s.execute("DROP INDEX py.al_w")
invalid("DROP INDEX py.al_w", "Index 'py.al_w' doesn't exist")

cluster.shutdown()
print("datastax python driver: ok (protocol v4, %d hosts, 10 pages)" % len(hosts))
