//! `chat-render`: how fast the customer chat (`/chat`) is ready on a first
//! visit, and how much JavaScript and CSS it loads.
//!
//! The real server runs in this process (reply path off) with a widget key
//! for its own origin. `node bench/web/chat-render.mjs` (playwright-core
//! and Chromium, as installed by `tests/browser/setup.sh`) opens
//! `/chat?key=…` `--loads` (20) times, each in a fresh browser context (no
//! session, nothing cached), and times from navigation start to the first
//! contentful paint, to the composer being usable, and to the connection
//! shown online (a visitor session made, the WebSocket open). This program
//! prints p50/p95/max.
//!
//! ```text
//! cargo build --release -p tandem-bench
//! target/release/chat-render
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use serde_json::Value;
use tandem_bench::server::{InProcessServer, StoreArgs};
use tandem_model::NewWidgetKey;
use tandem_server::config::Quota;

#[derive(Debug, Parser)]
#[command(
    name = "chat-render",
    about = "The customer chat's first visit: first paint and ready to type, in Chromium"
)]
struct Args {
    #[command(flatten)]
    store: StoreArgs,
    /// Page loads, each a first visit.
    #[arg(long, default_value_t = 20)]
    loads: usize,
    /// The Node script (default: bench/web/chat-render.mjs of this checkout).
    #[arg(long)]
    script: Option<PathBuf>,
    /// The whole run's time limit, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tandem_bench::exit_after("chat-render", Duration::from_secs(args.timeout_secs + 60));
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-render: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    ensure!(args.loads > 0, "--loads must be at least 1");
    let (server, store) = InProcessServer::start_with_store(&args.store, "chat-render", |config| {
        config.reply.enabled = false;
        // Every load starts a visitor session from one address.
        config.rate_limits.anonymous = Quota {
            per_second: 100_000_000,
            burst: 100_000_000,
        };
    })
    .await?;
    let measured = tokio::time::timeout(Duration::from_secs(args.timeout_secs), async {
        let key = store
            .create_widget_key(NewWidgetKey {
                name: "chat-render".into(),
                allowed_origins: vec![server.base_url.clone()],
                identity_required: false,
            })
            .await
            .context("creating the widget key")?;
        let script = args
            .script
            .clone()
            .unwrap_or_else(|| tandem_bench::repo().join("bench/web/chat-render.mjs"));
        tandem_bench::run_browser_script(
            &script,
            &[
                ("TANDEM_URL", server.base_url.clone()),
                ("WIDGET_KEY", key.key),
                ("LOADS", args.loads.to_string()),
            ],
        )
        .await
    })
    .await
    .unwrap_or_else(|_| anyhow::bail!("the run took more than {} s", args.timeout_secs));
    let label = server.label.clone();
    server.stop().await?;
    report(&label, &measured?)
}

fn report(label: &str, figures: &Value) -> Result<()> {
    let samples = figures["samples"].as_array().context("no samples")?;
    let series = |name: &str| -> Vec<f64> {
        let mut values: Vec<f64> = samples.iter().filter_map(|s| s[name].as_f64()).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    let (paint, ready, live) = (series("paint"), series("ready"), series("live"));
    let bytes = series("assetBytes");
    let ms = |values: &[f64], p: f64| {
        tandem_bench::quantile(values, p).map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"))
    };
    println!("chat-render");
    println!("  backend              {label}");
    println!(
        "  chromium             {}",
        figures["chromium"].as_str().unwrap_or("?")
    );
    println!(
        "  loads                {} (each a first visit)",
        samples.len()
    );
    println!(
        "  JS + CSS loaded      {} bytes",
        bytes.last().copied().unwrap_or_default()
    );
    println!("                       p50 / p95 / max");
    for (name, values) in [
        ("first paint", &paint),
        ("ready to type", &ready),
        ("online", &live),
    ] {
        println!(
            "  {name:<20} {} / {} / {}",
            ms(values, 0.5),
            ms(values, 0.95),
            ms(values, 1.0)
        );
    }
    Ok(())
}
