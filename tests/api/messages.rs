//! Messages: who posts what, how it is stored, seq order under concurrency.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_tests::TestServer;

#[tokio::test]
async fn a_customer_message_is_stored_and_nothing_replies() {
    let server = TestServer::start().await;
    let alice = server.customer("alice").await;
    let thread = server.post("/v1/threads", &alice, json!({})).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let posted = server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &alice,
            json!({"content": "My parcel never arrived", "metadata": {"page": "/orders/42"}}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
    let message = &posted.body;
    assert_eq!(message["seq"], 1);
    assert_eq!(message["role"], "user");
    assert_eq!(message["agent_name"], Value::Null);
    assert_eq!(
        message["author"],
        json!({"kind": "customer", "id": "alice"})
    );
    assert_eq!(message["content"], "My parcel never arrived");
    assert_eq!(message["visibility"], "public");
    assert_eq!(message["status"], "published");
    assert_eq!(message["metadata"]["page"], "/orders/42");
    assert_eq!(message["thread_id"], thread.as_str());

    // No reply is generated: the thread holds exactly the customer's message.
    let stored = server.messages(&thread, &server.admin).await;
    assert_eq!(stored, vec![message.clone()]);
    let thread_now = server.get(&format!("/v1/threads/{thread}"), &alice).await;
    assert_eq!(thread_now.body["last_seq"], 1);
    server.stop().await;
}

#[tokio::test]
async fn a_human_agent_replies_under_its_own_name() {
    let server = TestServer::start().await;
    let thread = server.thread_for("bob").await;
    let sam = server.agent("Sam").await;

    let reply = server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &sam,
            json!({"content": "Hi Bob, I am looking into it."}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.body["role"], "assistant");
    assert_eq!(reply.body["agent_name"], "Sam");
    assert_eq!(reply.body["author"], json!({"kind": "human", "id": "Sam"}));
    assert_eq!(reply.body["metadata"]["provider"], "human");
    assert_eq!(
        reply.body["metadata"]["providerMetadata"]["human"]["name"],
        "Sam"
    );
    assert_eq!(reply.body["visibility"], "public");

    // The customer sees it, with who answered.
    let bob = server.customer("bob").await;
    let seen = server.messages(&thread, &bob).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["agent_name"], "Sam");
    assert_eq!(seen[0]["metadata"]["provider"], "human");
    server.stop().await;
}

#[tokio::test]
async fn a_tool_result_answers_a_tool_call_once() {
    let server = TestServer::start().await;
    let thread = server.thread_for("carol").await;
    let path = format!("/v1/threads/{thread}/messages");
    let sam = server.agent("Sam").await;

    let call = server
        .post(
            &path,
            &server.admin,
            json!({
                "role": "assistant",
                "agent_name": "Tandem AI",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_call", "id": "call_1", "name": "lookup_order", "arguments": {"order": 42}}
                ],
                "metadata": {"provider": "gpt-4o-mini"}
            }),
        )
        .await;
    assert_eq!(call.status, StatusCode::CREATED, "{}", call.text);
    assert_eq!(
        call.body["author"],
        json!({"kind": "ai", "id": "Tandem AI"})
    );
    assert_eq!(
        call.body["visibility"], "internal",
        "tool plumbing is internal"
    );

    let result_body = |call_id: &str| {
        json!({
            "role": "tool",
            "content": [{"type": "tool_result", "tool_call_id": call_id, "name": "lookup_order",
                         "result": {"status": "shipped"}}]
        })
    };
    let result = server.post(&path, &sam, result_body("call_1")).await;
    assert_eq!(result.status, StatusCode::CREATED, "{}", result.text);
    assert_eq!(result.body["role"], "tool");
    assert_eq!(result.body["visibility"], "internal");
    assert_eq!(result.body["metadata"]["provider"], "human");
    assert_eq!(result.body["content"][0]["tool_call_id"], "call_1");
    assert_eq!(result.body["content"][0]["result"]["status"], "shipped");

    server
        .post(&path, &server.admin, result_body("call_1"))
        .await
        .assert_error(StatusCode::CONFLICT, "tool_call_answered");
    server
        .post(&path, &sam, result_body("call_404"))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "unknown_tool_call");
    // Neither failure consumed a seq.
    let stored = server.messages(&thread, &server.admin).await;
    let seqs: Vec<_> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2]);

    // Customers see none of it.
    let carol = server.customer("carol").await;
    assert!(server.messages(&thread, &carol).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn an_internal_note_never_reaches_the_customer() {
    let server = TestServer::start().await;
    let thread = server.thread_for("dave").await;
    let path = format!("/v1/threads/{thread}/messages");
    let sam = server.agent("Sam").await;
    let dave = server.customer("dave").await;

    server
        .post(&path, &dave, json!({"content": "Hello?"}))
        .await;
    let note = server
        .post(
            &path,
            &sam,
            json!({"content": "VIP customer, offer a refund", "visibility": "internal"}),
        )
        .await;
    assert_eq!(note.status, StatusCode::CREATED, "{}", note.text);
    assert_eq!(note.body["visibility"], "internal");
    server
        .post(&path, &sam, json!({"content": "Refund issued!"}))
        .await;

    let staff_view = server.messages(&thread, &sam).await;
    assert_eq!(staff_view.len(), 3);
    let customer_view = server.messages(&thread, &dave).await;
    let texts: Vec<_> = customer_view.iter().map(|m| m["content"].clone()).collect();
    assert_eq!(texts, vec![json!("Hello?"), json!("Refund issued!")]);
    // Not on any page either.
    for after in 0..4 {
        let page = server
            .get(&format!("{path}?after_seq={after}&limit=1"), &dave)
            .await;
        assert!(!page.text.contains("VIP"), "{}", page.text);
    }
    // A customer cannot reply to it either.
    let note_id = note.body["id"].as_str().unwrap();
    server
        .post(&path, &dave, json!({"content": "?", "reply_to": note_id}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_reply_to");
    server.stop().await;
}

#[tokio::test]
async fn reply_to_must_be_a_message_of_the_thread() {
    let server = TestServer::start().await;
    let thread = server.thread_for("erin").await;
    let other = server.thread_for("erin").await;
    let erin = server.customer("erin").await;
    let question = server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &erin,
            json!({"content": "Q"}),
        )
        .await;
    let question_id = question.body["id"].as_str().unwrap();
    let answer = server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &server.admin,
            json!({"role": "assistant", "content": "A", "reply_to": question_id}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
    assert_eq!(answer.body["reply_to"], question_id);
    server
        .post(
            &format!("/v1/threads/{other}/messages"),
            &server.admin,
            json!({"role": "assistant", "content": "A", "reply_to": question_id}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_reply_to");
    server.stop().await;
}

#[tokio::test]
async fn pages_in_seq_order() {
    let server = TestServer::start().await;
    let thread = server.thread_for("fay").await;
    let path = format!("/v1/threads/{thread}/messages");
    for i in 1..=25 {
        let posted = server
            .post(&path, &server.admin, json!({"content": format!("m{i}")}))
            .await;
        assert_eq!(posted.body["seq"], i);
    }
    let page = server
        .get(&format!("{path}?after_seq=10&limit=5"), &server.admin)
        .await;
    let seqs: Vec<_> = page.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![11, 12, 13, 14, 15]);
    assert_eq!(page.body["has_more"], true);
    assert_eq!(page.body["next_after_seq"], 15);
    let last = server
        .get(&format!("{path}?after_seq=20"), &server.admin)
        .await;
    assert_eq!(last.body["messages"].as_array().unwrap().len(), 5);
    assert_eq!(last.body["has_more"], false);
    let all = server.messages(&thread, &server.admin).await;
    let contents: Vec<_> = all
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<_> = (1..=25).map(|i| format!("m{i}")).collect();
    assert_eq!(contents, expected);
    server.stop().await;
}

/// 8 writers × 500 messages into one thread: the seqs are exactly 1..=4000,
/// and each writer's own messages got increasing seqs in the order it sent them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_get_gapless_strictly_increasing_seqs() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 500;
    let server = TestServer::start().await;
    let thread = server.thread_for("gus").await;
    let path = format!("{}/v1/threads/{thread}/messages", server.url);

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = reqwest::Client::new();
        let path = path.clone();
        let token = server.admin.clone();
        writers.push(tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(PER_WRITER);
            for i in 0..PER_WRITER {
                let response = client
                    .post(&path)
                    .bearer_auth(&token)
                    .json(&json!({"content": format!("w{writer} #{i}")}))
                    .send()
                    .await
                    .expect("post");
                assert_eq!(response.status(), StatusCode::CREATED);
                let body: Value = response.json().await.expect("json");
                seqs.push(body["seq"].as_i64().unwrap());
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for writer in writers {
        let seqs = writer.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a writer's seqs go up"
        );
        all.extend(seqs);
    }
    let expected: BTreeSet<i64> = (1..=(WRITERS * PER_WRITER) as i64).collect();
    assert_eq!(all, expected);

    let stored = server.messages(&thread, &server.admin).await;
    let stored_seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(stored_seqs, expected.into_iter().collect::<Vec<_>>());
    let thread_now = server
        .get(&format!("/v1/threads/{thread}"), &server.admin)
        .await;
    assert_eq!(thread_now.body["last_seq"], (WRITERS * PER_WRITER) as i64);
    server.stop().await;
}

#[tokio::test]
async fn a_customer_message_reopens_a_closed_thread() {
    let server = TestServer::start().await;
    let thread = server.thread_for("hal").await;
    let hal = server.customer("hal").await;
    server
        .patch(
            &format!("/v1/threads/{thread}"),
            &server.admin,
            json!({"status": "closed"}),
        )
        .await;
    server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &hal,
            json!({"content": "One more thing"}),
        )
        .await;
    let now = server.get(&format!("/v1/threads/{thread}"), &hal).await;
    assert_eq!(now.body["status"], "open");
    server.stop().await;
}

/// Writes committed together (SQLite's group commit) fail alone: refused
/// messages racing valid ones take no seq and undo nothing of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_rolls_back_alone() {
    let server = TestServer::start().await;
    let thread = server.thread_for("ivy").await;
    let path = format!("/v1/threads/{thread}/messages");
    let sam = server.agent("Sam").await;
    let posts = (0..150).map(|i| {
        let body = if i % 3 == 0 {
            json!({"role": "tool", "content": [{"type": "tool_result", "tool_call_id": format!("nope-{i}"),
                                                "name": "lookup", "result": null}]})
        } else {
            json!({"content": format!("ok {i}")})
        };
        let server = &server;
        let path = &path;
        let sam = &sam;
        async move { (i, server.post(path, sam, body).await) }
    });
    let answers = futures::future::join_all(posts).await;
    for (i, answer) in &answers {
        if i % 3 == 0 {
            answer.assert_error(StatusCode::BAD_REQUEST, "unknown_tool_call");
        } else {
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        }
    }
    let stored = server.messages(&thread, &server.admin).await;
    assert_eq!(stored.len(), 100);
    let seqs: Vec<_> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    let mut texts: Vec<_> = stored
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    let mut expected: Vec<_> = (0..150)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("ok {i}"))
        .collect();
    expected.sort();
    assert_eq!(texts, expected);
    server.stop().await;
}
