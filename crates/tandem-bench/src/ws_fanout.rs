//! `ws-fanout`: how many WebSocket subscribers a server holds, what each idle
//! one costs in memory, and how fast messages posted over HTTP reach them.
//!
//! The server runs as a separate process, so that its memory is its own:
//! `tandem serve` (on a fresh SQLite file, or a fresh PostgreSQL schema; with
//! `--nodes 3` three of them on the same schema), or the bare Node.js `ws`
//! server of `bench/node-ws-baseline` (stores nothing), or any running server
//! given with `--url`. Then:
//!
//! 1. `--threads` threads are created (`POST /v1/threads`, admin token).
//! 2. `--subscribers` WebSockets are opened (`GET /v1/ws`, Bearer header),
//!    `--connect-concurrency` at a time; subscriber `i` subscribes to thread
//!    `i % threads` on node `i % nodes` and waits for `subscribed`. The
//!    server's resident memory (`VmRSS`) is read before and after, each time
//!    after `--settle-secs` of quiet: the difference divided by the
//!    connections a node holds is its *memory per idle connection*.
//! 3. `--posters` keep-alive HTTP/1.1 clients post `POST
//!    /v1/threads/{id}/messages` (threads round-robin) for `--warmup-secs`
//!    and then `--duration-secs` measured. With `--rate N` the posts follow a
//!    fixed schedule (open loop, N per second, a post's time is its
//!    *scheduled* time so that a late post counts as late); with `--rate max`
//!    every poster sends its next message as soon as the previous one is
//!    answered (closed loop). The message text carries its send time.
//! 4. Every subscriber reads its frames and, for each `message` frame, checks
//!    that it is for its thread and that `seq` is the previous one plus one,
//!    and records the *post-to-receive latency* (receive time minus the send
//!    time in the text). The frames are not fully decoded: the fields are
//!    found in the text, as a client that routes frames would.
//! 5. After the last post, the subscribers get `--drain-secs` to receive
//!    what is still on its way.
//!
//! Figures: *expected* deliveries are, summed over every message answered 201
//! (warm-up included), the subscribers of its thread; *delivered* are the
//! `message` frames received. *deliveries/s* counts frames received inside
//! the measured window. The latency percentiles are over the deliveries of
//! the messages sent inside the measured window. The run fails (exit code 1)
//! when delivered differs from expected, on any `seq` gap, repeat or
//! misrouted frame, any closed subscriber, error frame or failed post, or
//! when not every subscriber could be opened.
//!
//! The load generator shares the machine with the server: the figures are
//! for both, and the CPU each used is printed next to them, with the
//! machine's steal.
//!
//! ```text
//! cargo build --release -p tandem-bench -p tandem-cli
//! target/release/ws-fanout --rate 1000
//! target/release/ws-fanout --rate max
//! target/release/ws-fanout --backend postgres --nodes 3 --rate 1000
//! target/release/ws-fanout --server node --subscribers 5000 --threads 100 --rate max
//! target/release/ws-fanout --url http://127.0.0.1:8080 --token tdm_… --rate 1000
//! ```

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use tandem_bench::bearer;
use tandem_bench::procfs::{CpuSample, CpuUse, Memory};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// The chat line every benchmark message carries after its timestamp.
const MESSAGE_TEXT: &str = "Hello! I ordered a blue jacket last week and it has not arrived yet. \
     Could you tell me where it is?";

/// Put before the send time (nanoseconds since the benchmark's origin, 20
/// digits) at the start of every message text.
const SENT_MARKER: &str = "ws-fanout-sent=";
const SENT_DIGITS: usize = 20;

/// How long opening and subscribing one WebSocket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a spawned server may take to answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Parser)]
#[command(
    name = "ws-fanout",
    about = "WebSocket subscribers: how many a server holds, their memory, and \
             post-to-receive latency and throughput of messages posted over HTTP"
)]
struct Args {
    /// The server to spawn (ignored with `--url`).
    #[arg(long, value_enum, default_value_t = ServerKind::Tandem)]
    server: ServerKind,
    /// `--server tandem` only: the store.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// PostgreSQL for `--backend postgres`; the benchmark works in a fresh
    /// schema that it drops at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    database_url: String,
    /// `tandem serve` processes to spawn on the same database (PostgreSQL
    /// only); subscribers and posters are spread round-robin over them.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The `tandem` binary (default: `tandem` next to this program).
    #[arg(long)]
    tandem_bin: Option<PathBuf>,
    /// `--server tandem`: more environment for the spawned processes
    /// (`KEY=VALUE`, repeatable), e.g. `TANDEM_HUB__READ_BUFFER_BYTES=1024`.
    #[arg(long, value_parser = parse_env)]
    server_env: Vec<(String, String)>,
    /// The `node` binary for `--server node`.
    #[arg(long, default_value = "node")]
    node_bin: PathBuf,
    /// The baseline server script for `--server node`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/node-ws-baseline/server.js"))]
    node_script: PathBuf,
    /// SQLite only: where the database file goes (a fresh temporary directory
    /// is made inside it). The system temporary directory when absent.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Base URL of an already running server to load instead of spawning one
    /// (e.g. `http://127.0.0.1:8080`); repeat it for several nodes. Needs
    /// `--token`.
    #[arg(long, requires = "token")]
    url: Vec<String>,
    /// An admin token of the servers given with `--url`.
    #[arg(long, env = "TANDEM_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// With `--url`: the process id of each node, in the same order, to read
    /// its memory and CPU.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// WebSocket connections, one subscription each.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Threads the subscribers and the messages are spread over.
    #[arg(long, default_value_t = 1_000)]
    threads: usize,
    /// WebSockets being opened at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Messages per second (a fixed schedule), or `max` (closed loop).
    #[arg(long, default_value = "1000", value_parser = parse_rate)]
    rate: Rate,
    /// Concurrent HTTP clients posting, each with its own connection.
    #[arg(long, default_value_t = 64)]
    posters: usize,
    /// How long to post before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// How long the subscribers may take, after the last post, to receive
    /// what is still on its way.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Quiet time before each memory reading.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    /// `tandem serve` (see `--tandem-bin`).
    Tandem,
    /// The Node.js baseline (see `--node-script`).
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    /// Messages per second, on a fixed schedule.
    Fixed(f64),
    /// As fast as the posters get answers.
    Max,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, not {text:?}")),
    }
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    if text.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::Fixed(rate)),
        _ => Err(format!("expected a positive number or `max`, not {text:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let outcome = tokio::select! {
        outcome = run(args) => outcome,
        // Dropping `run` kills the spawned servers (kill on drop).
        signal = interrupted() => Err(anyhow::anyhow!("stopped by {signal}")),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ws-fanout: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM: the name of the one that came.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

/// Runs the benchmark; `Ok(false)` when it ran but found errors.
async fn run(args: Args) -> Result<bool> {
    ensure!(args.subscribers > 0, "--subscribers must be at least 1");
    ensure!(args.threads > 0, "--threads must be at least 1");
    ensure!(args.posters > 0, "--posters must be at least 1");
    ensure!(args.duration_secs > 0, "--duration-secs must be at least 1");
    ensure!(
        args.connect_concurrency > 0,
        "--connect-concurrency must be at least 1"
    );
    ensure!(args.nodes > 0, "--nodes must be at least 1");
    if args.url.is_empty() && args.nodes > 1 {
        ensure!(
            args.server == ServerKind::Tandem && args.backend == Backend::Postgres,
            "--nodes above 1 needs --server tandem --backend postgres (the nodes share the database)"
        );
    }
    // One descriptor per subscriber, here and in the spawned server (which
    // inherits the limit).
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if (nofile as usize) < args.subscribers + 256 {
        eprintln!(
            "ws-fanout: warning: the open-file limit is {nofile}, below the {} subscribers",
            args.subscribers
        );
    }

    let mut servers = Servers::start(&args).await?;
    let outcome = load(&args, &servers).await;
    // Stop the servers and remove their data whatever happened above.
    let stopped = servers.stop().await;
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            servers.print_log_tails();
            return Err(e);
        }
    };
    report.print(&args, &servers, &stopped);
    if !report.passed(&args) || !stopped.clean() {
        servers.print_log_tails();
        return Ok(false);
    }
    Ok(true)
}

/// One server the load is spread over.
#[derive(Debug, Clone)]
struct Endpoint {
    base_url: String,
    ws_url: String,
    /// Its process, to read its memory and CPU.
    pid: Option<u32>,
}

/// The servers under test, and what to clean up after them.
struct Servers {
    endpoints: Vec<Endpoint>,
    token: String,
    /// What the report names as the server.
    label: String,
    /// Spawned processes (killed when dropped).
    processes: Vec<ServerProcess>,
    /// Logs and the SQLite file; removed on drop.
    dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema to drop at the end: (database URL, schema).
    pg_schema: Option<(String, String)>,
}

struct ServerProcess {
    child: Child,
    name: String,
    log: PathBuf,
}

/// How the servers ended.
#[derive(Debug, Default)]
struct Stopped {
    /// Problems: a server that exited before it was told to, did not stop on
    /// SIGTERM, or a schema that could not be dropped.
    problems: Vec<String>,
}

impl Stopped {
    fn clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Servers {
    async fn start(args: &Args) -> Result<Self> {
        if !args.url.is_empty() {
            let token = args.token.clone().context("--url needs --token")?;
            let endpoints = args
                .url
                .iter()
                .enumerate()
                .map(|(i, url)| endpoint(url, args.server_pid.get(i).copied()))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self {
                label: format!("external ({})", args.url.join(", ")),
                endpoints,
                token,
                processes: Vec::new(),
                dir: None,
                pg_schema: None,
            });
        }
        let dir = match &args.data_dir {
            Some(parent) => tempfile::Builder::new()
                .prefix("ws-fanout-")
                .tempdir_in(parent),
            None => tempfile::Builder::new().prefix("ws-fanout-").tempdir(),
        }
        .context("creating a temporary directory")?;
        let mut servers = Self {
            endpoints: Vec::new(),
            token: String::new(),
            label: String::new(),
            processes: Vec::new(),
            dir: Some(dir),
            pg_schema: None,
        };
        let launched = match args.server {
            ServerKind::Tandem => servers.launch_tandem(args).await,
            ServerKind::Node => servers.launch_node(args).await,
        };
        match launched {
            Ok(()) => Ok(servers),
            Err(e) => {
                servers.print_log_tails();
                let _ = servers.stop().await;
                Err(e)
            }
        }
    }

    fn dir(&self) -> Result<&Path> {
        Ok(self.dir.as_ref().context("no temporary directory")?.path())
    }

    async fn launch_tandem(&mut self, args: &Args) -> Result<()> {
        let bin = match &args.tandem_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()
                .context("locating this program")?
                .with_file_name("tandem"),
        };
        ensure!(
            bin.exists(),
            "{} does not exist: build it (cargo build --release -p tandem-cli) or give --tandem-bin",
            bin.display()
        );
        let mut env: Vec<(&str, String)> = vec![
            // The limiter stays in the path, switched off.
            ("TANDEM_RATE_LIMITS__ADMIN__PER_SECOND", "0".into()),
            ("TANDEM_HUB__MAX_CONNECTIONS_PER_TOKEN", "100000".into()),
        ];
        env.extend(args.server_env.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let dir = self.dir()?.to_owned();
        self.label = match args.backend {
            Backend::Sqlite => {
                let file = dir.join("tandem.db");
                env.push(("DATABASE_URL", format!("sqlite://{}", file.display())));
                format!("tandem, sqlite (file {})", file.display())
            }
            Backend::Postgres => {
                let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
                tandem_bench::create_schema(&args.database_url, &schema).await?;
                self.pg_schema = Some((args.database_url.clone(), schema.clone()));
                env.push(("DATABASE_URL", args.database_url.clone()));
                env.push(("TANDEM_DATABASE__SCHEMA", schema.clone()));
                format!(
                    "tandem, postgres ({}, schema {schema}), {} node{}",
                    tandem_store::backend::redact_url(&args.database_url),
                    args.nodes,
                    if args.nodes == 1 { "" } else { "s" }
                )
            }
        };
        self.label.push_str(&format!("; {}", bin.display()));
        for (key, value) in &args.server_env {
            self.label.push_str(&format!(", {key}={value}"));
        }
        let tandem = |log: &Path| -> Result<Command> {
            let mut command = Command::new(&bin);
            clean_env(&mut command);
            command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            let out = std::fs::File::create(log)
                .with_context(|| format!("creating {}", log.display()))?;
            let err = out.try_clone().context("duplicating a file handle")?;
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .kill_on_drop(true);
            Ok(command)
        };

        let log = dir.join("migrate.log");
        let status = tandem(&log)?
            .arg("migrate")
            .status()
            .await
            .with_context(|| format!("running {} migrate", bin.display()))?;
        ensure!(
            status.success(),
            "tandem migrate: {status}:\n{}",
            tail(&log, 20)
        );
        let log = dir.join("token.log");
        let status = tandem(&log)?
            .args(["token", "create", "admin", "--label", "ws-fanout benchmark"])
            .status()
            .await
            .with_context(|| format!("running {} token create admin", bin.display()))?;
        let printed = std::fs::read_to_string(&log).unwrap_or_default();
        ensure!(
            status.success(),
            "tandem token create admin: {status}:\n{}",
            tail(&log, 20)
        );
        // The secret is the one line printed to stdout (logs look different).
        self.token = printed
            .lines()
            .map(str::trim)
            .rfind(|line| line.starts_with("tdm_"))
            .or_else(|| printed.lines().map(str::trim).rfind(|l| !l.is_empty()))
            .context("tandem token create admin printed no token")?
            .to_owned();

        for n in 0..args.nodes {
            let port = free_port()?;
            let log = dir.join(format!("tandem-{n}.log"));
            let mut command = tandem(&log)?;
            // Fan-out alone: posted messages start no `reply` runs.
            command
                .arg("serve")
                .env("TANDEM_LISTEN", format!("127.0.0.1:{port}"))
                .env("TANDEM_REPLY__ENABLED", "false");
            let child = command
                .spawn()
                .with_context(|| format!("spawning {} serve", bin.display()))?;
            let pid = child.id();
            self.processes.push(ServerProcess {
                child,
                name: format!("tandem node {n}"),
                log,
            });
            self.endpoints
                .push(endpoint(&format!("http://127.0.0.1:{port}"), pid)?);
        }
        self.wait_ready().await
    }

    async fn launch_node(&mut self, args: &Args) -> Result<()> {
        ensure!(
            args.node_script.exists(),
            "{} does not exist (give --node-script)",
            args.node_script.display()
        );
        let dir = self.dir()?.to_owned();
        let port = free_port()?;
        let log = dir.join("node.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a file handle")?;
        let child = Command::new(&args.node_bin)
            .arg(&args.node_script)
            .arg(port.to_string())
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", args.node_bin.display()))?;
        let pid = child.id();
        self.processes.push(ServerProcess {
            child,
            name: "node baseline".into(),
            log,
        });
        self.endpoints
            .push(endpoint(&format!("http://127.0.0.1:{port}"), pid)?);
        let script =
            std::fs::canonicalize(&args.node_script).unwrap_or_else(|_| args.node_script.clone());
        self.label = format!(
            "node baseline ({}, {}), stores nothing",
            script.display(),
            node_version(&args.node_bin).await
        );
        self.token = "node-baseline-checks-no-token".into();
        self.wait_ready().await
    }

    /// Waits until every spawned server answers `GET /healthz` with 200.
    async fn wait_ready(&mut self) -> Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building the HTTP client")?;
        let deadline = Instant::now() + START_TIMEOUT;
        for (endpoint, process) in self.endpoints.iter().zip(&mut self.processes) {
            let url = format!("{}/healthz", endpoint.base_url);
            loop {
                if let Some(status) = process.child.try_wait().context("checking a server")? {
                    bail!("{} exited before answering: {status}", process.name);
                }
                if let Ok(response) = http.get(&url).send().await
                    && response.status() == StatusCode::OK
                {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{} did not answer GET /healthz within {START_TIMEOUT:?}",
                    process.name
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Stops the spawned servers (SIGTERM, then SIGKILL after 10 s) and drops
    /// the PostgreSQL schema.
    async fn stop(&mut self) -> Stopped {
        let mut stopped = Stopped::default();
        for process in &mut self.processes {
            match process.child.try_wait() {
                Ok(Some(status)) => {
                    stopped
                        .problems
                        .push(format!("{} had exited by itself: {status}", process.name));
                    continue;
                }
                Ok(None) => {}
                Err(e) => stopped
                    .problems
                    .push(format!("{}: checking its state: {e}", process.name)),
            }
            let Some(pid) = process.child.id() else {
                continue;
            };
            let termed = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            let exited = match termed {
                Ok(status) if status.success() => {
                    tokio::time::timeout(Duration::from_secs(10), process.child.wait()).await
                }
                _ => Ok(Err(std::io::Error::other("kill -TERM failed"))),
            };
            match exited {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    stopped
                        .problems
                        .push(format!("{}: stopping it: {e}", process.name));
                    let _ = process.child.kill().await;
                }
                Err(_) => {
                    stopped.problems.push(format!(
                        "{} did not stop within 10 s of SIGTERM; killed",
                        process.name
                    ));
                    let _ = process.child.kill().await;
                }
            }
        }
        if let Some((url, schema)) = self.pg_schema.take()
            && let Err(e) = tandem_bench::drop_schema(&url, &schema).await
        {
            stopped.problems.push(format!("{e:#}"));
        }
        stopped
    }

    fn print_log_tails(&self) {
        for process in &self.processes {
            eprintln!(
                "--- last lines of {} ({}):\n{}",
                process.name,
                process.log.display(),
                tail(&process.log, 30)
            );
        }
    }
}

/// Takes out of a spawned server's environment any Tandem setting this
/// shell may have, so that only the benchmark's apply.
fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("TANDEM_") || key == "DATABASE_URL")
        {
            command.env_remove(key);
        }
    }
}

fn endpoint(base_url: &str, pid: Option<u32>) -> Result<Endpoint> {
    let base_url = base_url.trim_end_matches('/').to_owned();
    let ws_url = if let Some(rest) = base_url.strip_prefix("http://") {
        format!("ws://{rest}/v1/ws")
    } else if let Some(rest) = base_url.strip_prefix("https://") {
        format!("wss://{rest}/v1/ws")
    } else {
        bail!("{base_url}: expected an http:// or https:// URL");
    };
    Ok(Endpoint {
        base_url,
        ws_url,
        pid,
    })
}

/// A port nobody listens on now (the server binds it a moment later).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("reading the bound address")?
        .port())
}

async fn node_version(node: &Path) -> String {
    match Command::new(node).arg("--version").output().await {
        Ok(output) => format!("node {}", String::from_utf8_lossy(&output.stdout).trim()),
        Err(_) => "node, version unknown".into(),
    }
}

/// The last `lines` lines of a file.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// An HTTP/1.1 client that keeps (at most) one connection open.
fn http_client(token: &str) -> Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, bearer(token)?);
    reqwest::Client::builder()
        .default_headers(headers)
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        // A proxy would be part of the measurement.
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// What every subscriber and poster shares: the clock and the window.
struct Shared {
    /// Times are nanoseconds since this instant.
    origin: Instant,
    /// The measured window, `[measure_from, stop)`; `u64::MAX` until posting
    /// starts.
    measure_from_ns: AtomicU64,
    stop_ns: AtomicU64,
    /// `message` frames received by all subscribers (to know when they have
    /// everything).
    delivered: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn in_window(&self, ns: u64) -> bool {
        self.measure_from_ns.load(Ordering::Relaxed) <= ns
            && ns < self.stop_ns.load(Ordering::Relaxed)
    }
}

/// Opens a WebSocket, subscribes to one thread and returns the stream and
/// the thread's `last_seq`.
async fn open_subscriber(ws_url: &str, token: &str, thread_id: &str) -> Result<(WsStream, u64)> {
    let mut request = ws_url
        .into_client_request()
        .with_context(|| format!("{ws_url}: not a WebSocket URL"))?;
    request.headers_mut().insert(AUTHORIZATION, bearer(token)?);
    // A small read buffer: the frames are small and there are many sockets.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .with_context(|| format!("opening {ws_url}"))?;
    let topic = format!("thread:{thread_id}");
    ws.send(Message::text(
        json!({ "type": "subscribe", "topic": topic }).to_string(),
    ))
    .await
    .context("sending subscribe")?;
    loop {
        let frame = ws
            .next()
            .await
            .context("the server closed the socket before `subscribed`")?
            .context("reading the answer to subscribe")?;
        let Message::Text(text) = frame else {
            if let Message::Close(close) = frame {
                bail!("closed before `subscribed`: {close:?}");
            }
            continue;
        };
        let answer: Value = serde_json::from_str(text.as_str())
            .with_context(|| format!("a frame that is not JSON: {}", text.as_str()))?;
        match answer["type"].as_str() {
            Some("subscribed") if answer["topic"] == topic.as_str() => {
                let last_seq = answer["last_seq"]
                    .as_u64()
                    .with_context(|| format!("no last_seq in {answer}"))?;
                return Ok((ws, last_seq));
            }
            Some("error") => bail!("subscribe answered with {answer}"),
            // Anything else (presence, …) may come first.
            _ => {}
        }
    }
}

/// What one subscriber saw (and, merged, what all of them saw).
#[derive(Debug, Default)]
struct Received {
    /// Post-to-receive latency in microseconds of the deliveries of messages
    /// sent inside the window (merged into a histogram at the end: a vector
    /// per subscriber costs one push per frame and no lock).
    latencies_us: Vec<u32>,
    /// `message` frames.
    delivered: u64,
    /// `message` frames received inside the window.
    delivered_in_window: u64,
    /// Other frames the server pushed (presence, typing, …).
    other_frames: u64,
    /// A `seq` that was not the previous one plus one: (gaps, repeats or
    /// going back).
    seq_gaps: u64,
    seq_repeats: u64,
    /// Frames for another thread than the subscriber's.
    misrouted: u64,
    /// Subscribers whose socket was closed or failed before the end.
    closed: u64,
    /// Error frames, binary frames, frames that could not be read.
    errors: u64,
    samples: Vec<String>,
}

impl Received {
    fn sample(&mut self, description: String) {
        tandem_bench::keep_sample(&mut self.samples, description);
    }

    fn merge(&mut self, other: Received, latency: &mut Histogram<u64>) {
        for us in other.latencies_us {
            latency.saturating_record(u64::from(us).max(1));
        }
        self.delivered += other.delivered;
        self.delivered_in_window += other.delivered_in_window;
        self.other_frames += other.other_frames;
        self.seq_gaps += other.seq_gaps;
        self.seq_repeats += other.seq_repeats;
        self.misrouted += other.misrouted;
        self.closed += other.closed;
        self.errors += other.errors;
        for sample in other.samples {
            self.sample(sample);
        }
    }
}

/// One subscriber: reads frames until `stop`.
async fn subscriber(
    mut ws: WsStream,
    thread_id: Arc<str>,
    mut last_seq: u64,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Received {
    let mut seen = Received::default();
    loop {
        let frame = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            frame = ws.next() => frame,
        };
        let received_ns = shared.now_ns();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Binary(_))) => {
                seen.errors += 1;
                seen.sample(format!("thread {thread_id}: a binary frame"));
                continue;
            }
            Some(Ok(Message::Close(close))) => {
                seen.closed += 1;
                seen.sample(format!(
                    "thread {thread_id}: closed by the server: {close:?}"
                ));
                return seen;
            }
            Some(Err(e)) => {
                seen.closed += 1;
                seen.sample(format!("thread {thread_id}: reading: {e}"));
                return seen;
            }
            None => {
                seen.closed += 1;
                seen.sample(format!("thread {thread_id}: the socket ended"));
                return seen;
            }
        };
        let text = text.as_str();
        let Some(message) = MessageFrame::find(text).or_else(|| MessageFrame::decode(text)) else {
            match frame_type(text).as_deref() {
                Some("message") => {
                    seen.errors += 1;
                    seen.sample(format!("thread {thread_id}: an unreadable message: {text}"));
                }
                Some("error") | None => {
                    seen.errors += 1;
                    seen.sample(format!("thread {thread_id}: {text}"));
                }
                Some(_) => seen.other_frames += 1,
            }
            continue;
        };
        if message.thread_id != &*thread_id {
            seen.misrouted += 1;
            seen.sample(format!(
                "thread {thread_id}: received a message of thread {}",
                message.thread_id
            ));
            continue;
        }
        seen.delivered += 1;
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if message.seq != last_seq + 1 {
            if message.seq <= last_seq {
                seen.seq_repeats += 1;
            } else {
                seen.seq_gaps += 1;
            }
            seen.sample(format!(
                "thread {thread_id}: seq {} after {last_seq}",
                message.seq
            ));
        }
        last_seq = last_seq.max(message.seq);
        if shared.in_window(received_ns) {
            seen.delivered_in_window += 1;
        }
        if shared.in_window(message.sent_ns) {
            let micros = received_ns.saturating_sub(message.sent_ns) / 1000;
            seen.latencies_us
                .push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
    // Say goodbye properly; the server may already be busy with others.
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    seen
}

/// What a subscriber needs from a `message` frame.
#[derive(Debug, PartialEq)]
struct MessageFrame<'a> {
    thread_id: &'a str,
    seq: u64,
    /// From the message text.
    sent_ns: u64,
}

impl<'a> MessageFrame<'a> {
    /// Finds the fields in the frame's text without decoding it: the first
    /// `"type"` (the frame's own: the message inside has none), the first
    /// `"thread_id"` and `"seq"` (the frame's or, equal to them, the
    /// message's, whichever comes first) and the send time in the text.
    fn find(text: &'a str) -> Option<Self> {
        if string_after(text, "\"type\":\"")? != "message" {
            return None;
        }
        Some(Self {
            thread_id: string_after(text, "\"thread_id\":\"")?,
            seq: number_after(text, "\"seq\":")?,
            sent_ns: sent_ns(text)?,
        })
    }

    /// The same from a full decoding, for a frame written differently (with
    /// spaces, say).
    fn decode(text: &'a str) -> Option<Self> {
        let frame: Value = serde_json::from_str(text).ok()?;
        if frame["type"] != "message" {
            return None;
        }
        let thread_id = frame["thread_id"].as_str()?;
        // Borrow the id from `text`, where it appears verbatim.
        let at = text.find(thread_id)?;
        Some(Self {
            thread_id: &text[at..at + thread_id.len()],
            seq: frame["seq"].as_u64()?,
            sent_ns: sent_ns(frame["message"]["content"].as_str()?)?,
        })
    }
}

/// The frame's `type`, decoded (for frames other than messages).
fn frame_type(text: &str) -> Option<String> {
    let frame: Value = serde_json::from_str(text).ok()?;
    frame["type"].as_str().map(str::to_owned)
}

/// The string value that follows `key` (which ends with its opening quote),
/// up to the closing quote; ids and types hold no escapes.
fn string_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// The decimal number that follows `key`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    digits(&text[start..])
}

fn digits(text: &str) -> Option<u64> {
    let len = text.bytes().take_while(u8::is_ascii_digit).count();
    text[..len].parse().ok()
}

/// The send time written into a message's text.
fn sent_ns(text: &str) -> Option<u64> {
    let start = text.find(SENT_MARKER)? + SENT_MARKER.len();
    digits(text.get(start..start + SENT_DIGITS)?)
}

/// The body of a message sent at `sent_ns`.
fn message_body(sent_ns: u64) -> bytes::Bytes {
    format!("{{\"content\":\"{SENT_MARKER}{sent_ns:0SENT_DIGITS$} {MESSAGE_TEXT}\"}}").into()
}

/// What one poster did (and, merged, all of them).
struct Posted {
    /// Messages answered 201, warm-up included.
    created: u64,
    /// Of those, the ones sent inside the window.
    created_in_window: u64,
    /// Deliveries the 201s call for: the subscribers of each message's thread.
    expected: u64,
    /// `POST` to `201` latency, in microseconds, of the posts sent inside
    /// the window.
    latency_us: Histogram<u64>,
    /// Posts started after their scheduled time by more than a millisecond
    /// (fixed rate only: the posters could not keep the schedule).
    late: u64,
    errors: u64,
    samples: Vec<String>,
}

impl Posted {
    fn new() -> Result<Self> {
        Ok(Self {
            created: 0,
            created_in_window: 0,
            expected: 0,
            latency_us: latency_histogram()?,
            late: 0,
            errors: 0,
            samples: Vec::new(),
        })
    }

    fn error(&mut self, description: String) {
        self.errors += 1;
        tandem_bench::keep_sample(&mut self.samples, description);
    }

    fn merge(&mut self, other: Posted) -> Result<()> {
        self.created += other.created;
        self.created_in_window += other.created_in_window;
        self.expected += other.expected;
        self.latency_us
            .add(&other.latency_us)
            .context("merging histograms")?;
        self.late += other.late;
        self.errors += other.errors;
        for sample in other.samples {
            tandem_bench::keep_sample(&mut self.samples, sample);
        }
        Ok(())
    }
}

/// 1 µs to 10 min, 3 significant digits.
fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a histogram")
}

/// What every poster reads.
struct PostPlan {
    /// `urls[node][thread]`: where to post a thread's messages on each node.
    urls: Vec<Vec<String>>,
    /// Subscribers held on each thread.
    subscribers: Vec<u64>,
    rate: Rate,
    /// Posting starts here (ns since the origin).
    start_ns: u64,
    stop_ns: u64,
    /// The next message to send: its number picks its thread and, at a
    /// fixed rate, its time.
    next: AtomicU64,
}

/// One poster: posts one message at a time on its own connection until the
/// window closes.
async fn poster(
    http: reqwest::Client,
    node: usize,
    plan: Arc<PostPlan>,
    shared: Arc<Shared>,
    mut posted: Posted,
) -> Posted {
    let urls = &plan.urls[node];
    loop {
        let k = plan.next.fetch_add(1, Ordering::Relaxed);
        // The time the message counts as sent.
        let sent_ns = match plan.rate {
            Rate::Fixed(rate) => {
                let at = plan.start_ns + (k as f64 * 1e9 / rate) as u64;
                if at >= plan.stop_ns {
                    break;
                }
                let now = shared.now_ns();
                if at > now {
                    tokio::time::sleep(Duration::from_nanos(at - now)).await;
                } else if now - at > 1_000_000 {
                    posted.late += 1;
                }
                at
            }
            Rate::Max => {
                let now = shared.now_ns();
                if now >= plan.stop_ns {
                    break;
                }
                now
            }
        };
        let thread = (k % urls.len() as u64) as usize;
        let url = &urls[thread];
        let started = Instant::now();
        let result = http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(message_body(sent_ns))
            .send()
            .await;
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                posted.error(format!("POST {url}: {e}"));
                continue;
            }
        };
        let status = response.status();
        // Read the whole answer so that the connection can carry the next request.
        let answer = response.bytes().await;
        let took = started.elapsed();
        match answer {
            Ok(_) if status == StatusCode::CREATED => {
                posted.created += 1;
                posted.expected += plan.subscribers[thread];
                if shared.in_window(sent_ns) {
                    posted.created_in_window += 1;
                    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                    posted.latency_us.saturating_record(micros.max(1));
                }
            }
            Ok(answer) => {
                let text = String::from_utf8_lossy(&answer);
                let text: String = text.chars().take(300).collect();
                posted.error(format!("POST {url}: {status}: {text}"));
            }
            Err(e) => posted.error(format!("POST {url}: {status}, reading the body: {e}")),
        }
    }
    posted
}

/// Memory of each node at one moment.
fn memory(endpoints: &[Endpoint]) -> Vec<Option<Memory>> {
    endpoints
        .iter()
        .map(|e| e.pid.and_then(Memory::of))
        .collect()
}

/// Creates the threads, opens the subscribers, posts, and collects what the
/// subscribers received.
async fn load(args: &Args, servers: &Servers) -> Result<Report> {
    let endpoints = &servers.endpoints;
    let nodes = endpoints.len();
    let pids: Vec<u32> = endpoints.iter().filter_map(|e| e.pid).collect();
    let setup = http_client(&servers.token)?;
    let thread_ids =
        tandem_bench::create_threads(&setup, &endpoints[0].base_url, args.threads).await?;
    let thread_ids: Vec<Arc<str>> = thread_ids.into_iter().map(Arc::from).collect();

    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let memory_before = memory(endpoints);

    // Subscribers.
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        measure_from_ns: AtomicU64::new(u64::MAX),
        stop_ns: AtomicU64::new(u64::MAX),
        delivered: AtomicU64::new(0),
    });
    let stop = CancellationToken::new();
    let connect_started = Instant::now();
    let mut opened = futures::stream::iter(0..args.subscribers)
        .map(|i| {
            let thread = i % args.threads;
            let node = i % nodes;
            let thread_id = thread_ids[thread].clone();
            let endpoint = &endpoints[node];
            let token = &servers.token;
            async move {
                let result = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    open_subscriber(&endpoint.ws_url, token, &thread_id),
                )
                .await;
                (i, thread, node, result)
            }
        })
        .buffer_unordered(args.connect_concurrency);
    let mut readers = Vec::with_capacity(args.subscribers);
    let mut per_thread = vec![0_u64; args.threads];
    let mut per_node = vec![0_u64; nodes];
    let mut connect_failures = 0_u64;
    let mut connect_samples = Vec::new();
    while let Some((i, thread, node, result)) = opened.next().await {
        let failure = match result {
            Ok(Ok((ws, last_seq))) => {
                per_thread[thread] += 1;
                per_node[node] += 1;
                readers.push(tokio::spawn(subscriber(
                    ws,
                    thread_ids[thread].clone(),
                    last_seq,
                    shared.clone(),
                    stop.clone(),
                )));
                continue;
            }
            Ok(Err(e)) => format!("subscriber {i} (node {node}): {e:#}"),
            Err(_) => {
                format!("subscriber {i} (node {node}): not subscribed within {CONNECT_TIMEOUT:?}")
            }
        };
        connect_failures += 1;
        tandem_bench::keep_sample(&mut connect_samples, failure);
    }
    drop(opened);
    let connect_time = connect_started.elapsed();
    let held = readers.len() as u64;

    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let memory_idle = memory(endpoints);

    // Posting.
    let start_ns = shared.now_ns() + 100_000_000;
    let measure_from_ns = start_ns + args.warmup_secs * 1_000_000_000;
    let stop_ns = measure_from_ns + args.duration_secs * 1_000_000_000;
    shared
        .measure_from_ns
        .store(measure_from_ns, Ordering::Relaxed);
    shared.stop_ns.store(stop_ns, Ordering::Relaxed);
    let plan = Arc::new(PostPlan {
        urls: endpoints
            .iter()
            .map(|e| {
                thread_ids
                    .iter()
                    .map(|id| format!("{}/v1/threads/{id}/messages", e.base_url))
                    .collect()
            })
            .collect(),
        subscribers: per_thread,
        rate: args.rate,
        start_ns,
        stop_ns,
        next: AtomicU64::new(0),
    });
    let mut posters = Vec::with_capacity(args.posters);
    for p in 0..args.posters {
        let http = http_client(&servers.token)?;
        posters.push(tokio::spawn(poster(
            http,
            p % nodes,
            plan.clone(),
            shared.clone(),
            Posted::new()?,
        )));
    }
    let at = |ns: u64| tokio::time::Instant::from_std(shared.origin + Duration::from_nanos(ns));
    tokio::time::sleep_until(at(measure_from_ns)).await;
    let cpu_from = CpuSample::take_with(&pids);
    tokio::time::sleep_until(at(stop_ns)).await;
    let cpu = cpu_from
        .zip(CpuSample::take_with(&pids))
        .map(|(from, to)| to.since(&from));
    let memory_loaded = memory(endpoints);

    let mut posted = Posted::new()?;
    for task in posters {
        posted.merge(task.await.context("a poster panicked")?)?;
    }
    let posted_until = shared.now_ns();

    // Drain: wait for what is still on its way.
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_secs);
    while shared.delivered.load(Ordering::Relaxed) < posted.expected
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_ns = shared.now_ns();
    // A little longer, so that anything beyond what was expected shows.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let mut received = Received::default();
    let mut latency_us = latency_histogram()?;
    for reader in readers {
        received.merge(
            reader.await.context("a subscriber panicked")?,
            &mut latency_us,
        );
    }

    Ok(Report {
        nodes,
        held,
        per_node,
        connect_time,
        connect_failures,
        connect_samples,
        memory_before,
        memory_idle,
        memory_loaded,
        posted,
        received,
        latency_us,
        drain: Duration::from_nanos(drained_ns.saturating_sub(posted_until)),
        cpu,
    })
}

/// The figures of one run.
struct Report {
    nodes: usize,
    /// Subscribers opened and subscribed.
    held: u64,
    /// Of those, on each node.
    per_node: Vec<u64>,
    connect_time: Duration,
    connect_failures: u64,
    connect_samples: Vec<String>,
    /// Memory of each node before the subscribers, with them idle, and at
    /// the end of the measured window.
    memory_before: Vec<Option<Memory>>,
    memory_idle: Vec<Option<Memory>>,
    memory_loaded: Vec<Option<Memory>>,
    posted: Posted,
    received: Received,
    /// Post-to-receive, in microseconds.
    latency_us: Histogram<u64>,
    /// From the last answered post to the last expected delivery (or the end
    /// of the drain period).
    drain: Duration,
    cpu: Option<CpuUse>,
}

impl Report {
    fn failures(&self, args: &Args) -> Vec<String> {
        let mut failures = Vec::new();
        let r = &self.received;
        if self.held < args.subscribers as u64 {
            failures.push(format!(
                "{} of {} subscribers could not be opened",
                args.subscribers as u64 - self.held,
                args.subscribers
            ));
        }
        if self.posted.errors > 0 {
            failures.push(format!("{} posts failed", self.posted.errors));
        }
        if r.delivered != self.posted.expected {
            failures.push(format!(
                "delivered {} of {} expected",
                r.delivered, self.posted.expected
            ));
        }
        for (count, what) in [
            (r.seq_gaps, "seq gaps"),
            (r.seq_repeats, "repeated or backward seqs"),
            (r.misrouted, "frames for another thread"),
            (r.closed, "subscribers closed"),
            (r.errors, "error or unreadable frames"),
        ] {
            if count > 0 {
                failures.push(format!("{count} {what}"));
            }
        }
        if self.posted.created_in_window == 0 {
            failures.push("no message posted in the measured window".into());
        }
        failures
    }

    fn passed(&self, args: &Args) -> bool {
        self.failures(args).is_empty()
    }

    fn print(&self, args: &Args, servers: &Servers, stopped: &Stopped) {
        let secs = args.duration_secs as f64;
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let r = &self.received;
        let p = &self.posted;

        println!("ws-fanout");
        println!("  server          {}", servers.label);
        println!(
            "  subscribers     {} held of {} asked, on {} threads ({:.1} per thread), {} node{}",
            self.held,
            args.subscribers,
            args.threads,
            args.subscribers as f64 / args.threads as f64,
            self.nodes,
            if self.nodes == 1 { "" } else { "s" }
        );
        println!(
            "  connect         {:.2} s to open and subscribe them, {} at a time ({:.0}/s); {} failed",
            self.connect_time.as_secs_f64(),
            args.connect_concurrency,
            self.held as f64 / self.connect_time.as_secs_f64().max(f64::EPSILON),
            self.connect_failures
        );
        for sample in &self.connect_samples {
            println!("    {sample}");
        }
        for node in 0..self.nodes {
            let name = if self.nodes == 1 {
                "memory".to_owned()
            } else {
                format!("memory node {node}")
            };
            match (self.memory_before[node], self.memory_idle[node]) {
                (Some(before), Some(idle)) => {
                    let connections = self.per_node[node].max(1);
                    let delta = idle.rss.saturating_sub(before.rss);
                    println!(
                        "  {name:<15} RSS {:.1} MiB before the subscribers, {:.1} MiB with {} idle: \
                         {:.2} KiB per idle connection",
                        mib(before.rss),
                        mib(idle.rss),
                        self.per_node[node],
                        delta as f64 / connections as f64 / 1024.0
                    );
                }
                _ => println!("  {name:<15} unknown (no process id)"),
            }
            if let Some(loaded) = self.memory_loaded[node] {
                println!(
                    "  {:<15} RSS {:.1} MiB at the end of the measured window; peak {:.1} MiB",
                    "",
                    mib(loaded.rss),
                    mib(loaded.peak)
                );
            }
        }
        let rate = match args.rate {
            Rate::Fixed(rate) => format!("{rate} messages/s on a fixed schedule (open loop)"),
            Rate::Max => "max (closed loop)".to_owned(),
        };
        println!(
            "  posting         {rate}, {} posters; {} s warm-up, {} s measured",
            args.posters, args.warmup_secs, args.duration_secs
        );
        println!(
            "  posted          {} in the window ({:.0} messages/s), {} in all, every one 201: {}",
            p.created_in_window,
            p.created_in_window as f64 / secs,
            p.created,
            if p.errors == 0 { "yes" } else { "NO" }
        );
        if p.late > 0 {
            println!(
                "  late posts      {} started more than 1 ms after their scheduled time",
                p.late
            );
        }
        println!(
            "  post → 201      p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(&p.latency_us, 0.50),
            ms(&p.latency_us, 0.99),
            p.latency_us.max() as f64 / 1000.0
        );
        println!(
            "  delivered       {} of {} expected ({:.3} %), last one {:.2} s after the last post",
            r.delivered,
            p.expected,
            r.delivered as f64 * 100.0 / p.expected.max(1) as f64,
            self.drain.as_secs_f64()
        );
        println!(
            "  deliveries/s    {:.0} (received in the measured window)",
            r.delivered_in_window as f64 / secs
        );
        println!(
            "  post → receive  p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms \
             ({} deliveries of messages sent in the window)",
            ms(&self.latency_us, 0.50),
            ms(&self.latency_us, 0.90),
            ms(&self.latency_us, 0.99),
            ms(&self.latency_us, 0.999),
            self.latency_us.max() as f64 / 1000.0,
            self.latency_us.len()
        );
        if let Some(cpu) = &self.cpu {
            let servers_cpu: Vec<String> = cpu
                .others_cores
                .iter()
                .map(|c| c.map_or("?".to_owned(), |c| format!("{c:.2}")))
                .collect();
            // What neither the benchmark nor the servers used: other
            // processes (PostgreSQL, a compiler…) and the kernel's own work.
            let others = cpu.busy * cpu.machine_cores as f64
                - cpu.process_cores
                - cpu.others_cores.iter().flatten().sum::<f64>();
            println!(
                "  cpu             this process {:.2} cores; server{} {} cores; the rest {:.2} cores; \
                 machine ({} cores) {:.0}% busy, {:.0}% steal, {:.0}% idle",
                cpu.process_cores,
                if servers_cpu.len() == 1 { "" } else { "s" },
                if servers_cpu.is_empty() {
                    "?".to_owned()
                } else {
                    servers_cpu.join(" + ")
                },
                others.max(0.0),
                cpu.machine_cores,
                cpu.busy * 100.0,
                cpu.steal * 100.0,
                cpu.idle * 100.0,
            );
        }
        println!(
            "  checks          seq gaps {}, repeats {}, misrouted {}, closed {}, error frames {}, \
             other frames {}",
            r.seq_gaps, r.seq_repeats, r.misrouted, r.closed, r.errors, r.other_frames
        );
        for sample in r.samples.iter().chain(&p.samples) {
            println!("    {sample}");
        }
        for problem in &stopped.problems {
            println!("  server stop     {problem}");
        }
        let failures = self.failures(args);
        if failures.is_empty() && stopped.clean() {
            println!("  result          ok");
        } else {
            println!("  result          FAILED: {}", failures.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_fields_of_a_message_frame() {
        let body = message_body(1_234_567);
        let body: Value = serde_json::from_slice(&body).unwrap();
        let content = body["content"].as_str().unwrap();
        let frame = json!({
            "type": "message",
            "thread_id": "0197-a",
            "seq": 42,
            "message": {"id": "x", "thread_id": "0197-a", "seq": 42, "content": content},
        })
        .to_string();
        let expected = MessageFrame {
            thread_id: "0197-a",
            seq: 42,
            sent_ns: 1_234_567,
        };
        assert_eq!(MessageFrame::find(&frame), Some(expected));
        let spaced =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&frame).unwrap()).unwrap();
        assert_eq!(MessageFrame::find(&spaced), None);
        assert_eq!(
            MessageFrame::decode(&spaced),
            Some(MessageFrame {
                thread_id: "0197-a",
                seq: 42,
                sent_ns: 1_234_567
            })
        );
        assert_eq!(MessageFrame::find(r#"{"type":"pong"}"#), None);
    }

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("max"), Ok(Rate::Max));
        assert_eq!(parse_rate("1000"), Ok(Rate::Fixed(1000.0)));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
