//! How the web pages get in: chat visitors' sessions by widget key and
//! verified identity, agents' sign-in with a password and an HttpOnly
//! cookie, and the pages' own headers.

use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_tests::{Response, TestServer, identity_hash};

const SHOP: &str = "https://shop.example.com";
const PASSWORD: &str = "correct horse battery";

/// `POST path` with a JSON body and extra headers, no token.
async fn post_with(
    server: &TestServer,
    path: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
    body: Value,
) -> Response {
    let mut request = server
        .client
        .post(format!("{}{path}", server.url))
        .json(&body);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    Response::read(request.send().await.expect("request")).await
}

/// A request authenticated by the sign-in cookie only.
async fn with_cookie(
    server: &TestServer,
    method: Method,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    body: Option<Value>,
) -> Response {
    let mut request = server
        .client
        .request(method, format!("{}{path}", server.url))
        .header(COOKIE, cookie);
    if let Some(origin) = origin {
        request = request.header(ORIGIN, origin);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    Response::read(request.send().await.expect("request")).await
}

/// `GET path` with the sign-in cookie only.
async fn get_with_cookie(server: &TestServer, path: &str, cookie: &str) -> Response {
    with_cookie(server, Method::GET, path, cookie, None, None).await
}

/// Signs `name` in from the inbox page; returns the `Cookie` header value
/// and the whole `Set-Cookie` line.
async fn sign_in(server: &TestServer, name: &str, password: &str) -> (String, String) {
    let response = post_with(
        server,
        "/v1/agents/sessions",
        &[(ORIGIN, &server.url)],
        json!({"name": name, "password": password}),
    )
    .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    let set_cookie = response.headers[SET_COOKIE].to_str().unwrap().to_owned();
    let pair = set_cookie.split(';').next().unwrap().to_owned();
    (pair, set_cookie)
}

#[tokio::test]
async fn a_visitor_starts_an_anonymous_session_with_a_widget_key() {
    let server = TestServer::start().await;
    let key = server.widget_key(&[SHOP], false).await;

    let first = post_with(
        &server,
        "/v1/customers/sessions",
        &[(ORIGIN, SHOP)],
        json!({"widget_key": key.key}),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(first.body["verified"], false);
    let visitor = first.body["customer_id"].as_str().unwrap().to_owned();
    assert!(visitor.starts_with("visitor_"), "{visitor}");
    let token = first.body["token"].as_str().unwrap().to_owned();

    // The token is a customer token for that visitor alone.
    let thread = server
        .post("/v1/threads", &token, json!({"title": "Hello"}))
        .await;
    assert_eq!(thread.status, StatusCode::CREATED, "{}", thread.text);
    assert_eq!(thread.body["customer_id"], visitor.as_str());
    let second = post_with(
        &server,
        "/v1/customers/sessions",
        &[(ORIGIN, SHOP)],
        json!({"widget_key": key.key}),
    )
    .await;
    assert_ne!(second.body["customer_id"], visitor.as_str());
    let other = second.body["token"].as_str().unwrap();
    let listed = server.get("/v1/threads", other).await;
    assert_eq!(listed.body["threads"], json!([]), "{}", listed.text);

    // The server's own chat page (same origin) may use the key too.
    let own = post_with(
        &server,
        "/v1/customers/sessions",
        &[(ORIGIN, &server.url)],
        json!({"widget_key": key.key}),
    )
    .await;
    assert_eq!(own.status, StatusCode::CREATED, "{}", own.text);
}

#[tokio::test]
async fn widget_keys_are_bound_to_their_sites() {
    let server = TestServer::start().await;
    let key = server.widget_key(&[SHOP], false).await;
    for origin in [
        "https://evil.example.com",
        "https://shop.example.com.evil.com",
        "http://shop.example.com",
        "null",
    ] {
        post_with(
            &server,
            "/v1/customers/sessions",
            &[(ORIGIN, origin)],
            json!({"widget_key": key.key}),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "origin_not_allowed");
    }
    for bad_key in ["wk_nope", "tdm_abc", ""] {
        post_with(
            &server,
            "/v1/customers/sessions",
            &[(ORIGIN, SHOP)],
            json!({"widget_key": bad_key}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "widget_key_invalid");
    }
    // A revoked key starts nothing.
    server.store.revoke_widget_key(&key.key).await.unwrap();
    post_with(
        &server,
        "/v1/customers/sessions",
        &[(ORIGIN, SHOP)],
        json!({"widget_key": key.key}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "widget_key_invalid");
}

#[tokio::test]
async fn a_verified_user_gets_their_history_and_a_forged_hash_gets_nothing() {
    let server = TestServer::start().await;
    let key = server.widget_key(&[SHOP], false).await;
    // Alice's history, written by the integrator's backend.
    let thread = server.thread_for("alice").await;
    let alice = server.customer("alice").await;
    server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &alice,
            json!({"content": "my address is 1 Main St"}),
        )
        .await;

    let forged = [
        identity_hash(&key.identity_secret, "mallory"),
        identity_hash("a guessed secret", "alice"),
        "0".repeat(64),
        "not hex".into(),
    ];
    for hash in forged {
        post_with(
            &server,
            "/v1/customers/sessions",
            &[(ORIGIN, SHOP)],
            json!({"widget_key": key.key, "user_id": "alice", "user_hash": hash}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "identity_invalid");
    }
    // Refused requests minted nothing: the only tokens are the admin's and
    // the one Alice's backend made.
    let tokens = server
        .db
        .query_strings("SELECT CAST(COUNT(*) AS TEXT) FROM tokens")
        .await;
    assert_eq!(tokens, ["2"]);

    let hash = identity_hash(&key.identity_secret, "alice");
    let session = post_with(
        &server,
        "/v1/customers/sessions",
        &[(ORIGIN, SHOP)],
        json!({"widget_key": key.key, "user_id": "alice", "user_hash": hash}),
    )
    .await;
    assert_eq!(session.status, StatusCode::CREATED, "{}", session.text);
    assert_eq!(session.body["verified"], true);
    assert_eq!(session.body["customer_id"], "alice");
    let token = session.body["token"].as_str().unwrap();
    let messages = server.messages(&thread, token).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["content"], "my address is 1 Main St");

    // A user id shaped like an anonymous visitor's cannot be vouched for.
    let visitor = "visitor_0193abcd";
    post_with(
        &server,
        "/v1/customers/sessions",
        &[(ORIGIN, SHOP)],
        json!({"widget_key": key.key, "user_id": visitor,
               "user_hash": identity_hash(&key.identity_secret, visitor)}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "identity_invalid");
}

#[tokio::test]
async fn session_requests_refuse_bad_input() {
    let server = TestServer::start().await;
    let key = server.widget_key(&[SHOP], true).await;
    let cases = [
        (
            json!({"widget_key": key.key}),
            StatusCode::FORBIDDEN,
            "identity_required",
        ),
        (
            json!({"widget_key": key.key, "user_id": "alice"}),
            StatusCode::BAD_REQUEST,
            "user_hash_required",
        ),
        (
            json!({"widget_key": key.key, "user_hash": "00"}),
            StatusCode::BAD_REQUEST,
            "user_id_required",
        ),
        (
            json!({"widget_key": key.key, "user_id": "", "user_hash": "00"}),
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        ),
        (
            json!({"widget_key": key.key, "user_id": "x".repeat(256), "user_hash": "00"}),
            StatusCode::BAD_REQUEST,
            "invalid_user_id",
        ),
        (
            json!({"widget_key": key.key, "name": "n".repeat(101)}),
            StatusCode::BAD_REQUEST,
            "invalid_name",
        ),
        (
            json!({"widget_key": key.key, "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"customer_id": "alice"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        post_with(&server, "/v1/customers/sessions", &[], body.clone())
            .await
            .assert_error(status, code);
    }
    let malformed = server
        .client
        .post(format!("{}/v1/customers/sessions", server.url))
        .header("content-type", "application/json")
        .body("{\"widget_key\": ")
        .send()
        .await
        .unwrap();
    Response::read(malformed)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    let huge = json!({"widget_key": "x".repeat(100_000)});
    post_with(&server, "/v1/customers/sessions", &[], huge)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
}

#[tokio::test]
async fn session_requests_are_rate_limited_per_address() {
    let server = TestServer::start_with(|config| {
        config.rate_limits.anonymous.per_second = 1;
        config.rate_limits.anonymous.burst = 3;
    })
    .await;
    let key = server.widget_key(&[SHOP], false).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = post_with(
            &server,
            "/v1/customers/sessions",
            &[],
            json!({"widget_key": key.key}),
        )
        .await;
        statuses.push(response.status);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        3,
        "{statuses:?}"
    );
    assert!(
        statuses[3..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS)
    );
    // Sign-in attempts share the limit: guessing passwords is as slow.
    post_with(
        &server,
        "/v1/agents/sessions",
        &[],
        json!({"name": "Sam", "password": "guess guess guess"}),
    )
    .await
    .assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[tokio::test]
async fn sessions_expire() {
    // Long enough for a sign-in (Argon2) on a busy machine, short enough
    // to wait out.
    const TTL_SECS: u64 = 4;
    let server = TestServer::start_with(|config| {
        config.web.customer_session_secs = TTL_SECS;
        config.web.agent_session_secs = TTL_SECS;
    })
    .await;
    let key = server.widget_key(&[], false).await;
    server.agent_account("Sam", PASSWORD).await;
    let (cookie, set_cookie) = sign_in(&server, "Sam", PASSWORD).await;
    assert!(set_cookie.contains("Max-Age=4"), "{set_cookie}");
    let session = post_with(
        &server,
        "/v1/customers/sessions",
        &[],
        json!({"widget_key": key.key}),
    )
    .await;
    let token = session.body["token"].as_str().unwrap().to_owned();
    let expires_at: chrono::DateTime<chrono::Utc> = session.body["expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        server.get("/v1/threads", &token).await.status,
        StatusCode::OK
    );
    let inbox = get_with_cookie(&server, "/v1/inbox", &cookie).await;
    assert_eq!(inbox.status, StatusCode::OK, "{}", inbox.text);

    // Both were minted before `expires_at`: past it, both are dead.
    let left = (expires_at - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(left + std::time::Duration::from_millis(200)).await;
    server
        .get("/v1/threads", &token)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    get_with_cookie(&server, "/v1/inbox", &cookie)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Nor does an expired session open a WebSocket.
    let ticket = server
        .call(Method::POST, "/v1/ws/tickets", Some(&token), None)
        .await;
    ticket.assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn an_agent_signs_in_works_with_the_cookie_and_signs_out() {
    let server = TestServer::start().await;
    server.agent_account("Sam", PASSWORD).await;
    let (cookie, set_cookie) = sign_in(&server, "Sam", PASSWORD).await;
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    assert!(
        !set_cookie.contains("Secure"),
        "plain http on loopback: {set_cookie}"
    );

    let me = get_with_cookie(&server, "/v1/agents/sessions", &cookie).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["name"], "Sam");

    // The cookie acts as Sam: a reply goes out under Sam's name.
    let thread = server.thread_for("alice").await;
    let reply = with_cookie(
        &server,
        Method::POST,
        &format!("/v1/threads/{thread}/messages"),
        &cookie,
        Some(&server.url),
        Some(json!({"content": "Hi, Sam here"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let messages = server.messages(&thread, &server.admin).await;
    assert_eq!(messages[0]["agent_name"], "Sam");
    assert_eq!(messages[0]["author"]["kind"], "human");

    // Changes from another site, or with no Origin at all, are refused
    // (cross-site request forgery), and nothing is written.
    for origin in [Some("https://evil.example.com"), None] {
        with_cookie(
            &server,
            Method::POST,
            &format!("/v1/threads/{thread}/messages"),
            &cookie,
            origin,
            Some(json!({"content": "forged"})),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "cross_origin");
    }
    assert_eq!(server.messages(&thread, &server.admin).await.len(), 1);

    // Signing out ends the session at once.
    let out = with_cookie(
        &server,
        Method::DELETE,
        "/v1/agents/sessions",
        &cookie,
        Some(&server.url),
        None,
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT, "{}", out.text);
    let removal = out.headers[SET_COOKIE].to_str().unwrap();
    assert!(removal.contains("Max-Age=0"), "{removal}");
    get_with_cookie(&server, "/v1/agents/sessions", &cookie)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    get_with_cookie(&server, "/v1/inbox", &cookie)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
}

#[tokio::test]
async fn wrong_passwords_and_unknown_or_disabled_agents_are_refused_alike() {
    let server = TestServer::start().await;
    server.agent_account("Sam", PASSWORD).await;
    server.agent_account("Kim", PASSWORD).await;
    let (kim_cookie, _) = sign_in(&server, "Kim", PASSWORD).await;
    assert!(server.store.disable_agent_account("Kim").await.unwrap());

    for (name, password) in [
        ("Sam", "correct horse batterY"),
        ("Sam", ""),
        ("sam", PASSWORD),
        ("Nobody", PASSWORD),
        ("Kim", PASSWORD),
    ] {
        post_with(
            &server,
            "/v1/agents/sessions",
            &[(ORIGIN, &server.url)],
            json!({"name": name, "password": password}),
        )
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    // Disabling ends the sessions already open.
    get_with_cookie(&server, "/v1/inbox", &kim_cookie)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    // Another site's page cannot sign a browser in.
    post_with(
        &server,
        "/v1/agents/sessions",
        &[(ORIGIN, "https://evil.example.com")],
        json!({"name": "Sam", "password": PASSWORD}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "cross_origin");
    post_with(
        &server,
        "/v1/agents/sessions",
        &[],
        json!({"name": "Sam", "password": "x".repeat(2000)}),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "invalid_credentials");
}

#[tokio::test]
async fn the_cookie_stands_for_agents_only() {
    let server = TestServer::start().await;
    // A customer's or an admin's secret in the cookie is not a sign-in.
    for secret in [server.customer("alice").await, server.admin.clone()] {
        let cookie = format!("tandem_session={secret}");
        get_with_cookie(&server, "/v1/threads", &cookie)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
        get_with_cookie(&server, "/v1/agents/sessions", &cookie)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
}

#[tokio::test]
async fn the_pages_are_served_with_their_security_headers() {
    let server = TestServer::start().await;
    let key = server
        .widget_key(&[SHOP, "http://localhost:3000"], false)
        .await;
    let get = |path: String| {
        let client = server.client.clone();
        let url = format!("{}{path}", server.url);
        async move { client.get(url).send().await.unwrap() }
    };

    let chat = get(format!("/chat?key={}", key.key)).await;
    assert_eq!(chat.status(), StatusCode::OK);
    assert_eq!(chat.headers()["content-type"], "text/html; charset=utf-8");
    let csp = chat.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(
        csp.ends_with("frame-ancestors 'self' https://shop.example.com http://localhost:3000"),
        "{csp}"
    );
    let etag = chat.headers()["etag"].to_str().unwrap().to_owned();
    assert!(chat.text().await.unwrap().contains("<html"));

    // Unknown keys and the inbox may not be framed by other sites.
    let unknown = get("/chat?key=wk_unknown".into()).await;
    let csp = unknown.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.ends_with("frame-ancestors 'self'"), "{csp}");
    let inbox = get("/inbox".into()).await;
    assert_eq!(inbox.status(), StatusCode::OK);
    let csp = inbox.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.ends_with("frame-ancestors 'none'"), "{csp}");

    // A page loaded before is answered 304 while it has not changed.
    let again = server
        .client
        .get(format!("{}/chat?key={}", server.url, key.key))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    let widget = get("/widget.js".into()).await;
    assert_eq!(widget.status(), StatusCode::OK);
    assert_eq!(
        widget.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        widget.headers()["cross-origin-resource-policy"],
        "cross-origin"
    );

    for missing in [
        "/web/../Cargo.toml",
        "/web/%2e%2e/Cargo.toml",
        "/web/chat/nothing.js",
        "/web/chat",
        "/web/README.md",
    ] {
        let response = get(missing.into()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{missing}");
    }
    let redirect = server
        .client
        .get(format!("{}/", server.url))
        .send()
        .await
        .unwrap();
    assert!(
        redirect.url().path().ends_with("/inbox"),
        "{}",
        redirect.url()
    );
}

#[tokio::test]
async fn sign_in_requests_refuse_bad_input() {
    let server = TestServer::start().await;
    server.agent_account("Sam", PASSWORD).await;
    let origin = [(ORIGIN, server.url.as_str())];
    for (body, code) in [
        (json!({"name": "Sam"}), "invalid_body"),
        (json!({"password": PASSWORD}), "invalid_body"),
        (
            json!({"name": "Sam", "password": PASSWORD, "role": "admin"}),
            "invalid_body",
        ),
        (json!({"name": 7, "password": PASSWORD}), "invalid_body"),
    ] {
        post_with(&server, "/v1/agents/sessions", &origin, body)
            .await
            .assert_error(StatusCode::BAD_REQUEST, code);
    }
    let malformed = server
        .client
        .post(format!("{}/v1/agents/sessions", server.url))
        .header("content-type", "application/json")
        .body("{\"name\": \"Sam\", ")
        .send()
        .await
        .unwrap();
    Response::read(malformed)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    let form = server
        .client
        .post(format!("{}/v1/agents/sessions", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Sam&password=x")
        .send()
        .await
        .unwrap();
    Response::read(form)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

    // No cookie: nobody is signed in, and signing out is harmless.
    let me = server
        .client
        .get(format!("{}/v1/agents/sessions", server.url))
        .send()
        .await
        .unwrap();
    Response::read(me)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthorized");
    let out = server
        .client
        .delete(format!("{}/v1/agents/sessions", server.url))
        .header(ORIGIN, &server.url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    // Another site cannot sign a browser out either.
    let (cookie, _) = sign_in(&server, "Sam", PASSWORD).await;
    with_cookie(
        &server,
        Method::DELETE,
        "/v1/agents/sessions",
        &cookie,
        Some("https://evil.example.com"),
        None,
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "cross_origin");
    assert_eq!(
        get_with_cookie(&server, "/v1/agents/sessions", &cookie)
            .await
            .status,
        StatusCode::OK
    );
}
