//! Workflows over HTTP: starting runs, events, pause/resume/cancel, the
//! `workflow:<id>` topic, signed hooks and resume URLs, and a restart.

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_tests::TestServer;
use tandem_workflows::{Registry, Wakeup, WorkflowDef};

#[derive(Debug, Deserialize)]
struct Order {
    order: u64,
}

fn payload(wakeup: Wakeup) -> Value {
    match wakeup {
        Wakeup::Event(payload) => payload,
        Wakeup::TimedOut => json!("timed out"),
    }
}

/// `fulfil`: three journaled steps, then a wait for `shipped`.
/// `approval`: mints a resume URL for `approve`, waits for `approve`, then
/// for `close` (so it is still running after its first event).
fn registry() -> Registry {
    let mut registry = Registry::new();
    registry.register(WorkflowDef::new(
        "fulfil",
        "1",
        |ctx, args: Order| async move {
            let mut steps = Vec::new();
            for step in ["reserve", "charge", "pack"] {
                let done: String = ctx
                    .run(step, move |info| async move {
                        Ok(format!("{step} #{}", info.attempt))
                    })
                    .await?;
                steps.push(done);
            }
            let shipped = payload(ctx.wait_for_event("shipped", None).await?);
            Ok(json!({"order": args.order, "steps": steps, "shipped": shipped}))
        },
    ));
    registry.register(WorkflowDef::new(
        "approval",
        "1",
        |ctx, _: Value| async move {
            ctx.resume_url("approve", Duration::from_secs(3600)).await?;
            let approve = payload(ctx.wait_for_event("approve", None).await?);
            let close = payload(ctx.wait_for_event("close", None).await?);
            Ok(json!({"approve": approve, "close": close}))
        },
    ));
    registry
}

fn id_of(state: &Value) -> String {
    state["id"].as_str().expect("run id").to_owned()
}

/// Starts `name` and waits until it waits for an event.
async fn waiting_run(server: &TestServer, name: &str, args: Value) -> (String, Value) {
    let id = id_of(&server.start_workflow(name, args).await);
    let state = server.wait_for_status(&id, "waiting").await;
    (id, state)
}

#[tokio::test]
async fn a_run_waits_for_its_event_then_completes_with_its_journal() {
    let server = TestServer::with_workflows(registry).await;
    let started = server.start_workflow("fulfil", json!({"order": 7})).await;
    assert_eq!(started["name"], "fulfil");
    assert_eq!(started["version"], "1");
    assert_eq!(started["args"], json!({"order": 7}));
    assert_eq!(started["journal"], json!([]), "{started:#}");
    let id = id_of(&started);

    let waiting = server.wait_for_status(&id, "waiting").await;
    assert_eq!(waiting["waiting_for"], "shipped");
    let steps: Vec<(&str, &str, &str)> = waiting["journal"]
        .as_array()
        .expect("journal")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default(),
                e["name"].as_str().unwrap_or_default(),
                e["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("run", "reserve", "completed"),
            ("run", "charge", "completed"),
            ("run", "pack", "completed"),
            ("wait_event", "shipped", "pending"),
        ]
    );

    let sent = server
        .send_event(&id, "shipped", json!({"carrier": "DHL"}))
        .await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    assert_eq!(sent.body["event"]["name"], "shipped");
    assert_eq!(sent.body["event"]["payload"], json!({"carrier": "DHL"}));
    assert_eq!(sent.body["event"]["source"], "api");
    assert_eq!(sent.body["run"]["id"], id.as_str());
    assert_eq!(sent.body["duplicate"], false);

    let done = server.wait_for_status(&id, "completed").await;
    assert_eq!(
        done["result"],
        json!({"order": 7, "steps": ["reserve #1", "charge #1", "pack #1"],
               "shipped": {"carrier": "DHL"}})
    );
    assert!(done["error"].is_null(), "{done:#}");
    assert!(done["finished_at"].is_string(), "{done:#}");
    let journal = done["journal"].as_array().expect("journal");
    assert_eq!(journal.len(), 4, "{done:#}");
    for (seq, entry) in journal.iter().enumerate() {
        assert_eq!(entry["seq"], seq as i64, "{entry}");
        assert_eq!(entry["status"], "completed", "{entry}");
        assert_eq!(entry["attempts"], 1, "{entry}");
        assert!(entry["started_at"].is_string(), "{entry}");
        assert!(entry["finished_at"].is_string(), "{entry}");
    }
    assert_eq!(journal[0]["output"], "reserve #1");
    assert_eq!(journal[3]["output"]["event"], json!({"carrier": "DHL"}));
    assert_eq!(done["pending_events"], json!([]));
    assert_eq!(done["consumed_events"][0]["name"], "shipped");
    assert_eq!(done["consumed_events"][0]["consumed_by"], 3);

    // A finished run takes no more events.
    server
        .send_event(&id, "shipped", Value::Null)
        .await
        .assert_error(StatusCode::CONFLICT, "run_finished");

    // Its end is counted once, under its workflow and status.
    let metrics = server
        .call(reqwest::Method::GET, "/metrics", None, None)
        .await;
    let text = metrics.text;
    let finished: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tandem_workflow_runs_finished_total{"))
        .collect();
    assert_eq!(
        finished,
        [r#"tandem_workflow_runs_finished_total{workflow="fulfil",status="completed"} 1"#],
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn starting_and_controlling_runs_answers_in_the_api_format() {
    let server = TestServer::with_workflows(registry).await;
    let customer = server.customer("c1").await;
    let agent = server.agent("alice").await;

    // Who, what and which.
    server
        .post("/v1/workflows", &server.admin, json!({"name": "nope"}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_workflow");
    server
        .post(
            "/v1/workflows",
            &server.admin,
            json!({"name": "fulfil", "args": {"order": "seven"}}),
        )
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_args");
    server
        .post(
            "/v1/workflows",
            &server.admin,
            json!({"name": "fulfil", "extra": 1}),
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    server
        .post(
            "/v1/workflows",
            &customer,
            json!({"name": "fulfil", "args": {"order": 1}}),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    for missing in [
        "/v1/workflows/not-a-run".to_owned(),
        format!("/v1/workflows/{}", uuid::Uuid::now_v7()),
    ] {
        server
            .get(&missing, &server.admin)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
        server
            .post(&format!("{missing}/pause"), &server.admin, json!({}))
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
        server
            .post(
                &format!("{missing}/events/go"),
                &server.admin,
                json!({"payload": 1}),
            )
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }

    // An agent may start runs; a retry with the same key is the first answer.
    let start = |key: &'static str| {
        let server = &server;
        let agent = agent.clone();
        async move {
            server
                .client
                .post(format!("{}/v1/workflows", server.url))
                .bearer_auth(agent)
                .header("idempotency-key", key)
                .json(&json!({"name": "fulfil", "args": {"order": 9}}))
                .send()
                .await
                .expect("request")
        }
    };
    let first = tandem_tests::Response::read(start("order-9").await).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let id = id_of(&first.body);
    server.wait_for_status(&id, "waiting").await;
    let again = tandem_tests::Response::read(start("order-9").await).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body, first.body, "a replay is the first answer");
    assert_eq!(again.headers["idempotent-replayed"], "true");

    // Customers can neither read nor steer a run.
    server
        .get(&format!("/v1/workflows/{id}"), &customer)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    for action in ["pause", "resume", "cancel"] {
        server
            .post(
                &format!("/v1/workflows/{id}/{action}"),
                &customer,
                json!({}),
            )
            .await
            .assert_error(StatusCode::FORBIDDEN, "forbidden");
    }
    server
        .post(
            &format!("/v1/workflows/{id}/events/shipped"),
            &customer,
            json!({"payload": 1}),
        )
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");

    // Event names.
    let long = "x".repeat(65);
    for bad in ["bad$name", long.as_str()] {
        server
            .send_event(&id, bad, Value::Null)
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_event_name");
    }

    // Pause, and the calls that do not fit the status.
    let control = |action: &'static str| {
        let server = &server;
        let id = id.clone();
        async move {
            server
                .post(
                    &format!("/v1/workflows/{id}/{action}"),
                    &server.admin,
                    json!({}),
                )
                .await
        }
    };
    control("resume")
        .await
        .assert_error(StatusCode::CONFLICT, "not_paused");
    let paused = control("pause").await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    assert_eq!(paused.body["status"], "paused");
    control("pause")
        .await
        .assert_error(StatusCode::CONFLICT, "already_paused");
    // An event for a paused run waits for the resume.
    let sent = server.send_event(&id, "shipped", json!("ups")).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    assert_eq!(sent.body["run"]["status"], "paused");
    let state = server.workflow_state(&id).await;
    assert_eq!(state["status"], "paused");
    assert_eq!(state["pending_events"][0]["name"], "shipped");
    let resumed = control("resume").await;
    assert_eq!(resumed.status, StatusCode::OK, "{}", resumed.text);
    let done = server.wait_for_status(&id, "completed").await;
    assert_eq!(done["result"]["shipped"], "ups");
    for action in ["pause", "resume", "cancel"] {
        control(action)
            .await
            .assert_error(StatusCode::CONFLICT, "run_finished");
    }

    // Cancel a waiting run.
    let (other, _) = waiting_run(&server, "fulfil", json!({"order": 10})).await;
    let cancelled = server
        .post(&format!("/v1/workflows/{other}/cancel"), &agent, json!({}))
        .await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.body["status"], "cancelled");
    server
        .send_event(&other, "shipped", Value::Null)
        .await
        .assert_error(StatusCode::CONFLICT, "run_finished");
    server.stop().await;
}

#[tokio::test]
async fn the_workflow_topic_streams_a_runs_changes_to_staff_only() {
    let server = TestServer::with_workflows(registry).await;
    let (id, _) = waiting_run(&server, "fulfil", json!({"order": 1})).await;
    let topic = format!("workflow:{id}");

    let agent = server.agent("alice").await;
    let mut ws = server.ws(&agent).await;
    let subscribed = ws.subscribe(&topic, None).await;
    assert_eq!(subscribed["topic"], topic.as_str());
    // At once, the run as it is.
    let now = ws.next().await;
    assert_eq!(now["type"], "workflow", "{now}");
    assert_eq!(now["run"]["id"], id.as_str());
    assert_eq!(now["run"]["status"], "waiting");
    assert_eq!(now["run"]["waiting_for"], "shipped");

    let sent = server.send_event(&id, "shipped", json!(true)).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    let mut statuses = Vec::new();
    while statuses.last().is_none_or(|s| s != "completed") {
        let frame = ws.next_of("workflow").await;
        assert_eq!(frame["run"]["id"], id.as_str(), "{frame}");
        statuses.push(
            frame["run"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("running"),
        "{statuses:?}"
    );
    let last = server.workflow_state(&id).await;
    assert_eq!(last["status"], "completed");

    // Customers are told the run does not exist, as is anyone asking for
    // a run that does not.
    let customer = server.customer("c1").await;
    let mut outsider = server.ws(&customer).await;
    for topic in [topic.clone(), format!("workflow:{}", uuid::Uuid::now_v7())] {
        outsider
            .send(json!({"type": "subscribe", "topic": topic}))
            .await;
        let refused = outsider.next().await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["code"], "not_found", "{refused}");
        assert_eq!(refused["topic"], topic.as_str(), "{refused}");
    }
    ws.send(json!({"type": "subscribe", "topic": format!("workflow:{}", uuid::Uuid::now_v7())}))
        .await;
    assert_eq!(ws.next_of("error").await["code"], "not_found");
    server.stop().await;
}

#[tokio::test]
async fn a_signed_hook_delivers_an_event_once_and_a_bad_signature_changes_nothing() {
    let server = TestServer::with_workflows(registry).await;
    let (id, before) = waiting_run(&server, "approval", Value::Null).await;
    assert_eq!(before["waiting_for"], "approve");
    let path = format!("/v1/hooks/workflows/{id}/events/approve");
    let body = br#"{"by": "billing"}"#;

    // Refused: no signature, a signature of something else, a forged one,
    // an old one.
    let signed = server.hook_headers(&id, "approve", body);
    let for_other_body = server.hook_headers(&id, "approve", br#"{"by": "mallory"}"#);
    let for_other_event = server.hook_headers(&id, "close", body);
    let forged = vec![
        signed[0].clone(),
        (
            "tandem-signature".to_owned(),
            format!("v1={}", "0".repeat(64)),
        ),
    ];
    let garbled = vec![
        signed[0].clone(),
        ("tandem-signature".to_owned(), "sha256=abc".to_owned()),
    ];
    let old = chrono::Utc::now().timestamp() - 301;
    let run_id = id.parse().expect("run id");
    let stale = vec![
        ("tandem-timestamp".to_owned(), old.to_string()),
        (
            "tandem-signature".to_owned(),
            server
                .engine
                .signer()
                .hook_signature(old, run_id, "approve", body),
        ),
    ];
    for (headers, code) in [
        (vec![], "invalid_signature"),
        (for_other_body, "invalid_signature"),
        (for_other_event, "invalid_signature"),
        (forged, "invalid_signature"),
        (garbled, "invalid_signature"),
        (stale, "stale_signature"),
    ] {
        server
            .post_unsigned(&path, &headers, body)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, code);
    }
    // Well signed, but not JSON: refused in the API's format.
    let not_json = b"{by: billing";
    server
        .post_unsigned(
            &path,
            &server.hook_headers(&id, "approve", not_json),
            not_json,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    let unchanged = server.workflow_state(&id).await;
    assert_eq!(unchanged["status"], "waiting");
    assert_eq!(unchanged["updated_at"], before["updated_at"]);
    assert_eq!(unchanged["pending_events"], json!([]));
    assert_eq!(unchanged["consumed_events"], json!([]));

    // Delivered once, however often it is redelivered.
    let accepted = server.post_unsigned(&path, &signed, body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
    assert_eq!(accepted.body["duplicate"], false);
    assert_eq!(accepted.body["run_id"], id.as_str());
    let event_id = accepted.body["event_id"].clone();
    let again = server.post_unsigned(&path, &signed, body).await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    assert_eq!(again.body["duplicate"], true);
    assert_eq!(again.body["event_id"], event_id);
    // The delivery woke the run before it was answered: it is running, or
    // already waiting for its next event.
    let state = server.wait_for_status(&id, "waiting").await;
    assert_eq!(state["waiting_for"], "close", "{state:#}");
    let consumed = state["consumed_events"].as_array().expect("events");
    assert_eq!(consumed.len(), 1, "{state:#}");
    assert_eq!(consumed[0]["source"], "hook");
    assert_eq!(consumed[0]["payload"], json!({"by": "billing"}));

    // An empty body is a null payload.
    let closed = server
        .post_unsigned(
            &format!("/v1/hooks/workflows/{id}/events/close"),
            &server.hook_headers(&id, "close", b""),
            b"",
        )
        .await;
    assert_eq!(closed.status, StatusCode::ACCEPTED, "{}", closed.text);
    let done = server.wait_for_status(&id, "completed").await;
    assert_eq!(
        done["result"],
        json!({"approve": {"by": "billing"}, "close": null})
    );
    server.stop().await;
}

#[tokio::test]
async fn a_resume_url_works_once_and_expires() {
    let server = TestServer::with_workflows(registry).await;
    let resume_url = |state: &Value| {
        let entry = state["journal"]
            .as_array()
            .expect("journal")
            .iter()
            .find(|e| e["kind"] == "resume_url")
            .cloned()
            .expect("a resume_url step");
        entry["output"]["url"].as_str().expect("url").to_owned()
    };

    let (id, state) = waiting_run(&server, "approval", Value::Null).await;
    let url = resume_url(&state);
    assert!(
        url.starts_with(&format!(
            "{}/v1/hooks/workflows/{id}/events/approve?",
            server.url
        )),
        "{url}"
    );
    let tampered = url.replace("step=0", "step=1");
    server
        .post_unsigned(&tampered, &[], b"{}")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_signature");
    let used = server.post_unsigned(&url, &[], br#"{"ok": true}"#).await;
    assert_eq!(used.status, StatusCode::ACCEPTED, "{}", used.text);
    server
        .post_unsigned(&url, &[], br#"{"ok": true}"#)
        .await
        .assert_error(StatusCode::CONFLICT, "already_used");
    let state = server.workflow_state(&id).await;
    let events = [
        state["pending_events"].as_array().expect("pending").len(),
        state["consumed_events"].as_array().expect("consumed").len(),
    ];
    assert_eq!(events.iter().sum::<usize>(), 1, "{state:#}");

    // Another run's URL, used after it expired.
    let (late, state) = waiting_run(&server, "approval", Value::Null).await;
    let url = resume_url(&state);
    server.clock().advance(Duration::from_secs(2 * 3600));
    server
        .post_unsigned(&url, &[], b"{}")
        .await
        .assert_error(StatusCode::GONE, "expired");
    let state = server.workflow_state(&late).await;
    assert_eq!(state["status"], "waiting");
    assert_eq!(state["pending_events"], json!([]));
    server.stop().await;
}

#[tokio::test]
async fn a_waiting_run_goes_on_after_a_restart() {
    let mut server = TestServer::with_workflows(registry).await;
    let (id, _) = waiting_run(&server, "fulfil", json!({"order": 3})).await;
    server.restart().await;
    let sent = server.send_event(&id, "shipped", json!("after")).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{}", sent.text);
    let done = server.wait_for_status(&id, "completed").await;
    assert_eq!(done["result"]["shipped"], "after");
    assert_eq!(done["result"]["steps"][0], "reserve #1", "steps ran once");
    server.stop().await;
}

/// PostgreSQL: another process's changes to a run reach this one's
/// subscribers, and a run another process creates is taken up here at once
/// (the signal wakes the dispatcher; its poll is a minute away). On SQLite,
/// one process owns the database: nothing to test.
#[tokio::test]
async fn another_processs_run_changes_reach_this_one() {
    let server = TestServer::with_workflows_and(
        |config| config.workflows.engine.poll_interval_ms = 60_000,
        registry,
    )
    .await;
    if !server.db.is_postgres() {
        server.stop().await;
        return;
    }
    let other = tandem_store::Store::connect(&server.db.options())
        .await
        .expect("a second process's store");
    assert_ne!(other.node(), server.store.node());

    let (id, _) = waiting_run(&server, "fulfil", json!({"order": 5})).await;
    let agent = server.agent("alice").await;
    let mut ws = server.ws(&agent).await;
    ws.subscribe(&format!("workflow:{id}"), None).await;
    assert_eq!(ws.next_of("workflow").await["run"]["status"], "waiting");
    let paused = other
        .pause_run(id.parse().expect("run id"))
        .await
        .expect("pause from the other process");
    assert_eq!(paused.status, tandem_model::RunStatus::Paused);
    let frame = ws.next_of("workflow").await;
    assert_eq!(frame["run"]["status"], "paused", "{frame}");

    let now = tandem_store::micros(tandem_store::Clock::now(server.clock().as_ref()));
    let created = other
        .create_run(
            tandem_model::NewRun {
                name: "fulfil".into(),
                version: "1".into(),
                args: json!({"order": 6}),
                has_on_complete: false,
            },
            now,
            None,
            None,
        )
        .await
        .expect("a run created by the other process");
    let state = server
        .wait_for_status(&created.value.id.to_string(), "waiting")
        .await;
    assert_eq!(state["journal"].as_array().map(Vec::len), Some(4));
    other.close().await;
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_describes_the_workflow_routes() {
    let server = TestServer::start().await;
    let doc = server
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths = &doc.body["paths"];
    for (path, method, status) in [
        ("/v1/workflows", "post", "201"),
        ("/v1/workflows/{id}", "get", "200"),
        ("/v1/workflows/{id}/pause", "post", "200"),
        ("/v1/workflows/{id}/resume", "post", "200"),
        ("/v1/workflows/{id}/cancel", "post", "200"),
        ("/v1/workflows/{id}/events/{name}", "post", "202"),
        ("/v1/hooks/workflows/{id}/events/{name}", "post", "202"),
    ] {
        let operation = &paths[path][method];
        assert!(
            operation["responses"][status].is_object(),
            "{method} {path} documents {status}: {operation:#}"
        );
    }
    assert!(
        paths["/v1/workflows"]["post"]["security"].is_array(),
        "workflows take a token"
    );
    assert!(
        paths["/v1/hooks/workflows/{id}/events/{name}"]["post"]["security"].is_null(),
        "hooks take a signature, not a token"
    );
    server.stop().await;
}

#[tokio::test]
async fn hooks_are_rate_limited_and_size_limited_like_anonymous_requests() {
    let server = TestServer::with_workflows_and(
        |config| {
            config.rate_limits.anonymous.per_second = 1;
            config.rate_limits.anonymous.burst = 2;
            config.limits.max_body_bytes = 1024;
        },
        registry,
    )
    .await;
    let (id, _) = waiting_run(&server, "approval", Value::Null).await;
    let path = format!("/v1/hooks/workflows/{id}/events/approve");
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2048));
    server
        .post_unsigned(
            &path,
            &server.hook_headers(&id, "approve", big.as_bytes()),
            big.as_bytes(),
        )
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    server
        .post_unsigned(&path, &[], b"{}")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "invalid_signature");
    let limited = server.post_unsigned(&path, &[], b"{}").await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.headers.contains_key("retry-after"));
    // Tokens have their own buckets.
    assert_eq!(
        server
            .get(&format!("/v1/workflows/{id}"), &server.admin)
            .await
            .status,
        StatusCode::OK
    );
    server.stop().await;
}
