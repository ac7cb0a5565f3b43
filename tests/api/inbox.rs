//! The human side of the reply path: the approval gate (drafts, approve,
//! reject) and the inbox API (filters, errors, who may resolve what).

use reqwest::StatusCode;
use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;
use tandem_tests::reply::{
    Chat, deltas, inbox, messages_in, resolve, roles, run_result, runs_settled, set_policy, thread,
    wait_for_item, wait_for_message,
};

/// Nothing of `draft` reached the customer, streamed or stored.
fn draft_unseen(frames: &[Value], draft: &str) {
    assert!(deltas(frames).is_empty(), "a draft streamed: {frames:#?}");
    for frame in frames {
        assert!(
            !frame.to_string().contains(draft),
            "the draft reached the customer: {frame}"
        );
        assert_ne!(frame["type"], "inbox", "{frame}");
    }
}

#[tokio::test]
async fn an_approved_draft_reaches_the_customer_as_edited_and_never_as_written() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Your refund of $20 is on its way.").chunked(3));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    set_policy(&server, json!({"approval": {"mode": "always"}})).await;
    let mut chat = Chat::open(&server, "c1").await;
    let agent = server.agent("alice").await;
    let mut desk = server.ws(&agent).await;
    desk.subscribe("inbox", None).await;

    let asked = chat.say(&server, "Where is my refund?").await;
    let item = loop {
        let frame = desk.next_of("inbox").await;
        if frame["item"]["thread_id"] == json!(chat.thread) {
            break frame["item"].clone();
        }
    };
    assert_eq!(item["kind"], "approval", "{item:#}");
    assert_eq!(item["body"], "Your refund of $20 is on its way.");
    assert_eq!(
        item["reason"],
        "the policy requires approval of every AI reply"
    );
    let staff_view = server.messages(&chat.thread, &agent).await;
    let draft = staff_view
        .iter()
        .find(|m| m["id"] == item["message_id"])
        .expect("the draft")
        .clone();
    assert_eq!(draft["visibility"], "internal");
    assert_eq!(draft["status"], "pending_approval");
    assert_eq!(draft["content"], "Your refund of $20 is on its way.");
    assert_eq!(draft["reply_to"], asked["id"]);
    assert!(!llm.chat_requests()[0].stream(), "a draft must not stream");
    server
        .wait_for_status(item["run_id"].as_str().expect("run"), "waiting")
        .await;
    assert_eq!(roles(&chat.history(&server).await), ["user"]);

    let approved = resolve(
        &server,
        &agent,
        &item,
        "approve",
        json!({"text": "Your refund of $25 is on its way."}),
    )
    .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    assert_eq!(approved.body["item"]["status"], "resolved");
    assert_eq!(approved.body["item"]["resolution"], "approved");
    let published = &approved.body["message"];
    assert_eq!(published["content"], "Your refund of $25 is on its way.");
    assert_eq!(published["visibility"], "public");
    assert_eq!(published["status"], "published");
    assert_eq!(published["author"]["kind"], "ai");
    assert_eq!(published["reply_to"], asked["id"]);
    assert!(published["seq"].as_i64() > draft["seq"].as_i64());
    assert_eq!(published["metadata"]["approval"]["edited"], true);
    assert_eq!(published["metadata"]["approval"]["draft_id"], draft["id"]);
    assert_eq!(published["metadata"]["approval"]["approved_by"], "alice");

    // The customer's socket: its message, then the edited reply; never the
    // draft, streamed or stored.
    let frames = chat.frames_until_reply().await;
    let (reply, before) = frames.split_last().expect("frames");
    assert_eq!(
        reply["message"]["content"],
        "Your refund of $25 is on its way."
    );
    assert_eq!(reply["seq"], published["seq"]);
    draft_unseen(before, "$20");
    let history = chat.history(&server).await;
    assert_eq!(roles(&history), ["user", "assistant"], "{history:#?}");
    assert_eq!(history[1]["content"], "Your refund of $25 is on its way.");
    assert_eq!(
        history[1]["seq"],
        thread(&server, &chat.thread).await["last_seq"]
    );
    let staff_view = server.messages(&chat.thread, &agent).await;
    let settled = staff_view
        .iter()
        .find(|m| m["id"] == draft["id"])
        .expect("the draft");
    assert_eq!(settled["status"], "approved");
    assert_eq!(settled["visibility"], "internal");

    let result = run_result(&server, &item["run_id"]).await;
    assert_eq!(result["outcome"], "approved", "{result:#}");
    assert_eq!(result["message_id"], published["id"]);

    resolve(&server, &agent, &item, "approve", json!({}))
        .await
        .assert_error(StatusCode::CONFLICT, "item_closed");
    resolve(&server, &agent, &item, "reject", json!({"review": "late"}))
        .await
        .assert_error(StatusCode::CONFLICT, "item_closed");
    let frames = chat
        .frames_until_agent_says(&server, "bob", "Anything else?")
        .await;
    assert_eq!(messages_in(&frames).len(), 1, "{frames:#?}");
    draft_unseen(&frames, "$20");
    server.stop().await;
}

#[tokio::test]
async fn a_rejected_draft_is_never_published_and_the_thread_goes_to_humans() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Refunds take 2 days."));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    set_policy(&server, json!({"approval": {"mode": "always"}})).await;
    let mut chat = Chat::open(&server, "c1").await;
    let agent = server.agent("alice").await;

    chat.say(&server, "How long do refunds take?").await;
    let item = wait_for_item(&server, &chat.thread).await;
    assert_eq!(item["kind"], "approval", "{item:#}");

    // Who may not, and what does not fit.
    for action in ["approve", "answer", "reject"] {
        let body = json!({"text": "hijacked", "review": "hijacked"});
        let body = match action {
            "approve" | "answer" => json!({"text": body["text"]}),
            _ => json!({"review": body["review"]}),
        };
        let refused = resolve(&server, &chat.token, &item, action, body).await;
        assert!(
            matches!(
                refused.status,
                StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
            ),
            "a customer may not {action}: {}",
            refused.text
        );
    }
    resolve(
        &server,
        &agent,
        &item,
        "answer",
        json!({"text": "an answer"}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "wrong_item_kind");
    resolve(&server, &agent, &item, "reject", json!({"review": "  "}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "empty_text");
    let still = server
        .get(
            &format!("/v1/inbox/{}", item["id"].as_str().expect("id")),
            &agent,
        )
        .await;
    assert_eq!(still.body["status"], "open", "{}", still.text);

    let review = "Wrong: refunds take 5 business days.";
    let rejected = resolve(&server, &agent, &item, "reject", json!({"review": review})).await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    let resolved = &rejected.body["item"];
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolution"], "rejected");
    assert_eq!(resolved["review"], review);
    assert_eq!(resolved["resolved_by"], "alice");
    assert_eq!(rejected.body["message"], Value::Null);
    assert_eq!(thread(&server, &chat.thread).await["assigned_to"], "human");
    let result = run_result(&server, &item["run_id"]).await;
    assert_eq!(result["outcome"], "rejected", "{result:#}");
    assert_eq!(result["responder"], "human");
    let draft = server
        .messages(&chat.thread, &agent)
        .await
        .into_iter()
        .find(|m| m["id"] == item["message_id"])
        .expect("the draft");
    assert_eq!(draft["status"], "rejected");
    assert_eq!(roles(&chat.history(&server).await), ["user"]);
    resolve(&server, &agent, &item, "approve", json!({}))
        .await
        .assert_error(StatusCode::CONFLICT, "item_closed");

    // The thread is with humans now: the next message is theirs, and the
    // model is not asked again.
    chat.say(&server, "Hello?").await;
    let handoff = wait_for_item(&server, &chat.thread).await;
    assert_eq!(handoff["kind"], "handoff", "{handoff:#}");
    runs_settled(&server).await;
    assert_eq!(llm.chat_requests().len(), 1);
    let frames = chat
        .frames_until_agent_says(&server, "bob", "Refunds take 5 days.")
        .await;
    draft_unseen(&frames, "2 days");
    assert!(
        messages_in(&frames)
            .iter()
            .all(|m| m["role"] != "assistant" || m["content"] == "Refunds take 5 days."),
        "{frames:#?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn approval_can_be_required_for_listed_threads_only() {
    let llm = ScriptedLlm::start().await;
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let mut watched = Chat::open(&server, "c1").await;
    let free = Chat::open(&server, "c2").await;
    set_policy(
        &server,
        json!({"approval": {"mode": "never", "threads": [watched.thread]}}),
    )
    .await;

    llm.push(Reply::text("Published at once."));
    free.say(&server, "Hi").await;
    let reply = wait_for_message(&server, &free.thread, &free.token, |m| {
        m["role"] == "assistant"
    })
    .await;
    assert_eq!(reply["content"], "Published at once.");

    llm.push(Reply::text("Held for review."));
    watched.say(&server, "Hi").await;
    let item = wait_for_item(&server, &watched.thread).await;
    assert_eq!(item["kind"], "approval", "{item:#}");
    assert_eq!(item["body"], "Held for review.");
    assert_eq!(
        item["reason"],
        "the policy requires approval in this thread"
    );
    let agent = server.agent("alice").await;
    let frames = watched
        .frames_until_agent_says(&server, "bob", "One moment.")
        .await;
    draft_unseen(&frames, "Held for review.");
    assert_eq!(
        roles(&watched.history(&server).await),
        ["user", "assistant"]
    );
    let approved = resolve(&server, &agent, &item, "approve", json!({})).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    let frames = watched.frames_until_reply().await;
    assert_eq!(
        frames.last().expect("reply")["message"]["content"],
        "Held for review.",
        "approved as written"
    );
    assert_eq!(
        approved.body["message"]["metadata"]["approval"]["edited"],
        false
    );
    server.stop().await;
}

#[tokio::test]
async fn the_inbox_lists_by_kind_status_and_thread_and_refuses_bad_input() {
    let llm = ScriptedLlm::start().await;
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let agent = server.agent("alice").await;
    let question = Chat::open(&server, "c1").await;
    let escalated = Chat::open(&server, "c2").await;
    let drafted = Chat::open(&server, "c3").await;
    set_policy(&server, json!({"approval": {"threads": [drafted.thread]}})).await;

    llm.push(Reply::tool_call("ask_human", json!({"question": "Which plan?"})).with_id("call_1"));
    question.say(&server, "Upgrade me").await;
    let asked = wait_for_item(&server, &question.thread).await;
    llm.push(Reply::tool_call(
        "escalate",
        json!({"reason": "angry customer"}),
    ));
    escalated.say(&server, "This is unacceptable!").await;
    let escalation = wait_for_item(&server, &escalated.thread).await;
    llm.push(Reply::text("A draft."));
    drafted.say(&server, "Hi").await;
    let approval = wait_for_item(&server, &drafted.thread).await;
    runs_settled(&server).await;

    let ids = |items: &[Value]| -> Vec<Value> { items.iter().map(|i| i["id"].clone()).collect() };
    assert_eq!(
        ids(&inbox(&server, "").await),
        [
            asked["id"].clone(),
            escalation["id"].clone(),
            approval["id"].clone()
        ]
    );
    assert_eq!(
        ids(&inbox(&server, "kind=question").await),
        [asked["id"].clone()]
    );
    assert_eq!(
        ids(&inbox(&server, "kind=escalation").await),
        [escalation["id"].clone()]
    );
    assert_eq!(
        ids(&inbox(&server, "kind=approval").await),
        [approval["id"].clone()]
    );
    assert!(inbox(&server, "kind=handoff").await.is_empty());
    assert_eq!(
        ids(&inbox(&server, &format!("thread_id={}", escalated.thread)).await),
        [escalation["id"].clone()]
    );
    assert_eq!(
        ids(&inbox(
            &server,
            &format!("kind=question&thread_id={}", escalated.thread)
        )
        .await),
        Vec::<Value>::new()
    );
    assert_eq!(inbox(&server, "limit=1").await.len(), 1);
    assert!(inbox(&server, "status=resolved").await.is_empty());
    assert_eq!(inbox(&server, "status=open").await.len(), 3);

    // Answers: empty, oversized, unknown fields, then a good one.
    for (text, code) in [("", "empty_text"), (" \n ", "empty_text")] {
        resolve(&server, &agent, &asked, "answer", json!({"text": text}))
            .await
            .assert_error(StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    resolve(
        &server,
        &agent,
        &asked,
        "answer",
        json!({"text": "x".repeat(32_001)}),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "text_too_long");
    let unknown = resolve(
        &server,
        &agent,
        &asked,
        "answer",
        json!({"text": "Pro", "visibility": "public"}),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST, "{}", unknown.text);
    resolve(
        &server,
        &agent,
        &escalation,
        "approve",
        json!({"text": "Pro"}),
    )
    .await
    .assert_error(StatusCode::CONFLICT, "wrong_item_kind");
    resolve(&server, &agent, &asked, "approve", json!({}))
        .await
        .assert_error(StatusCode::CONFLICT, "wrong_item_kind");
    resolve(&server, &agent, &approval, "approve", json!({"text": ""}))
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "empty_text");
    llm.push(Reply::text("Pro it is."));
    let answered = resolve(&server, &agent, &asked, "answer", json!({"text": "Pro"})).await;
    assert_eq!(answered.status, StatusCode::OK, "{}", answered.text);
    assert_eq!(
        ids(&inbox(&server, "status=resolved").await),
        [asked["id"].clone()]
    );
    assert_eq!(
        ids(&inbox(&server, "").await),
        [escalation["id"].clone(), approval["id"].clone()]
    );
    wait_for_message(&server, &question.thread, &question.token, |m| {
        m["content"] == "Pro it is."
    })
    .await;

    // Bad queries.
    for query in [
        "limit=0",
        "limit=201",
        "limit=many",
        "kind=chore",
        "status=gone",
        "thread_id=not-a-thread",
        "colour=red",
    ] {
        let refused = server.get(&format!("/v1/inbox?{query}"), &agent).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            refused.text
        );
        assert!(
            refused.body["error"]["code"].is_string(),
            "{}",
            refused.text
        );
    }
    server
        .get("/v1/inbox?limit=0", &agent)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");

    // Unknown or unparseable ids are items that do not exist.
    let missing = uuid::Uuid::now_v7().to_string();
    for id in [missing.as_str(), "not-an-id", "42"] {
        server
            .get(&format!("/v1/inbox/{id}"), &agent)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
        for (action, body) in [
            ("answer", json!({"text": "hi"})),
            ("approve", json!({})),
            ("reject", json!({"review": "no"})),
        ] {
            server
                .post(&format!("/v1/inbox/{id}/{action}"), &agent, body)
                .await
                .assert_error(StatusCode::NOT_FOUND, "not_found");
        }
    }

    // Customers have no inbox.
    let customer = &question.token;
    server
        .get("/v1/inbox", customer)
        .await
        .assert_error(StatusCode::FORBIDDEN, "forbidden");
    let own = server
        .get(
            &format!("/v1/inbox/{}", asked["id"].as_str().expect("id")),
            customer,
        )
        .await;
    assert!(
        matches!(own.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND),
        "{}",
        own.text
    );
    server.stop().await;
}

#[tokio::test]
async fn the_whole_queue_is_read_page_by_page() {
    let server = TestServer::with_ai_off().await;
    let mut threads = Vec::new();
    for n in 0..7 {
        let customer = format!("customer-{n}");
        let chat = Chat::open(&server, &customer).await;
        chat.say(&server, "I need a person").await;
        wait_for_item(&server, &chat.thread).await;
        threads.push(chat.thread.clone());
    }
    let everything = inbox(&server, "limit=200").await;
    assert_eq!(everything.len(), 7);

    let mut paged = Vec::new();
    let mut query = "limit=3".to_owned();
    loop {
        let page = inbox(&server, &query).await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        let last = page.last().unwrap()["id"].as_str().unwrap().to_owned();
        paged.extend(page);
        query = format!("limit=3&after={last}");
    }
    let ids = |items: &[Value]| -> Vec<Value> { items.iter().map(|i| i["id"].clone()).collect() };
    assert_eq!(
        ids(&paged),
        ids(&everything),
        "pages in the listing's order, nothing twice"
    );
    server
        .get("/v1/inbox?after=not-an-id", &server.admin)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_query");
}
