//! Bad input gets `{"error": {"code", "message"}}` with a fitting 4xx, and
//! nothing is stored; random and mutated bodies never produce a 5xx.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_tests::{Response, TestServer};

async fn post_raw(
    server: &TestServer,
    path: &str,
    token: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Response {
    let mut request = server
        .client
        .post(format!("{}{path}", server.url))
        .bearer_auth(token)
        .body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    Response::read(request.send().await.expect("post")).await
}

#[tokio::test]
async fn malformed_bodies_get_clear_400s_and_store_nothing() {
    let server = TestServer::start().await;
    let thread = server.thread_for("alice").await;
    let path = format!("/v1/threads/{thread}/messages");
    let json_type = Some("application/json");
    let admin = server.admin.clone();

    let cases: Vec<(&[u8], &str)> = vec![
        (b"{\"content\": ", "malformed_json"),
        (b"{\"content\": \"x\"} trailing", "malformed_json"),
        (b"", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"null", "invalid_body"),
        (b"[1, 2]", "invalid_body"),
        (b"{\"content\": 5}", "invalid_body"),
        (b"{\"content\": \"x\", \"visibility\": 3}", "invalid_body"),
        (
            b"{\"content\": \"x\", \"role\": \"wizard\"}",
            "invalid_body",
        ),
        (b"{\"content\": \"x\", \"colour\": \"red\"}", "invalid_body"),
        (
            b"{\"content\": [{\"type\": \"image\", \"url\": \"x\"}]}",
            "invalid_body",
        ),
        (b"{\"content\": \"x\", \"metadata\": [1]}", "invalid_body"),
        (
            b"{\"content\": \"x\", \"reply_to\": \"nope\"}",
            "invalid_body",
        ),
        (b"{}", "invalid_body"),
    ];
    for (body, code) in cases {
        let response = post_raw(&server, &path, &admin, json_type, body.to_vec()).await;
        assert_eq!(
            response.body["error"]["code"],
            code,
            "{:?}: {}",
            String::from_utf8_lossy(body),
            response.text
        );
        response.assert_error(StatusCode::BAD_REQUEST, code);
    }
    let unknown = post_raw(
        &server,
        &path,
        &admin,
        json_type,
        br#"{"content":"x","colour":"red"}"#.to_vec(),
    )
    .await;
    assert!(
        unknown.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{}",
        unknown.text
    );
    let wrong_type = post_raw(
        &server,
        &path,
        &admin,
        json_type,
        br#"{"content":"x","visibility":3}"#.to_vec(),
    )
    .await;
    assert!(
        wrong_type.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("visibility"),
        "{}",
        wrong_type.text
    );

    post_raw(
        &server,
        &path,
        &admin,
        Some("text/plain"),
        b"{\"content\": \"x\"}".to_vec(),
    )
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    post_raw(
        &server,
        &path,
        &admin,
        None,
        b"{\"content\": \"x\"}".to_vec(),
    )
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    assert!(server.messages(&thread, &server.admin).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn invalid_ids_are_400_and_unknown_ids_404() {
    let server = TestServer::start().await;
    for path in [
        "/v1/threads/not-a-uuid",
        "/v1/threads/123/messages",
        "/v1/threads/%00",
    ] {
        server
            .get(path, &server.admin)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_id");
    }
    server
        .post(
            "/v1/threads/not-a-uuid/messages",
            &server.admin,
            json!({"content": "x"}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_id");
    let unknown = "01930000-0000-7000-8000-000000000000";
    server
        .post(
            &format!("/v1/threads/{unknown}/messages"),
            &server.admin,
            json!({"content": "x"}),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    server
        .get("/v1/threads?cursor=zzz", &server.admin)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    server
        .get("/v1/nothing-here", &server.admin)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    server
        .call(
            reqwest::Method::DELETE,
            "/v1/threads",
            Some(&server.admin),
            None,
        )
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    server.stop().await;
}

#[tokio::test]
async fn empty_and_oversized_content_is_refused() {
    let server = TestServer::start().await;
    let thread = server.thread_for("bob").await;
    let path = format!("/v1/threads/{thread}/messages");
    let bob = server.customer("bob").await;
    for content in [
        json!(""),
        json!("   \n"),
        json!([]),
        json!([{"type": "text", "text": " "}]),
    ] {
        server
            .post(&path, &bob, json!({"content": content}))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "empty_content");
    }
    // Over the 32,000-character message limit, inside the 64 KiB body limit.
    server
        .post(&path, &bob, json!({"content": "é".repeat(32_001)}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "content_too_long");
    let at_limit = server
        .post(&path, &bob, json!({"content": "a".repeat(32_000)}))
        .await;
    assert_eq!(at_limit.status, StatusCode::CREATED, "{}", at_limit.text);
    // Over the body limit: 413, whether the length is declared or streamed.
    let big = serde_json::to_vec(&json!({"content": "a".repeat(70 * 1024)})).unwrap();
    post_raw(&server, &path, &bob, Some("application/json"), big.clone())
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = server
        .client
        .post(format!("{}{path}", server.url))
        .bearer_auth(&bob)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    Response::read(streamed)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    server
        .post(
            &path,
            &server.admin,
            json!({"content": "x", "metadata": {"blob": "m".repeat(17 * 1024)}}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "metadata_too_large");
    assert_eq!(server.messages(&thread, &server.admin).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_body_limit_is_configurable() {
    let server = TestServer::start_with(|config| config.limits.max_body_bytes = 1024).await;
    let thread = server.thread_for("carol").await;
    let path = format!("/v1/threads/{thread}/messages");
    server
        .post(&path, &server.admin, json!({"content": "a".repeat(2000)}))
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    let small = server
        .post(&path, &server.admin, json!({"content": "a".repeat(900)}))
        .await;
    assert_eq!(small.status, StatusCode::CREATED);
    server.stop().await;
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("tool"),
            Just("system"),
            Just("text"),
            Just("tool_call"),
            Just("tool_result"),
            Just("public"),
            Just("internal"),
            Just("published"),
            Just("human"),
            Just("01930000-0000-7000-8000-000000000000"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("role"),
            Just("content"),
            Just("agent_name"),
            Just("author"),
            Just("visibility"),
            Just("status"),
            Just("metadata"),
            Just("reply_to"),
            Just("type"),
            Just("text"),
            Just("id"),
            Just("name"),
            Just("arguments"),
            Just("tool_call_id"),
            Just("result"),
            Just("kind"),
            Just("provider"),
            Just("is_error"),
        ]
        .prop_map(str::to_owned),
        "[a-z_]{1,12}",
    ]
}

/// A valid body with random bytes flipped, inserted or cut.
fn mutated_body() -> impl Strategy<Value = Vec<u8>> {
    let seed = serde_json::to_vec(&json!({
        "role": "assistant",
        "content": [{"type": "text", "text": "hello"},
                    {"type": "tool_call", "id": "c1", "name": "lookup", "arguments": {"a": [1, 2]}}],
        "agent_name": "Sam",
        "metadata": {"provider": "human", "k": 1.5},
        "visibility": "public"
    }))
    .unwrap();
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8).prop_map(
        move |edits| {
            let mut body = seed.clone();
            for (at, byte, op) in edits {
                if body.is_empty() {
                    body.push(byte);
                    continue;
                }
                let i = at.index(body.len());
                match op {
                    0 => body[i] = byte,
                    1 => body.insert(i, byte),
                    _ => {
                        body.remove(i);
                    }
                }
            }
            body
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mutated_bodies_never_cause_a_5xx() {
    let server = TestServer::start().await;
    let thread = server.thread_for("fuzz").await;
    let path = format!("/v1/threads/{thread}/messages");
    let tokens = [
        server.admin.clone(),
        server.agent("Sam").await,
        server.customer("fuzz").await,
    ];
    let bodies = prop_oneof![
        any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        prop::collection::btree_map(field_name(), any_json(), 0..8)
            .prop_map(|m| serde_json::to_vec(&Value::Object(m.into_iter().collect())).unwrap()),
        mutated_body(),
        prop::collection::vec(any::<u8>(), 0..512),
    ];
    let mut runner = TestRunner::default();
    let mut statuses = std::collections::BTreeMap::new();
    for case in 0..1200 {
        let body = bodies.new_tree(&mut runner).expect("generate").current();
        let token = &tokens[case % tokens.len()];
        let target = if case % 10 == 9 {
            "/v1/threads"
        } else {
            path.as_str()
        };
        let response = post_raw(
            &server,
            target,
            token,
            Some("application/json"),
            body.clone(),
        )
        .await;
        assert!(
            response.status.as_u16() < 500,
            "{} for body {:?}: {}",
            response.status,
            String::from_utf8_lossy(&body),
            response.text
        );
        if response.status.is_client_error() {
            assert!(
                response.body["error"]["code"].is_string(),
                "error format for {:?}: {}",
                String::from_utf8_lossy(&body),
                response.text
            );
        }
        *statuses.entry(response.status.as_u16()).or_insert(0) += 1;
    }
    assert!(
        statuses.contains_key(&400),
        "the fuzzer reaches validation: {statuses:?}"
    );
    // The server is still healthy and consistent afterwards.
    let stored = server.messages(&thread, &server.admin).await;
    let seqs: Vec<_> = stored.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=stored.len() as i64).collect::<Vec<_>>());
    server.stop().await;
}

/// U+0000 cannot be stored by PostgreSQL, so it is refused on both backends,
/// wherever it appears; a literal backslash followed by `u0000` is just text.
#[tokio::test]
async fn nul_characters_are_refused_everywhere() {
    let server = TestServer::start().await;
    let thread = server.thread_for("nul").await;
    let path = format!("/v1/threads/{thread}/messages");
    let admin = server.admin.clone();
    let json_type = Some("application/json");
    let messages: [&[u8]; 5] = [
        br#"{"content": "a\u0000b"}"#,
        br#"{"content": "x", "metadata": {"k": "\u0000"}}"#,
        br#"{"content": "x", "metadata": {"\u0000": 1}}"#,
        br#"{"content": "x", "role": "assistant", "agent_name": "A\u0000"}"#,
        br#"{"role": "assistant", "content": [{"type": "tool_call", "id": "c", "name": "n", "arguments": {"q": "\\\u0000"}}]}"#,
    ];
    for body in messages {
        post_raw(&server, &path, &admin, json_type, body.to_vec())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_text");
    }
    for body in [
        &br#"{"customer_id": "a\u0000"}"#[..],
        br#"{"customer_id": "a", "title": "\u0000"}"#,
    ] {
        post_raw(&server, "/v1/threads", &admin, json_type, body.to_vec())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_text");
    }
    server
        .get("/v1/threads?customer_id=%00", &admin)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_text");

    let literal = post_raw(
        &server,
        &path,
        &admin,
        json_type,
        br#"{"content": "C:\\u0000"}"#.to_vec(),
    )
    .await;
    assert_eq!(literal.status, StatusCode::CREATED, "{}", literal.text);
    assert_eq!(literal.body["content"], "C:\\u0000");
    assert_eq!(server.messages(&thread, &admin).await.len(), 1);
    server.stop().await;
}
