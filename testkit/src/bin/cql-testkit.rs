//! `cql-testkit`: the testkit CQL server, standalone, until interrupted.
//!
//! ```text
//! cql-testkit --listen 127.0.0.1:9042 --nodes 3
//! ```
//!
//! Nodes are numbered from 0, as in the library: node 0 listens on
//! `--listen`, node `i` on the `i`-th address after it.

use std::net::SocketAddr;

use clap::Parser;
use tower_cql_testkit::Cluster;

/// An in-memory CQL (native protocol v4) server for tests and benchmarks.
#[derive(Debug, Parser)]
#[command(name = "cql-testkit", version)]
struct Args {
    /// Address of node 0. Node i listens on the i-th address after it
    /// (127.0.0.2, ...) on the same port. Port 0 lets the OS choose.
    #[arg(long, default_value = "127.0.0.1:9042")]
    listen: SocketAddr,
    /// Number of nodes, numbered from 0 as in the library (node 0 on
    /// --listen, node i on the i-th address after it).
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Worker threads of the server's runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    let args = Args::parse();
    let std::net::IpAddr::V4(ip) = args.listen.ip() else {
        eprintln!("error: --listen must be an IPv4 address such as 127.0.0.1:9042");
        std::process::exit(2);
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        let cluster = match Cluster::builder()
            .nodes(args.nodes)
            .first_ip(ip)
            .port(args.listen.port())
            .track_writes(false)
            .start()
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        for addr in cluster.contact_points() {
            println!("cql-testkit listening on {addr}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("cql-testkit: interrupted, stopping");
        cluster.stop().await;
    });
}
