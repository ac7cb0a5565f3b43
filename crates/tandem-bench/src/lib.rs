//! What the load generators of `tandem-bench` share.
//!
//! - [`procfs`]: CPU time of the machine (with steal) and of processes, and a
//!   process's resident memory, read from Linux's `/proc`, so that every
//!   figure is printed next to what the machine was doing.
//!
//! - [`server`]: the real server in the benchmark's process, on a fresh
//!   SQLite file or PostgreSQL schema.
//! - [`create_threads`], [`create_schema`], [`drop_schema`], [`bearer`]:
//!   the setup every benchmark shares.
//!
//! The benchmarks themselves are binaries: `post-messages`
//! (`src/post_messages.rs`), `ws-fanout` (`src/ws_fanout.rs`),
//! `workflow-cycles` (`src/workflow_cycles.rs`), `reply-latency`
//! (`src/reply_latency.rs`), `desk-handoff` (`src/desk_handoff.rs`) and
//! `conn-flood` (`src/conn_flood.rs`).

pub mod procfs;
pub mod server;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

/// Most error descriptions kept for a report.
pub const MAX_ERROR_SAMPLES: usize = 5;

/// Ends the process (exit code 3) if it still runs `limit` after now,
/// whatever hangs: a benchmark always stops by itself.
pub fn exit_after(name: &'static str, limit: std::time::Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "{name}: FAILED: still running {} s after the start; exiting",
            limit.as_secs()
        );
        std::process::exit(3);
    });
}

/// This checkout (where `bench/web` and `tests/browser` are).
pub fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a browser benchmark's Node script (playwright-core and Chromium,
/// installed by `tests/browser/setup.sh`, which this runs first) with `env`,
/// and returns what it printed on its `RESULT` line.
pub async fn run_browser_script(
    script: &std::path::Path,
    env: &[(&str, String)],
) -> Result<serde_json::Value> {
    use std::process::Stdio;
    let setup = tokio::process::Command::new("bash")
        .arg(repo().join("tests/browser/setup.sh"))
        .stdin(Stdio::null())
        .status()
        .await
        .context("running tests/browser/setup.sh")?;
    anyhow::ensure!(
        setup.success(),
        "tests/browser/setup.sh failed: Node.js, playwright-core and Chromium are needed"
    );
    let mut command = tokio::process::Command::new("node");
    command
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting node {}", script.display()))?;
    let mut stdout = child.stdout.take().context("node's stdout")?;
    let mut output = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut output)
        .await
        .context("reading node's output")?;
    let status = child.wait().await.context("waiting for node")?;
    anyhow::ensure!(
        status.success(),
        "node {} failed ({status}):\n{output}",
        script.display()
    );
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("no RESULT line in node's output:\n{output}"))?;
    serde_json::from_str(line).context("decoding node's RESULT line")
}

/// The `p`-quantile (0 to 1) of sorted `values`; `None` when empty.
pub fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied()
}

/// Keeps an error's description for the report, up to [`MAX_ERROR_SAMPLES`].
pub fn keep_sample(samples: &mut Vec<String>, sample: String) {
    if samples.len() < MAX_ERROR_SAMPLES {
        samples.push(sample);
    }
}

/// An `Authorization` header for `token`, marked sensitive so that it is
/// never logged.
pub fn bearer(token: &str) -> Result<reqwest::header::HeaderValue> {
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .context("the token is not a header")?;
    value.set_sensitive(true);
    Ok(value)
}

/// Creates `count` threads (a few at a time) and returns their ids in order.
pub async fn create_threads(
    http: &reqwest::Client,
    base_url: &str,
    count: usize,
) -> Result<Vec<String>> {
    let url = format!("{base_url}/v1/threads");
    futures::stream::iter(0..count)
        .map(|n| {
            let url = url.clone();
            async move {
                let response = http
                    .post(&url)
                    .json(&json!({ "customer_id": format!("bench-{n}") }))
                    .send()
                    .await
                    .with_context(|| format!("POST {url}"))?;
                let status = response.status();
                let text = response
                    .text()
                    .await
                    .with_context(|| format!("POST {url}: reading the answer"))?;
                if status != StatusCode::CREATED {
                    bail!("POST {url}: expected 201, got {status}: {text}");
                }
                let thread: Value = serde_json::from_str(&text)
                    .with_context(|| format!("POST {url}: decoding the answer"))?;
                let id = thread["id"]
                    .as_str()
                    .with_context(|| format!("POST {url}: no id in {text}"))?;
                Ok(id.to_owned())
            }
        })
        .buffered(16)
        .try_collect()
        .await
}

/// Creates the PostgreSQL schema a benchmark works in.
pub async fn create_schema(url: &str, schema: &str) -> Result<()> {
    schema_ddl(
        url,
        &format!("CREATE SCHEMA \"{schema}\""),
        "creating schema",
    )
    .await
}

/// Drops a benchmark's schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
    schema_ddl(
        url,
        &format!("DROP SCHEMA \"{schema}\" CASCADE"),
        "dropping schema",
    )
    .await
}

async fn schema_ddl(url: &str, sql: &str, what: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {}", tandem_store::backend::redact_url(url)))?;
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .context(what.to_owned())?;
    conn.close().await.context("closing the connection")?;
    Ok(())
}

/// Reads runs back (`GET /v1/workflows/{id}`, 16 at a time, in the order
/// of `ids`) with `client`, which carries a staff token.
pub async fn read_runs(
    client: &reqwest::Client,
    base_url: &str,
    ids: impl IntoIterator<Item = String>,
) -> Vec<Result<Value>> {
    futures::stream::iter(ids)
        .map(|id| {
            let url = format!("{base_url}/v1/workflows/{id}");
            async move {
                Ok(client
                    .get(url)
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<Value>()
                    .await?)
            }
        })
        .buffered(16)
        .collect()
        .await
}
