//! Hostile and careless connections: heads that never end, sockets that say
//! nothing, bodies that trickle, too many sockets from one address or in
//! all, heads too large. Each is closed or refused, and the server goes on
//! answering everyone else. Waits are generous (a loaded 2-core machine):
//! what is asserted is that a socket ends, not when to the millisecond.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use tandem_tests::TestServer;
use tandem_tests::raw::{self, Closed};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long a socket the server should close may take to be closed, past
/// its timeout.
const SLACK: Duration = Duration::from_secs(10);

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: tandem.test\r\n\r\n")
}

async fn healthz(stream: &mut TcpStream) -> Option<raw::RawResponse> {
    raw::exchange(stream, &get("/healthz"), SLACK).await
}

#[track_caller]
fn assert_closed(closed: Option<Closed>, what: &str) -> Closed {
    closed.unwrap_or_else(|| panic!("{what}: still open"))
}

#[tokio::test]
async fn a_socket_that_never_sends_a_whole_head_is_closed() {
    let server = TestServer::start_with(|config| {
        config.connections.header_timeout_secs = 1;
        config.connections.idle_timeout_secs = 300;
    })
    .await;
    // Says nothing at all.
    let mut silent = raw::connect(&server.url).await;
    // Sends a head a line at a time and never finishes it (slowloris).
    let mut trickling = raw::connect(&server.url).await;
    trickling
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tandem.test\r\n")
        .await
        .unwrap();
    // A line every 200 ms until writing fails (at most 40 s).
    let trickle = tokio::spawn(async move {
        let mut lines = 0;
        while lines < 200 {
            let line = format!("X-Padding-{lines}: a\r\n");
            if trickling.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            lines += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (trickling, lines)
    });

    let closed = assert_closed(
        raw::wait_for_close(&mut silent, Duration::from_secs(1) + SLACK).await,
        "a silent socket",
    );
    assert!(closed.received.is_empty(), "{}", closed.text());
    let (mut trickling, lines) = trickle.await.unwrap();
    assert!(lines < 200, "the trickling head was never cut off");
    assert_closed(
        raw::wait_for_close(&mut trickling, SLACK).await,
        "a trickling head",
    );

    // A client that sends its request at once is answered as ever.
    let mut good = raw::connect(&server.url).await;
    let answer = healthz(&mut good).await.expect("answered");
    assert_eq!(answer.status, 200, "{answer:?}");
    let metrics = server.get("/metrics", &server.admin).await.text;
    assert!(
        metrics.contains(r#"tandem_connections_closed_total{reason="header_timeout"}"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_waits_longer_than_a_head_may_take_then_goes() {
    let server = TestServer::start_with(|config| {
        config.connections.header_timeout_secs = 1;
        config.connections.idle_timeout_secs = 5;
    })
    .await;
    let mut socket = raw::connect(&server.url).await;
    assert_eq!(healthz(&mut socket).await.expect("first").status, 200);
    // Idle for longer than a head may take: the connection is kept.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = healthz(&mut socket)
        .await
        .expect("the idle connection still serves");
    assert_eq!(second.status, 200);
    // Then left idle, it is closed.
    assert_closed(
        raw::wait_for_close(&mut socket, Duration::from_secs(5) + SLACK).await,
        "an idle keep-alive connection",
    );
    server.stop().await;
}

#[tokio::test]
async fn a_body_that_trickles_is_answered_408_and_the_connection_closed() {
    let server = TestServer::start_with(|config| {
        config.connections.body_timeout_secs = 1;
    })
    .await;
    let mut socket = raw::connect(&server.url).await;
    let head = format!(
        "POST /v1/threads HTTP/1.1\r\nHost: tandem.test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"customer_id\"",
        server.admin
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let closed = assert_closed(
        raw::wait_for_close(&mut socket, Duration::from_secs(1) + SLACK).await,
        "a trickling body",
    );
    let text = closed.text();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"body_timeout""#), "{text}");
    // Nothing was created.
    let threads = server.get("/v1/threads", &server.admin).await;
    assert_eq!(threads.body["threads"], json!([]), "{}", threads.text);
    server.stop().await;
}

#[tokio::test]
async fn an_open_websocket_is_not_idle() {
    let server = TestServer::start_with(|config| {
        config.connections.header_timeout_secs = 1;
        config.connections.idle_timeout_secs = 1;
    })
    .await;
    let mut socket = server.ws(&server.admin).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    socket.send(json!({"type": "ping"})).await;
    assert_eq!(socket.next_of("pong").await["type"], "pong");
    server.stop().await;
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_sockets_others_are_served() {
    let server = TestServer::start_with(|config| {
        config.connections.max_per_address = 4;
        config.connections.header_timeout_secs = 60;
    })
    .await;
    let crowd: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(raw::connect_from(crowd, &server.url).await);
    }
    // This one is over the share.
    let mut fifth = raw::connect_from(crowd, &server.url).await;
    let refused = assert_closed(
        raw::wait_for_close(&mut fifth, SLACK).await,
        "a socket over the share",
    );
    let text = refused.text();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503"),
        "refused with 503 or closed: {text}"
    );
    // The held sockets are untouched, and serve.
    let answer = healthz(&mut held[0]).await.expect("a held socket serves");
    assert_eq!(answer.status, 200);
    // Another address is served.
    let mut other = raw::connect_from("127.0.0.3".parse().unwrap(), &server.url).await;
    assert_eq!(healthz(&mut other).await.expect("another").status, 200);
    // One socket closed makes room for one.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut socket = raw::connect_from(crowd, &server.url).await;
        if let Some(answer) = healthz(&mut socket).await {
            again = Some(answer);
            break;
        }
        // The server may not have seen the close yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again.expect("room again").status, 200);
    let metrics = server.get("/metrics", &server.admin).await.text;
    assert!(
        metrics.contains(r#"tandem_connections_closed_total{reason="per_address"}"#),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn unlimited_addresses_and_trusted_proxies_are_not_held_to_the_share() {
    let server = TestServer::start_with(|config| {
        config.connections.max_per_address = 2;
        config.connections.header_timeout_secs = 60;
        config.connections.unlimited_addresses = vec!["127.0.0.4".parse().unwrap()];
        config.connections.trusted_proxies = vec!["127.0.0.5".parse().unwrap()];
    })
    .await;
    for address in ["127.0.0.4", "127.0.0.5"] {
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(raw::connect_from(address.parse().unwrap(), &server.url).await);
        }
        for socket in &mut held {
            let answer = healthz(socket).await.expect("served");
            assert_eq!(answer.status, 200, "{address}: {answer:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn over_capacity_new_sockets_are_refused_and_open_ones_go_on() {
    let server = TestServer::start_with(|config| {
        config.connections.max_open = 6;
        config.connections.header_timeout_secs = 60;
    })
    .await;
    // One client with a connection in use, and five that hold one each.
    let mut working = raw::connect(&server.url).await;
    assert_eq!(healthz(&mut working).await.expect("first").status, 200);
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(raw::connect(&server.url).await);
    }
    // Everyone else is refused at once, and none of them stalls the rest.
    let mut refused = Vec::new();
    for _ in 0..20 {
        refused.push(raw::connect(&server.url).await);
    }
    for socket in &mut refused {
        assert_closed(raw::wait_for_close(socket, SLACK).await, "over capacity");
    }
    for _ in 0..5 {
        let answer = healthz(&mut working)
            .await
            .expect("an open connection goes on");
        assert_eq!(answer.status, 200);
    }
    // Room again once some go.
    idle.clear();
    let mut fresh = None;
    for _ in 0..50 {
        let mut socket = raw::connect(&server.url).await;
        if let Some(answer) = healthz(&mut socket).await {
            fresh = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fresh.expect("room again").status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_request_head_over_the_limit_is_refused_with_431() {
    let server = TestServer::start().await;
    // 8 KiB of headers pass.
    let mut socket = raw::connect(&server.url).await;
    let fine = format!(
        "GET /healthz HTTP/1.1\r\nHost: tandem.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    let answer = raw::exchange(&mut socket, &fine, SLACK)
        .await
        .expect("answered");
    assert_eq!(answer.status, 200);
    // 100 KB do not: 431, or (when the server stops reading first) a closed
    // connection; never an answer to the request.
    let mut socket = raw::connect(&server.url).await;
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: tandem.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    // The server may close before it has read it all.
    let _ = socket.write_all(huge.as_bytes()).await;
    let closed = assert_closed(raw::wait_for_close(&mut socket, SLACK).await, "a huge head");
    let text = closed.text();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    // As many small headers: the same.
    let mut socket = raw::connect(&server.url).await;
    let many: String = (0..2000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let _ = socket
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes())
        .await;
    let closed = assert_closed(
        raw::wait_for_close(&mut socket, SLACK).await,
        "many headers",
    );
    let text = closed.text();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    server.stop().await;
}
