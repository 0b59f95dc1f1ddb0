//! Shared by the examples: connect to `SCYLLA_URI`, or start an embedded
//! testkit cluster and say so.

use std::sync::Arc;

use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use tower_cql_testkit::Cluster;

/// A session, and the embedded cluster when one was started (keep it alive).
pub(crate) async fn connect() -> Result<(Arc<Session>, Option<Cluster>), Box<dyn std::error::Error>>
{
    let (nodes, cluster) = match std::env::var("SCYLLA_URI") {
        Ok(uri) if !uri.is_empty() => {
            println!("using the cluster at SCYLLA_URI={uri}");
            (vec![uri], None)
        }
        _ => {
            let c = Cluster::start().await?;
            println!(
                "SCYLLA_URI is not set: started an embedded testkit node on {}",
                c.uri()
            );
            (vec![c.uri()], Some(c))
        }
    };
    let session = SessionBuilder::new().known_nodes(&nodes).build().await?;
    Ok((Arc::new(session), cluster))
}
