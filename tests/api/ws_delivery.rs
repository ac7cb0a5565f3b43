//! The hub's delivery guarantees, through real sockets: every subscriber gets
//! each message of its thread once and in order, whatever races with its
//! subscribe, however it drops and reconnects, across restarts, and even when
//! it was closed for reading too slowly.
//!
//! 1. The subscribe race: 2,000 subscribes with `after_seq` while posters write.
//! 2. A proptest model: post, subscribe, drop, reconnect, restart, read.
//! 3. A subscriber that never reads while 5,000 messages flow to 100 others.
//! 4. `after_seq` beyond the replay limit: `recovered: false`, no replay.
//! 5. A connection gone during its replay leaves no subscription behind.
//!
//! The heavy tests take [`HEAVY`] so that they do not run at the same time:
//! on two cores they would only slow each other down, and the slow-reader
//! test measures the process's memory.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_tests::TestServer;
use tandem_tests::ws::{Ended, WsClient};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Held by each heavy test for its whole run.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a test waits for the next frame before calling it a hang.
const QUIET: Duration = Duration::from_secs(15);

/// Posts as admin through one keep-alive client; cheap to clone into tasks.
#[derive(Clone)]
struct Poster {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Poster {
    fn new(server: &TestServer) -> Self {
        Self {
            client: server.client.clone(),
            url: server.url.clone(),
            token: server.admin.clone(),
        }
    }

    /// Posts a text message and returns its seq.
    async fn post(&self, thread: &str, text: &str) -> i64 {
        let response = self
            .client
            .post(format!("{}/v1/threads/{thread}/messages", self.url))
            .bearer_auth(&self.token)
            .json(&json!({ "content": text }))
            .send()
            .await
            .expect("post a message");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["seq"].as_i64().expect("seq")
    }
}

/// Commits that do not wait for the disk, on either backend: durability is
/// not under test here, and the posters of one thread otherwise wait for one
/// fsync each (its row is locked until commit on PostgreSQL).
fn fast_commits(config: &mut tandem_server::Config) {
    config.database.synchronous = tandem_store::Synchronous::Normal;
    let url = &mut config.database.url;
    if url.starts_with("postgres") {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("options=-c%20synchronous_commit%3Doff");
    }
}

/// The next frame, or how the connection ended; panics with `context` when
/// nothing comes for [`QUIET`].
async fn next_frame(ws: &mut WsClient, context: impl FnOnce() -> String) -> Result<Value, Ended> {
    match tokio::time::timeout(QUIET, ws.next_or_end(QUIET * 2)).await {
        Ok(frame) => frame,
        Err(_) => panic!("no frame for {QUIET:?}: {}", context()),
    }
}

fn subscribe_frame(thread: &str, after_seq: Option<i64>) -> Value {
    let mut frame = json!({"type": "subscribe", "topic": format!("thread:{thread}")});
    if let Some(after_seq) = after_seq {
        frame["after_seq"] = json!(after_seq);
    }
    frame
}

/// The seqs of a thread over REST, in order, with each message's id.
async fn rest_messages(server: &TestServer, thread: &str) -> Vec<(i64, String)> {
    server
        .messages(thread, &server.admin)
        .await
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().expect("seq"),
                m["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. The subscribe race
// ---------------------------------------------------------------------------

const RACE_CONNECTIONS: usize = 8;
const RACE_CYCLES: usize = 250;
const RACE_POSTERS: usize = 3;
const RACE_REPLAY_LIMIT: u32 = 100;

/// 2,000 subscribes with an `after_seq` somewhere in the replay window while
/// three posters write to the thread: each subscription delivers exactly
/// `after_seq+1..=target`, and every message is the thread's, as REST has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_racing_posts_get_every_seq_once_in_order() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let server = TestServer::start_with(|config| {
        fast_commits(config);
        config.hub.frames_per_second = 0;
        config.hub.replay_limit = RACE_REPLAY_LIMIT;
    })
    .await;
    let thread = server.thread_for("race").await;
    let latest = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let posters: Vec<_> = (0..RACE_POSTERS)
        .map(|p| {
            let (poster, thread) = (Poster::new(&server), thread.clone());
            let (latest, stop) = (latest.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let seq = poster.post(&thread, &format!("p{p} {}", seqs.len())).await;
                    latest.fetch_max(seq, Ordering::AcqRel);
                    seqs.push(seq);
                }
                seqs
            })
        })
        .collect();
    // Some history before the first subscribe.
    while latest.load(Ordering::Acquire) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let seed: u64 = rand::random();
    eprintln!("subscribe race: seed {seed}");
    let mut subscribers = Vec::new();
    for i in 0..RACE_CONNECTIONS {
        let ws = server.ws(&server.admin).await;
        let race = Race {
            thread: thread.clone(),
            latest: latest.clone(),
            rng: StdRng::seed_from_u64(seed.wrapping_add(i as u64)),
            name: format!("connection {i} (seed {seed})"),
            unrecovered: 0,
            frames: 0,
        };
        subscribers.push(tokio::spawn(race.run(ws)));
    }
    let mut received = Vec::new();
    let (mut subscribes, mut unrecovered, mut frames) = (0, 0, 0);
    for subscriber in subscribers {
        let report = join(subscriber).await;
        subscribes += report.subscribes;
        unrecovered += report.unrecovered;
        frames += report.frames;
        received.push(report.ids);
    }
    stop.store(true, Ordering::Release);
    let mut posted: Vec<i64> = Vec::new();
    for poster in posters {
        posted.extend(join(poster).await);
    }
    assert_eq!(subscribes, RACE_CONNECTIONS * RACE_CYCLES);

    let rest = rest_messages(&server, &thread).await;
    posted.sort_unstable();
    let rest_seqs: Vec<i64> = rest.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(rest_seqs, posted, "REST lists exactly the posted seqs");
    assert!(
        rest_seqs.iter().copied().eq(1..=rest_seqs.len() as i64),
        "seqs 1..=n"
    );
    for ids in &received {
        for (seq, id) in ids {
            assert_eq!(
                &rest[(*seq - 1) as usize].1,
                id,
                "seq {seq} is another message over REST"
            );
        }
    }
    eprintln!(
        "subscribe race: {subscribes} subscribes ({unrecovered} beyond the replay limit), \
         {} messages posted, {frames} message frames checked, {:?}",
        posted.len(),
        started.elapsed()
    );
    server.stop().await;
}

/// What one racing connection did and received.
struct RaceReport {
    subscribes: usize,
    /// Subscribes answered `recovered: false`.
    unrecovered: usize,
    /// Message frames received (and checked).
    frames: usize,
    /// The message id received for each seq.
    ids: HashMap<i64, String>,
}

/// One connection subscribing again and again to the raced thread.
struct Race {
    thread: String,
    latest: Arc<AtomicI64>,
    rng: StdRng,
    name: String,
    unrecovered: usize,
    frames: usize,
}

impl Race {
    /// Runs the cycles; returns how many subscribes it made and the message
    /// id it received for each seq.
    async fn run(mut self, mut ws: WsClient) -> RaceReport {
        let topic = format!("thread:{}", self.thread);
        let mut ids = HashMap::new();
        // The last seq of the current subscription, if any.
        let mut current: Option<i64> = None;
        for cycle in 0..RACE_CYCLES {
            // Half the time unsubscribe first; otherwise subscribe again over
            // the current subscription, which restarts it.
            if current.is_some() && self.rng.random_bool(0.5) {
                ws.send(json!({"type": "unsubscribe", "topic": topic}))
                    .await;
                loop {
                    let frame = self.frame(&mut ws, cycle, current).await;
                    match frame["type"].as_str() {
                        Some("message") => self.take(&frame, &mut current, &mut ids, cycle),
                        Some("unsubscribed") => break,
                        _ => {}
                    }
                }
                current = None;
            }
            let now = self.latest.load(Ordering::Acquire);
            let window = i64::from(RACE_REPLAY_LIMIT);
            let after = self.rng.random_range((now - window).max(0)..=now);
            ws.send(subscribe_frame(&self.thread, Some(after))).await;
            let subscribed = loop {
                let frame = self.frame(&mut ws, cycle, current).await;
                match frame["type"].as_str() {
                    // The previous subscription's last frames.
                    Some("message") => self.take(&frame, &mut current, &mut ids, cycle),
                    Some("subscribed") => break frame,
                    _ => {}
                }
            };
            let last_seq = subscribed["last_seq"].as_i64().expect("last_seq");
            let recovered = subscribed["recovered"].as_bool().expect("recovered");
            assert!(
                last_seq >= now,
                "{}: last_seq {last_seq} < {now}",
                self.name
            );
            assert_eq!(
                recovered,
                last_seq - after <= window,
                "{} cycle {cycle}: after_seq {after}, last_seq {last_seq}",
                self.name
            );
            self.unrecovered += usize::from(!recovered);
            current = Some(if recovered { after } else { last_seq });
            let target = last_seq + self.rng.random_range(0..=2);
            while current.is_some_and(|seq| seq < target) {
                let frame = self.frame(&mut ws, cycle, current).await;
                if frame["type"] == "message" {
                    self.take(&frame, &mut current, &mut ids, cycle);
                }
            }
        }
        ws.close().await;
        RaceReport {
            subscribes: RACE_CYCLES,
            unrecovered: self.unrecovered,
            frames: self.frames,
            ids,
        }
    }

    async fn frame(&self, ws: &mut WsClient, cycle: usize, current: Option<i64>) -> Value {
        let frame = next_frame(ws, || {
            format!("{} cycle {cycle}, last seq {current:?}", self.name)
        })
        .await
        .unwrap_or_else(|ended| panic!("{} cycle {cycle}: connection ended: {ended:?}", self.name));
        assert_ne!(frame["type"], "error", "{}: {frame}", self.name);
        frame
    }

    /// Checks that a message frame is the next seq of the current subscription.
    fn take(
        &mut self,
        frame: &Value,
        current: &mut Option<i64>,
        ids: &mut HashMap<i64, String>,
        cycle: usize,
    ) {
        assert_eq!(frame["thread_id"], self.thread.as_str());
        let seq = frame["seq"].as_i64().expect("seq");
        let Some(last) = current else {
            panic!(
                "{} cycle {cycle}: seq {seq} with no subscription",
                self.name
            );
        };
        assert_eq!(
            seq,
            *last + 1,
            "{} cycle {cycle}: after seq {last} came seq {seq} (a gap or a duplicate)",
            self.name
        );
        *last = seq;
        self.frames += 1;
        let id = frame["message"]["id"].as_str().expect("message id");
        let previous = ids.insert(seq, id.to_owned());
        assert!(
            previous.is_none_or(|p| p == id),
            "{}: seq {seq} was two messages",
            self.name
        );
    }
}

/// Awaits a task, re-raising its panic as this test's.
async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match task.await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

// ---------------------------------------------------------------------------
// 2. The model: post, subscribe, drop, reconnect, restart
// ---------------------------------------------------------------------------

const MODEL_THREADS: usize = 2;
const MODEL_SUBSCRIBERS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Post(usize),
    /// Subscribe `sub` to `thread` (connecting first if need be). A thread
    /// it follows already is unsubscribed and subscribed again from its last
    /// seq; a new one from `back - 1` seqs before the end, or (`back == 0`)
    /// without `after_seq`.
    Subscribe {
        sub: usize,
        thread: usize,
        back: u8,
    },
    /// The client goes away without reading what is on its socket.
    Drop(usize),
    /// A new connection, resubscribing every thread from its last seq.
    Reconnect(usize),
    /// A deploy: every connection is closed with 1001 and reconnects.
    Restart,
    /// Reads what has been posted to the threads the subscriber follows.
    Read(usize),
}

fn model_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..MODEL_THREADS).prop_map(Op::Post),
        3 => (0..MODEL_SUBSCRIBERS, 0..MODEL_THREADS, 0..4u8)
            .prop_map(|(sub, thread, back)| Op::Subscribe { sub, thread, back }),
        1 => (0..MODEL_SUBSCRIBERS).prop_map(Op::Drop),
        1 => (0..MODEL_SUBSCRIBERS).prop_map(Op::Reconnect),
        1 => Just(Op::Restart),
        2 => (0..MODEL_SUBSCRIBERS).prop_map(Op::Read),
    ]
}

proptest! {
    // Each case starts a server: a few dozen by default; set PROPTEST_CASES
    // for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(32),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    /// Whatever the clients and the server do, each subscriber's union of
    /// received seqs is its threads' seqs from its first subscribe on, each
    /// once, in order.
    #[test]
    fn model_subscribers_receive_their_threads_once_in_order(
        ops in proptest::collection::vec(model_op(), 1..=40)
    ) {
        let _heavy = HEAVY.blocking_lock();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run_model(ops));
    }
}

async fn run_model(ops: Vec<Op>) {
    let server = TestServer::start_with(|config| config.hub.frames_per_second = 0).await;
    let mut threads = Vec::new();
    for t in 0..MODEL_THREADS {
        threads.push(server.thread_for(&format!("model{t}")).await);
    }
    let mut model = Model {
        server,
        threads,
        last: vec![0; MODEL_THREADS],
        subs: (0..MODEL_SUBSCRIBERS)
            .map(|_| Subscriber::default())
            .collect(),
        step: 0,
    };
    for (step, op) in ops.iter().enumerate() {
        model.step = step;
        model.apply(op).await;
    }
    model.finish().await;
}

/// What a subscriber received of one thread.
struct Follow {
    /// The seq it started after: it must get every later one.
    first: i64,
    /// Every seq received, in order.
    seen: Vec<i64>,
    /// Subscribed on the current connection.
    live: bool,
}

impl Follow {
    fn last(&self) -> i64 {
        self.seen.last().copied().unwrap_or(self.first)
    }
}

#[derive(Default)]
struct Subscriber {
    ws: Option<WsClient>,
    follows: BTreeMap<usize, Follow>,
}

struct Model {
    server: TestServer,
    threads: Vec<String>,
    /// Each thread's last seq.
    last: Vec<i64>,
    subs: Vec<Subscriber>,
    step: usize,
}

impl Model {
    async fn apply(&mut self, op: &Op) {
        match *op {
            Op::Post(t) => {
                let seq = self.server.post_text(&self.threads[t], "m").await;
                assert_eq!(seq, self.last[t] + 1, "seqs of thread {t}");
                self.last[t] = seq;
            }
            Op::Subscribe { sub, thread, back } => {
                if self.subs[sub].ws.is_none() {
                    self.reconnect(sub).await;
                }
                if self.subs[sub].follows.contains_key(&thread) {
                    // Resume after the last seq read up to `unsubscribed`.
                    self.unsubscribe(sub, thread).await;
                    let after = self.subs[sub].follows[&thread].last();
                    self.subscribe(sub, thread, Some(after)).await;
                } else {
                    let after =
                        (back > 0).then(|| (self.last[thread] - i64::from(back - 1)).max(0));
                    self.subscribe(sub, thread, after).await;
                }
            }
            Op::Drop(sub) => self.drop_connection(sub),
            Op::Reconnect(sub) => self.reconnect(sub).await,
            Op::Restart => {
                self.server.restart().await;
                for sub in 0..self.subs.len() {
                    if self.subs[sub].ws.is_none() {
                        continue;
                    }
                    // What was sent before the close is still to be read.
                    loop {
                        match self.next(sub).await {
                            Ok(frame) => self.take(sub, &frame),
                            Err(ended) => {
                                assert_eq!(
                                    ended,
                                    Ended::Closed(1001),
                                    "step {}: subscriber {sub} at restart",
                                    self.step
                                );
                                break;
                            }
                        }
                    }
                    self.reconnect(sub).await;
                }
            }
            Op::Read(sub) => self.read(sub).await,
        }
    }

    /// The next frame of `sub`'s connection.
    async fn next(&mut self, sub: usize) -> Result<Value, Ended> {
        let step = self.step;
        let waiting: Vec<_> = self.subs[sub]
            .follows
            .iter()
            .map(|(t, f)| (*t, f.last(), self.last[*t]))
            .collect();
        let ws = self.subs[sub].ws.as_mut().expect("connected");
        let frame = next_frame(ws, || {
            format!("step {step}: subscriber {sub} (thread, seen, last): {waiting:?}")
        })
        .await?;
        assert_ne!(frame["type"], "error", "step {step}: {frame}");
        Ok(frame)
    }

    /// Records a message frame (the next seq of a thread `sub` is live on).
    fn take(&mut self, sub: usize, frame: &Value) {
        if frame["type"] != "message" {
            return;
        }
        let t = self
            .threads
            .iter()
            .position(|id| frame["thread_id"] == id.as_str())
            .expect("a thread of the test");
        let seq = frame["seq"].as_i64().expect("seq");
        let step = self.step;
        let follow = self.subs[sub].follows.get_mut(&t).unwrap_or_else(|| {
            panic!("step {step}: subscriber {sub} got seq {seq} of thread {t} it never followed")
        });
        assert!(
            follow.live,
            "step {step}: subscriber {sub} got seq {seq} of thread {t} while not subscribed"
        );
        assert_eq!(
            seq,
            follow.last() + 1,
            "step {step}: subscriber {sub}, thread {t}: after {:?} came {seq}",
            follow.seen
        );
        follow.seen.push(seq);
    }

    /// Reads frames until `stop` says a control frame is the one awaited.
    async fn read_until(&mut self, sub: usize, stop: impl Fn(&Value) -> bool) -> Value {
        loop {
            let step = self.step;
            let frame = self
                .next(sub)
                .await
                .unwrap_or_else(|ended| panic!("step {step}: subscriber {sub} ended: {ended:?}"));
            if stop(&frame) {
                return frame;
            }
            self.take(sub, &frame);
        }
    }

    async fn subscribe(&mut self, sub: usize, t: usize, after_seq: Option<i64>) {
        let thread = self.threads[t].clone();
        let ws = self.subs[sub].ws.as_mut().expect("connected");
        ws.send(subscribe_frame(&thread, after_seq)).await;
        let topic = format!("thread:{thread}");
        let subscribed = self
            .read_until(sub, |f| {
                f["type"] == "subscribed" && f["topic"] == topic.as_str()
            })
            .await;
        assert_eq!(subscribed["last_seq"], self.last[t], "step {}", self.step);
        assert_eq!(subscribed["recovered"], true, "step {}", self.step);
        let follow = self.subs[sub].follows.entry(t).or_insert(Follow {
            first: after_seq.unwrap_or(self.last[t]),
            seen: Vec::new(),
            live: false,
        });
        follow.live = true;
    }

    async fn unsubscribe(&mut self, sub: usize, t: usize) {
        let topic = format!("thread:{}", self.threads[t]);
        let ws = self.subs[sub].ws.as_mut().expect("connected");
        ws.send(json!({"type": "unsubscribe", "topic": topic}))
            .await;
        self.read_until(sub, |f| {
            f["type"] == "unsubscribed" && f["topic"] == topic.as_str()
        })
        .await;
        if let Some(follow) = self.subs[sub].follows.get_mut(&t) {
            follow.live = false;
        }
    }

    fn drop_connection(&mut self, sub: usize) {
        self.subs[sub].ws = None;
        for follow in self.subs[sub].follows.values_mut() {
            follow.live = false;
        }
    }

    async fn reconnect(&mut self, sub: usize) {
        self.drop_connection(sub);
        self.subs[sub].ws = Some(self.server.ws(&self.server.admin).await);
        let resume: Vec<(usize, i64)> = self.subs[sub]
            .follows
            .iter()
            .map(|(t, f)| (*t, f.last()))
            .collect();
        for (t, after) in resume {
            self.subscribe(sub, t, Some(after)).await;
        }
    }

    /// Reads until `sub` has every seq posted to the threads it is live on.
    async fn read(&mut self, sub: usize) {
        if self.subs[sub].ws.is_none() {
            return;
        }
        while self.subs[sub]
            .follows
            .iter()
            .any(|(t, f)| f.live && f.last() < self.last[*t])
        {
            let step = self.step;
            let frame = self
                .next(sub)
                .await
                .unwrap_or_else(|ended| panic!("step {step}: subscriber {sub} ended: {ended:?}"));
            self.take(sub, &frame);
        }
    }

    /// Brings every subscriber up to date and compares with REST.
    async fn finish(mut self) {
        self.step = usize::MAX;
        for sub in 0..self.subs.len() {
            if self.subs[sub].ws.is_none() && !self.subs[sub].follows.is_empty() {
                self.reconnect(sub).await;
            }
            self.read(sub).await;
        }
        for (t, thread) in self.threads.iter().enumerate() {
            let rest: Vec<i64> = rest_messages(&self.server, thread)
                .await
                .into_iter()
                .map(|(seq, _)| seq)
                .collect();
            assert!(
                rest.iter().copied().eq(1..=self.last[t]),
                "thread {t}: {rest:?}"
            );
            for (sub, subscriber) in self.subs.iter().enumerate() {
                if let Some(follow) = subscriber.follows.get(&t) {
                    let expected: Vec<i64> = rest
                        .iter()
                        .copied()
                        .filter(|seq| *seq > follow.first)
                        .collect();
                    assert_eq!(
                        follow.seen, expected,
                        "subscriber {sub}, thread {t} (from after seq {})",
                        follow.first
                    );
                }
            }
        }
        for subscriber in &mut self.subs {
            if let Some(ws) = subscriber.ws.take() {
                ws.close().await;
            }
        }
        self.server.stop().await;
    }
}

// ---------------------------------------------------------------------------
// 3. A subscriber that never reads
// ---------------------------------------------------------------------------

const FLOOD_MESSAGES: i64 = 5_000;
const FLOOD_READERS: usize = 100;
const FLOOD_POSTERS: usize = 8;
/// How long the server lets a closing connection finish a stuck write
/// (`CLOSE_GRACE` in `api/ws/connection.rs`).
const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// Bytes of text per message: 5,000 of them are ~12 MB per subscriber, far
/// more than the queue and the kernel's buffers (~3 MB here) hold for the
/// slow one.
const FLOOD_TEXT: usize = 2_000;
/// Each connection's queue: large enough that the slow one overflows late
/// in the flood (so that it reads within the server's close grace), small
/// enough that it surely does.
const FLOOD_QUEUE_BYTES: usize = 5 * 1024 * 1024;

/// 100 subscribers read 5,000 messages while one never reads: that one is
/// closed with 4008 (too slow), memory stays bounded, the 100 get
/// everything, and the slow one recovers the rest with `after_seq` and REST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_closed_and_recovers_everything() {
    let _heavy = HEAVY.lock().await;
    let started = Instant::now();
    let server = TestServer::start_with(|config| {
        fast_commits(config);
        config.hub.frames_per_second = 0;
        config.hub.max_connections_per_token = FLOOD_READERS + 10;
        config.hub.queue_bytes = FLOOD_QUEUE_BYTES;
        // Only slowness may close a connection here.
        config.hub.ping_interval_secs = 600;
    })
    .await;
    let thread = server.thread_for("flood").await;
    let topic = format!("thread:{thread}");

    let mut slow = slow_client(&server).await;
    slow.send(Message::text(subscribe_frame(&thread, None).to_string()))
        .await
        .expect("subscribe");
    let subscribed = match tokio::time::timeout(QUIET, slow.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text).expect("JSON"),
        other => panic!("slow subscriber: expected `subscribed`, got {other:?}"),
    };
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["last_seq"], 0);
    // From here on nobody polls `slow` until the flood is over.

    let mut readers = Vec::new();
    for _ in 0..FLOOD_READERS {
        let mut ws = server.ws(&server.admin).await;
        ws.subscribe(&topic, None).await;
        readers.push(tokio::spawn(read_flood(ws, FLOOD_MESSAGES)));
    }

    let baseline = rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Acquire) {
                peak.fetch_max(rss_kib(), Ordering::AcqRel);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let posting = Instant::now();
    let next = Arc::new(AtomicI64::new(1));
    let posters: Vec<_> = (0..FLOOD_POSTERS)
        .map(|_| {
            let (poster, thread, next) = (Poster::new(&server), thread.clone(), next.clone());
            tokio::spawn(async move {
                let filler = "x".repeat(FLOOD_TEXT);
                // When each post was sent, by the seq it got.
                let mut sent = Vec::new();
                while next.fetch_add(1, Ordering::AcqRel) <= FLOOD_MESSAGES {
                    let at = Instant::now();
                    sent.push((poster.post(&thread, &filler).await, at));
                }
                sent
            })
        })
        .collect();
    let mut sent_at = HashMap::new();
    for poster in posters {
        sent_at.extend(join(poster).await);
    }
    let posted_in = posting.elapsed();
    let mut frame_bytes = 0;
    for reader in readers {
        frame_bytes = frame_bytes.max(join(reader).await);
    }
    let flood_in = posting.elapsed();
    sampling.store(false, Ordering::Release);
    join(sampler).await;
    let peak = peak.load(Ordering::Acquire);
    eprintln!(
        "slow reader: posted {FLOOD_MESSAGES} in {posted_in:?}, {FLOOD_READERS} readers done in {flood_in:?}; \
         RSS {} MiB before the flood, peak {} MiB (+{} MiB)",
        baseline / 1024,
        peak / 1024,
        peak.saturating_sub(baseline) / 1024
    );
    assert!(
        peak.saturating_sub(baseline) < 100 * 1024,
        "RSS grew from {baseline} KiB to {peak} KiB during the flood"
    );

    // Now the slow one reads: what reached its socket before it overflowed,
    // then the close.
    let reading = Instant::now();
    let mut seen = 0;
    let ended = loop {
        match tokio::time::timeout(QUIET, slow.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                if let Some(seq) = message_seq(&text) {
                    assert_eq!(seq, seen + 1, "the slow subscriber's frames");
                    seen = seq;
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                break format!("close {:?}", frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => break format!("error: {error}"),
            Ok(None) => break "end of stream".to_owned(),
            Err(_) => panic!("slow subscriber after seq {seen}: no close for {QUIET:?}"),
        }
    };
    if ended != "close Some(4008)" {
        // The server gives a write stuck on a client that does not read
        // `CLOSE_GRACE` from the overflow, then drops the connection without
        // a close frame. The queue held every frame after the last one that
        // reached the socket, so the overflow came no sooner than the post
        // of seq `seen + queue/frame` was sent: only a client that starts
        // reading that long after it may miss its 4008.
        // (Less two, for the odd `thread` frame among the messages.)
        let overflow_seq = seen + (FLOOD_QUEUE_BYTES / frame_bytes) as i64 - 2;
        let overflow_not_before = sent_at.get(&overflow_seq).copied().unwrap_or_else(|| {
            panic!(
                "the queue ({FLOOD_QUEUE_BYTES} bytes) cannot have overflowed by seq {overflow_seq}"
            )
        });
        let waited = reading.duration_since(overflow_not_before);
        assert!(
            waited + Duration::from_secs(5) > CLOSE_GRACE,
            "the slow subscriber got {ended} instead of 4008 after seq {seen}; it started \
             reading {waited:?} after the earliest moment its queue could overflow"
        );
        eprintln!(
            "slow reader: NOTE it started reading up to {waited:?} after its queue overflowed, \
             past the server's close grace: {ended} instead of 4008"
        );
    }
    assert!(
        seen < FLOOD_MESSAGES - 1_000,
        "the slow subscriber got {seen} messages before it was closed: the test wants \
         more than the replay limit to recover"
    );
    eprintln!(
        "slow reader: {ended} after seq {seen} ({:?} in)",
        started.elapsed()
    );

    // It comes back with the last seq it saw: too far behind for a replay,
    // so it pages REST up to `last_seq` and takes the live messages from the
    // socket.
    let mut again = server.ws(&server.admin).await;
    let subscribed = again.subscribe(&topic, Some(seen)).await;
    assert_eq!(subscribed["last_seq"], FLOOD_MESSAGES);
    assert_eq!(subscribed["recovered"], false);
    let mut recovered: Vec<i64> = (1..=seen).collect();
    let mut after = seen;
    while after < FLOOD_MESSAGES {
        let page = server
            .get(
                &format!("/v1/threads/{thread}/messages?after_seq={after}&limit=500"),
                &server.admin,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for message in page.body["messages"].as_array().expect("messages") {
            let seq = message["seq"].as_i64().expect("seq");
            if seq <= FLOOD_MESSAGES {
                recovered.push(seq);
            }
        }
        after = page.body["next_after_seq"]
            .as_i64()
            .expect("next_after_seq");
    }
    let poster = Poster::new(&server);
    for _ in 0..3 {
        poster.post(&thread, "after the flood").await;
    }
    recovered.extend(again.seqs_until(&thread, FLOOD_MESSAGES + 3).await);
    assert!(
        recovered.iter().copied().eq(1..=FLOOD_MESSAGES + 3),
        "the slow subscriber's socket, REST and socket again give every seq once"
    );
    eprintln!("slow reader: whole test {:?}", started.elapsed());
    again.close().await;
    server.stop().await;
}

/// A connection that goes away while its subscribe is still replaying
/// leaves nothing behind in the thread: an agent who left is no longer
/// listed as looking at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_during_its_replay_leaves_the_thread() {
    let _heavy = HEAVY.lock().await;
    let server = TestServer::start_with(|config| {
        fast_commits(config);
        config.hub.frames_per_second = 0;
        config.hub.queue_bytes = 64 * 1024;
    })
    .await;
    let thread = server.thread_for("replay").await;
    // ~6 MB to replay: more than the queue and the kernel's buffers hold.
    let poster = Poster::new(&server);
    let posts: Vec<_> = (0..4)
        .map(|_| {
            let (poster, thread) = (poster.clone(), thread.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    poster.post(&thread, &"r".repeat(30_000)).await;
                }
            })
        })
        .collect();
    for post in posts {
        join(post).await;
    }

    let mut leavers = Vec::new();
    for i in 0..8 {
        let name = format!("leaver{i}");
        let token = server.agent(&name).await;
        let mut ws = slow_client_as(&server, &token).await;
        ws.send(Message::text(subscribe_frame(&thread, Some(0)).to_string()))
            .await
            .expect("subscribe");
        match tokio::time::timeout(QUIET, ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => assert!(text.contains("subscribed"), "{text}"),
            other => panic!("{name}: expected `subscribed`, got {other:?}"),
        }
        // Gone with the replay under way (unread data: the kernel resets).
        drop(ws);
        leavers.push(name);
    }

    let watcher = server.agent("watcher").await;
    let mut ws = server.ws(&watcher).await;
    let topic = format!("thread:{thread}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        ws.subscribe(&topic, None).await;
        let presence = ws.next_of("presence").await;
        let agents: Vec<String> =
            serde_json::from_value(presence["agents"].clone()).expect("agents");
        if agents == ["watcher"] {
            break;
        }
        if Instant::now() > deadline {
            // Their connections are gone (the gauge counts the watcher's),
            // but not their subscriptions.
            let metrics = server.hub.metrics().render(server.store.pool_stats());
            let open: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("tandem_ws_connections") || l.starts_with("ws_connections")
                })
                .collect();
            panic!(
                "agents who left during their replay are still listed 10 s later: {agents:?} \
                 (left: {leavers:?}; open sockets: {open:?})"
            );
        }
        ws.send(json!({"type": "unsubscribe", "topic": topic}))
            .await;
        ws.next_of("unsubscribed").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ws.close().await;
    server.stop().await;
}

/// A WebSocket whose socket receive buffer is as small as the kernel allows.
async fn slow_client(server: &TestServer) -> WebSocketStream<TcpStream> {
    slow_client_as(server, &server.admin).await
}

/// [`slow_client`] with the given token.
async fn slow_client_as(server: &TestServer, token: &str) -> WebSocketStream<TcpStream> {
    let address: SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(address).await.expect("connect");
    let mut request = server.ws_url().into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let (ws, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("WebSocket upgrade");
    ws
}

/// Reads a flood of `count` messages, checking each is the next seq;
/// returns the largest frame's length.
async fn read_flood(mut ws: WsClient, count: i64) -> usize {
    let mut seen = 0;
    let mut largest = 0;
    while seen < count {
        let received = tokio::time::timeout(QUIET, ws.stream().next()).await;
        match received {
            Ok(Some(Ok(Message::Text(text)))) => {
                let Some(seq) = message_seq(&text) else {
                    continue;
                };
                if seen == 0 {
                    let frame: Value = serde_json::from_str(&text).expect("JSON");
                    assert_eq!(frame["seq"], seq, "message_seq reads the frame's seq");
                }
                assert_eq!(seq, seen + 1, "a reader: after seq {seen} came {seq}");
                seen = seq;
                largest = largest.max(text.len());
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                panic!("a reader was closed after seq {seen}: {frame:?}")
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(error))) => panic!("a reader failed after seq {seen}: {error}"),
            Ok(None) => panic!("a reader was dropped after seq {seen}"),
            Err(_) => panic!("a reader got nothing for {QUIET:?} after seq {seen}"),
        }
    }
    ws.close().await;
    largest
}

/// The `seq` of a `message` frame without parsing its (large) message: the
/// frame is `{"type":"message","thread_id":"…","seq":N,"message":{…}}`.
fn message_seq(text: &str) -> Option<i64> {
    let rest = text.strip_prefix(r#"{"type":"message","#)?;
    let digits = &rest[rest.find(r#""seq":"#)? + 6..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// This process's resident memory (the server runs in it), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// 4. Beyond the replay limit
// ---------------------------------------------------------------------------

/// An `after_seq` further back than `hub.replay_limit` is answered
/// `recovered: false` with no replay, then live messages after `last_seq`;
/// exactly at the limit it is replayed.
#[tokio::test]
async fn after_seq_beyond_the_replay_limit_is_not_replayed() {
    let server = TestServer::start_with(|config| config.hub.replay_limit = 5).await;
    let thread = server.thread_for("c1").await;
    let topic = format!("thread:{thread}");
    for i in 1..=10 {
        server.post_text(&thread, &format!("m{i}")).await;
    }

    let mut behind = server.ws(&server.admin).await;
    let subscribed = behind.subscribe(&topic, Some(4)).await;
    assert_eq!(subscribed["last_seq"], 10);
    assert_eq!(subscribed["recovered"], false);
    let mut at_limit = server.ws(&server.admin).await;
    let subscribed = at_limit.subscribe(&topic, Some(5)).await;
    assert_eq!(subscribed["last_seq"], 10);
    assert_eq!(subscribed["recovered"], true);

    server.post_text(&thread, "live").await;
    assert_eq!(
        behind.seqs_until(&thread, 11).await,
        [11],
        "nothing replayed, then live"
    );
    assert_eq!(at_limit.seqs_until(&thread, 11).await, [6, 7, 8, 9, 10, 11]);
    // What the socket did not replay is on REST, up to `last_seq`.
    let rest: Vec<i64> = rest_messages(&server, &thread)
        .await
        .into_iter()
        .map(|(seq, _)| seq)
        .filter(|seq| (5..=10).contains(seq))
        .collect();
    assert_eq!(rest, [5, 6, 7, 8, 9, 10]);
    server.stop().await;
}
