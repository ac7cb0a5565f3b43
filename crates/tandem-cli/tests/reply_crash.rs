//! A reply survives `SIGKILL` in the middle of its model call: the real
//! `tandem serve` process answers a customer with a scripted model (an
//! OpenAI-compatible server in this test process) whose first completion
//! never comes. Once the model has the request, the server is killed and
//! started again on the same database; the resumed run asks the model
//! again and gets a normal answer. The customer's POST is retried with the
//! same `Idempotency-Key` before the kill and after the restart. In the end
//! the thread holds the customer's message once and exactly one reply,
//! written after the restart and answering that message, and one `reply`
//! run exists for it. Runs on the backend the suite is pointed at
//! (`TANDEM_TEST_DATABASE_URL`), like every test.
//!
//! And customer messages stored just before a `SIGKILL` each have their
//! `reply` run already, since the run is created in the message's own
//! transaction: nothing is left to recover at the next start.

#[path = "support/process.rs"]
mod process;

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::{Response, TestDb};

const WAIT: Duration = Duration::from_secs(30);
const ANSWER: &str = "Your parcel left the warehouse this morning.";
const QUESTION: &str = "Where is my parcel?";
const IDEMPOTENCY_KEY: &str = "widget-7f3a-0001";

/// `tandem serve` on `db`, its model endpoint the scripted one.
fn serve(db: &TestDb, llm_url: &str) -> process::Served {
    let mut command: Command = process::tandem(db, &["serve"]);
    command
        .env("OPENAI_BASE_URL", llm_url)
        .env("OPENAI_API_KEY", "test-key")
        // The stalled completion must still be pending when the process
        // dies: no timeout, no retry of the client's own within the test.
        .env("TANDEM_AI__REQUEST_TIMEOUT_SECS", "300")
        .env("TANDEM_AI__FIRST_TOKEN_TIMEOUT_SECS", "300")
        .env("TANDEM_AI__TOTAL_TIMEOUT_SECS", "600")
        // The scripted replies are the reply's, not a start-up check's.
        .env("TANDEM_AI__CHECK_MODELS_ON_START", "false");
    process::serve_command(&mut command)
}

async fn post_question(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    thread: &str,
) -> Response {
    Response::read(
        client
            .post(format!("{base}/v1/threads/{thread}/messages"))
            .bearer_auth(token)
            .header("idempotency-key", IDEMPOTENCY_KEY)
            .json(&json!({"content": QUESTION}))
            .send()
            .await
            .expect("post the question"),
    )
    .await
}

async fn get(client: &reqwest::Client, url: String, token: &str) -> Value {
    let response = Response::read(
        client
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    response.body
}

/// The `reply` runs' arguments and statuses, straight from the database.
async fn reply_runs(db: &TestDb) -> Vec<(Value, String)> {
    db.query_strings(
        "SELECT CAST(args AS TEXT) || '|' || status FROM workflow_runs WHERE name = 'reply'",
    )
    .await
    .iter()
    .map(|row| {
        let (args, status) = row.rsplit_once('|').expect("args|status");
        (
            serde_json::from_str(args).expect("run args are JSON"),
            status.to_owned(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_killed_during_its_model_call_is_answered_once_after_the_restart() {
    let db = TestDb::fresh().await;
    let llm = ScriptedLlm::start().await;
    // The first completion never answers; the one after the restart does.
    llm.push(Reply::stall());
    llm.push(Reply::text(ANSWER));

    assert_eq!(process::run(&db, &["migrate"]).trim(), "migrations applied");
    let customer = process::run(
        &db,
        &["token", "create", "customer", "--customer-id", "alice"],
    );
    let customer = customer.trim().to_owned();
    let mut server = serve(&db, &llm.base_url());
    let admin = process::secret_in(&server.stdout).expect("the first start prints an admin token");
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.address);
    let thread = Response::read(
        client
            .post(format!("{base}/v1/threads"))
            .bearer_auth(&admin)
            .json(&json!({"customer_id": "alice"}))
            .send()
            .await
            .expect("create the thread"),
    )
    .await;
    assert_eq!(thread.status, StatusCode::CREATED, "{}", thread.text);
    let thread = thread.body["id"].as_str().expect("thread id").to_owned();

    let first = post_question(&client, &base, &customer, &thread).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let question_id = first.body["id"].as_str().expect("message id").to_owned();

    // The model has the request and will never answer it.
    let stalled = llm.wait_for_chat_requests(1, WAIT).await;
    assert_eq!(stalled[0].last_user_text().as_deref(), Some(QUESTION));
    // The client retries while the reply is being written: the first
    // answer again, and no second run.
    let retried = post_question(&client, &base, &customer, &thread).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text);
    assert_eq!(retried.body["id"], question_id.as_str());
    assert_eq!(
        retried
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );

    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    let killed_at = Utc::now();
    let runs = reply_runs(&db).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0["message_id"], question_id.as_str(), "{runs:?}");
    assert_eq!(runs[0].1, "running", "the run died mid-call: {runs:?}");

    let server = serve(&db, &llm.base_url());
    let base = format!("http://{}", server.address);
    // The client's retry across the restart: still the first answer.
    let retried = post_question(&client, &base, &customer, &thread).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text);
    assert_eq!(retried.body["id"], question_id.as_str());

    let deadline = Instant::now() + WAIT;
    loop {
        let runs = reply_runs(&db).await;
        assert_eq!(runs.len(), 1, "one reply run per message: {runs:?}");
        if runs[0].1 == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not complete after the restart: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let page = get(
        &client,
        format!("{base}/v1/threads/{thread}/messages?limit=500"),
        &customer,
    )
    .await;
    let messages = page["messages"].as_array().expect("messages");
    let questions: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
    assert_eq!(questions.len(), 1, "{messages:#?}");
    assert_eq!(questions[0]["id"], question_id.as_str());
    let replies: Vec<&Value> = messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .collect();
    assert_eq!(replies.len(), 1, "exactly one reply: {messages:#?}");
    let reply = replies[0];
    assert_eq!(reply["content"], ANSWER);
    assert_eq!(reply["reply_to"], question_id.as_str());
    assert_eq!(reply["author"]["kind"], "ai");
    let written: DateTime<Utc> = reply["created_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("created_at");
    assert!(
        written > killed_at,
        "the reply was written after the restart ({written} vs the kill at {killed_at})"
    );
    // The admin's view holds nothing more: no draft, no item, no second
    // reply stored out of the customer's sight.
    let all = get(
        &client,
        format!("{base}/v1/threads/{thread}/messages?limit=500"),
        &admin,
    )
    .await;
    let all = all["messages"].as_array().expect("messages");
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[1]["id"], reply["id"]);

    // Two model calls in all: the one the kill cut off, and the one after.
    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[1].last_user_text().as_deref(), Some(QUESTION));
    let run_id = all[1]["metadata"]["run_id"]
        .as_str()
        .expect("the reply names its run");
    let state = get(&client, format!("{base}/v1/workflows/{run_id}"), &admin).await;
    assert_eq!(state["status"], "completed", "{state:#}");
    assert_eq!(state["result"]["outcome"], "replied", "{state:#}");
    let journal = state["journal"].as_array().expect("journal");
    let model_steps: Vec<&Value> = journal
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("model:")))
        .collect();
    assert_eq!(model_steps.len(), 1, "{journal:#?}");
    assert_eq!(model_steps[0]["status"], "completed");

    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");
    db.drop().await;
}

/// A UUID column as 32 lowercase hex digits, on either backend (SQLite
/// stores UUIDs as blobs).
fn hex_id(db: &TestDb, column: &str) -> String {
    if db.options().url.starts_with("postgres") {
        format!("replace(CAST({column} AS TEXT), '-', '')")
    } else {
        format!("lower(hex({column}))")
    }
}

/// A UUID as [`hex_id`] writes it.
fn hex(id: &str) -> String {
    id.replace('-', "")
}

/// `(message id, thread id)` of every stored customer message, and the
/// `message_id` of every `reply` run with its status, ids as [`hex`].
async fn messages_and_runs(db: &TestDb) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let sql = format!(
        "SELECT {} || '|' || {} FROM messages WHERE role = 'user'",
        hex_id(db, "id"),
        hex_id(db, "thread_id")
    );
    let messages = db
        .query_strings(&sql)
        .await
        .into_iter()
        .map(|row| {
            let (id, thread) = row.split_once('|').expect("id|thread");
            (id.to_owned(), thread.to_owned())
        })
        .collect();
    let runs = reply_runs(db)
        .await
        .into_iter()
        .map(|(args, status)| {
            let message = args["message_id"].as_str().expect("message_id");
            (hex(message), status)
        })
        .collect();
    (messages, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_messages_stored_before_a_kill_each_have_their_reply_run() {
    const THREADS: usize = 40;
    let db = TestDb::fresh().await;
    assert_eq!(process::run(&db, &["migrate"]).trim(), "migrations applied");
    // The AI is off: every reply run hands its thread to a human.
    let mut server = process::serve(&db);
    let admin = process::secret_in(&server.stdout).expect("the first start prints an admin token");
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.address);
    let mut threads = Vec::new();
    for i in 0..THREADS {
        let created = Response::read(
            client
                .post(format!("{base}/v1/threads"))
                .bearer_auth(&admin)
                .json(&json!({"customer_id": format!("c{i}")}))
                .send()
                .await
                .expect("create a thread"),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        threads.push(created.body["id"].as_str().expect("id").to_owned());
    }

    // One customer message per thread, all at once; the server is killed
    // once a few are acknowledged, with the others in flight.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    for thread in &threads {
        let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
        let (thread, acked) = (thread.clone(), acked_tx.clone());
        tokio::spawn(async move {
            let sent = client
                .post(format!("{base}/v1/threads/{thread}/messages"))
                .bearer_auth(&admin)
                .json(&json!({"content": "Is anyone there?"}))
                .send()
                .await;
            if let Ok(response) = sent {
                let response = Response::read(response).await;
                if response.status == StatusCode::CREATED {
                    let id = response.body["id"].as_str().expect("id").to_owned();
                    let _ = acked.send(id);
                }
            }
        });
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 5 {
        let id = tokio::time::timeout(WAIT, acked_rx.recv())
            .await
            .expect("acknowledgements")
            .expect("an acknowledgement");
        acked.push(id);
    }
    server.child.kill().expect("SIGKILL");
    let _ = server.child.wait();
    while let Some(id) = acked_rx.recv().await {
        acked.push(id);
    }

    // Straight after the kill, before any restart: each stored customer
    // message has exactly one run, and every acknowledged one is stored.
    let (messages, runs) = messages_and_runs(&db).await;
    assert!(messages.len() >= acked.len(), "{messages:?} vs {acked:?}");
    for id in &acked {
        assert!(
            messages.iter().any(|(m, _)| *m == hex(id)),
            "acknowledged {id} was stored"
        );
    }
    for (id, _) in &messages {
        let theirs = runs.iter().filter(|(m, _)| m == id).count();
        assert_eq!(theirs, 1, "message {id} has {theirs} reply runs: {runs:?}");
    }
    assert_eq!(runs.len(), messages.len(), "{runs:?}");
    eprintln!(
        "{} messages stored, {} acknowledged, before the kill",
        messages.len(),
        acked.len()
    );

    // After the restart every run ends, each with its handoff.
    let server = process::serve(&db);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, runs) = messages_and_runs(&db).await;
        if runs.iter().all(|(_, status)| status == "completed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "runs did not complete after the restart: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handoffs = db
        .query_strings(&format!(
            "SELECT {} FROM inbox_items WHERE kind = 'handoff'",
            hex_id(&db, "thread_id")
        ))
        .await;
    let mut stored_threads: Vec<String> = messages.into_iter().map(|(_, t)| t).collect();
    stored_threads.sort();
    let mut handed = handoffs.clone();
    handed.sort();
    assert_eq!(
        handed, stored_threads,
        "one handoff per thread with a message"
    );
    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");
    db.drop().await;
}
