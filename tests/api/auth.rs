//! Who may do what: 401 without a valid token, 404 for other customers'
//! threads, 400 for fields a customer may not set, agents as themselves only,
//! and every route refusing the tokens it does not admit.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_tests::TestServer;

#[tokio::test]
async fn a_customer_cannot_see_or_touch_another_customers_thread() {
    let server = TestServer::start().await;
    let alice = server.customer("alice").await;
    let mallory = server.customer("mallory").await;
    let thread = server.thread_for("alice").await;
    server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &alice,
            json!({"content": "private"}),
        )
        .await;

    server
        .get(&format!("/v1/threads/{thread}"), &mallory)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    server
        .get(&format!("/v1/threads/{thread}/messages"), &mallory)
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &mallory,
            json!({"content": "hi"}),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    server
        .patch(
            &format!("/v1/threads/{thread}"),
            &mallory,
            json!({"title": "x"}),
        )
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // The same answer as for a thread that does not exist at all.
    let missing = server
        .get("/v1/threads/01930000-0000-7000-8000-000000000000", &mallory)
        .await;
    missing.assert_error(StatusCode::NOT_FOUND, "not_found");

    let listed = server.get("/v1/threads", &mallory).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["threads"], json!([]));
    server
        .get("/v1/threads?customer_id=alice", &mallory)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "field_not_allowed");

    // Alice's thread is untouched.
    assert_eq!(server.messages(&thread, &server.admin).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_customer_may_not_set_what_the_server_decides() {
    let server = TestServer::start().await;
    let alice = server.customer("alice").await;
    let thread = server.thread_for("alice").await;
    let path = format!("/v1/threads/{thread}/messages");
    let forged = [
        ("role", json!({"content": "x", "role": "assistant"})),
        ("role", json!({"content": "x", "role": "user"})),
        (
            "agent_name",
            json!({"content": "x", "agent_name": "Support"}),
        ),
        (
            "author",
            json!({"content": "x", "author": {"kind": "human", "id": "Sam"}}),
        ),
        (
            "visibility",
            json!({"content": "x", "visibility": "internal"}),
        ),
        ("status", json!({"content": "x", "status": "approved"})),
        (
            "metadata.provider",
            json!({"content": "x", "metadata": {"provider": "human"}}),
        ),
        (
            "metadata.providerMetadata",
            json!({"content": "x", "metadata": {"providerMetadata": {}}}),
        ),
        (
            "metadata.routing",
            json!({"content": "x", "metadata": {"routing": {"strategy": "ai"}}}),
        ),
        (
            "metadata.decisions",
            json!({"content": "x", "metadata": {"decisions": []}}),
        ),
        (
            "metadata.run_id",
            json!({"content": "x", "metadata": {"run_id": "0196"}}),
        ),
        (
            "metadata.approval",
            json!({"content": "x", "metadata": {"approval": {"approved_by": "Sam"}}}),
        ),
    ];
    for (field, body) in forged {
        let response = server.post(&path, &alice, body).await;
        response.assert_error(StatusCode::BAD_REQUEST, "field_not_allowed");
        assert!(
            response.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "the message names `{field}`: {}",
            response.text
        );
    }
    server
        .post(
            &path,
            &alice,
            json!({"content": [{"type": "tool_result", "tool_call_id": "c", "name": "n", "result": 1}]}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "part_not_allowed");
    server
        .post("/v1/threads", &alice, json!({"customer_id": "bob"}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "field_not_allowed");
    server
        .post("/v1/threads", &alice, json!({"metadata": {"vip": true}}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "field_not_allowed");
    assert!(
        server.messages(&thread, &server.admin).await.is_empty(),
        "nothing stored"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_agent_posts_as_itself_only() {
    let server = TestServer::start().await;
    let sam = server.agent("Sam").await;
    let thread = server.thread_for("bob").await;
    let path = format!("/v1/threads/{thread}/messages");

    let refused = [
        (
            json!({"agent_name": "Kim"}),
            StatusCode::FORBIDDEN,
            "not_yourself",
        ),
        (
            json!({"author": {"kind": "human", "id": "Kim"}}),
            StatusCode::FORBIDDEN,
            "not_yourself",
        ),
        (
            json!({"author": {"kind": "ai", "id": "Sam"}}),
            StatusCode::FORBIDDEN,
            "not_yourself",
        ),
        (
            json!({"metadata": {"provider": "gpt-4o"}}),
            StatusCode::FORBIDDEN,
            "not_yourself",
        ),
        (
            json!({"role": "user"}),
            StatusCode::FORBIDDEN,
            "role_not_allowed",
        ),
        (
            json!({"role": "system"}),
            StatusCode::FORBIDDEN,
            "role_not_allowed",
        ),
        (
            json!({"status": "pending_approval"}),
            StatusCode::BAD_REQUEST,
            "field_not_allowed",
        ),
    ];
    for (fields, status, code) in refused {
        let mut body = json!({"content": "x"});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        server
            .post(&path, &sam, body)
            .await
            .assert_error(status, code);
    }
    assert!(server.messages(&thread, &server.admin).await.is_empty());

    let own = server
        .post(&path, &sam, json!({"content": "x", "agent_name": "Sam"}))
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text);
    assert_eq!(own.body["agent_name"], "Sam");
    server.stop().await;
}

#[tokio::test]
async fn missing_wrong_or_malformed_tokens_get_401() {
    let server = TestServer::start().await;
    let thread = server.thread_for("alice").await;
    let routes = [
        (Method::GET, "/v1/threads".to_owned()),
        (Method::POST, "/v1/threads".to_owned()),
        (Method::GET, format!("/v1/threads/{thread}")),
        (Method::PATCH, format!("/v1/threads/{thread}")),
        (Method::GET, format!("/v1/threads/{thread}/messages")),
        (Method::POST, format!("/v1/threads/{thread}/messages")),
    ];
    let wrong = format!("tdm_{}", "A".repeat(43));
    for (method, path) in routes {
        for token in [None, Some(wrong.as_str()), Some("not-a-token"), Some("")] {
            let response = server
                .call(method.clone(), &path, token, Some(json!({"content": "x"})))
                .await;
            response.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
            assert_eq!(response.headers["www-authenticate"], "Bearer");
        }
    }
    // A Basic header is not a bearer token.
    let basic = server
        .client
        .get(format!("{}/v1/threads", server.url))
        .basic_auth("admin", Some(&server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    assert!(server.messages(&thread, &server.admin).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_stored_hashed() {
    let server = TestServer::start().await;
    let secret = server.agent("Sam").await;
    let hashes = server
        .db
        .query_strings("SELECT secret_hash FROM tokens")
        .await;
    assert_eq!(hashes.len(), 2, "the admin and the agent");
    for hash in &hashes {
        assert_eq!(hash.len(), 64, "a hex SHA-256");
        assert!(
            !hash.contains(&secret[4..]),
            "no part of a secret is stored"
        );
        assert!(!hash.contains(&server.admin[4..]));
    }
    let everything = server
        .db
        .query_strings(
            "SELECT COALESCE(secret_hash, '') || COALESCE(agent_name, '') || COALESCE(label, '') FROM tokens",
        )
        .await
        .join(" ");
    assert!(!everything.contains(&secret));
    assert!(!everything.contains(&server.admin));
    // And the secret still works.
    assert_eq!(
        server.get("/v1/threads", &secret).await.status,
        StatusCode::OK
    );
    server.stop().await;
}

/// Every route of the OpenAPI document says who may call it
/// (`x-tandem-callers`), and means it: a token of a kind the route does not
/// admit is refused before the route does anything (403, or 404 for a
/// thread that is not the caller's), and only the routes listed here admit
/// customers. A new route that forgot its access extractor fails here.
#[tokio::test]
async fn every_route_says_who_may_call_it_and_refuses_everyone_else() {
    let server = TestServer::start().await;
    let own = server.thread_for("walker").await;
    let theirs = server.thread_for("someone-else").await;
    let tokens = [
        ("admin", server.admin.clone()),
        ("agent", server.agent("Sam").await),
        ("customer", server.customer("walker").await),
    ];
    // No token: each checks credentials of its own, or none.
    let public = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("post", "/v1/hooks/workflows/{id}/events/{name}"),
        ("post", "/v1/customers/sessions"),
        ("get", "/v1/agents/sessions"),
        ("post", "/v1/agents/sessions"),
        ("delete", "/v1/agents/sessions"),
    ];
    // What a customer may call; every other route is staff's.
    let for_customers = [
        ("get", "/v1/threads"),
        ("post", "/v1/threads"),
        ("get", "/v1/threads/{id}"),
        ("get", "/v1/threads/{id}/messages"),
        ("post", "/v1/threads/{id}/messages"),
        ("post", "/v1/ws/tickets"),
    ];
    let doc = server.call(Method::GET, "/openapi.json", None, None).await;
    let mut seen = Vec::new();
    let mut refusals = 0;
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let route = (method.as_str(), path.as_str());
            seen.push((method.clone(), path.clone()));
            let callers = &operation["x-tandem-callers"];
            if public.contains(&route) {
                assert!(
                    operation["security"].is_null() && callers.is_null(),
                    "{method} {path} takes no token: {operation:#}"
                );
                continue;
            }
            assert!(
                operation["security"].is_array(),
                "{method} {path} takes a token: {operation:#}"
            );
            let callers: Vec<&str> = callers
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path} says who may call it: {operation:#}"))
                .iter()
                .filter_map(Value::as_str)
                .collect();
            assert_eq!(
                callers.contains(&"customer"),
                for_customers.contains(&route),
                "{method} {path} admits {callers:?}"
            );
            let http_method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            for (kind, token) in &tokens {
                if callers.contains(kind) {
                    continue;
                }
                for thread in [&own, &theirs] {
                    let url = path
                        .replace("{id}", thread)
                        .replace("{name}", "me")
                        .replace("{message_id}", &uuid::Uuid::now_v7().to_string());
                    let body = (method != "get").then(|| json!({}));
                    let response = server
                        .call(http_method.clone(), &url, Some(token), body)
                        .await;
                    let refused = match response.status {
                        StatusCode::FORBIDDEN => response.body["error"]["code"] == "forbidden",
                        // A thread that is not the caller's does not exist.
                        StatusCode::NOT_FOUND => {
                            thread == &theirs && response.body["error"]["code"] == "not_found"
                        }
                        _ => false,
                    };
                    assert!(
                        refused,
                        "{kind} at {method} {url}: {} {}",
                        response.status, response.text
                    );
                    refusals += 1;
                }
            }
        }
    }
    for (method, path) in public.iter().chain(&for_customers) {
        assert!(
            seen.iter().any(|(m, p)| m == method && p == path),
            "{method} {path} is in the document"
        );
    }
    assert!(
        refusals > 50,
        "the walk reached the staff routes: {refusals}"
    );
    server.stop().await;
}
