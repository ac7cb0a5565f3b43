//! The desk: items with their context, agents' presence, teams and
//! capacity, fair assignment, and deadlines with their fallbacks — through
//! HTTP and WebSocket, on a server whose reply path hands every customer
//! message to humans (the AI is off unless a test scripts one). The
//! server runs on a clock the tests move: deadlines pass and the desk
//! sweeps when a test says so, never after real time.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_model::names::DEADLINE_WORKFLOW;
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_server::config::Config;
use tandem_tests::reply::{Chat, WAIT, inbox, set_policy, wait_for_item, wait_for_message};
use tandem_tests::{Response, TestServer, ai_config};

const POLL: Duration = Duration::from_millis(20);

/// A server with the reply path on, the AI off, and a desk that sweeps
/// often, on a clock the test moves.
async fn desk_server(configure: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::on_manual_clock(|config| {
        config.reply.enabled = true;
        config.desk.claim_sweep_interval_ms = 50;
        configure(config);
    })
    .await
}

/// Lets `by` pass on the server's clock, then waits for a desk pass that
/// began after: the sweep that fell due, and an assignment pass.
async fn pass_time(server: &TestServer, by: Duration) {
    server.clock().advance(by);
    server.desk_pass().await;
}

/// Waits until every deadline run has ended: no deadline is left to pass,
/// however long one waits.
async fn deadlines_done(server: &TestServer) {
    let sql = format!("SELECT status FROM workflow_runs WHERE name = '{DEADLINE_WORKFLOW}'");
    let deadline = Instant::now() + WAIT;
    loop {
        let statuses = server.db.query_strings(&sql).await;
        if !statuses.is_empty() && statuses.iter().all(|s| s == "completed") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deadline runs still waiting: {statuses:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn put(server: &TestServer, path: &str, token: &str, body: Value) -> Response {
    server
        .call(Method::PUT, path, Some(token), Some(body))
        .await
}

/// Configures an agent as admin.
async fn configure(server: &TestServer, name: &str, capacity: u32, teams: &[&str]) {
    let done = put(
        server,
        &format!("/v1/agents/{name}"),
        &server.admin,
        json!({"capacity": capacity, "teams": teams}),
    )
    .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
}

/// Sets an agent's presence with its own token.
async fn presence(server: &TestServer, token: &str, presence: &str) -> Response {
    let set = put(
        server,
        "/v1/agents/me/presence",
        token,
        json!({"presence": presence}),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    set
}

/// A customer's thread whose first message opened a handoff item; the item.
async fn handoff(server: &TestServer, customer_id: &str, text: &str) -> (Chat, Value) {
    let chat = Chat::open(server, customer_id).await;
    chat.say(server, text).await;
    let item = pending_item(server, &chat.thread).await;
    (chat, item)
}

/// Waits for the thread's item, open or already claimed.
async fn pending_item(server: &TestServer, thread: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(item) = inbox(server, &format!("thread_id={thread}")).await.first() {
            return item.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no inbox item for thread {thread}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `GET /v1/inbox/{id}` as admin.
async fn item(server: &TestServer, id: &Value) -> Value {
    let got = server
        .get(
            &format!("/v1/inbox/{}", id.as_str().expect("id")),
            &server.admin,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    got.body
}

/// Waits until the item matches `pred`; returns it.
async fn item_until(server: &TestServer, id: &Value, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let current = item(server, id).await;
        if pred(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "item never matched: {current:#}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the item is claimed by someone; returns who.
async fn assignee(server: &TestServer, id: &Value) -> String {
    let claimed = item_until(server, id, |i| i["status"] == "claimed").await;
    claimed["claimed_by"].as_str().expect("holder").to_owned()
}

async fn expiries(server: &TestServer, id: &Value) -> Vec<Value> {
    let got = server
        .get(
            &format!("/v1/inbox/{}/expiries", id.as_str().expect("id")),
            &server.admin,
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    got.body["expiries"].as_array().expect("expiries").clone()
}

#[tokio::test]
async fn an_item_carries_its_customer_and_history_and_the_inbox_filters_by_team() {
    let server = desk_server(|_| {}).await;
    let (first, item) = handoff(&server, "c1", "My parcel never arrived").await;
    assert_eq!(item["thread"]["id"], json!(first.thread));
    assert_eq!(item["thread"]["customer_id"], "c1");
    let history = item["history"].as_array().expect("history");
    assert!(
        history
            .iter()
            .any(|m| m["content"] == "My parcel never arrived"),
        "{history:#?}"
    );
    assert!(item["reason"].is_string(), "{item:#}");
    assert_eq!(item["priority"], "normal");
    // The default policy gives a normal handoff an hour.
    assert!(item["due_at"].is_string(), "{item:#}");

    // A thread assigned to the billing team: its item is billing's.
    let billing = Chat::open(&server, "c2").await;
    let assigned = put(
        &server,
        &format!("/v1/threads/{}/assignment", billing.thread),
        &server.admin,
        json!({"assigned_to": "human", "team": "billing", "reason": "invoice"}),
    )
    .await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.text);
    billing.say(&server, "Why was I charged twice?").await;
    let billed = wait_for_item(&server, &billing.thread).await;
    assert_eq!(billed["team"], "billing");

    let page = server.get("/v1/inbox?team=billing", &server.admin).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    let ids: Vec<&Value> = page.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| &i["id"])
        .collect();
    assert_eq!(ids, vec![&billed["id"]]);

    // The inbox topic pushes the same context.
    let mut desk = server.ws(&server.agent("ann").await).await;
    desk.subscribe("inbox", None).await;
    let frame = desk.next_of("inbox").await;
    assert!(
        frame["item"]["thread"]["customer_id"].is_string(),
        "{frame:#}"
    );
    assert!(
        frame["item"]["history"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
    );
}

#[tokio::test]
async fn least_loaded_assignment_respects_capacity_teams_and_presence() {
    let server = desk_server(|_| {}).await;
    let ann = server.agent("ann").await;
    let bob = server.agent("bob").await;
    let cat = server.agent("cat").await;
    configure(&server, "ann", 2, &["billing"]).await;
    configure(&server, "bob", 1, &[]).await;
    configure(&server, "cat", 5, &[]).await;
    presence(&server, &ann, "online").await;
    presence(&server, &bob, "online").await;

    // Both empty: ann by name; then bob, the least loaded; then ann again.
    let (_, one) = handoff(&server, "c1", "one").await;
    assert_eq!(assignee(&server, &one["id"]).await, "ann");
    let (_, two) = handoff(&server, "c2", "two").await;
    assert_eq!(assignee(&server, &two["id"]).await, "bob");
    let (_, three) = handoff(&server, "c3", "three").await;
    assert_eq!(assignee(&server, &three["id"]).await, "ann");

    // Everyone online is full: the fourth waits, oldest first in the queue.
    let (_, four) = handoff(&server, "c4", "four").await;
    pass_time(&server, Duration::from_millis(300)).await;
    assert_eq!(item(&server, &four["id"]).await["status"], "open");

    // cat comes online and takes it.
    presence(&server, &cat, "online").await;
    assert_eq!(assignee(&server, &four["id"]).await, "cat");

    // bob goes offline: his item goes back and on to cat (ann is full).
    let set = presence(&server, &bob, "offline").await;
    assert_eq!(set.body["presence"], "offline");
    assert_eq!(set.body["load"], 0);
    assert_eq!(assignee(&server, &two["id"]).await, "cat");

    // A billing item waits for ann, the only billing agent, even though cat
    // has room.
    let billing = Chat::open(&server, "c5").await;
    put(
        &server,
        &format!("/v1/threads/{}/assignment", billing.thread),
        &server.admin,
        json!({"assigned_to": "human", "team": "billing", "reason": "invoice"}),
    )
    .await;
    billing.say(&server, "charged twice").await;
    let billed = pending_item(&server, &billing.thread).await;
    pass_time(&server, Duration::from_millis(300)).await;
    assert_eq!(item(&server, &billed["id"]).await["status"], "open");
    let answered = server
        .post(
            &format!("/v1/inbox/{}/answer", one["id"].as_str().expect("id")),
            &ann,
            json!({"text": "It is on its way."}),
        )
        .await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    // The slot it freed is filled at the next sweep.
    server.clock().advance(Duration::from_millis(50));
    assert_eq!(assignee(&server, &billed["id"]).await, "ann");

    // The desk's view of its agents.
    let agents = server.get("/v1/agents", &ann).await;
    assert_eq!(agents.status, StatusCode::OK, "{}", agents.text);
    let loads: Vec<(Value, Value, Value)> = agents.body["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| (a["name"].clone(), a["presence"].clone(), a["load"].clone()))
        .collect();
    assert_eq!(
        loads,
        vec![
            (json!("ann"), json!("online"), json!(2)),
            (json!("bob"), json!("offline"), json!(0)),
            (json!("cat"), json!("online"), json!(2)),
        ]
    );
}

#[tokio::test]
async fn round_robin_gives_each_agent_its_turn() {
    let server = desk_server(|_| {}).await;
    set_policy(&server, json!({"desk": {"assignment": "round_robin"}})).await;
    let mut order = Vec::new();
    for name in ["ann", "bob", "cat"] {
        let token = server.agent(name).await;
        configure(&server, name, 10, &[]).await;
        presence(&server, &token, "online").await;
    }
    for n in 0..6 {
        // Each a moment after the last: round robin goes by who has been
        // longest without a new item.
        server.clock().advance(Duration::from_millis(1));
        let (_, item) = handoff(&server, &format!("c{n}"), "hello").await;
        order.push(assignee(&server, &item["id"]).await);
    }
    assert_eq!(order, ["ann", "bob", "cat", "ann", "bob", "cat"]);
}

#[tokio::test]
async fn an_agent_that_stops_refreshing_its_presence_goes_offline_and_its_items_return() {
    let server = desk_server(|config| config.desk.presence_ttl_secs = 1).await;
    let ann = server.agent("ann").await;
    presence(&server, &ann, "online").await;
    let mut watcher = server.ws(&server.agent("bob").await).await;
    watcher.subscribe("inbox", None).await;
    let (_, item) = handoff(&server, "c1", "hello").await;
    assert_eq!(assignee(&server, &item["id"]).await, "ann");

    // ann's presence outlives its TTL unrefreshed.
    pass_time(&server, Duration::from_millis(1_100)).await;
    let reopened = item_until(&server, &item["id"], |i| i["status"] == "open").await;
    assert!(reopened["claimed_by"].is_null(), "{reopened:#}");
    let agent = server.get("/v1/agents/ann", &server.admin).await;
    assert_eq!(agent.body["presence"], "offline");
    // Pushed: the watcher sees the item go back to the queue.
    loop {
        let frame = watcher.next_of("inbox").await;
        if frame["item"]["id"] == item["id"] && frame["item"]["status"] == "open" {
            break;
        }
    }
}

#[tokio::test]
async fn agents_are_configured_by_admins_and_each_sets_only_its_own_presence() {
    let server = desk_server(|_| {}).await;
    let ann = server.agent("ann").await;
    let customer = server.customer("c1").await;

    put(&server, "/v1/agents/ann", &ann, json!({"capacity": 3}))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    put(
        &server,
        "/v1/agents/bob/presence",
        &ann,
        json!({"presence": "online"}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "not_yourself");
    server
        .get("/v1/agents", &customer)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    put(
        &server,
        "/v1/agents/me/presence",
        &customer,
        json!({"presence": "online"}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "forbidden");
    put(
        &server,
        "/v1/agents/ann",
        &server.admin,
        json!({"capacity": 1001}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_agent");
    put(
        &server,
        "/v1/agents/ann",
        &server.admin,
        json!({"teams": [""]}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_agent");
    let unknown = put(&server, "/v1/agents/ann", &server.admin, json!({"cap": 2})).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
    let bad = put(
        &server,
        "/v1/agents/me/presence",
        &ann,
        json!({"presence": "busy"}),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    server
        .get("/v1/agents/nobody", &server.admin)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");

    // An admin sets anyone's presence; the agent reads itself as `me`.
    put(
        &server,
        "/v1/agents/ann/presence",
        &server.admin,
        json!({"presence": "away"}),
    )
    .await;
    let me = server.get("/v1/agents/me", &ann).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["presence"], "away");
    assert_eq!(me.body["capacity"], 5, "the policy's default capacity");
}

#[tokio::test]
async fn a_passed_deadline_posts_the_holding_message_once_and_is_recorded_and_pushed() {
    let server = desk_server(|_| {}).await;
    set_policy(
        &server,
        json!({"desk": {
            "deadlines_by_kind": {"handoff": {"normal": 1}},
            "fallback": "hold",
            "holding_message": "A person will be with you in a moment."
        }}),
    )
    .await;
    let mut watcher = server.ws(&server.agent("ann").await).await;
    watcher.subscribe("inbox", None).await;
    let (chat, opened) = handoff(&server, "c1", "Where is my refund?").await;

    server.clock().advance(Duration::from_secs(1));
    let held = wait_for_message(&server, &chat.thread, &chat.token, |m| {
        m["content"] == "A person will be with you in a moment."
    })
    .await;
    assert_eq!(held["role"], "assistant");
    loop {
        let frame = watcher.next_of("inbox").await;
        if frame["item"]["id"] == opened["id"] && frame["item"]["expiries"] == 1 {
            assert!(frame["item"]["last_expired_at"].is_string(), "{frame:#}");
            assert_eq!(frame["item"]["status"], "open", "the item still waits");
            break;
        }
    }
    // Once: nothing more, however long it waits.
    server.clock().advance(Duration::from_secs(3_600));
    deadlines_done(&server).await;
    let holding = chat
        .history(&server)
        .await
        .into_iter()
        .filter(|m| m["content"] == "A person will be with you in a moment.")
        .count();
    assert_eq!(holding, 1);
    let recorded = expiries(&server, &opened["id"]).await;
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(recorded[0]["fallback"], "hold");
    assert_eq!(recorded[0]["outcome"], "held");
    assert_eq!(recorded[0]["message_id"], held["id"]);
}

#[tokio::test]
async fn a_passed_deadline_reassigns_the_item_to_another_agent() {
    let server = desk_server(|_| {}).await;
    set_policy(
        &server,
        json!({"desk": {
            "deadlines_by_kind": {"handoff": {"normal": 1}},
            "fallback": "reassign",
            "max_reassignments": 2
        }}),
    )
    .await;
    let ann = server.agent("ann").await;
    let bob = server.agent("bob").await;
    presence(&server, &ann, "online").await;
    let (_, opened) = handoff(&server, "c1", "hello").await;
    assert_eq!(assignee(&server, &opened["id"]).await, "ann");
    presence(&server, &bob, "online").await;

    server.clock().advance(Duration::from_secs(1));
    let moved = item_until(&server, &opened["id"], |i| i["expiries"] == 1).await;
    assert_eq!(moved["claimed_by"], "bob");
    assert!(
        moved["due_at"].as_str() > opened["due_at"].as_str(),
        "{moved:#}"
    );
    // The second passing is the last: back to ann, and no deadline after.
    server.clock().advance(Duration::from_secs(1));
    let last = item_until(&server, &opened["id"], |i| i["expiries"] == 2).await;
    assert_eq!(last["claimed_by"], "ann");
    assert!(last["due_at"].is_null(), "{last:#}");
    let recorded = expiries(&server, &opened["id"]).await;
    let hops: Vec<(&Value, &Value)> = recorded.iter().map(|e| (&e["from"], &e["to"])).collect();
    assert_eq!(
        hops,
        vec![
            (&json!("ann"), &json!("bob")),
            (&json!("bob"), &json!("ann"))
        ]
    );
}

#[tokio::test]
async fn a_passed_deadline_lets_the_ai_answer_with_a_note_the_customer_never_sees() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Your refund was sent yesterday."));
    let base_url = llm.base_url();
    let server = TestServer::on_manual_clock(|config| {
        ai_config(config, &base_url);
        config.desk.claim_sweep_interval_ms = 50;
    })
    .await;
    set_policy(
        &server,
        json!({"desk": {
            "deadlines_by_kind": {"handoff": {"normal": 1}},
            "fallback": "ai_answer"
        }}),
    )
    .await;
    let chat = Chat::open(&server, "c1").await;
    put(
        &server,
        &format!("/v1/threads/{}/assignment", chat.thread),
        &server.admin,
        json!({"assigned_to": "human", "reason": "VIP"}),
    )
    .await;
    chat.say(&server, "Where is my refund?").await;
    let opened = wait_for_item(&server, &chat.thread).await;
    assert_eq!(opened["kind"], "handoff");

    server.clock().advance(Duration::from_secs(1));
    let reply = wait_for_message(&server, &chat.thread, &chat.token, |m| {
        m["content"] == "Your refund was sent yesterday."
    })
    .await;
    assert_eq!(reply["author"]["kind"], "ai");
    let expired = item_until(&server, &opened["id"], |i| i["status"] == "expired").await;
    assert_eq!(expired["expiries"], 1);
    let thread = server
        .get(&format!("/v1/threads/{}", chat.thread), &server.admin)
        .await;
    assert_eq!(thread.body["assigned_to"], "ai");

    // The team's note is there for staff, never for the customer.
    let staff = server.messages(&chat.thread, &server.admin).await;
    let note = staff
        .iter()
        .find(|m| m["visibility"] == "internal" && m["author"]["kind"] == "system")
        .expect("the note to the team");
    assert!(
        !chat
            .history(&server)
            .await
            .iter()
            .any(|m| m["id"] == note["id"]),
        "the note reached the customer"
    );
    let recorded = expiries(&server, &opened["id"]).await;
    assert_eq!(recorded[0]["outcome"], "ai_answered");
    assert_eq!(recorded[0]["note_id"], note["id"]);
}

#[tokio::test]
async fn a_deadline_that_passes_while_the_server_is_down_fires_once_after_restart() {
    let mut server = desk_server(|_| {}).await;
    set_policy(
        &server,
        json!({"desk": {
            "deadlines_by_kind": {"handoff": {"normal": 2}},
            "fallback": "hold",
            "holding_message": "Still here: a person will answer soon."
        }}),
    )
    .await;
    let (chat, opened) = handoff(&server, "c1", "hello?").await;
    server.shutdown_server().await;
    server.clock().advance(Duration::from_millis(2_500));
    let fired = server
        .db
        .query_strings("SELECT fallback FROM inbox_expiries")
        .await;
    assert!(
        fired.is_empty(),
        "fired while the server was down: {fired:?}"
    );
    server.restart().await;

    wait_for_message(&server, &chat.thread, &server.admin, |m| {
        m["content"] == "Still here: a person will answer soon."
    })
    .await;
    // Once: nothing more, however long it waits.
    server.clock().advance(Duration::from_secs(3_600));
    deadlines_done(&server).await;
    let holding = server
        .messages(&chat.thread, &server.admin)
        .await
        .into_iter()
        .filter(|m| m["content"] == "Still here: a person will answer soon.")
        .count();
    assert_eq!(holding, 1);
    assert_eq!(expiries(&server, &opened["id"]).await.len(), 1);
    assert_eq!(item(&server, &opened["id"]).await["expiries"], 1);
}

#[tokio::test]
async fn a_draft_whose_reply_was_cancelled_cannot_be_approved() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("A refund of 500 EUR is on its way."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    set_policy(&server, json!({"approval": {"mode": "always"}})).await;
    let chat = Chat::open(&server, "c1").await;
    chat.say(&server, "Refund me").await;
    let draft = wait_for_item(&server, &chat.thread).await;
    assert_eq!(draft["kind"], "approval");

    let run = draft["run_id"].as_str().expect("the draft's run");
    let cancelled = server
        .post(
            &format!("/v1/workflows/{run}/cancel"),
            &server.admin,
            json!({}),
        )
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    let id = draft["id"].as_str().expect("id");
    server
        .post(&format!("/v1/inbox/{id}/approve"), &server.admin, json!({}))
        .await
        .assert_error(StatusCode::CONFLICT, "run_cancelled");
    let agent = server.agent("ann").await;
    server
        .post(
            &format!("/v1/inbox/{id}/approve"),
            &agent,
            json!({"text": "edited"}),
        )
        .await
        .assert_error(StatusCode::CONFLICT, "run_cancelled");
    assert!(
        !chat
            .history(&server)
            .await
            .iter()
            .any(|m| m["role"] == "assistant"),
        "a cancelled reply reached the customer"
    );
}

#[tokio::test]
async fn desk_policy_and_expiries_refuse_bad_input() {
    let server = desk_server(|_| {}).await;
    for (desk, why) in [
        (
            json!({"deadlines": {"normal": 40_000_000}}),
            "a deadline past a year",
        ),
        (json!({"default_capacity": 1_001}), "a capacity past 1000"),
        (json!({"holding_message": " "}), "an empty holding message"),
        (json!({"max_reassignments": 101}), "too many reassignments"),
        (json!({"item_history": 101}), "too long a history"),
    ] {
        let put = put(&server, "/v1/policy", &server.admin, json!({"desk": desk})).await;
        assert_eq!(
            put.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{why}: {}",
            put.text
        );
        assert_eq!(put.body["error"]["code"], "invalid_policy", "{why}");
    }
    for desk in [
        json!({"fallback": "panic"}),
        json!({"assignment": "random"}),
    ] {
        let put = put(&server, "/v1/policy", &server.admin, json!({"desk": desk})).await;
        assert!(put.status.is_client_error(), "{desk}: {}", put.text);
    }

    let (_, opened) = handoff(&server, "c1", "hello").await;
    let id = opened["id"].as_str().expect("id");
    server
        .get(
            &format!("/v1/inbox/{id}/expiries"),
            &server.customer("c1").await,
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .get("/v1/inbox/not-an-id/expiries", &server.admin)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    let none = expiries(&server, &opened["id"]).await;
    assert!(none.is_empty(), "{none:#?}");
}
