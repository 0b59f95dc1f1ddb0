//! The system tables drivers read: `system.local`, `system.peers` and
//! `system_schema.*`, made per query from the cluster's live state so they
//! always reflect the real topology and the real in-memory schema.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::db::Topology;
use crate::schema::{
    ColumnKind as K, Keyspace, PartitionKey, Row, Schema, Table, TableData, VirtualTable as V,
};
use crate::types::{encode_collection, encode_map};

/// The Cassandra release the nodes claim to run.
pub(crate) const RELEASE_VERSION: &str = "4.0.11";
/// The CQL version the nodes claim to speak.
pub(crate) const CQL_VERSION: &str = "3.4.5";

fn table(ks: &str, name: &str, kind: V, cols: &[(&str, &str, K)]) -> (String, Arc<Table>) {
    (
        name.to_string(),
        Arc::new(Table::system(ks, name, kind, cols)),
    )
}

/// The `system` and `system_schema` keyspaces.
pub(crate) fn system_keyspaces() -> Vec<Keyspace> {
    let local_strategy = vec![(
        "class".to_string(),
        "org.apache.cassandra.locator.LocalStrategy".to_string(),
    )];
    let system: BTreeMap<String, Arc<Table>> = [
        table(
            "system",
            "local",
            V::Local,
            &[
                ("key", "text", K::PartitionKey),
                ("bootstrapped", "text", K::Regular),
                ("broadcast_address", "inet", K::Regular),
                ("cluster_name", "text", K::Regular),
                ("cql_version", "text", K::Regular),
                ("data_center", "text", K::Regular),
                ("host_id", "uuid", K::Regular),
                ("listen_address", "inet", K::Regular),
                ("native_protocol_version", "text", K::Regular),
                ("partitioner", "text", K::Regular),
                ("rack", "text", K::Regular),
                ("release_version", "text", K::Regular),
                ("rpc_address", "inet", K::Regular),
                ("rpc_port", "int", K::Regular),
                ("schema_version", "uuid", K::Regular),
                ("tokens", "set<text>", K::Regular),
            ],
        ),
        table(
            "system",
            "peers",
            V::Peers,
            &[
                ("peer", "inet", K::PartitionKey),
                ("data_center", "text", K::Regular),
                ("host_id", "uuid", K::Regular),
                ("preferred_ip", "inet", K::Regular),
                ("rack", "text", K::Regular),
                ("release_version", "text", K::Regular),
                ("rpc_address", "inet", K::Regular),
                ("schema_version", "uuid", K::Regular),
                ("tokens", "set<text>", K::Regular),
            ],
        ),
    ]
    .into_iter()
    .collect();
    let empty =
        |name: &str, cols: &[(&str, &str, K)]| table("system_schema", name, V::SchemaEmpty, cols);
    let system_schema: BTreeMap<String, Arc<Table>> = [
        table(
            "system_schema",
            "keyspaces",
            V::SchemaKeyspaces,
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("durable_writes", "boolean", K::Regular),
                ("replication", "frozen<map<text,text>>", K::Regular),
            ],
        ),
        table(
            "system_schema",
            "tables",
            V::SchemaTables,
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("table_name", "text", K::Clustering),
                ("bloom_filter_fp_chance", "double", K::Regular),
                ("caching", "frozen<map<text,text>>", K::Regular),
                ("comment", "text", K::Regular),
                ("compaction", "frozen<map<text,text>>", K::Regular),
                ("compression", "frozen<map<text,text>>", K::Regular),
                ("crc_check_chance", "double", K::Regular),
                ("default_time_to_live", "int", K::Regular),
                ("flags", "frozen<set<text>>", K::Regular),
                ("gc_grace_seconds", "int", K::Regular),
                ("id", "uuid", K::Regular),
                ("max_index_interval", "int", K::Regular),
                ("memtable_flush_period_in_ms", "int", K::Regular),
                ("min_index_interval", "int", K::Regular),
                ("speculative_retry", "text", K::Regular),
            ],
        ),
        table(
            "system_schema",
            "columns",
            V::SchemaColumns,
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("table_name", "text", K::Clustering),
                ("column_name", "text", K::Clustering),
                ("clustering_order", "text", K::Regular),
                ("column_name_bytes", "blob", K::Regular),
                ("kind", "text", K::Regular),
                ("position", "int", K::Regular),
                ("type", "text", K::Regular),
            ],
        ),
        empty(
            "types",
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("type_name", "text", K::Clustering),
                ("field_names", "frozen<list<text>>", K::Regular),
                ("field_types", "frozen<list<text>>", K::Regular),
            ],
        ),
        empty(
            "views",
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("view_name", "text", K::Clustering),
                ("base_table_id", "uuid", K::Regular),
                ("base_table_name", "text", K::Regular),
                ("include_all_columns", "boolean", K::Regular),
                ("where_clause", "text", K::Regular),
            ],
        ),
        table(
            "system_schema",
            "indexes",
            V::SchemaIndexes,
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("table_name", "text", K::Clustering),
                ("index_name", "text", K::Clustering),
                ("kind", "text", K::Regular),
                ("options", "frozen<map<text,text>>", K::Regular),
            ],
        ),
        empty(
            "functions",
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("function_name", "text", K::Clustering),
                ("argument_types", "frozen<list<text>>", K::Clustering),
                ("argument_names", "frozen<list<text>>", K::Regular),
                ("body", "text", K::Regular),
                ("language", "text", K::Regular),
                ("return_type", "text", K::Regular),
                ("called_on_null_input", "boolean", K::Regular),
            ],
        ),
        empty(
            "aggregates",
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("aggregate_name", "text", K::Clustering),
                ("argument_types", "frozen<list<text>>", K::Clustering),
                ("final_func", "text", K::Regular),
                ("initcond", "text", K::Regular),
                ("return_type", "text", K::Regular),
                ("state_func", "text", K::Regular),
                ("state_type", "text", K::Regular),
            ],
        ),
        empty(
            "triggers",
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("table_name", "text", K::Clustering),
                ("trigger_name", "text", K::Clustering),
                ("options", "frozen<map<text,text>>", K::Regular),
            ],
        ),
        empty(
            "dropped_columns",
            &[
                ("keyspace_name", "text", K::PartitionKey),
                ("table_name", "text", K::Clustering),
                ("column_name", "text", K::Clustering),
                ("dropped_time", "timestamp", K::Regular),
                ("type", "text", K::Regular),
            ],
        ),
    ]
    .into_iter()
    .collect();
    [("system", system), ("system_schema", system_schema)]
        .into_iter()
        .map(|(name, tables)| Keyspace {
            name: name.to_string(),
            replication: local_strategy.clone(),
            durable_writes: true,
            replication_factor: 1,
            tables,
            is_system: true,
        })
        .chain(std::iter::once(crate::trace::keyspace()))
        .collect()
}

/// A column's type as `system_schema.columns` shows it: `frozen<...>`
/// around a frozen collection.
fn column_type(c: &crate::schema::Column) -> String {
    if c.frozen && c.ty.is_collection() {
        format!("frozen<{}>", c.ty.cql_name())
    } else {
        c.ty.cql_name()
    }
}

fn text(s: &str) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(s.as_bytes()))
}

fn uuid(u: &[u8; 16]) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(u))
}

fn inet(ip: std::net::IpAddr) -> Option<Bytes> {
    Some(match ip {
        std::net::IpAddr::V4(v) => Bytes::copy_from_slice(&v.octets()),
        std::net::IpAddr::V6(v) => Bytes::copy_from_slice(&v.octets()),
    })
}

fn int(v: i32) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(&v.to_be_bytes()))
}

fn double(v: f64) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(&v.to_be_bytes()))
}

fn tokens(ts: &[i64]) -> Option<Bytes> {
    let mut strs: Vec<String> = ts.iter().map(i64::to_string).collect();
    strs.sort();
    Some(encode_collection(strs.iter().map(|s| s.as_bytes())))
}

fn text_map(pairs: &[(&str, &str)]) -> Option<Bytes> {
    let mut v: Vec<(&str, &str)> = pairs.to_vec();
    v.sort();
    Some(encode_map(
        v.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
    ))
}

/// Inserts a row given as (column name, value) pairs.
fn put(t: &Table, data: &mut TableData, cells: &[(&str, Option<Bytes>)]) {
    put_at(t, data, cells, 0);
}

/// Inserts a row given as (column name, value) pairs, written at
/// `write_ts` (microseconds since the epoch).
pub(crate) fn put_at(
    t: &Table,
    data: &mut TableData,
    cells: &[(&str, Option<Bytes>)],
    write_ts: i64,
) {
    let mut row = Row::empty(t.columns.len());
    for (name, v) in cells {
        let i = t.by_name[*name];
        row.cells[i] = v.clone();
        row.write_ts[i] = write_ts;
    }
    let pk: Vec<&[u8]> = t
        .partition_key
        .iter()
        .map(|&i| row.cells[i].as_deref().unwrap_or(&[]))
        .collect();
    let pk = PartitionKey::from_components(&pk);
    let mut ck = Vec::new();
    for &i in &t.clustering {
        t.columns[i]
            .ty
            .sort_key(row.cells[i].as_deref().unwrap_or(&[]), false, &mut ck);
    }
    data.partitions.entry(pk).or_default().rows.insert(ck, row);
}

/// Makes the rows of a virtual table as seen from node `local`.
pub(crate) fn materialize(
    t: &Table,
    kind: V,
    schema: &Schema,
    topo: &Topology,
    local: usize,
) -> TableData {
    let mut data = TableData::default();
    match kind {
        V::Local => {
            let n = &topo.nodes[local];
            put(
                t,
                &mut data,
                &[
                    ("key", text("local")),
                    ("bootstrapped", text("COMPLETED")),
                    ("broadcast_address", inet(n.addr.ip())),
                    ("cluster_name", text(&topo.cluster_name)),
                    ("cql_version", text(CQL_VERSION)),
                    ("data_center", text(&n.data_center)),
                    ("host_id", uuid(&n.host_id)),
                    ("listen_address", inet(n.addr.ip())),
                    ("native_protocol_version", text("4")),
                    (
                        "partitioner",
                        text("org.apache.cassandra.dht.Murmur3Partitioner"),
                    ),
                    ("rack", text(&n.rack)),
                    ("release_version", text(RELEASE_VERSION)),
                    ("rpc_address", inet(n.addr.ip())),
                    ("rpc_port", int(i32::from(n.addr.port()))),
                    ("schema_version", uuid(&schema.version)),
                    ("tokens", tokens(&n.tokens)),
                ],
            );
        }
        V::Peers => {
            for (i, n) in topo.nodes.iter().enumerate() {
                if i == local {
                    continue;
                }
                put(
                    t,
                    &mut data,
                    &[
                        ("peer", inet(n.addr.ip())),
                        ("data_center", text(&n.data_center)),
                        ("host_id", uuid(&n.host_id)),
                        ("preferred_ip", inet(n.addr.ip())),
                        ("rack", text(&n.rack)),
                        ("release_version", text(RELEASE_VERSION)),
                        ("rpc_address", inet(n.addr.ip())),
                        ("schema_version", uuid(&schema.version)),
                        ("tokens", tokens(&n.tokens)),
                    ],
                );
            }
        }
        V::SchemaKeyspaces => {
            for ks in schema.keyspaces.values() {
                let repl: Vec<(&str, &str)> = ks
                    .replication
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                put(
                    t,
                    &mut data,
                    &[
                        ("keyspace_name", text(&ks.name)),
                        (
                            "durable_writes",
                            Some(Bytes::from_static(if ks.durable_writes {
                                &[1]
                            } else {
                                &[0]
                            })),
                        ),
                        ("replication", text_map(&repl)),
                    ],
                );
            }
        }
        V::SchemaTables => {
            for ks in schema.keyspaces.values() {
                for tb in ks.tables.values() {
                    let opt = |k: &str| {
                        tb.options
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.as_str())
                    };
                    let flags: &[&str] = if tb.is_counter {
                        &["counter", "compound"]
                    } else {
                        &["compound"]
                    };
                    put(
                        t,
                        &mut data,
                        &[
                            ("keyspace_name", text(&ks.name)),
                            ("table_name", text(&tb.name)),
                            ("bloom_filter_fp_chance", double(0.01)),
                            (
                                "caching",
                                text_map(&[("keys", "ALL"), ("rows_per_partition", "NONE")]),
                            ),
                            ("comment", text(opt("comment").unwrap_or(""))),
                            (
                                "compaction",
                                text_map(&[(
                                    "class",
                                    "org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy",
                                )]),
                            ),
                            ("compression", text_map(&[])),
                            ("crc_check_chance", double(1.0)),
                            (
                                "default_time_to_live",
                                int(opt("default_time_to_live")
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(0)),
                            ),
                            (
                                "flags",
                                Some(encode_collection(flags.iter().map(|s| s.as_bytes()))),
                            ),
                            (
                                "gc_grace_seconds",
                                int(opt("gc_grace_seconds")
                                    .and_then(|v| v.parse().ok())
                                    .unwrap_or(864_000)),
                            ),
                            ("id", uuid(&tb.id)),
                            ("max_index_interval", int(2048)),
                            ("memtable_flush_period_in_ms", int(0)),
                            ("min_index_interval", int(128)),
                            ("speculative_retry", text("99PERCENTILE")),
                        ],
                    );
                }
            }
        }
        V::SchemaColumns => {
            for ks in schema.keyspaces.values() {
                for tb in ks.tables.values() {
                    for c in &tb.columns {
                        let order = match (c.kind, c.descending) {
                            (K::Clustering, true) => "desc",
                            (K::Clustering, false) => "asc",
                            _ => "none",
                        };
                        put(
                            t,
                            &mut data,
                            &[
                                ("keyspace_name", text(&ks.name)),
                                ("table_name", text(&tb.name)),
                                ("column_name", text(&c.name)),
                                ("clustering_order", text(order)),
                                ("column_name_bytes", text(&c.name)),
                                ("kind", text(c.kind.schema_name())),
                                ("position", int(c.position)),
                                ("type", text(&column_type(c))),
                            ],
                        );
                    }
                }
            }
        }
        V::SchemaIndexes => {
            for ks in schema.keyspaces.values() {
                for tb in ks.tables.values() {
                    for x in &tb.indexes {
                        put(
                            t,
                            &mut data,
                            &[
                                ("keyspace_name", text(&ks.name)),
                                ("table_name", text(&tb.name)),
                                ("index_name", text(&x.name)),
                                ("kind", text("COMPOSITES")),
                                ("options", text_map(&[("target", &x.target())])),
                            ],
                        );
                    }
                }
            }
        }
        V::SchemaEmpty => {}
    }
    data
}
