//! Copilot suggestions: an agent asks the AI for a reply, sees it alone
//! (the customer never does, on any path), and sends it as written or
//! edited under its own name, once.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_scripted_llm::{RecordedRequest, Reply, ScriptedLlm};
use tandem_tests::reply::{Chat, frames_until};
use tandem_tests::{Response, TestServer};

/// A server with the AI on and no automatic replies: the threads hold
/// only what the test writes, and every model call is a suggestion.
async fn server(llm: &ScriptedLlm) -> TestServer {
    TestServer::with_ai(llm, |config| config.reply.enabled = false).await
}

async fn suggest(server: &TestServer, thread: &str, token: &str, body: Value) -> Response {
    server
        .post(&format!("/v1/threads/{thread}/suggestions"), token, body)
        .await
}

async fn send(server: &TestServer, thread: &str, id: &Value, token: &str, body: Value) -> Response {
    let id = id.as_str().expect("suggestion id");
    server
        .post(
            &format!("/v1/threads/{thread}/suggestions/{id}/send"),
            token,
            body,
        )
        .await
}

/// `(role, content)` of each turn of a recorded request.
fn turns(request: &RecordedRequest) -> Vec<(String, String)> {
    request
        .messages()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_suggestion_stays_with_staff_and_is_sent_once_under_the_agents_name() {
    let llm = ScriptedLlm::start().await;
    let drafted = "I am sorry about the parcel; a replacement ships today.";
    llm.push(Reply::text(drafted).usage(40, 12));
    // The drafting instructions must pass a strict chat template too.
    llm.set_strict_template(true);
    let server = server(&llm).await;
    let mut chat = Chat::open(&server, "c1").await;
    let sam = server.agent("Sam").await;
    let mut desk = server.ws(&sam).await;
    desk.subscribe(&format!("thread:{}", chat.thread), None)
        .await;
    let asked = chat.say(&server, "My parcel never arrived.").await;

    let made = suggest(
        &server,
        &chat.thread,
        &sam,
        json!({"instructions": "Offer a replacement, not a refund."}),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let suggestion = made.body;
    assert_eq!(suggestion["content"], drafted);
    assert_eq!(suggestion["role"], "assistant");
    assert_eq!(suggestion["visibility"], "internal");
    assert_eq!(suggestion["status"], "published");
    assert_eq!(suggestion["author"]["kind"], "ai");
    assert_eq!(suggestion["agent_name"], "Tandem AI");
    assert_eq!(suggestion["reply_to"], asked["id"]);
    assert_eq!(suggestion["metadata"]["provider"], "reply-model");
    assert_eq!(suggestion["metadata"]["usage"]["prompt_tokens"], 40);
    assert_eq!(
        suggestion["metadata"]["suggestion"]["requested_by"], "Sam",
        "{suggestion:#}"
    );

    // The model got the history and the agent's instruction, could call no
    // tool, and streamed nothing.
    let requests = llm.chat_requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(request.tools().is_empty(), "{:?}", request.tools());
    assert!(!request.stream());
    let turns = turns(request);
    assert!(
        turns.contains(&("user".into(), "My parcel never arrived.".into())),
        "{turns:#?}"
    );
    let systems: Vec<&str> = turns
        .iter()
        .filter(|(role, _)| role == "system")
        .map(|(_, text)| text.as_str())
        .collect();
    assert_eq!(turns[0].0, "system");
    assert_eq!(systems.len(), 1, "one system turn, first: {turns:#?}");
    assert!(
        systems
            .iter()
            .any(|t| t.contains("human support agent Sam") && t.contains("do not sign")),
        "{systems:#?}"
    );
    assert!(
        systems
            .iter()
            .any(|t| t.contains("Offer a replacement, not a refund.")),
        "{systems:#?}"
    );

    // Staff see it, live and in the list.
    let live = desk.next_of("message").await;
    let live = if live["message"]["id"] == asked["id"] {
        desk.next_of("message").await
    } else {
        live
    };
    assert_eq!(live["message"]["id"], suggestion["id"], "{live:#}");
    let staff = server.messages(&chat.thread, &sam).await;
    assert!(staff.iter().any(|m| m["id"] == suggestion["id"]));

    // The customer does not: not in the list, not in a replay.
    let history = chat.history(&server).await;
    assert_eq!(history.len(), 1, "{history:#?}");
    let mut replay = server.ws(&chat.token).await;
    let subscribed = replay
        .subscribe(&format!("thread:{}", chat.thread), Some(0))
        .await;
    assert_eq!(subscribed["last_seq"], 2, "{subscribed:#}");

    // Sent as is: a public reply under Sam's name, provider human.
    let sent = send(&server, &chat.thread, &suggestion["id"], &sam, json!({})).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    let reply = sent.body;
    assert_eq!(reply["content"], drafted);
    assert_eq!(reply["visibility"], "public");
    assert_eq!(reply["agent_name"], "Sam");
    assert_eq!(reply["author"]["kind"], "human");
    assert_eq!(reply["metadata"]["provider"], "human");
    assert_eq!(
        reply["metadata"]["suggestion"],
        json!({"id": suggestion["id"], "edited": false})
    );

    // Live, the customer got its own message, then the reply, nothing between.
    let frames = chat
        .frames_until(|f| f["type"] == "message" && f["message"]["id"] == reply["id"])
        .await;
    let ids: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| &f["message"]["id"])
        .collect();
    assert_eq!(ids, [&asked["id"], &reply["id"]], "{frames:#?}");
    // The replay skipped the suggestion's seq and went on live.
    let replayed = frames_until(&mut replay, |f| {
        f["type"] == "message" && f["message"]["id"] == reply["id"]
    })
    .await;
    assert!(
        replayed
            .iter()
            .all(|f| f["message"]["id"] != suggestion["id"]),
        "{replayed:#?}"
    );
    let history = chat.history(&server).await;
    assert_eq!(history.len(), 2, "{history:#?}");
    assert_eq!(history[1]["id"], reply["id"]);
    assert_eq!(history[1]["agent_name"], "Sam");
    assert_eq!(history[1]["metadata"]["provider"], "human");

    // Once only, whoever tries again.
    send(&server, &chat.thread, &suggestion["id"], &sam, json!({}))
        .await
        .assert_error(StatusCode::CONFLICT, "suggestion_sent");
    let ann = server.agent("Ann").await;
    send(
        &server,
        &chat.thread,
        &suggestion["id"],
        &ann,
        json!({"text": "Another try."}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "suggestion_sent");
    assert_eq!(chat.history(&server).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn an_edited_suggestion_reaches_the_customer_as_edited_and_the_draft_never() {
    let llm = ScriptedLlm::start().await;
    let drafted = "DRAFTED-ONLY: we will refund you twice.";
    llm.push(Reply::text(drafted));
    let server = server(&llm).await;
    let mut chat = Chat::open(&server, "c2").await;
    let ann = server.agent("Ann").await;
    chat.say(&server, "Where is my refund?").await;

    let made = suggest(&server, &chat.thread, &ann, json!({})).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    assert_eq!(made.body["content"], drafted);
    let edited = "Your refund was sent yesterday; it takes three days.";
    let sent = send(
        &server,
        &chat.thread,
        &made.body["id"],
        &ann,
        json!({"text": edited}),
    )
    .await;
    assert_eq!(sent.status, StatusCode::CREATED, "{}", sent.text);
    assert_eq!(sent.body["content"], edited);
    assert_eq!(sent.body["agent_name"], "Ann");
    assert_eq!(sent.body["metadata"]["suggestion"]["edited"], true);

    let frames = chat
        .frames_until(|f| f["type"] == "message" && f["message"]["content"] == edited)
        .await;
    let history = chat.history(&server).await;
    let seen = format!("{frames:?}{history:?}");
    assert!(!seen.contains("DRAFTED-ONLY"), "{seen}");
    assert_eq!(history.len(), 2, "{history:#?}");
    assert_eq!(history[1]["content"], edited);
    assert_eq!(history[1]["author"]["kind"], "human");
    server.stop().await;
}

#[tokio::test]
async fn customers_unknown_threads_bad_text_and_model_failures_are_refused() {
    let llm = ScriptedLlm::start().await;
    let server = server(&llm).await;
    let chat = Chat::open(&server, "c3").await;
    let sam = server.agent("Sam").await;
    let posted = chat.say(&server, "Hello?").await;

    // Customers may not ask, nor send.
    suggest(&server, &chat.thread, &chat.token, json!({}))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    send(&server, &chat.thread, &posted["id"], &chat.token, json!({}))
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    // Unknown thread; a message that is not a suggestion.
    let unknown = "0190d6a8-0000-7000-8000-000000000000";
    suggest(&server, unknown, &sam, json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    send(&server, &chat.thread, &posted["id"], &sam, json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    suggest(
        &server,
        &chat.thread,
        &sam,
        json!({"instructions": "x".repeat(2_001)}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "instructions_too_long");
    assert!(llm.chat_requests().is_empty());

    // A model that fails (a 400 is not retried): 502, nothing stored.
    llm.push(Reply::status(400));
    suggest(&server, &chat.thread, &sam, json!({}))
        .await
        .assert_error(StatusCode::BAD_GATEWAY, "ai_failed");
    assert_eq!(server.messages(&chat.thread, &sam).await.len(), 1);

    llm.push(Reply::text("Hi, how can I help?"));
    let made = suggest(&server, &chat.thread, &sam, json!({})).await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let id = &made.body["id"];
    send(&server, &chat.thread, id, &sam, json!({"text": "   "}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "empty_text");
    send(
        &server,
        &chat.thread,
        id,
        &sam,
        json!({"text": "x".repeat(32_001)}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "text_too_long");
    // Sending as another agent is refused; an admin must name the agent.
    send(
        &server,
        &chat.thread,
        id,
        &sam,
        json!({"agent_name": "Ann"}),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, "not_yourself");
    send(&server, &chat.thread, id, &server.admin, json!({}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "agent_name_required");
    let by_admin = send(
        &server,
        &chat.thread,
        id,
        &server.admin,
        json!({"agent_name": "Ann"}),
    )
    .await;
    assert_eq!(by_admin.status, StatusCode::CREATED, "{}", by_admin.text);
    assert_eq!(by_admin.body["agent_name"], "Ann");
    assert_eq!(
        by_admin.body["author"],
        json!({"kind": "human", "id": "Ann"})
    );
    assert_eq!(by_admin.body["metadata"]["provider"], "human");
    // A suggestion is one thread's: another thread does not know it.
    let other = server.thread_for("c3").await;
    send(&server, &other, id, &sam, json!({}))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
    // Both routes are in the OpenAPI document.
    let doc = server
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    for path in [
        "/v1/threads/{id}/suggestions",
        "/v1/threads/{id}/suggestions/{message_id}/send",
    ] {
        assert!(doc.body["paths"][path]["post"].is_object(), "{path}");
    }
    server.stop().await;

    // No model endpoint: 503 `ai_off`.
    let off = TestServer::start().await;
    let thread = off.thread_for("c4").await;
    let agent = off.agent("Sam").await;
    suggest(&off, &thread, &agent, json!({}))
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "ai_off");
    off.stop().await;
}
