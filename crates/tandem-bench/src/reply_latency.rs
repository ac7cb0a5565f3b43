//! `reply-latency`: how long the reply path takes around the model, from a
//! customer's message being posted to the AI's reply reaching the
//! customer's WebSocket, with a model that answers at once.
//!
//! The model is a scripted OpenAI-compatible server in this process
//! (`tandem-scripted-llm`) whose fallback answers every chat request
//! instantly with the same streamed text. The real server runs in this
//! process too, with the reply path on and the default policy (the AI
//! answers, replies stream), on a fresh store: a SQLite file in a new
//! temporary directory, or a new PostgreSQL schema it drops at the end.
//!
//! For each `--customers` level (a fresh server each), that many customers
//! run at once, each with its own token, keep-alive HTTP connection and
//! WebSocket, in a closed loop: open a thread every
//! `--messages-per-thread` messages (subscribe to it; not measured), post a
//! message (`POST /v1/threads/{id}/messages`, customer token), read frames
//! until the `message` frame of the assistant reply that answers it
//! (`reply_to`), then post the next. The first `--warmup` messages are left
//! out; the next `--messages` are measured.
//!
//! - *end to end*: post sent → reply frame read, per message (p50, p90,
//!   p99, max) and *replies/s* (measured messages over the span from the
//!   first measured post to the last measured frame).
//! - *model*: the same model call made directly with Tandem's own client
//!   (`tandem_llm::Llm`, the same prompt shape, tools and streaming), one at
//!   a time, `--model-calls` times before the load: what the model costs
//!   as Tandem's client sees it, loopback HTTP both ways included.
//! - *added by Tandem*: end to end minus the model's p50 (at each
//!   percentile).
//! - *stages* (p50 and p90 per stage, over the measured messages), from
//!   wall-clock times of this one process (server and clients): the
//!   client's own, the scripted model's (its fallback is called once a
//!   request's body has arrived), and the run's `created_at` and each
//!   journal step's `started_at`/`finished_at`, read back from
//!   `GET /v1/workflows/{run}` after the level. Post → `201`; post → run
//!   created (the message committed and published, the run's row made);
//!   run created → `context` step starts (the run committed and its
//!   executor started); the `context` step (its reads: thread, policy,
//!   history, open items); context done → `model:N` step starts; model step
//!   starts → model request received (the journal committed, the history
//!   read again, the prompt built and sent); model request → model step
//!   done (the answer streamed back and parsed, its usage recorded); model
//!   step done → `reply` step (stamped as the reply's write begins); reply
//!   step → frame read by the customer (the commit of the reply with the
//!   journal, the hub, the socket).
//! - *probe* (`--probe N`): with the server idle after the level, the same
//!   reads the `context` step and a model step make, and one small write,
//!   timed one at a time on the store: what those stages would cost without
//!   the load around them.
//!
//! ```text
//! cargo build --release -p tandem-bench
//! target/release/reply-latency --backend sqlite --customers 1,8,32 --probe 500
//! target/release/reply-latency --backend postgres --customers 1,8,32 --probe 500 \
//!     --database-url postgres://postgres@127.0.0.1:5432/test
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Value, json};
use tandem_bench::bearer;
use tandem_bench::procfs::{CpuSample, CpuUse};
use tandem_bench::server::{InProcessServer, StoreArgs};
use tandem_llm::prompt::{self, PromptOptions};
use tandem_llm::{ChatMessage, ChatRequest, Llm, LlmConfig};
use tandem_model::{InboxFilter, InboxStatus, InboxStatuses, ThreadId, TokenSubject, metadata};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_server::AppState;
use tandem_server::config::Quota;
use tandem_store::Store;
use tandem_workflows::Registry;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// What the scripted model answers, streamed in [`ANSWER_CHUNKS`] chunks.
const ANSWER: &str = "Thanks for asking! Your order ships within two business days, and \
    you will get a tracking link by email as soon as it leaves the warehouse.";
const ANSWER_CHUNKS: usize = 4;
const MODEL: &str = "bench-model";

#[derive(Debug, Parser)]
#[command(
    name = "reply-latency",
    about = "Customer message posted → AI reply on the customer's WebSocket, with an instant model"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Concurrent customers; one level per value, each on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    customers: Vec<usize>,
    /// Messages measured per level.
    #[arg(long, default_value_t = 2_000)]
    messages: usize,
    /// Messages per level before the measured ones.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Messages a customer sends in one thread before opening the next.
    #[arg(long, default_value_t = 10)]
    messages_per_thread: usize,
    /// Direct model calls timed before each level.
    #[arg(long, default_value_t = 500)]
    model_calls: usize,
    /// Writes every measured message's end-to-end time and stages (µs) to
    /// this CSV file, one level after the other.
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
    /// After each level, with the server idle: times the reads a reply's
    /// `context` step and each model call make, and a small write, one at a
    /// time, this many times each (0: no probe).
    #[arg(long, default_value_t = 0)]
    probe: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("reply-latency: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    ensure!(!args.customers.is_empty(), "--customers names no level");
    ensure!(
        args.customers.iter().all(|c| *c > 0),
        "--customers must be at least 1"
    );
    ensure!(args.messages > 0, "--messages must be at least 1");
    ensure!(
        args.messages_per_thread > 0,
        "--messages-per-thread must be at least 1"
    );
    let mut passed = true;
    for &customers in &args.customers {
        let report = level(&args, customers).await?;
        report.print(&args);
        if let Some(path) = &args.dump {
            report
                .dump(path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        passed &= report.passed();
    }
    Ok(passed)
}

/// When the scripted model saw each customer text (its fallback's call).
type Arrivals = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

/// One level: a fresh model and server, `customers` clients.
async fn level(args: &Args, customers: usize) -> Result<Report> {
    let llm = ScriptedLlm::start().await;
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    llm.respond_with(move |request| {
        if let Some(text) = request.last_user_text() {
            seen.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(text, Utc::now());
        }
        Reply::text(ANSWER).chunked(ANSWER_CHUNKS)
    });
    let ai = ai_config(&llm.base_url());
    let model = time_model(&ai, args.model_calls).await?;
    // The direct calls' texts are not customers'.
    arrivals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clear();
    llm.take_requests();

    let store_slot: Arc<Mutex<Option<Store>>> = Arc::default();
    let slot = store_slot.clone();
    let server = InProcessServer::start(
        &args.store,
        "reply-latency",
        |config| {
            config.ai = ai;
            config.reply.enabled = true;
            let unlimited = Quota {
                per_second: 100_000_000,
                burst: 100_000_000,
            };
            // Customers post far faster than a person types.
            config.rate_limits.customer = unlimited;
            config.hub.frames_per_second = 1_000_000;
            config.hub.frames_burst = 1_000_000;
        },
        move |store, config| async move {
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(store.clone());
            AppState::build(store, config, Registry::new())
                .await
                .context("building the server")
        },
    )
    .await?;
    let store = store_slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .context("the server's store")?;
    let mut outcome = load(args, customers, &server, &store, &arrivals).await;
    if args.probe > 0
        && let Ok(report) = &mut outcome
        && let Some(thread) = report.samples.last().map(|s| s.thread.clone())
    {
        report.probe = probe(&store, &thread, args.probe).await?;
    }
    let stopped = server.stop().await;
    llm.stop().await;
    let mut report = outcome?;
    report.model = model;
    stopped?;
    Ok(report)
}

fn ai_config(base_url: &str) -> LlmConfig {
    LlmConfig {
        api_key: Some("bench".into()),
        base_url: Some(base_url.to_owned()),
        reply_model: MODEL.into(),
        classifier_model: Some(MODEL.into()),
        embedding_model: Some("bench-embedding".into()),
        request_timeout_secs: 30,
        max_retries: 0,
        // The figures are the replies'; a start-up check would add calls.
        check_models_on_start: false,
        ..LlmConfig::default()
    }
}

/// Times `calls` direct model calls shaped like a reply's first call.
async fn time_model(config: &LlmConfig, calls: usize) -> Result<Vec<i64>> {
    let llm = Llm::new(config).context("the model client")?;
    let system = tandem_router::AgentConfig::default().system_prompt;
    let mut took = Vec::with_capacity(calls);
    for n in 0..calls {
        let request = ChatRequest {
            model: MODEL.into(),
            messages: vec![
                ChatMessage::System(system.clone()),
                ChatMessage::User(format!("Direct call {n}: when does my order ship?")),
            ],
            tools: tandem_router::tools::specs(),
            response_format: None,
            stream: true,
        };
        let started = Instant::now();
        let completion = llm
            .chat(request, &mut |_| {})
            .await
            .context("a direct model call")?;
        took.push(micros(started.elapsed()));
        ensure!(
            completion.text == ANSWER,
            "the model answered {completion:?}"
        );
    }
    Ok(took)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One measured message, as its client saw it.
struct Sample {
    thread: String,
    text: String,
    sent: DateTime<Utc>,
    answered: DateTime<Utc>,
    frame: DateTime<Utc>,
    /// Post sent → reply frame read (monotonic).
    end_to_end_us: i64,
    run_id: String,
}

struct ClientResult {
    samples: Vec<Sample>,
    errors: u64,
    error_samples: Vec<String>,
}

async fn load(
    args: &Args,
    customers: usize,
    server: &InProcessServer,
    store: &Store,
    arrivals: &Arrivals,
) -> Result<Report> {
    let total = args.warmup + args.messages;
    let counter = Arc::new(AtomicUsize::new(0));
    let admin = {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, bearer(&server.token)?);
        reqwest::Client::builder()
            .default_headers(headers)
            .no_proxy()
            .build()?
    };
    let mut clients = Vec::new();
    for n in 0..customers {
        let customer_id = format!("customer-{n}");
        let token = store
            .create_token(
                TokenSubject::Customer {
                    customer_id: customer_id.clone(),
                },
                Some("reply-latency benchmark".into()),
            )
            .await
            .context("minting a customer token")?
            .secret;
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, bearer(&token)?);
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
        request.headers_mut().insert(AUTHORIZATION, bearer(&token)?);
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .context("opening a WebSocket")?;
        let client = Client {
            n,
            customer_id,
            http,
            admin: admin.clone(),
            ws,
            base: server.base_url.clone(),
            counter: counter.clone(),
            total,
            warmup: args.warmup,
            per_thread: args.messages_per_thread,
        };
        clients.push(tokio::spawn(client.run()));
    }
    let cpu_start = CpuSample::take();
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut error_samples = Vec::new();
    for client in clients {
        let result = client.await.context("a client panicked")??;
        samples.extend(result.samples);
        errors += result.errors;
        for sample in result.error_samples {
            tandem_bench::keep_sample(&mut error_samples, sample);
        }
    }
    let cpu = match (cpu_start, CpuSample::take()) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    let stages = stages(&admin, &server.base_url, &samples, arrivals).await;
    let (stages, stage_errors) = match stages {
        Ok(stages) => (stages, Vec::new()),
        Err(e) => (Stages::default(), vec![format!("{e:#}")]),
    };
    for sample in stage_errors {
        errors += 1;
        tandem_bench::keep_sample(&mut error_samples, sample);
    }
    Ok(Report {
        customers,
        label: server.label.clone(),
        samples,
        stages,
        model: Vec::new(),
        probe: Vec::new(),
        cpu,
        errors,
        error_samples,
    })
}

struct Client {
    n: usize,
    customer_id: String,
    http: reqwest::Client,
    admin: reqwest::Client,
    ws: Ws,
    base: String,
    counter: Arc<AtomicUsize>,
    total: usize,
    warmup: usize,
    per_thread: usize,
}

impl Client {
    async fn run(mut self) -> Result<ClientResult> {
        let mut result = ClientResult {
            samples: Vec::new(),
            errors: 0,
            error_samples: Vec::new(),
        };
        let mut thread: Option<String> = None;
        let mut in_thread = 0;
        loop {
            let index = self.counter.fetch_add(1, Ordering::Relaxed);
            if index >= self.total {
                break;
            }
            if thread.is_none() || in_thread == self.per_thread {
                match self.open_thread(thread.as_deref()).await {
                    Ok(id) => thread = Some(id),
                    Err(e) => {
                        result.errors += 1;
                        tandem_bench::keep_sample(&mut result.error_samples, format!("{e:#}"));
                        break;
                    }
                }
                in_thread = 0;
            }
            in_thread += 1;
            let Some(thread_id) = thread.clone() else {
                break;
            };
            let text = format!(
                "Customer {} message {index}: when does my order ship?",
                self.n
            );
            match self.one_message(&thread_id, &text).await {
                Ok(sample) if index >= self.warmup => result.samples.push(sample),
                Ok(_) => {}
                Err(e) => {
                    result.errors += 1;
                    tandem_bench::keep_sample(&mut result.error_samples, format!("{e:#}"));
                    if result.errors > 20 {
                        break;
                    }
                }
            }
        }
        let _ = self.ws.close(None).await;
        Ok(result)
    }

    /// A new thread of this customer, subscribed to (and the previous one
    /// unsubscribed).
    async fn open_thread(&mut self, previous: Option<&str>) -> Result<String> {
        let response = self
            .admin
            .post(format!("{}/v1/threads", self.base))
            .json(&json!({"customer_id": self.customer_id}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if status != StatusCode::CREATED {
            bail!("create a thread: {status} {body}");
        }
        let id = body["id"].as_str().context("no thread id")?.to_owned();
        if let Some(previous) = previous {
            self.ws
                .send(Message::text(
                    json!({"type": "unsubscribe", "topic": format!("thread:{previous}")})
                        .to_string(),
                ))
                .await?;
        }
        self.ws
            .send(Message::text(
                json!({"type": "subscribe", "topic": format!("thread:{id}")}).to_string(),
            ))
            .await?;
        self.read_until(|frame| {
            frame["type"] == "subscribed" && frame["topic"] == format!("thread:{id}")
        })
        .await?;
        Ok(id)
    }

    async fn one_message(&mut self, thread: &str, text: &str) -> Result<Sample> {
        let sent = Utc::now();
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/v1/threads/{thread}/messages", self.base))
            .json(&json!({"content": text}))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        let answered = Utc::now();
        if status != StatusCode::CREATED {
            bail!("post: {status} {body}");
        }
        let id = body["id"].as_str().context("no message id")?.to_owned();
        let frame = self
            .read_until(|frame| {
                frame["type"] == "message"
                    && frame["message"]["role"] == "assistant"
                    && frame["message"]["reply_to"] == id.as_str()
            })
            .await?;
        let end_to_end_us = micros(started.elapsed());
        let frame_at = Utc::now();
        let reply = &frame["message"];
        if reply["content"] != ANSWER {
            bail!("the reply is not the model's answer: {reply}");
        }
        let run_id = reply["metadata"][metadata::RUN_ID]
            .as_str()
            .context("the reply names no run")?
            .to_owned();
        Ok(Sample {
            thread: thread.to_owned(),
            text: text.to_owned(),
            sent,
            answered,
            frame: frame_at,
            end_to_end_us,
            run_id,
        })
    }

    /// Frames until one matches `stop`; an `error` frame is an error.
    async fn read_until(&mut self, stop: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("no awaited frame within 30 s")?
                .context("the WebSocket closed")??;
            let Message::Text(text) = frame else { continue };
            let frame: Value = serde_json::from_str(text.as_str())?;
            if frame["type"] == "error" {
                bail!("error frame: {frame}");
            }
            if stop(&frame) {
                return Ok(frame);
            }
        }
    }
}

/// The stages of a reply, in order: names, and each measured message's
/// time in each, µs.
const STAGES: [&str; 10] = [
    "post → 201",
    "post → run created",
    "run created → context step starts",
    "context step (its reads)",
    "context done → model step starts",
    "model step starts → model request",
    "model request → model step done",
    "model step done → reply step",
    "reply step → frame read",
    "end to end (sum of the above but 201)",
];

#[derive(Default)]
struct Stages {
    /// Per stage of [`STAGES`].
    times: Vec<Vec<i64>>,
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str()?.parse().ok()
}

fn span(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX)
}

/// Reads every measured run back and splits each message's time by stage.
async fn stages(
    admin: &reqwest::Client,
    base: &str,
    samples: &[Sample],
    arrivals: &Arrivals,
) -> Result<Stages> {
    let arrivals = arrivals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let runs =
        tandem_bench::read_runs(admin, base, samples.iter().map(|s| s.run_id.to_string())).await;
    let mut stages = Stages::default();
    for (sample, run) in samples.iter().zip(runs) {
        let run = run?;
        if run["status"] != "completed" || run["result"]["outcome"] != "replied" {
            bail!(
                "run {} ended {}: {}",
                sample.run_id,
                run["status"],
                run["result"]
            );
        }
        let journal = run["journal"].as_array().context("journal")?;
        let stamp = |prefix: &str, field: &str| {
            journal
                .iter()
                .rev()
                .find(|e| e["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
                .and_then(|e| time(&e[field]))
                .with_context(|| format!("no {prefix} step with a {field}"))
        };
        let created = time(&run["created_at"]).context("run created_at")?;
        let model = arrivals
            .get(&sample.text)
            .copied()
            .context("the model never saw a measured message")?;
        let context_started = stamp("context", "started_at")?;
        let context_done = stamp("context", "finished_at")?;
        // The last model call: the one whose answer was the reply.
        let model_started = stamp("model:", "started_at")?;
        let model_done = stamp("model:", "finished_at")?;
        let reply = stamp("reply", "finished_at")?;
        let times = [
            span(sample.sent, sample.answered),
            span(sample.sent, created),
            span(created, context_started),
            span(context_started, context_done),
            span(context_done, model_started),
            span(model_started, model),
            span(model, model_done),
            span(model_done, reply),
            span(reply, sample.frame),
            span(sample.sent, sample.frame),
        ];
        if stages.times.is_empty() {
            stages.times = vec![Vec::new(); STAGES.len()];
        }
        for (values, time) in stages.times.iter_mut().zip(times) {
            values.push(time);
        }
    }
    Ok(stages)
}

/// Times, one at a time, the reads of a reply's `context` step and of each
/// model call (the history again, the prompt built from it), on `thread`,
/// and one small write (a token) for the cost of a commit.
async fn probe(store: &Store, thread: &str, times: usize) -> Result<Vec<(&'static str, Vec<i64>)>> {
    let id: ThreadId = thread
        .parse()
        .map_err(|_| anyhow::anyhow!("thread id {thread}"))?;
    let inbox = InboxFilter {
        thread_id: Some(id),
        status: InboxStatuses::Only(InboxStatus::Open),
        ..InboxFilter::default()
    };
    let options = PromptOptions {
        system_prompt: tandem_router::AgentConfig::default().system_prompt,
        ai_name: "Tandem AI".into(),
        budget_tokens: 8_000,
    };
    let history = store.prompt_history(id, 200).await?;
    let mut results: Vec<(&'static str, Vec<i64>)> = [
        "ping (SELECT 1)",
        "get_thread",
        "policy",
        "prompt_history (200)",
        "list_inbox (thread, open)",
        "prompt::build",
        "a write (create_token)",
    ]
    .into_iter()
    .map(|name| (name, Vec::with_capacity(times)))
    .collect();
    for _ in 0..times {
        let mut timed = Vec::with_capacity(results.len());
        let started = Instant::now();
        store.ping().await?;
        timed.push(started.elapsed());
        let started = Instant::now();
        store.get_thread(id, None).await?;
        timed.push(started.elapsed());
        let started = Instant::now();
        store.policy().await?;
        timed.push(started.elapsed());
        let started = Instant::now();
        store.prompt_history(id, 200).await?;
        timed.push(started.elapsed());
        let started = Instant::now();
        store.list_inbox(&inbox).await?;
        timed.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(prompt::build(&history, &options));
        timed.push(started.elapsed());
        let started = Instant::now();
        store
            .create_token(
                TokenSubject::Customer {
                    customer_id: "probe".into(),
                },
                Some("reply-latency probe".into()),
            )
            .await?;
        timed.push(started.elapsed());
        for ((_, values), took) in results.iter_mut().zip(timed) {
            values.push(micros(took));
        }
    }
    Ok(results)
}

fn quantile(values: &[i64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

struct Report {
    customers: usize,
    label: String,
    samples: Vec<Sample>,
    stages: Stages,
    /// Direct model calls, µs.
    model: Vec<i64>,
    /// The probe's operations and their times, µs.
    probe: Vec<(&'static str, Vec<i64>)>,
    cpu: Option<CpuUse>,
    errors: u64,
    error_samples: Vec<String>,
}

impl Report {
    /// Appends one CSV line per measured message.
    fn dump(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let header: Vec<String> = STAGES.iter().map(|s| format!("{s:?}")).collect();
        writeln!(file, "customers,end_to_end,{}", header.join(","))?;
        for (i, sample) in self.samples.iter().enumerate() {
            let stages: Vec<String> = self
                .stages
                .times
                .iter()
                .map(|values| values.get(i).copied().unwrap_or(-1).to_string())
                .collect();
            writeln!(
                file,
                "{},{},{}",
                self.customers,
                sample.end_to_end_us,
                stages.join(",")
            )?;
        }
        Ok(())
    }

    fn passed(&self) -> bool {
        self.errors == 0 && !self.samples.is_empty()
    }

    fn print(&self, args: &Args) {
        let e2e: Vec<i64> = self.samples.iter().map(|s| s.end_to_end_us).collect();
        let first = self.samples.iter().map(|s| s.sent).min();
        let last = self.samples.iter().map(|s| s.frame).max();
        let secs = match (first, last) {
            (Some(a), Some(b)) => span(a, b) as f64 / 1e6,
            _ => f64::NAN,
        };
        println!("reply-latency");
        println!("  backend            {}", self.label);
        println!("  customers          {}", self.customers);
        println!(
            "  messages           {} measured, after {} of warm-up; {} per thread",
            self.samples.len(),
            args.warmup,
            args.messages_per_thread
        );
        println!(
            "  replies/s          {:.0}",
            self.samples.len() as f64 / secs
        );
        let row = |name: &str, values: &[i64]| {
            println!(
                "  {name:<26} p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                quantile(values, 0.5),
                quantile(values, 0.9),
                quantile(values, 0.99),
                quantile(values, 1.0),
            );
        };
        row("end to end", &e2e);
        row("model (direct call)", &self.model);
        let model_p50 = quantile(&self.model, 0.5);
        println!(
            "  added by Tandem            p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms (end to end − model p50)",
            quantile(&e2e, 0.5) - model_p50,
            quantile(&e2e, 0.9) - model_p50,
            quantile(&e2e, 0.99) - model_p50,
        );
        println!("  stages (p50)");
        for (name, values) in STAGES.iter().zip(&self.stages.times) {
            println!(
                "    {name:<40} {:.2} ms (p90 {:.2} ms)",
                quantile(values, 0.5),
                quantile(values, 0.9)
            );
        }
        if !self.probe.is_empty() {
            println!("  probe, server idle (p50)");
            for (name, values) in &self.probe {
                println!(
                    "    {name:<40} {:.3} ms (p90 {:.3} ms)",
                    quantile(values, 0.5),
                    quantile(values, 0.9)
                );
            }
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
        println!("  errors             {}", self.errors);
        for sample in &self.error_samples {
            println!("    {sample}");
        }
    }
}
