//! `desk-handoff`: how fast a customer's message reaches every human agent's
//! inbox as a `handoff` item, and how many claims per second the desk takes
//! when agents race for the same items.
//!
//! The real server runs in this process with the reply path **on** and the
//! AI **off** (no `[ai]` endpoint configured; checked with `/readyz` before
//! the load): every customer message then starts a `reply` run that routes
//! the thread to humans and opens one `handoff` inbox item. The customer and
//! agent rate limits are raised out of reach (the limiters stay in the path).
//! Store: a SQLite file in a new temporary directory, or a new PostgreSQL
//! schema dropped at the end, as in the other benchmarks.
//!
//! **Phase 1, handoff → item at every agent.** `--agents` (200) agent
//! tokens, each with its own WebSocket subscribed to `inbox` (and read for
//! the whole run). `--customers` (1,000) customer tokens; each customer
//! creates a thread (`POST /v1/threads`) and posts one message in it
//! (`POST /v1/threads/{id}/messages`), on an open-loop schedule of `--rate`
//! customers per second (50; 0 = as fast as allowed) with at most
//! `--concurrency` (50) customers in flight. For every (item, agent) pair
//! the latency is from **the moment the customer's POST of the message
//! returned `201`** (this process's monotonic clock) to the moment that
//! agent's socket delivered the `inbox` frame opening the item: routing the
//! message through the reply workflow, the item's commit, the hub and the
//! socket, as the customer waits for it. Every agent must receive every
//! item: a missing delivery makes the run fail. Also shown: post → `201`,
//! `201` → the item's `created_at` (the server's clock; same process, same
//! clock), and `created_at` → frame read.
//!
//! **Phase 2, claims with contention.** Every item is raced by `--racers`
//! (4) distinct agents at once, each with its own keep-alive HTTP client:
//! `POST /v1/inbox/{id}/claim` (`200` = won, `409 already_claimed` = lost),
//! `--races` (16) items at a time. *Attempts/s* and *claims/s* (won) are
//! over the span from the first request to the last answer. Exactly one
//! winner per item is required, the item read back must be claimed by it,
//! and every agent's socket must show the item claimed by the winner; any
//! other outcome fails the run.
//!
//! Everything is bounded: `--timeout-secs` (300) for the whole load, after
//! which it stops by itself (a watchdog ends the process 60 s later if
//! even the shutdown hangs). Loopback only.
//!
//! ```text
//! cargo build --release -p tandem-bench
//! target/release/desk-handoff --backend sqlite
//! target/release/desk-handoff --backend postgres \
//!     --database-url postgres://postgres@127.0.0.1:5432/test
//! ```

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_bench::bearer;
use tandem_bench::procfs::{CpuSample, CpuUse};
use tandem_bench::server::{InProcessServer, StoreArgs};
use tandem_llm::LlmConfig;
use tandem_model::TokenSubject;
use tandem_server::config::Quota;
use tandem_store::Store;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

/// The issue's target for handoff → item at every agent, p99.
const TARGET_P99_MS: f64 = 50.0;

#[derive(Debug, Parser)]
#[command(
    name = "desk-handoff",
    about = "Customer message → handoff item at every agent's inbox socket; contended claims per second"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Agents, each with an agent token and a WebSocket on `inbox`.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Customers, each creating one thread and posting one message in it.
    #[arg(long, default_value_t = 1_000)]
    customers: usize,
    /// Customers in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Customers started per second (open-loop schedule, bounded by
    /// `--concurrency`); 0: as fast as `--concurrency` allows.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Agents racing for each item in the claim phase.
    #[arg(long, default_value_t = 4)]
    racers: usize,
    /// Items raced at once in the claim phase.
    #[arg(long, default_value_t = 16)]
    races: usize,
    /// Seconds to wait, after the last post (or the last claim), for frames
    /// still on their way.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// The whole load's time limit, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tandem_bench::exit_after("desk-handoff", Duration::from_secs(args.timeout_secs + 60));
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("desk-handoff: FAILED (see the report above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("desk-handoff: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    ensure!(args.agents > 0, "--agents must be at least 1");
    ensure!(args.customers > 0, "--customers must be at least 1");
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    ensure!(
        args.rate.is_finite() && args.rate >= 0.0,
        "--rate must be 0 or more"
    );
    ensure!(
        (1..=args.agents).contains(&args.racers),
        "--racers must be between 1 and --agents"
    );
    ensure!(args.races > 0, "--races must be at least 1");
    ensure!(args.timeout_secs > 0, "--timeout-secs must be at least 1");
    // A descriptor per agent socket and per HTTP connection, on both ends.
    let nofile = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let needed = 2 * (args.agents + args.concurrency + args.races * args.racers) + 256;
    if (nofile as usize) < needed {
        eprintln!("desk-handoff: warning: the open-file limit is {nofile}, below {needed}");
    }

    let (server, store) =
        InProcessServer::start_with_store(&args.store, "desk-handoff", |config| {
            // The reply path routes every customer message; with no model
            // endpoint every thread goes to humans as a `handoff` item.
            config.reply.enabled = true;
            config.ai = LlmConfig::default();
            let unlimited = Quota {
                per_second: 100_000_000,
                burst: 100_000_000,
            };
            config.rate_limits.customer = unlimited;
            config.rate_limits.agent = unlimited;
        })
        .await?;
    let outcome = match tokio::time::timeout(
        Duration::from_secs(args.timeout_secs),
        load(&args, &server, &store),
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow!(
            "the load did not finish within {} s (--timeout-secs)",
            args.timeout_secs
        )),
    };
    let stopped = tokio::time::timeout(Duration::from_secs(30), server.stop()).await;
    let report = outcome?;
    report.print(&args);
    match stopped {
        Ok(stopped) => stopped?,
        Err(_) => bail!("the server did not stop within 30 s"),
    }
    Ok(report.passed())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// `later − earlier` in µs (at least 1), and whether `later` came first.
fn span(earlier: Instant, later: Instant) -> (u64, bool) {
    match later.checked_duration_since(earlier) {
        Some(d) => (micros(d), false),
        None => (1, true),
    }
}

/// Wall-clock `later − earlier` in µs (at least 1), and whether it was
/// negative.
fn wall_span(earlier: DateTime<Utc>, later: DateTime<Utc>) -> (u64, bool) {
    let us = (later - earlier).num_microseconds().unwrap_or(i64::MAX);
    if us < 0 {
        (1, true)
    } else {
        (u64::try_from(us).unwrap_or(u64::MAX).max(1), false)
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The parts of a server frame this benchmark reads; anything else in it
/// is ignored.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: String,
    item: Option<ItemFrame>,
}

#[derive(Deserialize)]
struct ItemFrame {
    id: String,
    thread_id: String,
    kind: Option<String>,
    status: Option<String>,
    claimed_by: Option<String>,
    created_at: Option<String>,
}

/// An item's `open` frame as one agent read it.
struct Opened {
    thread_id: String,
    kind: Option<String>,
    at: Instant,
    wall: DateTime<Utc>,
    created_at: Option<DateTime<Utc>>,
}

/// What one agent's socket delivered.
#[derive(Default)]
struct AgentLog {
    /// By item id: the first frame showing it `open`.
    opened: HashMap<String, Opened>,
    /// By item id: the first frame showing it `claimed`, and by whom.
    claimed: HashMap<String, (Instant, Option<String>)>,
    /// Further frames about an item already seen in that status, and frames
    /// in other statuses.
    other_frames: u64,
    errors: u64,
    error_samples: Vec<String>,
    /// Why the socket ended, when the server ended it.
    closed: Option<String>,
}

impl AgentLog {
    fn error(&mut self, sample: String) {
        self.errors += 1;
        tandem_bench::keep_sample(&mut self.error_samples, sample);
    }
}

#[derive(Default)]
struct Counters {
    /// (agent, item) pairs seen `open`.
    opened: AtomicUsize,
    /// (agent, item) pairs seen `claimed`.
    claimed: AtomicUsize,
}

struct Agent {
    name: String,
    http: reqwest::Client,
    log: Arc<Mutex<AgentLog>>,
    reader: JoinHandle<()>,
}

fn lock(log: &Mutex<AgentLog>) -> std::sync::MutexGuard<'_, AgentLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens `name`'s socket, subscribes it to `inbox` and starts reading it.
async fn connect_agent(
    base: &str,
    name: String,
    token: String,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) -> Result<Agent> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, bearer(&token)?);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let ws_url = format!("{}/v1/ws", base.replacen("http", "ws", 1));
    let mut request = ws_url.as_str().into_client_request()?;
    request.headers_mut().insert(AUTHORIZATION, bearer(&token)?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("{name}: opening a WebSocket"))?;
    ws.send(Message::text(
        json!({"type": "subscribe", "topic": "inbox"}).to_string(),
    ))
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("{name}: no `subscribed` within 30 s"))?
            .with_context(|| format!("{name}: the WebSocket closed"))??;
        let Message::Text(text) = frame else { continue };
        let frame: Value = serde_json::from_str(text.as_str())?;
        match frame["type"].as_str() {
            Some("subscribed") if frame["topic"] == "inbox" => {
                // A fresh store: no pending item to start from.
                let items = frame["items"].as_u64().unwrap_or(0);
                ensure!(items == 0, "{name}: the inbox starts with {items} items");
                break;
            }
            Some("error") => bail!("{name}: error frame: {frame}"),
            _ => {}
        }
    }
    let log = Arc::new(Mutex::new(AgentLog::default()));
    let reader = tokio::spawn(read_inbox(ws, log.clone(), counters, cancel));
    Ok(Agent {
        name,
        http,
        log,
        reader,
    })
}

/// Reads an agent's socket until `cancel`, noting every item frame.
async fn read_inbox(
    mut ws: Ws,
    log: Arc<Mutex<AgentLog>>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            next = ws.next() => next,
        };
        let at = Instant::now();
        let wall = Utc::now();
        match next {
            Some(Ok(Message::Text(text))) => note(text.as_str(), at, wall, &log, &counters),
            Some(Ok(Message::Close(close))) => {
                lock(&log).closed = Some(format!("closed by the server: {close:?}"));
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                lock(&log).closed = Some(format!("socket error: {e}"));
                break;
            }
            None => {
                lock(&log).closed = Some("the socket ended".into());
                break;
            }
        }
    }
    let _ = ws.close(None).await;
}

fn note(text: &str, at: Instant, wall: DateTime<Utc>, log: &Mutex<AgentLog>, counters: &Counters) {
    let frame: Frame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => {
            lock(log).error(format!("undecodable frame ({e}): {text}"));
            return;
        }
    };
    match (frame.kind.as_str(), frame.item) {
        ("inbox", Some(item)) => {
            let mut log = lock(log);
            match item.status.as_deref() {
                Some("open") if !log.opened.contains_key(&item.id) => {
                    let created_at = item.created_at.as_deref().and_then(|t| t.parse().ok());
                    log.opened.insert(
                        item.id,
                        Opened {
                            thread_id: item.thread_id,
                            kind: item.kind,
                            at,
                            wall,
                            created_at,
                        },
                    );
                    counters.opened.fetch_add(1, Ordering::Relaxed);
                }
                Some("claimed") if !log.claimed.contains_key(&item.id) => {
                    log.claimed.insert(item.id, (at, item.claimed_by));
                    counters.claimed.fetch_add(1, Ordering::Relaxed);
                }
                _ => log.other_frames += 1,
            }
        }
        ("inbox", None) => lock(log).error(format!("an inbox frame without an item: {text}")),
        ("error", _) => lock(log).error(format!("error frame: {text}")),
        _ => {}
    }
}

/// One customer's message.
struct Post {
    thread_id: String,
    /// The POST of the message: sent, and its `201` read.
    sent: Instant,
    returned: Instant,
    returned_wall: DateTime<Utc>,
    /// How late the customer started against its schedule.
    late: Duration,
}

/// One customer: a thread of its own, one message in it.
async fn customer(http: &reqwest::Client, base: &str, n: usize, token: &str) -> Result<Post> {
    let auth = bearer(token)?;
    let response = http
        .post(format!("{base}/v1/threads"))
        .header(AUTHORIZATION, auth.clone())
        .json(&json!({"title": format!("Customer {n}")}))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if status != StatusCode::CREATED {
        bail!("customer {n}: create a thread: {status} {text}");
    }
    let thread: Value = serde_json::from_str(&text)?;
    let thread_id = thread["id"]
        .as_str()
        .with_context(|| format!("customer {n}: no thread id in {text}"))?
        .to_owned();
    let sent = Instant::now();
    let response = http
        .post(format!("{base}/v1/threads/{thread_id}/messages"))
        .header(AUTHORIZATION, auth)
        .json(&json!({
            "content": format!("Customer {n} here: my parcel never arrived, I need a person please.")
        }))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    let returned = Instant::now();
    let returned_wall = Utc::now();
    if status != StatusCode::CREATED {
        bail!("customer {n}: post: {status} {text}");
    }
    Ok(Post {
        thread_id,
        sent,
        returned,
        returned_wall,
        late: Duration::ZERO,
    })
}

/// Mints one token per subject, a few at a time, in order.
async fn mint(store: &Store, subjects: Vec<TokenSubject>) -> Result<Vec<String>> {
    futures::stream::iter(subjects)
        .map(|subject| async move {
            Ok::<_, anyhow::Error>(
                store
                    .create_token(subject, Some("desk-handoff benchmark".into()))
                    .await
                    .context("minting a token")?
                    .secret,
            )
        })
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// `/readyz` must say that the reply path is on and the AI off.
async fn check_ai_off(base: &str) -> Result<String> {
    let readiness: Value = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("{base}/readyz"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let reason = readiness["ai"]["reason"].as_str().unwrap_or_default();
    ensure!(
        readiness["ai"]["enabled"] == false && reason.contains("no OpenAI-compatible endpoint"),
        "expected the reply path on and the AI off, /readyz says {readiness}"
    );
    Ok(reason.to_owned())
}

/// Waits until `counter` reaches `target` or `deadline` passes.
async fn wait_for(counter: &AtomicUsize, target: usize, deadline: Instant) {
    while counter.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn cpu_between(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<CpuUse> {
    match (a, b) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    }
}

async fn load(args: &Args, server: &InProcessServer, store: &Store) -> Result<Report> {
    let cancel = CancellationToken::new();
    // However `load` ends, the agents' readers stop and close their sockets.
    let _stop_readers = cancel.clone().drop_guard();
    let base = server.base_url.clone();
    let readiness = check_ai_off(&base).await?;
    let mut errors = Errors::default();

    let names: Vec<String> = (0..args.agents).map(|n| format!("agent-{n:03}")).collect();
    let agent_tokens = mint(
        store,
        names
            .iter()
            .map(|name| TokenSubject::Agent { name: name.clone() })
            .collect(),
    )
    .await?;
    let customer_tokens = mint(
        store,
        (0..args.customers)
            .map(|n| TokenSubject::Customer {
                customer_id: format!("customer-{n:04}"),
            })
            .collect(),
    )
    .await?;

    let counters = Arc::new(Counters::default());
    let connect_started = Instant::now();
    let agents: Vec<Agent> = futures::stream::iter(names.into_iter().zip(agent_tokens))
        .map(|(name, token)| connect_agent(&base, name, token, counters.clone(), cancel.clone()))
        .buffered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let connect_secs = connect_started.elapsed().as_secs_f64();

    // Phase 1: customers post, every agent's socket gets every item.
    let http = reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;
    let cpu_start = CpuSample::take();
    let origin = Instant::now();
    let rate = args.rate;
    let outcomes: Vec<Result<Post>> = futures::stream::iter(customer_tokens.iter().enumerate())
        .map(|(n, token)| {
            let http = &http;
            let base = &base;
            async move {
                let due = if rate > 0.0 {
                    origin + Duration::from_secs_f64(n as f64 / rate)
                } else {
                    origin
                };
                tokio::time::sleep_until(due.into()).await;
                let late = Instant::now().saturating_duration_since(due);
                let mut post = customer(http, base, n, token).await?;
                post.late = late;
                Ok(post)
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let posted_at = Instant::now();
    let mut posts = Vec::with_capacity(outcomes.len());
    for outcome in outcomes {
        match outcome {
            Ok(post) => posts.push(post),
            Err(e) => errors.add(format!("{e:#}")),
        }
    }
    let expected_pairs = posts.len() * agents.len();
    wait_for(
        &counters.opened,
        expected_pairs,
        posted_at + Duration::from_secs(args.drain_secs),
    )
    .await;
    let cpu_handoff = cpu_between(cpu_start, CpuSample::take());
    let handoff_secs = origin.elapsed().as_secs_f64();
    let handoff = handoffs(&posts, &agents, &mut errors)?;
    if handoff.missing > 0 {
        explain_missing(&http, server, &handoff.never_seen, &mut errors).await;
    }

    // Phase 2: agents race for every item.
    let cpu_start = CpuSample::take();
    let claims_started = Instant::now();
    let items = handoff.items.clone();
    let races: Vec<Race> = futures::stream::iter(items.iter().enumerate())
        .map(|(i, item)| race(&agents, &base, i, item, args.racers))
        .buffer_unordered(args.races)
        .collect()
        .await;
    let claims_secs = claims_started.elapsed().as_secs_f64();
    let cpu_claims = cpu_between(cpu_start, CpuSample::take());
    let claims = check_claims(&items, races, &agents, &mut errors)?;
    wait_for(
        &counters.claimed,
        claims.winners.len() * agents.len(),
        Instant::now() + Duration::from_secs(args.drain_secs),
    )
    .await;
    let claimed_frames = claimed_frames(&claims, &agents, &mut errors)?;
    let read_back = read_back(server, &claims, &mut errors).await?;

    cancel.cancel();
    let mut closed = 0;
    let mut other_frames = 0;
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(10), agent.reader).await;
        let log = lock(&agent.log);
        if let Some(reason) = &log.closed {
            closed += 1;
            errors.add(format!("{}: {reason}", agent.name));
        }
        other_frames += log.other_frames;
        errors.count += log.errors;
        for sample in &log.error_samples {
            errors.add_sample(format!("{}: {sample}", agent.name));
        }
    }
    Ok(Report {
        label: server.label.clone(),
        readiness,
        connect_secs,
        customers: args.customers,
        posted: posts.len(),
        late: posts
            .iter()
            .filter(|p| p.late > Duration::from_millis(10))
            .count(),
        handoff_secs,
        handoff,
        cpu_handoff,
        claims,
        claims_secs,
        cpu_claims,
        claimed_frames,
        read_back,
        closed,
        other_frames,
        errors,
    })
}

#[derive(Default)]
struct Errors {
    count: u64,
    samples: Vec<String>,
}

impl Errors {
    fn add(&mut self, sample: String) {
        self.count += 1;
        self.add_sample(sample);
    }

    fn add_sample(&mut self, sample: String) {
        tandem_bench::keep_sample(&mut self.samples, sample);
    }
}

/// Phase 1's figures.
struct Handoffs {
    /// The item of each posted thread that some agent saw, in post order.
    items: Vec<String>,
    /// POST returned → `open` frame read, per (item, agent), µs.
    latency: Histogram<u64>,
    /// Frames read before their POST's `201` was (counted as 1 µs).
    early: u64,
    /// POST sent → `201`, per message.
    post: Histogram<u64>,
    /// `201` read → the item's `created_at`, per item.
    routing: Histogram<u64>,
    routing_negative: u64,
    /// The item's `created_at` → frame read, per (item, agent).
    push: Histogram<u64>,
    expected: usize,
    delivered: usize,
    missing: usize,
    /// Posted threads whose item no agent saw.
    never_seen: Vec<String>,
}

fn handoffs(posts: &[Post], agents: &[Agent], errors: &mut Errors) -> Result<Handoffs> {
    let by_thread: HashMap<&str, &Post> = posts.iter().map(|p| (p.thread_id.as_str(), p)).collect();
    let mut item_of: HashMap<String, String> = HashMap::new();
    let mut created_of: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut latency = histogram()?;
    let mut push = histogram()?;
    let mut early = 0;
    let mut delivered = 0;
    let mut seen_by_agent: Vec<HashSet<String>> = Vec::with_capacity(agents.len());
    for agent in agents {
        let log = lock(&agent.log);
        let mut seen = HashSet::new();
        for (item, opened) in &log.opened {
            let Some(post) = by_thread.get(opened.thread_id.as_str()) else {
                errors.add(format!(
                    "{}: item {item} is for thread {}, which no customer posted in",
                    agent.name, opened.thread_id
                ));
                continue;
            };
            if opened.kind.as_deref() != Some("handoff") {
                errors.add(format!(
                    "{}: item {item} is a {:?}, not a handoff",
                    agent.name, opened.kind
                ));
            }
            match item_of.get(&opened.thread_id) {
                Some(known) if known != item => {
                    errors.add(format!(
                        "thread {} has two items: {known} and {item}",
                        opened.thread_id
                    ));
                    continue;
                }
                Some(_) => {}
                None => {
                    item_of.insert(opened.thread_id.clone(), item.clone());
                }
            }
            delivered += 1;
            seen.insert(opened.thread_id.clone());
            let (us, before) = span(post.returned, opened.at);
            latency.record(us)?;
            early += u64::from(before);
            match opened.created_at {
                Some(created) => {
                    created_of.entry(item.clone()).or_insert(created);
                    push.record(wall_span(created, opened.wall).0)?;
                }
                None => errors.add(format!("item {item}: no created_at")),
            }
        }
        seen_by_agent.push(seen);
    }
    let mut post = histogram()?;
    let mut routing = histogram()?;
    let mut routing_negative = 0;
    let mut items = Vec::new();
    let mut missing = 0;
    let mut never_seen = Vec::new();
    for p in posts {
        post.record(span(p.sent, p.returned).0)?;
        let lacking = seen_by_agent
            .iter()
            .filter(|seen| !seen.contains(&p.thread_id))
            .count();
        missing += lacking;
        match item_of.get(&p.thread_id) {
            Some(item) => {
                items.push(item.clone());
                if let Some(created) = created_of.get(item) {
                    let (us, negative) = wall_span(p.returned_wall, *created);
                    routing.record(us)?;
                    routing_negative += u64::from(negative);
                }
            }
            None => never_seen.push(p.thread_id.clone()),
        }
    }
    Ok(Handoffs {
        items,
        latency,
        early,
        post,
        routing,
        routing_negative,
        push,
        expected: posts.len() * agents.len(),
        delivered,
        missing,
        never_seen,
    })
}

/// For a few threads whose item no agent saw: what the store holds.
async fn explain_missing(
    http: &reqwest::Client,
    server: &InProcessServer,
    threads: &[String],
    errors: &mut Errors,
) {
    for thread in threads.iter().take(tandem_bench::MAX_ERROR_SAMPLES) {
        let url = format!("{}/v1/inbox?thread_id={thread}&limit=10", server.base_url);
        let found = async {
            let response = http
                .get(&url)
                .header(AUTHORIZATION, bearer(&server.token)?)
                .send()
                .await?;
            Ok::<_, anyhow::Error>(format!("{} {}", response.status(), response.text().await?))
        }
        .await;
        errors.add_sample(format!(
            "no agent saw an item for thread {thread}; GET /v1/inbox?thread_id= says: {}",
            match found {
                Ok(text) => text,
                Err(e) => format!("{e:#}"),
            }
        ));
    }
}

/// One claim attempt's outcome.
enum Attempt {
    Won { agent: usize, at: Instant },
    Lost,
    Failed(String),
}

/// One item raced by `racers` agents at once.
struct Race {
    item: String,
    attempts: Vec<(Attempt, Duration)>,
}

async fn race(agents: &[Agent], base: &str, i: usize, item: &str, racers: usize) -> Race {
    let attempts = futures::future::join_all((0..racers).map(|j| {
        let n = (i * racers + j) % agents.len();
        claim(&agents[n], n, base, item)
    }))
    .await;
    Race {
        item: item.to_owned(),
        attempts,
    }
}

async fn claim(agent: &Agent, n: usize, base: &str, item: &str) -> (Attempt, Duration) {
    let started = Instant::now();
    let outcome = async {
        let response = agent
            .http
            .post(format!("{base}/v1/inbox/{item}/claim"))
            .json(&json!({}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        Ok::<_, anyhow::Error>((status, body))
    }
    .await;
    let at = Instant::now();
    let attempt = match outcome {
        Ok((StatusCode::OK, body)) if body["claimed_by"] == agent.name.as_str() => {
            Attempt::Won { agent: n, at }
        }
        Ok((StatusCode::CONFLICT, body)) if body["error"]["code"] == "already_claimed" => {
            Attempt::Lost
        }
        Ok((status, body)) => {
            Attempt::Failed(format!("{} claiming {item}: {status} {body}", agent.name))
        }
        Err(e) => Attempt::Failed(format!("{} claiming {item}: {e:#}", agent.name)),
    };
    (attempt, at - started)
}

/// Phase 2's figures.
struct Claims {
    attempts: usize,
    won: usize,
    lost: usize,
    failed: usize,
    /// Items with exactly one winner: item, winning agent, when its `200`
    /// was read.
    winners: Vec<(String, usize, Instant)>,
    /// Items without exactly one winner.
    not_one_winner: usize,
    latency: Histogram<u64>,
}

fn check_claims(
    items: &[String],
    races: Vec<Race>,
    agents: &[Agent],
    errors: &mut Errors,
) -> Result<Claims> {
    let mut claims = Claims {
        attempts: 0,
        won: 0,
        lost: 0,
        failed: 0,
        winners: Vec::with_capacity(items.len()),
        not_one_winner: 0,
        latency: histogram()?,
    };
    for race in races {
        let mut winners = Vec::new();
        for (attempt, took) in race.attempts {
            claims.attempts += 1;
            claims.latency.record(micros(took))?;
            match attempt {
                Attempt::Won { agent, at } => {
                    claims.won += 1;
                    winners.push((agent, at));
                }
                Attempt::Lost => claims.lost += 1,
                Attempt::Failed(sample) => {
                    claims.failed += 1;
                    errors.add(sample);
                }
            }
        }
        if let [(agent, at)] = winners[..] {
            claims.winners.push((race.item, agent, at));
        } else {
            claims.not_one_winner += 1;
            let names: Vec<&str> = winners
                .iter()
                .map(|(n, _)| agents[*n].name.as_str())
                .collect();
            errors.add(format!(
                "item {}: {} winners ({names:?}), expected exactly one",
                race.item,
                winners.len()
            ));
        }
    }
    Ok(claims)
}

/// The `claimed` frames of phase 2 at every agent.
struct ClaimedFrames {
    expected: usize,
    delivered: usize,
    missing: usize,
    wrong_holder: usize,
    /// The winner's `200` read → the `claimed` frame read, per (item, agent).
    latency: Histogram<u64>,
    early: u64,
}

fn claimed_frames(claims: &Claims, agents: &[Agent], errors: &mut Errors) -> Result<ClaimedFrames> {
    let mut frames = ClaimedFrames {
        expected: claims.winners.len() * agents.len(),
        delivered: 0,
        missing: 0,
        wrong_holder: 0,
        latency: histogram()?,
        early: 0,
    };
    for agent in agents {
        let log = lock(&agent.log);
        for (item, winner, won_at) in &claims.winners {
            match log.claimed.get(item) {
                Some((at, holder)) => {
                    if holder.as_deref() != Some(agents[*winner].name.as_str()) {
                        frames.wrong_holder += 1;
                        errors.add(format!(
                            "{}: item {item} shown claimed by {holder:?}, won by {}",
                            agent.name, agents[*winner].name
                        ));
                    }
                    frames.delivered += 1;
                    let (us, before) = span(*won_at, *at);
                    frames.latency.record(us)?;
                    frames.early += u64::from(before);
                }
                None => frames.missing += 1,
            }
        }
    }
    if frames.missing > 0 {
        errors.add(format!(
            "{} `claimed` frames never reached their agent",
            frames.missing
        ));
    }
    Ok(frames)
}

/// Reads every won item back: it must be claimed by its winner. Returns
/// how many were.
async fn read_back(
    server: &InProcessServer,
    claims: &Claims,
    errors: &mut Errors,
) -> Result<usize> {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, bearer(&server.token)?);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = &server.base_url;
    let read: Vec<(usize, Result<Value>)> =
        futures::stream::iter(claims.winners.iter().enumerate())
            .map(|(i, (item, _, _))| {
                let http = &http;
                async move {
                    let item = async {
                        Ok(http
                            .get(format!("{base}/v1/inbox/{item}"))
                            .send()
                            .await?
                            .error_for_status()?
                            .json::<Value>()
                            .await?)
                    }
                    .await;
                    (i, item)
                }
            })
            .buffered(16)
            .collect()
            .await;
    let mut good = 0;
    for (i, item) in read {
        let (id, winner, _) = &claims.winners[i];
        let expected = format!("agent-{winner:03}");
        match item {
            Ok(item) if item["status"] == "claimed" && item["claimed_by"] == expected.as_str() => {
                good += 1;
            }
            Ok(item) => errors.add(format!(
                "item {id} read back as {} by {}, won by {expected}",
                item["status"], item["claimed_by"]
            )),
            Err(e) => errors.add(format!("reading item {id} back: {e:#}")),
        }
    }
    Ok(good)
}

struct Report {
    label: String,
    readiness: String,
    connect_secs: f64,
    customers: usize,
    posted: usize,
    late: usize,
    handoff_secs: f64,
    handoff: Handoffs,
    cpu_handoff: Option<CpuUse>,
    claims: Claims,
    claims_secs: f64,
    cpu_claims: Option<CpuUse>,
    claimed_frames: ClaimedFrames,
    read_back: usize,
    closed: usize,
    other_frames: u64,
    errors: Errors,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "none".into();
    }
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(h, 0.5),
        ms(h, 0.9),
        ms(h, 0.95),
        ms(h, 0.99),
        h.max() as f64 / 1000.0
    )
}

fn print_cpu(cpu: Option<&CpuUse>) {
    if let Some(cpu) = cpu {
        println!(
            "    cpu              this process {:.2} cores; machine ({} cores) {:.0}% busy, {:.0}% steal",
            cpu.process_cores,
            cpu.machine_cores,
            cpu.busy * 100.0,
            cpu.steal * 100.0,
        );
    }
}

impl Report {
    fn target_met(&self) -> bool {
        !self.handoff.latency.is_empty() && ms(&self.handoff.latency, 0.99) <= TARGET_P99_MS
    }

    fn passed(&self) -> bool {
        self.errors.count == 0
            && self.posted == self.customers
            && self.handoff.missing == 0
            && self.handoff.delivered == self.handoff.expected
            && self.claims.failed == 0
            && self.claims.not_one_winner == 0
            && self.claims.winners.len() == self.handoff.items.len()
            && self.claimed_frames.missing == 0
            && self.claimed_frames.wrong_holder == 0
            && self.read_back == self.claims.winners.len()
            && self.closed == 0
    }

    fn print(&self, args: &Args) {
        let h = &self.handoff;
        let c = &self.claims;
        println!("desk-handoff");
        println!("  backend            {}", self.label);
        println!(
            "  reply path         on; AI off (/readyz: {})",
            self.readiness
        );
        println!(
            "  agents             {} sockets on `inbox` (connected and subscribed in {:.2} s)",
            args.agents, self.connect_secs
        );
        let schedule = if args.rate > 0.0 {
            format!("{} customers/s scheduled", args.rate)
        } else {
            "as fast as possible".into()
        };
        println!(
            "  customers          {} (a thread and one message each), {} in flight at most, {schedule}; {} posted (201), {} started more than 10 ms late",
            self.customers, args.concurrency, self.posted, self.late
        );
        println!(
            "  phase 1: handoff → `inbox` frame at every agent ({:.1} s)",
            self.handoff_secs
        );
        println!(
            "    deliveries       {} / {} (item, agent) pairs; MISSING {}",
            h.delivered, h.expected, h.missing
        );
        println!(
            "    latency          {} (start: the customer's POST of the message answered 201, client clock)",
            percentiles(&h.latency)
        );
        println!(
            "                     {} frames read before their POST's 201 was (counted as 0)",
            h.early
        );
        let met = if self.target_met() { "met" } else { "MISSED" };
        println!(
            "    target           p99 ≤ {TARGET_P99_MS} ms: {met} (p99 {:.2} ms)",
            ms(&h.latency, 0.99)
        );
        println!("    post → 201       {}", percentiles(&h.post));
        println!(
            "    201 → item created_at (routing, server clock) {}{}",
            percentiles(&h.routing),
            if h.routing_negative > 0 {
                format!("; {} created before the 201 was read", h.routing_negative)
            } else {
                String::new()
            }
        );
        println!(
            "    item created_at → frame read, per agent {}",
            percentiles(&h.push)
        );
        print_cpu(self.cpu_handoff.as_ref());
        println!(
            "  phase 2: claims, {} agents racing for each of {} items, {} items at once ({:.2} s)",
            args.racers,
            h.items.len(),
            args.races,
            self.claims_secs
        );
        println!(
            "    attempts         {} ({:.0}/s): won {} ({:.0} claims/s), lost {} (409 already_claimed), failed {}",
            c.attempts,
            c.attempts as f64 / self.claims_secs,
            c.won,
            c.won as f64 / self.claims_secs,
            c.lost,
            c.failed
        );
        println!(
            "    one winner       {} of {} items; {} items without exactly one winner; read back claimed by their winner: {}",
            c.winners.len(),
            h.items.len(),
            c.not_one_winner,
            self.read_back
        );
        println!("    claim request    {}", percentiles(&c.latency));
        let f = &self.claimed_frames;
        println!(
            "    `claimed` frames {} / {} at the agents; MISSING {}, wrong holder {}; winner's 200 → frame {} ({} read before the 200)",
            f.delivered,
            f.expected,
            f.missing,
            f.wrong_holder,
            percentiles(&f.latency),
            f.early
        );
        print_cpu(self.cpu_claims.as_ref());
        println!(
            "  other inbox frames {} (repeats, other statuses); sockets closed by the server {}",
            self.other_frames, self.closed
        );
        println!("  errors             {}", self.errors.count);
        for sample in &self.errors.samples {
            println!("    {sample}");
        }
        if h.missing > 0 || h.delivered != h.expected {
            println!(
                "  !!! FAILURE: {} of {} handoff deliveries MISSING",
                h.missing, h.expected
            );
        }
        if c.not_one_winner > 0 || c.failed > 0 {
            println!(
                "  !!! FAILURE: {} items without exactly one winner, {} failed claims",
                c.not_one_winner, c.failed
            );
        }
        if self.passed() {
            println!("  RESULT             passed");
        } else {
            println!("  RESULT             FAILED");
        }
    }
}
