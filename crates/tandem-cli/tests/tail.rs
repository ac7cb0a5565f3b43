//! `tandem tail` against the real server, both as child processes: replay,
//! live messages, a server restart with messages committed while it was
//! down (more than the hub will replay, so the tail pages them over REST),
//! and a clean exit on SIGINT and SIGTERM; refusals that retrying cannot fix
//! end it with a message. Runs on the backend the suite is pointed at
//! (`TANDEM_TEST_DATABASE_URL`).

#[path = "support/process.rs"]
mod process;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_model::{
    Author, AuthorKind, Content, MessageStatus, NewMessage, Role, ThreadId, Visibility,
};
use tandem_store::Store;
use tandem_tests::{Response, TestDb};

use process::{Served, secret_in, serve, serve_command, signal, tandem, wait_for_exit};

/// How long any one wait for the tail may take.
const WAIT: Duration = Duration::from_secs(30);

/// A running `tandem tail`: its stdout frames so far and its stderr.
struct Tail {
    child: Child,
    lines: mpsc::Receiver<String>,
    frames: Vec<Value>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// `tandem tail ARGS` against the server at `address`, with `token`.
fn tail_command(address: &str, token: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
    command
        .arg("tail")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TANDEM_URL", format!("http://{address}"))
        .env("TANDEM_TOKEN", token);
    command
}

impl Tail {
    fn spawn(address: &str, token: &str, args: &[&str]) -> Self {
        let mut child = tail_command(address, token, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandem tail");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr");
        let collected = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                collected.lock().expect("stderr lines").push(line);
            }
        });
        Self {
            child,
            lines,
            frames: Vec::new(),
            stderr,
        }
    }

    /// Reads stdout until `done` holds of every frame printed so far; fails
    /// after `WAIT`.
    #[track_caller]
    fn until(&mut self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(&self.frames) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let frame = serde_json::from_str(&line)
                        .unwrap_or_else(|_| panic!("stdout line that is not JSON: {line}"));
                    self.frames.push(frame);
                }
                Err(_) => panic!(
                    "waiting for {what}: stdout so far {:#?}\nstderr {:#?}",
                    self.frames,
                    self.stderr.lock().expect("stderr lines")
                ),
            }
        }
    }

    /// Waits until the message with `seq` is printed.
    #[track_caller]
    fn until_seq(&mut self, seq: i64) {
        self.until(&format!("seq {seq}"), |frames| {
            seqs(frames).last().is_some_and(|last| *last >= seq)
        });
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lines").join("\n")
    }
}

/// The seqs of the `message` frames, in the order printed.
fn seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_i64().expect("seq"))
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

async fn post(client: &reqwest::Client, base: &str, token: &str, thread: &str, text: &str) {
    let posted = Response::read(
        client
            .post(format!("{base}/v1/threads/{thread}/messages"))
            .bearer_auth(token)
            .json(&json!({"content": text}))
            .send()
            .await
            .expect("post a message"),
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.text);
}

/// Commits messages straight to the store, as another server process
/// would while this one is down.
async fn commit_while_down(db: &TestDb, thread: &str, texts: &[&str]) {
    let store = Store::connect(&db.options()).await.expect("connect");
    let thread_id: ThreadId = thread.parse().expect("thread id");
    for text in texts {
        store
            .post_message(
                NewMessage {
                    id: None,
                    thread_id,
                    role: Role::Assistant,
                    agent_name: Some("Sam".into()),
                    author: Author {
                        kind: AuthorKind::Human,
                        id: Some("Sam".into()),
                    },
                    content: Content::Text((*text).into()),
                    visibility: Visibility::Public,
                    status: MessageStatus::Published,
                    metadata: json!({}),
                    reply_to: None,
                    customer_scope: None,
                },
                None,
                None,
            )
            .await
            .expect("commit a message");
    }
    store.close().await;
}

/// A first start on a fresh database: the server and its admin token.
fn first_start(db: &TestDb) -> (Served, String) {
    let served = serve(db);
    let admin = secret_in(&served.stdout).expect("the first start prints an admin token");
    (served, admin)
}

async fn create_thread(client: &reqwest::Client, base: &str, admin: &str) -> String {
    let thread = Response::read(
        client
            .post(format!("{base}/v1/threads"))
            .bearer_auth(admin)
            .json(&json!({"customer_id": "alice"}))
            .send()
            .await
            .expect("create a thread"),
    )
    .await;
    thread.body["id"].as_str().expect("thread id").to_owned()
}

#[tokio::test]
async fn tail_prints_every_message_once_across_a_server_restart() {
    let db = TestDb::fresh().await;
    let (served, admin) = first_start(&db);
    let address = served.address.clone();
    let base = format!("http://{address}");
    let client = reqwest::Client::new();
    let thread = create_thread(&client, &base, &admin).await;
    for n in 1..=3 {
        post(&client, &base, &admin, &thread, &format!("before {n}")).await;
    }

    // Replay after seq 1, then live.
    let mut tail = Tail::spawn(&address, &admin, &["--thread", &thread, "--after-seq", "1"]);
    tail.until_seq(3);
    let subscribed = &tail.frames[0];
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["topic"], format!("thread:{thread}"));
    assert_eq!(subscribed["last_seq"], 3);
    assert_eq!(subscribed["recovered"], true);
    for n in 4..=5 {
        post(&client, &base, &admin, &thread, &format!("live {n}")).await;
    }
    tail.until_seq(5);

    // The server stops (1001); messages are committed while it is down,
    // more than the restarted server replays, so the tail pages them.
    let (status, _) = served.terminate();
    assert!(status.success(), "{status:?}");
    commit_while_down(&db, &thread, &["down 6", "down 7", "down 8"]).await;
    let served = serve_command(
        tandem(&db, &["serve"])
            .env("TANDEM_LISTEN", &address)
            .env("TANDEM_HUB__REPLAY_LIMIT", "2"),
    );
    assert_eq!(served.address, address);
    post(&client, &base, &admin, &thread, "after 9").await;
    tail.until_seq(9);
    for n in 10..=11 {
        post(&client, &base, &admin, &thread, &format!("after {n}")).await;
    }
    tail.until_seq(11);

    // Every seq once, in order, no gap.
    assert_eq!(seqs(&tail.frames), (2..=11).collect::<Vec<_>>());
    let resubscribed: Vec<_> = tail
        .frames
        .iter()
        .filter(|f| f["type"] == "subscribed")
        .collect();
    assert!(
        resubscribed.iter().any(|f| f["recovered"] == false),
        "the restarted server replays at most 2: {resubscribed:?}"
    );
    // Paged messages look exactly like the socket's.
    let page = Response::read(
        client
            .get(format!(
                "{base}/v1/threads/{thread}/messages?after_seq=5&limit=1"
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("page"),
    )
    .await;
    let by_seq = |seq: i64| {
        tail.frames
            .iter()
            .find(|f| f["type"] == "message" && f["seq"] == seq)
            .expect("printed")
    };
    let paged = by_seq(6);
    assert_eq!(paged["message"], page.body["messages"][0]);
    for frame in tail.frames.iter().filter(|f| f["type"] == "message") {
        assert_eq!(
            keys(frame),
            keys(&json!({"type": 0, "thread_id": 0, "seq": 0, "message": 0}))
        );
        assert_eq!(frame["thread_id"], thread.as_str());
        assert_eq!(frame["message"]["seq"], frame["seq"]);
        assert_eq!(keys(&frame["message"]), keys(&by_seq(11)["message"]));
    }
    let stderr = tail.stderr();
    assert!(stderr.contains("reconnecting"), "{stderr}");

    // Ctrl-C: a clean exit.
    signal(&tail.child, "INT");
    let status = wait_for_exit(&mut tail.child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}: {}", tail.stderr());
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}

#[tokio::test]
async fn tail_follows_the_inbox_and_stops_on_sigterm() {
    let db = TestDb::fresh().await;
    let (served, admin) = first_start(&db);
    let mut tail = Tail::spawn(&served.address, &admin, &["--inbox"]);
    tail.until("the inbox subscription", |frames| {
        frames
            .iter()
            .any(|f| f["type"] == "subscribed" && f["topic"] == "inbox")
    });
    signal(&tail.child, "TERM");
    let status = wait_for_exit(&mut tail.child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}: {}", tail.stderr());
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}

/// Runs a tail to its end, which must come by itself within `WAIT`.
fn run_to_end(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tandem tail");
    wait_for_exit(&mut child, WAIT);
    child.wait_with_output().expect("output")
}

#[tokio::test]
async fn refusals_that_retrying_cannot_fix_end_the_tail() {
    let db = TestDb::fresh().await;
    let (served, admin) = first_start(&db);
    let address = served.address.clone();
    let client = reqwest::Client::new();
    let thread = create_thread(&client, &format!("http://{address}"), &admin).await;

    let unknown = ThreadId::new().to_string();
    let cases: [(&str, Vec<&str>, &str); 4] = [
        ("tdm_not_a_token", vec!["--thread", &thread], "401"),
        ("tdm_not_a_token", vec!["--inbox"], "401"),
        (&admin, vec!["--thread", &unknown], "not_found"),
        (&admin, vec!["--thread", "not-an-id"], "invalid value"),
    ];
    for (token, args, expected) in &cases {
        let output = run_to_end(tail_command(&address, token, args));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {output:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Neither or both topics.
    for args in [vec![], vec!["--inbox", "--thread", &thread]] {
        let output = run_to_end(tail_command(&address, &admin, &args));
        assert!(!output.status.success(), "{args:?}: {output:?}");
    }
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}
