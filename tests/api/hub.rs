//! The WebSocket hub: subscribe, replay, live delivery.

use serde_json::json;
use tandem_tests::TestServer;

#[tokio::test]
async fn subscribe_replays_after_seq_then_goes_live() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    for i in 1..=3 {
        server.post_text(&thread, &format!("before {i}")).await;
    }
    let mut ws = server.ws(&server.admin).await;
    let subscribed = ws.subscribe(&format!("thread:{thread}"), Some(1)).await;
    assert_eq!(subscribed["last_seq"], 3);
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(ws.seqs_until(&thread, 3).await, [2, 3]);
    server.post_text(&thread, "live").await;
    let live = ws.next_of("message").await;
    assert_eq!(live["seq"], 4);
    assert_eq!(live["message"]["content"], json!("live"));
    server.stop().await;
}

#[tokio::test]
async fn a_customer_message_that_reopens_a_thread_announces_it() {
    let server = TestServer::start().await;
    let thread = server.thread_for("c1").await;
    let closed = server
        .patch(
            &format!("/v1/threads/{thread}"),
            &server.admin,
            json!({"status": "closed"}),
        )
        .await;
    assert_eq!(closed.body["status"], "closed", "{}", closed.text);
    let agent = server.agent("alice").await;
    let mut inbox = server.ws(&agent).await;
    inbox.subscribe("inbox", None).await;
    let mut watcher = server.ws(&agent).await;
    watcher.subscribe(&format!("thread:{thread}"), None).await;

    let customer = server.customer("c1").await;
    let posted = server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &customer,
            json!({"content": "hello again"}),
        )
        .await;
    assert_eq!(posted.body["seq"], 1, "{}", posted.text);
    let reopened = inbox.next_of("thread").await;
    assert_eq!(reopened["thread"]["id"], thread.as_str());
    assert_eq!(reopened["thread"]["status"], "open");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = watcher.next().await;
        if frame["type"] != "presence" {
            seen.push(frame["type"].as_str().unwrap_or_default().to_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, ["message", "thread"]);

    // A message into an open thread changes no status: no `thread` frame.
    server.post_text(&thread, "and again").await;
    assert_eq!(watcher.next_of("message").await["seq"], 2);
    assert!(
        inbox
            .maybe_next(std::time::Duration::from_millis(300))
            .await
            .is_none(),
        "the inbox heard of a change that did not happen"
    );
    server.stop().await;
}
