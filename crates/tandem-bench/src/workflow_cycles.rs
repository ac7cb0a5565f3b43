//! `workflow-cycles`: human-in-the-loop workflow cycles per second, and how
//! fast a run completes once its event arrives.
//!
//! One *cycle*: a client starts a run over HTTP (`POST /v1/workflows`), the
//! run journals three steps and waits for the event `approve`; the client,
//! subscribed to the run's `workflow:<id>` topic on its WebSocket, sees the
//! run `waiting`, delivers the event over HTTP
//! (`POST /v1/workflows/{id}/events/approve`), and sees it `completed`.
//! `--clients` (64) clients run cycles back to back for `--warmup-secs` (2)
//! + `--duration-secs` (10).
//!
//! - *cycles/s*: the cycles completed inside the measured window, divided by
//!   its length.
//! - *event → completed*: from sending the event's POST to reading the
//!   `completed` frame, in an HDR histogram (p50, p90, p99, max); and the
//!   same span as the server recorded it (the event's `received_at` to the
//!   run's `finished_at`), for every run of the window read back at the end.
//! - *errors*: any unexpected answer or frame; one makes the run exit
//!   non-zero, and so does a run of the window that is not `completed` with
//!   its four journal entries when read back.
//!
//! The real server runs in this process (its default configuration, the
//! admin rate limit and the hub's per-connection frame limit raised so the
//! limiters are not what is measured), with the
//! benchmark's workflow registered, on a fresh store: a SQLite file in a new
//! temporary directory, or a new PostgreSQL schema it drops at the end.
//!
//! ```text
//! cargo build --release -p tandem-bench
//! target/release/workflow-cycles --backend sqlite
//! target/release/workflow-cycles --backend postgres \
//!     --database-url postgres://postgres@127.0.0.1:5432/test
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Value, json};
use tandem_bench::bearer;
use tandem_bench::procfs::{CpuSample, CpuUse};
use tandem_bench::server::{InProcessServer, StoreArgs};
use tandem_server::AppState;
use tandem_workflows::{Registry, Wakeup, WorkflowDef};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The benchmark's workflow.
const WORKFLOW: &str = "approval_cycle";

#[derive(Debug, Parser)]
#[command(
    name = "workflow-cycles",
    about = "Human-in-the-loop workflow cycles over HTTP: throughput and event-to-completion latency"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Concurrent clients, each with a keep-alive HTTP connection and a
    /// WebSocket.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Runs of the workflow executing at once on the server.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("workflow-cycles: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Three journaled steps, a wait for `approve` (deadline an hour), done.
fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(WorkflowDef::new(
        WORKFLOW,
        "1",
        |ctx, args: Value| async move {
            for step in ["check", "reserve", "notify"] {
                let _: Value = ctx
                    .run(step, |info| async move {
                        Ok(json!({"step": step, "key": info.idempotency_key}))
                    })
                    .await?;
            }
            let decision = ctx
                .wait_for_event("approve", Some(Duration::from_secs(3600)))
                .await?;
            let approved = match decision {
                Wakeup::Event(payload) => payload,
                Wakeup::TimedOut => Value::Null,
            };
            Ok(json!({"args": args, "approved": approved}))
        },
    ));
    registry
}

async fn run(args: Args) -> Result<bool> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.duration_secs > 0, "--duration-secs must be at least 1");
    let concurrency = args.concurrency;
    let server = InProcessServer::start(
        &args.store,
        "workflow-cycles",
        |config| {
            // Its own workflow only: no `reply` run per posted message.
            config.reply.enabled = false;
            // Each client subscribes and unsubscribes once per cycle, far
            // above the hub's per-connection frame limit for browsers.
            config.hub.frames_per_second = 1_000_000;
            config.hub.frames_burst = 1_000_000;
            config.workflows.engine.default_concurrency = concurrency;
        },
        |store, config| async move {
            AppState::build(store, config, registry())
                .await
                .context("building the server")
        },
    )
    .await?;
    let outcome = load(&args, &server).await;
    let stopped = server.stop().await;
    let report = outcome?;
    report.print(&args);
    stopped?;
    Ok(report.passed())
}

/// What one client measured.
struct ClientStats {
    /// Event sent → `completed` frame, µs, cycles in the window.
    event_to_done_us: Histogram<u64>,
    /// Start sent → `completed` frame, µs, cycles in the window.
    cycle_us: Histogram<u64>,
    /// Runs whose cycle completed in the window.
    measured: Vec<String>,
    errors: u64,
    error_samples: Vec<String>,
}

impl ClientStats {
    fn new() -> Result<Self> {
        Ok(Self {
            event_to_done_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            cycle_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            measured: Vec::new(),
            errors: 0,
            error_samples: Vec::new(),
        })
    }

    fn merge(&mut self, other: ClientStats) -> Result<()> {
        self.event_to_done_us.add(&other.event_to_done_us)?;
        self.cycle_us.add(&other.cycle_us)?;
        self.measured.extend(other.measured);
        self.errors += other.errors;
        for sample in other.error_samples {
            tandem_bench::keep_sample(&mut self.error_samples, sample);
        }
        Ok(())
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn load(args: &Args, server: &InProcessServer) -> Result<Report> {
    let origin = Instant::now();
    let measure_from = origin + Duration::from_secs(args.warmup_secs);
    let stop_at = measure_from + Duration::from_secs(args.duration_secs);
    let mut clients = Vec::new();
    for n in 0..args.clients {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, bearer(&server.token)?);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .http1_only()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?;
        let ws_url = format!("{}/v1/ws", server.base_url.replacen("http", "ws", 1));
        let mut request = ws_url.as_str().into_client_request()?;
        request
            .headers_mut()
            .insert(AUTHORIZATION, bearer(&server.token)?);
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("opening a WebSocket")?;
        let base = server.base_url.clone();
        clients.push(tokio::spawn(async move {
            client_loop(n, http, ws, base, measure_from, stop_at).await
        }));
    }
    let cpu_start = CpuSample::take();
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_from = CpuSample::take().or(cpu_start);
    tokio::time::sleep_until(stop_at.into()).await;
    let cpu = match (cpu_from, CpuSample::take()) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    let mut stats = ClientStats::new()?;
    for client in clients {
        stats.merge(client.await.context("a client panicked")??)?;
    }
    let server_side = verify(server, &mut stats).await?;
    Ok(Report {
        stats,
        server_side,
        measured_secs: args.duration_secs as f64,
        cpu,
        label: server.label.clone(),
    })
}

async fn client_loop(
    n: usize,
    http: reqwest::Client,
    mut ws: Ws,
    base: String,
    measure_from: Instant,
    stop_at: Instant,
) -> Result<ClientStats> {
    let mut stats = ClientStats::new()?;
    let mut cycle = 0u64;
    while Instant::now() < stop_at {
        cycle += 1;
        let started = Instant::now();
        match one_cycle(&http, &mut ws, &base, json!({"client": n, "cycle": cycle})).await {
            Ok((id, event_sent)) => {
                let done = Instant::now();
                if done >= measure_from && done < stop_at {
                    stats.event_to_done_us.record(micros(done - event_sent))?;
                    stats.cycle_us.record(micros(done - started))?;
                    stats.measured.push(id);
                }
            }
            Err(e) => {
                stats.errors += 1;
                tandem_bench::keep_sample(&mut stats.error_samples, format!("{e:#}"));
                if stats.errors > 100 {
                    break;
                }
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(stats)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// One cycle; returns the run id and when its event was sent.
async fn one_cycle(
    http: &reqwest::Client,
    ws: &mut Ws,
    base: &str,
    args: Value,
) -> Result<(String, Instant)> {
    let response = http
        .post(format!("{base}/v1/workflows"))
        .json(&json!({"name": WORKFLOW, "args": args}))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if status != StatusCode::CREATED {
        bail!("start: {status} {body}");
    }
    let id = body["id"].as_str().context("start: no run id")?.to_owned();
    let topic = format!("workflow:{id}");
    ws.send(Message::text(
        json!({"type": "subscribe", "topic": topic}).to_string(),
    ))
    .await?;
    wait_for(ws, &id, "waiting").await?;
    let event_sent = Instant::now();
    let response = http
        .post(format!("{base}/v1/workflows/{id}/events/approve"))
        .json(&json!({"payload": {"by": "bench"}}))
        .send()
        .await?;
    if response.status() != StatusCode::ACCEPTED {
        bail!("event: {} {}", response.status(), response.text().await?);
    }
    wait_for(ws, &id, "completed").await?;
    ws.send(Message::text(
        json!({"type": "unsubscribe", "topic": topic}).to_string(),
    ))
    .await?;
    Ok((id, event_sent))
}

/// Reads frames until the run `id` is reported in `status`.
async fn wait_for(ws: &mut Ws, id: &str, status: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no `{status}` frame for run {id} within 30 s"))?
            .context("the WebSocket closed")??;
        let Message::Text(text) = frame else { continue };
        let frame: Value = serde_json::from_str(text.as_str())?;
        match frame["type"].as_str() {
            Some("workflow") if frame["run"]["id"] == id => {
                let seen = frame["run"]["status"].as_str().unwrap_or_default();
                if seen == status {
                    return Ok(());
                }
                if matches!(seen, "failed" | "cancelled") {
                    bail!("run {id} {seen}: {}", frame["run"]["error"]);
                }
            }
            Some("error") => bail!("error frame: {frame}"),
            _ => {}
        }
    }
}

/// Reads back every run of the window: each must be `completed` with its
/// four journal entries. Returns the server-side event → finished latencies.
async fn verify(server: &InProcessServer, stats: &mut ClientStats) -> Result<Histogram<u64>> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, bearer(&server.token)?);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .build()?;
    let mut server_side = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    let ids = stats.measured.clone();
    let states =
        tandem_bench::read_runs(&http, &server.base_url, ids.iter().map(ToString::to_string)).await;
    for state in states {
        let state = state?;
        let journal = state["journal"].as_array().map_or(0, Vec::len);
        if state["status"] != "completed" || journal != 4 {
            stats.errors += 1;
            tandem_bench::keep_sample(
                &mut stats.error_samples,
                format!(
                    "run {} is {} with {journal} journal entries",
                    state["id"], state["status"]
                ),
            );
            continue;
        }
        let received: Option<DateTime<Utc>> = state["consumed_events"][0]["received_at"]
            .as_str()
            .and_then(|t| t.parse().ok());
        let finished: Option<DateTime<Utc>> =
            state["finished_at"].as_str().and_then(|t| t.parse().ok());
        if let (Some(received), Some(finished)) = (received, finished) {
            let us = (finished - received).num_microseconds().unwrap_or(0).max(1) as u64;
            server_side.record(us)?;
        }
    }
    Ok(server_side)
}

struct Report {
    stats: ClientStats,
    server_side: Histogram<u64>,
    measured_secs: f64,
    cpu: Option<CpuUse>,
    label: String,
}

impl Report {
    fn passed(&self) -> bool {
        self.stats.errors == 0 && !self.stats.measured.is_empty()
    }

    fn print(&self, args: &Args) {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let s = &self.stats;
        println!("workflow-cycles");
        println!("  backend            {}", self.label);
        println!("  clients            {}", args.clients);
        println!(
            "  duration           {} s measured, after {} s of warm-up",
            args.duration_secs, args.warmup_secs
        );
        println!("  cycles             {}", s.measured.len());
        println!(
            "  cycles/s           {:.0}",
            s.measured.len() as f64 / self.measured_secs
        );
        for (name, h) in [
            ("event → completed (client)", &s.event_to_done_us),
            ("event → completed (server)", &self.server_side),
            ("whole cycle (client)", &s.cycle_us),
        ] {
            println!(
                "  {name:<27} p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
        if let Some(cpu) = &self.cpu {
            println!(
                "  cpu                this process {:.2} cores; machine ({} cores) {:.0}% busy, {:.0}% steal",
                cpu.process_cores,
                cpu.machine_cores,
                cpu.busy * 100.0,
                cpu.steal * 100.0,
            );
        }
        println!("  errors             {}", s.errors);
        for sample in &s.error_samples {
            println!("    {sample}");
        }
    }
}
