//! Health, readiness, OpenAPI, metrics, rate limits and graceful shutdown.

use reqwest::StatusCode;
use serde_json::json;
use tandem_tests::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    let health = server
        .call(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    let ready = server
        .call(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["database"]["reachable"], true);
    let backend = if server.db.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(ready.body["database"]["backend"], backend);
    assert_eq!(
        ready.body["ai"]["enabled"], false,
        "no LLM configured: the AI is off"
    );

    // With the database gone, readiness says so.
    server.store.close().await;
    let unready = server
        .call(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(unready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(unready.body["database"]["reachable"], false);
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let server = TestServer::start().await;
    let doc = server
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = &doc.body["paths"];
    for (path, methods) in [
        ("/v1/threads", &["get", "post"][..]),
        ("/v1/threads/{id}", &["get", "patch"][..]),
        ("/v1/threads/{id}/messages", &["get", "post"][..]),
        ("/healthz", &["get"][..]),
        ("/readyz", &["get"][..]),
    ] {
        for method in methods {
            assert!(
                paths[path][method].is_object(),
                "{method} {path} is documented"
            );
        }
    }
    let post_message = &paths["/v1/threads/{id}/messages"]["post"];
    assert!(post_message["requestBody"]["content"]["application/json"]["schema"].is_object());
    assert!(post_message["responses"]["201"].is_object());
    assert!(post_message["security"].is_array());
    let schemas = &doc.body["components"]["schemas"];
    for name in [
        "Message",
        "Thread",
        "Content",
        "Part",
        "Role",
        "PostMessage",
        "ErrorBody",
    ] {
        assert!(schemas[name].is_object(), "schema {name}");
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let server = TestServer::start().await;
    let thread = server.thread_for("alice").await;
    for _ in 0..3 {
        server
            .post(
                &format!("/v1/threads/{thread}/messages"),
                &server.admin,
                json!({"content": "x"}),
            )
            .await;
    }
    server.get("/v1/threads", "wrong").await;
    let metrics = server
        .call(reqwest::Method::GET, "/metrics", None, None)
        .await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text;
    assert!(
        text.contains(r#"tandem_http_requests_total{method="POST",route="/v1/threads/{id}/messages",status="201"} 3"#),
        "{text}"
    );
    assert!(text.contains(
        r#"tandem_http_requests_total{method="GET",route="/v1/threads",status="401"} 1"#
    ));
    assert!(text.contains(r#"tandem_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/threads/{id}/messages"}"#)
        || text.contains(r#"tandem_http_request_duration_seconds_bucket{method="POST",route="/v1/threads/{id}/messages",le="0.005"}"#),
        "{text}");
    assert!(text.contains(r#"tandem_db_pool_connections{state="idle"}"#));
    assert!(!text.contains(&thread), "routes, not raw paths");
    server.stop().await;
}

#[tokio::test]
async fn a_flooding_token_gets_429_and_others_are_unaffected() {
    let server = TestServer::start_with(|config| {
        config.rate_limits.customer.per_second = 1;
        config.rate_limits.customer.burst = 5;
        config.rate_limits.anonymous.per_second = 1;
        config.rate_limits.anonymous.burst = 3;
    })
    .await;
    let flooder = server.customer("flooder").await;
    let neighbour = server.customer("neighbour").await;

    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..20 {
        let response = server.get("/v1/threads", &flooder).await;
        if response.status == StatusCode::TOO_MANY_REQUESTS {
            response.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
            retry_after = response.headers.get("retry-after").cloned();
        }
        statuses.push(response.status);
    }
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // The burst of 5 passes, plus at most a few refills of 1/s on a slow machine.
    assert!(
        (5..=8).contains(&ok),
        "the burst passes, then 429s: {statuses:?}"
    );
    assert_eq!(ok + limited, 20);
    let retry_after: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");

    // Another customer is served at once.
    for _ in 0..5 {
        assert_eq!(
            server.get("/v1/threads", &neighbour).await.status,
            StatusCode::OK
        );
    }
    // Guessing tokens is limited per client address.
    let mut guesses = Vec::new();
    for i in 0..8 {
        guesses.push(
            server
                .get("/v1/threads", &format!("tdm_guess{i}"))
                .await
                .status,
        );
    }
    assert_eq!(&guesses[..3], &[StatusCode::UNAUTHORIZED; 3]);
    let refused = guesses[3..]
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 3, "{guesses:?}");
    let metrics = server
        .call(reqwest::Method::GET, "/metrics", None, None)
        .await
        .text;
    assert!(
        metrics.contains(r#"tandem_rate_limited_total{kind="customer"}"#),
        "{metrics}"
    );
    server.stop().await;
}

/// A request whose body is still arriving when shutdown begins is completed
/// and answered; the server then stops.
#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let mut server = TestServer::start().await;
    let thread = server.thread_for("alice").await;
    let body = br#"{"content": "sent just before shutdown"}"#;
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST /v1/threads/{thread}/messages HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        server.admin,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    // "100 Continue" means the handler is running and reading the body.
    let mut buffer = vec![0u8; 1024];
    let n = socket.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 100 Continue"));

    let stopped = server.begin_shutdown().expect("server task");
    socket.write_all(body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        socket.read_to_end(&mut response),
    )
    .await
    .expect("answered")
    .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert!(response.contains("sent just before shutdown"));
    tokio::time::timeout(std::time::Duration::from_secs(10), stopped)
        .await
        .expect("server stops")
        .unwrap()
        .unwrap();
    // The message is durable: a new store on the same database has it.
    let store = tandem_store::Store::connect(&server.db.options())
        .await
        .unwrap();
    let id: tandem_model::ThreadId = thread.parse().unwrap();
    let stored = store
        .list_messages(
            id,
            &tandem_model::MessageFilter {
                after_seq: 0,
                limit: 10,
                customer_view: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    store.close().await;
    server.stop().await;
}
