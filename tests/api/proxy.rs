//! Tandem behind a real reverse proxy: nginx on loopback
//! ([`tandem_tests::nginx`]), appending the address it sees to
//! `X-Forwarded-For`. Visitors are told apart by their source address:
//! every one of 127.0.0.0/8 is this machine, so a client bound to
//! 127.0.1.7 reaches nginx from there, as a visitor from another network
//! would. nginx itself reaches Tandem from 127.0.0.1, the one trusted
//! proxy.

use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_tests::TestServer;
use tandem_tests::nginx::Nginx;
use tandem_tests::ws::WsClient;

/// An HTTP client whose connections leave from `address`.
fn visitor(address: &str) -> reqwest::Client {
    let address: IpAddr = address.parse().expect("an address");
    reqwest::Client::builder()
        .local_address(address)
        .build()
        .expect("client")
}

/// A chat visitor's session start (an anonymous request: the per-address
/// rate limit), with extra headers.
async fn start_session(
    client: &reqwest::Client,
    base: &str,
    widget_key: &str,
    headers: &[(&str, String)],
) -> StatusCode {
    let mut request = client
        .post(format!("{base}/v1/customers/sessions"))
        .json(&json!({"widget_key": widget_key}));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("request").status()
}

/// A server that believes nginx (127.0.0.1), with an anonymous limit of 3
/// at once and 1 a second.
async fn behind_nginx(configure: impl FnOnce(&mut tandem_server::Config)) -> (TestServer, Nginx) {
    let server = TestServer::start_with(|config| {
        config.connections.trusted_proxies = vec!["127.0.0.1".parse().expect("address")];
        config.rate_limits.anonymous.per_second = 1;
        config.rate_limits.anonymous.burst = 3;
        configure(config);
    })
    .await;
    let nginx = Nginx::start(&server.url).await;
    (server, nginx)
}

fn count(statuses: &[StatusCode], status: StatusCode) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test]
async fn behind_nginx_each_visitor_has_its_own_bucket_and_is_still_limited() {
    let (server, nginx) = behind_nginx(|_| {}).await;
    let key = server.widget_key(&[], false).await;
    // 30 visitors start 3 chat sessions each: 90 through one proxy, where
    // one shared bucket would refuse all but the first few.
    for i in 1..=30 {
        let client = visitor(&format!("127.0.1.{i}"));
        for attempt in 1..=3 {
            let status = start_session(&client, &nginx.url, &key.key, &[]).await;
            assert_eq!(
                status,
                StatusCode::CREATED,
                "visitor {i}, attempt {attempt}"
            );
        }
    }
    // One of them keeps going: its own bucket runs dry.
    let eager = visitor("127.0.1.1");
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(start_session(&eager, &nginx.url, &key.key, &[]).await);
    }
    assert!(
        count(&statuses, StatusCode::TOO_MANY_REQUESTS) >= 6,
        "the visitor is limited: {statuses:?}"
    );
    // A new visitor is not.
    let neighbour = visitor("127.0.1.31");
    let status = start_session(&neighbour, &nginx.url, &key.key, &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    nginx.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_forged_forwarding_header_changes_no_bucket() {
    let (server, nginx) = behind_nginx(|_| {}).await;
    let key = server.widget_key(&[], false).await;
    // Through nginx: the forger's own header stays on the left of the
    // address nginx appends, which is the one believed.
    let forger = visitor("127.0.2.1");
    let mut statuses = Vec::new();
    for i in 0..12 {
        let forged = [("x-forwarded-for", format!("198.51.100.{i}"))];
        statuses.push(start_session(&forger, &nginx.url, &key.key, &forged).await);
    }
    assert!(
        count(&statuses, StatusCode::TOO_MANY_REQUESTS) >= 6,
        "one bucket, whatever the header says: {statuses:?}"
    );
    // Straight to Tandem, from a peer that is not a trusted proxy: the
    // header is not read at all.
    let direct = visitor("127.0.2.2");
    let mut statuses = Vec::new();
    for i in 0..12 {
        let forged = [
            ("x-forwarded-for", format!("198.51.100.{i}")),
            ("forwarded", format!("for=198.51.100.{i}")),
        ];
        statuses.push(start_session(&direct, &server.url, &key.key, &forged).await);
    }
    assert!(
        count(&statuses, StatusCode::TOO_MANY_REQUESTS) >= 6,
        "an untrusted peer is its own bucket: {statuses:?}"
    );
    nginx.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn trusted_hops_in_the_chain_are_skipped() {
    // An outer proxy (a CDN at 127.0.0.9, trusted too) in front of nginx
    // names the visitor; nginx appends the CDN's address.
    let (server, nginx) = behind_nginx(|config| {
        config
            .connections
            .trusted_proxies
            .push("127.0.0.9".parse().unwrap());
    })
    .await;
    let key = server.widget_key(&[], false).await;
    let cdn = visitor("127.0.0.9");
    for i in 1..=10 {
        let named = [("x-forwarded-for", format!("203.0.113.{i}"))];
        for _ in 0..3 {
            let status = start_session(&cdn, &nginx.url, &key.key, &named).await;
            assert_eq!(status, StatusCode::CREATED, "visitor 203.0.113.{i}");
        }
    }
    let named = [("x-forwarded-for", "203.0.113.1".to_owned())];
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(start_session(&cdn, &nginx.url, &key.key, &named).await);
    }
    assert!(
        count(&statuses, StatusCode::TOO_MANY_REQUESTS) >= 6,
        "the named visitor is limited: {statuses:?}"
    );
    nginx.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_secure_cookie_follows_a_trusted_proxys_word_only() {
    let (server, nginx) = behind_nginx(|config| {
        config.rate_limits.anonymous.per_second = 0;
    })
    .await;
    server.agent_account("Sam", "a long passphrase").await;
    let sign_in = |client: reqwest::Client, base: String| async move {
        let response = client
            .post(format!("{base}/v1/agents/sessions"))
            .header("x-forwarded-proto", "https")
            .json(&json!({"name": "Sam", "password": "a long passphrase"}))
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), StatusCode::CREATED);
        response.headers()["set-cookie"]
            .to_str()
            .expect("cookie")
            .to_owned()
    };
    // nginx says https (it stands for a TLS proxy): the cookie is Secure.
    let proxied = sign_in(visitor("127.0.3.1"), nginx.url.clone()).await;
    assert!(proxied.contains("Secure"), "{proxied}");
    // A client that says it itself: not believed.
    let direct = sign_in(visitor("127.0.3.2"), server.url.clone()).await;
    assert!(!direct.contains("Secure"), "{direct}");
    nginx.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn websockets_work_through_nginx_and_the_proxy_is_not_held_to_the_per_address_cap() {
    let (server, nginx) = behind_nginx(|config| {
        config.connections.max_per_address = 2;
    })
    .await;
    let thread = server.thread_for("alice").await;
    let mut sockets = Vec::new();
    // Five sockets, all arriving from nginx's one address.
    for _ in 0..5 {
        let mut socket = WsClient::connect(&nginx.ws_url(), Some(&server.admin), None)
            .await
            .expect("upgrade through nginx");
        let subscribed = socket.subscribe(&format!("thread:{thread}"), None).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
        sockets.push(socket);
    }
    let seq = server.post_text(&thread, "through the proxy").await;
    for socket in &mut sockets {
        let frame: Value = socket.next_of("message").await;
        assert_eq!(frame["seq"], seq, "{frame}");
        assert_eq!(frame["message"]["content"], "through the proxy", "{frame}");
    }
    for socket in sockets {
        socket.close().await;
    }
    assert!(
        !nginx.error_log().contains("[error]"),
        "{}",
        nginx.error_log()
    );
    nginx.stop().await;
    server.stop().await;
}

/// Everything the server logs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_request_span_names_the_visitor_not_the_proxy() {
    // One-thread runtime: a thread-local subscriber sees what the server
    // logs (as in the WebSocket log test).
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let guard = tracing::subscriber::set_default(subscriber);
    let (server, nginx) = behind_nginx(|_| {}).await;
    let response = visitor("127.0.6.7")
        .get(format!("{}/healthz", nginx.url))
        .header("x-forwarded-for", "198.51.100.66")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    nginx.stop().await;
    server.stop().await;
    drop(guard);
    let text =
        String::from_utf8_lossy(&logs.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("path=/healthz"))
        .unwrap_or_else(|| panic!("no request span in the logs:\n{text}"));
    assert!(line.contains("client=127.0.6.7"), "{line}");
    assert!(
        !text.contains("198.51.100.66"),
        "a forged address is never logged"
    );
}
