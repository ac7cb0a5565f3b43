//! `inbox-filter`: how quickly the inbox page (`/inbox`) answers its filters
//! when the queue holds `--items` (1,000) open items.
//!
//! The real server runs in this process (reply path off: nothing but the
//! prepared items changes), with an inbox account and `--items` threads,
//! each with one open inbox item of a kind in turn (question, approval,
//! escalation, handoff) whose text holds one of a few topics. Then
//! `node bench/web/inbox-filter.mjs` (playwright-core and Chromium, as
//! installed by `tests/browser/setup.sh`) signs in, waits until every item
//! is listed, and changes the filters `--reps` (20) times each way:
//!
//! - typing into `queue-filter` (a topic, then empty again),
//! - choosing a kind in `kind-filter` (a kind, then `all` again),
//!
//! timing, in the page, from the event to the next painted frame, and from
//! the event to the first painted frame showing the new `queue-count`; long
//! tasks (> 50 ms, `PerformanceObserver`) are counted. This program prints
//! p50/p95/max and a table ready for BENCHMARKS.md.
//!
//! ```text
//! cargo build --release -p tandem-bench
//! target/release/inbox-filter                      # SQLite
//! target/release/inbox-filter --backend postgres
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::Utc;
use clap::Parser;
use serde_json::{Value, json};
use tandem_bench::server::{InProcessServer, StoreArgs};
use tandem_model::{InboxKind, NewInboxItem, NewThread, Priority};
use tandem_server::config::Quota;
use tandem_store::Store;

const AGENT: &str = "bench-agent";
const PASSWORD: &str = "bench password, not secret";
/// What the items talk about; the text filter looks for these.
const TOPICS: [&str; 5] = ["refund", "shipping", "invoice", "password", "warranty"];
const KINDS: [InboxKind; 4] = [
    InboxKind::Question,
    InboxKind::Approval,
    InboxKind::Escalation,
    InboxKind::Handoff,
];

#[derive(Debug, Parser)]
#[command(
    name = "inbox-filter",
    about = "The inbox page's filters over 1,000 open items: event → painted frame, in Chromium"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Open inbox items (one thread each).
    #[arg(long, default_value_t = 1_000)]
    items: usize,
    /// Changes of each filter, each way.
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// The Node script (default: bench/web/inbox-filter.mjs of this checkout).
    #[arg(long)]
    script: Option<PathBuf>,
    /// Serve the pages from this directory instead of the embedded copy.
    #[arg(long)]
    web_dir: Option<PathBuf>,
    /// The whole run's time limit, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tandem_bench::exit_after("inbox-filter", Duration::from_secs(args.timeout_secs + 60));
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inbox-filter: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    ensure!(args.items > 0, "--items must be at least 1");
    ensure!(args.reps > 0, "--reps must be at least 1");
    let web_dir = args.web_dir.clone();
    let (server, store) =
        InProcessServer::start_with_store(&args.store, "inbox-filter", |config| {
            // Nothing but the prepared items: no reply runs.
            config.reply.enabled = false;
            config.rate_limits.agent = Quota {
                per_second: 100_000_000,
                burst: 100_000_000,
            };
            if let Some(dir) = web_dir {
                config.web.dir = Some(dir);
            }
        })
        .await?;
    let outcome = tokio::time::timeout(
        Duration::from_secs(args.timeout_secs),
        measure(&args, &server, &store),
    )
    .await
    .unwrap_or_else(|_| bail!("the run took more than {} s", args.timeout_secs));
    let label = server.label.clone();
    server.stop().await?;
    let figures = outcome?;
    report(&args, &label, &figures);
    Ok(())
}

/// Prepares the account and the items, runs the page, returns its figures.
async fn measure(args: &Args, server: &InProcessServer, store: &Store) -> Result<Value> {
    tandem_server::accounts::save_agent(store, AGENT, PASSWORD)
        .await
        .context("creating the agent account")?;
    let started = Instant::now();
    for n in 0..args.items {
        let topic = TOPICS[n % TOPICS.len()];
        let kind = KINDS[n % KINDS.len()];
        let thread = store
            .create_thread(
                NewThread {
                    customer_id: format!("bench-customer-{n}"),
                    title: Some(format!("Order {n}: a question about {topic}")),
                    metadata: json!({}),
                },
                None,
            )
            .await
            .context("creating a thread")?
            .value;
        store
            .open_inbox_item(NewInboxItem {
                kind,
                thread_id: thread.id,
                message_id: None,
                tool_call_id: None,
                body: Some(format!("Customer {n} asks about {topic} for order {n}")),
                suggestion: None,
                reason: Some(format!("{topic} needs a person")),
                due_at: Some(Utc::now() + chrono::Duration::minutes(30 + (n % 600) as i64)),
                due_in: None,
                team: None,
                priority: Priority::Normal,
                run_id: None,
            })
            .await
            .context("opening an inbox item")?;
    }
    eprintln!(
        "inbox-filter: {} threads and items made in {:.1} s",
        args.items,
        started.elapsed().as_secs_f64()
    );

    let script = args
        .script
        .clone()
        .unwrap_or_else(|| tandem_bench::repo().join("bench/web/inbox-filter.mjs"));
    tandem_bench::run_browser_script(
        &script,
        &[
            ("TANDEM_URL", server.base_url.clone()),
            ("AGENT_NAME", AGENT.to_owned()),
            ("AGENT_PASSWORD", PASSWORD.to_owned()),
            ("ITEMS", args.items.to_string()),
            ("REPS", args.reps.to_string()),
            ("TERMS", json!(TOPICS).to_string()),
        ],
    )
    .await
}

fn ms(value: &Value) -> String {
    value
        .as_f64()
        .map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"))
}

fn triple(stats: &Value) -> String {
    format!(
        "{} / {} / {}",
        ms(&stats["p50"]),
        ms(&stats["p95"]),
        ms(&stats["max"])
    )
}

fn report(args: &Args, label: &str, figures: &Value) {
    println!("inbox-filter");
    println!("  backend            {label}");
    println!(
        "  items              {} open ({} kinds in turn), {} shown",
        args.items,
        KINDS.len(),
        figures["items"]
    );
    println!(
        "  chromium           {}",
        figures["chromium"].as_str().unwrap_or("?")
    );
    println!("  sign-in → all items listed  {}", ms(&figures["loadMs"]));
    println!(
        "  changes            {} per filter ({} each way)",
        2 * args.reps,
        args.reps
    );
    println!("                                 p50 / p95 / max");
    for (name, what) in [("text", "queue-filter"), ("kind", "kind-filter")] {
        let f = &figures[name];
        println!("  {what:<13} event → next frame   {}", triple(&f["frame"]));
        println!("  {what:<13} event → count shown  {}", triple(&f["shown"]));
        println!(
            "  {what:<13} long tasks           {} (max {}, total {}); count unchanged {} times",
            f["longTasks"]["count"],
            ms(&f["longTasks"]["max"]),
            ms(&f["longTasks"]["total"]),
            f["unchanged"]
        );
    }
    println!();
    println!("For BENCHMARKS.md:");
    println!();
    println!(
        "| filter ({} open items) | event → next frame p50 / p95 / max | event → new count painted p50 / p95 / max | long tasks (> 50 ms) |",
        args.items
    );
    println!("|---|---|---|---|");
    for (name, what) in [
        ("text", "`queue-filter` (typing)"),
        ("kind", "`kind-filter` (select)"),
    ] {
        let f = &figures[name];
        println!(
            "| {what} | {} | {} | {} (max {}) |",
            triple(&f["frame"]),
            triple(&f["shown"]),
            f["longTasks"]["count"],
            ms(&f["longTasks"]["max"])
        );
    }
}
