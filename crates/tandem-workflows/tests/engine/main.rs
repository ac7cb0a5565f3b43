//! The engine against a real store (SQLite, or PostgreSQL when
//! `TANDEM_TEST_DATABASE_URL` is set), on a manual clock: timers, deadlines
//! and backoff fire when the test moves the clock, never by sleeping.

mod reply_path;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Harness, counter};
use tandem_model::{EventSource, JournalWrite, NewRun, RunStatus, RunUpdate, StepStatus};
use tandem_store::{ClaimRequest, StepCommit, StoreError, micros};
use tandem_workflows::{ActionError, End, Registry, RetryPolicy, Wakeup, WorkflowDef};

/// Three journaled steps, then a wait for `decision` (deadline 1 h), then a
/// step per branch. Every action counts its calls under its step name.
fn approval(version: &str, calls: &support::Calls) -> WorkflowDef {
    let calls = calls.clone();
    WorkflowDef::new("approval", version.to_owned(), move |ctx, args: Value| {
        let calls = calls.clone();
        async move {
            let mut total = 0;
            for step in ["one", "two", "three"] {
                let calls = calls.clone();
                let n: i64 = ctx
                    .run(step, |_| {
                        let calls = calls.clone();
                        async move { Ok(counter(&calls, step) as i64) }
                    })
                    .await?;
                total += n;
            }
            let decision = ctx
                .wait_for_event("decision", Some(Duration::from_secs(3600)))
                .await?;
            let branch = match &decision {
                Wakeup::Event(_) => "approved",
                Wakeup::TimedOut => "timed_out",
            };
            let calls2 = calls.clone();
            ctx.run(branch, |_| {
                let calls = calls2.clone();
                async move { Ok(counter(&calls, branch) as i64) }
            })
            .await?;
            Ok(json!({"args": args, "total": total, "branch": branch,
                          "decision": match decision { Wakeup::Event(p) => p, Wakeup::TimedOut => Value::Null }}))
        }
    })
}

/// A registry of `approval` version 1 alone, counting into `calls`.
fn only_approval(calls: &support::Calls) -> impl Fn() -> Registry + 'static {
    let calls = calls.clone();
    move || {
        let mut r = Registry::new();
        r.register(approval("1", &calls));
        r
    }
}

#[tokio::test]
async fn a_run_journals_its_steps_waits_durably_and_resumes_after_a_restart() {
    let calls = support::Calls::default();
    let registry = only_approval(&calls);
    let mut h = Harness::start(registry).await;
    let run = h
        .engine
        .start_run("approval", json!({"order": 7}), None)
        .await
        .expect("start");
    let id = run.value.id;
    let state = h.wait_status(id, RunStatus::Waiting).await;
    assert_eq!(state.run.waiting_for.as_deref(), Some("decision"));
    let kinds: Vec<_> = state
        .journal
        .iter()
        .map(|e| (e.kind.as_str(), e.name.as_str(), e.status))
        .collect();
    assert_eq!(
        kinds,
        [
            ("run", "one", StepStatus::Completed),
            ("run", "two", StepStatus::Completed),
            ("run", "three", StepStatus::Completed),
            ("wait_event", "decision", StepStatus::Pending),
        ]
    );

    h.restart().await;
    // Nothing ran again on the way back.
    assert_eq!(calls.get("one"), 1);
    let delivered = h
        .engine
        .deliver_event(id, "decision", json!({"ok": true}), EventSource::Api, None)
        .await
        .expect("deliver");
    assert!(!delivered.duplicate);
    let state = h.wait_status(id, RunStatus::Completed).await;
    assert_eq!(
        state.run.result,
        Some(
            json!({"args": {"order": 7}, "total": 3, "branch": "approved", "decision": {"ok": true}})
        )
    );
    for step in ["one", "two", "three", "approved"] {
        assert_eq!(calls.get(step), 1, "{step} ran once");
    }
    assert_eq!(calls.get("timed_out"), 0);
    assert!(state.pending_events.is_empty());
    assert_eq!(state.consumed_events.len(), 1);
    assert_eq!(state.consumed_events[0].consumed_by, Some(3));
    // A finished run takes no more events.
    let late = h
        .engine
        .deliver_event(id, "decision", json!(1), EventSource::Api, None)
        .await;
    assert!(
        matches!(
            late,
            Err(tandem_workflows::EngineError::Store(StoreError::Conflict {
                code: "run_finished",
                ..
            }))
        ),
        "{late:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_deadline_that_passes_while_the_server_is_down_takes_the_timeout_branch_once() {
    let calls = support::Calls::default();
    let registry = only_approval(&calls);
    let mut h = Harness::start(registry).await;
    let id = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value
        .id;
    let waiting = h.wait_status(id, RunStatus::Waiting).await;
    let deadline = waiting.run.wake_at.expect("a deadline");

    h.stop().await;
    h.clock.advance(Duration::from_secs(3599));
    h.start_again().await;
    // Not yet due: still waiting, nothing ran.
    h.settle().await;
    assert_eq!(h.state(id).await.run.status, RunStatus::Waiting);

    h.stop().await;
    h.clock.advance(Duration::from_secs(2));
    assert!(h.clock_now() > deadline);
    h.start_again().await;
    let state = h.wait_status(id, RunStatus::Completed).await;
    assert_eq!(
        state.run.result.as_ref().and_then(|r| r.get("branch")),
        Some(&json!("timed_out"))
    );
    h.restart().await;
    h.settle().await;
    assert_eq!(calls.get("timed_out"), 1);
    assert_eq!(calls.get("approved"), 0);
    let wait = &state.journal[3];
    assert_eq!(
        (wait.status, wait.output.clone()),
        (StepStatus::Completed, Some(json!({"timeout": true})))
    );
    h.finish().await;
}

#[tokio::test]
async fn failed_attempts_are_journaled_and_retried_on_the_clock_and_a_permanent_error_fails_at_once()
 {
    let calls = support::Calls::default();
    let registry = {
        let calls = calls.clone();
        move || {
            let mut r = Registry::new();
            let flaky_calls = calls.clone();
            r.register(WorkflowDef::new("flaky", "1", move |ctx, _: Value| {
                let calls = flaky_calls.clone();
                async move {
                    let policy = RetryPolicy {
                        max_attempts: 4,
                        initial_backoff_ms: 10_000,
                        max_backoff_ms: 60_000,
                        multiplier: 2.0,
                        jitter: 0.0,
                    };
                    let value: String = ctx
                        .run_with("call", &policy, |info| {
                            let calls = calls.clone();
                            async move {
                                counter(&calls, "call");
                                if info.attempt < 3 {
                                    Err(ActionError::retryable(format!(
                                        "503 on attempt {}",
                                        info.attempt
                                    )))
                                } else {
                                    Ok(format!(
                                        "ok after {} with {}",
                                        info.attempt, info.idempotency_key
                                    ))
                                }
                            }
                        })
                        .await?;
                    Ok(value)
                }
            }));
            let permanent_calls = calls.clone();
            r.register(WorkflowDef::new("permanent", "1", move |ctx, _: Value| {
                let calls = permanent_calls.clone();
                async move {
                    ctx.run("call", |_| {
                        let calls = calls.clone();
                        async move {
                            counter(&calls, "permanent");
                            Err::<(), _>(ActionError::permanent("400 bad request"))
                        }
                    })
                    .await?;
                    Ok(())
                }
            }));
            r
        }
    };
    let mut h = Harness::start(registry).await;
    let id = h
        .engine
        .start_run("flaky", json!(null), None)
        .await
        .expect("start")
        .value
        .id;
    // First attempt failed: journaled, and the retry waits for the clock.
    let state = h
        .wait_until(id, |s| s.journal.first().is_some_and(|e| e.attempts == 1))
        .await;
    let step = &state.journal[0];
    assert_eq!(step.status, StepStatus::Retrying);
    assert_eq!(
        step.error.as_ref().and_then(|e| e.get("message")),
        Some(&json!("503 on attempt 1"))
    );
    assert_eq!(
        step.wake_at.map(|w| (w - step.started_at).num_seconds()),
        Some(10)
    );
    h.settle().await;
    assert_eq!(
        calls.get("call"),
        1,
        "no retry before the backoff has passed"
    );
    h.clock.advance(Duration::from_secs(10));
    h.wait_until(id, |s| s.journal[0].attempts == 2).await;
    // The second backoff is twice the first; a restart in between loses nothing.
    h.restart().await;
    h.clock.advance(Duration::from_secs(19));
    h.settle().await;
    assert_eq!(calls.get("call"), 2);
    h.clock.advance(Duration::from_secs(1));
    let state = h.wait_status(id, RunStatus::Completed).await;
    assert_eq!(state.journal[0].attempts, 3);
    assert_eq!(state.journal[0].status, StepStatus::Completed);
    assert_eq!(
        state.run.result,
        Some(json!(format!("ok after 3 with {id}:0")))
    );

    let id = h
        .engine
        .start_run("permanent", json!(null), None)
        .await
        .expect("start")
        .value
        .id;
    let state = h.wait_status(id, RunStatus::Failed).await;
    assert_eq!(calls.get("permanent"), 1);
    assert_eq!(state.journal[0].status, StepStatus::Failed);
    assert_eq!(state.journal[0].attempts, 1);
    let error = state.run.error.expect("an error");
    assert_eq!(error["code"], "step_failed");
    assert_eq!(error["message"], "400 bad request");
    h.finish().await;
}

#[tokio::test]
async fn a_run_stays_on_its_version_and_a_changed_definition_stops_with_a_determinism_error() {
    let calls = support::Calls::default();
    let version = Arc::new(std::sync::Mutex::new(1));
    let registry = {
        let calls = calls.clone();
        let version = version.clone();
        move || {
            let mut r = Registry::new();
            match *version.lock().expect("lock") {
                // Version 2 is current, version 1 kept for the runs on it.
                2 => {
                    r.register_previous(approval("1", &calls));
                    r.register(changed("2", &calls));
                }
                // Version 1's code changed without a new version number.
                3 => {
                    r.register(changed("1", &calls));
                }
                _ => {
                    r.register(approval("1", &calls));
                }
            }
            r
        }
    };
    let mut h = Harness::start(registry).await;
    let pinned = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value
        .id;
    let diverging = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value
        .id;
    h.wait_status(pinned, RunStatus::Waiting).await;
    h.wait_status(diverging, RunStatus::Waiting).await;

    *version.lock().expect("lock") = 2;
    h.restart().await;
    let fresh = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value;
    assert_eq!(fresh.version, "2");
    h.wait_status(fresh.id, RunStatus::Waiting).await;
    assert_eq!(
        calls.get("renamed"),
        1,
        "the new version's code runs for new runs"
    );
    h.engine
        .deliver_event(pinned, "decision", json!("yes"), EventSource::Api, None)
        .await
        .expect("deliver");
    let state = h.wait_status(pinned, RunStatus::Completed).await;
    assert_eq!(state.run.version, "1");
    assert_eq!(
        state.run.result.as_ref().and_then(|r| r.get("branch")),
        Some(&json!("approved"))
    );
    assert_eq!(calls.get("renamed"), 1);

    *version.lock().expect("lock") = 3;
    h.restart().await;
    h.engine
        .deliver_event(diverging, "decision", json!("yes"), EventSource::Api, None)
        .await
        .expect("deliver");
    let state = h.wait_status(diverging, RunStatus::Failed).await;
    let error = state.run.error.expect("an error");
    assert_eq!(error["code"], "determinism_error", "{error}");
    assert_eq!(error["seq"], 1);
    assert_eq!(calls.get("renamed"), 1, "nothing ran past the divergence");
    assert_eq!(
        calls.get("three"),
        3,
        "three runs took step three, none twice"
    );
    h.finish().await;
}

/// `approval` with its second step renamed.
fn changed(version: &str, calls: &support::Calls) -> WorkflowDef {
    let calls = calls.clone();
    WorkflowDef::new("approval", version.to_owned(), move |ctx, _: Value| {
        let calls = calls.clone();
        async move {
            for step in ["one", "renamed", "three"] {
                let calls = calls.clone();
                ctx.run(step, |_| {
                    let calls = calls.clone();
                    async move { Ok(counter(&calls, step)) }
                })
                .await?;
            }
            ctx.wait_for_event("decision", None).await?;
            Ok(json!({"branch": "v2"}))
        }
    })
}

#[tokio::test]
async fn pause_resume_and_cancel_answer_every_state_and_the_on_complete_handler_hears_the_end() {
    let calls = support::Calls::default();
    let ends: Arc<std::sync::Mutex<Vec<End>>> = Arc::default();
    let registry = {
        let calls = calls.clone();
        let ends = ends.clone();
        move || {
            let mut r = Registry::new();
            let ends = ends.clone();
            r.register(approval("1", &calls).on_complete(move |outcome| {
                let ends = ends.clone();
                async move { ends.lock().expect("lock").push(outcome.end) }
            }));
            r
        }
    };
    let mut h = Harness::start(registry).await;
    let conflict = |r: Result<tandem_model::WorkflowRun, tandem_workflows::EngineError>| match r {
        Err(tandem_workflows::EngineError::Store(StoreError::Conflict { code, .. })) => code,
        other => panic!("expected a conflict, got {other:?}"),
    };

    // Waiting → paused: an event delivered meanwhile waits for the resume.
    let id = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value
        .id;
    h.wait_status(id, RunStatus::Waiting).await;
    assert_eq!(conflict(h.engine.resume(id).await), "not_paused");
    let paused = h.engine.pause(id).await.expect("pause");
    assert_eq!(paused.status, RunStatus::Paused);
    assert_eq!(conflict(h.engine.pause(id).await), "already_paused");
    h.engine
        .deliver_event(id, "decision", json!(1), EventSource::Api, None)
        .await
        .expect("deliver");
    h.settle().await;
    assert_eq!(h.state(id).await.run.status, RunStatus::Paused);
    assert_eq!(calls.get("approved"), 0);
    // Paused across a restart, then resumed: it takes the event.
    h.restart().await;
    h.settle().await;
    assert_eq!(h.state(id).await.run.status, RunStatus::Paused);
    h.engine.resume(id).await.expect("resume");
    h.wait_status(id, RunStatus::Completed).await;
    assert_eq!(calls.get("approved"), 1);
    for call in [
        h.engine.pause(id).await,
        h.engine.resume(id).await,
        h.engine.cancel(id).await,
    ] {
        assert_eq!(conflict(call), "run_finished");
    }

    // A paused wait whose deadline passes fires on resume, once.
    let id = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value
        .id;
    h.wait_status(id, RunStatus::Waiting).await;
    h.engine.pause(id).await.expect("pause");
    h.clock.advance(Duration::from_secs(7200));
    h.settle().await;
    assert_eq!(h.state(id).await.run.status, RunStatus::Paused);
    h.engine.resume(id).await.expect("resume");
    let state = h.wait_status(id, RunStatus::Completed).await;
    assert_eq!(
        state.run.result.as_ref().and_then(|r| r.get("branch")),
        Some(&json!("timed_out"))
    );

    // Cancel while waiting and while paused.
    let waiting = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value
        .id;
    let paused = h
        .engine
        .start_run("approval", json!({}), None)
        .await
        .expect("start")
        .value
        .id;
    h.wait_status(waiting, RunStatus::Waiting).await;
    h.wait_status(paused, RunStatus::Waiting).await;
    h.engine.pause(paused).await.expect("pause");
    for id in [waiting, paused] {
        assert_eq!(
            h.engine.cancel(id).await.expect("cancel").status,
            RunStatus::Cancelled
        );
        assert_eq!(conflict(h.engine.cancel(id).await), "run_finished");
        let late = h
            .engine
            .deliver_event(id, "decision", json!(1), EventSource::Api, None)
            .await;
        assert!(late.is_err());
    }
    support::eventually(|| ends.lock().expect("lock").len() == 4).await;
    let ends = ends.lock().expect("lock").clone();
    assert_eq!(
        ends.iter().filter(|e| **e == End::Cancelled).count(),
        2,
        "{ends:?}"
    );
    assert_eq!(
        ends.iter()
            .filter(|e| matches!(e, End::Completed(_)))
            .count(),
        2,
        "{ends:?}"
    );
    h.finish().await;
}

#[tokio::test]
async fn a_pool_of_one_runs_queued_runs_one_at_a_time_in_order() {
    let order: Arc<std::sync::Mutex<Vec<i64>>> = Arc::default();
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let registry = {
        let (order, running, most) = (order.clone(), running.clone(), most.clone());
        move || {
            let (order, running, most) = (order.clone(), running.clone(), most.clone());
            let mut r = Registry::new();
            r.register(WorkflowDef::new("queued", "1", move |ctx, n: i64| {
                let (order, running, most) = (order.clone(), running.clone(), most.clone());
                async move {
                    ctx.run("work", |_| {
                        let (order, running, most) = (order.clone(), running.clone(), most.clone());
                        async move {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            order.lock().expect("lock").push(n);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok(n)
                        }
                    })
                    .await
                }
            }));
            r
        }
    };
    let h = Harness::start_with(registry, |c| {
        c.concurrency.insert("queued".into(), 1);
    })
    .await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ids.push(
            h.engine
                .start_run("queued", json!(n), None)
                .await
                .expect("start")
                .value
                .id,
        );
    }
    for id in &ids {
        h.wait_status(*id, RunStatus::Completed).await;
    }
    assert_eq!(*order.lock().expect("lock"), (0..8).collect::<Vec<_>>());
    assert_eq!(most.load(Ordering::SeqCst), 1);
    h.finish().await;
}

/// Two processes on one database race for the same runs, again and again:
/// each takeover fences the executor before it, and no step is ever
/// committed twice.
#[tokio::test]
async fn lease_races_between_two_nodes_never_commit_a_step_twice() {
    let h = Harness::start(Registry::new).await;
    let node_a = h.store.clone();
    let node_b = h.second_node().await;
    assert_ne!(node_a.node(), node_b.node());
    let versions = vec!["1".to_owned()];
    let races = if h.is_postgres() { 1_000 } else { 300 };
    let mut fenced = 0;
    for i in 0..races {
        let now = micros(chrono::Utc::now());
        let run = node_a
            .create_run(
                NewRun {
                    name: "race".into(),
                    version: "1".into(),
                    args: json!(i),
                    has_on_complete: false,
                },
                now,
                Some((node_a.node().to_owned(), now + 60_000_000)),
                None,
            )
            .await
            .expect("create")
            .value;
        let lease_a = tandem_model::Lease {
            run_id: run.id,
            owner: node_a.node().to_owned(),
            generation: run.generation,
        };
        // Node B sees A's lease as expired (its wall clock is a minute on).
        let claim_b = async {
            node_b
                .claim_runs(&ClaimRequest {
                    owner: node_b.node(),
                    name: "race",
                    versions: &versions,
                    limit: 1,
                    now: now + 120_000_000,
                    wall_now: now + 120_000_000,
                    lease_until: now + 180_000_000,
                })
                .await
                .expect("claim")
        };
        // Every lease here ends well after B's clock, so no run of an earlier
        // race looks free to B.
        let commit = |store: tandem_store::Store, lease: tandem_model::Lease| async move {
            store
                .commit_steps(StepCommit {
                    lease,
                    writes: vec![JournalWrite {
                        seq: 0,
                        kind: "run".into(),
                        name: "step".into(),
                        status: StepStatus::Completed,
                        output: Some(json!(1)),
                        error: None,
                        attempts: 1,
                        wake_at: None,
                        started_at: chrono::Utc::now(),
                        finished_at: Some(chrono::Utc::now()),
                        consumes: None,
                    }],
                    effect: None,
                    update: RunUpdate::Continue,
                    now,
                    lease_until: now + 600_000_000,
                })
                .await
        };
        // A commits while B takes over; then B, not knowing A's commit
        // landed, commits the same step.
        let (a, claimed) = tokio::join!(commit(node_a.clone(), lease_a.clone()), claim_b);
        let b = match claimed.into_iter().next() {
            Some(c) => {
                if c.run.id != run.id {
                    let other = node_a.get_run(c.run.id).await;
                    panic!("race {i}: B took another run: {c:#?} now={now} other={other:#?}");
                }
                assert_eq!(c.lease.generation, lease_a.generation + 1, "race {i}");
                Some(commit(node_b.clone(), c.lease).await)
            }
            None => None,
        };
        let committed = usize::from(a.is_ok()) + usize::from(b.as_ref().is_some_and(Result::is_ok));
        assert_eq!(committed, 1, "race {i}: a={a:?} b={b:?}");
        if a.is_err() {
            fenced += 1;
        }
        // After the takeover, A can commit nothing more.
        assert!(commit(node_a.clone(), lease_a).await.is_err());
        let rows = node_a.journal(run.id).await.expect("journal");
        assert_eq!(rows.len(), 1);
    }
    eprintln!("{races} races, the first executor fenced in {fenced}");
    node_b.close().await;
    h.finish().await;
}

/// A message posted by a step commits with its journal entry: replays,
/// restarts and a stale executor never post it twice.
#[tokio::test]
async fn a_posted_message_commits_with_its_journal_entry_exactly_once() {
    let registry = || {
        let mut r = Registry::new();
        r.register(WorkflowDef::new(
            "notify",
            "1",
            |ctx, thread: tandem_model::ThreadId| async move {
                let message = ctx
                    .post_message("tell", agent_message(thread, "Your refund is on its way."))
                    .await?;
                ctx.wait_for_event("done", None).await?;
                Ok(message.seq)
            },
        ));
        r
    };
    let mut h = Harness::start(registry).await;
    let thread = h
        .store
        .create_thread(
            tandem_model::NewThread {
                customer_id: "c1".into(),
                title: None,
                metadata: json!({}),
            },
            None,
        )
        .await
        .expect("thread")
        .value;
    let id = h
        .engine
        .start_run("notify", json!(thread.id), None)
        .await
        .expect("start")
        .value
        .id;
    let state = h.wait_status(id, RunStatus::Waiting).await;
    assert_eq!(
        state.journal[0].output.as_ref().and_then(|m| m.get("seq")),
        Some(&json!(1))
    );
    h.restart().await;
    h.engine
        .deliver_event(id, "done", json!(null), EventSource::Api, None)
        .await
        .expect("deliver");
    let state = h.wait_status(id, RunStatus::Completed).await;
    assert_eq!(state.run.result, Some(json!(1)));
    let filter = tandem_model::MessageFilter {
        after_seq: 0,
        limit: 10,
        customer_view: false,
    };
    let messages = h
        .store
        .list_messages(thread.id, &filter)
        .await
        .expect("messages");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].agent_name.as_deref(), Some("Refunds"));

    // A stale executor's effect is refused with its journal entry.
    let stale = tandem_model::Lease {
        run_id: id,
        owner: h.store.node().to_owned(),
        generation: 1,
    };
    let now = micros(chrono::Utc::now());
    let refused = h
        .store
        .commit_steps(StepCommit {
            lease: stale,
            writes: vec![JournalWrite {
                seq: 9,
                kind: "post_message".into(),
                name: "again".into(),
                status: StepStatus::Completed,
                output: None,
                error: None,
                attempts: 1,
                wake_at: None,
                started_at: chrono::Utc::now(),
                finished_at: Some(chrono::Utc::now()),
                consumes: None,
            }],
            effect: Some((
                0,
                tandem_model::StoreEffect::PostMessage(agent_message(thread.id, "twice?")),
            )),
            update: RunUpdate::Continue,
            now,
            lease_until: now + 60_000_000,
        })
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Conflict {
                code: "lease_lost",
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        h.store
            .list_messages(thread.id, &filter)
            .await
            .expect("messages")
            .len(),
        1
    );
    h.finish().await;
}

/// A wait too long to represent is a wait until the end of time, not an
/// overflow that kills the run.
#[tokio::test]
async fn a_sleep_too_long_to_represent_waits_instead_of_failing() {
    let registry = || {
        let mut r = Registry::new();
        r.register(WorkflowDef::new(
            "forever",
            "1",
            |ctx, _: Value| async move {
                ctx.sleep(Duration::from_secs(u64::MAX)).await?;
                Ok(())
            },
        ));
        r
    };
    let h = Harness::start(registry).await;
    let id = h
        .engine
        .start_run("forever", json!(null), None)
        .await
        .expect("start")
        .value
        .id;
    let state = h.wait_status(id, RunStatus::Waiting).await;
    let wake_at = state.run.wake_at.expect("a wake-up time");
    assert_eq!(wake_at.format("%Y").to_string(), "9999");
    h.finish().await;
}

/// A public message from the AI agent "Refunds".
fn agent_message(thread: tandem_model::ThreadId, text: &str) -> tandem_model::NewMessage {
    tandem_model::NewMessage {
        id: None,
        thread_id: thread,
        role: tandem_model::Role::Assistant,
        agent_name: Some("Refunds".into()),
        author: tandem_model::Author {
            kind: tandem_model::AuthorKind::Ai,
            id: None,
        },
        content: tandem_model::Content::Text(text.into()),
        visibility: tandem_model::Visibility::Public,
        status: tandem_model::MessageStatus::Published,
        metadata: json!({"provider": "workflow"}),
        reply_to: None,
        customer_scope: None,
    }
}
