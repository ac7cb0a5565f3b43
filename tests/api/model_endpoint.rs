//! The model endpoint as a local server presents it: models that default
//! to the reply model, the start-up check and `/readyz`, and routing
//! examples added while the embedding model does not answer.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_scripted_llm::{Reply, ScriptedLlm};
use tandem_tests::TestServer;
use tandem_tests::reply::{Chat, WAIT, set_policy, staff_view, wait_for_item, wait_for_message};

/// llama.cpp's answer to an embeddings request when it serves a chat model.
const NO_EMBEDDINGS: &str = "This server does not support embeddings. Start it with `--embeddings`";

/// What the server logs while a test runs on this thread (the test's
/// runtime is single-threaded, so the server's tasks log here too).
struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
    /// tracing-core asks only the calling thread's subscriber about a new
    /// callsite while a single dispatcher exists, so a callsite first hit
    /// by another test would be disabled for good; a second one avoids
    /// that (as in `ws_access`).
    _second: tracing::Dispatch,
}

#[derive(Clone)]
struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer(buffer.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
            _second: second,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

async fn readiness(server: &TestServer) -> Value {
    let ready = server.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    ready.body
}

/// `/readyz` once every model has been checked.
async fn checked_readiness(server: &TestServer) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = readiness(server).await;
        let models = &body["ai"]["models"];
        if ["reply", "classifier", "embedding"]
            .iter()
            .all(|role| models[role]["state"] != "unchecked")
        {
            return body;
        }
        assert!(Instant::now() < deadline, "never checked: {body:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn examples(server: &TestServer) -> Vec<Value> {
    let listed = server.get("/v1/routing/examples", &server.admin).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    listed.body["examples"]
        .as_array()
        .expect("examples")
        .clone()
}

#[tokio::test]
async fn with_only_the_reply_model_set_every_role_uses_it_and_readyz_says_which_answer() {
    let logs = Logs::capture();
    let llm = ScriptedLlm::start().await;
    // A llama.cpp serving one chat model: it lists it, and cannot embed.
    llm.list_models(["local-model"]);
    llm.push_embeddings(Reply::status(501).error_message(NO_EMBEDDINGS));
    let server = TestServer::with_ai(&llm, |config| {
        config.ai.reply_model = "local-model".into();
        config.ai.classifier_model = None;
        config.ai.embedding_model = None;
        config.ai.check_models_on_start = true;
    })
    .await;

    let ready = checked_readiness(&server).await;
    let ai = &ready["ai"];
    assert_eq!(ai["enabled"], true, "{ready:#}");
    assert_eq!(ai["reason"], Value::Null);
    let models = &ai["models"];
    assert_eq!(
        models["reply"],
        json!({"model": "local-model", "state": "ok", "reason": null})
    );
    assert_eq!(
        models["classifier"],
        json!({"model": "local-model", "state": "ok", "reason": null})
    );
    assert_eq!(models["embedding"]["model"], "local-model");
    assert_eq!(models["embedding"]["state"], "unavailable", "{ready:#}");
    let reason = models["embedding"]["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("501") && reason.contains(NO_EMBEDDINGS),
        "{reason}"
    );
    // Said loudly at start: an ERROR naming the model and the answer.
    let text = logs.text();
    let error = text
        .lines()
        .find(|line| line.contains("ERROR") && line.contains("embedding model"))
        .unwrap_or_else(|| panic!("no ERROR line for the embedding model:\n{text}"));
    assert!(
        error.contains("\"local-model\"") && error.contains(NO_EMBEDDINGS),
        "{error}"
    );
    assert!(
        !text
            .lines()
            .any(|line| line.contains("ERROR") && line.contains("reply model")),
        "{text}"
    );
    let checks: Vec<(String, String)> = llm
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        checks,
        [
            ("GET".to_owned(), "/v1/models".to_owned()),
            ("POST".to_owned(), "/v1/embeddings".to_owned())
        ],
        "a listed chat model needs no chat to check"
    );

    // The classifier asks the reply model, not a model the server lacks.
    llm.push_for(
        "local-model",
        Reply::json(json!({"responder": "ai", "reason": "a product question", "sensitive": false})),
    );
    llm.push_for("local-model", Reply::text("We open at nine."));
    set_policy(
        &server,
        json!({"routing": ["assignment", "classifier", "ai"]}),
    )
    .await;
    let chat = Chat::open(&server, "c1").await;
    chat.say(&server, "When do you open?").await;
    let reply = wait_for_message(&server, &chat.thread, &chat.token, |m| {
        m["role"] == "assistant"
    })
    .await;
    assert_eq!(reply["content"], "We open at nine.");
    let asked: Vec<_> = llm
        .chat_requests()
        .iter()
        .map(|r| r.model.clone().unwrap_or_default())
        .collect();
    assert_eq!(asked, ["local-model", "local-model"]);
    server.stop().await;
}

#[tokio::test]
async fn a_model_the_endpoint_does_not_have_is_unavailable_and_unchecked_models_say_so() {
    let llm = ScriptedLlm::start().await;
    // No list of models: each chat model gets a one-token chat.
    llm.push_for("reply-model", Reply::text("OK"));
    llm.push_for(
        "classifier-model",
        Reply::status(404).error_message("model 'classifier-model' not found"),
    );
    let server = TestServer::with_ai(&llm, |config| config.ai.check_models_on_start = true).await;

    let ready = checked_readiness(&server).await;
    let models = &ready["ai"]["models"];
    assert_eq!(models["reply"]["state"], "ok", "{ready:#}");
    assert_eq!(models["embedding"]["state"], "ok", "{ready:#}");
    assert_eq!(models["classifier"]["state"], "unavailable", "{ready:#}");
    let reason = models["classifier"]["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("404") && reason.contains("not found"),
        "{reason}"
    );
    server.stop().await;

    // With the check off nothing is asked, and nothing is claimed.
    let quiet = ScriptedLlm::start().await;
    let server = TestServer::with_ai(&quiet, |_| {}).await;
    let models = readiness(&server).await["ai"]["models"].clone();
    for role in ["reply", "classifier", "embedding"] {
        assert_eq!(models[role]["state"], "unchecked", "{models:#}");
    }
    assert_eq!(models["classifier"]["model"], "classifier-model");
    assert!(quiet.requests().is_empty(), "{:?}", quiet.requests());
    // The response is documented.
    let doc = server.call(Method::GET, "/openapi.json", None, None).await;
    let text = doc.body.to_string();
    for name in ["Readiness", "ModelsReadiness", "ModelReadiness"] {
        assert!(
            doc.body["components"]["schemas"][name].is_object(),
            "{name} is not in the OpenAPI document"
        );
    }
    let readyz = &doc.body["paths"]["/readyz"]["get"]["responses"];
    for status in ["200", "503"] {
        assert!(readyz[status].is_object(), "{readyz:#}");
    }
    assert!(text.contains("`unchecked`"), "the states are described");
    server.stop().await;
}

/// Vectors by topic, so the test decides what is near what.
fn topic_vector(text: &str) -> Vec<f32> {
    if text.to_lowercase().contains("refund") {
        vec![1.0, 0.0]
    } else {
        vec![0.0, 1.0]
    }
}

#[tokio::test]
async fn an_example_added_while_embeddings_are_unavailable_is_pending_until_they_answer() {
    let llm = ScriptedLlm::start().await;
    llm.set_embedder(topic_vector);
    llm.push_embeddings(Reply::status(501).error_message(NO_EMBEDDINGS));
    let server = TestServer::with_ai(&llm, |_| {}).await;

    let added = server
        .post(
            "/v1/routing/examples",
            &server.admin,
            json!({"text": "I want a refund for my order", "label": "human"}),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    let example = &added.body;
    assert_eq!(example["embedding"], "pending", "{example:#}");
    assert_eq!(example["vector"], Value::Null);
    assert_eq!(example["vector_model"], Value::Null);
    assert_eq!(example["label"], "human");
    assert_eq!(example["warning"]["code"], "embeddings_unavailable");
    let warning = example["warning"]["message"].as_str().expect("a message");
    assert!(
        warning.contains("embedding-model") && warning.contains(NO_EMBEDDINGS),
        "{warning}"
    );
    let embedded = || {
        llm.requests()
            .iter()
            .filter(|r| r.path == "/v1/embeddings")
            .count()
    };
    assert_eq!(embedded(), 1, "a 501 is not retried");
    let listed = examples(&server).await;
    assert_eq!(listed[0]["embedding"], "pending", "{listed:#?}");

    // The model answers again: routing by examples embeds the pending one
    // first, and it votes.
    set_policy(
        &server,
        json!({"routing": ["assignment", "embeddings", "ai"]}),
    )
    .await;
    let chat = Chat::open(&server, "c1").await;
    chat.say(&server, "Where is my refund?").await;
    let item = wait_for_item(&server, &chat.thread).await;
    assert_eq!(item["kind"], "escalation", "{item:#}");
    let reason = item["reason"].as_str().expect("reason");
    assert!(
        reason.starts_with("embeddings: ") && reason.contains("say human"),
        "{reason}"
    );
    let listed = examples(&server).await;
    assert_eq!(listed[0]["embedding"], "ready", "{listed:#?}");
    assert_eq!(listed[0]["vector_model"], "embedding-model");

    // Added now, it is embedded at once.
    let added = server
        .post(
            "/v1/routing/examples",
            &server.admin,
            json!({"text": "What are your opening hours?", "label": "ai"}),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    assert_eq!(added.body["embedding"], "ready", "{}", added.text);
    assert!(added.body.get("warning").is_none(), "{}", added.text);
    assert_eq!(added.body["vector_model"], "embedding-model");
    server.stop().await;
}

#[tokio::test]
async fn pending_examples_are_embedded_when_the_start_up_check_finds_the_model() {
    let llm = ScriptedLlm::start().await;
    llm.set_embedder(topic_vector);
    llm.list_models(["reply-model", "classifier-model"]);
    // The first start's check and the example's embedding both get a 501.
    llm.push_embeddings(Reply::status(501).error_message(NO_EMBEDDINGS));
    llm.push_embeddings(Reply::status(501).error_message(NO_EMBEDDINGS));
    let mut server =
        TestServer::with_ai(&llm, |config| config.ai.check_models_on_start = true).await;
    let ready = checked_readiness(&server).await;
    assert_eq!(
        ready["ai"]["models"]["embedding"]["state"], "unavailable",
        "{ready:#}"
    );
    let added = server
        .post(
            "/v1/routing/examples",
            &server.admin,
            json!({"text": "Refund me now", "label": "human"}),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text);
    assert_eq!(added.body["embedding"], "pending", "{}", added.text);

    // After a restart the check finds the embedding model answering, and
    // embeds what waited.
    server.restart().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let listed = examples(&server).await;
        if listed[0]["embedding"] == "ready" {
            assert_eq!(listed[0]["vector_model"], "embedding-model");
            break;
        }
        assert!(Instant::now() < deadline, "never embedded: {listed:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = checked_readiness(&server).await;
    assert_eq!(
        ready["ai"]["models"]["embedding"]["state"], "ok",
        "{ready:#}"
    );
    server.stop().await;
}

#[tokio::test]
async fn without_the_check_a_call_tells_readyz_that_its_model_answers() {
    // The check is no gate: with it off the AI answers as before.
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Hello!"));
    let server = TestServer::with_ai(&llm, |_| {}).await;
    let chat = Chat::open(&server, "c1").await;
    chat.say(&server, "Hi").await;
    let reply = wait_for_message(&server, &chat.thread, &chat.token, |m| {
        m["role"] == "assistant"
    })
    .await;
    let reply = staff_view(&server, &chat.thread, &reply).await;
    assert_eq!(reply["metadata"]["provider"], "reply-model");
    let models = readiness(&server).await["ai"]["models"].clone();
    assert_eq!(
        models["reply"]["state"], "ok",
        "a call says the model answers: {models:#}"
    );
    server.stop().await;
}
