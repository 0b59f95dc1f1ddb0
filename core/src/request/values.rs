//! [`Values`]: a request's bound values, type-erased, never printed.

use std::fmt;
use std::sync::Arc;

use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::Batch;

/// Type-erased bound values: one row for a statement, one row per
/// statement for a batch. Cheap to clone; never printed.
///
/// A row is kept behind an `Arc` (one allocation when it is bound), except
/// a one-column row of a fixed-size scalar, the shape of most point reads
/// and writes by key: `(i32,)`, `(i64,)`, `(Uuid,)`, `(CqlTimeuuid,)`,
/// `(i16,)`, `(i8,)`, `(bool,)`, `(f32,)`, `(f64,)`. Those are kept
/// inline, and binding one allocates nothing (the types are told apart
/// when `bind` is compiled, not when it runs). Either way the row is
/// serialized by the same code, against the statement's column types.
#[derive(Clone)]
pub struct Values(ValuesInner);

#[derive(Clone)]
enum ValuesInner {
    None,
    Scalar(Scalar),
    Row(Arc<dyn SerializeRow + Send + Sync>),
    Batch(Arc<dyn ErasedBatchValues>),
}

/// The one-column rows of fixed-size scalars kept inline (see [`Values`]),
/// each named once: the enum, the check that tells a bound row apart and
/// the row handed to the driver are all made from this list.
macro_rules! scalar_rows {
    ($($variant:ident: $t:ty),* $(,)?) => {
        /// A one-column row of a fixed-size scalar, kept inline (see
        /// [`Values`]).
        #[derive(Clone, Copy)]
        enum Scalar {
            $($variant(($t,)),)*
        }

        impl Scalar {
            /// `values` as a scalar row, when it is one of those kept
            /// inline. (`Any::downcast_ref` on a type known when `bind` is
            /// compiled: each check is a comparison of two constants,
            /// folded away.)
            #[inline(always)]
            fn of<V: std::any::Any>(values: &V) -> Option<Scalar> {
                let v: &dyn std::any::Any = values;
                $(
                    if let Some(row) = v.downcast_ref::<($t,)>() {
                        return Some(Scalar::$variant(*row));
                    }
                )*
                None
            }

            /// The row, to serialize: the tuple it was bound as.
            fn row(&self) -> &(dyn SerializeRow + Send + Sync) {
                match self {
                    $(Scalar::$variant(r) => r,)*
                }
            }
        }
    };
}

scalar_rows!(
    Int: i32,
    BigInt: i64,
    Uuid: uuid::Uuid,
    Timeuuid: scylla::value::CqlTimeuuid,
    SmallInt: i16,
    TinyInt: i8,
    Boolean: bool,
    Float: f32,
    Double: f64,
);

/// Object-safe access to batch values (scylla's `BatchValues` is generic).
pub(crate) trait ErasedBatchValues: Send + Sync {
    fn execute_batch<'a>(
        &'a self,
        session: &'a scylla::client::session::Session,
        batch: &'a Batch,
    ) -> futures::future::BoxFuture<
        'a,
        Result<scylla::response::query_result::QueryResult, scylla::errors::ExecutionError>,
    >;
    fn len(&self) -> usize;
}

struct BatchValuesHolder<V>(V, usize);

impl<V> ErasedBatchValues for BatchValuesHolder<V>
where
    V: scylla::serialize::batch::BatchValues + Send + Sync,
{
    fn execute_batch<'a>(
        &'a self,
        session: &'a scylla::client::session::Session,
        batch: &'a Batch,
    ) -> futures::future::BoxFuture<
        'a,
        Result<scylla::response::query_result::QueryResult, scylla::errors::ExecutionError>,
    > {
        Box::pin(session.batch(batch, &self.0))
    }

    fn len(&self) -> usize {
        self.1
    }
}

impl Values {
    /// No values.
    pub fn none() -> Values {
        Values(ValuesInner::None)
    }

    /// One row of values (a tuple, a `Vec`, a `#[derive(SerializeRow)]` struct, ...).
    /// A one-column row of a fixed-size scalar is kept inline, without an
    /// allocation (see [`Values`]).
    pub fn row(values: impl SerializeRow + Send + Sync + 'static) -> Values {
        if values.is_empty() {
            return Values::none();
        }
        if let Some(s) = Scalar::of(&values) {
            return Values(ValuesInner::Scalar(s));
        }
        Values(ValuesInner::Row(Arc::new(values)))
    }

    /// One row per statement of a batch.
    pub fn batch<V>(values: V, statements: usize) -> Values
    where
        V: scylla::serialize::batch::BatchValues + Send + Sync + 'static,
    {
        Values(ValuesInner::Batch(Arc::new(BatchValuesHolder(
            values, statements,
        ))))
    }

    /// The row, for a statement.
    pub(crate) fn as_row(&self) -> &(dyn SerializeRow + Send + Sync) {
        match &self.0 {
            ValuesInner::Scalar(s) => s.row(),
            ValuesInner::Row(r) => &**r,
            _ => &(),
        }
    }

    pub(crate) fn as_batch(&self) -> Option<&dyn ErasedBatchValues> {
        match &self.0 {
            ValuesInner::Batch(b) => Some(&**b),
            _ => None,
        }
    }

    /// Whether no values are bound.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, ValuesInner::None)
    }
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ValuesInner::None => f.write_str("<none>"),
            ValuesInner::Scalar(_) | ValuesInner::Row(_) => f.write_str("<1 row redacted>"),
            ValuesInner::Batch(b) => write!(f, "<{} rows redacted>", b.len()),
        }
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;
    use crate::CqlRequest;

    /// One-column rows of fixed-size scalars are kept inline; other rows
    /// behind an `Arc`; an empty row is no values. Either way a row is
    /// never printed.
    #[test]
    fn scalar_rows_are_kept_inline_and_others_shared() {
        let inline = |v: Values| matches!(v.0, ValuesInner::Scalar(_));
        assert!(inline(Values::row((1i32,))));
        assert!(inline(Values::row((1i64,))));
        assert!(inline(Values::row((uuid::Uuid::nil(),))));
        assert!(inline(Values::row((scylla::value::CqlTimeuuid::from(
            uuid::Uuid::nil()
        ),))));
        assert!(inline(Values::row((1i16,))));
        assert!(inline(Values::row((1i8,))));
        assert!(inline(Values::row((true,))));
        assert!(inline(Values::row((1.0f32,))));
        assert!(inline(Values::row((1.0f64,))));
        // not one column of a fixed-size scalar
        assert!(!inline(Values::row((1i32, 2i32))));
        assert!(!inline(Values::row(("k",))));
        assert!(!inline(Values::row((String::from("k"),))));
        assert!(!inline(Values::row(vec![1i32])));
        assert!(Values::row(()).is_empty());
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").bind((424242i32,));
        let out = format!("{req:?} {:?}", req.clone());
        assert!(out.contains("<1 row redacted>"), "{out}");
        assert!(!out.contains("424242"), "{out}");
    }
}
