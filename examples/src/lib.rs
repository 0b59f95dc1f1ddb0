//! `tower-cql-examples`: runnable examples. `cargo run -p
//! tower-cql-examples --example quickstart` starts an embedded testkit
//! cluster (or uses `SCYLLA_URI`) and runs a short driver session.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // the cluster at SCYLLA_URI, or a three-node testkit cluster started here
//! let (session, embedded) = tower_cql_examples::connect(tower_cql_examples::scylla_uri(), "").await?;
//! assert_eq!(embedded.is_some(), tower_cql_examples::scylla_uri().is_none());
//! # drop(session); Ok(()) }
//! ```

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tower_cql_testkit::Cluster;

/// `SCYLLA_URI` (`host:port`) when it is set and not empty.
pub fn scylla_uri() -> Option<String> {
    std::env::var("SCYLLA_URI").ok().filter(|u| !u.is_empty())
}

/// A session on the cluster at `uri`, or, without one, on an embedded
/// three-node testkit cluster started here (returned, so that it lives
/// as long as the caller needs it). Says which on stdout; `against_real`
/// is added to that line for a real cluster (what the example does
/// differently there). The error names the nodes it could not reach.
pub async fn connect(
    uri: Option<String>,
    against_real: &str,
) -> Result<(Session, Option<Cluster>), Box<dyn std::error::Error>> {
    let (known_nodes, embedded) = match uri {
        Some(uri) => {
            println!("using the cluster at SCYLLA_URI={uri}{against_real}");
            (vec![uri], None)
        }
        None => {
            let cluster = Cluster::builder().nodes(3).start().await?;
            println!(
                "SCYLLA_URI is not set: started an embedded testkit cluster on {:?}",
                cluster.contact_points()
            );
            let nodes = cluster
                .contact_points()
                .iter()
                .map(ToString::to_string)
                .collect();
            (nodes, Some(cluster))
        }
    };
    let session = SessionBuilder::new()
        .known_nodes(&known_nodes)
        .build()
        .await
        .map_err(|e| {
            format!("cannot connect to {known_nodes:?}: {e} (is the cluster up? is SCYLLA_URI host:port?)")
        })?;
    Ok((session, embedded))
}

/// The README's code blocks, compiled as doc tests (`cargo test --doc -p
/// tower-cql-examples`; `cargo test --workspace` runs them too). This crate
/// depends on every other one, so each block can use them all.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
