//! What staff record about a reply (how it was routed, what it cost, who
//! approved it) never reaches the customer: not over REST, not in a
//! WebSocket replay, not live, and not after an approval.

use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;
use tandem_tests::reply::{
    Chat, assert_customer_safe, resolve, set_policy, staff_view, wait_for_item, wait_for_message,
};

/// The assistant messages of a list of `message` frames.
fn assistant_messages(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["message"]["role"] == "assistant")
        .map(|f| f["message"].clone())
        .collect()
}

#[tokio::test]
async fn routing_usage_and_approval_records_stay_with_staff_on_every_path() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("We open at nine.").usage(12, 4));
    llm.push(Reply::text("Your refund is on its way."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;

    // Live: the reply as pushed to the customer's socket.
    chat.say(&server, "When do you open?").await;
    let live = assistant_messages(&chat.frames_until_reply().await);
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["content"], "We open at nine.");
    assert_customer_safe(&live[0]);
    // Staff get the record, so there was something to keep back.
    let staff = staff_view(&server, &chat.thread, &live[0]).await;
    assert_eq!(staff["metadata"]["routing"]["strategy"], "ai");
    assert_eq!(staff["metadata"]["usage"]["prompt_tokens"], 12);
    assert!(staff["metadata"]["run_id"].is_string());

    // After an approval: the published copy carries who approved it.
    set_policy(&server, json!({"approval": {"mode": "always"}})).await;
    chat.say(&server, "Can I have a refund?").await;
    let item = wait_for_item(&server, &chat.thread).await;
    let agent = server.agent("alice").await;
    let approved = resolve(&server, &agent, &item, "approve", json!({})).await;
    assert_eq!(
        approved.body["message"]["metadata"]["approval"]["approved_by"],
        "alice"
    );
    let live = assistant_messages(&chat.frames_until_reply().await);
    assert_eq!(live[0]["content"], "Your refund is on its way.");
    assert_customer_safe(&live[0]);

    // REST: the customer's list.
    let listed = wait_for_message(&server, &chat.thread, &chat.token, |m| {
        m["content"] == "Your refund is on its way."
    })
    .await;
    assert_customer_safe(&listed);
    let history = chat.history(&server).await;
    assert_eq!(history.len(), 4, "{history:#?}");
    history.iter().for_each(assert_customer_safe);

    // Replay: a new socket subscribing from the start.
    let mut replay = server.ws(&chat.token).await;
    replay
        .subscribe(&format!("thread:{}", chat.thread), Some(0))
        .await;
    let mut replayed = Vec::new();
    while replayed.len() < 4 {
        let frame = replay.next().await;
        if frame["type"] == "message" {
            replayed.push(frame["message"].clone());
        }
    }
    replayed.iter().for_each(assert_customer_safe);
}
