//! End-to-end tests of the web pages (`/chat`, `/inbox`, `widget.js`) in
//! Chromium. Each test starts the real server on loopback (with a scripted
//! model), prepares data through the harness, then runs one Node scenario
//! (`tests/browser/scenarios/<name>.mjs`, playwright-core) that uses the
//! pages as a customer and an agent would; afterwards it checks on the
//! server what a user would expect to be stored.
//!
//! Prerequisites (Node.js, `npm ci`, Debian's Chromium) are installed once
//! by `tests/browser/setup.sh`; when they cannot be, the tests fail.
//! Screenshots go to `TANDEM_SCREENSHOT_DIR` (default `target/screenshots`).

mod support;

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tandem_model::{InboxKind, NewInboxItem, Priority, ThreadId};
use tandem_scripted_llm::{RecordedRequest, Reply, ScriptedLlm};
use tandem_tests::TestServer;
use tandem_tests::reply::{set_policy, wait_for_message};

use support::{
    assert_absent, base_vars, customer_view, free_port, run_scenario, screenshot_dir, summary,
    thread_of, threads,
};

/// The AI agent's name on its messages.
const AI_NAME: &str = "Tandem AI";
const AGENT: &str = "Sam";
const PASSWORD: &str = "correct horse battery staple";

/// A server with the scripted model, an inbox account for [`AGENT`] and a
/// widget key for the server's own origin (and `origins`).
async fn start(llm: &ScriptedLlm, origins: &[String]) -> (TestServer, tandem_model::WidgetKey) {
    let server = TestServer::with_ai(llm, |config| config.agent.name = AI_NAME.into()).await;
    prepare(server, origins, false).await
}

async fn prepare(
    server: TestServer,
    origins: &[String],
    identity_required: bool,
) -> (TestServer, tandem_model::WidgetKey) {
    server.agent_account(AGENT, PASSWORD).await;
    let mut allowed = vec![server.url.clone()];
    allowed.extend(origins.iter().cloned());
    let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
    let key = server.widget_key(&allowed, identity_required).await;
    (server, key)
}

/// The variables of a scenario with a widget key and the agent's sign-in.
fn vars(server: &TestServer, key: &tandem_model::WidgetKey) -> Vec<(&'static str, String)> {
    let mut vars = base_vars(server);
    vars.extend([
        ("WIDGET_KEY", key.key.clone()),
        ("AGENT_NAME", AGENT.to_owned()),
        ("AGENT_PASSWORD", PASSWORD.to_owned()),
        ("AI_NAME", AI_NAME.to_owned()),
    ]);
    vars
}

/// The text of the last `user` turn of a model request.
fn last_user_text(request: &RecordedRequest) -> String {
    request
        .messages()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect()
}

#[tokio::test]
async fn the_ai_reply_streams_into_the_chat_whose_page_loads_under_100_kib() {
    const QUESTION: &str = "When will my order 1042 ship?";
    const FINAL: &str = "Your order 1042 ships tomorrow morning from our Lyon warehouse, \
                         and you will get a tracking link by email as soon as it leaves.";
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::text(FINAL)
            .chunked(25)
            .chunk_delay(Duration::from_millis(60)),
    );
    let (server, key) = start(&llm, &[]).await;
    let mut env = vars(&server, &key);
    env.extend([
        ("QUESTION", QUESTION.to_owned()),
        ("FINAL", FINAL.to_owned()),
    ]);
    let outcome = run_scenario("streaming", &env).await;
    eprintln!("first load: {}", outcome.result);

    let threads = threads(&server).await;
    assert_eq!(threads.len(), 1, "{threads:#?}");
    let messages = customer_view(&server, &threads[0]).await;
    assert_eq!(
        summary(&messages),
        owned(&[("customer", "", QUESTION), ("ai", AI_NAME, FINAL)])
    );
    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(last_user_text(&requests[0]), QUESTION);
    assert!(requests[0].stream(), "the reply was not streamed");
    server.stop().await;
}

#[tokio::test]
async fn an_agent_answers_the_ais_question_live_in_the_inbox() {
    const QUESTION: &str = "Can I return a pair of boots after 40 days?";
    const HUMAN_QUESTION: &str = "Do we accept returns after 40 days for boots?";
    const ANSWER: &str = "Yes, boots have a 60-day return window.";
    const FINAL: &str = "Good news: boots can be returned within 60 days, so you still can.";
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::tool_call("ask_human", json!({"question": HUMAN_QUESTION})).with_id("call_boots"),
    );
    llm.push(Reply::text(FINAL).chunked(4));
    let (server, key) = start(&llm, &[]).await;
    let mut env = vars(&server, &key);
    env.extend([
        ("QUESTION", QUESTION.to_owned()),
        ("HUMAN_QUESTION", HUMAN_QUESTION.to_owned()),
        ("ANSWER", ANSWER.to_owned()),
        ("FINAL", FINAL.to_owned()),
    ]);
    run_scenario("ask_human", &env).await;

    // The model got the human's answer as the result of its tool call.
    let requests = llm.wait_for_chat_requests(2, Duration::from_secs(5)).await;
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let tool_results: Vec<&Value> = requests[1]
        .messages()
        .iter()
        .filter(|m| m["role"] == "tool")
        .collect();
    assert_eq!(tool_results.len(), 1, "{:#?}", requests[1].messages());
    assert_eq!(tool_results[0]["tool_call_id"], "call_boots");
    assert!(
        tool_results[0]["content"]
            .as_str()
            .is_some_and(|c| c.contains(ANSWER)),
        "the tool result is not the agent's answer: {:#}",
        tool_results[0]
    );
    let thread = &threads(&server).await[0];
    let messages = customer_view(&server, thread).await;
    assert_eq!(
        summary(&messages),
        owned(&[("customer", "", QUESTION), ("ai", AI_NAME, FINAL)])
    );
    assert_absent(&messages, HUMAN_QUESTION, "the AI's question to humans");
    assert_absent(&messages, ANSWER, "the agent's answer");
    server.stop().await;
}

#[tokio::test]
async fn an_agent_edits_and_approves_a_draft_and_the_customer_sees_only_the_edit() {
    const QUESTION: &str = "I was charged twice for order 77, can you fix it?";
    const DRAFT: &str = "DRAFT-77 We will refund both charges right away.";
    const EDITED: &str = "We are refunding the duplicate charge on order 77 today.";
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text(DRAFT));
    let (server, key) = start(&llm, &[]).await;
    set_policy(
        &server,
        json!({"routing": ["assignment", "ai"], "approval": {"mode": "always"}}),
    )
    .await;
    let mut env = vars(&server, &key);
    env.extend([
        ("QUESTION", QUESTION.to_owned()),
        ("DRAFT", DRAFT.to_owned()),
        ("EDITED", EDITED.to_owned()),
    ]);
    run_scenario("approval", &env).await;

    let thread = &threads(&server).await[0];
    let messages = customer_view(&server, thread).await;
    assert_eq!(
        summary(&messages),
        owned(&[("customer", "", QUESTION), ("ai", AI_NAME, EDITED)])
    );
    assert_absent(&messages, DRAFT, "the unedited draft");
    // Staff keep the record: the draft, approved with an edit.
    let id = thread["id"].as_str().expect("thread id");
    let staff = server.messages(id, &server.admin).await;
    assert!(
        serde_json::to_string(&staff)
            .expect("JSON")
            .contains(EDITED),
        "{staff:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_agent_takes_over_replies_notes_and_hands_back_to_the_ai() {
    const Q1: &str = "Hi, my parcel says delivered but it is not here.";
    const AI1: &str = "Sorry about that! Let me check with the carrier.";
    const HUMAN_REPLY: &str = "Hi, Sam here: I have opened a claim with the carrier for you.";
    const NOTE: &str = "NOTE-internal customer had two lost parcels this year";
    const Q2: &str = "Thanks Sam! How long does a claim take?";
    const AI2: &str = "A carrier claim usually takes three to five working days.";
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text(AI1).chunked(3));
    llm.push(Reply::text(AI2).chunked(3));
    let (server, key) = start(&llm, &[]).await;
    let mut env = vars(&server, &key);
    env.extend([
        ("Q1", Q1.to_owned()),
        ("AI1", AI1.to_owned()),
        ("HUMAN_REPLY", HUMAN_REPLY.to_owned()),
        ("NOTE", NOTE.to_owned()),
        ("Q2", Q2.to_owned()),
        ("AI2", AI2.to_owned()),
    ]);
    run_scenario("takeover", &env).await;

    let thread = &threads(&server).await[0];
    let messages = customer_view(&server, thread).await;
    let shown: Vec<_> = summary(&messages)
        .into_iter()
        .filter(|(kind, _, _)| kind != "system")
        .collect();
    assert_eq!(
        shown,
        owned(&[
            ("customer", "", Q1),
            ("ai", AI_NAME, AI1),
            ("human", AGENT, HUMAN_REPLY),
            ("customer", "", Q2),
            ("ai", AI_NAME, AI2),
        ])
    );
    assert_absent(&messages, NOTE, "the internal note");
    let id = thread["id"].as_str().expect("thread id");
    wait_for_message(&server, id, &server.admin, |m| {
        m["content"] == NOTE && m["visibility"] == "internal"
    })
    .await;
    // Sam took the thread, then gave it back to the AI.
    let history = server
        .get(&format!("/v1/threads/{id}/assignments"), &server.admin)
        .await;
    let changes: Vec<(Value, Value)> = history.body["assignments"]
        .as_array()
        .expect("assignments")
        .iter()
        .map(|a| (a["assigned_to"].clone(), a["by"]["id"].clone()))
        .collect();
    assert_eq!(
        changes,
        [(json!("ai"), json!(AGENT)), (json!("human"), json!(AGENT))],
        "{:#}",
        history.body
    );
    assert_eq!(llm.chat_requests().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn messages_sent_while_the_network_is_down_arrive_once_in_order() {
    const FIRST: &str = "Hello, is anyone there?";
    let customer = [
        "Offline one: my order 9 is late",
        "Offline two: it was due Monday",
        "Offline three: please check",
    ];
    let agent = [
        "Agent: checking order 9 now",
        "Agent: it left the depot today",
    ];
    // No model: every customer message goes to humans, no AI reply.
    let server = TestServer::with_ai_off().await;
    let proxy_port = free_port();
    let (server, key) = prepare(server, &[format!("http://127.0.0.1:{proxy_port}")], false).await;
    let mut env = vars(&server, &key);
    env.extend([
        ("AGENT_TOKEN", server.agent(AGENT).await),
        ("PROXY_PORT", proxy_port.to_string()),
        ("FIRST", FIRST.to_owned()),
        ("CUSTOMER_TEXTS", json!(customer).to_string()),
        ("AGENT_TEXTS", json!(agent).to_string()),
    ]);
    let outcome = run_scenario("network_drop", &env).await;

    let thread = &threads(&server).await[0];
    let messages = customer_view(&server, thread).await;
    for text in customer.iter().chain(&agent).chain([&FIRST]) {
        let copies = messages.iter().filter(|m| m["content"] == *text).count();
        assert_eq!(
            copies, 1,
            "{text:?} is stored {copies} times: {messages:#?}"
        );
    }
    // The page showed exactly what the customer can read, in seq order.
    let seqs: Vec<Value> = messages.iter().map(|m| m["seq"].clone()).collect();
    assert_eq!(outcome.result["seqs"], json!(seqs), "{messages:#?}");
    server.stop().await;
}

#[tokio::test]
async fn the_widget_embeds_the_chat_on_allowed_sites_for_verified_users() {
    const USER_ID: &str = "user-4711";
    const REPLY_PREFIX: &str = "Happy to help with: ";
    let llm = ScriptedLlm::start().await;
    llm.respond_with(|request| Reply::text(format!("{REPLY_PREFIX}{}", last_user_text(request))));
    let (host_port, other_port) = (free_port(), free_port());
    let (server, key) = start(&llm, &[format!("http://127.0.0.1:{host_port}")]).await;
    let mut env = vars(&server, &key);
    env.extend([
        ("IDENTITY_SECRET", key.identity_secret.clone()),
        ("USER_ID", USER_ID.to_owned()),
        ("HOST_PORT", host_port.to_string()),
        ("OTHER_PORT", other_port.to_string()),
        (
            "HISTORY",
            "Earlier: where is my invoice for March?".to_owned(),
        ),
        ("WIDGET_TEXT", "From the widget: and for April?".to_owned()),
        ("KEYBOARD_TEXT", "Typed with the keyboard only".to_owned()),
        ("AFTER_RELOAD", "Still here after a reload".to_owned()),
        ("REPLY_PREFIX", REPLY_PREFIX.to_owned()),
    ]);
    let outcome = run_scenario("widget", &env).await;

    // What the verified user wrote in the widget is in that user's thread.
    let customer = outcome.result["historyCustomer"]
        .as_str()
        .expect("the verified customer id");
    let thread = thread_of(&server, customer).await;
    let texts: Vec<String> = summary(&customer_view(&server, &thread).await)
        .into_iter()
        .map(|(_, _, text)| text)
        .collect();
    assert!(
        texts.iter().any(|t| t == "From the widget: and for April?"),
        "{texts:#?}"
    );
    // The anonymous visitor's conversation survived the reload in one thread.
    let all = threads(&server).await;
    let anonymous: Vec<&Value> = all
        .iter()
        .filter(|t| t["customer_id"] != customer)
        .collect();
    assert_eq!(anonymous.len(), 1, "{all:#?}");
    let texts: Vec<String> = summary(&customer_view(&server, anonymous[0]).await)
        .into_iter()
        .map(|(_, _, text)| text)
        .collect();
    assert_eq!(
        texts,
        [
            "Typed with the keyboard only".to_owned(),
            format!("{REPLY_PREFIX}Typed with the keyboard only"),
            "Still here after a reload".to_owned(),
            format!("{REPLY_PREFIX}Still here after a reload"),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn screenshots_of_both_pages_at_desktop_and_phone_widths() {
    const QUESTION: &str = "Do you ship to Norway?";
    const AI_REPLY: &str = "Yes! We ship to Norway in 3 to 5 working days; customs are included.";
    const HUMAN_REPLY: &str = "Sam from the team here: your order qualifies for free shipping.";
    let llm = ScriptedLlm::start().await;
    llm.respond_with(|request| {
        if last_user_text(request) == QUESTION {
            Reply::text(AI_REPLY).chunked(4)
        } else {
            Reply::text("Thanks, I am looking into it.")
        }
    });
    let (server, key) = start(&llm, &[]).await;

    // A queue of every kind, on threads of their own.
    let kinds = [
        (
            InboxKind::Question,
            "Customer asks whether gift cards can pay for shipping",
            "Can gift cards pay for shipping?",
        ),
        (
            InboxKind::Approval,
            "Customer wants to cancel a subscription",
            "I have cancelled your subscription; you will not be charged again.",
        ),
        (
            InboxKind::Escalation,
            "Customer is upset about a broken lamp",
            "Angry customer: needs a person",
        ),
        (
            InboxKind::Handoff,
            "Customer asks for a phone call",
            "The thread is assigned to humans",
        ),
    ];
    for (n, (kind, customer_text, body)) in kinds.iter().enumerate() {
        let thread = server.thread_for(&format!("shopper-{n}")).await;
        server.post_text(&thread, customer_text).await;
        let thread_id: ThreadId = thread.parse().expect("thread id");
        server
            .store
            .open_inbox_item(NewInboxItem {
                kind: *kind,
                thread_id,
                message_id: None,
                tool_call_id: None,
                body: Some((*body).to_owned()),
                suggestion: None,
                reason: Some(format!("{kind:?} for the screenshot")),
                due_at: Some(Utc::now() + chrono::Duration::minutes(20 + 10 * n as i64)),
                due_in: None,
                team: None,
                priority: Priority::Normal,
                run_id: None,
            })
            .await
            .expect("an inbox item");
    }
    let mut env = vars(&server, &key);
    env.extend([
        ("AGENT_TOKEN", server.agent(AGENT).await),
        ("QUESTION", QUESTION.to_owned()),
        ("AI_REPLY", AI_REPLY.to_owned()),
        ("HUMAN_REPLY", HUMAN_REPLY.to_owned()),
        (
            "KINDS",
            json!(["question", "approval", "escalation", "handoff"]).to_string(),
        ),
    ]);
    run_scenario("screenshots", &env).await;

    for (name, width) in [
        ("chat-desktop", 1280),
        ("chat-phone", 390),
        ("inbox-desktop", 1280),
        ("inbox-phone", 390),
    ] {
        let file = screenshot_dir().join(format!("{name}.png"));
        let png = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            png.len() > 10_000,
            "{} is only {} bytes",
            file.display(),
            png.len()
        );
        assert_eq!(&png[1..4], b"PNG", "{} is not a PNG", file.display());
        let shot_width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
        assert_eq!(shot_width, width, "{} width", file.display());
    }
    server.stop().await;
}
