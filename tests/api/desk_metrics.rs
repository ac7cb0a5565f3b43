//! The first human response to inbox items, human replies resolving
//! handoffs, and the desk's figures (`GET /v1/desk/metrics`, the
//! `tandem_desk_*` series of `/metrics`).

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_model::{InboxKind, NewInboxItem};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;
use tandem_tests::reply::{Chat, WAIT, inbox, resolve, wait_for_item};
use tandem_tests::ws::WsClient;

/// `GET /v1/inbox/{id}` as admin.
async fn item(server: &TestServer, id: &Value) -> Value {
    let id = id.as_str().expect("item id");
    let item = server.get(&format!("/v1/inbox/{id}"), &server.admin).await;
    assert_eq!(item.status, StatusCode::OK, "{}", item.text);
    item.body
}

/// Posts `body` into `thread` with `token`; returns the stored message.
async fn post(server: &TestServer, thread: &str, token: &str, body: Value) -> Value {
    let posted = server
        .post(&format!("/v1/threads/{thread}/messages"), token, body)
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
    posted.body
}

/// Opens an item of `kind` in `thread` straight in the store (a question
/// without the AI's tool call: only its status and response are looked at).
async fn open_item(server: &TestServer, thread: &str, kind: InboxKind) -> Value {
    let item = server
        .store
        .open_inbox_item(NewInboxItem {
            kind,
            thread_id: thread.parse().expect("thread id"),
            message_id: None,
            tool_call_id: None,
            body: Some("Which plan is the customer on?".into()),
            suggestion: None,
            reason: Some("test".into()),
            due_at: None,
            due_in: None,
            team: None,
            priority: tandem_model::Priority::Normal,
            run_id: None,
        })
        .await
        .expect("open item");
    serde_json::to_value(item).expect("item JSON")
}

/// The next `inbox` frame of `socket` about item `id` that `pred` accepts.
async fn inbox_frame(socket: &mut WsClient, id: &Value, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let frame = socket.next_of("inbox").await;
        if frame["item"]["id"] == *id && pred(&frame["item"]) {
            return frame["item"].clone();
        }
    }
}

/// An item read again, or pushed, says what `stored` says of its status
/// and responses (with whatever context it carries besides).
fn same_fields(got: &Value, stored: &Value) {
    for key in [
        "status",
        "resolution",
        "resolved_by",
        "resolved_at",
        "first_response_at",
        "first_response_by",
        "updated_at",
    ] {
        assert_eq!(got[key], stored[key], "{key}: {got:#} {stored:#}");
    }
}

fn time(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .expect("RFC 3339")
}

/// A customer's message to a thread whose handoff was answered opens a new
/// handoff: waits for it, and returns it.
async fn next_handoff(server: &TestServer, thread: &str, not: &Value) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let open = inbox(server, &format!("kind=handoff&thread_id={thread}")).await;
        if let Some(item) = open.iter().find(|i| i["id"] != *not) {
            return item.clone();
        }
        assert!(Instant::now() < deadline, "no new handoff in {thread}");
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    }
}

#[tokio::test]
async fn an_agents_public_reply_answers_the_handoff_and_is_every_items_first_response() {
    let server = TestServer::with_ai_off().await;
    let chat = Chat::open(&server, "c1").await;
    let sam = server.agent("Sam").await;
    let mut desk = server.ws(&server.agent("Kim").await).await;
    desk.subscribe("inbox", None).await;

    chat.say(&server, "I need a person, please.").await;
    let handoff = wait_for_item(&server, &chat.thread).await;
    assert_eq!(handoff["kind"], "handoff", "{handoff:#}");
    assert!(handoff["first_response_at"].is_null(), "{handoff:#}");
    let question = open_item(&server, &chat.thread, InboxKind::Question).await;

    // An internal note is no response: nothing changes.
    post(
        &server,
        &chat.thread,
        &sam,
        json!({"content": "Checking the order.", "visibility": "internal"}),
    )
    .await;
    for id in [&handoff["id"], &question["id"]] {
        let unchanged = item(&server, id).await;
        assert_eq!(unchanged["status"], "open", "{unchanged:#}");
        assert!(unchanged["first_response_at"].is_null(), "{unchanged:#}");
        assert!(unchanged["first_response_by"].is_null(), "{unchanged:#}");
    }

    // The public reply answers the handoff, and is the question's first
    // response without resolving it.
    let reply = post(
        &server,
        &chat.thread,
        &sam,
        json!({"content": "Hi, Sam here: I am on it."}),
    )
    .await;
    let replied_at = time(&reply["created_at"]);
    let answered = item(&server, &handoff["id"]).await;
    assert_eq!(answered["status"], "resolved", "{answered:#}");
    assert_eq!(answered["resolution"], "answered");
    assert_eq!(answered["resolved_by"], "Sam");
    assert_eq!(answered["first_response_by"], "Sam");
    assert_eq!(time(&answered["first_response_at"]), replied_at);
    assert_eq!(time(&answered["resolved_at"]), replied_at);
    assert!(time(&answered["created_at"]) <= replied_at);
    let asked = item(&server, &question["id"]).await;
    assert_eq!(asked["status"], "open", "{asked:#}");
    assert!(asked["resolution"].is_null(), "{asked:#}");
    assert!(asked["resolved_by"].is_null(), "{asked:#}");
    assert_eq!(asked["first_response_by"], "Sam");
    assert_eq!(time(&asked["first_response_at"]), replied_at);

    // Both changes reached the inbox's subscribers.
    let pushed = inbox_frame(&mut desk, &handoff["id"], |i| i["status"] == "resolved").await;
    same_fields(&pushed, &answered);
    let pushed = inbox_frame(&mut desk, &question["id"], |i| {
        !i["first_response_at"].is_null()
    })
    .await;
    same_fields(&pushed, &asked);

    // A later reply by someone else is not the first response.
    let kim = server.agent("Kim").await;
    post(&server, &chat.thread, &kim, json!({"content": "Kim too."})).await;
    same_fields(&item(&server, &question["id"]).await, &asked);
    same_fields(&item(&server, &handoff["id"]).await, &answered);

    // The customer writing again needs a human again: a new handoff.
    chat.say(&server, "Any news?").await;
    let again = next_handoff(&server, &chat.thread, &handoff["id"]).await;
    assert_eq!(again["status"], "open", "{again:#}");
    assert!(again["first_response_at"].is_null(), "{again:#}");
}

#[tokio::test]
async fn an_answer_through_the_inbox_is_the_items_first_response() {
    let llm = ScriptedLlm::start().await;
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let alice = server.agent("alice").await;
    let chat = Chat::open(&server, "c1").await;
    llm.push(Reply::tool_call("ask_human", json!({"question": "Which plan?"})).with_id("call_1"));
    chat.say(&server, "Upgrade me").await;
    let asked = wait_for_item(&server, &chat.thread).await;
    assert_eq!(asked["kind"], "question", "{asked:#}");
    assert!(asked["first_response_at"].is_null(), "{asked:#}");

    llm.push(Reply::text("Pro it is."));
    let answered = resolve(&server, &alice, &asked, "answer", json!({"text": "Pro"})).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    let item = &answered.body["item"];
    assert_eq!(item["status"], "resolved", "{item:#}");
    assert_eq!(item["first_response_by"], "alice");
    assert_eq!(item["first_response_at"], item["resolved_at"]);
}

/// The value of the series `name{labels}` (exactly those labels, in any
/// order) in a Prometheus text exposition.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    wanted.sort();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (series, set) = match key.split_once('{') {
                Some((series, set)) => (series, set.strip_suffix('}')?),
                None => (key, ""),
            };
            let mut got: Vec<String> = set
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            got.sort();
            (series == name && got == wanted).then(|| value.parse().expect("a number"))
        })
}

/// `GET /v1/desk/metrics{query}` as `token`.
async fn desk_metrics(server: &TestServer, token: &str, query: &str) -> Value {
    let metrics = server.get(&format!("/v1/desk/metrics{query}"), token).await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    metrics.body
}

fn agent<'a>(metrics: &'a Value, name: &str) -> &'a Value {
    metrics["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|a| a["agent"] == name)
        .unwrap_or_else(|| panic!("no agent {name} in {metrics:#}"))
}

/// Durations are measured, not negative, and an item's first response
/// never comes after its resolution: with every response here also a
/// resolution, the two distributions are the same.
fn check_durations(figures: &Value, count: u64) {
    let (first, resolution) = (&figures["first_response"], &figures["resolution"]);
    assert_eq!(first["count"], count, "{figures:#}");
    assert_eq!(resolution["count"], count, "{figures:#}");
    for key in ["mean_seconds", "p50_seconds", "p90_seconds"] {
        let (f, r) = (first[key].as_f64(), resolution[key].as_f64());
        if count == 0 {
            assert!(f.is_none() && r.is_none(), "{figures:#}");
            continue;
        }
        let (f, r) = (f.expect("first response"), r.expect("resolution"));
        assert!(f >= 0.0 && f <= r, "{key}: {figures:#}");
    }
    let p50 = first["p50_seconds"].as_f64().unwrap_or(0.0);
    assert!(p50 <= first["p90_seconds"].as_f64().unwrap_or(0.0));
}

#[tokio::test]
async fn desk_metrics_count_responses_resolutions_and_open_items_per_agent() {
    let server = TestServer::with_ai_off().await;
    let alice = server.agent("alice").await;
    let bob = server.agent("bob").await;
    let started = Utc::now();
    let mut handoffs = Vec::new();
    let mut chats = Vec::new();
    for customer in ["c1", "c2", "c3", "c4", "c5"] {
        let chat = Chat::open(&server, customer).await;
        chat.say(&server, "I need a person, please.").await;
        handoffs.push(wait_for_item(&server, &chat.thread).await);
        chats.push(chat);
    }
    let claim = |item: &Value, token: &str| {
        let path = format!("/v1/inbox/{}/claim", item["id"].as_str().expect("id"));
        let token = token.to_owned();
        let server = &server;
        async move {
            let claimed = server.post(&path, &token, json!({})).await;
            assert_eq!(claimed.status, StatusCode::OK, "{}", claimed.text);
        }
    };
    // alice answers two threads, bob claims two and answers one of them;
    // the fifth waits unclaimed.
    post(
        &server,
        &chats[0].thread,
        &alice,
        json!({"content": "On it."}),
    )
    .await;
    post(
        &server,
        &chats[1].thread,
        &alice,
        json!({"content": "Here."}),
    )
    .await;
    claim(&handoffs[2], &bob).await;
    claim(&handoffs[3], &bob).await;
    post(&server, &chats[2].thread, &bob, json!({"content": "Done."})).await;
    assert_eq!(item(&server, &handoffs[3]["id"]).await["status"], "claimed");
    assert_eq!(item(&server, &handoffs[4]["id"]).await["status"], "open");

    let metrics = desk_metrics(&server, &alice, "").await;
    let overall = &metrics["overall"];
    assert_eq!(overall["items"], 5, "{metrics:#}");
    assert_eq!(overall["open"], 2, "{metrics:#}");
    assert_eq!(overall["claimed"], 1, "{metrics:#}");
    assert_eq!(overall["resolved"], 3, "{metrics:#}");
    assert_eq!(overall["expired_items"], 0, "{metrics:#}");
    assert_eq!(overall["expiries"], 0, "{metrics:#}");
    assert_eq!(metrics["expiries_all_time"], 0, "{metrics:#}");
    assert_eq!(metrics["truncated"], false);
    check_durations(overall, 3);
    let since = time(&metrics["since"]);
    assert!(since <= started && since > started - chrono::Duration::hours(25));
    let names: Vec<&Value> = metrics["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| &a["agent"])
        .collect();
    assert_eq!(names, [&json!("alice"), &json!("bob")], "{metrics:#}");
    let a = agent(&metrics, "alice");
    assert_eq!(
        (&a["claimed"], &a["resolved"]),
        (&json!(0), &json!(2)),
        "{a:#}"
    );
    check_durations(a, 2);
    let b = agent(&metrics, "bob");
    assert_eq!(
        (&b["claimed"], &b["resolved"]),
        (&json!(1), &json!(1)),
        "{b:#}"
    );
    check_durations(b, 1);

    // A window that starts now holds none of these items; what is open is
    // open whatever the window.
    let later = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let empty = desk_metrics(&server, &server.admin, &format!("?since={later}")).await;
    assert_eq!(empty["overall"]["items"], 0, "{empty:#}");
    assert_eq!(empty["overall"]["open"], 2, "{empty:#}");
    assert_eq!(empty["overall"]["claimed"], 1, "{empty:#}");
    check_durations(&empty["overall"], 0);
    assert_eq!(agent(&empty, "bob")["claimed"], 1);
    let earlier = started - chrono::Duration::minutes(1);
    let window = desk_metrics(
        &server,
        &bob,
        &format!(
            "?since={}",
            earlier.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
    )
    .await;
    assert_eq!(window["overall"], metrics["overall"]);

    // The same figures on /metrics.
    let scraped = server
        .call(reqwest::Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(scraped.status, StatusCode::OK);
    let text = &scraped.text;
    assert_eq!(
        series(text, "tandem_desk_items_open", &[]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        series(text, "tandem_desk_items_expired_total", &[]),
        Some(0.0)
    );
    for (name, open) in [("alice", 0.0), ("bob", 1.0)] {
        assert_eq!(
            series(text, "tandem_desk_agent_open_items", &[("agent", name)]),
            Some(open),
            "{text}"
        );
    }
    for name in [
        "tandem_desk_first_response_seconds",
        "tandem_desk_resolution_seconds",
    ] {
        for quantile in ["0.5", "0.9"] {
            let overall = series(text, name, &[("quantile", quantile)]);
            assert!(
                overall.is_some_and(|v| v >= 0.0),
                "{name} {quantile}: {text}"
            );
            for agent in ["alice", "bob"] {
                let value = series(text, name, &[("quantile", quantile), ("agent", agent)]);
                assert!(value.is_some_and(|v| v >= 0.0), "{name} {agent}: {text}");
            }
        }
    }
    assert_eq!(
        series(
            text,
            "tandem_desk_first_response_seconds",
            &[("quantile", "0.5")]
        ),
        overall["first_response"]["p50_seconds"].as_f64()
    );

    // Staff only; a `since` that is no time is refused.
    let customer = server.customer("c1").await;
    server
        .get("/v1/desk/metrics", &customer)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    for bad in ["yesterday", "2025-13-01T00:00:00Z", "1700000000"] {
        server
            .get(&format!("/v1/desk/metrics?since={bad}"), &alice)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    }
    server
        .get("/v1/desk/metrics?window=1h", &alice)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
}
