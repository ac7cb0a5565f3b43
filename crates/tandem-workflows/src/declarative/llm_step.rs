//! The action of an `llm` step: one model call per attempt, through the
//! server's one client, and how its answer counts.
//!
//! Who said what is never decided from text: without a thread, the rendered
//! `prompt` is the one user turn; with a thread, the thread's stored
//! messages become turns through [`tandem_llm::prompt::build`] (a
//! customer's words always a user turn, verbatim), and the step's `prompt`
//! follows as a system turn of Tandem's own.

use serde_json::{Map, Value, json};
use tandem_llm::prompt::{self, PromptOptions};
use tandem_llm::{ChatMessage, ChatRequest, Llm, LlmError, ResponseFormat};
use tandem_model::{ThreadId, UsageRecord};
use tandem_store::{Store, StoreError};

use crate::context::StepInfo;
use crate::error::ActionError;

/// How many of a thread's newest messages a call reads; the token budget
/// then trims them.
const HISTORY_WINDOW: u32 = 200;

/// What the usage of these calls is recorded under.
pub const USAGE_PURPOSE: &str = "workflow";

/// A rendered call: the same for every attempt (the thread's history is
/// read afresh by each).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub step: String,
    pub model: String,
    pub system: String,
    pub prompt: Option<String>,
    pub thread: Option<History>,
    pub schema: Option<Value>,
}

/// The thread whose history goes into the call.
#[derive(Debug, Clone)]
pub(crate) struct History {
    pub thread_id: ThreadId,
    pub budget_tokens: usize,
    /// The AI's name, as the prompt's markers around a human's turns say it.
    pub ai_name: String,
}

/// One attempt: `{text, json?, model, usage, latency_ms}` on success. With
/// no client (a stored version run with the AI off) it fails for good.
pub(crate) async fn call(
    llm: Option<&Llm>,
    store: &Store,
    request: &Request,
    info: StepInfo,
) -> Result<Value, ActionError> {
    let Some(llm) = llm else {
        return Err(ActionError::permanent(super::AI_OFF));
    };
    let messages = messages(store, request).await?;
    let chat = ChatRequest {
        response_format: request.schema.as_ref().map(|schema| ResponseFormat {
            // Step ids fit the API's `[A-Za-z0-9_-]{1,64}`.
            name: request.step.clone(),
            schema: schema.clone(),
        }),
        ..ChatRequest::new(request.model.clone(), messages)
    };
    let completion = llm.chat(chat, &mut |_| {}).await.map_err(model_failed)?;
    record_usage(store, request, &info, &completion.model, completion.usage).await;
    let mut output = json!({
        "text": completion.text,
        "model": completion.model,
        "usage": completion.usage,
        "latency_ms": completion.latency_ms,
    });
    let content = completion.text.trim();
    if content.is_empty() {
        let why = match completion.finish_reason.as_deref() {
            Some("length") => "the answer was cut off before any text",
            _ => "the model answered with no text",
        };
        return Err(ActionError::permanent(why));
    }
    if let Some(schema) = &request.schema {
        let parsed: Value = serde_json::from_str(content).map_err(|e| {
            ActionError::permanent(format!(
                "the answer is not valid JSON ({e}): {}",
                snippet(content)
            ))
        })?;
        if let Err(why) = conforms(&parsed, schema, "") {
            return Err(ActionError::permanent(format!(
                "the answer does not fit the step's schema: {why}: {}",
                snippet(content)
            )));
        }
        output["json"] = parsed;
    }
    Ok(output)
}

/// The call's turns: see the module's doc.
async fn messages(store: &Store, request: &Request) -> Result<Vec<ChatMessage>, ActionError> {
    let Some(thread) = &request.thread else {
        return Ok(vec![
            ChatMessage::System(request.system.clone()),
            ChatMessage::User(request.prompt.clone().unwrap_or_default()),
        ]);
    };
    store
        .get_thread(thread.thread_id, None)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| ActionError::permanent(format!("thread {} not found", thread.thread_id)))?;
    let history = store
        .prompt_history(thread.thread_id, HISTORY_WINDOW)
        .await
        .map_err(store_failed)?;
    let mut messages = prompt::build(
        &history,
        &PromptOptions {
            system_prompt: request.system.clone(),
            ai_name: thread.ai_name.clone(),
            budget_tokens: thread.budget_tokens,
        },
    );
    if let Some(instruction) = &request.prompt {
        messages.push(ChatMessage::System(instruction.clone()));
    }
    Ok(messages)
}

/// A failure after the client's own retries: retryable ones are tried
/// again as the step's `retry` says, durably.
fn model_failed(error: LlmError) -> ActionError {
    let message = format!("{} ({})", error, error.code());
    if error.is_retryable() {
        ActionError::retryable(message)
    } else {
        ActionError::permanent(message)
    }
}

fn store_failed(error: StoreError) -> ActionError {
    ActionError::retryable(error.to_string())
}

/// Records the call's tokens, keyed by the run and the step's journal
/// place, so an attempt repeated after a crash counts once. A failure to
/// record is logged, not the step's: calling the model again would cost
/// more than a missing record.
async fn record_usage(
    store: &Store,
    request: &Request,
    info: &StepInfo,
    model: &str,
    usage: tandem_llm::Usage,
) {
    let record = UsageRecord {
        run_id: info.run_id,
        step_seq: info.seq,
        thread_id: request.thread.as_ref().map(|t| t.thread_id),
        purpose: USAGE_PURPOSE.to_owned(),
        model: model.to_owned(),
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
    };
    if let Err(error) = store.record_usage(record).await {
        tracing::warn!(%error, step = %request.step, "workflows: recording an llm step's usage failed");
    }
}

/// The start of a long text, for an error message.
fn snippet(text: &str) -> String {
    const MAX: usize = 300;
    let mut clipped: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        clipped.push('…');
    }
    clipped
}

/// Whether `value` fits `schema`, for the keywords structured answers use:
/// `type`, `properties`, `required`, `additionalProperties: false`,
/// `items`, `enum`, `const` and `anyOf`. Other keywords are not checked
/// here (a provider in strict mode enforces the schema itself). The error
/// names the place, as a JSON pointer.
pub(crate) fn conforms(value: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        // `true` (or a schema that is not an object) accepts anything here.
        return Ok(());
    };
    let place = || if at.is_empty() { "/" } else { at };
    if let Some(kind) = schema.get("type") {
        let kinds: Vec<&str> = match kind {
            Value::String(kind) => vec![kind.as_str()],
            Value::Array(kinds) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !kinds.is_empty() && !kinds.iter().any(|kind| is_type(value, kind)) {
            return Err(format!(
                "{} is {}, not {}",
                place(),
                type_name(value),
                kinds.join(" or ")
            ));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        return Err(format!(
            "{} is not one of {}",
            place(),
            Value::from(allowed.clone())
        ));
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        return Err(format!("{} is not {constant}", place()));
    }
    if let Some(Value::Array(variants)) = schema.get("anyOf")
        && !variants.iter().any(|v| conforms(value, v, at).is_ok())
    {
        return Err(format!("{} fits none of `anyOf`", place()));
    }
    if let Value::Object(object) = value {
        check_object(object, schema, at)?;
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(item, item_schema, &format!("{at}/{i}"))?;
        }
    }
    Ok(())
}

fn check_object(
    object: &Map<String, Value>,
    schema: &Map<String, Value>,
    at: &str,
) -> Result<(), String> {
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for name in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(name) {
                return Err(format!("{at}/{name} is missing"));
            }
        }
    }
    for (name, field) in object {
        match properties.and_then(|p| p.get(name)) {
            Some(field_schema) => conforms(field, field_schema, &format!("{at}/{name}"))?,
            None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                return Err(format!("{at}/{name} is not allowed"));
            }
            None => {
                if let Some(extra @ Value::Object(_)) = schema.get("additionalProperties") {
                    conforms(field, extra, &format!("{at}/{name}"))?;
                }
            }
        }
    }
    Ok(())
}

fn is_type(value: &Value, kind: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        // A type this check does not know: left to the provider.
        _ => true,
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "reply": {"type": "string"},
                "confidence": {"type": "number"},
                "tone": {"enum": ["warm", "formal"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "note": {"type": ["string", "null"]},
            },
            "required": ["reply", "confidence"],
            "additionalProperties": false,
        })
    }

    #[test]
    fn answers_that_fit_pass() {
        for value in [
            json!({"reply": "Hi", "confidence": 0.9}),
            json!({"reply": "Hi", "confidence": 1, "tone": "warm", "tags": ["a"], "note": null}),
        ] {
            assert_eq!(conforms(&value, &schema(), ""), Ok(()), "{value}");
        }
    }

    #[test]
    fn answers_that_do_not_fit_say_where() {
        let error = |value: Value| conforms(&value, &schema(), "").unwrap_err();
        assert_eq!(error(json!([1])), "/ is an array, not object");
        assert_eq!(error(json!({"confidence": 1})), "/reply is missing");
        assert_eq!(
            error(json!({"reply": 3, "confidence": 1})),
            "/reply is a number, not string"
        );
        assert_eq!(
            error(json!({"reply": "x", "confidence": 1, "mood": "?"})),
            "/mood is not allowed"
        );
        assert_eq!(
            error(json!({"reply": "x", "confidence": 1, "tags": ["a", 2]})),
            "/tags/1 is a number, not string"
        );
        assert!(
            error(json!({"reply": "x", "confidence": 1, "tone": "rude"})).contains("not one of")
        );
        assert!(is_type(&json!(2.0), "integer"));
        assert!(!is_type(&json!(2.5), "integer"));
    }
}
