//! The client against a scripted OpenAI-compatible server over real HTTP on
//! loopback; no test calls a hosted provider.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use tandem_llm::{
    ChatMessage, ChatRequest, Delta, Llm, LlmConfig, LlmError, ModelRole, ModelState, ToolCall,
    Usage, parse_arguments, tool,
};
use tandem_scripted_llm::{Reply, ScriptedLlm};

/// A config for `server` with a short backoff, so retries cost milliseconds.
fn config(server: &ScriptedLlm) -> LlmConfig {
    LlmConfig {
        base_url: Some(server.base_url()),
        embedding_model: Some("text-embedding-3-small".to_owned()),
        request_timeout_secs: 5,
        first_token_timeout_secs: 5,
        idle_timeout_secs: 5,
        total_timeout_secs: 30,
        max_retries: 2,
        max_backoff_secs: 5,
        initial_backoff_ms: 10,
        ..LlmConfig::default()
    }
}

fn client(server: &ScriptedLlm) -> Llm {
    Llm::new(&config(server)).expect("client")
}

fn question(text: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::System("You are a support assistant.".to_owned()),
        ChatMessage::User(text.to_owned()),
    ]
}

fn streamed(model: &str, messages: Vec<ChatMessage>) -> ChatRequest {
    ChatRequest {
        stream: true,
        ..ChatRequest::new(model, messages)
    }
}

/// Runs `request`, returning the completion and every delta it produced.
async fn chat(
    llm: &Llm,
    request: ChatRequest,
) -> (Result<tandem_llm::Completion, LlmError>, Vec<Delta>) {
    let mut deltas = Vec::new();
    let result = llm.chat(request, &mut |delta| deltas.push(delta)).await;
    (result, deltas)
}

fn texts(deltas: &[Delta]) -> Vec<String> {
    deltas
        .iter()
        .map(|delta| match delta {
            Delta::Text(text) => text.clone(),
            Delta::Restart => "<restart>".to_owned(),
        })
        .collect()
}

/// Ask a human support agent a question.
#[derive(Deserialize, JsonSchema, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct AskHuman {
    /// The question, as the human agent will read it.
    question: String,
}

#[tokio::test]
async fn streamed_text_arrives_as_deltas_and_adds_up_with_usage() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::text("Your order left the warehouse this morning.").usage(31, 9));
    let llm = client(&server);

    let (result, deltas) = chat(
        &llm,
        streamed("gpt-4o-mini", question("Where is my order?")),
    )
    .await;
    let completion = result.expect("completion");

    assert!(deltas.len() > 1, "one delta per fragment: {deltas:?}");
    assert_eq!(texts(&deltas).concat(), completion.text);
    assert_eq!(
        completion.text,
        "Your order left the warehouse this morning."
    );
    assert_eq!(
        completion.usage,
        Usage {
            prompt_tokens: 31,
            completion_tokens: 9,
            total_tokens: 40
        }
    );
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.model, "gpt-4o-mini");
    assert_eq!(completion.attempts, 1);
    assert!(completion.tool_calls.is_empty());

    let request = &server.chat_requests()[0];
    assert!(request.stream());
    assert!(request.include_usage(), "{}", request.body);
}

#[tokio::test]
async fn an_unstreamed_answer_is_one_delta() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::text("Hello!").usage(5, 2));
    let llm = client(&server);

    let (result, deltas) = chat(&llm, ChatRequest::new("gpt-4o-mini", question("Hi"))).await;
    let completion = result.expect("completion");

    assert_eq!(deltas, [Delta::Text("Hello!".to_owned())]);
    assert_eq!(completion.text, "Hello!");
    assert_eq!(completion.usage.total_tokens, 7);
    assert!(!server.chat_requests()[0].stream());
}

#[tokio::test]
async fn the_request_carries_the_model_the_messages_and_the_bearer_key() {
    let server = ScriptedLlm::start_with_key("sk-test-123").await;
    server.push(Reply::text("Hi"));
    let llm = Llm::new(&LlmConfig {
        api_key: Some("sk-test-123".to_owned()),
        reply_model: "reply-model-x".to_owned(),
        ..config(&server)
    })
    .expect("client");

    let model = llm.config().reply_model.clone();
    let (result, _) = chat(&llm, ChatRequest::new(model, question("Hello"))).await;
    result.expect("the key is accepted");

    let request = &server.chat_requests()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(request.model.as_deref(), Some("reply-model-x"));
    assert_eq!(
        request.messages(),
        [
            json!({"role": "system", "content": "You are a support assistant."}),
            json!({"role": "user", "content": "Hello"}),
        ]
    );
}

#[tokio::test]
async fn without_a_key_no_authorization_header_is_sent() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::text("Hi"));
    let llm = client(&server);

    let (result, _) = chat(&llm, ChatRequest::new("local", question("Hello"))).await;
    result.expect("completion");

    assert_eq!(server.chat_requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn a_wrong_key_is_an_unauthorized_status_not_retried() {
    let server = ScriptedLlm::start_with_key("sk-right").await;
    let llm = Llm::new(&LlmConfig {
        api_key: Some("sk-wrong".to_owned()),
        ..config(&server)
    })
    .expect("client");

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hello"))).await;
    let error = result.expect_err("401");

    assert!(
        matches!(error, LlmError::Status { status: 401, .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), "unauthorized");
    assert_eq!(server.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_tool_call_round_trips() {
    let server = ScriptedLlm::start().await;
    server.push(
        Reply::tool_call("ask_human", json!({"question": "May I refund order 42?"}))
            .with_id("call_1"),
    );
    server.push(Reply::text("Yes, your refund is on its way."));
    let llm = client(&server);
    let tools = vec![tool::<AskHuman>("ask_human", "Ask a human support agent.")];

    let mut messages = question("Can I get a refund for order 42?");
    let first = ChatRequest {
        tools: tools.clone(),
        ..ChatRequest::new("gpt-4o-mini", messages.clone())
    };
    let (result, _) = chat(&llm, first).await;
    let completion = result.expect("tool call");

    assert_eq!(completion.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(completion.text, "");
    assert_eq!(completion.tool_calls.len(), 1);
    let call = completion.tool_calls[0].clone();
    assert_eq!(call.id, "call_1");
    assert_eq!(call.name, "ask_human");
    let arguments: AskHuman = parse_arguments(&call).expect("arguments");
    assert_eq!(arguments.question, "May I refund order 42?");

    messages.push(ChatMessage::Assistant {
        name: None,
        text: None,
        tool_calls: completion.tool_calls.clone(),
    });
    messages.push(ChatMessage::Tool {
        tool_call_id: call.id.clone(),
        content: "Yes, refund it.".to_owned(),
    });
    let second = ChatRequest {
        tools,
        ..ChatRequest::new("gpt-4o-mini", messages)
    };
    let (result, _) = chat(&llm, second).await;
    assert_eq!(
        result.expect("answer").text,
        "Yes, your refund is on its way."
    );

    let requests = server.chat_requests();
    let sent = requests[1].messages();
    assert_eq!(sent.len(), 4);
    assert_eq!(
        sent[2],
        json!({
            "role": "assistant",
            "tool_calls": [{
                "id": "call_1",
                "type": "function",
                "function": {"name": "ask_human", "arguments": call.arguments},
            }],
        })
    );
    assert_eq!(
        sent[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "Yes, refund it."})
    );
}

#[tokio::test]
async fn tool_parameters_are_sent_as_the_schema_of_the_type() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::text("ok"));
    let llm = client(&server);
    let spec = tool::<AskHuman>("ask_human", "Ask a human support agent.");

    let request = ChatRequest {
        tools: vec![spec.clone()],
        ..ChatRequest::new("gpt-4o-mini", question("Hi"))
    };
    chat(&llm, request).await.0.expect("completion");

    let body = &server.chat_requests()[0].body;
    let sent = &body["tools"][0];
    assert_eq!(sent["type"], "function");
    assert_eq!(sent["function"]["name"], "ask_human");
    assert_eq!(
        sent["function"]["description"],
        "Ask a human support agent."
    );
    let parameters = &sent["function"]["parameters"];
    assert_eq!(*parameters, spec.parameters);
    assert_eq!(parameters["type"], "object");
    assert_eq!(parameters["additionalProperties"], false);
    assert_eq!(parameters["required"], json!(["question"]));
    assert_eq!(parameters["properties"]["question"]["type"], "string");
    assert_eq!(
        parameters["properties"]["question"]["description"],
        "The question, as the human agent will read it."
    );
}

#[tokio::test]
async fn streamed_tool_calls_are_put_together_from_their_fragments() {
    let server = ScriptedLlm::start().await;
    server.push(
        Reply::text("Let me ask.")
            .with_tool_call(
                "ask_human",
                json!({"question": "Is a refund after 40 days allowed?"}),
            )
            .with_id("call_a")
            .with_tool_call("escalate", json!({"reason": "angry customer"}))
            .with_id("call_b"),
    );
    let llm = client(&server);

    let (result, deltas) = chat(&llm, streamed("gpt-4o-mini", question("Refund?"))).await;
    let completion = result.expect("completion");

    assert_eq!(texts(&deltas).concat(), "Let me ask.");
    assert_eq!(
        completion.tool_calls,
        [
            ToolCall {
                id: "call_a".to_owned(),
                name: "ask_human".to_owned(),
                arguments: json!({"question": "Is a refund after 40 days allowed?"}).to_string(),
            },
            ToolCall {
                id: "call_b".to_owned(),
                name: "escalate".to_owned(),
                arguments: json!({"reason": "angry customer"}).to_string(),
            },
        ]
    );
}

#[tokio::test]
async fn a_human_agents_turn_is_sent_with_its_name() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::text("ok"));
    let llm = client(&server);
    let mut messages = question("Hi");
    messages.push(ChatMessage::Assistant {
        name: Some("Dana".to_owned()),
        text: Some("Dana here, refunded.".to_owned()),
        tool_calls: Vec::new(),
    });
    messages.push(ChatMessage::User("Thanks!".to_owned()));

    chat(&llm, ChatRequest::new("m", messages))
        .await
        .0
        .expect("completion");

    assert_eq!(
        server.chat_requests()[0].messages()[2],
        json!({"role": "assistant", "name": "Dana", "content": "Dana here, refunded."})
    );
}

#[tokio::test]
async fn a_429_waits_at_least_its_retry_after() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::status(429).retry_after(Duration::from_secs(1)));
    server.push(Reply::text("Sorry for the wait."));
    let llm = client(&server);

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let completion = result.expect("retried");

    assert_eq!(completion.text, "Sorry for the wait.");
    assert_eq!(completion.attempts, 2);
    let requests = server.chat_requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].received_at - requests[0].received_at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_is_not_waited_for() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::status(429).retry_after(Duration::from_secs(60)));
    server.push(Reply::text("never sent"));
    let llm = client(&server);

    let started = Instant::now();
    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let error = result.expect_err("rate limited");

    assert!(
        matches!(error, LlmError::Status { status: 429, .. }),
        "{error:?}"
    );
    assert_eq!(error.code(), "rate_limited");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.chat_requests().len(), 1);
}

#[tokio::test]
async fn a_500_then_success_is_retried() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::status(500));
    server.push(Reply::text("Back on track."));
    let llm = client(&server);

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let completion = result.expect("retried");

    assert_eq!(completion.text, "Back on track.");
    assert_eq!(completion.attempts, 2);
    assert_eq!(server.chat_requests().len(), 2);
}

#[tokio::test]
async fn server_errors_give_up_after_max_retries() {
    let server = ScriptedLlm::start().await;
    for _ in 0..3 {
        server.push(Reply::status(503).error_message("overloaded"));
    }
    let llm = client(&server);

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let error = result.expect_err("gave up");

    match &error {
        LlmError::Status { status, message } => {
            assert_eq!(*status, 503);
            assert_eq!(message, "overloaded");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error.code(), "server_error");
    assert_eq!(
        server.chat_requests().len(),
        3,
        "the first attempt and 2 retries"
    );
}

#[tokio::test]
async fn a_stall_before_the_first_token_times_out_and_is_retried() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::stall());
    server.push(Reply::text("Here now."));
    let llm = Llm::new(&LlmConfig {
        first_token_timeout_secs: 1,
        ..config(&server)
    })
    .expect("client");

    let started = Instant::now();
    let (result, _) = chat(&llm, streamed("m", question("Hi"))).await;
    let completion = result.expect("retried");

    assert_eq!(completion.text, "Here now.");
    assert_eq!(completion.attempts, 2);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let requests = server.chat_requests();
    assert!(requests[1].received_at - requests[0].received_at >= Duration::from_secs(1));
}

#[tokio::test]
async fn every_attempt_stalling_is_a_timeout() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::stall());
    server.push(Reply::stall());
    let llm = Llm::new(&LlmConfig {
        request_timeout_secs: 1,
        max_retries: 1,
        ..config(&server)
    })
    .expect("client");

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let error = result.expect_err("timeout");

    assert!(
        matches!(&error, LlmError::Timeout(why) if why.contains("request_timeout_secs")),
        "{error:?}"
    );
    assert_eq!(error.code(), "timeout");
    assert_eq!(server.chat_requests().len(), 2);
}

#[tokio::test]
async fn a_slow_stream_that_keeps_coming_is_not_cut_off() {
    let server = ScriptedLlm::start().await;
    // Nine frames 300 ms apart: longer in all than any one limit, but never
    // silent for long. (One limit over the whole attempt cut this off.)
    server.push(Reply::text("one two three four five six").chunk_delay(Duration::from_millis(300)));
    let llm = Llm::new(&LlmConfig {
        request_timeout_secs: 1,
        first_token_timeout_secs: 1,
        idle_timeout_secs: 1,
        ..config(&server)
    })
    .expect("client");

    let started = Instant::now();
    let (result, deltas) = chat(&llm, streamed("m", question("Hi"))).await;
    let completion = result.expect("a slow answer is an answer");

    assert!(
        started.elapsed() > Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(completion.attempts, 1);
    assert_eq!(completion.text, "one two three four five six");
    assert!(!texts(&deltas).contains(&"<restart>".to_owned()));
}

#[tokio::test]
async fn a_stream_that_goes_silent_is_cut_by_the_idle_limit_and_retried() {
    let server = ScriptedLlm::start().await;
    // The first token comes in time, then the stream is silent too long.
    server.push(Reply::text("one two three").chunk_delay(Duration::from_millis(1_500)));
    server.push(Reply::text("Fast answer."));
    let llm = Llm::new(&LlmConfig {
        first_token_timeout_secs: 3,
        idle_timeout_secs: 1,
        ..config(&server)
    })
    .expect("client");

    let (result, deltas) = chat(&llm, streamed("m", question("Hi"))).await;
    let completion = result.expect("retried");

    assert_eq!(completion.attempts, 2);
    let shown = texts(&deltas);
    let restart = shown
        .iter()
        .position(|text| text == "<restart>")
        .expect("a restart");
    assert!(restart > 0, "text was shown before the restart: {shown:?}");
    assert_eq!(shown[restart + 1..].concat(), "Fast answer.");

    // Silent from the start: the first-token limit, not the idle one.
    server.push(Reply::text("late").delay(Duration::from_secs(3)));
    let llm = Llm::new(&LlmConfig {
        first_token_timeout_secs: 1,
        idle_timeout_secs: 30,
        max_retries: 0,
        ..config(&server)
    })
    .expect("client");
    let started = Instant::now();
    let error = chat(&llm, streamed("m", question("Hi")))
        .await
        .0
        .expect_err("no first token");
    assert!(
        matches!(&error, LlmError::Timeout(why) if why.contains("first token")),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Everything logged while `run` runs, as text.
async fn logged<T>(run: impl std::future::Future<Output = T>) -> (T, String) {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // tracing-core asks only the calling thread's subscriber about a new
    // callsite while a single dispatcher exists, so a callsite first hit by
    // another test would be disabled for good; a second one avoids that.
    let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let guard = tracing::subscriber::set_default(subscriber);
    let value = run.await;
    drop(guard);
    drop(second);
    let text = String::from_utf8(buffer.0.lock().expect("log buffer").clone()).expect("UTF-8");
    (value, text)
}

#[tokio::test]
async fn the_total_budget_bounds_every_retry_and_the_give_up_says_why() {
    let server = ScriptedLlm::start().await;
    for _ in 0..10 {
        server.push(Reply::stall());
    }
    // Each attempt may wait a second for its first token, and ten retries
    // are allowed, but the whole call has two seconds.
    let llm = Llm::new(&LlmConfig {
        first_token_timeout_secs: 1,
        total_timeout_secs: 2,
        max_retries: 10,
        ..config(&server)
    })
    .expect("client");

    let started = Instant::now();
    let ((result, _), logs) =
        logged(chat(&llm, streamed("slow-local-model", question("Hi")))).await;
    let error = result.expect_err("the budget ran out");

    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2_900), "{elapsed:?}");
    assert!(matches!(error, LlmError::Timeout(_)), "{error:?}");
    let attempts = server.chat_requests().len();
    assert!((2..=3).contains(&attempts), "{attempts} attempts");
    let gave_up: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("model call gave up"))
        .collect();
    assert_eq!(gave_up.len(), 1, "{logs}");
    let line = gave_up[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("model=\"slow-local-model\""), "{line}");
    assert!(line.contains(&format!("attempts={attempts}")), "{line}");
    assert!(line.contains("elapsed_ms="), "{line}");
    assert!(line.contains("code=\"timeout\""), "{line}");
    assert!(
        line.contains("total time budget") || line.contains("total budget"),
        "the reason: {line}"
    );
}

#[tokio::test]
async fn a_cut_stream_restarts_and_the_retry_starts_over() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::disconnect_mid_stream());
    server.push(Reply::text("The whole answer."));
    let llm = client(&server);

    let (result, deltas) = chat(&llm, streamed("m", question("Hi"))).await;
    let completion = result.expect("retried");

    let shown = texts(&deltas);
    let restart = shown
        .iter()
        .position(|text| text == "<restart>")
        .expect("a restart");
    assert!(restart > 0, "{shown:?}");
    assert_eq!(shown.iter().filter(|text| *text == "<restart>").count(), 1);
    assert_eq!(shown[restart + 1..].concat(), completion.text);
    assert_eq!(completion.text, "The whole answer.");
    assert_eq!(completion.attempts, 2);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::status(400).error_message("Invalid 'messages[1].role'."));
    server.push(Reply::text("never sent"));
    let llm = client(&server);

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let error = result.expect_err("400");

    match &error {
        LlmError::Status { status, message } => {
            assert_eq!(*status, 400);
            assert_eq!(message, "Invalid 'messages[1].role'.");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.chat_requests().len(), 1);
    assert_eq!(server.pending(), 1);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transport_error() {
    // Bind and drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let llm = Llm::new(&LlmConfig {
        base_url: Some(format!("http://127.0.0.1:{port}/v1")),
        max_retries: 1,
        initial_backoff_ms: 10,
        ..LlmConfig::default()
    })
    .expect("client");

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let error = result.expect_err("unreachable");

    assert!(matches!(error, LlmError::Transport(_)), "{error:?}");
    assert_eq!(error.code(), "unreachable");
}

/// Who should answer, as the classifier says.
#[derive(Deserialize, JsonSchema, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Route {
    responder: Responder,
    reason: String,
    confidence: Option<f64>,
}

#[derive(Deserialize, JsonSchema, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Responder {
    Ai,
    Human,
}

#[tokio::test]
async fn structured_output_parses_into_the_type() {
    let server = ScriptedLlm::start().await;
    server.push_for(
        "classifier",
        Reply::json(json!({"responder": "human", "reason": "wants a refund", "confidence": null})),
    );
    let llm = client(&server);

    let route = llm
        .structured::<Route>("classifier", "route", question("I want my money back"))
        .await
        .expect("parsed");

    assert_eq!(
        route.value,
        Route {
            responder: Responder::Human,
            reason: "wants a refund".to_owned(),
            confidence: None,
        }
    );
    assert_eq!(route.completion.attempts, 1);
    assert!(route.completion.usage.total_tokens > 0);

    let format = server.chat_requests()[0]
        .response_format()
        .cloned()
        .expect("a response_format");
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["name"], "route");
    assert_eq!(format["json_schema"]["strict"], true);
    let schema = &format["json_schema"]["schema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    let mut required: Vec<String> =
        serde_json::from_value(schema["required"].clone()).expect("names");
    required.sort();
    assert_eq!(required, ["confidence", "reason", "responder"]);
}

#[tokio::test]
async fn malformed_structured_output_is_malformed_and_not_retried() {
    let server = ScriptedLlm::start().await;
    server.push(Reply::raw_content("{\"responder\": \"ai\", \"reason\": "));
    server.push(Reply::json(
        json!({"responder": "ai", "reason": "x", "confidence": 0.9, "mood": "happy"}),
    ));
    server.push(Reply::json(
        json!({"responder": "robot", "reason": "x", "confidence": 0.9}),
    ));
    server.push(Reply::text(""));
    let llm = client(&server);

    for expected in [
        "not valid JSON",
        "unknown field `mood`",
        "unknown variant `robot`",
        "no content",
    ] {
        let error = llm
            .structured::<Route>("m", "route", question("Hi"))
            .await
            .expect_err("malformed");
        match &error {
            LlmError::Malformed(reason) => assert!(reason.contains(expected), "{reason}"),
            other => panic!("{expected}: {other:?}"),
        }
        assert_eq!(error.code(), "malformed_output");
    }
    assert_eq!(
        server.chat_requests().len(),
        4,
        "one request each, no retries"
    );
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    let server = ScriptedLlm::start().await;
    server.set_embedder(|text| vec![text.len() as f32, 1.0]);
    let llm = client(&server);
    let inputs = vec![
        "a".to_owned(),
        "three".to_owned(),
        "seventeen letters".to_owned(),
    ];

    let embeddings = llm.embed(inputs.clone()).await.expect("embeddings");

    assert_eq!(
        embeddings.vectors,
        [vec![1.0, 1.0], vec![5.0, 1.0], vec![17.0, 1.0]]
    );
    assert_eq!(embeddings.model, "text-embedding-3-small");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "one batch");
    assert_eq!(requests[0].path, "/v1/embeddings");
    assert_eq!(requests[0].model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(requests[0].body["input"], json!(inputs));
}

#[tokio::test]
async fn embeddings_are_retried_too() {
    let server = ScriptedLlm::start().await;
    server.push_embeddings(Reply::status(502));
    let llm = client(&server);

    let embeddings = llm
        .embed(vec!["refund please".to_owned()])
        .await
        .expect("retried");

    assert_eq!(embeddings.vectors.len(), 1);
    assert_eq!(server.requests().len(), 2);
    assert!(embeddings.vectors[0].iter().any(|x| *x != 0.0));
}

#[tokio::test]
async fn a_client_needs_an_endpoint() {
    let error = Llm::new(&LlmConfig::default()).expect_err("not configured");
    assert!(matches!(error, LlmError::Config(_)), "{error:?}");
    let error = Llm::new(&LlmConfig {
        base_url: Some("ftp://example.com".to_owned()),
        ..LlmConfig::default()
    })
    .expect_err("not http");
    assert!(matches!(error, LlmError::Config(_)), "{error:?}");
}

#[tokio::test]
async fn a_server_error_that_refuses_the_request_is_not_retried() {
    let server = ScriptedLlm::start().await;
    // llama.cpp's answer to a conversation its template cannot render: a
    // 500, but about the request, which the same bytes would get again.
    server.push(Reply::status(500).error_message(
        "Failed to parse tool call arguments as JSON: [json.exception.parse_error.101] parse \
         error at line 1, column 2",
    ));
    server.push(Reply::text("never sent"));
    let llm = client(&server);

    let (result, _) = chat(&llm, ChatRequest::new("m", question("Hi"))).await;
    let error = result.expect_err("refused");

    assert!(
        matches!(&error, LlmError::Rejected { status: 500, message } if message.starts_with("Failed to parse")),
        "{error:?}"
    );
    assert_eq!(error.code(), "rejected");
    assert_eq!(server.chat_requests().len(), 1, "the same request again");
    assert_eq!(server.pending(), 1);

    // A plain 500 is still a server error, and retried.
    server.push(Reply::status(500));
    let (result, _) = chat(&llm, ChatRequest::new("m", question("Again"))).await;
    assert_eq!(result.expect("retried").text, "never sent");
}

#[tokio::test]
async fn a_tool_call_with_broken_arguments_goes_back_as_an_object() {
    let server = ScriptedLlm::start().await;
    server.set_strict_template(true);
    server.push(Reply::text("Let me ask."));
    let llm = client(&server);
    let mut messages = question("Can I get a refund?");
    messages.push(ChatMessage::Assistant {
        name: None,
        text: None,
        tool_calls: vec![ToolCall {
            id: "call_1".to_owned(),
            name: "ask_human".to_owned(),
            arguments: "{\"question\": \"Refund?\"".to_owned(),
        }],
    });
    messages.push(ChatMessage::Tool {
        tool_call_id: "call_1".to_owned(),
        content: "{\"error\": \"not JSON\"}".to_owned(),
    });

    let (result, _) = chat(&llm, ChatRequest::new("m", messages)).await;

    assert_eq!(result.expect("accepted").text, "Let me ask.");
    let sent = &server.chat_requests()[0];
    assert_eq!(
        sent.messages()[2]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
}

#[tokio::test]
async fn an_error_event_mid_stream_is_the_providers_error_and_is_retried() {
    let server = ScriptedLlm::start().await;
    server.push(
        Reply::text("This answer breaks off")
            .chunked(4)
            .error_mid_stream(2, 500, "slot 0: the KV cache is full"),
    );
    server.push(Reply::text("The whole answer."));
    let llm = client(&server);

    let ((result, deltas), logs) = logged(chat(&llm, streamed("m", question("Hi")))).await;
    let completion = result.expect("retried");

    assert_eq!(completion.text, "The whole answer.");
    assert_eq!(completion.attempts, 2);
    let shown = texts(&deltas);
    assert_eq!(
        shown.iter().filter(|text| *text == "<restart>").count(),
        1,
        "{shown:?}"
    );
    assert!(
        logs.contains("slot 0: the KV cache is full"),
        "the provider's message is in the logs: {logs}"
    );

    // One that says the request is at fault is not retried, and keeps its
    // message.
    server.push(Reply::text("Too long").error_mid_stream(1, 400, "the context is too long"));
    server.push(Reply::text("never sent"));
    let (result, _) = chat(&llm, streamed("m", question("Hi"))).await;
    let error = result.expect_err("not retried");
    assert!(
        matches!(&error, LlmError::Status { status: 400, message } if message == "the context is too long"),
        "{error:?}"
    );
    assert_eq!(server.pending(), 1);
}

#[tokio::test]
async fn a_501_from_embeddings_is_not_retried() {
    let server = ScriptedLlm::start().await;
    server
        .push_embeddings(Reply::status(501).error_message(
            "This server does not support embeddings. Start it with `--embeddings`",
        ));
    let llm = client(&server);

    let error = llm
        .embed(vec!["refund please".to_owned()])
        .await
        .expect_err("unsupported");

    assert_eq!(error.code(), "unsupported");
    assert!(
        error.to_string().contains("does not support embeddings"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 1, "no retry of a 501");
    assert!(matches!(
        llm.model_state(ModelRole::Embedding),
        ModelState::Unavailable(reason) if reason.contains("501")
    ));
    // The model comes back: the next call says so.
    llm.embed(vec!["refund please".to_owned()])
        .await
        .expect("embedded");
    assert_eq!(llm.model_state(ModelRole::Embedding), ModelState::Ok);
}

#[tokio::test]
async fn the_start_up_check_reads_the_list_and_embeds_once() {
    let server = ScriptedLlm::start().await;
    server.list_models(["qwen2.5-1.5b-instruct"]);
    server
        .push_embeddings(Reply::status(501).error_message(
            "This server does not support embeddings. Start it with `--embeddings`",
        ));
    // A local endpoint where only the reply model is named: the classifier
    // and embedding models are the reply model.
    let llm = Llm::new(&LlmConfig {
        reply_model: "qwen2.5-1.5b-instruct".to_owned(),
        embedding_model: None,
        ..config(&server)
    })
    .expect("client");
    assert!(
        llm.model_statuses()
            .iter()
            .all(|s| s.state == ModelState::Unchecked)
    );

    let statuses = llm.check_models().await;

    let by_role = |role: ModelRole| {
        statuses
            .iter()
            .find(|s| s.role == role)
            .cloned()
            .expect("every role")
    };
    assert_eq!(by_role(ModelRole::Reply).model, "qwen2.5-1.5b-instruct");
    assert_eq!(by_role(ModelRole::Reply).state, ModelState::Ok);
    assert_eq!(
        by_role(ModelRole::Classifier).model,
        "qwen2.5-1.5b-instruct"
    );
    assert_eq!(by_role(ModelRole::Classifier).state, ModelState::Ok);
    let embedding = by_role(ModelRole::Embedding);
    assert_eq!(embedding.model, "qwen2.5-1.5b-instruct");
    assert!(
        matches!(&embedding.state, ModelState::Unavailable(reason)
            if reason.contains("501") && reason.contains("does not support embeddings")),
        "{embedding:?}"
    );
    let paths: Vec<(String, String)> = server
        .requests()
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert!(
        paths.contains(&("GET".to_owned(), "/v1/models".to_owned())),
        "{paths:?}"
    );
    assert!(
        server.chat_requests().is_empty(),
        "listed models need no chat: {paths:?}"
    );
    assert_eq!(paths.len(), 2, "the list and one embedding: {paths:?}");
}

#[tokio::test]
async fn a_model_the_endpoint_does_not_list_gets_a_one_token_chat() {
    let server = ScriptedLlm::start().await;
    // No list of models (a 404), a classifier the server does not have.
    server.push_for("reply-m", Reply::text("OK"));
    server.push_for(
        "missing-classifier",
        Reply::status(404).error_message("model 'missing-classifier' not found"),
    );
    let llm = Llm::new(&LlmConfig {
        reply_model: "reply-m".to_owned(),
        classifier_model: Some("missing-classifier".to_owned()),
        ..config(&server)
    })
    .expect("client");

    let started = Instant::now();
    llm.check_models().await;

    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(llm.model_state(ModelRole::Reply), ModelState::Ok);
    assert_eq!(llm.model_state(ModelRole::Embedding), ModelState::Ok);
    let ModelState::Unavailable(reason) = llm.model_state(ModelRole::Classifier) else {
        panic!("the classifier is not there");
    };
    assert!(
        reason.contains("404") && reason.contains("not found"),
        "{reason}"
    );
    let chats = server.chat_requests();
    assert_eq!(chats.len(), 2, "one probe per chat model, no retries");
    for chat in &chats {
        assert_eq!(chat.body["max_completion_tokens"], 1, "{}", chat.body);
        assert!(!chat.stream());
    }
}
