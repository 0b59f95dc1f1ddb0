//! Nodes and connections: the accept loop, the per-connection frame loop
//! and the request handlers.
//!
//! One task serves one connection. It reads as many frames as the socket
//! has, answers each into one output buffer, and writes that buffer with a
//! single syscall, so a driver that pipelines many requests gets them
//! answered in batches. Requests delayed by a fault are answered from a
//! spawned task through a channel, so they never hold up the others.
//! Every request is answered: one whose execution panics (a bug) gets a
//! `ServerError` on its stream, inline or deferred ([`handle_guarded`]).
//!
//! One file on purpose (just under 1,000 lines): it is one path, accept →
//! serve → `handle` → one handler per opcode, and the handlers share the
//! private connection state and answer helpers. If it grows, the QUERY,
//! PREPARE, EXECUTE and BATCH handlers are the seam to move out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use crate::compression::Compression;
use crate::cql::Parsed;
use crate::db::{Database, Event};
use crate::error::ServerError;
use crate::exec::{self, BatchItem, Ctx, Options, Outcome, Prepared, Values};
use crate::fault::{Decision, FaultAction, StatementKind, Target};
use crate::frame::{
    self, BatchEntry, BatchRequest, FLAG_CUSTOM_PAYLOAD, FLAG_TRACING, FLAG_WARNING, FrameWriter,
    Header, Opcode, QueryParams, Reader, Split, WriteExt,
};
use crate::trace::{self, Step, Trace};

/// One node: its index in the cluster and its prepared-statement cache.
#[derive(Debug)]
pub(crate) struct Node {
    /// Its 0-based index, the one every public API names it by
    /// (`Cluster::node_addr`, `stop_node`, `Fault::node`, ...).
    pub(crate) index: usize,
    pub(crate) db: Arc<Database>,
    pub(crate) prepared: RwLock<HashMap<[u8; 16], Arc<Prepared>>>,
    /// Client connections open now.
    pub(crate) connections: std::sync::atomic::AtomicUsize,
    /// The largest request body accepted.
    pub(crate) max_body: usize,
    /// TLS for every connection, when configured.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

/// Counts a connection for as long as it is served.
struct Open<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Open<'a> {
    fn new(n: &'a std::sync::atomic::AtomicUsize) -> Open<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Open(n)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.db.topology.nodes[self.index].addr
    }
}

/// A connection's protocol state.
#[derive(Debug, Clone)]
struct ConnState {
    keyspace: Option<String>,
    compression: Compression,
    /// Event types this connection registered for.
    events: Vec<&'static str>,
    /// The client's address, as trace sessions record it.
    client: std::net::IpAddr,
    /// The trace session of the request being handled, when it asked for
    /// tracing: every response frame to it carries the session id.
    trace: Option<Box<Trace>>,
}

impl ConnState {
    fn new(client: std::net::IpAddr) -> ConnState {
        ConnState {
            keyspace: None,
            compression: Compression::None,
            events: Vec::new(),
            client,
            trace: None,
        }
    }

    /// Starts a response frame to the request being handled: with the
    /// tracing flag and the session id when it is traced.
    fn begin(&self, out: &mut BytesMut, stream: i16, opcode: Opcode) -> FrameWriter {
        self.begin_warned(out, stream, opcode, None)
    }

    /// [`begin`](Self::begin), with `warning` attached when there is one
    /// (after the session id: the order the protocol gives).
    fn begin_warned(
        &self,
        out: &mut BytesMut,
        stream: i16,
        opcode: Opcode,
        warning: Option<&str>,
    ) -> FrameWriter {
        let mut flags = 0;
        if self.trace.is_some() {
            flags |= FLAG_TRACING;
        }
        if warning.is_some() {
            flags |= FLAG_WARNING;
        }
        let w = FrameWriter::begin(out, stream, opcode, flags);
        if let Some(t) = &self.trace {
            out.put_slice(&t.id);
        }
        if let Some(warning) = warning {
            out.put_string_list(&[warning]);
        }
        w
    }

    /// Answers the request being handled with `err`.
    fn error(&self, out: &mut BytesMut, stream: i16, err: &ServerError) {
        let w = self.begin(out, stream, Opcode::Error);
        err.write_body(out);
        w.finish(out, self.compression);
    }

    /// Ends the trace of the request just handled, if it was traced.
    fn finish_trace(&mut self, db: &Arc<Database>) {
        if let Some(t) = self.trace.take() {
            t.finish(db);
        }
    }
}

/// What the connection loop does after a frame.
enum Flow {
    Continue,
    Close,
    /// Answer later, from a task, after `delay`; then act on `action`.
    Defer {
        delay: Duration,
        action: Option<FaultAction>,
    },
}

/// Accepts connections until `stop` fires, then closes every connection.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    let _ = stream.set_nodelay(true);
                    #[cfg(feature = "tls")]
                    if let Some(tls) = node.tls.clone() {
                        let (node, stop) = (node.clone(), stop.clone());
                        conns.spawn(async move {
                            // a failed handshake just closes the connection
                            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let (rd, wr) = tokio::io::split(stream);
                                serve(rd, wr, node, stop, peer.ip()).await;
                            }
                        });
                        continue;
                    }
                    let (rd, wr) = stream.into_split();
                    conns.spawn(serve(rd, wr, node.clone(), stop.clone(), peer.ip()));
                }
            }
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

async fn recv_event(
    rx: &mut Option<broadcast::Receiver<(usize, Event)>>,
) -> Option<(usize, Event)> {
    match rx {
        Some(rx) => loop {
            match rx.recv().await {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        },
        None => std::future::pending().await,
    }
}

/// Serves one connection until it closes or the node stops.
async fn serve<R, W>(
    mut rd: R,
    mut wr: W,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
    client: std::net::IpAddr,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let open = node.clone();
    let _open = Open::new(&open.connections);
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut conn = ConnState::new(client);
    // body bytes of a refused oversized frame still to be skipped
    let mut skip = 0usize;
    // a deferred request's answer and its new keyspace, if it changed
    // one; `None` closes the connection (a deferred close_connection)
    let (deferred_tx, mut deferred_rx) =
        mpsc::unbounded_channel::<Option<(BytesMut, Option<String>)>>();
    let mut events: Option<broadcast::Receiver<(usize, Event)>> = None;
    'conn: loop {
        tokio::select! {
            _ = stop.changed() => break 'conn,
            read = rd.read_buf(&mut inbuf) => {
                match read {
                    Ok(0) | Err(_) => break 'conn,
                    Ok(_) => {}
                }
                loop {
                    if skip > 0 {
                        let n = skip.min(inbuf.len());
                        inbuf.advance(n);
                        skip -= n;
                        if skip > 0 {
                            break;
                        }
                    }
                    let (header, body) = match frame::split_frame(&mut inbuf, node.max_body) {
                        Split::Frame(header, body) => (header, body),
                        Split::Partial => break,
                        Split::TooLarge(header) => {
                            let msg = format!(
                                "Request is too big: length {} exceeds maximum allowed length {}",
                                header.length,
                                node.max_body.min(frame::MAX_BODY_LEN)
                            );
                            write_error(&mut out, header.stream, &ServerError::protocol(msg), conn.compression);
                            skip = header.length;
                            continue;
                        }
                    };
                    let was_registered = !conn.events.is_empty();
                    let flow = handle_guarded(&node, &mut conn, header, body.clone(), &mut out, None);
                    if !matches!(flow, Flow::Defer { .. }) {
                        conn.finish_trace(&node.db);
                    }
                    match flow {
                        Flow::Continue => {}
                        Flow::Close => {
                            let _ = wr.write_all(&out).await;
                            break 'conn;
                        }
                        Flow::Defer { delay, action } => {
                            let node = node.clone();
                            let deferred = conn.clone();
                            // the deferred task carries on this request's trace
                            conn.trace = None;
                            let tx = deferred_tx.clone();
                            tokio::spawn(async move {
                                let mut conn = deferred;
                                tokio::time::sleep(delay).await;
                                let mut out = BytesMut::new();
                                let ks = conn.keyspace.clone();
                                let flow = handle_guarded(&node, &mut conn, header, body, &mut out, Some(action));
                                conn.finish_trace(&node.db);
                                match flow {
                                    Flow::Close => {
                                        let _ = tx.send(None);
                                    }
                                    _ => {
                                        let changed = (conn.keyspace != ks).then(|| conn.keyspace.clone()).flatten();
                                        // (out is empty when it is not to be answered)
                                        let _ = tx.send(Some((out, changed)));
                                    }
                                }
                            });
                        }
                    }
                    if !was_registered && !conn.events.is_empty() {
                        events = Some(node.db.events.subscribe());
                    }
                }
            }
            Some(deferred) = deferred_rx.recv() => {
                let Some((bytes, keyspace)) = deferred else {
                    break 'conn;
                };
                if let Some(ks) = keyspace {
                    conn.keyspace = Some(ks);
                }
                out.extend_from_slice(&bytes);
            }
            Some((origin, event)) = recv_event(&mut events) => {
                // a node does not announce its own status to its own clients
                let own_status = origin == node.index && matches!(event, Event::Status { .. });
                if !own_status && conn.events.contains(&event.kind()) {
                    write_event(&mut out, &event, conn.compression);
                }
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    }
}

fn write_error(out: &mut BytesMut, stream: i16, err: &ServerError, compression: Compression) {
    let w = FrameWriter::begin(out, stream, Opcode::Error, 0);
    err.write_body(out);
    w.finish(out, compression);
}

fn write_event(out: &mut BytesMut, event: &Event, compression: Compression) {
    let w = FrameWriter::begin(out, -1, Opcode::Event, 0);
    out.put_string(event.kind());
    match event {
        Event::Schema(change) => write_schema_change(out, change),
        Event::Status { up, addr } => {
            out.put_string(if *up { "UP" } else { "DOWN" });
            out.put_inet(*addr);
        }
    }
    w.finish(out, compression);
}

fn write_schema_change(out: &mut BytesMut, change: &crate::db::SchemaChange) {
    out.put_string(change.change);
    out.put_string(change.target);
    out.put_string(&change.keyspace);
    if let Some(name) = &change.name {
        out.put_string(name);
    }
}

/// The statement text, table and kind of a request, for fault matching.
struct RequestInfo<'a> {
    text: Option<&'a str>,
    keyspace: Option<&'a str>,
    table: Option<&'a str>,
    kind: Option<crate::fault::StatementKind>,
}

fn decide(
    node: &Node,
    opcode: Opcode,
    info: &RequestInfo<'_>,
    preset: &Option<Option<FaultAction>>,
) -> Decision {
    if let Some(action) = preset {
        return Decision {
            delay: Duration::ZERO,
            action: action.clone(),
        };
    }
    if node.db.faults.is_empty() {
        return Decision::default();
    }
    node.db.faults.decide(&Target {
        opcode,
        node: node.index,
        text: info.text,
        keyspace: info.keyspace,
        table: info.table,
        kind: info.kind,
    })
}

/// [`handle`], answering even if it panics: a panic (a bug in testkit)
/// is caught, logged to standard error, and the request is answered on
/// its stream with a `ServerError` (code 0x0000) saying testkit failed
/// internally; the connection goes on serving. Without it, a panic inline
/// would kill the connection task and a panic in a deferred request's
/// task would leave that request unanswered on an open connection, so the
/// client would wait for its timeout. The fuzz harness calls [`handle`]
/// itself, so fuzzing still sees the panics.
fn handle_guarded(
    node: &Node,
    conn: &mut ConnState,
    header: Header,
    body: Bytes,
    out: &mut BytesMut,
    preset: Option<Option<FaultAction>>,
) -> Flow {
    let start = out.len();
    let run = std::panic::AssertUnwindSafe(|| handle(node, conn, header, body, out, preset));
    match std::panic::catch_unwind(run) {
        Ok(flow) => flow,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            eprintln!(
                "tower-cql-testkit: BUG: request on stream {} (opcode {:#04x}) on node {} panicked: {what}; \
                 answered with a ServerError, the connection goes on",
                header.stream, header.opcode, node.index
            );
            // drop what it half wrote, and its trace: the answer is the error
            out.truncate(start);
            conn.trace = None;
            let err = ServerError::new(
                crate::error::SERVER_ERROR,
                format!(
                    "testkit failed internally while executing this request ({what}): \
                     this is a bug in tower-cql-testkit, please report it with the statement \
                     at https://github.com/tower-cql/tower-cql/issues"
                ),
            );
            write_error(out, header.stream, &err, conn.compression);
            Flow::Continue
        }
    }
}

/// Handles one request frame; writes its answer into `out`.
///
/// `preset` is the fault action already decided for a deferred request.
fn handle(
    node: &Node,
    conn: &mut ConnState,
    header: Header,
    body: Bytes,
    out: &mut BytesMut,
    preset: Option<Option<FaultAction>>,
) -> Flow {
    let stream = header.stream;
    let version = header.version & 0x7F;
    if version != 4 {
        let err = ServerError::protocol(format!(
            "Invalid or unsupported protocol version ({version}); supported versions are (4/v4)"
        ));
        write_error(out, stream, &err, Compression::None);
        return Flow::Continue;
    }
    let compression = conn.compression;
    let body: Bytes = if header.flags & frame::FLAG_COMPRESSION != 0 {
        match compression.decompress(&body) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                write_error(out, stream, &ServerError::protocol(e.0), compression);
                return Flow::Continue;
            }
        }
    } else {
        body
    };
    let mut r = Reader::new(&body);
    if header.flags & FLAG_CUSTOM_PAYLOAD != 0 {
        // [bytes map]: skip it, the server has no use for it
        let skipped = (|| -> Result<(), frame::ProtocolError> {
            let n = r.short()?;
            for _ in 0..n {
                r.string()?;
                r.bytes_opt()?;
            }
            Ok(())
        })();
        if let Err(e) = skipped {
            write_error(out, stream, &ServerError::protocol(e.0), compression);
            return Flow::Continue;
        }
    }
    let tracing = header.flags & FLAG_TRACING != 0;
    let Some(opcode) = Opcode::from_code(header.opcode) else {
        let err = ServerError::protocol(format!("Unknown opcode {:#04x}", header.opcode));
        write_error(out, stream, &err, compression);
        return Flow::Continue;
    };
    let result = match opcode {
        Opcode::Options => {
            let w = FrameWriter::begin(out, stream, Opcode::Supported, 0);
            let entries: [(&str, &[&str]); 3] = [
                ("COMPRESSION", &["lz4", "snappy"]),
                ("CQL_VERSION", &[crate::system::CQL_VERSION]),
                ("PROTOCOL_VERSIONS", &["4/v4"]),
            ];
            out.put_u16(entries.len() as u16);
            for (k, vs) in entries {
                out.put_string(k);
                out.put_string_list(vs);
            }
            w.finish(out, Compression::None);
            return Flow::Continue;
        }
        Opcode::Startup => startup(conn, &mut r).map(|()| {
            let w = FrameWriter::begin(out, stream, Opcode::Ready, 0);
            w.finish(out, Compression::None);
        }),
        Opcode::Register => register(conn, &mut r).map(|()| {
            let w = FrameWriter::begin(out, stream, Opcode::Ready, 0);
            w.finish(out, compression);
        }),
        Opcode::Query | Opcode::Prepare | Opcode::Execute | Opcode::Batch => {
            // a deferred request (preset) carries its trace already
            if tracing && preset.is_none() {
                let request = match opcode {
                    Opcode::Query => "Execute CQL3 query",
                    Opcode::Prepare => "Preparing CQL3 query",
                    Opcode::Execute => "Execute CQL3 prepared query",
                    _ => "Execute batch of CQL3 queries",
                };
                conn.trace = Some(Box::new(Trace::new(node.index, conn.client, request)));
            }
            return match opcode {
                Opcode::Query => query(node, conn, stream, &mut r, out, preset),
                Opcode::Prepare => prepare(node, conn, stream, &mut r, out, preset),
                Opcode::Execute => execute(node, conn, stream, &mut r, out, preset),
                _ => batch(node, conn, stream, &mut r, out, preset),
            };
        }
        Opcode::AuthResponse => Err(ServerError::protocol(
            "Unexpected AUTH_RESPONSE: this server does not require authentication",
        )),
        other => Err(ServerError::protocol(format!(
            "{other:?} is not a request opcode"
        ))),
    };
    if let Err(e) = result {
        write_error(out, stream, &e, compression);
    }
    Flow::Continue
}

fn startup(conn: &mut ConnState, r: &mut Reader<'_>) -> Result<(), ServerError> {
    let options = r.string_map().map_err(|e| ServerError::protocol(e.0))?;
    for (k, v) in options {
        if k.eq_ignore_ascii_case("COMPRESSION") {
            conn.compression = Compression::from_name(v).ok_or_else(|| {
                ServerError::protocol(format!(
                    "Unknown compression algorithm: {v} (supported: lz4, snappy)"
                ))
            })?;
        }
    }
    Ok(())
}

fn register(conn: &mut ConnState, r: &mut Reader<'_>) -> Result<(), ServerError> {
    let types = r.string_list().map_err(|e| ServerError::protocol(e.0))?;
    for t in types {
        let t = match t {
            "SCHEMA_CHANGE" => "SCHEMA_CHANGE",
            "STATUS_CHANGE" => "STATUS_CHANGE",
            "TOPOLOGY_CHANGE" => "TOPOLOGY_CHANGE",
            other => {
                return Err(ServerError::protocol(format!(
                    "Invalid value '{other}' for Type"
                )));
            }
        };
        if !conn.events.contains(&t) {
            conn.events.push(t);
        }
    }
    Ok(())
}

/// How a request executed under an after-apply fault is answered.
enum AfterApply {
    /// With this error.
    Error(ServerError),
    /// By closing the connection.
    Close,
    /// With the result and this warning attached.
    Warn(String),
}

impl AfterApply {
    /// Answers in place of the request's result; the flow to go on with.
    fn answer(self, conn: &ConnState, stream: i16, out: &mut BytesMut) -> Flow {
        match self {
            AfterApply::Error(err) => {
                conn.error(out, stream, &err);
                Flow::Continue
            }
            AfterApply::Close => Flow::Close,
            AfterApply::Warn(_) => unreachable!("a warning is answered with the result (respond)"),
        }
    }
}

/// Writes the frame for an outcome (or error), honouring a fault decided to
/// answer after applying; returns the flow to go on with.
#[allow(clippy::too_many_arguments)]
fn respond(
    conn: &mut ConnState,
    stream: i16,
    out: &mut BytesMut,
    result: Result<Outcome, ServerError>,
    skip_metadata: bool,
    after: Option<AfterApply>,
) -> Flow {
    let compression = conn.compression;
    let warning = match after {
        Some(AfterApply::Warn(warning)) => Some(warning),
        Some(after) => return after.answer(conn, stream, out),
        None => None,
    };
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            conn.error(out, stream, &e);
            return Flow::Continue;
        }
    };
    let w = conn.begin_warned(out, stream, Opcode::Result, warning.as_deref());
    match outcome {
        Outcome::Void => out.put_i32(1),
        Outcome::Rows(rows) => rows.write(out, skip_metadata),
        Outcome::SetKeyspace(ks) => {
            out.put_i32(3);
            out.put_string(&ks);
            conn.keyspace = Some(ks);
        }
        Outcome::SchemaChange(change) => {
            out.put_i32(5);
            write_schema_change(out, &change);
        }
    }
    w.finish(out, compression);
    Flow::Continue
}

/// Applies the pre-execution part of a fault decision. Returns the flow to
/// stop with, or how to answer after executing.
fn pre_execute(
    decision: Decision,
    conn: &ConnState,
    stream: i16,
    out: &mut BytesMut,
    consistency: u16,
    id: Option<&[u8]>,
) -> Result<Option<AfterApply>, Flow> {
    if !decision.delay.is_zero() {
        return Err(Flow::Defer {
            delay: decision.delay,
            action: decision.action,
        });
    }
    match decision.action {
        None => Ok(None),
        Some(FaultAction::Error(e)) => {
            conn.error(out, stream, &e.to_server_error(consistency, id));
            Err(Flow::Continue)
        }
        Some(FaultAction::ErrorAfterApply(e)) => {
            Ok(Some(AfterApply::Error(e.to_server_error(consistency, id))))
        }
        Some(FaultAction::CloseConnectionAfterApply) => Ok(Some(AfterApply::Close)),
        Some(FaultAction::Warn(warning)) => Ok(Some(AfterApply::Warn(warning))),
        Some(FaultAction::NoResponse) => Err(Flow::Continue),
        Some(FaultAction::CloseConnection) => Err(Flow::Close),
        Some(FaultAction::Delay(_)) => Ok(None),
        Some(FaultAction::Panic) => panic!("FaultAction::Panic: a request made to panic by a test"),
    }
}

fn proto(e: frame::ProtocolError) -> ServerError {
    ServerError::protocol(e.0)
}

fn options<'a>(p: &QueryParams<'a>) -> Options<'a> {
    Options {
        consistency: p.consistency,
        serial_consistency: p.serial_consistency,
        page_size: p.page_size,
        paging_state: p.paging_state,
        timestamp: p.timestamp,
    }
}

macro_rules! try_or_answer {
    ($e:expr, $conn:expr, $stream:expr, $out:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => {
                $conn.error($out, $stream, &err);
                return Flow::Continue;
            }
        }
    };
}

fn info_of<'a>(parsed: &'a Parsed, text: &'a str, keyspace: Option<&'a str>) -> RequestInfo<'a> {
    let table = exec::statement_table(&parsed.statement);
    RequestInfo {
        text: Some(text),
        keyspace: table.and_then(|t| t.keyspace.as_deref()).or(keyspace),
        table: table.map(|t| t.name.as_str()),
        kind: exec::statement_kind(&parsed.statement),
    }
}

fn query(
    node: &Node,
    conn: &mut ConnState,
    stream: i16,
    r: &mut Reader<'_>,
    out: &mut BytesMut,
    preset: Option<Option<FaultAction>>,
) -> Flow {
    let text = try_or_answer!(r.long_string().map_err(proto), conn, stream, out);
    let params = try_or_answer!(QueryParams::read(r).map_err(proto), conn, stream, out);
    let parsed = crate::cql::parse(text).map_err(|e| ServerError::syntax(e.to_string()));
    let info = match &parsed {
        Ok(p) => info_of(p, text, conn.keyspace.as_deref()),
        Err(_) => RequestInfo {
            text: Some(text),
            keyspace: None,
            table: None,
            kind: None,
        },
    };
    if let Some(t) = conn.trace.as_deref_mut()
        && preset.is_none()
    {
        trace_parameters(t, &params, Some(text));
        t.parsing(Some(text));
    }
    let decision = decide(node, Opcode::Query, &info, &preset);
    let after = match pre_execute(decision, conn, stream, out, params.consistency, None) {
        Ok(a) => a,
        Err(flow) => return flow,
    };
    let step_target = info
        .keyspace
        .zip(info.table)
        .map(|(k, t)| (k.to_string(), t.to_string()));
    let step_kind = info.kind;
    let parsed = try_or_answer!(parsed, conn, stream, out);
    let stats = node.db.counters.statement(text);
    let ks = conn.keyspace.clone();
    let ctx = Ctx {
        db: &node.db,
        node: node.index,
        keyspace: ks.as_deref(),
    };
    let result = Values::new(&parsed, &params.values, params.names.as_deref()).and_then(|values| {
        exec::execute(
            &ctx,
            &parsed,
            text,
            &values,
            &options(&params),
            None,
            &stats,
        )
    });
    if conn.trace.is_some() {
        let ks = step_target.as_ref().map(|(k, _)| k.as_str());
        let table = step_target.as_ref().map(|(_, t)| t.as_str());
        let single = single_partition(node, &parsed, ks);
        let token = single.then(|| query_token(&ctx, text, &params)).flatten();
        trace_execution(
            node,
            conn,
            &result,
            Step {
                kind: step_kind,
                keyspace: ks,
                table,
                token,
                single_partition: single || step_kind == Some(StatementKind::Write),
                consistency: params.consistency,
                rows: None,
            },
        );
    }
    respond(conn, stream, out, result, false, after)
}

fn prepare(
    node: &Node,
    conn: &mut ConnState,
    stream: i16,
    r: &mut Reader<'_>,
    out: &mut BytesMut,
    preset: Option<Option<FaultAction>>,
) -> Flow {
    let text = try_or_answer!(r.long_string().map_err(proto), conn, stream, out);
    let info = RequestInfo {
        text: Some(text),
        keyspace: None,
        table: None,
        kind: None,
    };
    if let Some(t) = conn.trace.as_deref_mut()
        && preset.is_none()
    {
        t.parameter("query", text);
        t.parsing(Some(text));
    }
    let decision = decide(node, Opcode::Prepare, &info, &preset);
    let after = match pre_execute(decision, conn, stream, out, 1, None) {
        Ok(a) => a,
        Err(flow) => return flow,
    };
    let ctx = Ctx {
        db: &node.db,
        node: node.index,
        keyspace: conn.keyspace.as_deref(),
    };
    let prepared = try_or_answer!(prepared_for(node, &ctx, text), conn, stream, out);
    if let Some(after) = after {
        return after.answer(conn, stream, out);
    }
    let w = conn.begin(out, stream, Opcode::Result);
    prepared.write(out);
    w.finish(out, conn.compression);
    Flow::Continue
}

/// Prepares `text` on `node`, reusing the cached statement when the schema
/// has not changed since.
fn prepared_for(node: &Node, ctx: &Ctx<'_>, text: &str) -> Result<Arc<Prepared>, ServerError> {
    let id = exec::prepared_id(ctx.keyspace, text);
    let generation = node.db.schema.load().generation;
    if let Some(p) = node.prepared.read().expect("prepared lock").get(&id)
        && p.generation == generation
    {
        return Ok(p.clone());
    }
    let p = Arc::new(exec::prepare(ctx, text)?);
    node.prepared
        .write()
        .expect("prepared lock")
        .insert(id, p.clone());
    Ok(p)
}

/// The prepared statement with `id`, re-planned if the schema changed.
fn lookup_prepared(node: &Node, id: &[u8]) -> Result<Arc<Prepared>, ServerError> {
    let key: [u8; 16] = id.try_into().map_err(|_| ServerError::unprepared(id))?;
    let p = node
        .prepared
        .read()
        .expect("prepared lock")
        .get(&key)
        .cloned()
        .ok_or_else(|| ServerError::unprepared(id))?;
    if p.generation == node.db.schema.load().generation {
        return Ok(p);
    }
    let ctx = Ctx {
        db: &node.db,
        node: node.index,
        keyspace: p.keyspace.as_deref(),
    };
    // Like Cassandra, which drops the prepared statements of a table whose
    // columns change: if the statement no longer plans, or plans to other
    // markers or rows, the id is unprepared; the driver's re-PREPARE gets
    // the new metadata or the error (e.g. "Undefined column name v").
    let fresh = prepared_for(node, &ctx, &p.text).map_err(|_| ServerError::unprepared(id))?;
    let rows = |x: &Prepared| x.select.as_ref().map(|r| r.encoded.clone());
    if fresh.markers.encoded != p.markers.encoded || rows(&fresh) != rows(&p) {
        return Err(ServerError::unprepared(id));
    }
    Ok(fresh)
}

fn execute(
    node: &Node,
    conn: &mut ConnState,
    stream: i16,
    r: &mut Reader<'_>,
    out: &mut BytesMut,
    preset: Option<Option<FaultAction>>,
) -> Flow {
    let id = try_or_answer!(r.short_bytes().map_err(proto), conn, stream, out);
    let params = try_or_answer!(QueryParams::read(r).map_err(proto), conn, stream, out);
    let prepared = try_or_answer!(lookup_prepared(node, id), conn, stream, out);
    let info = RequestInfo {
        text: Some(&prepared.text),
        keyspace: prepared.target.as_ref().map(|t| t.0.as_str()),
        table: prepared.target.as_ref().map(|t| t.1.as_str()),
        kind: prepared.kind,
    };
    if let Some(t) = conn.trace.as_deref_mut()
        && preset.is_none()
    {
        trace_parameters(t, &params, Some(&prepared.text));
    }
    let decision = decide(node, Opcode::Execute, &info, &preset);
    let after = match pre_execute(decision, conn, stream, out, params.consistency, Some(id)) {
        Ok(a) => a,
        Err(flow) => return flow,
    };
    let ctx = Ctx {
        db: &node.db,
        node: node.index,
        keyspace: prepared.keyspace.as_deref(),
    };
    let result = Values::new(&prepared.parsed, &params.values, params.names.as_deref())
        .and_then(|values| {
            exec::execute(
                &ctx,
                &prepared.parsed,
                &prepared.text,
                &values,
                &options(&params),
                prepared.select.as_ref(),
                &prepared.stats,
            )
        })
        // a statement found stale while running (see `exec::select`)
        .map_err(|e| match e.code {
            crate::error::UNPREPARED => ServerError::unprepared(id),
            _ => e,
        });
    if conn.trace.is_some() {
        let single = single_partition(node, &prepared.parsed, prepared.keyspace.as_deref());
        let token = single
            .then(|| values_token(&prepared.pk_indexes, &params.values))
            .flatten();
        trace_execution(
            node,
            conn,
            &result,
            Step {
                kind: prepared.kind,
                keyspace: prepared.target.as_ref().map(|t| t.0.as_str()),
                table: prepared.target.as_ref().map(|t| t.1.as_str()),
                token,
                single_partition: single || prepared.kind == Some(StatementKind::Write),
                consistency: params.consistency,
                rows: None,
            },
        );
    }
    let skip = params.skip_metadata && prepared.select.is_some();
    respond(conn, stream, out, result, skip, after)
}

fn batch(
    node: &Node,
    conn: &mut ConnState,
    stream: i16,
    r: &mut Reader<'_>,
    out: &mut BytesMut,
    preset: Option<Option<FaultAction>>,
) -> Flow {
    let req = try_or_answer!(BatchRequest::read(r).map_err(proto), conn, stream, out);
    // Resolve every entry first: parse texts, look up prepared ids.
    enum Resolved<'a> {
        Text(Box<Parsed>, &'a str),
        Prepared(Arc<Prepared>),
    }
    let mut resolved = Vec::with_capacity(req.entries.len());
    for entry in &req.entries {
        let item = match entry {
            BatchEntry::Query(text, _) => Resolved::Text(
                Box::new(try_or_answer!(
                    crate::cql::parse(text).map_err(|e| ServerError::syntax(e.to_string())),
                    conn,
                    stream,
                    out
                )),
                text,
            ),
            BatchEntry::Prepared(id, _) => {
                Resolved::Prepared(try_or_answer!(lookup_prepared(node, id), conn, stream, out))
            }
        };
        resolved.push(item);
    }
    let first_info = resolved.first().map(|r| match r {
        Resolved::Text(p, t) => info_of(p, t, conn.keyspace.as_deref()),
        Resolved::Prepared(p) => RequestInfo {
            text: Some(&p.text),
            keyspace: p.target.as_ref().map(|t| t.0.as_str()),
            table: p.target.as_ref().map(|t| t.1.as_str()),
            kind: p.kind,
        },
    });
    let info = first_info.unwrap_or(RequestInfo {
        text: None,
        keyspace: None,
        table: None,
        kind: Some(crate::fault::StatementKind::Write),
    });
    if let Some(t) = conn.trace.as_deref_mut()
        && preset.is_none()
    {
        t.parameter(
            "consistency_level",
            trace::consistency_name(req.consistency),
        );
        if let Some(sc) = req.serial_consistency {
            t.parameter("serial_consistency_level", trace::consistency_name(sc));
        }
        t.event(node.index, trace::COORDINATOR, "Preparing statement".into());
    }
    let step_target = info
        .keyspace
        .zip(info.table)
        .map(|(k, t)| (k.to_string(), t.to_string()));
    let decision = decide(node, Opcode::Batch, &info, &preset);
    let after = match pre_execute(decision, conn, stream, out, req.consistency, None) {
        Ok(a) => a,
        Err(flow) => return flow,
    };
    let items: Vec<BatchItem<'_>> = resolved
        .iter()
        .zip(&req.entries)
        .map(|(res, entry)| {
            let values = match entry {
                BatchEntry::Query(_, v) | BatchEntry::Prepared(_, v) => v.as_slice(),
            };
            match res {
                Resolved::Text(p, t) => BatchItem {
                    parsed: p,
                    text: t,
                    values,
                    stats: node.db.counters.statement(t),
                },
                Resolved::Prepared(p) => BatchItem {
                    parsed: &p.parsed,
                    text: &p.text,
                    values,
                    stats: p.stats.clone(),
                },
            }
        })
        .collect();
    let ks = conn.keyspace.clone();
    let ctx = Ctx {
        db: &node.db,
        node: node.index,
        keyspace: ks.as_deref(),
    };
    let opts = Options {
        consistency: req.consistency,
        serial_consistency: req.serial_consistency,
        page_size: None,
        paging_state: None,
        timestamp: req.timestamp,
    };
    let result = exec::execute_batch(&ctx, req.kind, &items, &opts);
    if conn.trace.is_some() {
        trace_execution(
            node,
            conn,
            &result,
            Step {
                kind: Some(StatementKind::Write),
                keyspace: step_target.as_ref().map(|t| t.0.as_str()),
                table: step_target.as_ref().map(|t| t.1.as_str()),
                token: None,
                single_partition: true,
                consistency: req.consistency,
                rows: None,
            },
        );
    }
    respond(conn, stream, out, result, false, after)
}

/// Records `sessions.parameters` as Cassandra does. No bound value is
/// recorded (Cassandra 4 adds them for EXECUTE; testkit never does).
fn trace_parameters(t: &mut Trace, params: &QueryParams<'_>, text: Option<&str>) {
    t.parameter(
        "consistency_level",
        trace::consistency_name(params.consistency),
    );
    if let Some(n) = params.page_size {
        t.parameter("page_size", n.to_string());
    }
    if let Some(text) = text {
        t.parameter("query", text);
    }
    if let Some(sc) = params.serial_consistency {
        t.parameter("serial_consistency_level", trace::consistency_name(sc));
    }
    if let Some(ts) = params.timestamp {
        t.parameter("user_timestamp", ts.to_string());
    }
}

/// Records the replica steps of an executed statement.
fn trace_execution(
    node: &Node,
    conn: &mut ConnState,
    result: &Result<Outcome, ServerError>,
    mut step: Step<'_>,
) {
    let Some(t) = conn.trace.as_deref_mut() else {
        return;
    };
    let Ok(outcome) = result else {
        return;
    };
    if let Outcome::Rows(rows) = outcome {
        step.rows = Some(rows.count);
    }
    t.execution(&node.db, &step);
}

/// Whether a SELECT names one partition (every partition key column
/// restricted by `=`).
fn single_partition(node: &Node, parsed: &Parsed, keyspace: Option<&str>) -> bool {
    let crate::cql::ast::Statement::Select(s) = &parsed.statement else {
        return false;
    };
    let Some(ks) = s.table.keyspace.as_deref().or(keyspace) else {
        return false;
    };
    let schema = node.db.schema.load();
    let Ok(t) = schema.table(ks, &s.table.name) else {
        return false;
    };
    t.partition_key.iter().all(|&i| {
        s.relations.iter().any(|r| {
            matches!(&r.lhs, crate::cql::ast::RelationLhs::Column(c) if *c == t.columns[i].name)
                && r.op == crate::cql::ast::Operator::Eq
        })
    })
}

/// The token of the partition the values at `pk_indexes` name.
fn values_token(pk_indexes: &[u16], values: &[frame::Value<'_>]) -> Option<i64> {
    if pk_indexes.is_empty() {
        return None;
    }
    let parts = pk_indexes
        .iter()
        .map(|&i| match values.get(usize::from(i)) {
            Some(frame::Value::Bytes(b)) => Some(*b),
            _ => None,
        })
        .collect::<Option<Vec<&[u8]>>>()?;
    Some(crate::schema::PartitionKey::from_components(&parts).token)
}

/// The token of an unprepared statement's partition, when its partition
/// key is bound by position (a literal key is not looked at).
fn query_token(ctx: &Ctx<'_>, text: &str, params: &QueryParams<'_>) -> Option<i64> {
    if params.values.is_empty() || params.names.is_some() {
        return None;
    }
    let p = exec::prepare(ctx, text).ok()?;
    values_token(&p.pk_indexes, &params.values)
}

/// Marks node `index` up or down and tells the other nodes' listeners.
pub(crate) fn set_running(db: &Database, index: usize, up: bool) {
    let info = &db.topology.nodes[index];
    let was = info.running.swap(up, Ordering::SeqCst);
    if was != up {
        db.publish(
            index,
            Event::Status {
                up,
                addr: info.addr,
            },
        );
    }
}

impl Node {
    pub(crate) fn new(index: usize, db: Arc<Database>, max_body: usize) -> Node {
        Node {
            max_body,
            index,
            db,
            prepared: RwLock::new(HashMap::new()),
            connections: std::sync::atomic::AtomicUsize::new(0),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Forgets prepared statements, as a restarted node does.
    pub(crate) fn clear_prepared(&self) {
        self.prepared.write().expect("prepared lock").clear();
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.addr()
    }
}

/// Entry points for the fuzz targets (`testkit/fuzz`) and their
/// regression tests: the server's whole request path, without sockets.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;
    use crate::db::Topology;

    /// One node and one connection to it, fed raw bytes.
    #[derive(Debug)]
    pub struct Harness {
        node: Node,
        conn: ConnState,
        inbuf: BytesMut,
        skip: usize,
        closed: bool,
    }

    impl Default for Harness {
        fn default() -> Harness {
            Harness::new()
        }
    }

    impl Harness {
        /// A fresh one-node database with a 64 KiB frame limit; the node is
        /// up, so statements run against the store.
        pub fn new() -> Harness {
            let addr = SocketAddr::from(([127, 0, 0, 1], 9042));
            let db = Arc::new(Database::new(Topology::new("fuzz", &[addr], 4, "dc1")));
            set_running(&db, 0, true);
            Harness {
                node: Node::new(0, db, 64 * 1024),
                conn: ConnState::new(addr.ip()),
                inbuf: BytesMut::new(),
                skip: 0,
                closed: false,
            }
        }

        /// Feeds `data` as bytes read from the connection; returns how
        /// many bytes the server answered with. After the server closes
        /// the connection, further input is ignored.
        pub fn feed(&mut self, data: &[u8]) -> usize {
            self.answer(data).len()
        }

        /// Feeds `data` as [`Harness::feed`] does; returns the frames the
        /// server answered with, as written to the connection.
        pub fn answer(&mut self, data: &[u8]) -> BytesMut {
            if self.closed {
                return BytesMut::new();
            }
            self.inbuf.extend_from_slice(data);
            let mut out = BytesMut::new();
            loop {
                if self.skip > 0 {
                    let n = self.skip.min(self.inbuf.len());
                    self.inbuf.advance(n);
                    self.skip -= n;
                    if self.skip > 0 {
                        break;
                    }
                }
                match frame::split_frame(&mut self.inbuf, self.node.max_body) {
                    Split::Partial => break,
                    Split::TooLarge(header) => {
                        let err = ServerError::protocol("too big");
                        write_error(&mut out, header.stream, &err, self.conn.compression);
                        self.skip = header.length;
                    }
                    Split::Frame(header, body) => {
                        let flow = handle(&self.node, &mut self.conn, header, body, &mut out, None);
                        self.conn.finish_trace(&self.node.db);
                        match flow {
                            Flow::Continue | Flow::Defer { .. } => {}
                            Flow::Close => {
                                self.closed = true;
                                break;
                            }
                        }
                    }
                }
            }
            out
        }
    }

    /// Parses `text` as CQL (the result is dropped: only panics matter).
    pub fn cql(text: &str) {
        let _ = crate::cql::parse(text);
    }
}
