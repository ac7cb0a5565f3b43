//! What a customer must never see, path by path: the REST list, a
//! WebSocket replay (subscribed after the fact), the WebSocket live
//! (subscribed while it happens), and what reaches it after an approval
//! and after a rejection. The staff-only kinds: AI drafts waiting for
//! approval, rejected drafts and their review, agents' internal notes, the
//! routing reasons and decisions, `ask_human` questions and answers, and
//! copilot suggestions. Every staff-only text below holds `SECRET`, so one
//! search of what the customer got covers them all; `customer_view.rs`
//! covers the staff metadata keys of published replies.
//!
//! And what a customer should see: who is answering once a human took the
//! thread (the assignee, the agent's name on replies, the agent typing).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;
use tandem_tests::reply::{
    Chat, assert_customer_safe, frames_until, resolve, set_policy, wait_for_item,
};

/// The marker of every text a customer must never get.
const SECRET: &str = "SECRET";
const FIRST_QUESTION: &str = "When do you open?";
const APPROVED: &str = "We open at nine.";
const SECOND_QUESTION: &str = "Can I get a refund for order 42?";
const FINAL: &str = "Dana here: your refund is on its way.";

/// A server whose AI answers through the classifier and holds every reply
/// for approval.
async fn server(llm: &ScriptedLlm) -> TestServer {
    let server = TestServer::with_ai(llm, |_| {}).await;
    set_policy(
        &server,
        json!({
            "routing": ["assignment", "classifier", "ai"],
            "approval": {"mode": "always"},
        }),
    )
    .await;
    server
}

/// The classifier sends the next message to the AI, with a reason.
fn route_to_ai(llm: &ScriptedLlm) {
    llm.push_for(
        "classifier-model",
        Reply::json(json!({
            "responder": "ai",
            "reason": "SECRET-ROUTING an easy question",
            "sensitive": false,
        })),
    );
}

/// The customer asks; the AI's draft waits; an agent approves it edited.
/// Returns the published reply.
async fn approved_reply(server: &TestServer, llm: &ScriptedLlm, chat: &Chat) -> Value {
    route_to_ai(llm);
    llm.push_for("reply-model", Reply::text("SECRET-DRAFT we open at 9am"));
    chat.say(server, FIRST_QUESTION).await;
    let item = wait_for_item(server, &chat.thread).await;
    assert_eq!(item["kind"], "approval", "{item:#}");
    let dana = server.agent("dana").await;
    let approved = resolve(server, &dana, &item, "approve", json!({"text": APPROVED})).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    approved.body["message"].clone()
}

/// The customer asks; the AI asks a human, gets an answer, drafts a reply;
/// an agent rejects the draft with a review.
async fn rejected_draft(server: &TestServer, llm: &ScriptedLlm, chat: &Chat) {
    route_to_ai(llm);
    llm.push_for(
        "reply-model",
        Reply::tool_call(
            "ask_human",
            json!({"question": "SECRET-QUESTION is order 42 refundable?"}),
        )
        .with_id("call_paths"),
    );
    llm.push_for(
        "reply-model",
        Reply::text("SECRET-DRAFT-REJECTED refunded twice"),
    );
    chat.say(server, SECOND_QUESTION).await;
    let dana = server.agent("dana").await;
    let question = wait_for_item(server, &chat.thread).await;
    assert_eq!(question["kind"], "question", "{question:#}");
    let answered = resolve(
        server,
        &dana,
        &question,
        "answer",
        json!({"text": "SECRET-ANSWER until Friday"}),
    )
    .await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    let draft = wait_for_item(server, &chat.thread).await;
    assert_eq!(draft["kind"], "approval", "{draft:#}");
    let rejected = resolve(
        server,
        &dana,
        &draft,
        "reject",
        json!({"review": "SECRET-REVIEW promises a double refund"}),
    )
    .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
}

/// An agent writes an internal note and asks the AI for a suggestion.
async fn note_and_suggestion(server: &TestServer, llm: &ScriptedLlm, chat: &Chat) {
    let dana = server.agent("dana").await;
    let note = server
        .post(
            &format!("/v1/threads/{}/messages", chat.thread),
            &dana,
            json!({"content": "SECRET-NOTE refund approved by billing", "visibility": "internal"}),
        )
        .await;
    assert_eq!(note.status, StatusCode::CREATED, "{}", note.text);
    llm.push_for("reply-model", Reply::text("SECRET-SUGGESTION refund today"));
    let suggestion = server
        .post(
            &format!("/v1/threads/{}/suggestions", chat.thread),
            &dana,
            json!({"instructions": "SECRET-GUIDANCE be brief"}),
        )
        .await;
    assert_eq!(
        suggestion.status,
        StatusCode::CREATED,
        "{}",
        suggestion.text
    );
}

/// An agent's public reply: the end of what the customer should get.
async fn final_reply(server: &TestServer, chat: &Chat) {
    let dana = server.agent("dana").await;
    let posted = server
        .post(
            &format!("/v1/threads/{}/messages", chat.thread),
            &dana,
            json!({"content": FINAL}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
}

/// Every staff-only kind, in one thread, then the agent's reply.
async fn play(server: &TestServer, llm: &ScriptedLlm, chat: &Chat) {
    approved_reply(server, llm, chat).await;
    rejected_draft(server, llm, chat).await;
    note_and_suggestion(server, llm, chat).await;
    final_reply(server, chat).await;
}

/// What the customer should have of [`play`], in order.
const PLAYED: [&str; 4] = [FIRST_QUESTION, APPROVED, SECOND_QUESTION, FINAL];

/// The messages of `message` frames.
fn messages_of(frames: &[Value]) -> Vec<Value> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["message"].clone())
        .collect()
}

/// The customer got exactly `expected` (contents, in order), all public
/// and published, with no staff metadata, and nothing of `SECRET` at all.
#[track_caller]
fn assert_customer_got(messages: &[Value], everything: &impl std::fmt::Debug, expected: &[&str]) {
    let contents: Vec<&str> = messages
        .iter()
        .map(|m| m["content"].as_str().unwrap_or("<parts>"))
        .collect();
    assert_eq!(contents, expected, "{messages:#?}");
    for message in messages {
        assert_eq!(message["visibility"], "public", "{message:#}");
        assert_eq!(message["status"], "published", "{message:#}");
        assert_customer_safe(message);
    }
    let seen = format!("{everything:?}");
    assert!(
        !seen.contains(SECRET),
        "staff-only text reached the customer: {seen}"
    );
}

/// Frames of a customer socket up to the agent's final reply.
async fn frames_until_final(socket: &mut tandem_tests::ws::WsClient) -> Vec<Value> {
    frames_until(socket, |f| {
        f["type"] == "message" && f["message"]["content"] == FINAL
    })
    .await
}

#[tokio::test]
async fn the_rest_list_holds_only_what_was_published_to_the_customer() {
    let llm = ScriptedLlm::start().await;
    let server = server(&llm).await;
    let chat = Chat::open(&server, "c1").await;
    play(&server, &llm, &chat).await;

    let history = chat.history(&server).await;
    assert_customer_got(&history, &history, &PLAYED);
    // Pages do not leak either: one message at a time.
    let mut after = 0;
    for expected in PLAYED {
        let page = server
            .get(
                &format!(
                    "/v1/threads/{}/messages?after_seq={after}&limit=1",
                    chat.thread
                ),
                &chat.token,
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        assert_eq!(
            page.body["messages"][0]["content"], expected,
            "{:#}",
            page.body
        );
        after = page.body["next_after_seq"]
            .as_i64()
            .expect("next_after_seq");
    }

    // Staff have every kind the customer was spared.
    let staff = server.messages(&chat.thread, &server.admin).await;
    let has = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        assert!(staff.iter().any(pred), "staff have no {what}: {staff:#?}");
    };
    has("draft left approved", &|m| {
        m["status"] == "approved" && m["content"] == "SECRET-DRAFT we open at 9am"
    });
    has("rejected draft", &|m| m["status"] == "rejected");
    has("ask_human call", &|m| {
        m["content"][0]["type"] == "tool_call"
    });
    has("answer", &|m| m["role"] == "tool");
    has("internal note", &|m| {
        m["visibility"] == "internal" && m["author"]["kind"] == "human"
    });
    has("suggestion", &|m| m["metadata"]["suggestion"].is_object());
    has("routing reason", &|m| {
        m["content"] == APPROVED
            && m["metadata"]["decisions"]
                .to_string()
                .contains("SECRET-ROUTING")
    });
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_replay_after_the_fact_holds_only_what_was_published() {
    let llm = ScriptedLlm::start().await;
    let server = server(&llm).await;
    let chat = Chat::open(&server, "c1").await;
    play(&server, &llm, &chat).await;

    let mut late = server.ws(&chat.token).await;
    let subscribed = late
        .subscribe(&format!("thread:{}", chat.thread), Some(0))
        .await;
    // The thread holds far more than the customer is sent.
    assert!(
        subscribed["last_seq"].as_i64().expect("last_seq") > PLAYED.len() as i64,
        "{subscribed:#}"
    );
    let frames = frames_until_final(&mut late).await;
    assert_customer_got(&messages_of(&frames), &frames, &PLAYED);
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_subscribed_all_along_gets_only_what_was_published() {
    let llm = ScriptedLlm::start().await;
    let server = server(&llm).await;
    let mut chat = Chat::open(&server, "c1").await;
    play(&server, &llm, &chat).await;

    let frames = frames_until_final(&mut chat.socket).await;
    assert_customer_got(&messages_of(&frames), &frames, &PLAYED);
    assert!(
        frames
            .iter()
            .all(|f| f["type"] != "delta" && f["type"] != "inbox"),
        "{frames:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn after_an_approval_the_customer_gets_the_approved_text_only() {
    let llm = ScriptedLlm::start().await;
    let server = server(&llm).await;
    let mut chat = Chat::open(&server, "c1").await;
    let published = approved_reply(&server, &llm, &chat).await;
    assert_eq!(
        published["metadata"]["approval"]["edited"], true,
        "{published:#}"
    );

    let frames = chat.frames_until_reply().await;
    let expected = [FIRST_QUESTION, APPROVED];
    assert_customer_got(&messages_of(&frames), &frames, &expected);
    assert_eq!(messages_of(&frames)[1]["id"], published["id"]);
    let history = chat.history(&server).await;
    assert_customer_got(&history, &history, &expected);
    server.stop().await;
}

#[tokio::test]
async fn after_a_rejection_the_customer_gets_nothing_of_the_draft_or_its_review() {
    let llm = ScriptedLlm::start().await;
    let server = server(&llm).await;
    let mut chat = Chat::open(&server, "c1").await;
    rejected_draft(&server, &llm, &chat).await;
    note_and_suggestion(&server, &llm, &chat).await;

    let frames = chat.frames_until_agent_says(&server, "dana", FINAL).await;
    let expected = [SECOND_QUESTION, FINAL];
    assert_customer_got(&messages_of(&frames), &frames, &expected);
    // The handover itself is no secret: the thread is now with humans.
    let handed = frames
        .iter()
        .rev()
        .find(|f| f["type"] == "thread")
        .unwrap_or_else(|| panic!("no thread frame: {frames:#?}"));
    assert_eq!(handed["thread"]["assigned_to"], "human", "{handed:#}");
    let history = chat.history(&server).await;
    assert_customer_got(&history, &history, &expected);
    server.stop().await;
}

#[tokio::test]
async fn while_a_human_is_assigned_the_customer_sees_who_answers_and_types() {
    let server = TestServer::start().await;
    let mut chat = Chat::open(&server, "c1").await;
    let dana = server.agent("Dana").await;
    chat.say(&server, "Hello, anyone there?").await;

    let assigned = server
        .call(
            Method::PUT,
            &format!("/v1/threads/{}/assignment", chat.thread),
            Some(&dana),
            Some(
                json!({"assigned_to": "human", "agent_id": "Dana", "reason": "SECRET-REASON VIP"}),
            ),
        )
        .await;
    assert_eq!(assigned.status, StatusCode::OK, "{}", assigned.text);

    // REST: the thread names its assignee.
    let thread = server
        .get(&format!("/v1/threads/{}", chat.thread), &chat.token)
        .await;
    assert_eq!(thread.status, StatusCode::OK, "{}", thread.text);
    assert_eq!(thread.body["assigned_to"], "human", "{:#}", thread.body);
    assert_eq!(thread.body["assignee"], "Dana", "{:#}", thread.body);
    // WebSocket: so does the `thread` frame, without the staff's reason.
    let frames = chat.frames_until(|f| f["type"] == "thread").await;
    let frame = frames.last().expect("thread frame");
    assert_eq!(frame["thread"]["assignee"], "Dana", "{frame:#}");
    assert!(!format!("{frames:?}").contains(SECRET), "{frames:#?}");

    // The agent types: the customer is told who.
    let mut desk = server.ws(&dana).await;
    desk.subscribe(&format!("thread:{}", chat.thread), None)
        .await;
    desk.send(json!({"type": "typing", "thread_id": chat.thread}))
        .await;
    let typing = chat.socket.next_of("typing").await;
    assert_eq!(typing["thread_id"], json!(chat.thread), "{typing:#}");
    assert_eq!(
        typing["who"],
        json!({"kind": "human", "name": "Dana"}),
        "{typing:#}"
    );

    // The agent's reply carries its name.
    let frames = chat
        .frames_until_agent_says(&server, "Dana", "Hi, Dana here.")
        .await;
    let reply = messages_of(&frames).pop().expect("reply");
    assert_eq!(reply["agent_name"], "Dana", "{reply:#}");
    assert_eq!(reply["author"]["kind"], "human");
    assert_eq!(reply["metadata"]["provider"], "human");
    server.stop().await;
}
