//! Threads: create, list with filters and cursors, get, patch.

use reqwest::StatusCode;
use serde_json::json;
use tandem_tests::TestServer;

#[tokio::test]
async fn customer_creates_its_own_thread_and_staff_create_for_anyone() {
    let server = TestServer::start().await;
    let alice = server.customer("alice").await;
    let agent = server.agent("Sam").await;

    let own = server
        .post(
            "/v1/threads",
            &alice,
            json!({"title": "Where is my order?"}),
        )
        .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text);
    assert_eq!(own.body["customer_id"], "alice");
    assert_eq!(own.body["title"], "Where is my order?");
    assert_eq!(own.body["status"], "open");
    assert_eq!(own.body["assigned_to"], "unassigned");
    assert_eq!(own.body["last_seq"], 0);

    let by_agent = server
        .post(
            "/v1/threads",
            &agent,
            json!({"customer_id": "bob", "metadata": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(by_agent.status, StatusCode::CREATED, "{}", by_agent.text);
    assert_eq!(by_agent.body["customer_id"], "bob");
    assert_eq!(by_agent.body["metadata"]["plan"], "pro");

    let id = own.body["id"].as_str().unwrap();
    let fetched = server.get(&format!("/v1/threads/{id}"), &alice).await;
    assert_eq!(fetched.status, StatusCode::OK);
    assert_eq!(fetched.body, own.body);

    server
        .post(
            "/v1/threads",
            &server.admin,
            json!({"title": "no customer"}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "missing_customer_id");
    server.stop().await;
}

#[tokio::test]
async fn list_filters_and_pages_with_a_cursor() {
    let server = TestServer::start().await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(server.thread_for("carol").await);
    }
    server.thread_for("dave").await;
    // Close two of carol's threads.
    for id in &ids[..2] {
        let closed = server
            .patch(
                &format!("/v1/threads/{id}"),
                &server.admin,
                json!({"status": "closed"}),
            )
            .await;
        assert_eq!(closed.status, StatusCode::OK, "{}", closed.text);
    }

    let carol = server.customer("carol").await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/threads?limit=3&cursor={c}"),
            None => "/v1/threads?limit=3".to_owned(),
        };
        let page = server.get(&path, &carol).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for thread in page.body["threads"].as_array().unwrap() {
            assert_eq!(thread["customer_id"], "carol");
            seen.push(thread["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(
        seen, newest_first,
        "all of carol's threads, newest first, once each"
    );

    let closed = server.get("/v1/threads?status=closed", &carol).await;
    let closed_ids: Vec<_> = closed.body["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(closed_ids, vec![ids[1].clone(), ids[0].clone()]);

    let unassigned = server
        .get(
            "/v1/threads?assigned_to=unassigned&customer_id=dave",
            &server.admin,
        )
        .await;
    assert_eq!(unassigned.body["threads"].as_array().unwrap().len(), 1);
    let human = server
        .get("/v1/threads?assigned_to=human", &server.admin)
        .await;
    assert_eq!(human.body["threads"].as_array().unwrap().len(), 0);

    server
        .get("/v1/threads?status=sleeping", &carol)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    server
        .get("/v1/threads?limit=0", &carol)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
    server.stop().await;
}

#[tokio::test]
async fn staff_patch_title_and_status_customers_may_not() {
    let server = TestServer::start().await;
    let agent = server.agent("Sam").await;
    let erin = server.customer("erin").await;
    let id = server.thread_for("erin").await;

    let patched = server
        .patch(
            &format!("/v1/threads/{id}"),
            &agent,
            json!({"title": "Refund", "status": "waiting_on_human"}),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["title"], "Refund");
    assert_eq!(patched.body["status"], "waiting_on_human");

    let cleared = server
        .patch(
            &format!("/v1/threads/{id}"),
            &server.admin,
            json!({"title": null}),
        )
        .await;
    assert_eq!(cleared.body["title"], serde_json::Value::Null);
    assert_eq!(cleared.body["status"], "waiting_on_human");

    server
        .patch(
            &format!("/v1/threads/{id}"),
            &erin,
            json!({"status": "closed"}),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    server
        .patch(&format!("/v1/threads/{id}"), &agent, json!({}))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "empty_patch");
    let unchanged = server.get(&format!("/v1/threads/{id}"), &erin).await;
    assert_eq!(unchanged.body["status"], "waiting_on_human");
    server.stop().await;
}
