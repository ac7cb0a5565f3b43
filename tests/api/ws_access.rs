//! The WebSocket hub's edges: who may connect and subscribe to what, bad
//! frames, the limits on one connection or token, liveness, and the
//! ephemeral events (typing, presence, thread and inbox changes).
//!
//! Every check goes through real sockets. "Nothing arrives" is asserted with
//! a short wait and then a `ping` whose `pong` must be the very next frame:
//! the server queues frames in order, so anything it meant to send earlier
//! would show up first.

use std::cell::Cell;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_model::{InboxItem, InboxKind, InboxStatus, NewInboxItem};
use tandem_tests::TestServer;
use tandem_tests::ws::{Ended, FRAME_TIMEOUT, Refused, WsClient};
use tokio_tungstenite::tungstenite::Message;

/// How long "nothing arrives" waits before its ping round trip.
const QUIET: Duration = Duration::from_millis(400);

/// The hub's default frame limit (`hub.max_message_bytes`).
const MAX_FRAME: usize = 64 * 1024;

fn topic(thread: &str) -> String {
    format!("thread:{thread}")
}

fn typing(thread: &str) -> Value {
    json!({"type": "typing", "thread_id": thread})
}

/// The next frame, which must be an `error` with `code` and a message.
async fn expect_error(ws: &mut WsClient, code: &str) -> Value {
    let frame = ws.next().await;
    assert_eq!(
        frame["type"], "error",
        "expected error `{code}`, got {frame}"
    );
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {frame}"
    );
    frame
}

/// The connection is open and nothing is queued ahead: a `ping` with a fresh
/// nonce is answered by its `pong` as the very next frame.
async fn assert_usable(ws: &mut WsClient) {
    let nonce = uuid::Uuid::new_v4().to_string();
    ws.send(json!({"type": "ping", "nonce": nonce})).await;
    let frame = ws.next().await;
    assert_eq!(
        frame,
        json!({"type": "pong", "nonce": nonce}),
        "expected nothing but the pong"
    );
}

/// Nothing arrives: no frame within `QUIET`, and nothing queued before a pong.
async fn assert_quiet(ws: &mut WsClient, what: &str) {
    if let Some(frame) = ws.maybe_next(QUIET).await {
        panic!("{what}: unexpected frame {frame}");
    }
    assert_usable(ws).await;
}

/// Connects, panicking with the refusal if the upgrade is refused.
async fn connected(url: &str, token: Option<&str>, origin: Option<&str>) -> WsClient {
    match WsClient::connect(url, token, origin).await {
        Ok(ws) => ws,
        Err(refused) => panic!("upgrade refused (origin {origin:?}): {refused:?}"),
    }
}

/// Connects, expecting an HTTP refusal with this status and error code.
async fn refused(
    url: &str,
    token: Option<&str>,
    origin: Option<&str>,
    status: u16,
    code: &str,
) -> Refused {
    let Err(refused) = WsClient::connect(url, token, origin).await else {
        panic!("upgraded, expected {status} {code} (origin {origin:?})");
    };
    assert_eq!(refused.status, status, "origin {origin:?}: {refused:?}");
    assert_eq!(refused.body["error"]["code"], code, "{refused:?}");
    refused
}

/// Retries a Bearer connection refused with 429 until it succeeds.
async fn connect_when_free(server: &TestServer, token: &str, within: Duration) -> WsClient {
    let deadline = Instant::now() + within;
    loop {
        match WsClient::connect(&server.ws_url(), Some(token), None).await {
            Ok(ws) => return ws,
            Err(refused) => {
                assert_eq!(refused.status, 429, "{refused:?}");
                assert!(
                    Instant::now() < deadline,
                    "the token's connection was not given back within {within:?}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// Posts a message and returns its seq.
async fn post_as(server: &TestServer, thread: &str, token: &str, body: Value) -> i64 {
    let response = server
        .post(&format!("/v1/threads/{thread}/messages"), token, body)
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
    response.body["seq"].as_i64().expect("seq")
}

/// `message` frames of `thread` until one has `seq >= last` (others skipped).
async fn messages_until(ws: &mut WsClient, thread: &str, last: i64) -> Vec<Value> {
    let mut messages = Vec::new();
    loop {
        let frame = ws.next().await;
        if frame["type"] == "message" && frame["thread_id"] == thread {
            let seq = frame["seq"].as_i64().expect("seq");
            messages.push(frame);
            if seq >= last {
                return messages;
            }
        }
    }
}

fn seqs(messages: &[Value]) -> Vec<i64> {
    messages
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect()
}

/// Reads `presence` frames until one lists exactly `agents`.
async fn presence_until(ws: &mut WsClient, agents: &[&str]) {
    loop {
        let frame = ws.next_of("presence").await;
        if frame["agents"] == json!(agents) {
            return;
        }
    }
}

fn new_item(thread: &str, body: &str) -> NewInboxItem {
    NewInboxItem {
        kind: InboxKind::Handoff,
        thread_id: thread.parse().expect("thread id"),
        message_id: None,
        tool_call_id: None,
        body: Some(body.to_owned()),
        suggestion: None,
        reason: Some("needs a human".to_owned()),
        due_at: None,
        due_in: None,
        team: None,
        priority: tandem_model::Priority::Normal,
        run_id: None,
    }
}

fn inbox_frame(item: &InboxItem) -> Value {
    json!({"type": "inbox", "item": serde_json::to_value(item).expect("item JSON")})
}

/// An `inbox` frame without its item's context (see
/// [`tandem_tests::reply::without_context`]).
fn without_context(mut frame: Value) -> Value {
    frame["item"] = tandem_tests::reply::without_context(frame["item"].take());
    frame
}

// 1. Authorization

#[tokio::test]
async fn a_customer_gets_not_found_for_other_threads_and_forbidden_for_the_inbox() {
    let server = TestServer::start().await;
    let own = server.thread_for("c1").await;
    let other = server.thread_for("c2").await;
    let missing = uuid::Uuid::now_v7().to_string();
    let customer = server.customer("c1").await;
    let mut ws = server.ws(&customer).await;

    ws.send(json!({"type": "subscribe", "topic": topic(&other)}))
        .await;
    let mut foreign = expect_error(&mut ws, "not_found").await;
    ws.send(json!({"type": "subscribe", "topic": topic(&missing)}))
        .await;
    let mut absent = expect_error(&mut ws, "not_found").await;
    assert_eq!(foreign["topic"], topic(&other));
    assert_eq!(absent["topic"], topic(&missing));
    foreign["topic"].take();
    absent["topic"].take();
    assert_eq!(
        foreign, absent,
        "another customer's thread must look exactly like one that does not exist"
    );

    // The refused subscription left nothing behind.
    ws.send(json!({"type": "unsubscribe", "topic": topic(&other)}))
        .await;
    expect_error(&mut ws, "not_subscribed").await;
    server.post_text(&other, "for c2 only").await;
    let agent = server.agent("alice").await;
    post_as(&server, &other, &agent, json!({"content": "reply to c2"})).await;
    assert_quiet(&mut ws, "messages of another customer's thread").await;

    ws.send(json!({"type": "subscribe", "topic": "inbox"}))
        .await;
    let forbidden = expect_error(&mut ws, "forbidden").await;
    assert_eq!(forbidden["topic"], "inbox");
    // An item opened (the store announces it to `inbox` subscribers).
    server
        .store
        .open_inbox_item(new_item(&own, "private to staff"))
        .await
        .expect("open inbox item");
    // A thread change goes to inbox subscribers; this customer is not one.
    let patched = server
        .patch(
            &format!("/v1/threads/{own}"),
            &server.admin,
            json!({"status": "closed"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_quiet(&mut ws, "inbox items and changes").await;

    // Its own thread is fine.
    let subscribed = ws.subscribe(&topic(&own), None).await;
    assert_eq!(subscribed["last_seq"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_customer_sees_only_public_published_messages_in_replay_and_live() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let customer = server.customer("c1").await;
    let agent = server.agent("alice").await;
    let admin = server.admin.clone();
    let note = |text: &str| json!({"content": text, "visibility": "internal"});
    let draft =
        |text: &str| json!({"role": "assistant", "content": text, "status": "pending_approval"});

    let posted = [
        server.post_text(&thread, "hello").await,
        post_as(&server, &thread, &agent, note("replay note")).await,
        post_as(&server, &thread, &admin, draft("replay draft")).await,
        post_as(&server, &thread, &agent, json!({"content": "replay reply"})).await,
    ];
    assert_eq!(posted, [1, 2, 3, 4]);

    let mut viewers = Vec::new();
    for token in [&customer, &agent, &admin] {
        let mut ws = server.ws(token).await;
        let subscribed = ws.subscribe(&topic(&thread), Some(0)).await;
        assert_eq!(subscribed["last_seq"], 4, "{subscribed}");
        assert_eq!(subscribed["recovered"], true, "{subscribed}");
        viewers.push(ws);
    }
    let [customer_ws, agent_ws, admin_ws] = &mut viewers[..] else {
        unreachable!()
    };

    let replayed = messages_until(customer_ws, &thread, 4).await;
    assert_eq!(seqs(&replayed), [1, 4], "customer replay: {replayed:?}");
    for frame in &replayed {
        assert_eq!(frame["message"]["visibility"], "public", "{frame}");
        assert_eq!(frame["message"]["status"], "published", "{frame}");
    }
    assert_eq!(replayed[1]["message"]["content"], "replay reply");
    for staff in [&mut *agent_ws, &mut *admin_ws] {
        let replayed = messages_until(staff, &thread, 4).await;
        assert_eq!(seqs(&replayed), [1, 2, 3, 4], "staff replay");
        assert_eq!(replayed[1]["message"]["content"], "replay note");
        assert_eq!(replayed[2]["message"]["status"], "pending_approval");
    }

    let live = [
        post_as(&server, &thread, &agent, note("live note")).await,
        post_as(&server, &thread, &admin, draft("live draft")).await,
        post_as(&server, &thread, &agent, json!({"content": "live reply"})).await,
    ];
    assert_eq!(live, [5, 6, 7]);
    let received = messages_until(customer_ws, &thread, 7).await;
    assert_eq!(seqs(&received), [7], "customer live: {received:?}");
    assert_eq!(received[0]["message"]["content"], "live reply");
    assert_quiet(customer_ws, "after the last public message").await;
    for staff in [&mut *agent_ws, &mut *admin_ws] {
        let received = messages_until(staff, &thread, 7).await;
        assert_eq!(seqs(&received), [5, 6, 7], "staff live");
        assert_eq!(received[0]["message"]["visibility"], "internal");
        assert_eq!(received[1]["message"]["status"], "pending_approval");
    }
    server.stop().await;
}

// 2. Connecting

#[tokio::test]
async fn an_upgrade_needs_credentials_and_takes_a_bearer_token() {
    let server = TestServer::start().await;
    let url = server.ws_url();
    refused(&url, None, None, 401, "unauthorized").await;
    refused(&url, Some("tdm_not_a_token"), None, 401, "unauthorized").await;
    let tickets = server
        .call(reqwest::Method::POST, "/v1/ws/tickets", None, None)
        .await;
    tickets.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");

    let mut admin = server.ws(&server.admin).await;
    assert_usable(&mut admin).await;
    admin.subscribe("inbox", None).await;

    // The socket has the token's identity.
    let customer = server.customer("c1").await;
    let mut ws = server.ws(&customer).await;
    ws.send(json!({"type": "subscribe", "topic": "inbox"}))
        .await;
    expect_error(&mut ws, "forbidden").await;
    assert_usable(&mut ws).await;
    server.stop().await;
}

#[tokio::test]
async fn a_ticket_opens_one_socket_once_with_its_tokens_identity() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let customer = server.customer("c1").await;
    let before = chrono::Utc::now();
    let minted = server.post("/v1/ws/tickets", &customer, Value::Null).await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.body);
    let ticket = minted.body["ticket"].as_str().expect("ticket").to_owned();
    assert!(ticket.starts_with("wst_"), "{ticket}");
    let expires_at: chrono::DateTime<chrono::Utc> = minted.body["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("an RFC 3339 time");
    let ttl = (expires_at - before).num_seconds();
    assert!((58..=62).contains(&ttl), "documented as 60 s, got {ttl} s");

    let url = format!("{}?ticket={ticket}", server.ws_url());
    let mut ws = connected(&url, None, None).await;
    ws.subscribe(&topic(&thread), None).await;
    ws.send(json!({"type": "subscribe", "topic": "inbox"}))
        .await;
    expect_error(&mut ws, "forbidden").await;

    // Once only: while the first socket is open, and after it closed.
    refused(&url, None, None, 401, "unauthorized").await;
    ws.close().await;
    refused(&url, None, None, 401, "unauthorized").await;
    let forged = format!("{}?ticket=wst_{}", server.ws_url(), "A".repeat(43));
    refused(&forged, None, None, 401, "unauthorized").await;
    server.stop().await;
}

#[tokio::test]
async fn an_expired_ticket_is_refused() {
    let server = TestServer::start_with(|config| config.hub.ticket_ttl_secs = 1).await;
    let agent = server.agent("alice").await;
    let fresh = server.ws_ticket(&agent).await;
    let minted = server.post("/v1/ws/tickets", &agent, Value::Null).await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.body);
    let stale = minted.body["ticket"].as_str().expect("ticket");
    let expires_at: chrono::DateTime<chrono::Utc> = minted.body["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("an RFC 3339 time");
    assert!(expires_at <= chrono::Utc::now() + chrono::Duration::seconds(1));

    // A ticket minted alongside works while it is valid.
    let mut ws = connected(&format!("{}?ticket={fresh}", server.ws_url()), None, None).await;
    assert_usable(&mut ws).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while chrono::Utc::now() <= expires_at + chrono::Duration::milliseconds(100) {
        assert!(
            Instant::now() < deadline,
            "the clock did not pass {expires_at}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{}?ticket={stale}", server.ws_url());
    refused(&url, None, None, 401, "unauthorized").await;
    server.stop().await;
}

#[tokio::test]
async fn foreign_origins_are_refused_before_the_upgrade_and_keep_the_ticket() {
    let shop = "https://shop.example.com";
    let server =
        TestServer::start_with(|config| config.hub.allowed_origins = vec![shop.to_owned()]).await;
    let customer = server.customer("c1").await;
    let ticket = server.ws_ticket(&customer).await;
    let ws_url = server.ws_url();
    let url = format!("{ws_url}?ticket={ticket}");
    let port = server.url.rsplit(':').next().expect("port");

    let look_alike = format!("http://127.0.0.1:{port}.evil.com");
    let other_port = format!(
        "http://127.0.0.1:{}",
        port.parse::<u16>().expect("port") ^ 1
    );
    let bad = [
        "https://evil.example.com",
        look_alike.as_str(),
        other_port.as_str(),
        "null",
        "https://shop.example.com.evil.com",
        "http://shop.example.com",
        "https://shop.example.com:8443",
    ];
    for origin in bad {
        refused(&url, None, Some(origin), 403, "origin_not_allowed").await;
        refused(
            &ws_url,
            Some(&customer),
            Some(origin),
            403,
            "origin_not_allowed",
        )
        .await;
    }
    // The Origin is checked first: no credentials at all is still a 403.
    refused(&ws_url, None, Some("null"), 403, "origin_not_allowed").await;

    // None of that spent the ticket.
    let mut by_ticket = connected(&url, None, None).await;
    assert_usable(&mut by_ticket).await;

    for origin in [server.url.as_str(), shop] {
        let mut ws = connected(&ws_url, Some(&customer), Some(origin)).await;
        assert_usable(&mut ws).await;
    }
    let another = server.ws_ticket(&customer).await;
    let mut ws = connected(
        &format!("{ws_url}?ticket={another}"),
        None,
        Some(&server.url),
    )
    .await;
    assert_usable(&mut ws).await;
    server.stop().await;
}

#[tokio::test]
async fn a_plain_get_is_told_to_upgrade() {
    let server = TestServer::start().await;
    server
        .get("/v1/ws", &server.admin)
        .await
        .assert_error(StatusCode::UPGRADE_REQUIRED, "websocket_upgrade_required");
    // That comes before the credentials, so no ticket is spent on a request
    // that could never become a socket.
    server
        .call(reqwest::Method::GET, "/v1/ws", None, None)
        .await
        .assert_error(StatusCode::UPGRADE_REQUIRED, "websocket_upgrade_required");
    server.stop().await;
}

#[tokio::test]
async fn a_token_holds_a_limited_number_of_sockets_and_gets_them_back() {
    let server = TestServer::start_with(|config| config.hub.max_connections_per_token = 2).await;
    let agent = server.agent("alice").await;
    let url = server.ws_url();
    let mut first = server.ws(&agent).await;
    let mut second = server.ws(&agent).await;
    assert_usable(&mut first).await;
    assert_usable(&mut second).await;
    refused(&url, Some(&agent), None, 429, "too_many_connections").await;
    // A ticket carries the same token, so it counts against the same limit.
    let ticket = server.ws_ticket(&agent).await;
    refused(
        &format!("{url}?ticket={ticket}"),
        None,
        None,
        429,
        "too_many_connections",
    )
    .await;
    // The limit is per token, not per agent.
    let other = server.agent("alice").await;
    let mut unrelated = server.ws(&other).await;
    assert_usable(&mut unrelated).await;

    // A clean close gives the slot back…
    first.close().await;
    let mut third = connect_when_free(&server, &agent, Duration::from_secs(5)).await;
    assert_usable(&mut third).await;
    refused(&url, Some(&agent), None, 429, "too_many_connections").await;
    // …and so does a connection that just drops.
    drop(second);
    let mut fourth = connect_when_free(&server, &agent, Duration::from_secs(5)).await;
    assert_usable(&mut fourth).await;
    refused(&url, Some(&agent), None, 429, "too_many_connections").await;
    server.stop().await;
}

// 3. Bad frames

#[tokio::test]
async fn bad_frames_get_errors_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let mut ws = server.ws(&server.admin).await;

    let text_cases = [
        ("{not json", "malformed_frame"),
        ("", "malformed_frame"),
        ("[1, 2]", "malformed_frame"),
        ("\"subscribe\"", "malformed_frame"),
        (r#"{"topic": "inbox"}"#, "malformed_frame"),
        (r#"{"type": 7}"#, "malformed_frame"),
        (r#"{"type": "subscribe"}"#, "malformed_frame"),
        (r#"{"type": "ping", "extra": 1}"#, "malformed_frame"),
        (
            r#"{"type": "typing", "thread_id": "nope"}"#,
            "malformed_frame",
        ),
        (r#"{"type": "shout"}"#, "unknown_type"),
        (r#"{"type": "SUBSCRIBE", "topic": "inbox"}"#, "unknown_type"),
    ];
    for (text, code) in text_cases {
        ws.send_raw(Message::text(text)).await;
        let error = expect_error(&mut ws, code).await;
        assert!(error.get("topic").is_none(), "{text}: {error}");
        assert_usable(&mut ws).await;
    }

    ws.send_raw(Message::binary(br#"{"type":"ping"}"#.to_vec()))
        .await;
    expect_error(&mut ws, "binary_not_supported").await;
    assert_usable(&mut ws).await;

    for bad in ["thread:not-a-uuid", "room:1", "", "thread:", "INBOX"] {
        ws.send(json!({"type": "subscribe", "topic": bad})).await;
        let error = expect_error(&mut ws, "invalid_topic").await;
        assert_eq!(error["topic"], bad, "{error}");
        assert_usable(&mut ws).await;
    }

    for never in ["inbox".to_owned(), topic(&thread), "thread:nope".to_owned()] {
        ws.send(json!({"type": "unsubscribe", "topic": never}))
            .await;
        let error = expect_error(&mut ws, "not_subscribed").await;
        assert_eq!(error["topic"], never, "{error}");
        assert_usable(&mut ws).await;
    }

    // After all that, the connection still subscribes and delivers.
    ws.subscribe(&topic(&thread), None).await;
    server.post_text(&thread, "still here").await;
    let message = ws.next().await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["message"]["content"], "still here");
    // A ping without a nonce gets a pong without one.
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next().await, json!({"type": "pong"}));
    server.stop().await;
}

/// A ping frame of exactly `len` bytes.
fn ping_of_len(len: usize) -> String {
    let empty = json!({"type": "ping", "nonce": ""}).to_string();
    let frame = json!({"type": "ping", "nonce": "x".repeat(len - empty.len())}).to_string();
    assert_eq!(frame.len(), len);
    frame
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_with_1009_and_others_are_unaffected() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let mut bystander = server.ws(&server.admin).await;
    bystander.subscribe(&topic(&thread), None).await;
    let mut ws = server.ws(&server.admin).await;

    // Exactly at the limit is fine.
    ws.send_raw(Message::text(ping_of_len(MAX_FRAME))).await;
    let pong = ws.next().await;
    assert_eq!(pong["type"], "pong");
    let overhead = json!({"type": "ping", "nonce": ""}).to_string().len();
    assert_eq!(
        pong["nonce"].as_str().map(str::len),
        Some(MAX_FRAME - overhead)
    );

    ws.send_raw(Message::text(ping_of_len(MAX_FRAME + 1))).await;
    let mut before_close = Vec::new();
    let ended = loop {
        match ws.next_or_end(FRAME_TIMEOUT).await {
            Ok(frame) => before_close.push(frame),
            Err(ended) => break ended,
        }
    };
    assert_eq!(
        ended,
        Ended::Closed(1009),
        "frames before: {before_close:?}"
    );
    assert!(
        before_close.iter().all(|f| f["type"] == "error"),
        "{before_close:?}"
    );

    assert_usable(&mut bystander).await;
    server.post_text(&thread, "after the big one").await;
    assert_eq!(bystander.next_of("message").await["seq"], 1);
    let health = server.get("/healthz", &server.admin).await;
    assert_eq!(health.status, StatusCode::OK);
    let mut fresh = server.ws(&server.admin).await;
    assert_usable(&mut fresh).await;
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_per_connection_are_limited() {
    let server = TestServer::start_with(|config| config.hub.max_subscriptions = 2).await;
    let a = server.thread_for("c1").await;
    let b = server.thread_for("c1").await;
    let c = server.thread_for("c1").await;
    let mut ws = server.ws(&server.admin).await;
    ws.subscribe(&topic(&a), None).await;
    ws.subscribe(&topic(&b), None).await;
    for over in [topic(&c), "inbox".to_owned()] {
        ws.send(json!({"type": "subscribe", "topic": over})).await;
        let error = expect_error(&mut ws, "too_many_subscriptions").await;
        assert_eq!(error["topic"], over);
        assert_usable(&mut ws).await;
    }
    server.post_text(&c, "not subscribed").await;
    assert_quiet(&mut ws, "a refused subscription").await;

    // Subscribing again to a held topic is not one more.
    ws.subscribe(&topic(&a), None).await;
    ws.send(json!({"type": "unsubscribe", "topic": topic(&a)}))
        .await;
    assert_eq!(
        ws.next().await,
        json!({"type": "unsubscribed", "topic": topic(&a)})
    );
    ws.subscribe(&topic(&c), None).await;
    server.post_text(&a, "after unsubscribing").await;
    server.post_text(&c, "now subscribed").await;
    let message = ws.next().await;
    assert_eq!(message["thread_id"], c.as_str(), "{message}");
    assert_eq!(message["seq"], 2);
    assert_quiet(&mut ws, "the unsubscribed thread").await;
    server.stop().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_with_1008() {
    let server = TestServer::start_with(|config| {
        config.hub.frames_per_second = 1;
        config.hub.frames_burst = 2;
    })
    .await;
    let agent = server.agent("alice").await;
    let mut ws = server.ws(&agent).await;
    let started = Instant::now();

    let done = Cell::new(false);
    let (mut sink, mut stream) = ws.stream().split();
    let writer = async {
        let mut sent = 0usize;
        while sent < 5_000 && !done.get() {
            let frame = json!({"type": "ping", "nonce": sent}).to_string();
            if sink.send(Message::text(frame)).await.is_err() {
                break;
            }
            sent += 1;
            if sent.is_multiple_of(64) {
                // Let the server (on this runtime too) read as we write.
                tokio::task::yield_now().await;
            }
        }
        sent
    };
    let reader = async {
        let mut frames = Vec::new();
        let ended = loop {
            let received = tokio::time::timeout(FRAME_TIMEOUT, stream.next())
                .await
                .expect("the flood was neither refused nor closed");
            match received {
                Some(Ok(Message::Text(text))) => {
                    frames.push(serde_json::from_str::<Value>(&text).expect("JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    break Ended::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break Ended::Dropped,
            }
        };
        done.set(true);
        (frames, ended)
    };
    let (sent, (frames, ended)) = tokio::join!(writer, reader);
    let elapsed_secs = started.elapsed().as_secs() as usize;

    assert_eq!(
        ended,
        Ended::Closed(1008),
        "after {sent} frames: {frames:?}"
    );
    let pongs = frames.iter().filter(|f| f["type"] == "pong").count();
    let limited = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .count();
    assert!(
        (1..=2 + elapsed_secs + 1).contains(&pongs),
        "{pongs} frames answered of {sent}"
    );
    assert!(
        (1..=elapsed_secs + 1).contains(&limited),
        "{limited} rate_limited errors (at most one a second)"
    );
    assert!(
        frames
            .iter()
            .all(|f| f["type"] == "pong" || f["code"] == "rate_limited"),
        "{frames:?}"
    );

    let health = server.get("/healthz", &server.admin).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    let mut again = server.ws(&agent).await;
    assert_usable(&mut again).await;
    server.stop().await;
}

// 4. Liveness

#[tokio::test]
async fn a_client_that_reads_stays_connected_across_pings() {
    let server = TestServer::start_with(|config| config.hub.ping_interval_secs = 1).await;
    let thread = server.thread_for("c1").await;
    let mut ws = server.ws(&server.admin).await;
    ws.subscribe(&topic(&thread), None).await;

    // Only reading: tungstenite answers each ping while it reads.
    let deadline = Instant::now() + Duration::from_millis(4_500);
    let mut pings = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, ws.stream().next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("after {pings} pings, expected nothing but pings: {other:?}"),
        }
    }
    assert!(pings >= 3, "the server pinged {pings} times in 4.5 s");

    assert_usable(&mut ws).await;
    server.post_text(&thread, "still subscribed").await;
    assert_eq!(ws.next_of("message").await["seq"], 1);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_its_slot_given_back() {
    let server = TestServer::start_with(|config| {
        config.hub.ping_interval_secs = 1;
        config.hub.max_connections_per_token = 1;
    })
    .await;
    let agent = server.agent("alice").await;
    let mut silent = server.ws(&agent).await;
    let opened = Instant::now();
    refused(
        &server.ws_url(),
        Some(&agent),
        None,
        429,
        "too_many_connections",
    )
    .await;

    // Never polled from here: no pongs, nothing read.
    let mut replacement = connect_when_free(&server, &agent, Duration::from_secs(6)).await;
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "the slot came back after {waited:?}, before two silent ping intervals"
    );
    assert_usable(&mut replacement).await;

    let ended = silent.closed().await;
    assert_eq!(ended, Ended::Closed(4010), "no pong for two intervals");
    server.stop().await;
}

// 5. Typing and presence

#[tokio::test]
async fn typing_reaches_the_others_on_the_thread_at_most_once_a_second_and_is_not_stored() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let elsewhere = server.thread_for("c1").await;
    server.post_text(&thread, "hello").await;
    let before = server.messages(&thread, &server.admin).await;

    let alice_token = server.agent("alice").await;
    let bob_token = server.agent("bob").await;
    let customer_token = server.customer("c1").await;
    let mut alice = server.ws(&alice_token).await;
    alice.subscribe(&topic(&thread), None).await;
    let mut bob = server.ws(&bob_token).await;
    bob.subscribe(&topic(&thread), None).await;
    let mut customer = server.ws(&customer_token).await;
    customer.subscribe(&topic(&thread), None).await;
    presence_until(&mut alice, &["alice", "bob"]).await;
    presence_until(&mut bob, &["alice", "bob"]).await;

    customer.send(typing(&thread)).await;
    let from_customer =
        json!({"type": "typing", "thread_id": thread, "who": {"kind": "customer", "name": "c1"}});
    assert_eq!(alice.next().await, from_customer);
    assert_eq!(bob.next().await, from_customer);
    assert_quiet(&mut customer, "its own typing").await;

    alice.send(typing(&thread)).await;
    let from_alice =
        json!({"type": "typing", "thread_id": thread, "who": {"kind": "human", "name": "alice"}});
    assert_eq!(customer.next().await, from_alice);
    assert_eq!(bob.next().await, from_alice);
    assert_quiet(&mut alice, "her own typing").await;

    // Only on a subscribed thread.
    customer.send(typing(&elsewhere)).await;
    expect_error(&mut customer, "not_subscribed").await;
    assert_usable(&mut customer).await;

    // Ten in a row: one goes out, the rest are dropped (not delayed).
    for _ in 0..10 {
        bob.send(typing(&thread)).await;
    }
    let from_bob =
        json!({"type": "typing", "thread_id": thread, "who": {"kind": "human", "name": "bob"}});
    assert_eq!(alice.next().await, from_bob);
    assert_eq!(customer.next().await, from_bob);
    let burst_seen = Instant::now();
    assert!(
        alice
            .maybe_next(Duration::from_millis(1_200))
            .await
            .is_none(),
        "a second typing frame from the same burst"
    );
    assert_usable(&mut alice).await;
    assert_quiet(&mut customer, "the rest of the burst").await;
    // A second later it goes through again.
    assert!(burst_seen.elapsed() >= Duration::from_secs(1));
    bob.send(typing(&thread)).await;
    assert_eq!(alice.next().await, from_bob);

    let after = server.messages(&thread, &server.admin).await;
    assert_eq!(after, before, "typing is never stored");
    let stored = server
        .get(&format!("/v1/threads/{thread}"), &server.admin)
        .await;
    assert_eq!(stored.body["last_seq"], 1);
    server.stop().await;
}

#[tokio::test]
async fn presence_lists_the_agents_on_a_thread_for_staff_only() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let customer_token = server.customer("c1").await;
    let presence =
        |agents: &[&str]| json!({"type": "presence", "thread_id": thread, "agents": agents});

    let mut admin = server.ws(&server.admin).await;
    admin.subscribe(&topic(&thread), None).await;
    let mut customer = server.ws(&customer_token).await;
    customer.subscribe(&topic(&thread), None).await;

    let mut alice = server.ws(&server.agent("alice").await).await;
    alice.subscribe(&topic(&thread), None).await;
    assert_eq!(admin.next().await, presence(&["alice"]));
    assert_eq!(alice.next().await, presence(&["alice"]));

    let mut bob = server.ws(&server.agent("bob").await).await;
    bob.subscribe(&topic(&thread), None).await;
    assert_eq!(admin.next().await, presence(&["alice", "bob"]));
    assert_eq!(alice.next().await, presence(&["alice", "bob"]));
    assert_eq!(bob.next().await, presence(&["alice", "bob"]));

    bob.send(json!({"type": "unsubscribe", "topic": topic(&thread)}))
        .await;
    assert_eq!(
        bob.next().await,
        json!({"type": "unsubscribed", "topic": topic(&thread)})
    );
    assert_eq!(admin.next().await, presence(&["alice"]));
    assert_eq!(alice.next().await, presence(&["alice"]));
    assert_quiet(&mut bob, "presence after unsubscribing").await;

    // Alice's connection drops without a close.
    drop(alice);
    assert_eq!(admin.next().await, presence(&[]));

    assert_quiet(&mut customer, "presence").await;
    server.stop().await;
}

// 6. Thread and inbox events

#[tokio::test]
async fn a_thread_change_reaches_its_subscribers_and_the_inbox() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let unwatched = server.thread_for("c2").await;
    let customer = server.customer("c1").await;
    let mut watcher = server.ws(&customer).await;
    watcher.subscribe(&topic(&thread), None).await;
    let mut inbox = server.ws(&server.agent("alice").await).await;
    let subscribed = inbox.subscribe("inbox", None).await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "topic": "inbox", "items": 0})
    );

    let patched = server
        .patch(
            &format!("/v1/threads/{thread}"),
            &server.admin,
            json!({"status": "closed"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["status"], "closed");
    let expected = json!({"type": "thread", "thread": patched.body});
    assert_eq!(watcher.next().await, expected);
    assert_eq!(inbox.next().await, expected);
    // The customer learns nothing its REST view does not show.
    let own_view = server
        .get(&format!("/v1/threads/{thread}"), &customer)
        .await;
    assert_eq!(expected["thread"], own_view.body);

    let patched = server
        .patch(
            &format!("/v1/threads/{unwatched}"),
            &server.admin,
            json!({"status": "closed"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(
        inbox.next().await,
        json!({"type": "thread", "thread": patched.body})
    );
    assert_quiet(&mut watcher, "another customer's thread").await;
    assert_quiet(&mut inbox, "after the two changes").await;
    server.stop().await;
}

#[tokio::test]
async fn the_inbox_starts_with_the_pending_items_then_goes_live() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let open = |body: &str| server.store.open_inbox_item(new_item(&thread, body));
    let first = open("first").await.expect("open");
    let second = open("second").await.expect("open");
    let done = open("done").await.expect("open");
    server
        .store
        .set_inbox_item_status(done.id, InboxStatus::Resolved, None)
        .await
        .expect("resolve");

    let mut agent = server.ws(&server.agent("alice").await).await;
    let subscribed = agent.subscribe("inbox", None).await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "topic": "inbox", "items": 2})
    );
    assert_eq!(without_context(agent.next().await), inbox_frame(&first));
    assert_eq!(without_context(agent.next().await), inbox_frame(&second));

    let claimed = server
        .store
        .set_inbox_item_status(first.id, InboxStatus::Claimed, Some("alice".into()))
        .await
        .expect("claim");
    let frame = agent.next().await;
    assert_eq!(without_context(frame.clone()), inbox_frame(&claimed));
    assert_eq!(frame["item"]["status"], "claimed");
    assert_eq!(frame["item"]["claimed_by"], "alice");

    let third = open("third").await.expect("open");
    assert_eq!(without_context(agent.next().await), inbox_frame(&third));
    assert_quiet(&mut agent, "after the last change").await;

    // A later subscriber gets the state as it is now; claimed is pending.
    let mut admin = server.ws(&server.admin).await;
    let subscribed = admin.subscribe("inbox", None).await;
    assert_eq!(subscribed["items"], 3);
    for item in [&claimed, &second, &third] {
        assert_eq!(without_context(admin.next().await), inbox_frame(item));
    }

    agent
        .send(json!({"type": "unsubscribe", "topic": "inbox"}))
        .await;
    assert_eq!(
        agent.next().await,
        json!({"type": "unsubscribed", "topic": "inbox"})
    );
    let resolved = server
        .store
        .set_inbox_item_status(second.id, InboxStatus::Resolved, None)
        .await
        .expect("resolve");
    assert_eq!(without_context(admin.next().await), inbox_frame(&resolved));
    assert_quiet(&mut agent, "the inbox after unsubscribing").await;
    server.stop().await;
}

// 7. Logs

/// Everything the server logs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

#[tokio::test]
async fn logs_never_hold_a_token_a_ticket_or_a_message_body() {
    // The test runtime has one thread, and the server runs on it: a
    // thread-local subscriber sees everything the server logs, and nothing
    // of the tests running on other threads.
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    // tracing-core asks only the calling thread's subscriber about a new
    // callsite while a single dispatcher exists, so a callsite first hit by
    // another test would be disabled for good; a second one avoids that.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let customer = server.customer("c1").await;
    let agent = server.agent("alice").await;
    let body = format!("body-canary-{}", uuid::Uuid::new_v4().simple());
    let note = format!("note-canary-{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("tdm_wrong{}", uuid::Uuid::new_v4().simple());

    let ticket = server.ws_ticket(&customer).await;
    let by_ticket = format!("{}?ticket={ticket}", server.ws_url());
    let mut ws = connected(&by_ticket, None, None).await;
    ws.subscribe(&topic(&thread), None).await;
    refused(&by_ticket, None, None, 401, "unauthorized").await;
    let spare = server.ws_ticket(&agent).await;
    let by_spare = format!("{}?ticket={spare}", server.ws_url());
    refused(&by_spare, None, Some("null"), 403, "origin_not_allowed").await;
    refused(&server.ws_url(), Some(&wrong), None, 401, "unauthorized").await;
    let mut staff = connected(&by_spare, None, None).await;
    staff.subscribe(&topic(&thread), None).await;

    post_as(&server, &thread, &customer, json!({"content": body})).await;
    assert_eq!(ws.next_of("message").await["message"]["content"], body);
    post_as(
        &server,
        &thread,
        &agent,
        json!({"content": note, "visibility": "internal"}),
    )
    .await;
    let seen = messages_until(&mut staff, &thread, 2).await;
    assert_eq!(seen[1]["message"]["content"], note);
    // Secrets and bodies in bad frames, echoed to no log either.
    ws.send_raw(Message::text(format!("{{\"{body}\": \"{customer}\"")))
        .await;
    expect_error(&mut ws, "malformed_frame").await;
    ws.send(json!({"type": "subscribe", "topic": ticket})).await;
    expect_error(&mut ws, "invalid_topic").await;
    ws.send(json!({"type": body, "token": customer})).await;
    expect_error(&mut ws, "unknown_type").await;
    ws.send_raw(Message::text(format!("{body}{}", "x".repeat(MAX_FRAME))))
        .await;
    assert_eq!(ws.closed().await, Ended::Closed(1009));
    staff.close().await;
    let admin = server.admin.clone();
    server.stop().await;
    drop(guard);

    let logs = logs.text();
    // The capture works: it holds the server's own lines.
    assert!(logs.contains("ws: connected"), "{logs}");
    assert!(logs.contains("path=/v1/ws"), "{logs}");
    for (what, secret) in [
        ("the customer's token", customer.as_str()),
        ("the agent's token", agent.as_str()),
        ("the admin token", admin.as_str()),
        ("a ticket", ticket.as_str()),
        ("a ticket refused for its origin", spare.as_str()),
        ("a wrong token", wrong.as_str()),
        ("a message body", body.as_str()),
        ("an internal note", note.as_str()),
    ] {
        assert!(!logs.contains(secret), "the logs hold {what}:\n{logs}");
    }
}
