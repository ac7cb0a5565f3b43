//! Takeover and hand-back: `PUT /v1/threads/{id}/assignment`, its history,
//! a human takeover stopping an AI reply mid-stream, and the AI answering
//! again after a hand-back.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::reply::{Chat, WAIT, deltas, messages_in, streamed, wait_for_message};
use tandem_tests::{Response, TestServer};

async fn assign(server: &TestServer, thread: &str, token: &str, body: Value) -> Response {
    server
        .call(
            Method::PUT,
            &format!("/v1/threads/{thread}/assignment"),
            Some(token),
            Some(body),
        )
        .await
}

async fn history(server: &TestServer, thread: &str, token: &str) -> Response {
    server
        .get(&format!("/v1/threads/{thread}/assignments"), token)
        .await
}

/// An assistant message written by the AI.
fn by_ai(message: &Value) -> bool {
    message["role"] == "assistant" && message["author"]["kind"] == "ai"
}

/// The statuses of the `reply` runs.
async fn reply_statuses(server: &TestServer) -> Vec<String> {
    server
        .db
        .query_strings("SELECT status FROM workflow_runs WHERE name = 'reply' ORDER BY id")
        .await
}

/// Waits until no `reply` run is running (or queued to run).
async fn replies_stopped(server: &TestServer) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let statuses = reply_statuses(server).await;
        if !statuses.is_empty() && statuses.iter().all(|s| s != "running") {
            return statuses;
        }
        assert!(Instant::now() < deadline, "runs still busy: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}

#[tokio::test]
async fn staff_assign_threads_and_the_history_lists_every_change_newest_first() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let bob = server.agent("bob").await;
    let mut staff_socket = server.ws(&server.admin).await;
    staff_socket
        .subscribe(&format!("thread:{thread}"), None)
        .await;

    let taken = assign(
        &server,
        &thread,
        &server.admin,
        json!({"assigned_to": "human", "agent_id": "alice", "reason": "VIP customer"}),
    )
    .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.text);
    assert_eq!(taken.body["assigned_to"], "human");
    assert_eq!(taken.body["assignee"], "alice");
    let frame = staff_socket.next_of("thread").await;
    assert_eq!(frame["thread"]["assigned_to"], "human", "{frame:#}");
    assert_eq!(frame["thread"]["assignee"], "alice", "{frame:#}");

    // An agent takes a thread itself, or gives it to a team.
    let own = assign(
        &server,
        &thread,
        &bob,
        json!({"assigned_to": "human", "reason": "I know this customer"}),
    )
    .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_eq!(own.body["assignee"], "bob");
    let team = assign(
        &server,
        &thread,
        &bob,
        json!({"assigned_to": "human", "team": "billing", "reason": "a refund"}),
    )
    .await;
    assert_eq!(team.status, StatusCode::OK, "{}", team.text);
    assert_eq!(team.body["assignee"], Value::Null);
    // ...but not to another agent.
    assign(
        &server,
        &thread,
        &bob,
        json!({"assigned_to": "human", "agent_id": "alice", "reason": "yours"}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let back = assign(
        &server,
        &thread,
        &bob,
        json!({"assigned_to": "ai", "reason": "refund done"}),
    )
    .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.text);
    assert_eq!(back.body["assigned_to"], "ai");
    assert_eq!(back.body["assignee"], Value::Null);

    let listed = history(&server, &thread, &bob).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let entries = listed.body["assignments"].as_array().expect("assignments");
    let summary: Vec<Value> = entries
        .iter()
        .map(|a| {
            json!([
                a["assigned_to"],
                a["assignee"],
                a["team"],
                a["reason"],
                a["by"]["kind"]
            ])
        })
        .collect();
    assert_eq!(
        summary,
        [
            json!(["ai", null, null, "refund done", "human"]),
            json!(["human", null, "billing", "a refund", "human"]),
            json!(["human", "bob", null, "I know this customer", "human"]),
            json!(["human", "alice", null, "VIP customer", "admin"]),
        ],
        "{entries:#?}"
    );
    assert_eq!(entries[0]["by"]["id"], "bob");
    assert!(entries[3]["by"]["id"].is_string(), "{:#}", entries[3]);
    assert!(entries.iter().all(|a| a["created_at"].is_string()));
    assert_eq!(entries[0]["thread_id"], thread.as_str());

    // An unknown thread is a 404.
    let missing = uuid::Uuid::now_v7();
    assign(
        &server,
        &missing.to_string(),
        &server.admin,
        json!({"assigned_to": "human", "reason": "x"}),
    )
    .await
    .assert_error(StatusCode::NOT_FOUND, "not_found");
    history(&server, &missing.to_string(), &server.admin)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn invalid_assignments_are_refused_and_customers_may_not_assign() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    for body in [
        json!({"assigned_to": "human"}),
        json!({"assigned_to": "human", "reason": "   "}),
        json!({"assigned_to": "human", "reason": "x".repeat(501)}),
        json!({"assigned_to": "ai", "agent_id": "alice", "reason": "no"}),
        json!({"assigned_to": "unassigned", "agent_id": "alice", "reason": "no"}),
        json!({"assigned_to": "human", "agent_id": "", "reason": "no"}),
    ] {
        assign(&server, &thread, &server.admin, body.clone())
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_assignment");
    }
    let longest = assign(
        &server,
        &thread,
        &server.admin,
        json!({"assigned_to": "unassigned", "reason": "é".repeat(500)}),
    )
    .await;
    assert_eq!(longest.status, StatusCode::OK, "{}", longest.text);

    // A customer: 403 on their own thread, 404 on anyone else's.
    let owner = server.customer("c1").await;
    let other = server.customer("c2").await;
    let body = json!({"assigned_to": "human", "reason": "please"});
    assign(&server, &thread, &owner, body.clone())
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    history(&server, &thread, &owner)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assign(&server, &thread, &other, body)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    history(&server, &thread, &other)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let listed = history(&server, &thread, &server.admin).await;
    assert_eq!(listed.body["assignments"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_takeover_stops_an_ai_reply_mid_stream_and_it_is_never_published() {
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::text("This AI reply must never reach the customer, not even in part.")
            .chunked(12)
            .chunk_delay(Duration::from_millis(250)),
    );
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;
    let alice = server.agent("alice").await;

    chat.say(&server, "Where is my refund?").await;
    // The AI is writing: its first words reach the customer.
    let mut frames = chat.frames_until(|f| f["type"] == "delta").await;
    let reply_id = frames.last().expect("a delta")["message_id"].clone();

    let taken = assign(
        &server,
        &chat.thread,
        &alice,
        json!({"assigned_to": "human", "reason": "taking over"}),
    )
    .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.text);
    let statuses = replies_stopped(&server).await;
    assert_eq!(statuses, ["cancelled"]);

    // Everything the customer got up to the agent's reply: the hub keeps order.
    frames.extend(
        chat.frames_until_agent_says(&server, "alice", "Hi, Alice here. Let me check.")
            .await,
    );
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "thread" && f["thread"]["assigned_to"] == "human"),
        "no thread frame: {frames:#?}"
    );
    assert!(!deltas(&frames).is_empty());
    assert_eq!(
        streamed(&frames, &reply_id),
        "",
        "streamed AI text left standing: {frames:#?}"
    );
    assert!(
        !messages_in(&frames).into_iter().any(by_ai),
        "an AI message reached the customer: {frames:#?}"
    );
    let history = chat.history(&server).await;
    assert!(!history.iter().any(by_ai), "{history:#?}");
    assert_eq!(history.len(), 2, "{history:#?}");
    assert_eq!(reply_statuses(&server).await, ["cancelled"]);
}

#[tokio::test]
async fn after_a_hand_back_the_ai_answers_with_the_human_stretch_marked() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Happy to help with the invoice."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;
    let alice = server.agent("alice").await;

    let taken = assign(
        &server,
        &chat.thread,
        &alice,
        json!({"assigned_to": "human", "reason": "a known customer"}),
    )
    .await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.text);
    chat.say(&server, "Hello, I was double charged.").await;
    chat.frames_until_agent_says(&server, "alice", "Refunded, sorry about that!")
        .await;
    let back = assign(
        &server,
        &chat.thread,
        &alice,
        json!({"assigned_to": "ai", "reason": "refund done"}),
    )
    .await;
    assert_eq!(back.status, StatusCode::OK, "{}", back.text);

    chat.say(&server, "Thanks! Can I get the invoice too?")
        .await;
    let reply = wait_for_message(&server, &chat.thread, &chat.token, by_ai).await;
    assert_eq!(reply["content"], "Happy to help with the invoice.");

    let requests = llm.chat_requests();
    assert_eq!(
        requests.len(),
        1,
        "the AI was asked while humans held the thread"
    );
    let prompt: Vec<String> = requests[0]
        .messages()
        .iter()
        .map(|m| {
            format!(
                "{}: {}",
                m["role"].as_str().unwrap_or_default(),
                m["content"]
            )
        })
        .collect();
    // The notes that open and close the human's stretch are lines of the
    // human's own turn (strict chat templates refuse a later system turn).
    assert!(
        !prompt[1..].iter().any(|t| t.starts_with("system")),
        "{prompt:#?}"
    );
    let agent = prompt
        .iter()
        .position(|t| t.contains("Refunded, sorry"))
        .expect("the agent's reply");
    let turn = &prompt[agent];
    assert!(turn.starts_with("assistant"), "{turn}");
    let start = turn
        .find("took over")
        .unwrap_or_else(|| panic!("no start note: {turn}"));
    let said = turn.find("Refunded, sorry").expect("the reply");
    let end = turn
        .find("ends here")
        .unwrap_or_else(|| panic!("no end note: {turn}"));
    let question = prompt
        .iter()
        .position(|t| t.contains("Can I get the invoice"))
        .expect("the new question");
    assert!(
        start < said && said < end && agent < question,
        "{prompt:#?}"
    );
}
