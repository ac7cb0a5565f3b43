//! A workflow survives `SIGKILL` at every step: the real `tandem serve`
//! process runs a declarative workflow of five `http` steps, each calling a
//! counting service with the step's idempotency key. The process is killed
//! once at every step, twice per step: with the step's request in flight
//! before its effect is applied (the previous step journaled, this one not
//! begun: a step boundary), and with the effect applied but its answer not
//! yet back (the middle of the step: the effect happened, the journal does
//! not know it). After each kill a new process resumes the run from its
//! journal. At the end the run has completed, every effect was applied
//! exactly once (retries carried the same key), and the journal holds each
//! step once.

#[path = "support/process.rs"]
mod process;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tandem_tests::TestDb;
use tokio::sync::mpsc;

const STEPS: usize = 5;
const WAIT: Duration = Duration::from_secs(30);

/// Where to hold a step's request, so the test can kill the server then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Before applying the effect.
    Before,
    /// After applying it, before answering.
    After,
}

#[derive(Default)]
struct Service {
    /// Effects applied, in order: once per idempotency key.
    applied: Vec<String>,
    /// Requests that reached the effect, by idempotency key.
    deliveries: HashMap<String, usize>,
    /// Requests received, by step.
    requests: HashMap<usize, usize>,
    /// The kill point armed: a step and where to hold it.
    armed: Option<(usize, Hold)>,
}

type Shared = (Arc<Mutex<Service>>, mpsc::UnboundedSender<(usize, Hold)>);

async fn effect(
    State((service, held)): State<Shared>,
    Path(step): Path<usize>,
    headers: HeaderMap,
) -> Json<Value> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .expect("every step request carries an Idempotency-Key")
        .to_owned();
    let hold = {
        let mut s = service.lock().expect("lock");
        *s.requests.entry(step).or_default() += 1;
        let hold = match s.armed {
            Some((armed, hold)) if armed == step => {
                s.armed = None;
                Some(hold)
            }
            _ => None,
        };
        if hold != Some(Hold::Before) {
            *s.deliveries.entry(key.clone()).or_default() += 1;
            if !s.applied.contains(&key) {
                s.applied.push(key.clone());
            }
        }
        hold
    };
    if let Some(hold) = hold {
        // Tell the test, and never answer: the server dies with this
        // request in flight.
        let _ = held.send((step, hold));
        std::future::pending::<()>().await;
    }
    // The effect is idempotent: a repeated key reports the first application.
    Json(json!({"step": step, "key": key}))
}

fn definition(base: &str) -> Value {
    let steps: Vec<Value> = (1..=STEPS)
        .map(|n| {
            json!({
                "id": format!("step{n}"),
                "kind": "http",
                "url": format!("{base}/effect/{n}"),
                "body": {"run": "{{run.id}}", "step": n},
                "timeout_ms": 60_000,
            })
        })
        .collect();
    json!({"name": "five_effects", "steps": steps})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_at_every_step_completes_with_each_effect_applied_once() {
    let db = TestDb::fresh().await;
    let (held_tx, mut held) = mpsc::unbounded_channel();
    let service = Arc::new(Mutex::new(Service::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/effect/{step}", axum::routing::post(effect))
        .with_state((service.clone(), held_tx));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("five_effects.json"),
        serde_json::to_vec_pretty(&definition(&base)).expect("json"),
    )
    .expect("write the definition");
    let definitions = dir.path().display().to_string();
    let start = |db: &TestDb| {
        process::serve_command(
            process::tandem(db, &["serve"]).env("TANDEM_WORKFLOWS__DEFINITIONS_DIR", &definitions),
        )
    };

    service.lock().expect("lock").armed = Some((1, Hold::Before));
    let mut server = start(&db);
    let admin = process::secret_in(&server.stdout).expect("the first start prints an admin token");
    let client = reqwest::Client::new();
    let started: Value = client
        .post(format!("http://{}/v1/workflows", server.address))
        .bearer_auth(&admin)
        .json(&json!({"name": "five_effects", "args": {}}))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let id = started["id"].as_str().expect("a run id").to_owned();

    let kill_points: Vec<(usize, Hold)> = (1..=STEPS)
        .flat_map(|step| [(step, Hold::Before), (step, Hold::After)])
        .collect();
    for (i, point) in kill_points.iter().enumerate() {
        let reached = tokio::time::timeout(WAIT, held.recv())
            .await
            .unwrap_or_else(|_| panic!("kill point {point:?} was never reached"))
            .expect("the service runs");
        assert_eq!(reached, *point);
        server.child.kill().expect("SIGKILL");
        let _ = server.child.wait();
        service.lock().expect("lock").armed = kill_points.get(i + 1).copied();
        server = start(&db);
    }

    let deadline = Instant::now() + WAIT;
    let state = loop {
        let state: Value = client
            .get(format!("http://{}/v1/workflows/{id}", server.address))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if state["status"] == "completed" {
            break state;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not complete: {state:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = server.terminate();

    let service = std::mem::take(&mut *service.lock().expect("lock"));
    for step in 1..=STEPS {
        // Held before (no effect), held after (effect), then the try that
        // got its answer back.
        assert_eq!(
            service.requests.get(&step),
            Some(&3),
            "requests of step {step}"
        );
    }
    // One effect per step, in step order, each under its own key.
    let expected: Vec<String> = (0..STEPS).map(|seq| format!("{id}:{seq}")).collect();
    assert_eq!(service.applied, expected);
    for (key, times) in &service.deliveries {
        // The held-after try and the try that completed carried the same
        // key: the effect was applied once.
        assert_eq!(*times, 2, "key {key} reached the effect twice");
    }
    let journal = state["journal"].as_array().expect("journal");
    let names: Vec<&str> = journal.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, ["step1", "step2", "step3", "step4", "step5"]);
    for entry in journal {
        assert_eq!(entry["status"], "completed");
    }
    db.drop().await;
}
