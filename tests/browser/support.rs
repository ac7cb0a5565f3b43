//! The browser suite's plumbing: prerequisites (installed once by
//! `setup.sh`), running a Node scenario against a test server with a time
//! limit, and reading the server back as the customer would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::TestServer;
use tokio::io::AsyncReadExt;

/// How long one scenario may run (Node and Chromium included).
const SCENARIO_LIMIT: Duration = Duration::from_secs(90);

/// `tests/browser`.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Where screenshots go: `TANDEM_SCREENSHOT_DIR`, or `target/screenshots`
/// of the workspace.
pub fn screenshot_dir() -> PathBuf {
    match std::env::var_os("TANDEM_SCREENSHOT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("screenshots"),
    }
}

/// Runs `setup.sh` once per test process (npm packages, Chromium); every
/// test that needs them fails with its output when it could not.
pub fn prerequisites() {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = SETUP.get_or_init(|| {
        let output = std::process::Command::new("bash")
            .arg(browser_dir().join("setup.sh"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run tests/browser/setup.sh: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tests/browser/setup.sh failed ({}); the browser tests need Node.js, \
                 playwright-core and Chromium:\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(message) = outcome {
        panic!("{message}");
    }
}

/// A free port on 127.0.0.1 (free when asked; a scenario binds it soon
/// after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What a scenario reported on its `RESULT` line (null without one).
#[derive(Debug)]
pub struct Outcome {
    pub result: Value,
}

/// Runs `node scenarios/<name>.mjs` with `vars` in its environment (and
/// the screenshot directory), within [`SCENARIO_LIMIT`]; fails the test
/// with Node's output when it exits non-zero or runs too long. Node's
/// process group (Chromium included) is killed on timeout.
pub async fn run_scenario(name: &str, vars: &[(&str, String)]) -> Outcome {
    prerequisites();
    let script = browser_dir().join("scenarios").join(format!("{name}.mjs"));
    let mut command = tokio::process::Command::new("node");
    command
        .arg(&script)
        .current_dir(browser_dir())
        .env("TANDEM_SCREENSHOT_DIR", screenshot_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (key, value) in vars {
        command.env(key, value);
    }
    let started = Instant::now();
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("could not start node {}: {e}", script.display()));
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let read_out = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text).await;
        text
    });
    let read_err = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let status = tokio::time::timeout(SCENARIO_LIMIT, child.wait()).await;
    let timed_out = status.is_err();
    if timed_out {
        kill_group(pid);
        let _ = child.kill().await;
    }
    let output = format!(
        "{}{}",
        read_out.await.unwrap_or_default(),
        read_err.await.unwrap_or_default()
    );
    eprintln!(
        "--- scenario {name} ({:.1} s) ---\n{output}",
        started.elapsed().as_secs_f64()
    );
    match status {
        Err(_) => panic!("scenario {name} ran longer than {SCENARIO_LIMIT:?}; output:\n{output}"),
        Ok(Err(e)) => panic!("scenario {name}: waiting for node failed: {e}"),
        Ok(Ok(status)) if !status.success() => {
            panic!("scenario {name} failed ({status}); output:\n{output}")
        }
        Ok(Ok(_)) => {}
    }
    let result = output
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("RESULT "))
        .map(|json| serde_json::from_str(json).expect("the RESULT line is JSON"))
        .unwrap_or(Value::Null);
    Outcome { result }
}

/// Kills a process group (Node and the Chromium it started).
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &format!("-{pid}")])
            .status();
    }
}

/// The variables every scenario gets: the server's URL and an admin token
/// (for the scenario's own setup reads, never for the pages).
pub fn base_vars(server: &TestServer) -> Vec<(&'static str, String)> {
    vec![
        ("TANDEM_URL", server.url.clone()),
        ("TANDEM_ADMIN_TOKEN", server.admin.clone()),
    ]
}

/// The threads on the server, as admin, oldest first.
pub async fn threads(server: &TestServer) -> Vec<Value> {
    let page = server.get("/v1/threads?limit=100", &server.admin).await;
    assert_eq!(page.status, reqwest::StatusCode::OK, "{}", page.text);
    let mut threads = page.body["threads"].as_array().expect("threads").clone();
    threads.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    threads
}

/// The one thread of `customer_id`'s, as admin.
pub async fn thread_of(server: &TestServer, customer_id: &str) -> Value {
    let mine: Vec<Value> = threads(server)
        .await
        .into_iter()
        .filter(|t| t["customer_id"] == customer_id)
        .collect();
    assert_eq!(mine.len(), 1, "{customer_id}'s threads: {mine:#?}");
    mine[0].clone()
}

/// The thread's messages as its customer reads them over REST (a fresh
/// customer token for the thread's customer).
pub async fn customer_view(server: &TestServer, thread: &Value) -> Vec<Value> {
    let id = thread["id"].as_str().expect("thread id");
    let customer = thread["customer_id"].as_str().expect("customer id");
    let token = server.customer(customer).await;
    server.messages(id, &token).await
}

/// `(author kind, agent name, text)` of each message.
pub fn summary(messages: &[Value]) -> Vec<(String, String, String)> {
    messages
        .iter()
        .map(|m| {
            (
                m["author"]["kind"].as_str().unwrap_or_default().to_owned(),
                m["agent_name"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Fails if any text in `messages` (content, metadata, anything) holds
/// `secret`.
pub fn assert_absent(messages: &[Value], secret: &str, what: &str) {
    let all = serde_json::to_string(messages).expect("JSON");
    assert!(
        !all.contains(secret),
        "{what} ({secret:?}) reached the customer over REST: {messages:#?}"
    );
}
