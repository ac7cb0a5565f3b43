//! The scripted server, driven over real HTTP with a plain client.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_scripted_llm::{
    EMBEDDING_DIMS, RecordedRequest, Reply, ScriptedLlm, ToolCall, bag_of_words_embedding,
};

const WAIT: Duration = Duration::from_secs(2);

async fn post(llm: &ScriptedLlm, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", llm.base_url()))
        .json(&body)
        .send()
        .await
        .expect("send the request")
}

fn chat_body(model: &str, user: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": user }] })
}

async fn chat(llm: &ScriptedLlm, body: Value) -> Value {
    let response = post(llm, "/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    response.json().await.expect("a JSON completion")
}

fn content(completion: &Value) -> &str {
    completion["choices"][0]["message"]["content"]
        .as_str()
        .expect("text content")
}

/// The `data:` payloads of an SSE body, `[DONE]` included, each frame checked
/// to be exactly `data: …\n\n`.
async fn sse(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let text = response.text().await.expect("the SSE body");
    text.strip_suffix("\n\n")
        .expect("frames end with a blank line")
        .split("\n\n")
        .map(|frame| {
            frame
                .strip_prefix("data: ")
                .expect("a data frame")
                .to_owned()
        })
        .collect()
}

fn parse_chunks(frames: &[String]) -> Vec<Value> {
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    frames[..frames.len() - 1]
        .iter()
        .map(|frame| serde_json::from_str(frame).expect("a JSON chunk"))
        .collect()
}

#[tokio::test]
async fn non_streaming_text_is_a_chat_completion() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("Hello!"));
    let completion = chat(&llm, chat_body("gpt-test", "Hi there")).await;

    assert_eq!(completion["object"], "chat.completion");
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(completion["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(completion["model"], "gpt-test");
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello!");
    assert!(choice["message"].get("tool_calls").is_none());
    assert_eq!(choice["finish_reason"], "stop");
    // "Hi there": 8 characters, 2 tokens; "Hello!": 6 characters, 2 tokens.
    assert_eq!(
        completion["usage"],
        json!({ "prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4 })
    );
    assert_eq!(llm.pending(), 0);

    llm.push(Reply::text("x").usage(100, 7).finish_reason("length"));
    let completion = chat(&llm, chat_body("gpt-test", "Hi")).await;
    assert_eq!(completion["usage"]["total_tokens"], 107);
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn streamed_text_reassembles_with_done_and_usage() {
    let llm = ScriptedLlm::start().await;
    let text = "The quick brown fox jumps";
    llm.push(Reply::text(text).chunked(3));
    let mut body = chat_body("gpt-test", "Tell me");
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    let chunks = parse_chunks(&sse(post(&llm, "/chat/completions", body.clone()).await).await);

    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|piece| !piece.is_empty())
        .collect();
    assert_eq!(pieces.len(), 3);
    assert_eq!(pieces.concat(), text);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 7);
    let finish = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], "stop");
    assert_eq!(finish["delta"], json!({}));

    // Without include_usage: no usage chunk; by default one chunk per word.
    llm.push(Reply::text(text));
    body["stream_options"] = Value::Null;
    let chunks = parse_chunks(&sse(post(&llm, "/chat/completions", body).await).await);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"].as_array().unwrap().len() == 1)
    );
    let pieces: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|piece| !piece.is_empty())
        .collect();
    assert_eq!(pieces, ["The ", "quick ", "brown ", "fox ", "jumps"]);
}

#[tokio::test]
async fn streamed_tool_calls_reassemble_to_names_and_json_arguments() {
    let llm = ScriptedLlm::start().await;
    let question = json!({ "question": "Refund allowed for order 1234?", "urgent": true });
    llm.push(
        Reply::tool_calls(vec![
            ToolCall::new("ask_human", question.clone()).with_id("call_1"),
            ToolCall::new("lookup", json!({ "id": 7 })),
        ])
        .chunk_delay(Duration::from_millis(1)),
    );
    let mut body = chat_body("gpt-test", "Can I get a refund?");
    body["stream"] = json!(true);
    let chunks = parse_chunks(&sse(post(&llm, "/chat/completions", body).await).await);

    // Reassemble as a client does: by index, the head names, fragments append.
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for chunk in &chunks {
        for part in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = part["index"].as_u64().unwrap() as usize;
            if let Some(id) = part["id"].as_str() {
                assert_eq!(index, calls.len());
                assert_eq!(part["type"], "function");
                assert_eq!(part["function"]["arguments"], "");
                let name = part["function"]["name"].as_str().unwrap();
                calls.push((id.to_owned(), name.to_owned(), String::new()));
            } else {
                assert!(part["function"].get("name").is_none());
                calls[index]
                    .2
                    .push_str(part["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0, "call_1");
    assert_eq!(calls[0].1, "ask_human");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[0].2).unwrap(),
        question
    );
    assert!(calls[1].0.starts_with("call_"));
    assert_eq!(calls[1].1, "lookup");
    assert_eq!(
        serde_json::from_str::<Value>(&calls[1].2).unwrap(),
        json!({ "id": 7 })
    );
    let fragments = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["tool_calls"][0]["id"].is_null())
        .filter(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
        .count();
    assert!(fragments > 2, "arguments arrive in several fragments");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn non_streamed_tool_call_has_null_content_and_string_arguments() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::tool_call(
        "ask_human",
        json!({ "question": "Refund?" }),
    ));
    llm.push(
        Reply::text("Let me check.")
            .with_tool_call("lookup", json!({ "id": 7 }))
            .with_id("call_9"),
    );
    let completion = chat(&llm, chat_body("gpt-test", "Refund?")).await;
    let choice = &completion["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "ask_human");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({ "question": "Refund?" }));

    let completion = chat(&llm, chat_body("gpt-test", "Refund?")).await;
    let message = &completion["choices"][0]["message"];
    assert_eq!(message["content"], "Let me check.");
    assert_eq!(message["tool_calls"][0]["id"], "call_9");
    assert_eq!(
        message["tool_calls"][0]["function"]["arguments"],
        r#"{"id":7}"#
    );
}

#[tokio::test]
async fn errors_carry_status_body_and_retry_after() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::status(429).retry_after(Duration::from_millis(1500)));
    llm.push(Reply::status(500).error_message("boom"));
    let mut body = chat_body("gpt-test", "Hi");
    body["stream"] = json!(true);

    let response = post(&llm, "/chat/completions", body.clone()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(response.headers()["retry-after-ms"], "1500");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(error["error"]["message"].is_string());
    assert!(error["error"]["type"].is_string());

    let response = post(&llm, "/chat/completions", body).await;
    assert_eq!(response.status(), 500);
    assert!(response.headers().get("retry-after").is_none());
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["message"], "boom");
    assert_eq!(error["error"]["type"], "server_error");
}

#[tokio::test]
async fn model_queues_come_before_the_shared_one() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("shared"));
    llm.push_for("classifier", Reply::json(json!({ "responder": "ai" })));
    assert_eq!(llm.pending(), 2);

    let first = chat(&llm, chat_body("classifier", "route this")).await;
    assert_eq!(content(&first), r#"{"responder":"ai"}"#);
    let second = chat(&llm, chat_body("classifier", "route this")).await;
    assert_eq!(content(&second), "shared");
    assert_eq!(llm.pending(), 0);

    // Nothing left and no fallback: a 500 that names the mistake.
    let response = post(&llm, "/chat/completions", chat_body("writer", "Hi")).await;
    assert_eq!(response.status(), 500);
    let error: Value = response.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no reply scripted for request #3"),
        "{message}"
    );
    assert!(message.contains("writer"), "{message}");
}

#[tokio::test]
async fn the_fallback_answers_when_the_queues_are_empty() {
    let llm = ScriptedLlm::start().await;
    llm.respond_with(|request: &RecordedRequest| {
        Reply::text(format!(
            "echo: {}",
            request.last_user_text().unwrap_or_default()
        ))
    });
    llm.push(Reply::text("scripted first"));

    let first = chat(&llm, chat_body("gpt-test", "one")).await;
    assert_eq!(content(&first), "scripted first");
    for word in ["two", "three"] {
        let completion = chat(&llm, chat_body("gpt-test", word)).await;
        assert_eq!(content(&completion), format!("echo: {word}"));
    }

    llm.respond_with(|_| panic!("a broken fallback"));
    let response = post(&llm, "/chat/completions", chat_body("gpt-test", "four")).await;
    assert_eq!(response.status(), 500);
}

#[tokio::test]
async fn embeddings_are_deterministic_and_similar_texts_are_near() {
    let llm = ScriptedLlm::start().await;
    let texts = [
        "refund my order please",
        "please refund my order now",
        "the weather in paris is sunny",
    ];
    let response = post(
        &llm,
        "/embeddings",
        json!({ "model": "embed-test", "input": texts }),
    )
    .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "embed-test");
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let vectors: Vec<Vec<f32>> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], i);
            serde_json::from_value(item["embedding"].clone()).unwrap()
        })
        .collect();
    assert_eq!(vectors.len(), 3);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for vector in &vectors {
        assert_eq!(vector.len(), EMBEDDING_DIMS);
        assert!((dot(vector, vector) - 1.0).abs() < 1e-4, "L2-normalised");
    }
    assert!(dot(&vectors[0], &vectors[1]) > 0.7);
    assert!(dot(&vectors[0], &vectors[1]) > dot(&vectors[0], &vectors[2]) + 0.3);

    // A single string gives the same vector as before, and as the public function.
    let again: Value = post(
        &llm,
        "/embeddings",
        json!({ "model": "embed-test", "input": texts[0] }),
    )
    .await
    .json()
    .await
    .unwrap();
    let again: Vec<f32> = serde_json::from_value(again["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(again, vectors[0]);
    assert_eq!(again, bag_of_words_embedding(texts[0]));

    // Scripted errors, then a custom embedder.
    llm.push_embeddings(Reply::status(500));
    let response = post(&llm, "/embeddings", json!({ "model": "e", "input": "x" })).await;
    assert_eq!(response.status(), 500);
    llm.set_embedder(|text| vec![text.len() as f32, 1.0]);
    let answer: Value = post(&llm, "/embeddings", json!({ "model": "e", "input": "abc" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["data"][0]["embedding"], json!([3.0, 1.0]));
}

#[tokio::test]
async fn every_request_is_recorded_with_its_body() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("ok"));
    let body = json!({
        "model": "gpt-test",
        "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": [{ "type": "text", "text": "Where is my parcel?" }] },
        ],
        "tools": [
            { "type": "function", "function": { "name": "ask_human", "parameters": {} } },
            { "type": "function", "function": { "name": "lookup", "parameters": {} } },
        ],
        "response_format": { "type": "json_object" },
    });
    let response = reqwest::Client::new()
        .post(format!("{}/chat/completions", llm.base_url()))
        .header("X-Trace-Id", "abc")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let unknown = post(&llm, "/models/nope", json!({})).await;
    assert_eq!(unknown.status(), 404);
    let error: Value = unknown.json().await.unwrap();
    assert_eq!(
        error["error"]["message"],
        "Invalid URL (POST /v1/models/nope)"
    );
    let bad = post(&llm, "/chat/completions", json!({ "messages": [] })).await;
    assert_eq!(bad.status(), 400);

    let requests = llm.wait_for_requests(3, WAIT).await;
    assert_eq!(requests.len(), 3);
    let chat = &requests[0];
    assert_eq!(chat.method, "POST");
    assert_eq!(chat.path, "/v1/chat/completions");
    assert_eq!(chat.body, body);
    assert_eq!(chat.model.as_deref(), Some("gpt-test"));
    assert_eq!(chat.header("x-trace-id"), Some("abc"));
    assert_eq!(chat.headers["content-type"], "application/json");
    assert_eq!(chat.messages().len(), 2);
    assert_eq!(
        chat.last_user_text().as_deref(),
        Some("Where is my parcel?")
    );
    assert_eq!(chat.tools(), ["ask_human", "lookup"]);
    assert!(!chat.stream());
    assert_eq!(
        chat.response_format(),
        Some(&json!({ "type": "json_object" }))
    );
    assert_eq!(requests[1].path, "/v1/models/nope");
    assert!(requests[0].received_at <= requests[1].received_at);
    assert_eq!(llm.chat_requests().len(), 2);
    assert_eq!(llm.take_requests().len(), 3);
    assert!(llm.requests().is_empty());
}

#[tokio::test]
async fn a_key_is_checked_only_when_one_was_set() {
    let llm = ScriptedLlm::start_with_key("sk-test").await;
    llm.push(Reply::text("ok"));
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", llm.base_url());
    let body = chat_body("gpt-test", "Hi");

    let response = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let response = client
        .post(&url)
        .bearer_auth("wrong")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(llm.pending(), 1, "a rejected request takes no reply");
    let response = client
        .post(&url)
        .bearer_auth("sk-test")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(llm.requests().len(), 3);
}

#[tokio::test]
async fn a_delay_holds_the_whole_answer() {
    let llm = ScriptedLlm::start().await;
    let delay = Duration::from_millis(200);
    llm.push(Reply::text("slow").delay(delay));
    let started = Instant::now();
    let response = post(&llm, "/chat/completions", chat_body("gpt-test", "Hi")).await;
    assert!(started.elapsed() >= delay, "headers came after the delay");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_stall_never_answers_and_stop_drops_it() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::stall());
    let url = format!("{}/chat/completions", llm.base_url());
    let client = reqwest::Client::new();

    let stalled = client.post(&url).json(&chat_body("gpt-test", "Hi"));
    let outcome = tokio::time::timeout(Duration::from_millis(200), stalled.send()).await;
    assert!(outcome.is_err(), "no answer within the timeout");

    llm.push(Reply::stall());
    let request = tokio::spawn(client.post(&url).json(&chat_body("gpt-test", "Hi")).send());
    llm.wait_for_requests(2, WAIT).await;
    llm.stop().await;
    let result = tokio::time::timeout(WAIT, request).await.unwrap().unwrap();
    assert!(result.is_err(), "the connection dropped without a response");
}

#[tokio::test]
async fn a_disconnect_cuts_the_stream_before_done() {
    let llm = ScriptedLlm::start().await;
    llm.push(Reply::text("one two three four").disconnect_after(2));
    let mut body = chat_body("gpt-test", "Hi");
    body["stream"] = json!(true);
    let mut response = post(&llm, "/chat/completions", body).await;
    assert_eq!(response.status(), 200);
    let mut received = Vec::new();
    let error = loop {
        match response.chunk().await {
            Ok(Some(bytes)) => received.extend_from_slice(&bytes),
            Ok(None) => panic!("the stream ended cleanly"),
            Err(error) => break error,
        }
    };
    let received = String::from_utf8(received).unwrap();
    assert_eq!(
        received.matches("data: ").count(),
        2,
        "{received} / {error}"
    );
    assert!(!received.contains("[DONE]"));

    // Not streaming: half the JSON body, then the dropped connection.
    llm.push(Reply::text("one two").disconnect_after(1));
    let response = post(&llm, "/chat/completions", chat_body("gpt-test", "Hi")).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn concurrent_requests_take_replies_in_arrival_order() {
    let llm = ScriptedLlm::start().await;
    let n = 40;
    for i in 0..n {
        llm.push(Reply::text(format!("reply {i}")));
    }
    let client = reqwest::Client::new();
    let url = format!("{}/chat/completions", llm.base_url());
    let answers = futures::future::join_all((0..n).map(|i| {
        let request = client
            .post(&url)
            .json(&chat_body("gpt-test", &format!("request {i}")));
        async move {
            let completion: Value = request.send().await.unwrap().json().await.unwrap();
            (i, content(&completion).to_owned())
        }
    }))
    .await;
    let order: Vec<String> = llm
        .requests()
        .iter()
        .map(|r| r.last_user_text().unwrap())
        .collect();
    for (i, answer) in answers {
        let position = order
            .iter()
            .position(|text| *text == format!("request {i}"))
            .unwrap();
        assert_eq!(answer, format!("reply {position}"));
    }
    assert_eq!(llm.pending(), 0);
}

#[tokio::test]
async fn a_strict_template_refuses_late_system_turns_names_and_broken_arguments() {
    let llm = ScriptedLlm::start().await;
    llm.set_strict_template(true);
    llm.push(Reply::text("accepted"));
    let refused = [
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "system", "content": "A note."},
        ]),
        json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "name": "Sam", "content": "Sam here."},
        ]),
        json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "ask_human", "arguments": "{not json"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "error"},
        ]),
        json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "ask_human", "arguments": "\"a string\""}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "error"},
        ]),
    ];
    for messages in refused {
        let response = post(
            &llm,
            "/chat/completions",
            json!({"model": "m", "messages": messages}),
        )
        .await;
        assert_eq!(response.status(), 500, "{messages}");
        let body: Value = response.json().await.expect("an error body");
        assert_eq!(
            body["error"]["code"], 500,
            "llama.cpp's numeric code: {body}"
        );
        assert_eq!(body["error"]["type"], "server_error");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    assert_eq!(llm.pending(), 1, "a refused request takes no reply");
    assert_eq!(
        llm.chat_requests().len(),
        4,
        "refused requests are recorded"
    );
    let accepted = chat(
        &llm,
        json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "ask_human", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "error"},
        ]}),
    )
    .await;
    assert_eq!(content(&accepted), "accepted");
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_stream_without_done() {
    let llm = ScriptedLlm::start().await;
    llm.push(
        Reply::text("one two three")
            .chunked(3)
            .error_mid_stream(2, 500, "slot failed"),
    );
    let mut body = chat_body("m", "Hi");
    body["stream"] = json!(true);
    let response = post(&llm, "/chat/completions", body).await;
    let frames = sse(response).await;
    assert_eq!(frames.len(), 3, "{frames:?}");
    let error: Value = serde_json::from_str(&frames[2]).expect("JSON");
    assert_eq!(
        error,
        json!({"error": {"code": 500, "message": "slot failed", "type": "server_error"}})
    );
    let first: Value = serde_json::from_str(&frames[1]).expect("JSON");
    assert_eq!(first["choices"][0]["delta"]["content"], "one ");

    // Unstreamed, the error is the answer.
    llm.push(Reply::text("x").error_mid_stream(1, 503, "loading model"));
    let response = post(&llm, "/chat/completions", chat_body("m", "Hi")).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("an error body");
    assert_eq!(body["error"]["message"], "loading model");
}

#[tokio::test]
async fn models_are_listed_only_once_named() {
    let llm = ScriptedLlm::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/models", llm.base_url());
    let unlisted = client.get(&url).send().await.expect("send");
    assert_eq!(unlisted.status(), 404);
    llm.list_models(["qwen2.5", "nomic-embed-text"]);
    let listed = client.get(&url).send().await.expect("send");
    assert_eq!(listed.status(), 200);
    let body: Value = listed.json().await.expect("a list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["qwen2.5", "nomic-embed-text"]);
    assert_eq!(llm.requests().len(), 2, "both recorded");
}
