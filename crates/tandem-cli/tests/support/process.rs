//! The `tandem` binary as a child process, shared by the CLI tests (each
//! test file includes this module and uses what it needs).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::TestDb;

/// `tandem` with its database pointed at `db` and a port of the OS's choosing.
pub fn tandem(db: &TestDb, args: &[&str]) -> Command {
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

pub fn run(db: &TestDb, args: &[&str]) -> String {
    let output = tandem(db, args).output().expect("run tandem");
    assert!(output.status.success(), "tandem {args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Sends `signal` (`TERM`, `INT`) to a child process.
pub fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill -{signal}");
}

/// Waits for a child to exit, for at most `timeout`; kills it and fails if
/// it does not.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `tandem` run by `prlimit`, with `soft` and `hard` open-file limits.
pub fn tandem_with_open_files(db: &TestDb, soft: u64, hard: u64, args: &[&str]) -> Command {
    let plain = tandem(db, args);
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--nofile={soft}:{hard}"))
        .arg("--")
        .arg(plain.get_program())
        .args(plain.get_args())
        .env_clear();
    for (name, value) in plain.get_envs() {
        if let Some(value) = value {
            command.env(name, value);
        }
    }
    command
}

/// A running `tandem serve`: its address, and every stdout line so far.
pub struct Served {
    pub child: Child,
    pub address: String,
    pub stdout: Vec<String>,
    /// The log lines up to and with "serving".
    pub startup: Vec<Value>,
    logs: mpsc::Receiver<Value>,
}

/// `tandem serve` on a fresh port.
pub fn serve(db: &TestDb) -> Served {
    serve_command(&mut tandem(db, &["serve"]))
}

/// Starts a `tandem serve` command and waits until it listens.
pub fn serve_command(command: &mut Command) -> Served {
    let mut child = command
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
    let mut startup = Vec::new();
    let address = loop {
        let line = logs
            .recv_timeout(Duration::from_secs(30))
            .expect("the server logs where it listens");
        let serving = line["fields"]["message"] == "serving";
        startup.push(line);
        if serving {
            break startup[startup.len() - 1]["fields"]["address"]
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
        startup,
        logs,
    }
}

impl Served {
    /// The log lines written so far (after "serving"), as JSON.
    pub fn logs_so_far(&self) -> Vec<Value> {
        self.logs.try_iter().collect()
    }

    /// SIGTERM, then the exit status and the log messages that followed.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        signal(&self.child, "TERM");
        let status = wait_for_exit(&mut self.child, Duration::from_secs(60));
        // The reader thread ends at the end of stderr, i.e. once the process
        // has exited and every line it wrote has been read.
        let messages = std::iter::from_fn(|| self.logs.recv_timeout(Duration::from_secs(10)).ok())
            .filter_map(|l| l["fields"]["message"].as_str().map(str::to_owned))
            .collect();
        (status, messages)
    }
}

pub fn secret_in(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("tdm_"))
        .map(str::to_owned)
}
