//! A POST retried with the same `Idempotency-Key` returns the first answer and
//! stores nothing twice, also when the retries race.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_tests::TestServer;

async fn post_with_key(
    server: &TestServer,
    path: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> tandem_tests::Response {
    let response = server
        .client
        .post(format!("{}{path}", server.url))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .expect("post");
    tandem_tests::Response::read(response).await
}

#[tokio::test]
async fn a_retried_message_post_returns_the_first_answer() {
    let server = TestServer::start().await;
    let thread = server.thread_for("alice").await;
    let alice = server.customer("alice").await;
    let path = format!("/v1/threads/{thread}/messages");
    let body = json!({"content": "Is anyone there?"});

    let first = post_with_key(&server, &path, &alice, "retry-1", &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = post_with_key(&server, &path, &alice, "retry-1", &body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(
        again.body, first.body,
        "the very same message, same id and seq"
    );
    assert_eq!(again.headers["idempotent-replayed"], "true");

    let other_key = post_with_key(&server, &path, &alice, "retry-2", &body).await;
    assert_eq!(other_key.body["seq"], 2, "a new key is a new message");

    // The same key with a different request is refused and stores nothing.
    post_with_key(
        &server,
        &path,
        &alice,
        "retry-1",
        &json!({"content": "different"}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    // Keys belong to their token: another caller's same key is its own.
    let bob_thread = server.thread_for("bob").await;
    let bob = server.customer("bob").await;
    let bobs = post_with_key(
        &server,
        &format!("/v1/threads/{bob_thread}/messages"),
        &bob,
        "retry-1",
        &body,
    )
    .await;
    assert_eq!(bobs.status, StatusCode::CREATED);
    assert_ne!(bobs.body["id"], first.body["id"]);

    assert_eq!(server.messages(&thread, &server.admin).await.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_store_one_message() {
    let server = TestServer::start().await;
    let thread = server.thread_for("carol").await;
    let carol = server.customer("carol").await;
    let path = format!("/v1/threads/{thread}/messages");

    for round in 0..10 {
        let key = format!("race-{round}");
        let body = json!({"content": format!("round {round}")});
        let racers = (0..16).map(|_| post_with_key(&server, &path, &carol, &key, &body));
        let answers = futures::future::join_all(racers).await;
        let first = &answers[0];
        for answer in &answers {
            assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
            assert_eq!(answer.body, first.body);
        }
        let replayed = answers
            .iter()
            .filter(|a| a.headers.get("idempotent-replayed").is_some())
            .count();
        assert_eq!(replayed, 15, "exactly one request made the message");
    }
    let stored = server.messages(&thread, &server.admin).await;
    assert_eq!(stored.len(), 10);
    let seqs: Vec<_> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_thread_post_creates_one_thread() {
    let server = TestServer::start().await;
    let dave = server.customer("dave").await;
    let body = json!({"title": "Billing"});
    let racers = (0..8).map(|_| post_with_key(&server, "/v1/threads", &dave, "new-thread", &body));
    let answers = futures::future::join_all(racers).await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        assert_eq!(answer.body["id"], answers[0].body["id"]);
    }
    let listed = server.get("/v1/threads", &dave).await;
    assert_eq!(listed.body["threads"].as_array().unwrap().len(), 1);

    post_with_key(&server, "/v1/threads", &dave, "", &body)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    post_with_key(&server, "/v1/threads", &dave, &"k".repeat(256), &body)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    server.stop().await;
}
