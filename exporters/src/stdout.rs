//! A JSON-lines exporter for local runs: one JSON object per event on
//! stdout (or any writer), written from its own thread so the request path
//! never waits for the terminal.
//!
//! ```
//! use std::sync::Arc;
//! use tower_cql_core::{Collector, Collectors};
//! use tower_cql_exporters::stdout::JsonLines;
//!
//! let exporter = JsonLines::stdout(); // an Arc<Background>: a bounded queue to a writer thread
//! let collectors = Collectors::with([exporter.clone()]);
//! # let _ = collectors;
//! ```
//!
//! A line looks like
//! `{"event":"request","operation":"get_user","kind":"SELECT","keyspace":"app","table":"users","outcome":"ok","duration_us":412.5,"attempts":1,"rows":1,"node":"127.0.0.1:9042"}`.
//! Statement text and bound values are never written.
//!
//! A request traced on the server (see `StackBuilder::server_trace`) has
//! its `"tracing_id"` on its request line, and its trace, once fetched,
//! is one line of its own with the same id:
//! `{"event":"server_trace","kind":"SELECT","operation":"get","keyspace":"ks","table":"kv","tracing_id":"…","coordinator":"127.0.0.2","started_at_unix_ms":…,"duration_us":60400,"request":"Execute CQL3 prepared query","consistency":"ONE","steps":[{"node":"127.0.0.2","elapsed_us":12,"activity":"Parsing SELECT v FROM ks.kv WHERE k = ?","thread":"shard 0"},…]}`,
//! the steps in the server's order, their activity texts sanitised (no
//! literal of the statement, no token).

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tower_cql_core::event::{
    AttemptEvent, BreakerEvent, LimitEvent, PageEvent, RequestEvent, RetryEvent, ServerTraceEvent,
    ShedEvent, StreamEvent, ThrottleEvent,
};
use tower_cql_core::server_trace::session_id_string;
use tower_cql_core::{Background, Collector, RequestMeta};

/// Writes events as JSON lines. Use it through [`JsonLines::stdout`] or
/// [`JsonLines::to_writer`], which put it behind a [`Background`] queue;
/// its own lock is then only ever taken by that queue's thread.
pub struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
    /// Lines the writer refused (and flushes it failed): lost, counted as
    /// this collector's failures (see [`Collector::failures`]).
    lost: AtomicU64,
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonLines")
    }
}

/// Events kept waiting for the writer thread before new ones are dropped (and counted).
pub const QUEUE: usize = 8192;

impl JsonLines {
    /// To stdout, behind a background queue.
    pub fn stdout() -> Arc<Background> {
        JsonLines::to_writer(Box::new(std::io::stdout()))
    }

    /// To `out`, behind a background queue.
    pub fn to_writer(out: Box<dyn Write + Send>) -> Arc<Background> {
        let inner = Arc::new(JsonLines {
            out: Mutex::new(out),
            lost: AtomicU64::new(0),
        });
        Arc::new(Background::new(inner, QUEUE))
    }

    /// The writer. A panic of the writer while it held the lock (caught
    /// and counted by the queue's thread) leaves the lock poisoned: the
    /// writer is taken back as it is, so that the lines after it are
    /// written, not dropped for good without a count.
    fn out(&self) -> std::sync::MutexGuard<'_, Box<dyn Write + Send>> {
        self.out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes `line` (which ends with its newline) in one write: on a
    /// shared stdout nothing lands between a line and its newline.
    /// A line the writer refuses (a full disk, a closed pipe) is lost and
    /// counted.
    fn write(&self, line: &str) {
        if self.out().write_all(line.as_bytes()).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn escape(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Line(String);

impl Line {
    fn new(event: &str) -> Line {
        let mut s = String::with_capacity(256);
        s.push_str("{\"event\":");
        escape(event, &mut s);
        Line(s)
    }
    fn str(mut self, k: &str, v: &str) -> Line {
        self.0.push(',');
        escape(k, &mut self.0);
        self.0.push(':');
        escape(v, &mut self.0);
        self
    }
    fn num(mut self, k: &str, v: f64) -> Line {
        self.0.push(',');
        escape(k, &mut self.0);
        let _ = write!(self.0, ":{v}");
        self
    }
    /// `v` written as it is: a JSON value built by the caller.
    fn raw(mut self, k: &str, v: &str) -> Line {
        self.0.push(',');
        escape(k, &mut self.0);
        self.0.push(':');
        self.0.push_str(v);
        self
    }
    fn meta(self, m: &RequestMeta) -> Line {
        let mut l = self.str("kind", m.kind().as_str());
        if let Some(o) = m.operation() {
            l = l.str("operation", o.as_str());
        }
        if let Some(k) = m.keyspace() {
            l = l.str("keyspace", k.as_str());
        }
        if let Some(t) = m.table() {
            l = l.str("table", t.as_str());
        }
        l
    }
    /// The object, closed.
    fn done(mut self) -> String {
        self.0.push('}');
        self.0
    }

    /// The line: the object, closed, and its newline.
    fn line(mut self) -> String {
        self.0.push_str("}\n");
        self.0
    }
}

fn us(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Collector for JsonLines {
    fn on_request(&self, e: &RequestEvent<'_>) {
        let mut l = Line::new("request")
            .meta(e.meta)
            .str("outcome", e.error.map_or("ok", |x| x.kind().as_str()))
            .num("duration_us", us(e.duration))
            .num("attempts", f64::from(e.attempts))
            .num("rows", e.rows as f64);
        if let Some(n) = e.node {
            l = l.str("node", &n.to_string());
        }
        if let Some(id) = &e.tracing_id {
            l = l.str("tracing_id", &session_id_string(id));
        }
        self.write(&l.line());
    }
    fn on_attempt(&self, e: &AttemptEvent<'_>) {
        let mut l = Line::new("attempt")
            .meta(e.meta)
            .num("index", f64::from(e.index))
            .str("reason", e.reason.as_str())
            .str("outcome", e.error.map_or("ok", |x| x.kind().as_str()))
            .num("duration_us", us(e.duration));
        if let Some(n) = e.node {
            l = l.str("node", &n.to_string());
        }
        self.write(&l.line());
    }
    fn on_retry(&self, e: &RetryEvent<'_>) {
        let l = Line::new("retry")
            .meta(e.meta)
            .num("attempt", f64::from(e.attempt))
            .num("delay_us", us(e.delay))
            .str("cause", e.cause.kind().as_str());
        self.write(&l.line());
    }
    fn on_throttle(&self, e: &ThrottleEvent<'_>) {
        let l = Line::new("throttle")
            .meta(e.meta)
            .str("limiter", e.limiter)
            .num("waited_us", us(e.waited))
            .str("rejected", if e.rejected { "true" } else { "false" });
        self.write(&l.line());
    }
    fn on_shed(&self, e: &ShedEvent<'_>) {
        let l = Line::new("shed")
            .meta(e.meta)
            .str("reason", e.reason.as_str())
            .str("layer", e.layer);
        self.write(&l.line());
    }
    fn on_breaker(&self, e: &BreakerEvent<'_>) {
        let l = Line::new("breaker")
            .str("target", e.target)
            .str("from", e.from.as_str())
            .str("to", e.to.as_str());
        self.write(&l.line());
    }
    fn on_limit(&self, e: &LimitEvent) {
        let l = Line::new("limit")
            .str("limiter", e.limiter)
            .num("limit", e.limit as f64)
            .num("in_flight", e.in_flight as f64);
        self.write(&l.line());
    }
    fn on_page(&self, e: &PageEvent<'_>) {
        let l = Line::new("page")
            .meta(e.meta)
            .num("page", f64::from(e.page))
            .num("rows", e.rows as f64)
            .num("duration_us", us(e.duration));
        self.write(&l.line());
    }
    fn on_stream(&self, e: &StreamEvent<'_>) {
        let l = Line::new("stream")
            .meta(e.meta)
            .str("end", e.end.as_str())
            .num("pages", f64::from(e.pages))
            .num("rows", e.rows as f64)
            .num("duration_us", us(e.duration));
        self.write(&l.line());
    }
    fn on_server_trace(&self, e: &ServerTraceEvent<'_>) {
        let mut l = Line::new("server_trace")
            .meta(e.meta)
            .str("tracing_id", &session_id_string(&e.session_id));
        if let Some(c) = e.coordinator {
            l = l.str("coordinator", &c.to_string());
        }
        let started_ms = e
            .started_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        l = l
            .num("started_at_unix_ms", started_ms as f64)
            .num("duration_us", us(e.duration));
        if !e.request.is_empty() {
            l = l.str("request", e.request);
        }
        if let Some(c) = e.consistency {
            l = l.str("consistency", c);
        }
        let mut steps = String::with_capacity(2 + e.steps.len() * 96);
        steps.push('[');
        for (i, s) in e.steps.iter().enumerate() {
            if i > 0 {
                steps.push(',');
            }
            let mut step = Line(String::from("{\"node\":"));
            match s.source {
                Some(ip) => escape(&ip.to_string(), &mut step.0),
                None => step.0.push_str("null"),
            }
            // sanitised when the step was made (`ServerTraceStep::new`)
            let step = step
                .num("elapsed_us", s.elapsed.as_micros() as f64)
                .str("activity", &s.activity)
                .str("thread", &s.thread);
            steps.push_str(&step.done());
        }
        steps.push(']');
        self.write(&l.raw("steps", &steps).line());
    }
    fn flush(&self) {
        if self.out().flush().is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }
    /// Lines the writer refused, and flushes that failed (what they held
    /// is lost): the queue in front of it ([`Background`]) adds them to
    /// the panics it caught.
    fn failures(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
    fn name(&self) -> &str {
        "json_lines"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tower_cql_core::event::Event;
    use tower_cql_core::{Collectors, CqlError, CqlRequest, ErrorKind};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_one_escaped_json_line_per_event_and_flushes_on_close() {
        let buf = Shared::default();
        let exporter = JsonLines::to_writer(Box::new(buf.clone()));
        let c = Collectors::with([exporter.clone()]);
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = 'secret'")
            .bind(("bound-secret",))
            .operation("get \"quoted\"");
        let err = CqlError::new(ErrorKind::ReadTimeout, "slow");
        c.emit(Event::Request({
            let mut e = RequestEvent::new(req.meta(), Duration::from_micros(250), Some(&err));
            e.attempts = 3;
            e.node = Some("127.0.0.1:9042".parse().unwrap());
            e
        }));
        c.flush(); // waits for the writer thread
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"event\":\"request\",\"kind\":\"SELECT\",\"operation\":\"get \\\"quoted\\\"\",\"keyspace\":\"ks\",\"table\":\"t\",\"outcome\":\"read_timeout\",\"duration_us\":250,\"attempts\":3,\"rows\":0,\"node\":\"127.0.0.1:9042\"}\n"
        );
        assert!(!text.contains("secret"));
    }

    /// Three request events through a JSON-lines exporter writing to
    /// `out`, flushed: the exporter's collector set.
    fn three_requests(out: Box<dyn Write + Send>) -> Collectors {
        let c = Collectors::with([JsonLines::to_writer(out)]);
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?").operation("get");
        for _ in 0..3 {
            c.emit(Event::Request(RequestEvent::new(
                req.meta(),
                Duration::from_micros(5),
                None,
            )));
        }
        c.flush();
        c
    }

    /// A writer that panics on its first write, then keeps what it is
    /// given.
    #[derive(Clone, Default)]
    struct PanicsOnce(Arc<Mutex<(bool, Vec<u8>)>>);
    impl Write for PanicsOnce {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut g = self.0.lock().unwrap();
            if !g.0 {
                g.0 = true;
                drop(g);
                panic!("the writer's bug");
            }
            g.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A panic of the writer is caught and counted (by the background
    /// queue), and the lines after it are written: one panic does not
    /// silence the exporter for good.
    #[test]
    fn the_lines_after_a_panic_of_the_writer_are_written() {
        let out = PanicsOnce::default();
        let c = three_requests(Box::new(out.clone()));
        assert_eq!(c.failures(), 1, "the panic is counted");
        let text = String::from_utf8(out.0.lock().unwrap().1.clone()).unwrap();
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("{\"event\":\"request\""))
                .count(),
            2,
            "the two lines after the panic: {text:?}"
        );
    }

    /// A writer whose writes fail (a full disk, a closed pipe), until
    /// told otherwise.
    #[derive(Clone, Default)]
    struct Broken(Arc<std::sync::atomic::AtomicBool>);
    impl Write for Broken {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.0.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(b.len());
            }
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A line the writer refuses (a full disk, a closed pipe) is lost:
    /// counted, as a collector's failure off the request path, not
    /// dropped without a trace.
    #[test]
    fn a_line_the_writer_refuses_is_counted() {
        let out = Broken::default();
        let c = three_requests(Box::new(out.clone()));
        assert_eq!(c.failures(), 3, "three lines lost, none counted");
        // the writer works again: the next lines are written, not counted
        out.0.store(true, std::sync::atomic::Ordering::Relaxed);
        let req = CqlRequest::query("SELECT v FROM ks.t WHERE k = ?");
        c.emit(Event::Request(RequestEvent::new(
            req.meta(),
            Duration::from_micros(5),
            None,
        )));
        c.flush();
        assert_eq!(c.failures(), 3);
    }

    /// A writer that keeps each write it is given apart.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);
    impl Write for Writes {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Each line goes out in one write, its newline with it: on a stdout
    /// shared with other threads (each write takes stdout's lock), another
    /// thread's output cannot land between a line and its newline.
    #[test]
    fn each_line_is_one_write() {
        let out = Writes::default();
        three_requests(Box::new(out.clone()));
        let writes = out.0.lock().unwrap().clone();
        let writes: Vec<String> = writes
            .into_iter()
            .map(|w| String::from_utf8(w).unwrap())
            .collect();
        assert_eq!(writes.len(), 3, "{writes:?}");
        for w in &writes {
            assert!(w.starts_with('{') && w.ends_with("}\n"), "{w:?}");
        }
    }

    #[test]
    fn a_server_trace_is_one_line_with_its_steps_and_no_value() {
        use std::time::UNIX_EPOCH;
        use tower_cql_core::event::ServerTraceEvent;
        use tower_cql_core::server_trace::ServerTraceStep;

        let buf = Shared::default();
        let exporter = JsonLines::to_writer(Box::new(buf.clone()));
        let c = Collectors::with([exporter.clone()]);
        let req = CqlRequest::query("SELECT v FROM ks.kv WHERE k = 424242").operation("get");
        let coordinator = "127.0.0.2".parse().unwrap();
        let replica = "127.0.0.3".parse().unwrap();
        let steps = [
            ServerTraceStep::new(
                [1; 16],
                Some(coordinator),
                Duration::from_micros(12),
                "Parsing SELECT v FROM ks.kv WHERE k = 424242",
                "Native-Transport-Requests-1",
            ),
            ServerTraceStep::new(
                [2; 16],
                Some(replica),
                Duration::from_micros(210),
                "Read 1 live rows and 0 tombstone cells",
                "ReadStage-2",
            ),
            ServerTraceStep::new(
                [3; 16],
                None,
                Duration::ZERO,
                "Key 'secret-value' \"quoted\"",
                "",
            ),
        ];
        let mut e = ServerTraceEvent::new(
            req.meta(),
            [0xab; 16],
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            Duration::from_micros(60_400),
            &steps,
        );
        e.coordinator = Some(coordinator);
        e.request = "Execute CQL3 query";
        e.consistency = Some("ONE");
        c.emit(Event::ServerTrace(e));
        c.flush();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            concat!(
                "{\"event\":\"server_trace\",\"kind\":\"SELECT\",\"operation\":\"get\",\"keyspace\":\"ks\",\"table\":\"kv\",",
                "\"tracing_id\":\"abababab-abab-abab-abab-abababababab\",\"coordinator\":\"127.0.0.2\",",
                "\"started_at_unix_ms\":1700000000123,\"duration_us\":60400,",
                "\"request\":\"Execute CQL3 query\",\"consistency\":\"ONE\",\"steps\":[",
                "{\"node\":\"127.0.0.2\",\"elapsed_us\":12,\"activity\":\"Parsing SELECT v FROM ks.kv WHERE k = ?\",\"thread\":\"Native-Transport-Requests-1\"},",
                "{\"node\":\"127.0.0.3\",\"elapsed_us\":210,\"activity\":\"Read 1 live rows and 0 tombstone cells\",\"thread\":\"ReadStage-2\"},",
                "{\"node\":null,\"elapsed_us\":0,\"activity\":\"Key ? \\\"quoted\\\"\",\"thread\":\"\"}",
                "]}\n"
            )
        );
        assert!(!text.contains("424242") && !text.contains("secret"));
    }
}
