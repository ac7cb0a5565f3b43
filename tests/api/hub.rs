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
