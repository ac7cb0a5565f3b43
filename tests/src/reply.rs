//! Helpers of the reply-path tests: a customer with a thread and a socket,
//! the policy, waiting for messages, inbox items and runs (every wait polls
//! with a deadline), and reading what a socket received.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::TestServer;
use crate::ws::WsClient;

/// How long a test waits for the reply path to do something.
pub const WAIT: Duration = Duration::from_secs(15);
/// How often a wait polls.
const POLL: Duration = Duration::from_millis(15);

/// A customer, one of its threads, and its socket subscribed to the thread.
pub struct Chat {
    pub customer_id: String,
    pub thread: String,
    /// The customer's token.
    pub token: String,
    /// The customer's socket, subscribed to `thread:<thread>`.
    pub socket: WsClient,
}

impl Chat {
    /// A fresh thread of `customer_id`, and the customer's socket on it.
    pub async fn open(server: &TestServer, customer_id: &str) -> Self {
        let thread = server.thread_for(customer_id).await;
        let token = server.customer(customer_id).await;
        let mut socket = server.ws(&token).await;
        socket.subscribe(&format!("thread:{thread}"), None).await;
        Self {
            customer_id: customer_id.to_owned(),
            thread,
            token,
            socket,
        }
    }

    /// Posts `text` as the customer; returns the stored message.
    pub async fn say(&self, server: &TestServer, text: &str) -> Value {
        let posted = server
            .post(
                &format!("/v1/threads/{}/messages", self.thread),
                &self.token,
                json!({"content": text}),
            )
            .await;
        assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
        posted.body
    }

    /// The thread's messages as the customer reads them over REST.
    pub async fn history(&self, server: &TestServer) -> Vec<Value> {
        server.messages(&self.thread, &self.token).await
    }

    /// Frames of the customer's socket up to and including the first that
    /// matches `stop`.
    pub async fn frames_until(&mut self, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
        frames_until(&mut self.socket, stop).await
    }

    /// Posts a public reply as the agent `agent`, and returns the frames of
    /// the customer's socket up to it: as the hub keeps order, everything
    /// pushed to the customer before that reply.
    pub async fn frames_until_agent_says(
        &mut self,
        server: &TestServer,
        agent: &str,
        text: &str,
    ) -> Vec<Value> {
        let token = server.agent(agent).await;
        let posted = server
            .post(
                &format!("/v1/threads/{}/messages", self.thread),
                &token,
                json!({"content": text}),
            )
            .await;
        assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
        self.frames_until(|f| f["type"] == "message" && f["message"]["content"] == text)
            .await
    }

    /// Frames up to the `message` frame of an assistant message.
    pub async fn frames_until_reply(&mut self) -> Vec<Value> {
        self.frames_until(|f| f["type"] == "message" && f["message"]["role"] == "assistant")
            .await
    }
}

/// Frames of `socket` up to and including the first that matches `stop`.
pub async fn frames_until(socket: &mut WsClient, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = socket.next().await;
        let done = stop(&frame);
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// The text streamed in `delta` frames for `message_id`, a reset voiding
/// what came before it.
pub fn streamed(frames: &[Value], message_id: &Value) -> String {
    let mut text = String::new();
    for frame in frames
        .iter()
        .filter(|f| f["type"] == "delta" && &f["message_id"] == message_id)
    {
        if frame["reset"] == true {
            text.clear();
        }
        text.push_str(frame["text"].as_str().unwrap_or_default());
    }
    text
}

/// The `delta` frames among `frames`.
pub fn deltas(frames: &[Value]) -> Vec<&Value> {
    frames.iter().filter(|f| f["type"] == "delta").collect()
}

/// The messages of the `message` frames among `frames`.
pub fn messages_in(frames: &[Value]) -> Vec<&Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| &f["message"])
        .collect()
}

/// `role` of each message.
pub fn roles(messages: &[Value]) -> Vec<&str> {
    messages
        .iter()
        .map(|m| m["role"].as_str().unwrap_or_default())
        .collect()
}

/// Replaces the policy as admin; returns the policy in force.
pub async fn set_policy(server: &TestServer, policy: Value) -> Value {
    let put = server
        .call(
            reqwest::Method::PUT,
            "/v1/policy",
            Some(&server.admin),
            Some(policy),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text);
    put.body
}

/// Waits until the thread holds a message matching `pred`, as `token`
/// sees it.
pub async fn wait_for_message(
    server: &TestServer,
    thread: &str,
    token: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = server.messages(thread, token).await;
        if let Some(m) = messages.iter().find(|m| pred(m)) {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no such message in {messages:#?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /v1/inbox?{query}` as admin: the items.
pub async fn inbox(server: &TestServer, query: &str) -> Vec<Value> {
    let page = server
        .get(&format!("/v1/inbox?{query}"), &server.admin)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    page.body["items"].as_array().expect("items").clone()
}

/// An inbox item as listed or pushed, without the context every item
/// carries (its thread and latest messages), after checking that the
/// context is there and is the item's own thread.
pub fn without_context(mut item: Value) -> Value {
    let fields = item.as_object_mut().expect("an item");
    let thread = fields.remove("thread").expect("the item's thread");
    assert_eq!(thread["id"], fields["thread_id"], "{thread:#}");
    let history = fields.remove("history").expect("the item's history");
    assert!(history.is_array(), "{history:#}");
    item
}

/// Waits for the thread's first inbox item (of any status) and returns it.
pub async fn wait_for_item(server: &TestServer, thread: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let items = inbox(server, &format!("thread_id={thread}&status=open")).await;
        if let Some(item) = items.first() {
            return item.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no inbox item for thread {thread}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A message as staff see it (with the routing, usage and approval
/// metadata customers never get).
pub async fn staff_view(server: &TestServer, thread: &str, message: &Value) -> Value {
    let id = message["id"].clone();
    server
        .messages(thread, &server.admin)
        .await
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no message {id} in thread {thread}"))
}

/// Asserts that a message as a customer got it holds none of the
/// staff-only metadata.
pub fn assert_customer_safe(message: &Value) {
    for key in tandem_model::metadata::staff_only_keys() {
        assert!(
            message["metadata"].get(key).is_none(),
            "`{key}` reached the customer: {message:#}"
        );
    }
}

/// Waits until the run has completed and returns its result.
pub async fn run_result(server: &TestServer, run_id: &Value) -> Value {
    let id = run_id.as_str().expect("run id");
    let state = server.wait_for_status(id, "completed").await;
    state["result"].clone()
}

/// `GET /v1/threads/{id}` as admin.
pub async fn thread(server: &TestServer, id: &str) -> Value {
    let thread = server
        .get(&format!("/v1/threads/{id}"), &server.admin)
        .await;
    assert_eq!(thread.status, StatusCode::OK, "{}", thread.text);
    thread.body
}

/// `GET /v1/threads/{id}/usage` as admin.
pub async fn usage(server: &TestServer, id: &str) -> Value {
    let usage = server
        .get(&format!("/v1/threads/{id}/usage"), &server.admin)
        .await;
    assert_eq!(usage.status, StatusCode::OK, "{}", usage.text);
    usage.body
}

/// Assigns the thread to humans in the database: no route assigns a thread
/// yet (`PATCH /v1/threads/{id}` refuses `assigned_to`).
pub async fn assign_to_humans(server: &TestServer, thread: &str) {
    use sqlx::Connection;
    let id: tandem_model::ThreadId = thread.parse().expect("thread id");
    const SQL: &str = "UPDATE threads SET assigned_to = 'human' WHERE id = $1";
    let updated = match &server.db {
        crate::TestDb::Sqlite { dir } => {
            let url = format!("sqlite://{}", dir.path().join("tandem.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
            sqlx::query(SQL)
                .bind(id)
                .execute(&mut conn)
                .await
                .expect("assign")
                .rows_affected()
        }
        crate::TestDb::Postgres { url, schema } => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
            sqlx::query(&format!("SET search_path TO {schema}"))
                .execute(&mut conn)
                .await
                .expect("search_path");
            sqlx::query(SQL)
                .bind(id)
                .execute(&mut conn)
                .await
                .expect("assign")
                .rows_affected()
        }
    };
    assert_eq!(updated, 1, "thread {thread} not found");
}

/// How many `reply` runs were started.
pub async fn reply_runs(server: &TestServer) -> usize {
    let counted = server
        .db
        .query_strings("SELECT CAST(COUNT(*) AS TEXT) FROM workflow_runs WHERE name = 'reply'")
        .await;
    counted
        .first()
        .and_then(|n| n.parse().ok())
        .expect("a count")
}

/// Waits until every `reply` run has completed or waits for a person, so
/// that a test can assert what did not happen. A failed run fails the test:
/// the reply path hands every failure to humans instead.
pub async fn runs_settled(server: &TestServer) {
    let deadline = Instant::now() + WAIT;
    loop {
        let busy = server
            .db
            .query_strings(
                "SELECT status FROM workflow_runs \
                 WHERE name = 'reply' AND status NOT IN ('completed', 'waiting')",
            )
            .await;
        assert!(
            !busy.iter().any(|s| s == "failed"),
            "a reply run failed: {:#?}",
            reply_errors(server).await
        );
        if busy.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "runs still busy: {busy:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// An agent answers `item`'s question, approves or rejects it (`action`),
/// with `body`; returns the response.
pub async fn resolve(
    server: &TestServer,
    token: &str,
    item: &Value,
    action: &str,
    body: Value,
) -> crate::Response {
    let id = item["id"].as_str().expect("item id");
    server
        .post(&format!("/v1/inbox/{id}/{action}"), token, body)
        .await
}

/// Each `reply` run's customer message id and result (null until it
/// completes), oldest run first.
pub async fn reply_outcomes(server: &TestServer) -> Vec<(Value, Value)> {
    let read = |column: &str| {
        format!(
            "SELECT COALESCE(CAST({column} AS TEXT), 'null') FROM workflow_runs \
             WHERE name = 'reply' ORDER BY created_at, id"
        )
    };
    let args = server.db.query_strings(&read("args")).await;
    let results = server.db.query_strings(&read("result")).await;
    args.iter()
        .zip(&results)
        .map(|(args, result)| {
            let args: Value = serde_json::from_str(args).expect("JSON args");
            let result = serde_json::from_str(result).expect("JSON result");
            (args["message_id"].clone(), result)
        })
        .collect()
}

/// The errors of failed `reply` runs.
async fn reply_errors(server: &TestServer) -> Vec<String> {
    server
        .db
        .query_strings(
            "SELECT COALESCE(CAST(error AS TEXT), '') FROM workflow_runs \
             WHERE name = 'reply' AND status = 'failed'",
        )
        .await
}
