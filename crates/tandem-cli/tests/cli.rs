//! The `tandem` binary as an operator runs it: migrate, mint tokens, serve,
//! the one-time admin token, and a clean stop on SIGTERM. Runs on the backend
//! the suite is pointed at (`TANDEM_TEST_DATABASE_URL`), like every test.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use tandem_tests::{Response, TestDb};

/// `tandem` with its database pointed at `db` and a port of the OS's choosing.
fn tandem(db: &TestDb, args: &[&str]) -> Command {
    let options = db.options();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
    command
        .args(["--log-json"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &options.url)
        .env("TANDEM_LISTEN", "127.0.0.1:0");
    if let Some(schema) = &options.schema {
        command.env("TANDEM_DATABASE__SCHEMA", schema);
    }
    command
}

fn run(db: &TestDb, args: &[&str]) -> String {
    let output = tandem(db, args).output().expect("run tandem");
    assert!(output.status.success(), "tandem {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

/// A running `tandem serve`: its address, and every stdout line so far.
struct Served {
    child: Child,
    address: String,
    stdout: Vec<String>,
    logs: mpsc::Receiver<Value>,
}

fn serve(db: &TestDb) -> Served {
    let mut child = tandem(db, &["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem serve");
    let (tx, logs) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let parsed: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
            if tx.send(parsed).is_err() {
                return;
            }
        }
    });
    let address = loop {
        let line = logs
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs where it listens");
        if line["fields"]["message"] == "serving" {
            break line["fields"]["address"]
                .as_str()
                .expect("address")
                .to_owned();
        }
    };
    // Whatever was printed before "serving" (the admin token, on a first start).
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut stdout = Vec::new();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_millis(500)) {
        stdout.push(line);
    }
    Served {
        child,
        address,
        stdout,
        logs,
    }
}

impl Served {
    /// SIGTERM, then the exit status and the log messages that followed.
    fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = self.child.wait().expect("wait");
        // The reader thread ends at the end of stderr, i.e. once the process
        // has exited and every line it wrote has been read.
        let messages = std::iter::from_fn(|| self.logs.recv_timeout(Duration::from_secs(10)).ok())
            .filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned))
            .collect();
        (status, messages)
    }
}

fn secret_in(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("tdm_"))
        .map(str::to_owned)
}

#[tokio::test]
async fn migrate_mint_serve_and_stop_on_sigterm() {
    let db = TestDb::fresh().await;
    assert_eq!(run(&db, &["migrate"]).trim(), "migrations applied");
    let agent = run(&db, &["token", "create", "agent", "--name", "Sam"]);
    let agent = agent.trim();
    assert!(agent.starts_with("tdm_"), "{agent}");
    let customer = run(
        &db,
        &["token", "create", "customer", "--customer-id", "alice"],
    );

    // First start: a one-time admin token is printed (and works).
    let served = serve(&db);
    let admin = secret_in(&served.stdout).expect("the first start prints an admin token");
    let client = reqwest::Client::new();
    let base = format!("http://{}", served.address);
    let thread = Response::read(
        client
            .post(format!("{base}/v1/threads"))
            .bearer_auth(&admin)
            .json(&json!({"customer_id": "alice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let thread = thread.body["id"].as_str().expect("thread id").to_owned();
    for (token, body) in [
        (customer.trim(), json!({"content": "Hello"})),
        (agent, json!({"content": "Hi Alice"})),
    ] {
        let posted = client
            .post(format!("{base}/v1/threads/{thread}/messages"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201);
    }
    let (status, messages) = served.terminate();
    assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
    assert!(messages.iter().any(|m| m == "stopped"), "{messages:?}");

    // Second start: no new admin token; the data and the tokens are still there.
    let served = serve(&db);
    assert_eq!(secret_in(&served.stdout), None, "{:?}", served.stdout);
    let page = Response::read(
        client
            .get(format!(
                "http://{}/v1/threads/{thread}/messages",
                served.address
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let seqs: Vec<_> = page.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}

#[tokio::test]
async fn a_bad_configuration_is_refused_with_a_clear_error() {
    let db = TestDb::fresh().await;
    let output = tandem(&db, &["--config", "/nonexistent/tandem.toml", "migrate"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let output = tandem(&db, &["serve"])
        .env("TANDEM_LIMITS__MAX_BODY", "5")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_body"));
    db.drop().await;
}
