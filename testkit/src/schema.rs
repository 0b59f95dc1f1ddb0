//! The in-memory schema and table storage.
//!
//! The schema is an immutable snapshot swapped atomically on DDL
//! (`ArcSwap<Schema>`); each table's rows live behind the table's own
//! `RwLock`, ordered by token then partition key, and within a partition by
//! an order-preserving encoding of the clustering key.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::cql::ast;
use crate::error::ServerError;
use crate::types::CqlType;

/// The role of a column in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnKind {
    PartitionKey,
    Clustering,
    Regular,
    Static,
}

impl ColumnKind {
    pub(crate) fn schema_name(self) -> &'static str {
        match self {
            ColumnKind::PartitionKey => "partition_key",
            ColumnKind::Clustering => "clustering",
            ColumnKind::Regular => "regular",
            ColumnKind::Static => "static",
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub(crate) name: String,
    pub(crate) ty: CqlType,
    pub(crate) kind: ColumnKind,
    /// Position within the partition or clustering key; -1 otherwise.
    pub(crate) position: i32,
    /// Clustering order is descending.
    pub(crate) descending: bool,
    /// Declared `frozen<...>`: a frozen collection is one value, and an
    /// empty one is stored as written, where a non-frozen collection that
    /// is written empty (or emptied) is null, as in Cassandra.
    pub(crate) frozen: bool,
}

impl Table {
    /// Checks that `token(cols)` names the partition key columns in order,
    /// as Cassandra requires; `what` is the error's wording after "The
    /// token function arguments must be".
    pub(crate) fn check_token_args(&self, cols: &[String], what: &str) -> Result<(), ServerError> {
        let expected: Vec<&str> = self
            .partition_key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect();
        if cols.iter().map(String::as_str).ne(expected.iter().copied()) {
            return Err(ServerError::invalid(format!(
                "The token function arguments must be {what}: token({})",
                expected.join(", ")
            )));
        }
        Ok(())
    }
}

impl Column {
    /// A regular or static column as a `CREATE TABLE` or `ALTER TABLE ADD`
    /// defines it (the key columns' kinds and positions are set after).
    pub(crate) fn from_def(def: &ast::ColumnDef, ty: CqlType) -> Column {
        Column {
            name: def.name.clone(),
            ty,
            kind: if def.is_static {
                ColumnKind::Static
            } else {
                ColumnKind::Regular
            },
            position: -1,
            descending: false,
            frozen: def.type_text.starts_with("frozen<"),
        }
    }
}

impl Column {
    /// Whether the column is a non-frozen (multi-cell) collection, whose
    /// empty value reads back as null.
    pub(crate) fn is_multi_cell(&self) -> bool {
        self.ty.is_collection() && !self.frozen
    }
}

/// The key of a partition: its token first, so a full scan runs in token
/// order like a real cluster's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PartitionKey {
    pub(crate) token: i64,
    pub(crate) key: Bytes,
}

impl PartitionKey {
    /// Builds the key from the serialized partition key components.
    pub(crate) fn from_components(parts: &[&[u8]]) -> PartitionKey {
        let key = if parts.len() == 1 {
            Bytes::copy_from_slice(parts[0])
        } else {
            let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 3).sum());
            for p in parts {
                k.extend_from_slice(&(p.len() as u16).to_be_bytes());
                k.extend_from_slice(p);
                k.push(0);
            }
            Bytes::from(k)
        };
        PartitionKey {
            token: crate::murmur3::token(&key),
            key,
        }
    }

    /// Splits a composite key back into components.
    pub(crate) fn components(&self, count: usize) -> Vec<Bytes> {
        if count == 1 {
            return vec![self.key.clone()];
        }
        let mut out = Vec::with_capacity(count);
        let mut i = 0;
        let k = &self.key;
        while i + 2 <= k.len() && out.len() < count {
            let n = u16::from_be_bytes([k[i], k[i + 1]]) as usize;
            out.push(k.slice(i + 2..i + 2 + n));
            i += n + 3;
        }
        out
    }
}

/// One stored row: a cell per table column (keys included) and the write
/// timestamp of its last write, in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) cells: Box<[Option<Bytes>]>,
    pub(crate) write_ts: Box<[i64]>,
}

impl Row {
    pub(crate) fn empty(columns: usize) -> Row {
        Row {
            cells: vec![None; columns].into_boxed_slice(),
            write_ts: vec![i64::MIN; columns].into_boxed_slice(),
        }
    }
}

/// One partition: its static cells and its rows by clustering sort key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Partition {
    pub(crate) statics: Option<Row>,
    pub(crate) rows: BTreeMap<Vec<u8>, Row>,
}

impl Partition {
    pub(crate) fn is_empty(&self) -> bool {
        self.rows.is_empty()
            && self
                .statics
                .as_ref()
                .is_none_or(|s| s.cells.iter().all(Option::is_none))
    }
}

/// All rows of a table.
#[derive(Debug, Default)]
pub(crate) struct TableData {
    pub(crate) partitions: BTreeMap<PartitionKey, Partition>,
}

/// A system table whose rows are made from the cluster's state per query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VirtualTable {
    Local,
    Peers,
    SchemaKeyspaces,
    SchemaTables,
    SchemaColumns,
    SchemaIndexes,
    SchemaEmpty,
}

/// A table: definition and data.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) keyspace: String,
    pub(crate) name: String,
    pub(crate) id: [u8; 16],
    pub(crate) columns: Vec<Column>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) partition_key: Vec<usize>,
    pub(crate) clustering: Vec<usize>,
    pub(crate) is_counter: bool,
    pub(crate) options: Vec<(String, String)>,
    /// Secondary indexes (`CREATE INDEX`), in creation order.
    pub(crate) indexes: Vec<Index>,
    pub(crate) virtual_table: Option<VirtualTable>,
    pub(crate) data: RwLock<TableData>,
}

/// A secondary index. testkit answers an indexed query by scanning the
/// table, which is fine on the small data of tests; the index only lifts
/// the need for ALLOW FILTERING, as in Cassandra.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    /// The index name, unique in its keyspace.
    pub(crate) name: String,
    /// The indexed column.
    pub(crate) column: String,
    /// `keys`, `values`, `entries` or `full` for a collection target.
    pub(crate) target_kind: Option<String>,
}

impl Index {
    /// The target as `system_schema.indexes` shows it: `v`, `keys(m)`.
    pub(crate) fn target(&self) -> String {
        match &self.target_kind {
            Some(k) => format!("{k}({})", self.column),
            None => self.column.clone(),
        }
    }
}

impl Table {
    /// Builds a table from its `CREATE TABLE` statement.
    pub(crate) fn from_ddl(keyspace: &str, ct: &ast::CreateTable) -> Result<Table, ServerError> {
        let invalid = ServerError::invalid;
        if ct.partition_key.is_empty() {
            return Err(invalid(format!(
                "No PRIMARY KEY specified for table {keyspace}.{} (exactly one required)",
                ct.name.name
            )));
        }
        let mut columns = Vec::with_capacity(ct.columns.len());
        let mut by_name = HashMap::new();
        for def in &ct.columns {
            if by_name.contains_key(&def.name) {
                return Err(invalid(format!(
                    "Multiple definition of identifier {}",
                    def.name
                )));
            }
            let ty = CqlType::parse(&def.type_text).map_err(invalid)?;
            if matches!(ty, CqlType::Duration) {
                return Err(invalid(
                    "duration columns are not supported by testkit".to_string(),
                ));
            }
            by_name.insert(def.name.clone(), columns.len());
            columns.push(Column::from_def(def, ty));
        }
        let mut key_index =
            |name: &str, kind: ColumnKind, pos: usize| -> Result<usize, ServerError> {
                let &i = by_name.get(name).ok_or_else(|| {
                    invalid(format!(
                        "Unknown definition {name} referenced in PRIMARY KEY"
                    ))
                })?;
                let col = &mut columns[i];
                if col.kind != ColumnKind::Regular {
                    return Err(invalid(format!(
                        "{} column {name} cannot be part of the PRIMARY KEY",
                        if col.kind == ColumnKind::Static {
                            "Static"
                        } else {
                            "Duplicate"
                        }
                    )));
                }
                if col.ty.is_collection() && !def_is_frozen(ct, name) {
                    return Err(invalid(format!(
                        "Invalid non-frozen collection type for PRIMARY KEY component {name}"
                    )));
                }
                if col.ty == CqlType::Counter {
                    return Err(invalid(format!(
                        "counter type is not supported for PRIMARY KEY column '{name}'"
                    )));
                }
                col.kind = kind;
                col.position = pos as i32;
                Ok(i)
            };
        let partition_key = ct
            .partition_key
            .iter()
            .enumerate()
            .map(|(p, n)| key_index(n, ColumnKind::PartitionKey, p))
            .collect::<Result<Vec<_>, _>>()?;
        let clustering = ct
            .clustering_key
            .iter()
            .enumerate()
            .map(|(p, n)| key_index(n, ColumnKind::Clustering, p))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, (name, desc)) in ct.clustering_order.iter().enumerate() {
            let Some(&ci) = clustering.get(i) else {
                return Err(invalid(format!(
                    "Only clustering key columns can be defined in CLUSTERING ORDER directive: {name}"
                )));
            };
            if columns[ci].name != *name {
                return Err(invalid(format!(
                    "The order of columns in the CLUSTERING ORDER directive must match that of the clustering columns ({name} is not {})",
                    columns[ci].name
                )));
            }
            columns[ci].descending = *desc;
        }
        let has_statics = columns.iter().any(|c| c.kind == ColumnKind::Static);
        if has_statics && clustering.is_empty() {
            return Err(invalid(
                "Static columns are only useful (and thus allowed) if the table has at least one clustering column".to_string(),
            ));
        }
        let counters = columns.iter().filter(|c| c.ty == CqlType::Counter).count();
        let regular = columns
            .iter()
            .filter(|c| matches!(c.kind, ColumnKind::Regular | ColumnKind::Static))
            .count();
        if counters > 0 && counters != regular {
            return Err(invalid(
                "Cannot mix counter and non counter columns in the same table".to_string(),
            ));
        }
        Ok(Table {
            keyspace: keyspace.to_string(),
            name: ct.name.name.clone(),
            id: crate::types::new_timeuuid(),
            columns,
            by_name,
            partition_key,
            clustering,
            is_counter: counters > 0,
            options: ct.options.clone(),
            indexes: Vec::new(),
            virtual_table: None,
            data: RwLock::new(TableData::default()),
        })
    }

    /// A virtual system table with the given columns: `(name, type, kind)`,
    /// key columns in key order.
    pub(crate) fn system(
        keyspace: &str,
        name: &str,
        kind: VirtualTable,
        cols: &[(&str, &str, ColumnKind)],
    ) -> Table {
        let ct = ast::CreateTable {
            name: ast::QualifiedName {
                keyspace: Some(keyspace.into()),
                name: name.into(),
            },
            if_not_exists: false,
            columns: cols
                .iter()
                .map(|(n, t, _)| ast::ColumnDef {
                    name: (*n).into(),
                    type_text: (*t).into(),
                    is_static: false,
                })
                .collect(),
            partition_key: cols
                .iter()
                .filter(|c| c.2 == ColumnKind::PartitionKey)
                .map(|c| c.0.to_string())
                .collect(),
            clustering_key: cols
                .iter()
                .filter(|c| c.2 == ColumnKind::Clustering)
                .map(|c| c.0.to_string())
                .collect(),
            clustering_order: vec![],
            options: vec![],
        };
        let mut t = Table::from_ddl(keyspace, &ct).expect("system table definitions are valid");
        t.virtual_table = Some(kind);
        t.id = name_uuid(&format!("{keyspace}.{name}"));
        t
    }

    /// The column named `name`, or an Invalid error naming the table.
    pub(crate) fn column(&self, name: &str) -> Result<usize, ServerError> {
        self.by_name.get(name).copied().ok_or_else(|| {
            ServerError::invalid(format!(
                "Undefined column name {name} in table {}.{}",
                self.keyspace, self.name
            ))
        })
    }

    /// The same table with other columns (`ALTER TABLE`): column `i` of
    /// the new table takes its cells from column `sources[i]` of this one
    /// (`None`: an added column, null everywhere). The rows are copied, so
    /// a write that races the change on the old table is lost.
    pub(crate) fn altered(
        &self,
        columns: Vec<Column>,
        sources: &[Option<usize>],
        options: Vec<(String, String)>,
        indexes: Vec<Index>,
    ) -> Table {
        let by_name = columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), i))
            .collect();
        let keyed = |kind: ColumnKind| {
            let mut v: Vec<usize> = (0..columns.len())
                .filter(|&i| columns[i].kind == kind)
                .collect();
            v.sort_by_key(|&i| columns[i].position);
            v
        };
        let remap = |row: &Row| Row {
            cells: sources
                .iter()
                .map(|s| s.and_then(|i| row.cells[i].clone()))
                .collect(),
            write_ts: sources
                .iter()
                .map(|s| s.map_or(i64::MIN, |i| row.write_ts[i]))
                .collect(),
        };
        let old = self.data.read().expect("table lock");
        let partitions = old
            .partitions
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    Partition {
                        statics: p.statics.as_ref().map(remap),
                        rows: p
                            .rows
                            .iter()
                            .map(|(ck, r)| (ck.clone(), remap(r)))
                            .collect(),
                    },
                )
            })
            .collect();
        Table {
            keyspace: self.keyspace.clone(),
            name: self.name.clone(),
            id: self.id,
            partition_key: keyed(ColumnKind::PartitionKey),
            clustering: keyed(ColumnKind::Clustering),
            is_counter: self.is_counter,
            by_name,
            columns,
            options,
            indexes,
            virtual_table: self.virtual_table,
            data: RwLock::new(TableData { partitions }),
        }
    }

    /// Whether a secondary index covers column `i`.
    pub(crate) fn is_indexed(&self, i: usize) -> bool {
        self.indexes
            .iter()
            .any(|x| x.column == self.columns[i].name)
    }

    /// `keyspace.table`
    pub(crate) fn full_name(&self) -> String {
        format!("{}.{}", self.keyspace, self.name)
    }
}

fn def_is_frozen(ct: &ast::CreateTable, name: &str) -> bool {
    ct.columns
        .iter()
        .any(|c| c.name == name && c.type_text.starts_with("frozen<"))
}

/// A deterministic UUID (version 3 style) from a name.
pub(crate) fn name_uuid(name: &str) -> [u8; 16] {
    use std::hash::{Hash, Hasher};
    let mut a = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (name, 0x5eedu32).hash(&mut b);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.finish().to_be_bytes());
    out[8..].copy_from_slice(&b.finish().to_be_bytes());
    out[6] = (out[6] & 0x0F) | 0x30;
    out[8] = (out[8] & 0x3F) | 0x80;
    out
}

/// A keyspace.
#[derive(Debug, Clone)]
pub(crate) struct Keyspace {
    pub(crate) name: String,
    pub(crate) replication: Vec<(String, String)>,
    pub(crate) durable_writes: bool,
    /// Replication factor (total over data centers).
    pub(crate) replication_factor: usize,
    pub(crate) tables: BTreeMap<String, Arc<Table>>,
    pub(crate) is_system: bool,
}

impl Keyspace {
    /// Builds a keyspace from its `CREATE KEYSPACE` statement.
    pub(crate) fn from_ddl(ck: &ast::CreateKeyspace) -> Result<Keyspace, ServerError> {
        let get = |k: &str| {
            ck.replication
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let class = get("class").ok_or_else(|| {
            ServerError::config("Missing replication strategy class: add 'class': 'SimpleStrategy' or 'NetworkTopologyStrategy'")
        })?;
        let short = class.rsplit('.').next().unwrap_or(class);
        let rf = match short {
            "SimpleStrategy" => get("replication_factor")
                .ok_or_else(|| {
                    ServerError::config(
                        "SimpleStrategy requires a replication_factor strategy option.",
                    )
                })?
                .parse::<usize>()
                .map_err(|_| {
                    ServerError::config("replication_factor must be a non-negative integer")
                })?,
            "NetworkTopologyStrategy" => ck
                .replication
                .iter()
                .filter(|(k, _)| k != "class")
                .map(|(k, v)| {
                    v.parse::<usize>().map_err(|_| {
                        ServerError::config(format!(
                            "Replication factor for data center {k} must be an integer"
                        ))
                    })
                })
                .sum::<Result<usize, _>>()?,
            "LocalStrategy" | "EverywhereStrategy" => 1,
            other => {
                return Err(ServerError::config(format!(
                    "Unable to find replication strategy class '{other}': use SimpleStrategy or NetworkTopologyStrategy"
                )));
            }
        };
        let mut replication: Vec<(String, String)> = ck
            .replication
            .iter()
            .map(|(k, v)| {
                if k == "class" {
                    (k.clone(), format!("org.apache.cassandra.locator.{short}"))
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        replication.sort();
        Ok(Keyspace {
            name: ck.name.clone(),
            replication,
            durable_writes: ck.durable_writes,
            replication_factor: rf,
            tables: BTreeMap::new(),
            is_system: false,
        })
    }
}

/// An immutable schema snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Schema {
    pub(crate) keyspaces: BTreeMap<String, Arc<Keyspace>>,
    /// The `schema_version` every node reports.
    pub(crate) version: [u8; 16],
    /// Bumped on every change; prepared plans compare it.
    pub(crate) generation: u64,
}

impl Schema {
    /// The initial schema: the system keyspaces only.
    pub(crate) fn initial() -> Schema {
        let mut keyspaces = BTreeMap::new();
        for ks in crate::system::system_keyspaces() {
            keyspaces.insert(ks.name.clone(), Arc::new(ks));
        }
        Schema {
            keyspaces,
            version: crate::types::new_timeuuid(),
            generation: 0,
        }
    }

    /// Looks a table up; the error says whether the keyspace or the table
    /// is missing.
    pub(crate) fn table(&self, keyspace: &str, name: &str) -> Result<&Arc<Table>, ServerError> {
        match self.keyspaces.get(keyspace) {
            Some(ks) => ks
                .tables
                .get(name)
                .ok_or_else(|| ServerError::invalid(format!("unconfigured table {name}"))),
            None => Err(ServerError::invalid(format!(
                "Keyspace {keyspace} does not exist"
            ))),
        }
    }
}
