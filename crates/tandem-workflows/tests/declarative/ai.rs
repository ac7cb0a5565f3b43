//! `llm`, `ask_human` and `approval` steps against the scripted
//! OpenAI-compatible server over HTTP. The approval flow is
//! `examples/workflows/ai-approval.toml` itself.

use std::time::Duration;

use serde_json::{Value, json};
use tandem_llm::{Llm, LlmConfig};
use tandem_model::{
    AssignedTo, Author, AuthorKind, Content, InboxItem, InboxKind, InboxStatus, Message,
    MessageStatus, NewMessage, Part, Role, RunId, RunStatus, StepStatus, ThreadId, Visibility,
};
use tandem_scripted_llm::{RecordedRequest, Reply, ScriptedLlm};
use tandem_store::{Clock, micros};
use tandem_workflows::declarative::{DefinitionError, Services};
use tandem_workflows::{Registry, load_definitions};

use crate::support::{self, assert_mentions, eventually, journal, output, step, text};

const EXAMPLE: &str = include_str!("../../../../examples/workflows/ai-approval.toml");
const AGENT: &str = "Ada";
const REPLY_MODEL: &str = "reply-model";
const CUSTOMER_TEXT: &str = "Can I still return order A-1042? I bought it 20 days ago.";

type Harness = support::Harness<ScriptedLlm>;

impl Harness {
    /// A store, the scripted model, the example and `extra` definitions
    /// loaded, and a started engine.
    async fn start(extra: &[(&str, &str)]) -> Self {
        let llm = ScriptedLlm::start().await;
        let config = LlmConfig {
            base_url: Some(llm.base_url()),
            reply_model: REPLY_MODEL.into(),
            // Failures go straight to the step's own (durable) retries.
            max_retries: 0,
            request_timeout_secs: 10,
            ..LlmConfig::default()
        };
        let services = Services {
            llm: Some(Llm::new(&config).expect("a model client")),
            agent_name: AGENT.into(),
        };
        let mut files = vec![("ai-approval.toml", EXAMPLE.to_owned())];
        files.extend(
            extra
                .iter()
                .map(|(name, source)| (*name, (*source).to_owned())),
        );
        Self::launch(&files, services, llm).await
    }

    fn llm(&self) -> &ScriptedLlm {
        &self.remote
    }

    /// A thread whose customer asked [`CUSTOMER_TEXT`].
    async fn asked_thread(&self) -> ThreadId {
        let thread = self.thread().await;
        let question = NewMessage {
            id: None,
            thread_id: thread,
            role: Role::User,
            agent_name: None,
            author: Author {
                kind: AuthorKind::Customer,
                id: Some("cust-1".into()),
            },
            content: Content::Text(CUSTOMER_TEXT.into()),
            visibility: Visibility::Public,
            status: MessageStatus::Published,
            metadata: json!({}),
            reply_to: None,
            customer_scope: None,
        };
        self.store
            .post_message(question, None, None)
            .await
            .expect("post the question");
        thread
    }

    /// Waits until the run waits on an open item of `kind`, and returns it.
    async fn until_waiting_on_item(&self, run: RunId, kind: InboxKind) -> InboxItem {
        eventually(&format!("the run to wait on a {kind} item"), || async {
            let state = self.state(run).await;
            let items = self.store.open_items_for_run(run).await.expect("store");
            let item = items.into_iter().find(|i| i.kind == kind)?;
            let waiting = state.run.status == RunStatus::Waiting
                && state.run.waiting_for == Some(format!("inbox:{}", item.id));
            waiting.then_some(item)
        })
        .await
    }

    /// Moves the workflow clock and lets the engine see it.
    fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
        self.engine.wake();
    }

    fn now(&self) -> i64 {
        micros(self.clock.now())
    }

    async fn message(&self, thread: ThreadId, id: Option<tandem_model::MessageId>) -> Message {
        let id = id.expect("a message id");
        self.messages(thread, false)
            .await
            .into_iter()
            .find(|m| m.id == id)
            .expect("the message is in the thread")
    }

    async fn item(&self, item: &InboxItem) -> InboxItem {
        self.store
            .get_inbox_item(item.id)
            .await
            .expect("store")
            .expect("the item exists")
    }

    /// The chat requests the model received, at least `n`.
    async fn requests(&self, n: usize) -> Vec<RecordedRequest> {
        self.remote
            .wait_for_chat_requests(n, Duration::from_secs(10))
            .await
    }
}

/// A request's turns as `(role, content)`; tool calls as their names.
fn turns(request: &RecordedRequest) -> Vec<(String, String)> {
    request
        .messages()
        .iter()
        .map(|m| {
            let role = m["role"].as_str().unwrap_or_default().to_owned();
            let content = match (&m["content"], m.get("tool_calls")) {
                (Value::String(text), _) => text.clone(),
                (_, Some(Value::Array(calls))) => calls
                    .iter()
                    .map(|c| {
                        format!(
                            "{}({})",
                            c["function"]["name"].as_str().unwrap_or_default(),
                            c["function"]["arguments"].as_str().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                (other, _) => other.to_string(),
            };
            (role, content)
        })
        .collect()
}

fn turn(role: &str, content: &str) -> (String, String) {
    (role.into(), content.into())
}

const SUMMARIZE: &str = r#"
name = "summarize"
[args]
required = ["order"]

[[steps]]
id = "summary"
kind = "llm"
system = "You summarise orders for the support team."
prompt = "Summarise order {{args.order}}."
retry = { max_attempts = 2, initial_backoff_ms = 1000, jitter = 0.0 }

[[steps]]
id = "word"
kind = "llm"
model = "small-model"
system = "Answer with one word."
prompt = "Is this shipped? {{steps.summary.text}}"
"#;

#[tokio::test]
async fn an_llm_step_journals_its_answer_and_sends_the_prompt_it_was_given() {
    let h = Harness::start(&[("summarize.toml", SUMMARIZE)]).await;
    h.llm().push(Reply::status(503));
    h.llm()
        .push(Reply::text("Two mugs, shipped on Monday.").usage(30, 7));
    h.llm().push(Reply::text("Yes").usage(20, 1));
    let run = h.start_run("summarize", json!({"order": "A-1042"})).await;

    // The 503 is the step's to retry, after a durable backoff.
    let state = h
        .until(run, "the call to wait for its retry", |s| {
            s.run.status == RunStatus::Waiting
                && s.journal
                    .first()
                    .is_some_and(|e| e.status == StepStatus::Retrying)
        })
        .await;
    let error = state.journal[0].error.clone().unwrap_or_default();
    assert_eq!(error["retryable"], true, "{error}");
    assert_mentions(&error, "503");
    h.advance(2);
    let state = h.until_completed(run).await;
    assert_eq!(
        journal(&state),
        [
            step("run", "summary", StepStatus::Completed, 2),
            step("run", "word", StepStatus::Completed, 1),
        ]
    );
    let summary = output(&state, "run", "summary");
    assert_eq!(summary["text"], "Two mugs, shipped on Monday.");
    assert_eq!(summary["model"], REPLY_MODEL, "the server's reply model");
    assert_eq!(
        summary["usage"],
        json!({"prompt_tokens": 30, "completion_tokens": 7, "total_tokens": 37})
    );
    assert!(summary["latency_ms"].is_u64(), "{summary}");
    assert!(
        summary.get("json").is_none(),
        "no schema, no json: {summary}"
    );
    // The run's result is the last step's.
    let word = state.run.result.clone().unwrap_or_default();
    assert_eq!(word["text"], "Yes");
    assert_eq!(word["model"], "small-model");

    let requests = h.requests(3).await;
    assert_eq!(requests.len(), 3, "one call per attempt, none on replay");
    for request in &requests[..2] {
        assert_eq!(request.model.as_deref(), Some(REPLY_MODEL));
        assert_eq!(
            turns(request),
            [
                turn("system", "You summarise orders for the support team."),
                turn("user", "Summarise order A-1042."),
            ]
        );
        assert!(request.response_format().is_none());
        assert!(request.tools().is_empty());
    }
    assert_eq!(requests[2].model.as_deref(), Some("small-model"));
    assert_eq!(
        requests[2].last_user_text().as_deref(),
        Some("Is this shipped? Two mugs, shipped on Monday.")
    );
    h.finish().await;
}

const CLASSIFY: &str = r#"
name = "classify"
[[steps]]
id = "sort"
kind = "llm"
system = "Sort the customer's request."
prompt = "{{args.text}}"
on_error = "unsure"
next = "end"

[steps.schema]
type = "object"
required = ["urgent", "topic"]
additionalProperties = false

[steps.schema.properties]
urgent = { type = "boolean" }
topic = { type = "string", enum = ["billing", "shipping"] }

[[steps]]
id = "unsure"
kind = "branch"
on = "steps.sort.error.message"
default = "end"
"#;

#[tokio::test]
async fn structured_output_is_parsed_and_a_malformed_answer_follows_on_error() {
    let strict = CLASSIFY
        .replace("name = \"classify\"", "name = \"classify_strict\"")
        .replace("on_error = \"unsure\"\n", "");
    let h = Harness::start(&[("classify.toml", CLASSIFY), ("strict.toml", &strict)]).await;
    let args = json!({"text": "I was charged twice!"});

    // An answer that fits: parsed into `json`.
    h.llm()
        .push(Reply::json(json!({"urgent": true, "topic": "billing"})));
    let run = h.start_run("classify", args.clone()).await;
    let state = h.until_completed(run).await;
    let sorted = state.run.result.clone().unwrap_or_default();
    assert_eq!(sorted["json"], json!({"urgent": true, "topic": "billing"}));
    assert_eq!(sorted["text"], r#"{"topic":"billing","urgent":true}"#);
    let request = &h.requests(1).await[0];
    let format = request.response_format().cloned().unwrap_or_default();
    assert_eq!(format["type"], "json_schema", "{format}");
    assert_eq!(format["json_schema"]["name"], "sort");
    assert_eq!(format["json_schema"]["strict"], true);
    assert_eq!(
        format["json_schema"]["schema"]["properties"]["topic"]["enum"],
        json!(["billing", "shipping"])
    );
    assert_eq!(
        turns(request),
        [
            turn("system", "Sort the customer's request."),
            turn("user", "I was charged twice!"),
        ]
    );

    // Not JSON, or JSON that does not fit: the step fails for good (no
    // retry) and the run goes to `on_error`, which sees why.
    for (reply, why) in [
        (
            Reply::raw_content("Sure! It's about billing."),
            "the answer is not valid JSON",
        ),
        (
            Reply::json(json!({"urgent": "very", "topic": "billing"})),
            "does not fit the step's schema: /urgent is a string, not boolean",
        ),
        (
            Reply::json(json!({"urgent": false, "topic": "returns"})),
            "/topic is not one of [\"billing\",\"shipping\"]",
        ),
    ] {
        h.llm().push(reply);
        let run = h.start_run("classify", args.clone()).await;
        let state = h.until_completed(run).await;
        assert_eq!(
            journal(&state),
            [step("run", "sort", StepStatus::Failed, 1)],
            "the branch takes no journal entry"
        );
        let result = state.run.result.clone().unwrap_or_default();
        assert_eq!(result["target"], "end");
        let message = result["value"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{message}");
    }

    // Without `on_error`, the run fails with the step.
    h.llm().push(Reply::raw_content("billing, I think"));
    let run = h.start_run("classify_strict", args).await;
    let state = h.until_failed(run).await;
    let error = state.run.error.clone().unwrap_or_default();
    assert_eq!(error["code"], "step_failed", "{error}");
    assert_eq!(error["step"], "sort");
    assert_eq!(error["retryable"], false);
    assert_mentions(&error, "not valid JSON");
    assert_eq!(
        h.requests(5).await.len(),
        5,
        "malformed answers are not retried"
    );
    h.finish().await;
}

/// The example, down the path where the AI asks the team first: the
/// question item, a restart while it waits, the answer in the draft's
/// prompt, and an edited approval published as the thread's next message.
#[tokio::test]
async fn the_example_asks_the_team_and_publishes_the_approved_edit() {
    let mut h = Harness::start(&[]).await;
    let thread = h.asked_thread().await;
    let question = "Is order A-1042 still within the return window?";
    h.llm()
        .push(Reply::json(json!({"needs_team": true, "question": question})).usage(50, 12));
    let run = h
        .start_run("ai-approval", json!({"thread_id": thread}))
        .await;

    // A `question` item about an internal `ask_human` call.
    let asked = h.until_waiting_on_item(run, InboxKind::Question).await;
    assert_eq!(asked.body.as_deref(), Some(question));
    assert_eq!(asked.thread_id, thread);
    assert_eq!(asked.run_id, Some(run));
    assert_eq!(
        asked.reason.as_deref(),
        Some("the workflow \"ai-approval\" asks the support team")
    );
    assert_eq!(
        asked.due_at.map(|d| d.timestamp()),
        Some(h.clock.now().timestamp() + 3600)
    );
    let call_id = asked.tool_call_id.clone().expect("a tool call id");
    let call = h.message(thread, asked.message_id).await;
    assert_eq!(call.role, Role::Assistant);
    assert_eq!(call.visibility, Visibility::Internal);
    assert_eq!(call.author.kind, AuthorKind::Ai);
    assert_eq!(call.agent_name.as_deref(), Some(AGENT));
    assert_eq!(
        call.content,
        Content::Parts(vec![Part::ToolCall {
            id: call_id.clone(),
            name: "ask_human".into(),
            arguments: json!({"question": question}),
        }])
    );
    assert_eq!(
        call.metadata["providerMetadata"]["workflow"]["step"],
        "ask_team"
    );

    // The triage call: the history (the customer's words a user turn),
    // then the step's instruction as a system turn.
    let triage = &h.requests(1).await[0];
    let sent = turns(triage);
    assert_eq!(sent.len(), 3, "{sent:#?}");
    assert_eq!(sent[0].0, "system");
    assert!(
        sent[0]
            .1
            .starts_with("You are the support assistant of Acme.")
    );
    assert_eq!(sent[1], turn("user", CUSTOMER_TEXT));
    assert_eq!(sent[2].0, "system");
    assert!(sent[2].1.starts_with("Decide whether you can answer"));
    assert_eq!(
        triage.response_format().unwrap_or(&Value::Null)["json_schema"]["name"],
        "triage"
    );

    // A restart while the run waits: it resumes with the answer all the same.
    h.restart().await;
    h.llm().push(
        Reply::json(json!({"reply": "Yes: returns are accepted within 30 days."})).usage(80, 15),
    );
    h.store
        .answer_question(
            asked.id,
            "Yes, 30 days; it is day 20.".into(),
            "dana",
            h.now(),
        )
        .await
        .expect("answer");
    h.engine.wake();

    // The draft: held with an `approval` item, never published by the run.
    let review = h.until_waiting_on_item(run, InboxKind::Approval).await;
    let drafted = "Yes: returns are accepted within 30 days.";
    assert_eq!(review.body.as_deref(), Some(drafted));
    assert_eq!(
        review.reason.as_deref(),
        Some("AI answers are approved by a person before customers see them")
    );
    let draft = h.message(thread, review.message_id).await;
    assert_eq!(draft.status, MessageStatus::PendingApproval);
    assert_eq!(draft.visibility, Visibility::Internal);
    assert_eq!(
        (draft.author.kind, draft.agent_name.as_deref()),
        (AuthorKind::Ai, Some(AGENT))
    );
    assert_eq!(text(&draft), drafted);
    assert_eq!(
        h.messages(thread, true).await.len(),
        1,
        "the customer sees only their question"
    );

    // The draft call saw the question and the team's answer in the history.
    let sent = turns(&h.requests(2).await[1]);
    assert_eq!(sent.len(), 5, "{sent:#?}");
    assert_eq!(sent[1], turn("user", CUSTOMER_TEXT));
    assert_eq!(
        sent[2],
        turn(
            "assistant",
            &format!("ask_human({})", json!({"question": question}))
        )
    );
    assert_eq!(
        sent[3],
        turn(
            "tool",
            &json!({"answer": "Yes, 30 days; it is day 20."}).to_string()
        )
    );
    assert_eq!(sent[4].0, "system");
    assert!(sent[4].1.starts_with("Write your reply"), "{sent:#?}");

    let edited = "Yes, you can still return it: our window is 30 days, and it has been 20.";
    let approved = h
        .store
        .approve_draft(review.id, Some(edited.into()), "dana", h.now())
        .await
        .expect("approve");
    h.engine.wake();
    let state = h.until_completed(run).await;
    assert_eq!(
        state.run.result,
        Some(json!({"value": true, "target": "end"})),
        "the last step is the branch on `approved`"
    );
    assert_eq!(
        journal(&state),
        [
            step("run", "triage", StepStatus::Completed, 1),
            step("open_item", "ask_team", StepStatus::Completed, 1),
            step("wait_event", "inbox:…", StepStatus::Completed, 1),
            step("run", "draft", StepStatus::Completed, 1),
            step("open_item", "review", StepStatus::Completed, 1),
            step("wait_event", "inbox:…", StepStatus::Completed, 1),
        ]
    );
    let published = approved.message.expect("published");
    let resolved = output(&state, "wait_event", &format!("inbox:{}", review.id));
    assert_eq!(resolved["event"]["resolution"], "approved");
    assert_eq!(resolved["event"]["message_id"], json!(published.id));

    // The edit is the thread's next message, public, from the AI agent; the
    // draft stays internal.
    let all = h.messages(thread, false).await;
    let seqs: Vec<(i64, Role, Visibility, MessageStatus)> = all
        .iter()
        .map(|m| (m.seq, m.role, m.visibility, m.status))
        .collect();
    assert_eq!(
        seqs,
        [
            (1, Role::User, Visibility::Public, MessageStatus::Published),
            (
                2,
                Role::Assistant,
                Visibility::Internal,
                MessageStatus::Published
            ),
            (
                3,
                Role::Tool,
                Visibility::Internal,
                MessageStatus::Published
            ),
            (
                4,
                Role::Assistant,
                Visibility::Internal,
                MessageStatus::Approved
            ),
            (
                5,
                Role::Assistant,
                Visibility::Public,
                MessageStatus::Published
            ),
        ]
    );
    assert_eq!(all[4].id, published.id);
    assert_eq!(text(&all[4]), edited);
    assert_eq!(all[4].agent_name.as_deref(), Some(AGENT));
    let seen = h.texts(thread, true).await;
    assert_eq!(seen, [CUSTOMER_TEXT, edited]);
    assert_ne!(h.assigned_to(thread).await, AssignedTo::Human);

    // Both calls' tokens are recorded against the thread.
    let usage = h.store.thread_usage(thread).await.expect("store");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (130, 27));
    assert_eq!(usage.by_model[0].purpose, "workflow");
    assert_eq!(h.requests(2).await.len(), 2, "no model call repeated");
    h.finish().await;
}

#[tokio::test]
async fn the_example_hands_a_rejected_draft_to_the_team() {
    let h = Harness::start(&[]).await;
    let thread = h.asked_thread().await;
    h.llm()
        .push(Reply::json(json!({"needs_team": false, "question": ""})));
    h.llm()
        .push(Reply::json(json!({"reply": "Sure, returns are free."})));
    let run = h
        .start_run("ai-approval", json!({"thread_id": thread}))
        .await;
    let review = h.until_waiting_on_item(run, InboxKind::Approval).await;
    h.store
        .reject_draft(
            review.id,
            "A-1042 was a final sale.".into(),
            "dana",
            h.now(),
        )
        .await
        .expect("reject");
    h.engine.wake();
    let state = h.until_completed(run).await;
    let names: Vec<String> = journal(&state).into_iter().map(|e| e.1).collect();
    assert_eq!(names, ["triage", "draft", "review", "inbox:…", "hand_over"]);
    let wait = output(&state, "wait_event", &format!("inbox:{}", review.id));
    assert_eq!(wait["event"]["resolution"], "rejected");
    assert_eq!(wait["event"]["text"], "A-1042 was a final sale.");
    let handed = output(&state, "assign", "hand_over");
    assert_eq!(handed["assigned_to"], "human");

    let draft = h.message(thread, review.message_id).await;
    assert_eq!(draft.status, MessageStatus::Rejected);
    assert_eq!(
        h.messages(thread, true).await.len(),
        1,
        "nothing was published"
    );
    assert_eq!(h.item(&review).await.status, InboxStatus::Resolved);
    h.finish().await;
}

const RELAY: &str = r#"
name = "relay"
output = { ask = "{{steps.ask}}", review = "{{steps.review}}" }
[args]
required = ["thread_id"]

[[steps]]
id = "ask"
kind = "ask_human"
thread_id = "{{args.thread_id}}"
question = "Which carrier takes order A-1042?"

[[steps]]
id = "review"
kind = "approval"
thread_id = "{{args.thread_id}}"
text = "Your order ships with {{steps.ask.answer}}."
"#;

/// The results later steps read: an answer, an approval as drafted, a
/// rejection.
#[tokio::test]
async fn answers_and_reviews_are_the_steps_results() {
    let h = Harness::start(&[("relay.toml", RELAY)]).await;
    let thread = h.asked_thread().await;
    let mut outputs = Vec::new();
    for approve in [true, false] {
        let run = h.start_run("relay", json!({"thread_id": thread})).await;
        let asked = h.until_waiting_on_item(run, InboxKind::Question).await;
        let answered = h
            .store
            .answer_question(asked.id, "DHL".into(), "dana", h.now())
            .await
            .expect("answer");
        h.engine.wake();
        let review = h.until_waiting_on_item(run, InboxKind::Approval).await;
        assert_eq!(review.body.as_deref(), Some("Your order ships with DHL."));
        let published = if approve {
            let approved = h
                .store
                .approve_draft(review.id, None, "sam", h.now())
                .await
                .expect("approve");
            approved.message.map(|m| m.id)
        } else {
            h.store
                .reject_draft(review.id, "Say when, too.".into(), "sam", h.now())
                .await
                .expect("reject");
            None
        };
        h.engine.wake();
        let state = h.until_completed(run).await;
        let result = state.run.result.clone().unwrap_or_default();
        let tool_message = answered.message.map(|m| m.id);
        assert_eq!(
            result["ask"],
            json!({
                "answer": "DHL",
                "by": "dana",
                "item_id": asked.id,
                "message_id": tool_message,
                "timed_out": false,
            })
        );
        outputs.push((result["review"].clone(), review, published));
    }
    let (approved, review, published) = &outputs[0];
    assert_eq!(
        approved,
        &json!({
            "approved": true,
            "resolution": "approved",
            "text": "Your order ships with DHL.",
            "review": null,
            "by": "sam",
            "message_id": published,
            "draft_id": review.message_id,
            "item_id": review.id,
            "timed_out": false,
        })
    );
    let (rejected, review, _) = &outputs[1];
    assert_eq!(
        rejected,
        &json!({
            "approved": false,
            "resolution": "rejected",
            "text": null,
            "review": "Say when, too.",
            "by": "sam",
            "message_id": null,
            "draft_id": review.message_id,
            "item_id": review.id,
            "timed_out": false,
        })
    );
    let seen = h.texts(thread, true).await;
    assert_eq!(seen, [CUSTOMER_TEXT, "Your order ships with DHL."]);
    h.finish().await;
}

const PATIENCE: &str = r#"
name = "patience"
[args]
required = ["thread_id"]

[[steps]]
id = "ask"
kind = "ask_human"
thread_id = "{{args.thread_id}}"
question = "Is the warehouse open on Sunday?"
reason = "weekend pickups"
agent_name = "Weekend Bot"
timeout_secs = 60
on_timeout = "hold"

[[steps]]
id = "skipped"
kind = "sleep"
seconds = 1

[[steps]]
id = "hold"
kind = "approval"
thread_id = "{{args.thread_id}}"
text = "We will get back to you on Monday (asked: {{steps.ask.timed_out}})."
timeout_secs = 60
"#;

#[tokio::test]
async fn unanswered_items_expire_and_the_run_follows_its_timeout() {
    let h = Harness::start(&[("patience.toml", PATIENCE)]).await;
    let thread = h.asked_thread().await;
    let run = h.start_run("patience", json!({"thread_id": thread})).await;
    let asked = h.until_waiting_on_item(run, InboxKind::Question).await;
    assert_eq!(asked.reason.as_deref(), Some("weekend pickups"));
    let call = h.message(thread, asked.message_id).await;
    assert_eq!(call.agent_name.as_deref(), Some("Weekend Bot"));

    // No answer in time: the item expires and the run goes to `on_timeout`.
    h.advance(61);
    let held = h.until_waiting_on_item(run, InboxKind::Approval).await;
    assert_eq!(h.item(&asked).await.status, InboxStatus::Expired);
    assert_eq!(
        held.body.as_deref(),
        Some("We will get back to you on Monday (asked: true).")
    );
    let draft = h.message(thread, held.message_id).await;
    assert_eq!(
        draft.agent_name.as_deref(),
        Some(AGENT),
        "the server's agent"
    );

    // No review in time and no `on_timeout`: the item expires, the run fails.
    h.advance(61);
    let state = h.until_failed(run).await;
    let error = state.run.error.clone().unwrap_or_default();
    assert_eq!(error["step"], "hold", "{error}");
    assert_mentions(&error, "was not resolved within 60 s");
    assert_eq!(h.item(&held).await.status, InboxStatus::Expired);
    assert_eq!(
        journal(&state),
        [
            step("open_item", "ask", StepStatus::Completed, 1),
            step("wait_event", "inbox:…", StepStatus::Completed, 1),
            step("run", "ask", StepStatus::Completed, 1),
            step("open_item", "hold", StepStatus::Completed, 1),
            step("wait_event", "inbox:…", StepStatus::Completed, 1),
            step("run", "hold", StepStatus::Completed, 1),
        ]
    );
    assert_eq!(output(&state, "run", "ask"), json!({"expired": true}));

    // An answer after the deadline finds the item closed.
    let late = h
        .store
        .answer_question(asked.id, "Yes".into(), "dana", h.now())
        .await;
    assert!(late.is_err(), "{late:?}");
    assert!(h.llm().chat_requests().is_empty());
    h.finish().await;
}

#[tokio::test]
async fn a_definition_with_an_llm_step_does_not_load_while_the_ai_is_off() {
    let h = Harness::start(&[]).await;
    let dir = h.dir.path().join("workflows");
    let mut registry = Registry::new();
    let error = load_definitions(&h.store, &dir, &mut registry, &Services::default())
        .await
        .expect_err("the AI is off");
    let DefinitionError::Invalid(problems) = &error else {
        panic!("{error}");
    };
    let text = error.to_string();
    assert_eq!(problems.len(), 2, "{text}");
    for step in ["triage", "draft"] {
        assert!(
            text.contains(&format!(
                "ai-approval.toml: step \"{step}\": field `kind`: an `llm` step needs a model \
                 endpoint and the AI is off"
            )),
            "{text}"
        );
    }
    assert_eq!(registry.names().count(), 0, "nothing is registered");

    // `ask_human` and `approval` need no model.
    std::fs::remove_file(dir.join("ai-approval.toml")).expect("remove");
    std::fs::write(dir.join("patience.toml"), PATIENCE).expect("write");
    let loaded = load_definitions(&h.store, &dir, &mut Registry::new(), &Services::default())
        .await
        .expect("loads with the AI off");
    assert_eq!(loaded.len(), 1);
    h.finish().await;
}
