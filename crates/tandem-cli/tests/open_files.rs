//! `tandem serve` at the edge of its file descriptors, run under
//! `prlimit`: it raises its soft open-file limit to the hard one and says
//! so; a flood of idle sockets against the 1,024 many systems start a
//! process with is closed and refused without stalling the connections in
//! use; and running out of descriptors altogether neither spins the accept
//! loop nor stops the server for good. Clients are on loopback, spread
//! over 127.0.0.0/8 source addresses like a crowd.

#[path = "support/process.rs"]
mod process;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::TestDb;
use tandem_tests::raw;
use tokio::net::TcpStream;

use process::{Served, serve_command, tandem_with_open_files};

/// Sockets of the test's own side; raised for the floods below.
fn raise_own_limit() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the test's open-file limit");
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// `/proc/PID/limits`' "Max open files" soft and hard values.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// CPU seconds the process has used (user and system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let ticks = |field: &str| field.parse::<u64>().expect("clock ticks");
    let ticks = ticks(fields[11]) + ticks(fields[12]);
    ticks as f64 / 100.0
}

async fn healthz(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    raw::exchange(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: tandem.test\r\n\r\n",
        limit,
    )
    .await
    .map(|r| r.status)
}

/// A fresh connection's `/healthz`, tried until `limit`.
async fn served_again(url: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let mut socket = raw::connect(url).await;
        if healthz(&mut socket, Duration::from_secs(2)).await == Some(200) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "no fresh connection served within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `count` sockets that say nothing, spread over 127.0.5.1…, `per_source`
/// from each address.
async fn idle_crowd(url: &str, count: usize, per_source: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        let source: IpAddr = format!("127.0.5.{}", 1 + i / per_source)
            .parse()
            .expect("an address");
        sockets.push(raw::connect_from(source, url).await);
    }
    sockets
}

#[tokio::test]
async fn serve_raises_its_soft_open_file_limit_to_the_hard_one_and_says_so() {
    let db = TestDb::fresh().await;
    let served = serve_command(&mut tandem_with_open_files(&db, 512, 4096, &["serve"]));
    assert_eq!(open_file_limits(served.child.id()), (4096, 4096));
    let said = served
        .startup
        .iter()
        .find(|l| message(l).starts_with("open files"))
        .expect("the limits are logged");
    assert_eq!(said["fields"]["soft_was"], 512, "{said}");
    assert_eq!(said["fields"]["soft"], 4096, "{said}");
    assert_eq!(said["fields"]["hard"], 4096, "{said}");
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}

/// 1,100 idle sockets from 20 addresses (55 each, under the per-address
/// cap) against a process limited to 1,024 descriptors: the server keeps
/// descriptors for itself, refuses what is over, closes the idle ones at
/// the header timeout, and the connection in use is answered throughout.
#[tokio::test]
async fn a_flood_of_idle_sockets_at_1024_descriptors_is_shed_and_service_goes_on() {
    raise_own_limit();
    let db = TestDb::fresh().await;
    let served: Served = serve_command(&mut tandem_with_open_files(&db, 1024, 1024, &["serve"]));
    let url = format!("http://{}", served.address);
    let mut in_use = raw::connect(&url).await;
    assert_eq!(
        healthz(&mut in_use, Duration::from_secs(10)).await,
        Some(200)
    );

    let flood_started = Instant::now();
    let mut crowd = idle_crowd(&url, 1100, 55).await;
    for i in 0..6 {
        let answered = healthz(&mut in_use, Duration::from_secs(5)).await;
        assert_eq!(answered, Some(200), "request {i} on the connection in use");
    }
    // Every idle socket is refused at once or closed at the header timeout
    // (5 s): none is left holding a descriptor.
    for (i, socket) in crowd.iter_mut().enumerate() {
        let left = Duration::from_secs(30).saturating_sub(flood_started.elapsed());
        assert!(
            raw::wait_for_close(socket, left).await.is_some(),
            "idle socket {i} still open {:?} after the flood began",
            flood_started.elapsed()
        );
    }
    drop(crowd);
    served_again(&url, Duration::from_secs(10)).await;
    assert_eq!(
        healthz(&mut in_use, Duration::from_secs(5))
            .await
            .unwrap_or(0),
        200
    );
    let warnings: Vec<Value> = served
        .logs_so_far()
        .into_iter()
        .filter(|l| message(l).starts_with("refusing connections"))
        .collect();
    assert!(
        (1..=4).contains(&warnings.len()),
        "refusals are logged, at most every 10 s: {warnings:?}"
    );
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}

/// With the connection cap set above what the process may open, accept
/// fails (EMFILE): the server pauses instead of spinning, and serves again
/// once descriptors are free.
#[tokio::test]
async fn running_out_of_descriptors_neither_spins_nor_stops_the_server() {
    raise_own_limit();
    let db = TestDb::fresh().await;
    let mut command = tandem_with_open_files(&db, 256, 256, &["serve"]);
    command
        .env("TANDEM_CONNECTIONS__MAX_OPEN", "100000")
        .env("TANDEM_CONNECTIONS__MAX_PER_ADDRESS", "0")
        .env("TANDEM_CONNECTIONS__HEADER_TIMEOUT_SECS", "120");
    let served = serve_command(&mut command);
    let url = format!("http://{}", served.address);
    let pid = served.child.id();
    let mut in_use = raw::connect(&url).await;
    assert_eq!(
        healthz(&mut in_use, Duration::from_secs(10)).await,
        Some(200)
    );

    // More sockets than the server has descriptors: the rest wait in the
    // listen backlog while accept fails.
    let crowd = idle_crowd(&url, 400, 400).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu_before, wall) = (cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = (cpu_seconds(pid) - cpu_before) / wall.elapsed().as_secs_f64();
    assert!(
        busy < 0.5,
        "the server used {busy:.2} of a core while out of descriptors"
    );
    assert_eq!(
        healthz(&mut in_use, Duration::from_secs(5)).await,
        Some(200),
        "the connection in use goes on"
    );

    drop(crowd);
    served_again(&url, Duration::from_secs(15)).await;
    let paused: Vec<Value> = served
        .logs_so_far()
        .into_iter()
        .filter(|l| message(l).starts_with("accepting connections failed"))
        .collect();
    assert!(
        (1..=3).contains(&paused.len()),
        "the failure is logged, at most every 10 s: {paused:?}"
    );
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}
