//! Several `tandem serve` processes on one database, as a deployment runs
//! them: three on PostgreSQL, where each learns of the others' commits from
//! LISTEN/NOTIFY signals, and one on SQLite, which one process owns.
//! Subscribers and posters are spread across the nodes; every subscriber must
//! end with every message of its thread exactly once, in `seq` order, even
//! though one node is SIGKILLed mid-stream and restarted on the same port:
//! its subscribers reconnect (some to another node at once, some to the
//! restarted node) with `after_seq` and miss nothing. On SQLite the same body
//! is a crash-recovery test of the single node.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tandem_tests::TestDb;
use tandem_tests::ws::{Ended, WsClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as Frame;

const THREADS: usize = 6;
const SUBSCRIBERS_PER_THREAD: usize = 4;
const MESSAGES: usize = 300;
const POSTERS: usize = 6;
/// Each poster's pace: the 300 messages take about three seconds.
const POST_EVERY: Duration = Duration::from_millis(60);
/// The node killed mid-stream.
const VICTIM: usize = 0;
/// Messages stored before the kill.
const KILL_AFTER: usize = MESSAGES / 3;
/// Messages stored on the other nodes while the victim is down (when there
/// are other nodes).
const DOWN_FOR: usize = MESSAGES / 4;
/// Bound on any one wait: a process starting, a frame, a reconnection.
const WAIT: Duration = Duration::from_secs(15);
/// Bound on the whole scenario.
const SCENARIO: Duration = Duration::from_secs(50);
/// How long a subscriber that has everything keeps listening for extras.
const QUIET: Duration = Duration::from_millis(300);
/// Between two tries of something not ready yet (a node coming back).
const RETRY: Duration = Duration::from_millis(25);
/// The nodes' safety-net poll, in seconds: longer than the scenario, so that
/// what this test checks is the LISTEN/NOTIFY signals (and the resync after
/// a start), not a poll that would hide a lost one.
const POLL_INTERVAL_SECS: &str = "600";

/// Every line the nodes wrote, prefixed with the node and its incarnation.
type Logs = Arc<Mutex<Vec<String>>>;

/// `tandem` pointed at the test database.
fn tandem(db: &TestDb, args: &[&str]) -> Command {
    let options = db.options();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
    command
        .arg("--log-json")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &options.url)
        .env("TANDEM_DATABASE__MAX_CONNECTIONS", "8")
        .env("TANDEM_HUB__POLL_INTERVAL_SECS", POLL_INTERVAL_SECS)
        .stdin(Stdio::null());
    if let Some(schema) = &options.schema {
        command.env("TANDEM_DATABASE__SCHEMA", schema);
    }
    command
}

/// One `tandem serve` process, restartable on the same address.
struct Node {
    /// `127.0.0.1:PORT`, the same for every incarnation.
    address: String,
    child: Option<Child>,
    /// Lines the current process printed on stdout (the first admin token).
    stdout: mpsc::UnboundedReceiver<String>,
}

impl Drop for Node {
    /// Kills the process (by its PID) whatever happens to the test.
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// The nodes, what they logged, and which incarnation of each is running.
struct Cluster {
    nodes: Vec<Node>,
    logs: Logs,
    incarnations: Arc<Vec<AtomicUsize>>,
    client: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            let notable: Vec<_> = logs
                .iter()
                .filter(|l| !l.contains(r#""level":"INFO""#))
                .collect();
            eprintln!("--- node warnings and errors ({}) ---", notable.len());
            for line in notable.iter().rev().take(60).rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Cluster {
    fn new(count: usize) -> Self {
        Self {
            nodes: Vec::new(),
            logs: Logs::default(),
            incarnations: Arc::new((0..count).map(|_| AtomicUsize::new(0)).collect()),
            client: client(),
        }
    }

    fn base(&self, node: usize) -> String {
        format!("http://{}", self.nodes[node].address)
    }

    /// Starts the process of node `index` listening on `listen`, and waits
    /// until it serves and answers `/healthz`.
    async fn spawn(&self, db: &TestDb, index: usize, listen: &str) -> Node {
        let incarnation = self.incarnations[index].fetch_add(1, Ordering::SeqCst) + 1;
        let tag = format!("node{index}#{incarnation}");
        let mut child = tandem(db, &["serve"])
            .env("TANDEM_LISTEN", listen)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tandem serve");
        // Both pipes are drained until the process ends, so it never blocks
        // on a full pipe.
        let (serving_tx, serving) = oneshot::channel();
        let stderr = child.stderr.take().expect("stderr");
        let logs = self.logs.clone();
        let stderr_tag = tag.clone();
        tokio::spawn(async move {
            let mut serving_tx = Some(serving_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(parsed) = serde_json::from_str::<Value>(&line)
                    && parsed["fields"]["message"] == "serving"
                    && let (Some(tx), Some(address)) =
                        (serving_tx.take(), parsed["fields"]["address"].as_str())
                {
                    let _ = tx.send(address.to_owned());
                }
                lock(&logs).push(format!("{stderr_tag} {line}"));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (stdout_tx, stdout_rx) = mpsc::unbounded_channel();
        let logs = self.logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                lock(&logs).push(format!("{tag} stdout: {line}"));
                let _ = stdout_tx.send(line);
            }
        });
        let address = tokio::time::timeout(WAIT, serving)
            .await
            .unwrap_or_else(|_| panic!("node {index} did not log \"serving\" within {WAIT:?}"))
            .unwrap_or_else(|_| panic!("node {index} exited before serving"));
        wait_healthy(&self.client, &format!("http://{address}")).await;
        Node {
            address,
            child: Some(child),
            stdout: stdout_rx,
        }
    }

    /// Starts `count` nodes on ports of the OS's choosing; returns the admin
    /// token the first one prints on its first start.
    async fn start(&mut self, db: &TestDb, count: usize) -> String {
        let mut first = self.spawn(db, 0, "127.0.0.1:0").await;
        let admin = tokio::time::timeout(WAIT, async {
            loop {
                let line = first.stdout.recv().await.expect("node 0's stdout ended");
                if let Some(word) = line.split_whitespace().find(|w| w.starts_with("tdm_")) {
                    return word.to_owned();
                }
            }
        })
        .await
        .expect("the first start prints an admin token");
        self.nodes.push(first);
        // The others migrate (a no-op) and start side by side.
        let others =
            futures::future::join_all((1..count).map(|i| self.spawn(db, i, "127.0.0.1:0"))).await;
        self.nodes.extend(others);
        admin
    }

    /// SIGKILL, by PID, the process of node `index`, and reap it.
    async fn kill(&mut self, index: usize) {
        let mut child = self.nodes[index].child.take().expect("a running node");
        child.start_kill().expect("SIGKILL");
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("the killed process exits")
            .expect("wait");
        assert!(!status.success(), "{status:?}");
    }

    /// Starts node `index` again on its address.
    async fn restart(&mut self, db: &TestDb, index: usize) {
        let address = self.nodes[index].address.clone();
        let node = self.spawn(db, index, &address).await;
        assert_eq!(node.address, address);
        self.nodes[index] = node;
    }

    /// Kills every node and waits for the processes to end.
    async fn stop(mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(WAIT, child.wait()).await;
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

async fn healthy(client: &reqwest::Client, base: &str) -> bool {
    client
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + WAIT;
    while !healthy(client, base).await {
        assert!(
            Instant::now() < deadline,
            "{base}/healthz not ok within {WAIT:?}"
        );
        tokio::time::sleep(RETRY).await;
    }
}

/// Polls `done` until it holds; panics with `what` after `WAIT`.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Mints a token with `tandem token create …`.
async fn mint(db: &TestDb, args: &[&str]) -> String {
    let args: Vec<_> = ["token", "create"].iter().chain(args).copied().collect();
    let output = tokio::time::timeout(WAIT, tandem(db, &args).output())
        .await
        .expect("tandem token create finishes")
        .expect("run tandem");
    assert!(output.status.success(), "tandem {args:?}: {output:?}");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// What the test shares with its subscriber and poster tasks.
struct Shared {
    /// `http://127.0.0.1:PORT` of each node; ports survive restarts.
    bases: Vec<String>,
    incarnations: Arc<Vec<AtomicUsize>>,
    client: reqwest::Client,
    admin: String,
    threads: Vec<String>,
    /// Subscribers whose first subscription is live.
    subscribed: AtomicUsize,
    /// Messages stored (a 201, first time or replayed).
    posted: AtomicUsize,
    /// Connections to the victim's first process that ended.
    victim_drops: AtomicUsize,
}

impl Shared {
    fn ws_url(&self, node: usize) -> String {
        format!("{}/v1/ws", self.bases[node].replacen("http://", "ws://", 1))
    }
}

/// Where a subscriber of the killed node goes when its connection drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reconnect {
    /// Back to its own node: waits for the restart.
    Home,
    /// At once to the next node (its own when it is the only one).
    Elsewhere,
}

#[derive(Debug)]
struct Subscriber {
    name: String,
    thread: usize,
    home: usize,
    reconnect: Reconnect,
    token: String,
}

/// One connection of a subscriber, as it went.
#[derive(Debug)]
struct Connection {
    node: usize,
    incarnation: usize,
    after_seq: i64,
    /// `message` frames received on it.
    messages: usize,
    ended: Option<String>,
}

#[derive(Debug, Default)]
struct Received {
    /// Every `message` frame of the thread, as (seq, message id), in order.
    messages: Vec<(i64, String)>,
    connections: Vec<Connection>,
}

impl Received {
    fn last_seq(&self) -> i64 {
        self.messages.last().map_or(0, |m| m.0)
    }
}

/// The final `seq` of every thread, once posting is over.
type Targets = Option<Arc<Vec<i64>>>;

/// Connects to `node` once it answers `/healthz` (it may be down, waiting
/// for its restart); returns the socket and the incarnation it reached.
async fn connect(shared: &Shared, node: usize, token: &str) -> Result<(WsClient, usize), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        if healthy(&shared.client, &shared.bases[node]).await {
            let incarnation = shared.incarnations[node].load(Ordering::SeqCst);
            return WsClient::connect(&shared.ws_url(node), Some(token), None)
                .await
                .map(|ws| (ws, incarnation))
                .map_err(|refused| format!("node {node} refused the upgrade: {refused:?}"));
        }
        if Instant::now() > deadline {
            return Err(format!("node {node} not back within {WAIT:?}"));
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The next text frame, or how the connection ended; `None` after `wait`.
async fn next_frame(ws: &mut WsClient, wait: Duration) -> Option<Result<Value, Ended>> {
    let read = async {
        loop {
            match ws.stream().next().await {
                Some(Ok(Frame::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("frames are JSON"));
                }
                Some(Ok(Frame::Close(frame))) => {
                    return Err(Ended::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok()
}

/// Subscribes to the thread and reads it until it has the thread's final
/// `seq`, reconnecting with `after_seq` whenever the connection ends.
async fn subscriber(
    shared: Arc<Shared>,
    me: Subscriber,
    mut targets: watch::Receiver<Targets>,
) -> (Subscriber, Received, Result<(), String>) {
    let mut received = Received::default();
    let result = subscribe_and_read(&shared, &me, &mut targets, &mut received).await;
    (me, received, result)
}

async fn subscribe_and_read(
    shared: &Shared,
    me: &Subscriber,
    targets: &mut watch::Receiver<Targets>,
    received: &mut Received,
) -> Result<(), String> {
    let thread = &shared.threads[me.thread];
    let topic = format!("thread:{thread}");
    let nodes = shared.bases.len();
    let mut node = me.home;
    loop {
        let after_seq = received.last_seq();
        let (mut ws, incarnation) = connect(shared, node, &me.token).await?;
        received.connections.push(Connection {
            node,
            incarnation,
            after_seq,
            messages: 0,
            ended: None,
        });
        ws.send(json!({"type": "subscribe", "topic": topic, "after_seq": after_seq}))
            .await;
        let mut live = false;
        let ended = loop {
            let target = targets.borrow().as_ref().map(|t| t[me.thread]);
            if target.is_some_and(|t| received.last_seq() >= t) {
                // Everything is here: anything more would be a duplicate.
                while let Some(Ok(frame)) = next_frame(&mut ws, QUIET).await {
                    if frame["type"] == "message" && frame["thread_id"] == *thread {
                        received.messages.push(message_of(&frame));
                    }
                }
                ws.close().await;
                return Ok(());
            }
            let frame = tokio::select! {
                changed = targets.changed() => {
                    changed.map_err(|_| "the test stopped".to_owned())?;
                    continue;
                }
                frame = next_frame(&mut ws, WAIT) => frame,
            };
            let frame = match frame {
                None => {
                    return Err(format!(
                        "no frame for {WAIT:?} on node {node} after seq {} (target {target:?})",
                        received.last_seq()
                    ));
                }
                Some(Err(ended)) => break ended,
                Some(Ok(frame)) => frame,
            };
            match frame["type"].as_str() {
                Some("subscribed") if frame["topic"] == topic => {
                    if frame["recovered"] != true {
                        return Err(format!("subscribed without recovery: {frame}"));
                    }
                    if !live {
                        live = true;
                        if received.connections.len() == 1 {
                            shared.subscribed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                Some("message") if frame["thread_id"] == *thread => {
                    received.messages.push(message_of(&frame));
                    if let Some(connection) = received.connections.last_mut() {
                        connection.messages += 1;
                    }
                }
                Some("error") => return Err(format!("error frame on node {node}: {frame}")),
                // Presence, thread changes: not what this test counts.
                _ => {}
            }
        };
        if let Some(connection) = received.connections.last_mut() {
            connection.ended = Some(format!("{ended:?}"));
        }
        if node == VICTIM && incarnation == 1 {
            shared.victim_drops.fetch_add(1, Ordering::SeqCst);
        }
        node = match me.reconnect {
            Reconnect::Home => me.home,
            Reconnect::Elsewhere => (node + 1) % nodes,
        };
    }
}

fn message_of(frame: &Value) -> (i64, String) {
    (
        frame["seq"].as_i64().expect("seq"),
        frame["message"]["id"]
            .as_str()
            .expect("message id")
            .to_owned(),
    )
}

/// What one poster did.
#[derive(Debug, Default)]
struct Posted {
    /// Requests that failed (the node was down) and were sent again to the
    /// next node.
    failovers: usize,
    /// Retries answered with the message an earlier try had stored.
    replayed: usize,
}

/// Posts the shared sequence of messages at a steady pace, starting each one
/// on its own node and moving on to the next node when that one is down.
/// Every message has an idempotency key, so a retry after a kill never
/// stores it twice.
async fn poster(shared: Arc<Shared>, me: usize, next: Arc<AtomicUsize>) -> Result<Posted, String> {
    let nodes = shared.bases.len();
    let mut report = Posted::default();
    let mut pace = tokio::time::interval(POST_EVERY);
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        pace.tick().await;
        let k = next.fetch_add(1, Ordering::SeqCst);
        if k >= MESSAGES {
            return Ok(report);
        }
        let thread = &shared.threads[k % THREADS];
        let deadline = Instant::now() + WAIT;
        let mut node = me % nodes;
        loop {
            let sent = shared
                .client
                .post(format!(
                    "{}/v1/threads/{thread}/messages",
                    shared.bases[node]
                ))
                .bearer_auth(&shared.admin)
                .header("idempotency-key", format!("message-{k}"))
                .json(&json!({"content": format!("message {k} from poster {me}")}))
                .send()
                .await;
            match sent {
                Ok(response) if response.status() == 201 => {
                    if response.headers().contains_key("idempotent-replayed") {
                        report.replayed += 1;
                    }
                    shared.posted.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    return Err(format!("message {k} on node {node}: {status} {body}"));
                }
                Err(error) => {
                    if Instant::now() > deadline {
                        return Err(format!("message {k}: no node took it: {error}"));
                    }
                    report.failovers += 1;
                    node = (node + 1) % nodes;
                    if node == me % nodes {
                        // Every node refused: wait for one to come back.
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    }
}

/// Where a subscriber's messages part from the store's, briefly.
fn difference(received: &[(i64, String)], stored: &[(i64, String)]) -> String {
    let at = received
        .iter()
        .zip(stored)
        .position(|(r, s)| r != s)
        .unwrap_or(received.len().min(stored.len()));
    let around = |messages: &[(i64, String)]| -> Vec<i64> {
        messages
            .iter()
            .skip(at.saturating_sub(2))
            .take(6)
            .map(|m| m.0)
            .collect()
    };
    format!(
        "received {} messages, stored {}; first difference at #{at}: received seqs {:?}, \
         stored {:?} (same seqs mean other message ids)",
        received.len(),
        stored.len(),
        around(received),
        around(stored)
    )
}

/// Every message of a thread over REST, as (seq, id).
async fn stored(shared: &Shared, node: usize, thread: &str) -> Vec<(i64, String)> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page: Value = shared
            .client
            .get(format!(
                "{}/v1/threads/{thread}/messages?after_seq={after}&limit=500",
                shared.bases[node]
            ))
            .bearer_auth(&shared.admin)
            .send()
            .await
            .expect("list messages")
            .json()
            .await
            .expect("a page of messages");
        let messages = page["messages"].as_array().expect("messages");
        all.extend(messages.iter().map(|m| {
            (
                m["seq"].as_i64().expect("seq"),
                m["id"].as_str().expect("id").to_owned(),
            )
        }));
        after = page["next_after_seq"].as_i64().expect("next_after_seq");
        if page["has_more"] != true {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_once_in_order_across_nodes_and_a_crash() {
    let started = Instant::now();
    let db = TestDb::fresh().await;
    let node_count = if db.is_postgres() { 3 } else { 1 };
    let mut cluster = Cluster::new(node_count);
    let admin = cluster.start(&db, node_count).await;
    let agent = mint(&db, &["agent", "--name", "Sam"]).await;
    let ready = started.elapsed();
    tokio::time::timeout(SCENARIO, scenario(&db, &mut cluster, admin, agent))
        .await
        .unwrap_or_else(|_| panic!("the scenario took more than {SCENARIO:?}"));
    cluster.stop().await;
    db.drop().await;
    println!(
        "{node_count} node(s): started in {ready:?}, done in {:?}",
        started.elapsed()
    );
}

async fn scenario(db: &TestDb, cluster: &mut Cluster, admin: String, agent: String) {
    let nodes = cluster.nodes.len();
    let bases: Vec<_> = (0..nodes).map(|i| cluster.base(i)).collect();
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let created: Value = cluster
            .client
            .post(format!("{}/v1/threads", bases[t % nodes]))
            .bearer_auth(&admin)
            .json(&json!({"customer_id": format!("customer-{t}")}))
            .send()
            .await
            .expect("create a thread")
            .json()
            .await
            .expect("a thread");
        threads.push(created["id"].as_str().expect("thread id").to_owned());
    }
    let shared = Arc::new(Shared {
        bases,
        incarnations: cluster.incarnations.clone(),
        client: cluster.client.clone(),
        admin: admin.clone(),
        threads,
        subscribed: AtomicUsize::new(0),
        posted: AtomicUsize::new(0),
        victim_drops: AtomicUsize::new(0),
    });

    // Subscribers: each thread has some on every node; half of the killed
    // node's go back to it, half go elsewhere at once.
    let (targets_tx, targets) = watch::channel::<Targets>(None);
    let mut subscribers = Vec::new();
    let mut victim_subscribers = 0;
    for s in 0..SUBSCRIBERS_PER_THREAD {
        for t in 0..THREADS {
            let home = (t + s) % nodes;
            victim_subscribers += usize::from(home == VICTIM);
            let me = Subscriber {
                name: format!("subscriber t{t}/s{s}"),
                thread: t,
                home,
                reconnect: if s % 2 == 0 {
                    Reconnect::Home
                } else {
                    Reconnect::Elsewhere
                },
                token: if t % 2 == 0 { &admin } else { &agent }.clone(),
            };
            subscribers.push(tokio::spawn(subscriber(
                shared.clone(),
                me,
                targets.clone(),
            )));
        }
    }
    let total_subscribers = subscribers.len();
    wait_until("every subscription to be live", || {
        shared.subscribed.load(Ordering::SeqCst) == total_subscribers
    })
    .await;

    let next = Arc::new(AtomicUsize::new(0));
    let posters: Vec<_> = (0..POSTERS)
        .map(|p| tokio::spawn(poster(shared.clone(), p, next.clone())))
        .collect();

    // Mid-stream: SIGKILL the victim, keep it down while the others take
    // the posts (if there are others), then start it again on its port.
    wait_until("the first messages to be stored", || {
        shared.posted.load(Ordering::SeqCst) >= KILL_AFTER
    })
    .await;
    cluster.kill(VICTIM).await;
    let killed_at = shared.posted.load(Ordering::SeqCst);
    wait_until("the killed node's subscribers to see the drop", || {
        shared.victim_drops.load(Ordering::SeqCst) >= victim_subscribers
            && (nodes == 1 || shared.posted.load(Ordering::SeqCst) >= KILL_AFTER + DOWN_FOR)
    })
    .await;
    let posted_while_down = shared.posted.load(Ordering::SeqCst) - killed_at;
    cluster.restart(db, VICTIM).await;
    let restarted_at = shared.posted.load(Ordering::SeqCst);

    let mut failovers = 0;
    let mut replayed = 0;
    for poster in posters {
        let report = poster
            .await
            .expect("poster task")
            .unwrap_or_else(|e| panic!("{e}"));
        failovers += report.failovers;
        replayed += report.replayed;
    }

    // The store is the record: each thread's seqs are 1..=last, and every
    // message was stored once.
    let mut expected = Vec::new();
    for (t, thread) in shared.threads.iter().enumerate() {
        let messages = stored(&shared, t % nodes, thread).await;
        let seqs: Vec<i64> = messages.iter().map(|m| m.0).collect();
        let last = i64::try_from(seqs.len()).expect("count");
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "thread {t}'s seqs");
        expected.push(messages);
    }
    let total: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(total, MESSAGES, "each message stored once");
    let last_seqs: Vec<i64> = expected
        .iter()
        .map(|m| m.last().map_or(0, |l| l.0))
        .collect();
    targets_tx
        .send(Some(Arc::new(last_seqs)))
        .expect("subscribers listen");

    let mut failures = Vec::new();
    let mut reconnected_home = 0;
    let mut reconnected_elsewhere = 0;
    for handle in subscribers {
        let (me, received, result) = handle.await.expect("subscriber task");
        let context = format!(
            "{}: home node {}, {:?}",
            me.name, me.home, received.connections
        );
        if let Err(error) = result {
            failures.push(format!("{context}: {error}"));
            continue;
        }
        if received.messages != expected[me.thread] {
            failures.push(format!(
                "{context}: {}",
                difference(&received.messages, &expected[me.thread])
            ));
            continue;
        }
        let connections = &received.connections;
        if me.home != VICTIM {
            if connections.len() != 1 {
                failures.push(format!("{context}: a surviving node's socket dropped"));
            }
            continue;
        }
        // The killed node's subscribers came back, with after_seq.
        let last = connections.last().expect("a connection");
        if connections.len() < 2 || connections[0].incarnation != 1 || last.after_seq == 0 {
            failures.push(format!("{context}: did not reconnect after the kill"));
        } else if last.node == VICTIM {
            if last.incarnation != 2 || last.messages == 0 {
                failures.push(format!(
                    "{context}: got nothing from the restarted node ({last:?})"
                ));
            }
            reconnected_home += 1;
        } else {
            reconnected_elsewhere += 1;
        }
    }
    assert!(
        failures.is_empty(),
        "{} subscriber(s) of {total_subscribers} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        reconnected_home > 0,
        "someone resumed on the restarted node"
    );
    println!(
        "{nodes} node(s), {total_subscribers} subscribers, {MESSAGES} messages: killed node \
         {VICTIM} after {killed_at} stored, {posted_while_down} stored while it was down, \
         restarted at {restarted_at}; {failovers} failovers, {replayed} idempotent replays; \
         {reconnected_home} resumed on the restarted node, {reconnected_elsewhere} elsewhere"
    );
}
