//! The Prometheus exporter when the process runs out of file descriptors
//! (its own test binary: it lowers the process's descriptor limit, and the
//! recorder is global, one per process). Linux: it reads `/proc`.

#![cfg(target_os = "linux")]

use std::io::{Read, Seek, Write};
use std::time::Duration;

use tower_cql_exporters::prometheus::PrometheusExporter;

/// This process's CPU time so far (user and system, all threads), in
/// clock ticks, read from its `/proc/self/stat` opened beforehand (with
/// no descriptor left, it could not be opened now).
fn cpu_ticks(stat: &mut std::fs::File) -> u64 {
    let mut text = String::new();
    stat.rewind().unwrap();
    stat.read_to_string(&mut text).unwrap();
    // after the command name in parentheses: state is field 3, utime 14, stime 15
    let rest = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Sets this process's soft limit of open files (a number, or `unlimited`).
fn set_open_files_limit(soft: &str) {
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={soft}:"),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit --nofile={soft}:");
}

/// A scrape arrives while every descriptor of the process is taken (as
/// when the application leaks sockets, or a connection storm fills its
/// limit): the exporter cannot accept it (EMFILE), and must wait for a
/// descriptor to come free, not retry at once for ever and burn a core
/// while the application is already in trouble. Once descriptors are
/// free again, the waiting scrape is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_listener_waits_and_does_not_spin() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: no prlimit (util-linux) to lower the descriptor limit");
        return;
    }
    let exporter = PrometheusExporter::builder()
        .listen(([127, 0, 0, 1], 0).into())
        .install()
        .unwrap();
    let addr = exporter.address();
    let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
    // "Max open files  <soft>  <hard>  files"
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let limits: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect();
    let (soft, hard) = (limits[3].to_string(), limits[4].parse::<usize>().ok());
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count();
    if hard.is_some_and(|hard| hard < open + 64) {
        println!("skipped: the hard limit of open files is too low to lower the soft one");
        return;
    }
    set_open_files_limit(&(open + 64).to_string());
    // take every descriptor left, then give one to the scrape's connection
    let mut hoard = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hoard.push(f);
    }
    hoard.pop();
    let mut scrape = std::net::TcpStream::connect(addr).expect("a descriptor was kept for it");
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // the connection waits in the listener's backlog: what does the exporter do?
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cpu_ticks(&mut stat);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(&mut stat) - before;
    drop(hoard);
    set_open_files_limit(&soft);
    // (ticks are 1/100 s on Linux: a core spinning uses about 100 a second)
    assert!(
        used < 30,
        "the process used {used} ticks of CPU in one second while the exporter could not accept"
    );
    scrape
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = String::new();
        let _ = scrape.read_to_string(&mut answer);
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
}
