//! The reply path end to end: a customer message, the router, the model
//! (a scripted OpenAI-compatible server on loopback), the hub.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_scripted_llm::{RecordedRequest, Reply, ScriptedLlm, ToolCall};
use tandem_tests::TestServer;
use tandem_tests::reply::{
    Chat, WAIT, assert_customer_safe, deltas, messages_in, reply_outcomes, reply_runs, resolve,
    roles, run_result, runs_settled, set_policy, staff_view, streamed, thread, usage,
    wait_for_item, wait_for_message,
};

/// The text of a turn of a recorded request: its string content, or its
/// text parts joined.
fn text(turn: &Value) -> String {
    match &turn["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// `(role, name, text)` of each turn of a request, for whole-prompt
/// assertions.
fn turns(request: &RecordedRequest) -> Vec<(String, Option<String>, String)> {
    request
        .messages()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["name"].as_str().map(str::to_owned),
                text(m),
            )
        })
        .collect()
}

/// An assistant message written by the AI (not by a human agent).
fn by_ai(message: &Value) -> bool {
    message["role"] == "assistant" && message["author"]["kind"] == "ai"
}

/// No AI text reached the customer: no message, and no streamed text left
/// standing (a `reset` delta voids what was streamed before it).
fn no_ai_text(frames: &[Value]) {
    for delta in deltas(frames) {
        let shown = streamed(frames, &delta["message_id"]);
        assert!(
            shown.is_empty(),
            "AI text left streamed: {shown:?} in {frames:#?}"
        );
    }
    for message in messages_in(frames) {
        assert!(
            !by_ai(message),
            "an AI message reached the customer: {message:#}"
        );
        assert_eq!(message["visibility"], "public", "{message:#}");
    }
    assert!(
        frames.iter().all(|f| f["type"] != "inbox"),
        "an inbox item reached the customer"
    );
}

#[tokio::test]
async fn the_ai_answers_streaming_to_the_customer_and_the_reply_is_stored_once() {
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::text("Your order ships tomorrow.")
            .chunked(4)
            .usage(30, 6),
    );
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let thread = server.thread_for("c1").await;
    let customer = server.customer("c1").await;
    let mut socket = server.ws(&customer).await;
    socket.subscribe(&format!("thread:{thread}"), None).await;

    let posted = server
        .post(
            &format!("/v1/threads/{thread}/messages"),
            &customer,
            json!({"content": "When does my order ship?"}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);

    let mut streamed = String::new();
    let reply = loop {
        let frame = socket.next().await;
        match frame["type"].as_str() {
            Some("delta") => streamed.push_str(frame["text"].as_str().expect("text")),
            Some("message") if frame["message"]["role"] == "assistant" => break frame,
            _ => {}
        }
    };
    assert_eq!(streamed, "Your order ships tomorrow.");
    let message = &reply["message"];
    assert_eq!(message["content"], "Your order ships tomorrow.");
    assert_eq!(message["agent_name"], "Tandem AI");
    assert_eq!(message["author"]["kind"], "ai");
    assert_eq!(message["metadata"]["provider"], "reply-model");
    assert_eq!(message["reply_to"], posted.body["id"]);
    // Staff see how it was decided and what it cost; the customer does not.
    assert_customer_safe(message);
    let staff = staff_view(&server, &thread, message).await;
    assert_eq!(staff["metadata"]["usage"]["prompt_tokens"], 30);
    assert_eq!(staff["metadata"]["routing"]["strategy"], "ai");

    let request = &llm.chat_requests()[0];
    let messages = request.messages();
    assert_eq!(messages[0]["role"], "system");
    assert_eq!(messages.last().expect("turn")["role"], "user");
    assert_eq!(
        messages.last().expect("turn")["content"],
        "When does my order ship?"
    );
    assert_eq!(request.tools(), vec!["ask_human", "escalate"]);
    assert!(request.stream());

    let all = server.messages(&thread, &customer).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    let usage = server
        .get(&format!("/v1/threads/{thread}/usage"), &server.admin)
        .await;
    assert_eq!(usage.body["total_tokens"], 36, "{}", usage.text);
    wait_for_message(&server, &thread, &customer, |m| m["role"] == "assistant").await;
}

/// What a strict chat template demands (llama.cpp with Qwen's or Llama's
/// template): the system prompt first and no other system turn, and no
/// `name` on any turn.
fn assert_strict_prompt(request: &RecordedRequest) {
    let turns = turns(request);
    assert_eq!(turns[0].0, "system", "{turns:#?}");
    assert!(
        !turns[1..].iter().any(|(role, _, _)| role == "system"),
        "a system turn after the first: {turns:#?}"
    );
    assert!(
        turns.iter().all(|(_, name, _)| name.is_none()),
        "a turn with a name: {turns:#?}"
    );
}

#[tokio::test]
async fn the_prompt_carries_the_history_with_a_human_agents_stretch_marked() {
    let llm = ScriptedLlm::start().await;
    // As llama.cpp with a strict template: a system turn after the first,
    // or a named turn, is refused with a 500.
    llm.set_strict_template(true);
    llm.push(
        Reply::text("Sorry to hear that! Let me look.")
            .chunked(3)
            .usage(10, 5),
    );
    llm.push(
        Reply::text("Yes, Friday at the latest.")
            .chunked(2)
            .usage(20, 7),
    );
    llm.push(Reply::text("You're welcome!").usage(40, 3));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;
    let agent = server.agent("alice").await;

    let mut replies = Vec::new();
    let mut asks = Vec::new();
    for (n, text) in [
        "My package is late.",
        "Thanks Alice! Will it arrive by Friday?",
        "Great, thank you.",
    ]
    .into_iter()
    .enumerate()
    {
        asks.push(chat.say(&server, text).await);
        let frames = chat
            .frames_until(|f| f["type"] == "message" && by_ai(&f["message"]))
            .await;
        let reply = frames.last().expect("the reply")["message"].clone();
        assert_eq!(
            streamed(&frames, &reply["id"]),
            reply["content"].as_str().expect("text"),
            "the deltas of reply {n} are not its text: {frames:#?}"
        );
        assert_eq!(reply["reply_to"], asks[n]["id"]);
        replies.push(reply);
        if n == 0 {
            let posted = server
                .post(
                    &format!("/v1/threads/{}/messages", chat.thread),
                    &agent,
                    json!({"content": "Hi, this is Alice. I've expedited your package."}),
                )
                .await;
            assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
            assert_eq!(posted.body["metadata"]["provider"], "human");
        }
    }

    let history = chat.history(&server).await;
    assert_eq!(
        roles(&history),
        [
            "user",
            "assistant",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ],
        "{history:#?}"
    );
    assert_eq!(history.iter().filter(|m| by_ai(m)).count(), 3);

    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 3);
    // The strict template accepted every request: one system turn, first,
    // and no names; the human's stretch is in the human's own turn.
    for request in &requests {
        assert_strict_prompt(request);
    }
    let last = turns(&requests[2]);
    let shape: Vec<&str> = last.iter().map(|(role, _, _)| role.as_str()).collect();
    assert_eq!(
        shape,
        [
            "system",
            "user",
            "assistant",
            "assistant",
            "user",
            "assistant",
            "user"
        ],
        "{last:#?}"
    );
    assert!(
        last[0].2.contains("customer support assistant"),
        "{}",
        last[0].2
    );
    assert_eq!(last[1].2, "My package is late.");
    assert_eq!(last[2].2, "Sorry to hear that! Let me look.");
    let alice: Vec<&str> = last[3].2.lines().collect();
    assert_eq!(alice.len(), 3, "{alice:#?}");
    assert!(
        alice[0].starts_with("[Note from Tandem: a human support agent, alice, took over"),
        "the start of the human stretch: {}",
        alice[0]
    );
    assert_eq!(
        alice[1],
        "alice (human agent): Hi, this is Alice. I've expedited your package."
    );
    assert_eq!(
        alice[2],
        "[Note from Tandem: the human agent's part ends here; you, Tandem AI, are answering \
         again.]",
        "the end of the human stretch"
    );
    assert_eq!(last[4].2, "Thanks Alice! Will it arrive by Friday?");
    assert_eq!(last[5].2, "Yes, Friday at the latest.");
    assert_eq!(last[6].2, "Great, thank you.");
    // While the human's stretch is still open, only its start is marked.
    let middle = turns(&requests[1]);
    assert!(
        middle
            .iter()
            .any(|(_, _, t)| t.contains("alice, took over")),
        "{middle:#?}"
    );
    assert!(!middle.iter().any(|(_, _, t)| t.contains("ends here")));

    // Tool schemas are offered on every call.
    for request in &requests {
        assert_eq!(request.tools(), ["ask_human", "escalate"]);
        let tools = request.body["tools"].as_array().expect("tools");
        let ask = &tools[0]["function"]["parameters"];
        assert!(ask["properties"]["question"].is_object(), "{ask:#}");
        assert!(
            ask["required"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("question"))),
            "{ask:#}"
        );
        let escalate = &tools[1]["function"]["parameters"];
        assert!(escalate["properties"]["reason"].is_object(), "{escalate:#}");
        assert!(request.stream());
    }

    // Usage: per reply on the message (for staff), summed per thread.
    let first = staff_view(&server, &chat.thread, &replies[0]).await;
    let third = staff_view(&server, &chat.thread, &replies[2]).await;
    assert_eq!(first["metadata"]["usage"]["prompt_tokens"], 10);
    assert_eq!(first["metadata"]["usage"]["completion_tokens"], 5);
    assert_eq!(third["metadata"]["usage"]["prompt_tokens"], 40);
    let usage = usage(&server, &chat.thread).await;
    assert_eq!(usage["prompt_tokens"], 70, "{usage:#}");
    assert_eq!(usage["completion_tokens"], 15);
    assert_eq!(usage["total_tokens"], 85);
    let by_model = usage["by_model"].as_array().expect("by_model");
    assert_eq!(by_model.len(), 1, "{usage:#}");
    assert_eq!(by_model[0]["model"], "reply-model");
    assert_eq!(by_model[0]["purpose"], "reply");
    assert_eq!(by_model[0]["calls"], 3);
    server.stop().await;
}

#[tokio::test]
async fn ask_human_waits_for_an_agents_answer_that_the_customer_never_sees() {
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::tool_call(
            "ask_human",
            json!({"question": "Can order 42 still be refunded?"}),
        )
        .with_id("call_q1")
        .usage(25, 9),
    );
    llm.push(Reply::text("Good news: order 42 can be refunded until Friday.").usage(60, 11));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;
    let agent = server.agent("alice").await;
    let mut desk = server.ws(&agent).await;
    desk.subscribe("inbox", None).await;

    let asked = chat
        .say(&server, "Can I still get a refund for order 42?")
        .await;
    let pushed = loop {
        let frame = desk.next_of("inbox").await;
        if frame["item"]["thread_id"] == json!(chat.thread) {
            break frame["item"].clone();
        }
    };
    assert_eq!(pushed["kind"], "question", "{pushed:#}");
    assert_eq!(pushed["body"], "Can order 42 still be refunded?");
    assert_eq!(pushed["tool_call_id"], "call_q1");
    assert_eq!(pushed["status"], "open");
    let item = server
        .get(
            &format!("/v1/inbox/{}", pushed["id"].as_str().expect("id")),
            &agent,
        )
        .await;
    assert_eq!(item.status, StatusCode::OK, "{}", item.text);
    let item = item.body;
    assert_eq!(item["body"], pushed["body"]);
    let run = item["run_id"].as_str().expect("run id").to_owned();
    server.wait_for_status(&run, "waiting").await;

    // The question is staff-only: the AI's tool call is internal.
    assert_eq!(roles(&chat.history(&server).await), ["user"]);
    let as_staff = server.messages(&chat.thread, &agent).await;
    let call = as_staff
        .iter()
        .find(|m| m["id"] == item["message_id"])
        .expect("the tool call message");
    assert_eq!(call["visibility"], "internal");
    assert_eq!(call["content"][0]["type"], "tool_call", "{call:#}");
    assert_eq!(call["content"][0]["id"], "call_q1");

    let answered = resolve(
        &server,
        &agent,
        &item,
        "answer",
        json!({"text": "Yes, until Friday."}),
    )
    .await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    assert_eq!(answered.body["item"]["status"], "resolved");
    assert_eq!(answered.body["item"]["resolution"], "answered");
    assert_eq!(answered.body["item"]["resolved_by"], "alice");
    let answer = &answered.body["message"];
    assert_eq!(answer["role"], "tool", "{answer:#}");
    assert_eq!(answer["visibility"], "internal");
    assert_eq!(answer["metadata"]["provider"], "human");
    assert_eq!(answer["content"][0]["type"], "tool_result");
    assert_eq!(answer["content"][0]["tool_call_id"], "call_q1");

    // The customer's socket: their message, then the reply streaming and
    // stored; nothing of the question or the answer.
    let frames = chat.frames_until_reply().await;
    let reply = frames.last().expect("reply")["message"].clone();
    assert_eq!(
        reply["content"],
        "Good news: order 42 can be refunded until Friday."
    );
    assert_eq!(reply["reply_to"], asked["id"]);
    assert_eq!(
        streamed(&frames, &reply["id"]),
        reply["content"].as_str().expect("text")
    );
    for frame in &frames {
        assert_ne!(frame["type"], "inbox", "{frame}");
        let text = frame.to_string();
        assert!(
            !text.contains("still be refunded?") && !text.contains("Yes, until Friday."),
            "the question or answer reached the customer: {frame}"
        );
        if frame["type"] == "message" {
            assert_eq!(frame["message"]["visibility"], "public", "{frame}");
        }
    }
    let history = chat.history(&server).await;
    assert_eq!(roles(&history), ["user", "assistant"], "{history:#?}");

    // The second request carries the call and the human's answer.
    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 2);
    let second = requests[1].messages();
    let at = second
        .iter()
        .position(|m| m["role"] == "assistant" && m["tool_calls"].is_array())
        .expect("the assistant's tool call");
    let call = &second[at]["tool_calls"][0];
    assert_eq!(call["id"], "call_q1");
    assert_eq!(call["function"]["name"], "ask_human");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments"))
            .expect("JSON arguments");
    assert_eq!(arguments["question"], "Can order 42 still be refunded?");
    assert_eq!(second[at + 1]["role"], "tool");
    assert_eq!(second[at + 1]["tool_call_id"], "call_q1");
    assert!(
        text(&second[at + 1]).contains("Yes, until Friday."),
        "{:#}",
        second[at + 1]
    );
    assert_eq!(second[at - 1]["role"], "user");

    let result = run_result(&server, &json!(run)).await;
    assert_eq!(result["outcome"], "replied", "{result:#}");
    assert_eq!(result["message_id"], reply["id"]);
    let staff = staff_view(&server, &chat.thread, &reply).await;
    assert_eq!(staff["metadata"]["run_id"], json!(run));
    assert_eq!(usage(&server, &chat.thread).await["total_tokens"], 105);

    let again = resolve(
        &server,
        &agent,
        &item,
        "answer",
        json!({"text": "No, sorry."}),
    )
    .await;
    again.assert_error(StatusCode::CONFLICT, "item_closed");
    runs_settled(&server).await;
    assert_eq!(roles(&chat.history(&server).await), ["user", "assistant"]);
    assert_eq!(llm.chat_requests().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn text_the_model_writes_alongside_a_tool_call_is_not_left_with_the_customer() {
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::text("Let me check with the team.")
            .with_tool_call(
                "ask_human",
                json!({"question": "Is the warehouse open on Sunday?"}),
            )
            .with_id("call_q2"),
    );
    llm.push(Reply::text("Yes, we ship on Sundays."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;
    let agent = server.agent("alice").await;

    chat.say(&server, "Do you ship on Sundays?").await;
    let item = wait_for_item(&server, &chat.thread).await;
    assert_eq!(item["kind"], "question");
    let answered = resolve(&server, &agent, &item, "answer", json!({"text": "We do."})).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    let frames = chat.frames_until_reply().await;
    let reply = frames.last().expect("reply")["message"].clone();
    assert_eq!(reply["content"], "Yes, we ship on Sundays.");
    // What a chat widget shows from the deltas must end as the stored reply.
    assert_eq!(
        streamed(&frames, &reply["id"]),
        "Yes, we ship on Sundays.",
        "deltas: {:#?}",
        deltas(&frames)
    );
    server.stop().await;
}

#[tokio::test]
async fn escalate_hands_the_thread_to_humans_with_the_ais_suggestion() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::tool_call(
        "escalate",
        json!({
            "reason": "the customer asks for a manager",
            "suggested_reply": "I'm passing you to a manager now."
        }),
    ));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;
    let agent = server.agent("alice").await;
    let mut desk = server.ws(&agent).await;
    desk.subscribe("inbox", None).await;

    let asked = chat.say(&server, "Get me your manager. Now.").await;
    let item = loop {
        let frame = desk.next_of("inbox").await;
        if frame["item"]["thread_id"] == json!(chat.thread) {
            break frame["item"].clone();
        }
    };
    assert_eq!(item["kind"], "escalation", "{item:#}");
    assert_eq!(item["suggestion"], "I'm passing you to a manager now.");
    assert_eq!(
        item["reason"],
        "the AI escalated: the customer asks for a manager"
    );
    assert_eq!(item["message_id"], asked["id"]);
    assert_eq!(thread(&server, &chat.thread).await["assigned_to"], "human");
    let result = run_result(&server, &item["run_id"]).await;
    assert_eq!(result["outcome"], "handed_over", "{result:#}");
    assert_eq!(result["responder"], "human");
    let ai = result["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .find(|d| d["strategy"] == "ai")
        .expect("the AI's decision");
    assert_eq!(ai["responder"], "human");

    let frames = chat
        .frames_until_agent_says(&server, "alice", "Hi, I'm the manager.")
        .await;
    no_ai_text(&frames);
    let history = chat.history(&server).await;
    assert!(!history.iter().any(by_ai), "{history:#?}");
    assert_eq!(llm.chat_requests().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn with_confidence_on_a_low_score_escalates_and_a_high_one_is_published_unstreamed() {
    let llm = ScriptedLlm::start().await;
    let server = TestServer::with_ai(&llm, |_| {}).await;
    set_policy(&server, json!({"confidence": {"enabled": true}})).await;

    // Low: escalated, the AI's text as the suggestion.
    llm.push(Reply::json(
        json!({"reply": "Maybe restart the router?", "confidence": 0.4}),
    ));
    let mut low = Chat::open(&server, "c1").await;
    low.say(&server, "My internet is down.").await;
    let item = wait_for_item(&server, &low.thread).await;
    assert_eq!(item["kind"], "escalation", "{item:#}");
    assert_eq!(item["suggestion"], "Maybe restart the router?");
    let reason = item["reason"].as_str().expect("reason");
    assert!(
        reason.contains("0.40") && reason.contains("0.70"),
        "{reason}"
    );
    assert_eq!(thread(&server, &low.thread).await["assigned_to"], "human");
    let frames = low
        .frames_until_agent_says(&server, "alice", "Let me help.")
        .await;
    no_ai_text(&frames);

    // High: published as the reply text, with its confidence.
    llm.push(Reply::json(json!({
        "reply": "Your invoices are under Settings, Billing.",
        "confidence": 0.92
    })));
    let mut high = Chat::open(&server, "c2").await;
    high.say(&server, "Where are my invoices?").await;
    let frames = high.frames_until_reply().await;
    let reply = frames.last().expect("reply")["message"].clone();
    assert_eq!(
        reply["content"],
        "Your invoices are under Settings, Billing."
    );
    assert_customer_safe(&reply);
    let reply = staff_view(&server, &high.thread, &reply).await;
    assert_eq!(reply["metadata"]["confidence"], 0.92);
    assert!(
        deltas(&frames).is_empty(),
        "JSON streamed to the customer: {frames:#?}"
    );
    let decisions = reply["metadata"]["decisions"]
        .as_array()
        .expect("decisions");
    assert!(
        decisions
            .iter()
            .any(|d| d["strategy"] == "confidence" && d["responder"] == "ai"),
        "{decisions:#?}"
    );

    // Malformed: to humans.
    llm.push(Reply::raw_content("Sure! Your invoices are in Billing."));
    let mut malformed = Chat::open(&server, "c3").await;
    malformed.say(&server, "Invoices?").await;
    let item = wait_for_item(&server, &malformed.thread).await;
    assert_eq!(item["kind"], "escalation", "{item:#}");
    assert!(
        item["reason"]
            .as_str()
            .is_some_and(|r| r.contains("malformed")),
        "{item:#}"
    );
    let frames = malformed
        .frames_until_agent_says(&server, "alice", "Let me check.")
        .await;
    no_ai_text(&frames);

    for request in llm.chat_requests() {
        assert!(
            !request.stream(),
            "a reply with a confidence must not stream"
        );
        let format = request.response_format().expect("a response format");
        assert_eq!(format["type"], "json_schema", "{format:#}");
        let schema = &format["json_schema"]["schema"];
        assert!(schema["properties"]["confidence"].is_object(), "{format:#}");
        assert!(schema["properties"]["reply"].is_object(), "{format:#}");
    }
    server.stop().await;
}

#[tokio::test]
async fn invalid_tool_calls_go_back_to_the_model_as_errors_and_it_corrects_itself() {
    let llm = ScriptedLlm::start().await;
    let server = TestServer::with_ai(&llm, |_| {}).await;

    // `ask_human` without its question.
    llm.push(Reply::tool_call("ask_human", json!({})).with_id("call_bad"));
    llm.push(Reply::text("We open at nine."));
    let first = Chat::open(&server, "c1").await;
    first.say(&server, "When do you open?").await;
    let reply = wait_for_message(&server, &first.thread, &first.token, by_ai).await;
    assert_eq!(reply["content"], "We open at nine.");
    let second = &llm.chat_requests()[1];
    let refused = tool_result(second, "call_bad");
    assert!(
        refused.contains("error") && refused.contains("question"),
        "{refused}"
    );
    assert!(
        second
            .messages()
            .iter()
            .any(|m| m["tool_calls"][0]["id"] == "call_bad"),
        "the refused call precedes its error"
    );

    // A tool that does not exist, and arguments that are not JSON, in one turn.
    llm.push(Reply::tool_calls(vec![
        ToolCall::new("refund_order", json!({"order": 42})).with_id("call_unknown"),
        ToolCall::raw("ask_human", "{\"question\": ").with_id("call_broken"),
    ]));
    llm.push(Reply::text("I can't refund orders myself, sorry."));
    let other = Chat::open(&server, "c2").await;
    other.say(&server, "Refund order 42.").await;
    let reply = wait_for_message(&server, &other.thread, &other.token, by_ai).await;
    assert_eq!(reply["content"], "I can't refund orders myself, sorry.");
    let fourth = &llm.chat_requests()[3];
    let unknown = tool_result(fourth, "call_unknown");
    assert!(
        unknown.contains("no tool named `refund_order`"),
        "{unknown}"
    );
    assert!(tool_result(fourth, "call_broken").contains("error"));

    // `escalate` without a reason: refused, not obeyed.
    llm.push(Reply::tool_call("escalate", json!({"suggested_reply": "Bye"})).with_id("call_esc"));
    llm.push(Reply::text("Happy to help with that."));
    let third = Chat::open(&server, "c3").await;
    third.say(&server, "Can you help?").await;
    let reply = wait_for_message(&server, &third.thread, &third.token, by_ai).await;
    assert_eq!(reply["content"], "Happy to help with that.");
    let sixth = &llm.chat_requests()[5];
    assert!(tool_result(sixth, "call_esc").contains("reason"));
    assert_ne!(thread(&server, &third.thread).await["assigned_to"], "human");

    runs_settled(&server).await;
    assert!(
        tandem_tests::reply::inbox(&server, "").await.is_empty(),
        "an invalid call opened an item"
    );
    assert_eq!(llm.chat_requests().len(), 6);
    server.stop().await;
}

#[tokio::test]
async fn a_call_with_broken_arguments_is_corrected_on_a_server_that_parses_them() {
    let llm = ScriptedLlm::start().await;
    // As llama.cpp: tool call arguments in the history that do not parse
    // as a JSON object make it refuse the request (500).
    llm.set_strict_template(true);
    let broken = "{\"question\": \"Can order 42 be refunded?";
    llm.push(Reply::tool_calls(vec![
        ToolCall::raw("ask_human", broken).with_id("call_broken"),
    ]));
    llm.push(Reply::text("Let me check that refund for you."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let chat = Chat::open(&server, "c1").await;

    chat.say(&server, "Can I get a refund for order 42?").await;
    let reply = wait_for_message(&server, &chat.thread, &chat.token, by_ai).await;

    assert_eq!(reply["content"], "Let me check that refund for you.");
    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 2, "the correction was accepted at once");
    let second = &requests[1];
    let call = second
        .messages()
        .iter()
        .find(|m| m["tool_calls"][0]["id"] == "call_broken")
        .expect("the refused call precedes its error");
    assert_eq!(call["tool_calls"][0]["function"]["arguments"], "{}");
    let refused = tool_result(second, "call_broken");
    assert!(
        refused.contains("Invalid arguments for ask_human")
            && refused.contains("not a JSON object"),
        "{refused}"
    );
    assert!(
        refused.contains("Can order 42 be refunded?"),
        "the model sees what it wrote: {refused}"
    );
    runs_settled(&server).await;
    assert_ne!(thread(&server, &chat.thread).await["assigned_to"], "human");
    server.stop().await;
}

#[tokio::test]
async fn the_ai_never_speaks_under_a_human_agents_label() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Hello! How can I help?"));
    // What a small model did after a human's turn: it began its own the
    // same way.
    llm.push(Reply::text("sam (human agent): You're welcome, have a nice day!").chunked(3));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;
    let agent = server.agent("sam").await;

    chat.say(&server, "Hi").await;
    chat.frames_until(|f| f["type"] == "message" && by_ai(&f["message"]))
        .await;
    let posted = server
        .post(
            &format!("/v1/threads/{}/messages", chat.thread),
            &agent,
            json!({"content": "Sam here: your refund is on its way."}),
        )
        .await;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.text);
    chat.say(&server, "Thanks!").await;
    let frames = chat
        .frames_until(|f| {
            f["type"] == "message"
                && by_ai(&f["message"])
                && f["message"]["content"] != "Hello! How can I help?"
        })
        .await;

    let reply = frames.last().expect("the reply")["message"].clone();
    assert_eq!(reply["content"], "You're welcome, have a nice day!");
    assert_eq!(reply["agent_name"], "Tandem AI");
    assert_eq!(
        streamed(&frames, &reply["id"]),
        "You're welcome, have a nice day!",
        "what streamed with the label was replaced: {frames:#?}"
    );
    server.stop().await;
}

/// Every `description` in `schema`, by the JSON pointer of the schema that
/// carries it.
fn descriptions(schema: &Value) -> std::collections::BTreeMap<String, String> {
    fn walk(value: &Value, path: String, found: &mut std::collections::BTreeMap<String, String>) {
        match value {
            Value::Object(object) => {
                for (key, child) in object {
                    if key == "description"
                        && let Value::String(text) = child
                    {
                        found.insert(path.clone(), text.clone());
                    } else {
                        walk(child, format!("{path}/{key}"), found);
                    }
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    walk(item, format!("{path}/{index}"), found);
                }
            }
            _ => {}
        }
    }
    let mut found = std::collections::BTreeMap::new();
    walk(schema, String::new(), &mut found);
    found
}

fn expect(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(path, text)| ((*path).to_owned(), (*text).to_owned()))
        .collect()
}

#[tokio::test]
async fn the_schemas_sent_to_the_model_describe_their_fields_for_the_model() {
    let llm = ScriptedLlm::start().await;
    llm.push_for(
        "classifier-model",
        Reply::json(json!({"responder": "ai", "reason": "a product question", "sensitive": false})),
    );
    llm.push_for(
        "reply-model",
        Reply::json(json!({"reply": "We open at nine.", "confidence": 0.9})),
    );
    let server = TestServer::with_ai(&llm, |_| {}).await;
    set_policy(
        &server,
        json!({"routing": ["assignment", "classifier", "ai"], "confidence": {"enabled": true}}),
    )
    .await;
    let chat = Chat::open(&server, "c1").await;
    chat.say(&server, "When do you open?").await;
    wait_for_message(&server, &chat.thread, &chat.token, by_ai).await;

    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 2);
    let classify = &requests[0];
    assert_eq!(
        descriptions(&classify.response_format().expect("a schema")["json_schema"]["schema"]),
        expect(&[
            (
                "",
                "Who should write the next reply to the customer, and why."
            ),
            (
                "/properties/responder",
                "\"ai\" when the AI assistant can answer; \"human\" when a person from the \
                 support team must."
            ),
            (
                "/properties/reason",
                "Why, in one short sentence for the support team."
            ),
            (
                "/properties/sensitive",
                "true when the topic is legal, medical, account security or a complaint; false \
                 otherwise."
            ),
        ])
    );
    let reply = &requests[1];
    assert_eq!(
        descriptions(&reply.response_format().expect("a schema")["json_schema"]["schema"]),
        expect(&[
            (
                "",
                "Your reply to the customer, and how sure you are of it."
            ),
            (
                "/properties/reply",
                "The reply to the customer, as they will read it."
            ),
            (
                "/properties/confidence",
                "How sure you are that the reply is correct and complete, from 0 (a guess) to 1 \
                 (certain)."
            ),
        ])
    );
    let tools = reply.body["tools"].as_array().expect("tools");
    assert_eq!(
        descriptions(&tools[0]["function"]["parameters"]),
        expect(&[
            ("", "One question for the human support team."),
            (
                "/properties/question",
                "The question, written so that a colleague understands it without reading the \
                 conversation: what the customer wants, and what you need to know or have \
                 decided."
            ),
        ])
    );
    assert_eq!(
        descriptions(&tools[1]["function"]["parameters"]),
        expect(&[
            (
                "",
                "Why the conversation should go to a person, and the reply you suggest."
            ),
            (
                "/properties/reason",
                "Why a person should take over, in one sentence for the support team."
            ),
            (
                "/properties/suggested_reply",
                "The reply you would send the customer, for the person to start from; null when \
                 you have none."
            ),
        ])
    );
    // No title either: schemars makes them from doc comments too.
    for schema in [
        &classify.response_format().expect("a schema")["json_schema"]["schema"],
        &reply.response_format().expect("a schema")["json_schema"]["schema"],
        &tools[0]["function"]["parameters"],
        &tools[1]["function"]["parameters"],
    ] {
        assert!(!schema.to_string().contains("\"title\""), "{schema:#}");
    }
    server.stop().await;
}

/// The content of the tool turn answering `call_id` in `request`.
fn tool_result(request: &RecordedRequest, call_id: &str) -> String {
    request
        .messages()
        .iter()
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == call_id)
        .map(text)
        .unwrap_or_else(|| panic!("no tool result for {call_id}: {:#?}", request.messages()))
}

#[tokio::test]
async fn a_reply_needing_more_model_calls_than_the_policy_allows_is_escalated() {
    let llm = ScriptedLlm::start().await;
    llm.respond_with(|_| Reply::tool_call("ask_human", json!({"question": "  "})));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    set_policy(&server, json!({"max_model_steps": 2})).await;
    let mut chat = Chat::open(&server, "c1").await;

    chat.say(&server, "Hello?").await;
    let item = wait_for_item(&server, &chat.thread).await;
    assert_eq!(item["kind"], "escalation", "{item:#}");
    assert!(
        item["reason"]
            .as_str()
            .is_some_and(|r| r.contains("model calls")),
        "{item:#}"
    );
    let result = run_result(&server, &item["run_id"]).await;
    let last = result["decisions"]
        .as_array()
        .and_then(|d| d.last())
        .expect("a decision");
    assert_eq!(last["strategy"], "fallback", "{result:#}");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("more than 2")),
        "{result:#}"
    );
    assert_eq!(thread(&server, &chat.thread).await["assigned_to"], "human");
    assert_eq!(llm.chat_requests().len(), 2);
    let frames = chat
        .frames_until_agent_says(&server, "alice", "I'm here.")
        .await;
    no_ai_text(&frames);
    server.stop().await;
}

#[tokio::test]
async fn a_model_failing_past_its_retries_hands_the_thread_to_humans() {
    let llm = ScriptedLlm::start().await;
    // `max_retries` is 2 in tests: three attempts.
    for _ in 0..3 {
        llm.push_for("reply-model", Reply::status(500));
    }
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;

    chat.say(&server, "Hello?").await;
    let item = wait_for_item(&server, &chat.thread).await;
    assert_eq!(item["kind"], "escalation", "{item:#}");
    let reason = item["reason"].as_str().expect("reason");
    assert!(
        reason.contains("model failed") && reason.contains("server_error"),
        "{reason}"
    );
    assert_eq!(thread(&server, &chat.thread).await["assigned_to"], "human");
    assert_eq!(llm.chat_requests().len(), 3);
    let frames = chat
        .frames_until_agent_says(&server, "alice", "Sorry, I'm here.")
        .await;
    no_ai_text(&frames);
    server.stop().await;
}

#[tokio::test]
async fn a_rate_limited_call_is_retried_after_the_wait_and_answered_once() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::status(429).retry_after(Duration::from_millis(300)));
    llm.push(Reply::text("Here I am."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;

    chat.say(&server, "Hello?").await;
    let frames = chat.frames_until_reply().await;
    let reply = frames.last().expect("reply")["message"].clone();
    assert_eq!(reply["content"], "Here I am.");
    assert_eq!(streamed(&frames, &reply["id"]), "Here I am.");
    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].received_at - requests[0].received_at;
    assert!(
        waited >= Duration::from_millis(300),
        "retried after {waited:?}"
    );
    runs_settled(&server).await;
    let history = chat.history(&server).await;
    assert_eq!(roles(&history), ["user", "assistant"], "{history:#?}");
    server.stop().await;
}

#[tokio::test]
async fn a_retried_post_with_one_idempotency_key_gets_one_run_and_one_reply() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Hello!"));
    llm.push(Reply::text("A second reply must not happen."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let chat = Chat::open(&server, "c1").await;

    let mut ids = Vec::new();
    for _ in 0..2 {
        let sent = server
            .client
            .post(format!(
                "{}/v1/threads/{}/messages",
                server.url, chat.thread
            ))
            .bearer_auth(&chat.token)
            .header("Idempotency-Key", "retry-me-1")
            .json(&json!({"content": "Hi there"}))
            .send()
            .await
            .expect("request");
        let sent = tandem_tests::Response::read(sent).await;
        assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
        ids.push(sent.body["id"].clone());
    }
    assert_eq!(ids[0], ids[1]);
    wait_for_message(&server, &chat.thread, &chat.token, by_ai).await;
    runs_settled(&server).await;
    assert_eq!(reply_runs(&server).await, 1);
    assert_eq!(llm.chat_requests().len(), 1);
    assert_eq!(roles(&chat.history(&server).await), ["user", "assistant"]);
    server.stop().await;
}

#[tokio::test]
async fn two_quick_messages_get_one_reply_that_answers_both() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Your order ships tomorrow.").delay(Duration::from_millis(400)));
    llm.push(Reply::text("It ships tomorrow, to your new address."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut chat = Chat::open(&server, "c1").await;

    let first = chat.say(&server, "When does my order ship?").await;
    llm.wait_for_chat_requests(1, WAIT).await;
    let second = chat.say(&server, "And to my new address, please.").await;
    runs_settled(&server).await;
    assert_eq!(reply_runs(&server).await, 2);

    let history = chat.history(&server).await;
    assert_eq!(
        roles(&history),
        ["user", "user", "assistant"],
        "{history:#?}"
    );
    let reply = &history[2];
    assert_eq!(reply["content"], "It ships tomorrow, to your new address.");
    assert_eq!(reply["reply_to"], second["id"]);
    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 2);
    let answered = requests
        .iter()
        .find(|r| {
            let users: Vec<String> = r
                .messages()
                .iter()
                .filter(|m| m["role"] == "user")
                .map(text)
                .collect();
            users.len() == 2
        })
        .expect("a request with both customer messages");
    let users: Vec<String> = answered
        .messages()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(text)
        .collect();
    assert_eq!(
        users,
        ["When does my order ship?", "And to my new address, please."]
    );
    let run = staff_view(&server, &chat.thread, reply).await["metadata"]["run_id"].clone();
    assert_eq!(run_result(&server, &run).await["outcome"], "replied");
    let outcomes = reply_outcomes(&server).await;
    let superseded = &outcomes
        .iter()
        .find(|(message, _)| message == &first["id"])
        .expect("the first message's run")
        .1;
    assert_eq!(superseded["outcome"], "superseded", "{outcomes:#?}");

    // The customer's screen: one reply, and no text left over from the
    // abandoned one.
    let frames = chat
        .frames_until_agent_says(&server, "alice", "Anything else?")
        .await;
    let ai_messages: Vec<_> = messages_in(&frames)
        .into_iter()
        .filter(|m| by_ai(m))
        .collect();
    assert_eq!(ai_messages.len(), 1, "{frames:#?}");
    let mut ids: Vec<&Value> = deltas(&frames).iter().map(|d| &d["message_id"]).collect();
    ids.dedup();
    for id in ids {
        let shown = streamed(&frames, id);
        if id == &reply["id"] {
            assert_eq!(shown, reply["content"].as_str().expect("text"));
        } else {
            assert!(
                shown.is_empty(),
                "text streamed for a reply that was never published stays on screen: \
                 {shown:?}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_humans_answer_reaches_the_customer_even_if_they_wrote_while_it_was_pending() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::tool_call("ask_human", json!({"question": "Refundable?"})).with_id("call_p"));
    llm.push(Reply::text("I'm still checking with the team."));
    llm.push(Reply::text("Yes, it is refundable."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let chat = Chat::open(&server, "c1").await;
    let agent = server.agent("alice").await;

    let question = chat.say(&server, "Can I get a refund?").await;
    let item = wait_for_item(&server, &chat.thread).await;
    chat.say(&server, "Hello??").await;
    wait_for_message(&server, &chat.thread, &chat.token, |m| {
        m["content"] == "I'm still checking with the team."
    })
    .await;
    let answered = resolve(&server, &agent, &item, "answer", json!({"text": "Yes."})).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    runs_settled(&server).await;

    let last = llm.chat_requests().pop().expect("a request");
    assert!(
        last.messages()
            .iter()
            .any(|m| m["role"] == "tool" && text(m).contains("Yes.")),
        "the answer is in the last prompt"
    );
    assert_eq!(last.last_user_text().as_deref(), Some("Hello??"));
    // The AI wrote its reply from the answer, with every customer message in
    // view: the customer gets it, as the answer to the question asked.
    let history = chat.history(&server).await;
    let reply = history.last().expect("a message");
    assert_eq!(reply["content"], "Yes, it is refundable.", "{history:#?}");
    assert_eq!(reply["reply_to"], question["id"]);
    server.stop().await;
}
