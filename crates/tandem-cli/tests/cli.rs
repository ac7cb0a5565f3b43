//! The `tandem` binary as an operator runs it: migrate, mint tokens, serve,
//! the one-time admin token, and a clean stop on SIGTERM. Runs on the backend
//! the suite is pointed at (`TANDEM_TEST_DATABASE_URL`), like every test.

#[path = "support/process.rs"]
mod process;

use serde_json::json;
use tandem_tests::{Response, TestDb};

use process::{run, secret_in, serve, tandem};

#[tokio::test]
async fn migrate_mint_serve_and_stop_on_sigterm() {
    let db = TestDb::fresh().await;
    assert_eq!(run(&db, &["migrate"]).trim(), "migrations applied");
    let agent = run(&db, &["token", "create", "agent", "--name", "Sam"]);
    let agent = agent.trim();
    assert!(agent.starts_with("tdm_"), "{agent}");
    let customer = run(
        &db,
        &["token", "create", "customer", "--customer-id", "alice"],
    );

    // First start: a one-time admin token is printed (and works).
    let served = serve(&db);
    let admin = secret_in(&served.stdout).expect("the first start prints an admin token");
    let client = reqwest::Client::new();
    let base = format!("http://{}", served.address);
    let thread = Response::read(
        client
            .post(format!("{base}/v1/threads"))
            .bearer_auth(&admin)
            .json(&json!({"customer_id": "alice"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let thread = thread.body["id"].as_str().expect("thread id").to_owned();
    for (token, body) in [
        (customer.trim(), json!({"content": "Hello"})),
        (agent, json!({"content": "Hi Alice"})),
    ] {
        let posted = client
            .post(format!("{base}/v1/threads/{thread}/messages"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 201);
    }
    let (status, messages) = served.terminate();
    assert!(status.success(), "a clean exit on SIGTERM: {status:?}");
    assert!(messages.iter().any(|m| m == "stopped"), "{messages:?}");

    // Second start: no new admin token; the data and the tokens are still there.
    let served = serve(&db);
    assert_eq!(secret_in(&served.stdout), None, "{:?}", served.stdout);
    let page = Response::read(
        client
            .get(format!(
                "http://{}/v1/threads/{thread}/messages",
                served.address
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let seqs: Vec<_> = page.body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}

#[tokio::test]
async fn a_bad_configuration_is_refused_with_a_clear_error() {
    let db = TestDb::fresh().await;
    let output = tandem(&db, &["--config", "/nonexistent/tandem.toml", "migrate"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
    let output = tandem(&db, &["serve"])
        .env("TANDEM_LIMITS__MAX_BODY", "5")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_body"));
    db.drop().await;
}
