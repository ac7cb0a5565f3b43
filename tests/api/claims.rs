//! Inbox claims: one agent works an item at a time; claims are released by
//! their holder, an admin, or idleness; resolutions respect them.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_model::{InboxKind, NewInboxItem};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;
use tandem_tests::reply::{Chat, inbox, set_policy, wait_for_item, without_context};
use tandem_tests::ws::WsClient;

/// An item opened by the reply path: with the AI off, a customer's message
/// opens a `handoff` item.
async fn handoff(server: &TestServer, customer_id: &str) -> String {
    let chat = Chat::open(server, customer_id).await;
    chat.say(server, "I need a person, please.").await;
    let item = wait_for_item(server, &chat.thread).await;
    assert_eq!(item["kind"], "handoff", "{item:#}");
    item["id"].as_str().expect("item id").to_owned()
}

async fn claim(server: &TestServer, item: &str, token: &str) -> tandem_tests::Response {
    server
        .post(&format!("/v1/inbox/{item}/claim"), token, json!({}))
        .await
}

async fn release(server: &TestServer, item: &str, token: &str) -> tandem_tests::Response {
    server
        .post(&format!("/v1/inbox/{item}/release"), token, json!({}))
        .await
}

fn time(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value.as_str().expect("a time").parse().expect("RFC 3339")
}

/// `token`'s socket on the `inbox` topic, past the snapshot of pending
/// items it starts with.
async fn inbox_socket(server: &TestServer, token: &str) -> WsClient {
    let mut socket = server.ws(token).await;
    let subscribed = socket.subscribe("inbox", None).await;
    for _ in 0..subscribed["items"].as_u64().expect("items") {
        socket.next_of("inbox").await;
    }
    socket
}

/// The next `inbox` frame about `item`.
async fn item_frame(socket: &mut WsClient, item: &str) -> Value {
    loop {
        let frame = socket.next_of("inbox").await;
        if frame["item"]["id"] == item {
            // Each item comes with its thread and latest messages.
            return without_context(frame["item"].clone());
        }
    }
}

#[tokio::test]
async fn an_agent_claims_claims_again_and_releases_and_everyone_sees_it() {
    let server = TestServer::with_ai_off().await;
    let item = handoff(&server, "c1").await;
    let alice = server.agent("alice").await;
    let mut watcher = inbox_socket(&server, &server.agent("bob").await).await;

    let claimed = claim(&server, &item, &alice).await;
    assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.text);
    assert_eq!(claimed.body["status"], "claimed");
    assert_eq!(claimed.body["claimed_by"], "alice");
    assert!(claimed.body["claimed_at"].is_string(), "{:#}", claimed.body);
    assert_eq!(claimed.body["last_activity_at"], claimed.body["claimed_at"]);
    assert_eq!(item_frame(&mut watcher, &item).await, claimed.body);

    // Again: still hers, since the same moment; the activity moves on.
    let again = claim(&server, &item, &alice).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["claimed_by"], "alice");
    assert_eq!(again.body["claimed_at"], claimed.body["claimed_at"]);
    assert!(
        time(&again.body["last_activity_at"]) >= time(&claimed.body["last_activity_at"]),
        "{:#}",
        again.body
    );
    assert_eq!(item_frame(&mut watcher, &item).await, again.body);

    // `claimed_by=me` lists the caller's own.
    let mine = server.get("/v1/inbox?claimed_by=me", &alice).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    let listed = |items: &Value| -> Vec<Value> {
        let items = items.as_array().expect("items");
        items.iter().cloned().map(without_context).collect()
    };
    assert_eq!(listed(&mine.body["items"]), vec![again.body.clone()]);
    assert_eq!(
        listed(&json!(inbox(&server, "claimed_by=alice").await)),
        vec![again.body.clone()]
    );
    assert!(inbox(&server, "claimed_by=bob").await.is_empty());
    assert!(
        inbox(&server, "claimed_by=me").await.is_empty(),
        "admin holds none"
    );

    let released = release(&server, &item, &alice).await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.text);
    assert_eq!(released.body["status"], "open");
    assert_eq!(released.body["claimed_by"], Value::Null);
    assert_eq!(released.body["claimed_at"], Value::Null);
    assert_eq!(item_frame(&mut watcher, &item).await, released.body);
    // Released again: nothing to give back, answered as it is.
    let twice = release(&server, &item, &alice).await;
    assert_eq!(twice.status, StatusCode::OK, "{}", twice.text);
    assert_eq!(twice.body, released.body);

    // Back in the queue: anyone may take it.
    let bob = server.agent("bob").await;
    let taken = claim(&server, &item, &bob).await;
    assert_eq!(taken.status, StatusCode::OK, "{}", taken.text);
    assert_eq!(taken.body["claimed_by"], "bob");
    server.stop().await;
}

#[tokio::test]
async fn a_claim_is_one_agents_and_only_its_holder_or_an_admin_releases_it() {
    let server = TestServer::with_ai_off().await;
    let item = handoff(&server, "c1").await;
    let (alice, bob) = (server.agent("alice").await, server.agent("bob").await);
    let customer = server.customer("c1").await;

    claim(&server, &item, &customer)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    release(&server, &item, &customer)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(claim(&server, &item, &alice).await.status, StatusCode::OK);

    let refused = claim(&server, &item, &bob).await;
    refused.assert_error(StatusCode::CONFLICT, "already_claimed");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("alice")),
        "the holder is named: {}",
        refused.text
    );
    release(&server, &item, &bob)
        .await
        .assert_error(StatusCode::FORBIDDEN, "not_your_claim");
    let unchanged = server.get(&format!("/v1/inbox/{item}"), &bob).await;
    assert_eq!(unchanged.body["claimed_by"], "alice");

    // An admin gives it back for her.
    let released = release(&server, &item, &server.admin).await;
    assert_eq!(released.status, StatusCode::OK, "{}", released.text);
    assert_eq!(released.body["status"], "open");

    // Unknown items are 404; closed items are 409 `item_closed`.
    let missing = "0190f5c6-0000-7000-8000-000000000000";
    claim(&server, missing, &alice)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    claim(&server, "not-an-id", &alice)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let id = item.parse().expect("item id");
    server.store.expire_inbox_item(id).await.expect("expire");
    claim(&server, &item, &alice)
        .await
        .assert_error(StatusCode::CONFLICT, "item_closed");
    release(&server, &item, &alice)
        .await
        .assert_error(StatusCode::CONFLICT, "item_closed");
    server.stop().await;
}

#[tokio::test]
async fn an_item_claimed_by_another_agent_is_resolved_only_by_its_holder_or_an_admin() {
    let llm = ScriptedLlm::start().await;
    for _ in 0..2 {
        llm.push(Reply::text("Your refund is on its way."));
    }
    let server = TestServer::with_ai(&llm, |_| {}).await;
    set_policy(&server, json!({"approval": {"mode": "always"}})).await;
    let (alice, bob) = (server.agent("alice").await, server.agent("bob").await);

    let first = Chat::open(&server, "c1").await;
    first.say(&server, "Where is my refund?").await;
    let item = wait_for_item(&server, &first.thread).await;
    assert_eq!(item["kind"], "approval", "{item:#}");
    let item = item["id"].as_str().expect("item id").to_owned();
    assert_eq!(claim(&server, &item, &alice).await.status, StatusCode::OK);
    for (action, body) in [("approve", json!({})), ("reject", json!({"review": "no"}))] {
        server
            .post(&format!("/v1/inbox/{item}/{action}"), &bob, body)
            .await
            .assert_error(StatusCode::CONFLICT, "claimed_by_other");
    }
    let pending = server.get(&format!("/v1/inbox/{item}"), &bob).await;
    assert_eq!(pending.body["status"], "claimed", "{}", pending.text);
    // Its holder may.
    let approved = server
        .post(&format!("/v1/inbox/{item}/approve"), &alice, json!({}))
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    assert_eq!(approved.body["item"]["resolved_by"], "alice");

    // An admin may, whoever holds it.
    let second = Chat::open(&server, "c2").await;
    second.say(&server, "And mine?").await;
    let item = wait_for_item(&server, &second.thread).await;
    let item = item["id"].as_str().expect("item id").to_owned();
    assert_eq!(claim(&server, &item, &alice).await.status, StatusCode::OK);
    server
        .post(
            &format!("/v1/inbox/{item}/answer"),
            &bob,
            json!({"text": "x"}),
        )
        .await
        .assert_error(StatusCode::CONFLICT, "wrong_item_kind");
    let approved = server
        .post(
            &format!("/v1/inbox/{item}/approve"),
            &server.admin,
            json!({}),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    assert_eq!(approved.body["item"]["status"], "resolved");
    assert_eq!(approved.body["item"]["resolved_by"], "admin");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_agents_racing_for_an_item_exactly_one_wins_every_time() {
    const TRIALS: usize = 200;
    let server = TestServer::start_with(|config| config.rate_limits.agent.per_second = 0).await;
    let thread = server.thread_for("c1").await;
    let (alice, bob) = (server.agent("alice").await, server.agent("bob").await);
    for trial in 0..TRIALS {
        let item = server
            .store
            .open_inbox_item(NewInboxItem {
                kind: InboxKind::Handoff,
                thread_id: thread.parse().expect("thread id"),
                message_id: None,
                tool_call_id: None,
                body: None,
                suggestion: None,
                reason: Some("race".into()),
                due_at: None,
                due_in: None,
                team: None,
                priority: tandem_model::Priority::Normal,
                run_id: None,
            })
            .await
            .expect("open");
        let item = item.id.to_string();
        let (a, b) = tokio::join!(claim(&server, &item, &alice), claim(&server, &item, &bob));
        let (winner, loser, name) = match (a.status, b.status) {
            (StatusCode::OK, StatusCode::CONFLICT) => (a, b, "alice"),
            (StatusCode::CONFLICT, StatusCode::OK) => (b, a, "bob"),
            _ => panic!("trial {trial}: {} / {}", a.text, b.text),
        };
        loser.assert_error(StatusCode::CONFLICT, "already_claimed");
        assert_eq!(winner.body["claimed_by"], name, "trial {trial}");
        let stored = server.get(&format!("/v1/inbox/{item}"), &alice).await;
        assert_eq!(stored.body["claimed_by"], name, "trial {trial}");
    }
    server.stop().await;
}

#[tokio::test]
async fn an_idle_claim_goes_back_to_the_queue_and_other_agents_see_it() {
    let server = TestServer::on_manual_clock(|config| {
        config.reply.enabled = true;
        config.desk.claim_idle_secs = 1;
        config.desk.claim_sweep_interval_ms = 50;
    })
    .await;
    let item = handoff(&server, "c1").await;
    let alice = server.agent("alice").await;
    let mut bob = inbox_socket(&server, &server.agent("bob").await).await;

    let claimed = claim(&server, &item, &alice).await;
    assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.text);
    assert_eq!(item_frame(&mut bob, &item).await["claimed_by"], "alice");

    // Nobody touches it for longer than `claim_idle_secs`: the sweep gives
    // it back.
    server
        .clock()
        .advance(std::time::Duration::from_millis(1_100));
    let back = item_frame(&mut bob, &item).await;
    assert_eq!(back["status"], "open", "{back:#}");
    assert_eq!(back["claimed_by"], Value::Null);
    assert_eq!(back["last_activity_at"], Value::Null);
    let stored = server.get(&format!("/v1/inbox/{item}"), &alice).await;
    assert_eq!(stored.body["status"], "open");
    // Alice's late release finds nothing to give back.
    let late = release(&server, &item, &alice).await;
    assert_eq!(late.status, StatusCode::OK, "{}", late.text);
    server.stop().await;
}
