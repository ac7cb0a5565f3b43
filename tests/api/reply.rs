//! The reply path end to end: a customer message, the router, the model
//! (a scripted OpenAI-compatible server on loopback), the hub.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;

/// Waits until the thread holds a message matching `pred`, as `token` sees it.
async fn wait_for_message(
    server: &TestServer,
    thread: &str,
    token: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let messages = server.messages(thread, token).await;
        if let Some(m) = messages.iter().find(|m| pred(m)) {
            return m.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such message in {messages:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_ai_answers_streaming_to_the_customer_and_the_reply_is_stored_once() {
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::text("Your order ships tomorrow.")
            .chunked(4)
            .usage(30, 6),
    );
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let thread = server.thread_for("c1").await;
    let customer = server.customer("c1").await;
    let mut socket = server.ws(&customer).await;
    socket.subscribe(&format!("thread:{thread}"), None).await;

    let posted = server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &customer,
            json!({"content": "When does my order ship?"}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);

    let mut streamed = String::new();
    let reply = loop {
        let frame = socket.next().await;
        match frame["type"].as_str() {
            Some("delta") => streamed.push_str(frame["text"].as_str().expect("text")),
            Some("message") if frame["message"]["role"] == "assistant" => break frame,
            _ => {}
        }
    };
    assert_eq!(streamed, "Your order ships tomorrow.");
    let message = &reply["message"];
    assert_eq!(message["content"], "Your order ships tomorrow.");
    assert_eq!(message["agent_name"], "Tandem AI");
    assert_eq!(message["author"]["kind"], "ai");
    assert_eq!(message["metadata"]["provider"], "reply-model");
    assert_eq!(message["metadata"]["usage"]["prompt_tokens"], 30);
    assert_eq!(message["metadata"]["routing"]["strategy"], "ai");
    assert_eq!(message["reply_to"], posted.body["id"]);

    let request = &llm.chat_requests()[0];
    let messages = request.messages();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages.last().expect("turn")["role"], "user");
    assert_eq!(
        messages.last().expect("turn")["content"],
        "When does my order ship?"
    );
    assert_eq!(request.tools(), vec!["ask_human", "escalate"]);
    assert!(request.stream());

    let all = server.messages(&thread, &customer).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    let usage = server
        .get(&format!("/v1/threads/{thread}/usage"), &server.admin)
        .await;
    assert_eq!(usage.body["total_tokens"], 36, "{}", usage.text);
    wait_for_message(&server, &thread, &customer, |m| m["role"] == "assistant").await;
}
