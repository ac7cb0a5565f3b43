//! No database transaction is held across a model call: while one reply's
//! model call hangs, the same server keeps writing at full speed — other
//! customers' messages post and get their replies, staff write into the
//! very thread being answered — and, on PostgreSQL, none of the server's
//! connections sits `idle in transaction` or holds a transaction begun
//! before the call.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;

/// How long the first reply's model call takes.
const STALL: Duration = Duration::from_secs(6);
/// Other customers posting during the stall.
const OTHERS: usize = 50;
/// The slowest write allowed during the stall: a write waiting for the
/// stalled run would take the rest of the stall.
const WRITE_BOUND: Duration = Duration::from_secs(2);
/// How long a connection may be idle inside a transaction (between two of
/// its statements) before a sample counts it, in milliseconds.
const IDLE_GRACE_MS: u32 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_stays_writable_while_a_model_call_stalls() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Sorry for the wait: your order ships today.").delay(STALL));
    llm.respond_with(|_| Reply::text("Answered at once."));
    let server = TestServer::with_ai(&llm, |config| {
        // The stalled call must not time out and retry within the test.
        config.ai.request_timeout_secs = 60;
        config.ai.first_token_timeout_secs = 60;
        config.ai.total_timeout_secs = 120;
    })
    .await;
    let postgres = server.db.is_postgres();
    let node = server.store.node().to_owned();
    let agent = server.agent("sam").await;

    // The threads and tokens of the others first: the writes measured
    // during the stall are the messages themselves.
    let mut others = Vec::new();
    for n in 0..OTHERS {
        let customer_id = format!("other-{n}");
        let thread = server.thread_for(&customer_id).await;
        let token = server.customer(&customer_id).await;
        others.push((thread, token));
    }
    let slow_thread = server.thread_for("slow").await;
    let slow_customer = server.customer("slow").await;
    let asked = server
        .post(
            &format!("/v1/threads/{slow_thread}/messages"),
            &slow_customer,
            json!({"content": "When does my order ship?"}),
        )
        .await;
    assert_eq!(asked.status, StatusCode::CREATED, "{}", asked.text);
    let asked_id = asked.body["id"].as_str().expect("id").to_owned();

    // The model has the request: the stall is on.
    llm.wait_for_chat_requests(1, Duration::from_secs(10)).await;
    let stall_seen = Instant::now();
    let stall_ends = stall_seen + STALL;
    // A transaction held across the call began before the request was
    // sent, so before this; one still open a moment later is the proof.
    let db_stall_seen = if postgres {
        Some(db_now(&server).await)
    } else {
        None
    };

    // Writes during the stall, all at once: 50 customer messages on other
    // threads, and staff writing into the thread being answered (its row
    // is what a reply transaction would lock).
    let posts = futures::stream::iter(others.iter().enumerate())
        .map(|(n, (thread, token))| {
            let server = &server;
            async move {
                let sent = Instant::now();
                let response = server
                    .post(
                        &format!("/v1/threads/{thread}/messages"),
                        token,
                        json!({"content": format!("Question number {n}")}),
                    )
                    .await;
                (response, sent.elapsed())
            }
        })
        .buffer_unordered(OTHERS)
        .collect::<Vec<_>>();
    let staff = async {
        let sent = Instant::now();
        let note = server
            .post(
                &format!("/v1/threads/{slow_thread}/messages"),
                &agent,
                json!({"content": "Checking the warehouse.", "visibility": "internal"}),
            )
            .await;
        let renamed = server
            .call(
                Method::PATCH,
                &format!("/v1/threads/{slow_thread}"),
                Some(&server.admin),
                Some(json!({"title": "Shipping date"})),
            )
            .await;
        (note, renamed, sent.elapsed())
    };
    let watch = async {
        let mut samples = Vec::new();
        if let Some(seen) = &db_stall_seen {
            // A transaction the server happened to be in when the stall was
            // noted lasts a few milliseconds, not this long.
            tokio::time::sleep(Duration::from_millis(50)).await;
            // While the writes run: sample the server's connections.
            for _ in 0..40 {
                samples.extend(old_transactions(&server, &node, seen).await);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        samples
    };
    let (posted, (note, renamed, staff_took), old) = {
        let (posted, staff, old) = tokio::join!(posts, staff, watch);
        (posted, staff, old)
    };
    let mut slowest = staff_took;
    for (response, took) in &posted {
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        slowest = slowest.max(*took);
    }
    assert_eq!(note.status, StatusCode::CREATED, "{}", note.text);
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert!(
        old.is_empty(),
        "transactions begun before the model call were still open during it: {old:#?}"
    );
    assert!(
        slowest < WRITE_BOUND,
        "a write took {slowest:?} during the stall"
    );

    // Every other customer gets the AI's reply while the call still hangs.
    let deadline = stall_ends - Duration::from_millis(500);
    loop {
        let replies = count(
            &server,
            "SELECT CAST(COUNT(*) AS TEXT) FROM messages WHERE role = 'assistant' \
             AND author_kind = 'ai' AND status = 'published'",
        )
        .await;
        if replies == OTHERS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{replies} of {OTHERS} other customers got their reply during the stall"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Quiet now, the call still pending: none of the server's connections
    // sits idle in a transaction. A transaction between two of its
    // statements is idle for microseconds, so a sighting counts when the
    // connection has been idle in it for longer than `IDLE_GRACE`.
    let mut idle_samples = 0;
    let mut brief_sightings = 0;
    if let Some(seen) = &db_stall_seen {
        for _ in 0..25 {
            let idle = idle_in_transaction(&server, &node).await;
            let lasting: Vec<&String> = idle.iter().filter(|s| s.starts_with("lasting")).collect();
            assert!(
                lasting.is_empty(),
                "the server's connections idle in a transaction during the model call: {idle:#?}"
            );
            brief_sightings += idle.len();
            for sighting in &idle {
                println!("reply_transactions: brief: {sighting}");
            }
            let old = old_transactions(&server, &node, seen).await;
            assert!(
                old.is_empty(),
                "a transaction begun before the model call is open during it: {old:#?}"
            );
            idle_samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        Instant::now() < stall_ends,
        "the checks must run while the call is pending; the stall is too short for this machine"
    );
    println!(
        "reply_transactions: {OTHERS} posts + a note + a rename during a {STALL:?} model call, \
         slowest {slowest:?}; {OTHERS} other replies published meanwhile; \
         {idle_samples} pg_stat_activity samples with nothing idle in transaction \
         ({brief_sightings} sightings between two statements, under {IDLE_GRACE_MS} ms)"
    );

    // The stalled reply lands once, after the stall, answering its message.
    let deadline = Instant::now() + STALL + Duration::from_secs(15);
    let reply = loop {
        let messages = server.messages(&slow_thread, &server.admin).await;
        let replies: Vec<&Value> = messages
            .iter()
            .filter(|m| m["role"] == "assistant" && m["author"]["kind"] == "ai")
            .collect();
        assert!(replies.len() <= 1, "{messages:#?}");
        if let Some(reply) = replies.first() {
            break (*reply).clone();
        }
        assert!(Instant::now() < deadline, "no reply: {messages:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(Instant::now() >= stall_ends - Duration::from_millis(100));
    assert_eq!(reply["reply_to"], asked_id.as_str());
    assert_eq!(
        reply["content"],
        "Sorry for the wait: your order ships today."
    );
    server.stop().await;
}

/// The database's clock, as text PostgreSQL reads back.
async fn db_now(server: &TestServer) -> String {
    server
        .db
        .query_strings("SELECT clock_timestamp()::text")
        .await
        .remove(0)
}

async fn count(server: &TestServer, sql: &str) -> usize {
    server.db.query_strings(sql).await[0]
        .parse()
        .expect("a count")
}

/// What a row of `pg_stat_activity` says, never null.
const ACTIVITY: &str = "COALESCE(pid::text || ' ' || state || ' in a transaction since ' || \
     xact_start::text || ', state since ' || state_change::text || ': ' || query, 'unknown')";

/// The server's connections (`application_name` = its store's node) in a
/// transaction begun before `before` (a PostgreSQL timestamp). Connections
/// reported `idle` are in no transaction of the client's: the hub's `LISTEN`
/// connection shows a stale `xact_start` (its last statement's) for the
/// instant PostgreSQL takes to read an incoming notification.
async fn old_transactions(server: &TestServer, node: &str, before: &str) -> Vec<String> {
    server
        .db
        .query_strings(&format!(
            "SELECT {ACTIVITY} FROM pg_stat_activity \
             WHERE application_name = '{node}' AND state <> 'idle' \
               AND xact_start < '{before}'::timestamptz"
        ))
        .await
}

/// The server's connections that are `idle in transaction`, each marked
/// `lasting` when it has been so for more than [`IDLE_GRACE_MS`].
async fn idle_in_transaction(server: &TestServer, node: &str) -> Vec<String> {
    server
        .db
        .query_strings(&format!(
            "SELECT CASE WHEN state_change < clock_timestamp() - interval '{IDLE_GRACE_MS} milliseconds' \
                    THEN 'lasting ' ELSE 'brief ' END || {ACTIVITY} \
             FROM pg_stat_activity \
             WHERE application_name = '{node}' AND state LIKE 'idle in transaction%'"
        ))
        .await
}
