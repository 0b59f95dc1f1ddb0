//! The response of a successful request.
//!
//! ```no_run
//! # async fn demo(resp: tower_cql_core::CqlResponse) -> Result<(), Box<dyn std::error::Error>> {
//! let info = resp.info();
//! println!("coordinator {:?}, attempts {}", info.coordinator, info.attempts);
//! for (name,) in resp.rows::<(String,)>()? {
//!     println!("{name}");
//! }
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use scylla::deserialize::row::DeserializeRow;
use scylla::response::PagingStateResponse;
use scylla::response::query_result::{IntoRowsResultError, QueryResult, QueryRowsResult};

use crate::error::{CqlError, ErrorKind};
use crate::recycle::FreeList;

/// How a request was executed.
///
/// Its `Debug` output shows the server's [`warnings`](Self::warnings)
/// redacted ([`redact::warning`](crate::redact::warning)).
#[derive(Clone, Default)]
pub struct ExecutionInfo {
    /// The node that coordinated the successful attempt (its address, as
    /// the driver knows the node; a connection to it can use another
    /// port, e.g. ScyllaDB's shard-aware one).
    pub coordinator: Option<SocketAddr>,
    /// Rows in the result (0 for non-row results).
    pub rows: usize,
    /// Attempts made, the successful one and speculative ones included
    /// (set by the retry and hedge layers; 1 without them): as many as the
    /// request's attempt events.
    pub attempts: u32,
    /// Speculative (hedged) attempts started.
    pub speculative: u32,
    /// Warnings the server attached, as it sent them: not redacted, and
    /// a warning can quote a value (a tombstone warning quotes the query,
    /// a batch warning the key). `Debug` shows them through
    /// [`redact::warning`](crate::redact::warning); log them through it
    /// too, never as they are.
    pub warnings: Vec<String>,
    /// The server-side tracing session id, when tracing was requested.
    pub tracing_id: Option<[u8; 16]>,
    /// Time spent in the driver for the successful attempt.
    pub attempt_latency: Duration,
}

impl std::fmt::Debug for ExecutionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// The warnings, each redacted.
        struct Warnings<'a>(&'a [String]);
        impl std::fmt::Debug for Warnings<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list()
                    .entries(self.0.iter().map(|w| crate::redact::warning(w)))
                    .finish()
            }
        }
        // every field named: a new one cannot be left out
        let ExecutionInfo {
            coordinator,
            rows,
            attempts,
            speculative,
            warnings,
            tracing_id,
            attempt_latency,
        } = self;
        f.debug_struct("ExecutionInfo")
            .field("coordinator", coordinator)
            .field("rows", rows)
            .field("attempts", attempts)
            .field("speculative", speculative)
            .field("warnings", &Warnings(warnings))
            .field("tracing_id", tracing_id)
            .field("attempt_latency", attempt_latency)
            .finish()
    }
}

/// A successful response: the driver's result and how it was obtained.
///
/// Its `Debug` output shows the shape of the result (row count, columns)
/// and how it was executed, never the rows' values, and the server's
/// warnings redacted (see [`ExecutionInfo::warnings`]).
///
/// One pointer wide: every layer of the stack passes the response up by
/// value, and the parts are about 400 bytes (in a block of memory instead
/// of copied at each layer). A dropped response's block, emptied, is kept
/// for the thread's next response: at many requests in flight, a fresh
/// block for each went through the allocator's bins, past its per-thread
/// cache.
pub struct CqlResponse(Option<Box<Parts>>);

thread_local! {
    /// Emptied blocks of dropped responses, for this thread's next ones.
    static FREE: FreeList<Box<Parts>> = const { FreeList::new() };
}

impl Drop for CqlResponse {
    /// Drops what the response holds (the driver's result and its
    /// frame's memory) and keeps the emptied block.
    fn drop(&mut self) {
        if let Some(mut parts) = self.0.take() {
            parts.result = None;
            parts.paging = None;
            parts.info.warnings = Vec::new();
            FreeList::keep_in(&FREE, parts);
        }
    }
}

struct Parts {
    result: Option<DriverResult>,
    paging: Option<PagingStateResponse>,
    info: ExecutionInfo,
    /// When the driver started the attempt that made this response (its
    /// latency, in `info`, runs from here: the end is the sum of the two).
    started: Option<tokio::time::Instant>,
}

/// The driver's result: rows as scylla's [`QueryRowsResult`], made once
/// when the response is (it counts the rows for the events, and
/// [`CqlResponse::rows`] reads them, neither copying the result), or a
/// result without rows (writes, schema changes, `USE`).
///
/// Its `Debug` output never shows the rows' values.
#[non_exhaustive]
pub enum DriverResult {
    /// A result with rows (a `SELECT`, or an LWT's `[applied]` row).
    Rows(QueryRowsResult),
    /// A result without rows.
    NotRows(QueryResult),
}

impl std::fmt::Debug for DriverResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriverResult::Rows(r) => write!(f, "Rows(<{} rows redacted>)", r.rows_num()),
            DriverResult::NotRows(_) => f.write_str("NotRows"),
        }
    }
}

impl std::fmt::Debug for CqlResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Redacted(usize, bool);
        impl std::fmt::Debug for Redacted {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self {
                    Redacted(_, false) => f.write_str("<no rows>"),
                    Redacted(n, true) => write!(f, "<{n} rows redacted>"),
                }
            }
        }
        let has_rows = matches!(self.parts().result, Some(DriverResult::Rows(_)));
        f.debug_struct("CqlResponse")
            .field("result", &Redacted(self.parts().info.rows, has_rows))
            .field(
                "more_pages",
                &matches!(
                    self.parts().paging,
                    Some(PagingStateResponse::HasMorePages { .. })
                ),
            )
            .field("info", &self.parts().info)
            .finish()
    }
}

impl CqlResponse {
    /// A response for `result`; an error if scylla cannot read the rows'
    /// metadata (it reads it as the result arrives, so in practice never).
    #[inline(always)]
    pub(crate) fn new(
        result: QueryResult,
        paging: Option<PagingStateResponse>,
    ) -> Result<CqlResponse, CqlError> {
        // the node's address, as the steering policy names the node of a
        // failed attempt (a connection's address can differ from its
        // node's: a shard-aware port, address translation)
        let coordinator = Some(crate::routing::addr(result.request_coordinator().node()));
        // (most results carry none: asked first, an empty collect cost ~38
        // instructions)
        let warnings = if result.warnings().next().is_none() {
            Vec::new()
        } else {
            result.warnings().map(str::to_string).collect()
        };
        let tracing_id = result.tracing_id().map(|u| *u.as_bytes());
        let (result, rows) = match result.into_rows_result() {
            Ok(r) => {
                let n = r.rows_num();
                (DriverResult::Rows(r), n)
            }
            Err(IntoRowsResultError::ResultNotRows(r)) => (DriverResult::NotRows(r), 0),
            Err(e) => {
                return Err(CqlError::new(
                    ErrorKind::Deserialization,
                    format!(
                        "the result's metadata could not be read: {}",
                        crate::redact::error_message(&e.to_string())
                    ),
                ));
            }
        };
        let info = ExecutionInfo {
            coordinator,
            rows,
            attempts: 1,
            speculative: 0,
            warnings,
            tracing_id,
            // set by the driver service, which times the attempt
            attempt_latency: Duration::ZERO,
        };
        Ok(CqlResponse::from_parts(Parts {
            result: Some(result),
            paging,
            info,
            started: None,
        }))
    }

    /// A response without a driver result: for layers that answer without
    /// the driver (a cache, a fallback) and for tests of middleware with a
    /// mock inner service. It has no rows.
    pub fn synthetic(info: ExecutionInfo) -> CqlResponse {
        CqlResponse::from_parts(Parts {
            result: None,
            paging: None,
            info,
            started: None,
        })
    }

    /// The response of `parts`, in a block this thread kept or a new one.
    #[inline(always)]
    fn from_parts(parts: Parts) -> CqlResponse {
        let block = match FreeList::take_from(&FREE) {
            Some(mut block) => {
                *block = parts;
                block
            }
            None => Box::new(parts),
        };
        CqlResponse(Some(block))
    }

    #[inline(always)]
    fn parts(&self) -> &Parts {
        self.0
            .as_deref()
            .expect("a response has its parts until dropped")
    }

    #[inline(always)]
    fn parts_mut(&mut self) -> &mut Parts {
        self.0
            .as_deref_mut()
            .expect("a response has its parts until dropped")
    }

    /// How the request was executed.
    #[inline]
    pub fn info(&self) -> &ExecutionInfo {
        &self.parts().info
    }

    /// How the request was executed, to update (retry and hedge layers).
    #[inline]
    pub fn info_mut(&mut self) -> &mut ExecutionInfo {
        &mut self.parts_mut().info
    }

    /// When the driver started the attempt that made this response (the
    /// clock reading its [`attempt_latency`](ExecutionInfo::attempt_latency)
    /// runs from); `None` for a [`CqlResponse::synthetic`] one. A request
    /// whose first attempt answered it started at the same reading (see
    /// [`clock`](crate::clock)): the metrics layer then takes the
    /// request's latency from the attempt's, with no clock arithmetic.
    #[inline]
    pub fn attempt_started(&self) -> Option<tokio::time::Instant> {
        self.parts().started
    }

    /// When the driver finished the attempt that made this response (the
    /// clock reading its [`attempt_latency`](ExecutionInfo::attempt_latency)
    /// ends at); `None` for a [`CqlResponse::synthetic`] one. The metrics
    /// layer ends the request's latency there instead of reading the
    /// clock again in the same poll.
    #[inline]
    pub fn attempt_ended(&self) -> Option<tokio::time::Instant> {
        self.parts()
            .started
            .and_then(|s| s.checked_add(self.parts().info.attempt_latency))
    }

    /// Sets the attempt's start and latency (the driver service, which
    /// times the attempt).
    #[inline]
    pub(crate) fn set_attempt(&mut self, started: tokio::time::Instant, latency: Duration) {
        self.parts_mut().started = Some(started);
        self.parts_mut().info.attempt_latency = latency;
    }

    /// The driver's result (`None` for a [`CqlResponse::synthetic`] one).
    #[inline]
    pub fn result(&self) -> Option<&DriverResult> {
        self.parts().result.as_ref()
    }

    /// The driver's result, owned (`None` for a synthetic response).
    pub fn into_result(mut self) -> Option<DriverResult> {
        self.parts_mut().result.take()
    }

    /// The paging state after a single-page request.
    #[inline]
    pub fn paging_state(&self) -> Option<&PagingStateResponse> {
        self.parts().paging.as_ref()
    }

    /// Whether the result has rows (a SELECT or an LWT).
    #[inline]
    pub fn has_rows(&self) -> bool {
        matches!(self.parts().result, Some(DriverResult::Rows(_)))
    }

    /// The rows, deserialized as `R`; a type mismatch is a
    /// [`ErrorKind::Deserialization`] error naming what to change.
    pub fn rows<R>(&self) -> Result<Vec<R>, CqlError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let rows = match &self.parts().result {
            None => return Ok(Vec::new()),
            Some(DriverResult::Rows(rows)) => rows,
            Some(DriverResult::NotRows(_)) => {
                return Err(CqlError::new(
                    ErrorKind::Deserialization,
                    "the result has no rows (it is a write, a schema change or a USE): read rows from a SELECT",
                ));
            }
        };
        let iter = rows.rows::<R>().map_err(|e| {
            CqlError::new(
                ErrorKind::Deserialization,
                format!(
                    "the rows do not match the requested type: {}",
                    crate::redact::error_message(&e.to_string())
                ),
            )
        })?;
        iter.map(|r| {
            r.map_err(|e| {
                CqlError::new(
                    ErrorKind::Deserialization,
                    format!(
                        "a row could not be read: {}",
                        crate::redact::error_message(&e.to_string())
                    ),
                )
            })
        })
        .collect()
    }

    /// The single row, as `R`: an error when there is not exactly one.
    pub fn single_row<R>(&self) -> Result<R, CqlError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        let mut rows = self.rows::<R>()?;
        if rows.len() != 1 {
            return Err(CqlError::new(
                ErrorKind::Deserialization,
                format!("expected exactly one row, got {}", rows.len()),
            ));
        }
        Ok(rows.remove(0))
    }
}

#[cfg(all(test, not(tower_cql_loom)))]
mod tests {
    use super::*;

    /// A server's warning can quote a value (a tombstone warning quotes
    /// the query, a batch warning the key): `Debug`, what logs print,
    /// shows it redacted, the response's and its execution info's; the
    /// field keeps it as the server sent it.
    #[test]
    fn debug_redacts_the_servers_warnings() {
        let warning = "Read 1 live rows and 1001 tombstone cells for query \
                       SELECT v FROM ks.kv WHERE k = 'hunter2' LIMIT 5000 \
                       (see tombstone_warn_threshold)";
        let r = CqlResponse::synthetic(ExecutionInfo {
            warnings: vec![warning.to_string()],
            ..ExecutionInfo::default()
        });
        for debug in [
            format!("{r:?}"),
            format!("{r:#?}"),
            format!("{:?}", r.info()),
        ] {
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(
                debug.contains(
                    "Read 1 live rows and 1001 tombstone cells for query \
                     SELECT v FROM ks.kv WHERE k = ? LIMIT ? (?)"
                ),
                "{debug}"
            );
        }
        assert_eq!(r.info().warnings, vec![warning.to_string()]);
    }

    /// A dropped response's block is emptied (its result, paging state
    /// and warnings dropped: a kept block keeps no frame's memory alive)
    /// and serves the thread's next response, which shows only its own
    /// parts.
    #[test]
    fn a_dropped_responses_block_is_emptied_and_serves_the_next_one() {
        // (a thread of its own: its list starts empty)
        std::thread::spawn(|| {
            let mut first = CqlResponse::synthetic(ExecutionInfo {
                coordinator: Some("127.0.0.1:9042".parse().unwrap()),
                rows: 3,
                warnings: vec!["a warning".to_string()],
                ..ExecutionInfo::default()
            });
            first.set_attempt(tokio::time::Instant::now(), Duration::from_millis(1));
            let block = first.parts() as *const Parts as usize;
            drop(first);
            let kept = FREE.with(|list| list.take()).expect("the block is kept");
            assert!(kept.result.is_none() && kept.paging.is_none());
            assert_eq!(kept.info.warnings.capacity(), 0);
            FREE.with(|list| list.keep(kept));

            let next = CqlResponse::synthetic(ExecutionInfo::default());
            assert_eq!(next.parts() as *const Parts as usize, block);
            let info = next.info();
            assert_eq!((info.coordinator, info.rows), (None, 0));
            assert!(info.warnings.is_empty());
            assert_eq!(next.attempt_started(), None);
            assert_eq!(next.into_result().map(|_| ()), None);
            // into_result dropped the response: its block is kept again
            assert!(FREE.with(|list| list.take()).is_some());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn an_attempts_end_is_its_start_plus_its_latency() {
        let mut r = CqlResponse::synthetic(ExecutionInfo::default());
        assert_eq!((r.attempt_started(), r.attempt_ended()), (None, None));
        let started = tokio::time::Instant::now();
        r.set_attempt(started, Duration::from_micros(250));
        assert_eq!(r.attempt_started(), Some(started));
        assert_eq!(r.info().attempt_latency, Duration::from_micros(250));
        assert_eq!(
            r.attempt_ended(),
            Some(started + Duration::from_micros(250))
        );
    }
}
