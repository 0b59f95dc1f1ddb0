//! What a statement answers with: the pre-encoded column specs of a rows
//! result or of a prepared statement's markers, the [`Outcome`] of one
//! statement, and the RESULT body of a rows result.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::db::SchemaChange;
use crate::frame::WriteExt;
use crate::types::CqlType;

/// The column specs of a rows result or a prepared statement's markers.
#[derive(Debug)]
pub(crate) struct ColumnSpecs {
    /// The `[flags][count]...[specs]` part after the flags and count, i.e.
    /// the global table spec (if any) and the column specs, pre-encoded.
    pub(crate) encoded: Bytes,
    pub(crate) global: bool,
    pub(crate) count: usize,
}

impl ColumnSpecs {
    pub(super) fn new(cols: &[(&str, &str, &str, &CqlType)]) -> ColumnSpecs {
        let global = cols
            .first()
            .is_none_or(|f| cols.iter().all(|c| c.0 == f.0 && c.1 == f.1));
        let mut out = BytesMut::new();
        if let (true, Some(f)) = (global, cols.first()) {
            out.put_string(f.0);
            out.put_string(f.1);
        }
        for (ks, table, name, ty) in cols {
            if !global {
                out.put_string(ks);
                out.put_string(table);
            }
            out.put_string(name);
            ty.write_option(&mut out);
        }
        ColumnSpecs {
            encoded: out.freeze(),
            global: global && !cols.is_empty(),
            count: cols.len(),
        }
    }
}

/// The outcome of one statement.
#[derive(Debug)]
pub(crate) enum Outcome {
    Void,
    Rows(RowsOut),
    SetKeyspace(String),
    SchemaChange(SchemaChange),
}

/// A rows result.
#[derive(Debug)]
pub(crate) struct RowsOut {
    pub(crate) meta: Arc<ColumnSpecs>,
    pub(crate) count: i32,
    pub(crate) body: Vec<u8>,
    pub(crate) paging_state: Option<Vec<u8>>,
}

impl RowsOut {
    /// Writes the RESULT body (kind Rows).
    pub(crate) fn write(&self, out: &mut BytesMut, skip_metadata: bool) {
        out.put_i32(2);
        let mut flags = 0;
        if self.meta.global {
            flags |= 0x01;
        }
        if self.paging_state.is_some() {
            flags |= 0x02;
        }
        if skip_metadata {
            flags |= 0x04;
        }
        out.put_i32(flags);
        out.put_i32(self.meta.count as i32);
        if let Some(ps) = &self.paging_state {
            out.put_value(Some(ps));
        }
        if !skip_metadata {
            out.put_slice(&self.meta.encoded);
        }
        out.put_i32(self.count);
        out.put_slice(&self.body);
    }
}
