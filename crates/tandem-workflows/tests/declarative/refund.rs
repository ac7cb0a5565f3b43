//! The refund example, `examples/workflows/refund.toml` itself, with its
//! URL pointed at a small HTTP server on loopback standing in for the
//! system it calls (the "payments system"); and what any definition does:
//! loops, versions, loading.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde_json::{Value, json};
use tandem_model::{
    AssignedTo, AuthorKind, EventSource, RunId, RunStatus, StepStatus, ThreadId, Visibility,
};
use tandem_store::Clock;
use tandem_workflows::declarative::{DefinitionError, MAX_EXECUTED_STEPS, Services};
use tandem_workflows::engine::RunState;
use tandem_workflows::{Registry, Signer, load_definitions};
use tokio_util::task::AbortOnDropHandle;

use crate::support::{self, PUBLIC_URL, assert_mentions, journal, step, text};

const EXAMPLE: &str = include_str!("../../../../examples/workflows/refund.toml");
const EXAMPLE_URL: &str = "https://payments.example.com/v1/refund-requests";

/// One request the payments system received.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// The payments system: answers each request with the next queued status
/// (then 201 with a reference), and remembers every request.
#[derive(Default)]
struct Payments {
    received: Mutex<Vec<Received>>,
    answers: Mutex<VecDeque<u16>>,
}

async fn refund_requests(
    State(payments): State<Arc<Payments>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    payments
        .received
        .lock()
        .expect("not poisoned")
        .push(Received { headers, body });
    let status = payments
        .answers
        .lock()
        .expect("not poisoned")
        .pop_front()
        .unwrap_or(201);
    let status = StatusCode::from_u16(status).expect("a status");
    if status.is_success() {
        (status, axum::Json(json!({"reference": "R-7"}))).into_response()
    } else {
        (status, "not now").into_response()
    }
}

/// The payments system, stopped when the test ends, passed or not.
struct Remote {
    payments: Arc<Payments>,
    _server: AbortOnDropHandle<()>,
}

type Harness = support::Harness<Remote>;

impl Harness {
    /// A store, the payments system answering `answers` first, the refund
    /// example (plus `extra` files, `{base_url}` its address) loaded, and a
    /// started engine.
    async fn start(answers: &[u16], extra: &[(&str, &str)]) -> Self {
        let payments = Arc::new(Payments::default());
        payments
            .answers
            .lock()
            .expect("not poisoned")
            .extend(answers);
        let app = Router::new()
            .route("/v1/refund-requests", post(refund_requests))
            .with_state(payments.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let server = AbortOnDropHandle::new(tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        }));

        let refund = EXAMPLE.replace(EXAMPLE_URL, &format!("{base_url}/v1/refund-requests"));
        assert_ne!(refund, EXAMPLE, "the example calls {EXAMPLE_URL}");
        let mut files = vec![("refund.toml", refund)];
        files.extend(
            extra
                .iter()
                .map(|(name, source)| (*name, source.replace("{base_url}", &base_url))),
        );
        let remote = Remote {
            payments,
            _server: server,
        };
        Self::launch(&files, Services::default(), remote).await
    }

    /// A new thread and a refund run for it.
    async fn start_refund(&self) -> (ThreadId, RunId) {
        let thread = self.thread().await;
        let args = json!({"thread_id": thread, "order_id": "A-1042", "amount": "49.90"});
        (thread, self.start_run("refund", args).await)
    }

    async fn until_waiting_for_decision(&self, run: RunId) -> RunState {
        self.until(run, "the run to wait for the decision", |s| {
            s.run.status == RunStatus::Waiting
                && s.run.waiting_for.as_deref() == Some("manager_decision")
        })
        .await
    }

    async fn decide(&self, run: RunId, decision: Value) {
        self.engine
            .deliver_event(run, "manager_decision", decision, EventSource::Api, None)
            .await
            .expect("deliver the decision");
    }

    fn received(&self) -> Vec<Received> {
        self.remote
            .payments
            .received
            .lock()
            .expect("not poisoned")
            .clone()
    }
}

#[tokio::test]
async fn approval_by_event_tells_the_customer_and_the_request_is_signed() {
    let mut h = Harness::start(&[], &[]).await;
    let (thread, run) = h.start_refund().await;
    let state = h.until_waiting_for_decision(run).await;
    assert_eq!(
        journal(&state),
        [
            step("resume_url", "manager_decision", StepStatus::Completed, 1),
            step("run", "request_refund", StepStatus::Completed, 1),
            step("post_message", "acknowledge", StepStatus::Completed, 1),
            step("wait_event", "manager_decision", StepStatus::Pending, 1),
        ]
    );
    assert_eq!(
        state.journal[1].output,
        Some(json!({"status": 201, "body": {"reference": "R-7"}}))
    );

    // The request: signed, with the step's idempotency key and the run id,
    // and a body carrying the resume URL of the wait step.
    let received = h.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.header("idempotency-key"), format!("{run}:1"));
    assert_eq!(request.header("tandem-run-id"), run.to_string());
    assert_eq!(request.header("content-type"), "application/json");
    let timestamp: i64 = request.header("tandem-timestamp").parse().unwrap();
    assert!((Utc::now().timestamp() - timestamp).abs() < 60);
    assert_eq!(
        request.header("tandem-signature"),
        h.signer.outbound_signature(timestamp, &request.body)
    );
    let other = Signer::new("other-secret", PUBLIC_URL, Duration::from_secs(300));
    assert_ne!(
        request.header("tandem-signature"),
        other.outbound_signature(timestamp, &request.body)
    );
    let body = request.json();
    assert_eq!(body["order_id"], "A-1042");
    assert_eq!(body["amount"], "49.90");
    assert_eq!(body["thread_id"], thread.to_string());
    assert_eq!(body["tandem_run_id"], run.to_string());
    let decision_url = body["decision_url"].as_str().unwrap();
    let prefix = format!("{PUBLIC_URL}/v1/hooks/workflows/{run}/events/manager_decision?");
    assert!(decision_url.starts_with(&prefix), "{decision_url}");
    let query: Vec<(&str, &str)> = decision_url[prefix.len()..]
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let get = |key: &str| {
        query
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap()
    };
    let expires: i64 = get("expires").parse().unwrap();
    assert_eq!(expires, h.clock.now().timestamp() + 259_200);
    let now = h.clock.now();
    let resume_step: i64 = get("step").parse().unwrap();
    assert_eq!(resume_step, 0, "minted by the journal's first step");
    h.signer
        .verify_resume(
            run,
            "manager_decision",
            resume_step,
            expires,
            get("sig"),
            now,
        )
        .unwrap();

    let messages = h.messages(thread, false).await;
    assert_eq!(messages.len(), 1);
    assert!(
        text(&messages[0]).contains("(reference R-7)"),
        "{}",
        text(&messages[0])
    );

    // A restart between the request and the decision: the run replays its
    // journal on the new engine and does not call the payments system again.
    h.restart().await;
    h.decide(run, json!({"approved": true})).await;
    let state = h.until_completed(run).await;
    assert_eq!(
        state.run.result,
        Some(json!({"reference": "R-7", "run": run.to_string()}))
    );
    assert_eq!(
        h.received().len(),
        1,
        "the request is not sent again on replay"
    );

    let messages = h.messages(thread, false).await;
    assert_eq!(messages.len(), 2);
    let approved = &messages[1];
    assert!(text(approved).starts_with("Good news: your refund of 49.90 for order A-1042"));
    assert_eq!(approved.agent_name.as_deref(), Some("Refunds"));
    assert_eq!(approved.author.kind, AuthorKind::Ai);
    assert_eq!(approved.author.id.as_deref(), Some("Refunds"));
    assert_eq!(approved.visibility, Visibility::Public);
    assert_eq!(approved.metadata["provider"], "workflow");
    assert_eq!(
        approved.metadata["providerMetadata"]["workflow"]["step"],
        "approved"
    );
    assert_eq!(h.assigned_to(thread).await, AssignedTo::Unassigned);
    h.finish().await;
}

#[tokio::test]
async fn rejection_leaves_an_internal_note_and_hands_over_to_billing() {
    let h = Harness::start(&[], &[]).await;
    let (thread, run) = h.start_refund().await;
    h.until_waiting_for_decision(run).await;
    h.decide(
        run,
        json!({"approved": false, "reason": "outside the return window"}),
    )
    .await;
    let state = h.until_completed(run).await;
    let names: Vec<&str> = state.journal.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "manager_decision",
            "request_refund",
            "acknowledge",
            "manager_decision",
            "rejected",
            "hand_over"
        ]
    );

    let messages = h.messages(thread, false).await;
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].visibility, Visibility::Internal);
    assert_eq!(
        text(&messages[1]),
        "Refund for order A-1042 rejected by the manager: outside the return window"
    );
    assert_eq!(h.assigned_to(thread).await, AssignedTo::Human);
    h.finish().await;
}

#[tokio::test]
async fn no_decision_before_the_deadline_hands_over_to_billing() {
    let h = Harness::start(&[], &[]).await;
    let (thread, run) = h.start_refund().await;
    h.until_waiting_for_decision(run).await;

    h.clock.advance(Duration::from_secs(172_800 + 1));
    h.engine.wake();
    let state = h.until_completed(run).await;
    assert_eq!(
        journal(&state)[3..],
        [
            step("wait_event", "manager_decision", StepStatus::Completed, 1),
            step("assign", "no_decision", StepStatus::Completed, 1),
        ]
    );
    assert_eq!(state.journal[3].output, Some(json!({"timeout": true})));
    assert_eq!(
        h.messages(thread, false).await.len(),
        1,
        "only the acknowledgement"
    );
    assert_eq!(h.assigned_to(thread).await, AssignedTo::Human);
    h.finish().await;
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_idempotency_key() {
    let h = Harness::start(&[503], &[]).await;
    let (_, run) = h.start_refund().await;
    let state = h
        .until(run, "the request to wait for its retry", |s| {
            s.journal
                .get(1)
                .is_some_and(|e| e.status == StepStatus::Retrying)
                && s.run.status == RunStatus::Waiting
        })
        .await;
    let error = state.journal[1].error.clone().unwrap();
    assert_eq!(error["retryable"], true);
    assert_mentions(&error, "answered 503");
    assert_eq!(h.received().len(), 1);

    // The backoff is a durable timer on the workflow clock.
    h.clock.advance(Duration::from_secs(3));
    h.engine.wake();
    let state = h.until_waiting_for_decision(run).await;
    assert_eq!(
        journal(&state)[1],
        step("run", "request_refund", StepStatus::Completed, 2)
    );
    let received = h.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[0].header("idempotency-key"),
        received[1].header("idempotency-key")
    );
    assert_eq!(
        received[0].body, received[1].body,
        "the same request each attempt"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_400_fails_the_run_without_retrying() {
    let h = Harness::start(&[400], &[]).await;
    let (thread, run) = h.start_refund().await;
    let state = h.until_failed(run).await;
    let error = state.run.error.clone().unwrap();
    assert_eq!(error["code"], "step_failed");
    assert_eq!(error["step"], "request_refund");
    assert_eq!(error["retryable"], false);
    assert_mentions(&error, "answered 400: not now");
    assert_eq!(
        journal(&state)[1..],
        [step("run", "request_refund", StepStatus::Failed, 1)]
    );
    assert_eq!(h.received().len(), 1);
    assert!(h.messages(thread, false).await.is_empty());
    h.finish().await;
}

#[tokio::test]
async fn arguments_are_checked_when_the_run_starts() {
    let h = Harness::start(&[], &[]).await;
    let error = h
        .engine
        .start_run("refund", json!({"order_id": "A-1"}), None)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("missing required arguments: thread_id, amount"),
        "{message}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_loop_that_never_ends_fails_the_run() {
    // Two steps a turn: the bound stops it after 500 requests.
    const SPIN: &str = r#"
name = "spin"
[[steps]]
id = "tick"
kind = "http"
url = "{base_url}/v1/refund-requests"
retry = { max_attempts = 1 }
[[steps]]
id = "again"
kind = "branch"
on = "steps.tick.status"
default = "tick"
"#;
    let h = Harness::start(&[], &[("spin.toml", SPIN)]).await;
    let run = h
        .engine
        .start_run("spin", json!({}), None)
        .await
        .unwrap()
        .value
        .id;
    let state = h.until_failed(run).await;
    let error = state.run.error.clone().unwrap();
    assert_eq!(error["code"], "workflow_failed");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("after executing {MAX_EXECUTED_STEPS} steps")),
        "{message}"
    );
    assert!(message.contains("step \"tick\""), "{message}");
    assert_eq!(h.received().len(), MAX_EXECUTED_STEPS / 2);
    assert_eq!(state.journal.len(), MAX_EXECUTED_STEPS / 2);
    h.finish().await;
}

/// A loop back to a step that hands out a resume URL gets a fresh one each
/// turn (the last one was used); within a turn, one URL serves every use.
#[tokio::test]
async fn each_turn_of_a_loop_gets_a_fresh_resume_url() {
    const ASK: &str = r#"
name = "ask"
[[steps]]
id = "ask"
kind = "http"
url = "{base_url}/v1/refund-requests"
body = { url = "{{resume_url.answer}}", same = "{{resume_url.answer}}" }
[[steps]]
id = "answer"
kind = "wait_event"
event = "answer"
[[steps]]
id = "done"
kind = "branch"
on = "steps.answer.event.done"
cases = { false = "ask" }
"#;
    let h = Harness::start(&[], &[("ask.toml", ASK)]).await;
    let run = h
        .engine
        .start_run("ask", json!({}), None)
        .await
        .unwrap()
        .value
        .id;
    let waiting_after = |turns: usize| {
        move |s: &RunState| s.run.status == RunStatus::Waiting && s.journal.len() == 3 * turns
    };
    h.until(run, "the first question", waiting_after(1)).await;
    h.engine
        .deliver_event(
            run,
            "answer",
            json!({"done": false}),
            EventSource::Api,
            None,
        )
        .await
        .unwrap();
    let state = h.until(run, "the second question", waiting_after(2)).await;
    let kinds: Vec<&str> = state.journal.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "resume_url",
            "run",
            "wait_event",
            "resume_url",
            "run",
            "wait_event"
        ]
    );
    h.engine
        .deliver_event(run, "answer", json!({"done": true}), EventSource::Api, None)
        .await
        .unwrap();
    let state = h.until_completed(run).await;
    assert_eq!(
        state.run.result,
        Some(json!({"value": true, "target": null}))
    );

    let bodies: Vec<Value> = h.received().iter().map(Received::json).collect();
    assert_eq!(bodies.len(), 2);
    for body in &bodies {
        assert_eq!(body["url"], body["same"]);
    }
    assert_ne!(bodies[0]["url"], bodies[1]["url"]);
    assert!(
        bodies[1]["url"].as_str().unwrap().contains("step=3&"),
        "{}",
        bodies[1]["url"]
    );
    h.finish().await;
}

/// A run started on one version of a file finishes on that version after
/// the file changed; new runs start on the new one.
#[tokio::test]
async fn runs_stay_on_the_version_they_started_on() {
    let v1 = r#"
name = "greet"
[args]
required = ["thread_id"]
[[steps]]
id = "go"
kind = "wait_event"
event = "go"
[[steps]]
id = "say"
kind = "post_message"
thread_id = "{{args.thread_id}}"
agent_name = "Greeter"
text = "hello from v1"
"#;
    let mut h = Harness::start(&[], &[("greet.toml", v1)]).await;
    let thread = h.thread().await;
    let old = h
        .engine
        .start_run("greet", json!({"thread_id": thread}), None)
        .await
        .unwrap()
        .value;
    h.until(old.id, "the v1 run to wait", |s| {
        s.run.status == RunStatus::Waiting
    })
    .await;

    std::fs::write(
        h.definitions().join("greet.toml"),
        v1.replace("from v1", "from v2"),
    )
    .unwrap();
    h.restart().await;
    let (name, versions): (&str, Vec<String>) = h
        .engine
        .registry()
        .executable()
        .find(|(name, _)| *name == "greet")
        .unwrap();
    assert_eq!(name, "greet");
    assert_eq!(versions.len(), 2, "{versions:?}");
    let current = h
        .engine
        .registry()
        .current("greet")
        .unwrap()
        .version()
        .to_owned();
    assert_ne!(current, old.version);

    let new = h
        .engine
        .start_run("greet", json!({"thread_id": thread}), None)
        .await
        .unwrap()
        .value;
    assert_eq!(new.version, current);
    for run in [old.id, new.id] {
        h.engine
            .deliver_event(run, "go", json!({}), EventSource::Api, None)
            .await
            .unwrap();
        h.until_completed(run).await;
    }
    let texts = h.texts(thread, false).await;
    assert_eq!(texts, ["hello from v1", "hello from v2"]);

    // The stored sources are the canonical JSON, one per version.
    let stored: Vec<(String, String, String)> = h
        .store
        .definitions()
        .await
        .unwrap()
        .into_iter()
        .filter(|(name, _, _)| name == "greet")
        .collect();
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].1, old.version);
    assert!(stored[0].2.contains("hello from v1"));
    h.finish().await;
}

#[tokio::test]
async fn loading_fails_with_every_problem_of_every_file() {
    let h = Harness::start(&[], &[]).await;
    let dir = h.dir.path().join("broken");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.toml"), "name = \"a\"\nsteps = []\n").unwrap();
    std::fs::write(
        dir.join("b.json"),
        r#"{"name": "b", "steps": [{"id": "x", "kind": "sleep", "seconds": 1, "next": "y"}]}"#,
    )
    .unwrap();
    let same = "name = \"c\"\n[[steps]]\nid = \"s\"\nkind = \"sleep\"\nseconds = 1\n";
    std::fs::write(dir.join("c1.toml"), same).unwrap();
    std::fs::write(dir.join("c2.toml"), same).unwrap();
    std::fs::write(dir.join("notes.md"), "not a definition").unwrap();

    let mut registry = Registry::new();
    let error = load_definitions(&h.store, &dir, &mut registry, &Services::default())
        .await
        .unwrap_err();
    let DefinitionError::Invalid(problems) = &error else {
        panic!("{error}");
    };
    let text = error.to_string();
    assert_eq!(problems.len(), 3, "{text}");
    assert!(
        text.contains("a.toml: field `steps`: a workflow needs at least one step"),
        "{text}"
    );
    assert!(
        text.contains("b.json: step \"x\": field `next`: jumps to unknown step \"y\""),
        "{text}"
    );
    assert!(
        text.contains("c2.toml: field `name`: workflow \"c\" is also defined in"),
        "{text}"
    );
    assert_eq!(registry.names().count(), 0, "nothing is registered");

    let missing = load_definitions(
        &h.store,
        &dir.join("nope"),
        &mut registry,
        &Services::default(),
    )
    .await;
    assert!(matches!(missing, Err(DefinitionError::ReadDir { .. })));

    // The good ones load, and loading them twice saves each version once.
    std::fs::remove_file(dir.join("a.toml")).unwrap();
    std::fs::remove_file(dir.join("b.json")).unwrap();
    std::fs::remove_file(dir.join("c2.toml")).unwrap();
    let loaded = load_definitions(&h.store, &dir, &mut Registry::new(), &Services::default())
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!((loaded[0].name.as_str(), loaded[0].steps), ("c", 1));
    assert_eq!(loaded[0].path, dir.join("c1.toml"));
    load_definitions(&h.store, &dir, &mut Registry::new(), &Services::default())
        .await
        .unwrap();
    let stored = h.store.definitions().await.unwrap();
    assert_eq!(stored.iter().filter(|(name, _, _)| name == "c").count(), 1);
    h.finish().await;
}
