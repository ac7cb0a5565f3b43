//! `post-messages`: how many messages Tandem accepts over HTTP, and how fast
//! it answers, when every message is committed before its `201 Created`.
//!
//! The benchmark creates `--threads` threads (100), then runs `--clients`
//! concurrent clients (64) for `--warmup-secs` (2) + `--duration-secs` (10).
//! Each client owns one keep-alive HTTP/1.1 connection and posts, one request
//! at a time, `POST /v1/threads/{id}/messages` with a short text body, taking
//! the threads round-robin from a counter shared by all clients.
//!
//! - *messages/s*: the 201s completed inside the measured window (after the
//!   warm-up), divided by its length.
//! - *latency*: of those same requests, from sending the request to reading
//!   the whole answer, in an HDR histogram (p50, p90, p99, max). The clients
//!   run a closed loop (a slow answer delays that client's next request), so
//!   these are the latencies the clients saw at the throughput they reached.
//! - *errors*: any answer other than 201, or a request that failed. One error
//!   makes the run exit non-zero, and so does a number of stored messages
//!   (read back over the API at the end, warm-up included) that differs from
//!   the number of 201s received.
//!
//! By default the real server runs in this process, with its default
//! configuration except for the admin rate limit (raised so that the limiter
//! is not what is measured), on a fresh store: a SQLite file in a new
//! temporary directory (`synchronous=FULL` with group commit unless
//! `--sqlite-synchronous normal`), or a new PostgreSQL schema that the
//! benchmark creates and drops. The clients share the machine and the tokio
//! runtime with the server: the figures are for server and load generator
//! together on that machine. With `--url` and `--token` the clients load an
//! already running server instead (it needs an admin token; the benchmark
//! leaves its threads and messages there).
//!
//! ```text
//! cargo build --release -p tandem-bench
//! target/release/post-messages --backend sqlite
//! target/release/post-messages --backend postgres \
//!     --database-url postgres://postgres@127.0.0.1:5432/test
//! target/release/post-messages --url http://127.0.0.1:8080 --token tdm_…
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use tandem_bench::procfs::{CpuSample, CpuUse};
use tandem_bench::server::{InProcessServer, StoreArgs};
use tandem_server::AppState;

/// The text every benchmark message carries (about the size of a chat line).
const MESSAGE_TEXT: &str = "Hello! I ordered a blue jacket last week and it has not arrived yet. \
     Could you tell me where it is?";

#[derive(Debug, Parser)]
#[command(
    name = "post-messages",
    about = "Messages posted over HTTP by concurrent keep-alive clients: throughput and latency"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Threads the messages are spread over.
    #[arg(long, default_value_t = 100)]
    threads: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// How long to post before measuring.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Base URL of an already running server to load instead of the
    /// in-process one (e.g. `http://127.0.0.1:8080`). Needs `--token`.
    #[arg(long, requires = "token")]
    url: Option<String>,
    /// An admin token of the server given with `--url` (unused without it).
    #[arg(long, env = "TANDEM_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("post-messages: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark; `Ok(false)` when it ran but found errors.
async fn run(args: Args) -> Result<bool> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.threads > 0, "--threads must be at least 1");
    ensure!(args.duration_secs > 0, "--duration-secs must be at least 1");

    let (target, server) = match (&args.url, &args.token) {
        (Some(url), Some(token)) => {
            let target = Target {
                base_url: url.trim_end_matches('/').to_owned(),
                token: token.clone(),
                label: format!("external server at {url}"),
            };
            (target, None)
        }
        _ => {
            let server = InProcessServer::start(
                &args.store,
                "post-messages",
                // The store's write path alone, as measured before the
                // reply path existed; `reply-latency` measures that path.
                |config| config.reply.enabled = false,
                |store, config| async move { Ok(AppState::new(store, config)) },
            )
            .await?;
            let target = Target {
                base_url: server.base_url.clone(),
                token: server.token.clone(),
                label: server.label.clone(),
            };
            (target, Some(server))
        }
    };

    let outcome = load_and_verify(&args, &target).await;
    // Stop the server and remove its data whatever happened above.
    let stopped = match server {
        Some(server) => server.stop().await,
        None => Ok(()),
    };
    let report = outcome?;
    report.print(&args, &target);
    stopped?;
    Ok(report.passed())
}

/// The server being loaded.
#[derive(Debug, Clone)]
struct Target {
    base_url: String,
    token: String,
    /// What the result block names as the backend.
    label: String,
}

/// An HTTP/1.1 client that keeps (at most) one connection open.
fn http_client(token: &str) -> Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, tandem_bench::bearer(token)?);
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

/// Creates the threads, runs the clients, and counts what was stored.
async fn load_and_verify(args: &Args, target: &Target) -> Result<Report> {
    let setup = http_client(&target.token)?;
    let thread_ids = tandem_bench::create_threads(&setup, &target.base_url, args.threads).await?;
    let message_urls: Arc<Vec<String>> = Arc::new(
        thread_ids
            .iter()
            .map(|id| format!("{}/v1/threads/{id}/messages", target.base_url))
            .collect(),
    );
    let body = bytes_of(&json!({ "content": MESSAGE_TEXT }))?;

    let start = Instant::now();
    let window = Window {
        measure_from: start + Duration::from_secs(args.warmup_secs),
        stop: start + Duration::from_secs(args.warmup_secs + args.duration_secs),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let http = http_client(&target.token)?;
        let urls = message_urls.clone();
        let next = next.clone();
        let body = body.clone();
        let stats = ClientStats::new()?;
        clients.push(tokio::spawn(async move {
            client_loop(http, urls, next, body, window, stats).await
        }));
    }
    // Where the CPU time went during the measured window.
    tokio::time::sleep_until(window.measure_from.into()).await;
    let cpu_from = CpuSample::take();
    tokio::time::sleep_until(window.stop.into()).await;
    let cpu = cpu_from
        .zip(CpuSample::take())
        .map(|(from, to)| to.since(&from));

    let mut total = ClientStats::new()?;
    for client in clients {
        let stats = client.await.context("a client task panicked")?;
        total.merge(stats)?;
    }
    let measured_secs = args.duration_secs as f64;

    let stored = count_stored(&setup, target, &thread_ids).await?;
    Ok(Report {
        stats: total,
        measured_secs,
        stored,
        cpu,
    })
}

/// When the measurement starts and when the clients stop sending.
#[derive(Debug, Clone, Copy)]
struct Window {
    measure_from: Instant,
    stop: Instant,
}

/// What one client saw (and, merged, what all of them saw).
struct ClientStats {
    /// Latency in microseconds of the 201s completed inside the window.
    latency_us: Histogram<u64>,
    /// 201s completed inside the window.
    measured: u64,
    /// Every 201, warm-up and the requests finishing after the window included.
    created: u64,
    /// Answers other than 201, and requests that failed.
    errors: u64,
    /// A few error descriptions, for the report.
    error_samples: Vec<String>,
}

impl ClientStats {
    fn new() -> Result<Self> {
        Ok(Self {
            // 1 µs to 10 min, 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .context("creating a histogram")?,
            measured: 0,
            created: 0,
            errors: 0,
            error_samples: Vec::new(),
        })
    }

    fn error(&mut self, description: String) {
        self.errors += 1;
        tandem_bench::keep_sample(&mut self.error_samples, description);
    }

    fn merge(&mut self, other: ClientStats) -> Result<()> {
        self.latency_us
            .add(&other.latency_us)
            .context("merging histograms")?;
        self.measured += other.measured;
        self.created += other.created;
        self.errors += other.errors;
        for sample in other.error_samples {
            tandem_bench::keep_sample(&mut self.error_samples, sample);
        }
        Ok(())
    }
}

/// One client: posts one message at a time on its own connection until the
/// window closes.
async fn client_loop(
    http: reqwest::Client,
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    body: bytes::Bytes,
    window: Window,
    mut stats: ClientStats,
) -> ClientStats {
    loop {
        let sent = Instant::now();
        if sent >= window.stop {
            break;
        }
        let url = &urls[next.fetch_add(1, Ordering::Relaxed) % urls.len()];
        let result = http
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                stats.error(format!("POST {url}: {e}"));
                continue;
            }
        };
        let status = response.status();
        // Read the whole answer so that the connection can carry the next request.
        let answer = response.bytes().await;
        let done = Instant::now();
        match answer {
            Ok(_) if status == StatusCode::CREATED => {
                stats.created += 1;
                if window.measure_from <= done && done <= window.stop {
                    stats.measured += 1;
                    let micros = u64::try_from((done - sent).as_micros()).unwrap_or(u64::MAX);
                    stats.latency_us.saturating_record(micros.max(1));
                }
            }
            Ok(answer) => {
                let text = String::from_utf8_lossy(&answer);
                let text: String = text.chars().take(300).collect();
                stats.error(format!("POST {url}: {status}: {text}"));
            }
            Err(e) => stats.error(format!("POST {url}: {status}, reading the body: {e}")),
        }
    }
    stats
}

fn bytes_of(value: &Value) -> Result<bytes::Bytes> {
    Ok(serde_json::to_vec(value)
        .context("encoding a request body")?
        .into())
}

/// Pages through every thread's messages and returns how many there are,
/// checking on the way that `seq` strictly increases within each thread.
async fn count_stored(
    http: &reqwest::Client,
    target: &Target,
    thread_ids: &[String],
) -> Result<u64> {
    let counts: Vec<u64> = futures::stream::iter(thread_ids)
        .map(|id| async move {
            let url = format!("{}/v1/threads/{id}/messages", target.base_url);
            let mut after_seq = 0_i64;
            let mut count = 0_u64;
            loop {
                let response = http
                    .get(&url)
                    .query(&[("after_seq", after_seq), ("limit", 500)])
                    .send()
                    .await
                    .with_context(|| format!("GET {url}"))?;
                let status = response.status();
                let text = response
                    .text()
                    .await
                    .with_context(|| format!("GET {url}: reading the answer"))?;
                if status != StatusCode::OK {
                    bail!("GET {url}: expected 200, got {status}: {text}");
                }
                let page: Value = serde_json::from_str(&text)
                    .with_context(|| format!("GET {url}: decoding the answer"))?;
                let messages = page["messages"]
                    .as_array()
                    .with_context(|| format!("GET {url}: no messages in the answer"))?;
                for message in messages {
                    let seq = message["seq"]
                        .as_i64()
                        .with_context(|| format!("GET {url}: a message without seq"))?;
                    ensure!(
                        seq > after_seq,
                        "thread {id}: seq {seq} follows {after_seq}"
                    );
                    after_seq = seq;
                    count += 1;
                }
                if page["has_more"] != Value::Bool(true) {
                    return Ok(count);
                }
            }
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    Ok(counts.iter().sum())
}

/// The figures of one run.
struct Report {
    stats: ClientStats,
    measured_secs: f64,
    /// Messages found in the threads at the end.
    stored: u64,
    /// CPU use during the measured window, where `/proc` tells it.
    cpu: Option<CpuUse>,
}

impl Report {
    fn passed(&self) -> bool {
        self.stats.errors == 0 && self.stored == self.stats.created && self.stats.measured > 0
    }

    fn print(&self, args: &Args, target: &Target) {
        let stats = &self.stats;
        let ms = |quantile: f64| stats.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
        println!("post-messages");
        println!("  backend        {}", target.label);
        println!("  clients        {}", args.clients);
        println!("  threads        {}", args.threads);
        println!(
            "  duration       {} s measured, after {} s of warm-up",
            args.duration_secs, args.warmup_secs
        );
        println!("  messages       {}", stats.measured);
        println!(
            "  messages/s     {:.0}",
            stats.measured as f64 / self.measured_secs
        );
        println!("  latency p50    {:.2} ms", ms(0.50));
        println!("  latency p90    {:.2} ms", ms(0.90));
        println!("  latency p99    {:.2} ms", ms(0.99));
        println!(
            "  latency max    {:.2} ms",
            stats.latency_us.max() as f64 / 1000.0
        );
        if let Some(cpu) = &self.cpu {
            println!(
                "  cpu            this process {:.2} cores; machine ({} cores) {:.0}% busy, \
                 {:.0}% steal, {:.0}% idle",
                cpu.process_cores,
                cpu.machine_cores,
                cpu.busy * 100.0,
                cpu.steal * 100.0,
                cpu.idle * 100.0,
            );
        }
        println!("  errors         {}", stats.errors);
        for sample in &stats.error_samples {
            println!("    {sample}");
        }
        let verdict = if self.stored == stats.created {
            "ok"
        } else {
            "MISMATCH"
        };
        println!(
            "  stored         {} messages for {} answered 201 (warm-up included): {verdict}",
            self.stored, stats.created
        );
    }
}
