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

/// Runs `tandem ARGS` with `input` on standard input.
fn run_with_input(db: &TestDb, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = tandem(db, args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tandem");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[tokio::test]
async fn an_admin_creates_inbox_accounts_and_widget_keys_the_pages_sign_in_with() {
    let db = TestDb::fresh().await;
    let created = run_with_input(
        &db,
        &["agent", "create", "--name", "Sam"],
        "correct horse battery\n",
    );
    assert!(created.status.success(), "{created:?}");
    // A second create does not overwrite the password.
    let again = run_with_input(
        &db,
        &["agent", "create", "--name", "Sam"],
        "other password\n",
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists"),
        "{again:?}"
    );
    let short = run_with_input(&db, &["agent", "create", "--name", "Kim"], "short\n");
    assert!(!short.status.success(), "a 5-character password is refused");

    let widget = run(
        &db,
        &["widget", "create", "--origin", "https://shop.example.com/"],
    );
    let key = widget
        .split_whitespace()
        .find(|word| word.starts_with("wk_"))
        .expect("the key is printed")
        .to_owned();
    let bad = tandem(&db, &["widget", "create", "--origin", "shop.example.com"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "an origin needs its scheme");
    let listed = run(&db, &["widget", "list"]);
    assert!(
        listed.contains(&key) && listed.contains("https://shop.example.com"),
        "{listed}"
    );
    assert!(!listed.contains("identity secret"), "{listed}");

    let served = serve(&db);
    let base = format!("http://{}", served.address);
    let client = reqwest::Client::new();
    let signed_in = client
        .post(format!("{base}/v1/agents/sessions"))
        .json(&json!({"name": "Sam", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 201);
    assert!(
        signed_in.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("HttpOnly")
    );
    let session = client
        .post(format!("{base}/v1/customers/sessions"))
        .header("origin", "https://shop.example.com")
        .json(&json!({"widget_key": key}))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 201);

    // Disabled: the account cannot sign in any more.
    run(&db, &["agent", "disable", "--name", "Sam"]);
    let refused = client
        .post(format!("{base}/v1/agents/sessions"))
        .json(&json!({"name": "Sam", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // The chat page and the inbox are in the binary.
    for page in ["/inbox", "/widget.js", &format!("/chat?key={key}")] {
        let response = client.get(format!("{base}{page}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        assert!(!response.text().await.unwrap().is_empty(), "{page}");
    }
    let (status, _) = served.terminate();
    assert!(status.success());
    db.drop().await;
}
