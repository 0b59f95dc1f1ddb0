//! The OpenTelemetry collector end to end: queries through the stack
//! against testkit, metrics read back from the SDK's in-memory exporter.

mod support;

use std::sync::Arc;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use tower::{Service, ServiceExt};
use tower_cql_core::{Collectors, Statement};
use tower_cql_exporters::otel::OtelCollector;
use tower_cql_middleware::stack::StackBuilder;
use tower_cql_testkit::{Fault, InjectedError, Opcode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operation_duration_follows_the_db_conventions() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    // with_provider: the stack's close() flushes the provider
    let otel = OtelCollector::with_provider(&provider);
    let collectors = Collectors::with([Arc::new(otel)]);

    let (cluster, driver) = support::driver(&collectors).await;
    let stack = StackBuilder::new(collectors).build(driver).unwrap();
    let mut svc = stack.service();
    support::create_kv(&mut svc).await;
    let fault = cluster.faults().add(
        Fault::error(InjectedError::Overloaded)
            .opcode(Opcode::Execute)
            .times(2),
    );
    let get = Statement::new("SELECT v FROM ks.kv WHERE k = ?")
        .operation("get")
        .idempotent(true);
    for k in 0..20i32 {
        svc.ready()
            .await
            .unwrap()
            .call(get.request().bind((k,)))
            .await
            .unwrap();
    }
    // The same labels given on the request, not the statement: the
    // collector finds these requests' series by lookup, the ones above
    // kept in the statement; all are one series.
    let unnamed = Statement::new("SELECT v FROM ks.kv WHERE k = ?").idempotent(true);
    for k in 0..5i32 {
        let req = unnamed.request().bind((k,)).operation("get");
        assert!(!req.meta().has_statement_labels());
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    stack.close().await; // drains, then flushes the provider: no force_flush here

    let metrics = exporter.get_finished_metrics().unwrap();
    let all: Vec<_> = metrics
        .iter()
        .flat_map(|rm| rm.scope_metrics())
        .flat_map(|sm| sm.metrics())
        .collect();
    let duration = all
        .iter()
        .find(|m| m.name() == "db.client.operation.duration")
        .expect("db.client.operation.duration");
    assert_eq!(duration.unit(), "s");
    let AggregatedMetrics::F64(MetricData::Histogram(h)) = duration.data() else {
        panic!("a histogram: {:?}", duration.data());
    };
    let get_points: Vec<_> = h
        .data_points()
        .filter(|p| {
            p.attributes()
                .any(|kv| kv.key.as_str() == "db.operation.name" && kv.value.as_str() == "get")
        })
        .collect();
    assert_eq!(get_points.len(), 1);
    let p = get_points[0];
    assert_eq!(p.count(), 25, "one per logical request, in one series");
    // the conventions' own boundaries (it was a longer list of our own)
    assert_eq!(
        p.bounds().collect::<Vec<_>>(),
        vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]
    );
    let attr = |k: &str| {
        p.attributes()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| kv.value.as_str().to_string())
    };
    assert_eq!(attr("db.system.name").as_deref(), Some("cassandra"));
    assert_eq!(attr("db.namespace").as_deref(), Some("ks"));
    assert_eq!(attr("db.collection.name").as_deref(), Some("kv"));
    assert_eq!(attr("error.type"), None);

    let attempts = all
        .iter()
        .find(|m| m.name() == "db.client.attempt.duration")
        .unwrap();
    let AggregatedMetrics::F64(MetricData::Histogram(a)) = attempts.data() else {
        panic!("a histogram");
    };
    let failed: u64 = a
        .data_points()
        .filter(|p| p.attributes().any(|kv| kv.key.as_str() == "error.type"))
        .map(|p| p.count())
        .sum();
    assert_eq!(failed, cluster.faults().fired(fault));

    let retries = all
        .iter()
        .find(|m| m.name() == "db.client.retries")
        .unwrap();
    let AggregatedMetrics::U64(MetricData::Sum(s)) = retries.data() else {
        panic!("a sum");
    };
    let total: u64 = s.data_points().map(|p| p.value()).sum();
    assert_eq!(total, 2);

    // Each label set is bound only to the instruments it records on: no
    // request series carries an attempt reason, every attempt series does,
    // and no point is empty.
    fn reason<'a>(mut attrs: impl Iterator<Item = &'a opentelemetry::KeyValue>) -> bool {
        attrs.any(|kv| kv.key.as_str() == "cql.attempt.reason")
    }
    for p in h.data_points() {
        assert!(!reason(p.attributes()), "a request series with a reason");
        assert!(p.count() > 0, "an empty request series");
    }
    for p in a.data_points() {
        assert!(reason(p.attributes()), "an attempt series without a reason");
        assert!(p.count() > 0, "an empty attempt series");
    }
    let rows = all
        .iter()
        .find(|m| m.name() == "db.client.response.returned_rows")
        .unwrap();
    let AggregatedMetrics::U64(MetricData::Histogram(r)) = rows.data() else {
        panic!("a histogram");
    };
    for p in r.data_points() {
        assert!(!reason(p.attributes()), "a rows series with a reason");
        assert!(p.count() > 0, "an empty rows series");
    }
    let get_rows: u64 = r
        .data_points()
        .filter(|p| {
            p.attributes()
                .any(|kv| kv.key.as_str() == "db.operation.name" && kv.value.as_str() == "get")
        })
        .map(|p| p.count())
        .sum();
    assert_eq!(get_rows, 25, "one rows point per request");
}
