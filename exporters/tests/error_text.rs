//! What errors and `Debug` output say never carries a literal of a
//! statement or a credential (README, "Security"): a server error that
//! quotes the literal it could not use, an OTLP endpoint with credentials
//! in its URL, a header variable written `name: value`.

mod support;

use tower::{Service, ServiceExt};
use tower_cql_core::{Collectors, CqlRequest, ErrorKind};
use tower_cql_exporters::otlp::OtlpExporterBuilder;
use tower_cql_exporters::stdout::JsonLines;
use tower_cql_middleware::stack::StackBuilder;

const LITERAL: &str = "literal-SECRET-e8b4";
const PASSWORD: &str = "pw-SECRET-7f3a";

/// A builder that reads no environment variable.
fn no_env() -> OtlpExporterBuilder {
    OtlpExporterBuilder::from_vars(Vec::<(&str, &str)>::new())
}

/// security.rs: "no bound value, no literal from a statement and no
/// credential reaches ... Debug output". The server's invalid-query error
/// quotes the literal it could not use; the CqlError the caller gets (and
/// logs) carries that message verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_quoting_a_literal_of_the_statement_does_not_carry_it() {
    let buf = support::Captured::default();
    let json = JsonLines::to_writer(Box::new(buf.clone()));
    let collectors = Collectors::with([json.clone()]);
    let (_cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors.clone()).build(driver).unwrap();
    let mut svc = stack.service();
    support::create_kv(&mut svc).await; // k int, v text
    let mut out = String::new();
    for req in [
        // a string literal where an int is expected: prepared and unprepared
        CqlRequest::query(format!(
            "INSERT INTO ks.kv (k, v) VALUES ('{LITERAL}', 'x')"
        )),
        CqlRequest::unprepared(format!("SELECT v FROM ks.kv WHERE k = '{LITERAL}'")),
    ] {
        let dbg_req = format!("{req:?}");
        assert!(!dbg_req.contains(LITERAL), "request Debug: {dbg_req}");
        let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        out.push_str(&format!("{err:?}\n{err}\n"));
        // nor does the error chain (what `anyhow` prints)
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            out.push_str(&format!("{e}\n{e:?}\n"));
            source = e.source();
        }
    }
    stack.close().await;
    let lines = buf.text();
    assert!(!lines.contains(LITERAL), "JSON lines: {lines}");
    assert!(
        !out.contains(LITERAL),
        "the literal reached the error's Debug/Display:\n{out}"
    );
}

/// README Security: "Credentials never appear in logs, spans or Debug";
/// otlp/config.rs refuses credentials in the URL ("put them in a header"),
/// but quotes the URL, password included, in the error it returns.
#[tokio::test(flavor = "current_thread")]
async fn credentials_in_an_otlp_endpoint_url_stay_out_of_errors_and_debug() {
    let mut leaks = Vec::new();
    let urls = [
        format!("http://alice:{PASSWORD}@127.0.0.1:4317"),
        format!("https://alice:{PASSWORD}@otel.example.com:4317"),
    ];
    for url in &urls {
        // from the builder
        let b = no_env().endpoint(url.as_str());
        let dbg = format!("{b:?}");
        if dbg.contains(PASSWORD) {
            leaks.push(format!("builder Debug: {dbg}"));
        }
        match b.install() {
            Ok(_) => leaks.push(format!("{url}: accepted")),
            Err(e) => {
                let (d, s) = (format!("{e:?}"), e.to_string());
                if d.contains(PASSWORD) || s.contains(PASSWORD) {
                    leaks.push(format!("error (builder): {s}"));
                }
            }
        }
        // from the environment variable
        let b = OtlpExporterBuilder::from_vars([("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str())]);
        match b.install() {
            Ok(_) => leaks.push(format!("{url}: accepted from env")),
            Err(e) => {
                let (d, s) = (format!("{e:?}"), e.to_string());
                if d.contains(PASSWORD) || s.contains(PASSWORD) {
                    leaks.push(format!("error (env): {s}"));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "credentials leaked:\n{}",
        leaks.join("\n")
    );
}

/// otlp/config.rs `parse_pairs`: "a malformed item is an error naming the
/// key, or the item's position when no key could be read, never the
/// value". A header written `name: value` (a common mistake) with a
/// base64 token (ending in `=`) is split at the token's padding.
#[tokio::test(flavor = "current_thread")]
async fn a_misformatted_header_item_is_named_by_position_not_by_its_token() {
    let token = "c2VjcmV0LXRva2VuLTEy";
    let raw = format!("Authorization: Basic {token}==");
    let err = OtlpExporterBuilder::from_vars([("OTEL_EXPORTER_OTLP_HEADERS", raw.as_str())])
        .endpoint("http://127.0.0.1:4317")
        .install()
        .expect_err("a malformed header");
    let (d, s) = (format!("{err:?}"), err.to_string());
    assert!(
        !s.contains(token) && !d.contains(token),
        "the token reached the error:\n{s}\n{d}"
    );
}
