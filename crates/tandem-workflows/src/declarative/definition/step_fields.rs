//! The fields of each kind of step: bounds, formats, literal names, and
//! the templates and jumps they hold (through [`StepScope`]).

use std::collections::HashSet;

use serde_json::Value;
use tandem_model::AssignedTo;

use super::validate::StepScope;
use super::{
    Action, ApprovalStep, AskHumanStep, AssignStep, BranchStep, HttpStep, LlmStep, MAX_SECS,
    PostMessageStep, Problems, RESERVED_HEADERS, SleepStep, WaitEventStep, is_event_name,
};
use crate::declarative::template::{Reference, Root, Template, strings_in};
use crate::retry::RetryPolicy;

/// Checks the fields of a step's action (a branch's `on` loses its braces).
pub(super) fn check(problems: &mut Problems<'_>, at: &StepScope<'_>, action: &mut Action) {
    match action {
        Action::Http(http) => check_http(problems, at, http),
        Action::Llm(llm) => check_llm(problems, at, llm),
        Action::AskHuman(ask) => check_ask_human(problems, at, ask),
        Action::Approval(approval) => check_approval(problems, at, approval),
        Action::WaitEvent(wait) => check_wait_event(problems, at, wait),
        Action::Sleep(sleep) => check_sleep(problems, at, sleep),
        Action::PostMessage(post) => check_post_message(problems, at, post),
        Action::Assign(assign) => check_assign(problems, at, assign),
        Action::Branch(branch) => check_branch(problems, at, branch),
    }
}

/// An `http` step: its URL, headers, body, retries, timeout and
/// expected statuses.
fn check_http(problems: &mut Problems<'_>, at: &StepScope<'_>, http: &HttpStep) {
    let id = at.id;
    at.template(problems, "url", &http.url);
    check_url(problems, id, &http.url);
    let mut lower = HashSet::new();
    for (name, value) in &http.headers {
        let field = format!("headers.{name}");
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.add(Some(id), Some(&field), "not a valid header name");
        }
        let name = name.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&name.as_str()) {
            problems.add(Some(id), Some(&field), "set by the engine on every request");
        }
        if !lower.insert(name) {
            problems.add(Some(id), Some(&field), "the same header twice");
        }
        at.template(problems, &field, value);
    }
    if let Some(body) = &http.body {
        let mut strings = Vec::new();
        strings_in(body, "body", &mut strings);
        for (field, source) in strings {
            at.template(problems, &field, source);
        }
    }
    check_retry(problems, id, &http.retry);
    if !(1..=300_000).contains(&http.timeout_ms) {
        problems.add(Some(id), Some("timeout_ms"), "must be 1 to 300000");
    }
    if let Some(expect) = &http.expect {
        if expect.is_empty() {
            problems.add(Some(id), Some("expect"), "lists no status");
        }
        if let Some(bad) = expect.iter().find(|s| !(100..=599).contains(*s)) {
            problems.add(
                Some(id),
                Some("expect"),
                format!("{bad} is not an HTTP status"),
            );
        }
    }
}

/// An `llm` step: its prompts, thread, history budget, model, schema,
/// retries and `on_error`.
fn check_llm(problems: &mut Problems<'_>, at: &StepScope<'_>, llm: &LlmStep) {
    let id = at.id;
    at.template(problems, "system", &llm.system);
    if llm.system.trim().is_empty() {
        problems.add(Some(id), Some("system"), "must not be empty");
    }
    match &llm.prompt {
        Some(prompt) => {
            at.template(problems, "prompt", prompt);
            if prompt.trim().is_empty() {
                problems.add(Some(id), Some("prompt"), "must not be empty");
            }
        }
        None if llm.thread_id.is_none() => problems.add(
            Some(id),
            Some("prompt"),
            "is required without `thread_id`: it is the user turn",
        ),
        None => {}
    }
    if let Some(thread) = &llm.thread_id {
        at.template(problems, "thread_id", thread);
    }
    match llm.history_budget_tokens {
        Some(_) if llm.thread_id.is_none() => problems.add(
            Some(id),
            Some("history_budget_tokens"),
            "only a step with `thread_id` sends a history",
        ),
        Some(budget) if !(500..=200_000).contains(&budget) => problems.add(
            Some(id),
            Some("history_budget_tokens"),
            "must be 500 to 200000",
        ),
        _ => {}
    }
    if let Some(model) = &llm.model
        && (model.trim().is_empty() || model.len() > 128 || model.chars().any(char::is_whitespace))
    {
        problems.add(
            Some(id),
            Some("model"),
            format!("{model:?} must be a model name: 1 to 128 characters, no spaces"),
        );
    }
    if let Some(schema) = &llm.schema {
        check_schema(problems, id, schema);
    }
    check_retry(problems, id, &llm.retry);
    if let Some(target) = &llm.on_error {
        at.jump(problems, "on_error", target);
    }
}

/// An `ask_human` step: its question, the agent asking, its deadline.
fn check_ask_human(problems: &mut Problems<'_>, at: &StepScope<'_>, ask: &AskHumanStep) {
    let id = at.id;
    at.template(problems, "thread_id", &ask.thread_id);
    at.template(problems, "question", &ask.question);
    if ask.question.trim().is_empty() {
        problems.add(Some(id), Some("question"), "must not be empty");
    }
    for (field, value) in [("reason", &ask.reason), ("agent_name", &ask.agent_name)] {
        if let Some(value) = value {
            at.template(problems, field, value);
        }
    }
    check_agent_name(problems, id, ask.agent_name.as_deref());
    check_deadline(problems, id, ask.timeout_secs, ask.on_timeout.as_deref());
    if let Some(target) = &ask.on_timeout {
        at.jump(problems, "on_timeout", target);
    }
}

/// An `approval` step: its draft, the agent it is from, its deadline.
fn check_approval(problems: &mut Problems<'_>, at: &StepScope<'_>, approval: &ApprovalStep) {
    let id = at.id;
    at.template(problems, "thread_id", &approval.thread_id);
    at.template(problems, "text", &approval.text);
    if approval.text.trim().is_empty() {
        problems.add(Some(id), Some("text"), "must not be empty");
    }
    for (field, value) in [
        ("reason", &approval.reason),
        ("agent_name", &approval.agent_name),
    ] {
        if let Some(value) = value {
            at.template(problems, field, value);
        }
    }
    check_agent_name(problems, id, approval.agent_name.as_deref());
    check_deadline(
        problems,
        id,
        approval.timeout_secs,
        approval.on_timeout.as_deref(),
    );
    if let Some(target) = &approval.on_timeout {
        at.jump(problems, "on_timeout", target);
    }
}

/// A `wait_event` step: its event, its deadline, the lifetime of its
/// resume URLs.
fn check_wait_event(problems: &mut Problems<'_>, at: &StepScope<'_>, wait: &WaitEventStep) {
    let id = at.id;
    if !is_event_name(&wait.event) {
        problems.add(
            Some(id),
            Some("event"),
            format!(
                "{:?} must be 1 to 64 of letters, digits, `_`, `-` and `.`",
                wait.event
            ),
        );
    }
    if wait
        .timeout_secs
        .is_some_and(|t| !(1..=MAX_SECS).contains(&t))
    {
        problems.add(
            Some(id),
            Some("timeout_secs"),
            "must be 1 to 315360000 (ten years)",
        );
    }
    if let Some(target) = &wait.on_timeout {
        if wait.timeout_secs.is_none() {
            problems.add(
                Some(id),
                Some("on_timeout"),
                "needs `timeout_secs`: without a deadline it never fires",
            );
        }
        at.jump(problems, "on_timeout", target);
    }
    if !(1..=MAX_SECS).contains(&wait.resume_url_ttl_secs) {
        problems.add(
            Some(id),
            Some("resume_url_ttl_secs"),
            "must be 1 to 315360000 (ten years)",
        );
    }
}

/// A `sleep` step: how long.
fn check_sleep(problems: &mut Problems<'_>, at: &StepScope<'_>, sleep: &SleepStep) {
    let id = at.id;
    if !(1..=MAX_SECS).contains(&sleep.seconds) {
        problems.add(
            Some(id),
            Some("seconds"),
            "must be 1 to 315360000 (ten years)",
        );
    }
}

/// A `post_message` step: its thread, text and agent.
fn check_post_message(problems: &mut Problems<'_>, at: &StepScope<'_>, post: &PostMessageStep) {
    let id = at.id;
    at.template(problems, "thread_id", &post.thread_id);
    at.template(problems, "text", &post.text);
    at.template(problems, "agent_name", &post.agent_name);
    if post.text.trim().is_empty() {
        problems.add(Some(id), Some("text"), "must not be empty");
    }
    if post.agent_name.trim().is_empty() || post.agent_name.chars().count() > 128 {
        problems.add(Some(id), Some("agent_name"), "must be 1 to 128 characters");
    }
}

/// An `assign` step: its thread, assignee, team and reason.
fn check_assign(problems: &mut Problems<'_>, at: &StepScope<'_>, assign: &AssignStep) {
    let id = at.id;
    at.template(problems, "thread_id", &assign.thread_id);
    for (field, value) in [
        ("assignee", &assign.assignee),
        ("team", &assign.team),
        ("reason", &assign.reason),
    ] {
        if let Some(value) = value {
            at.template(problems, field, value);
        }
    }
    if assign.assignee.is_some() && assign.to != AssignedTo::Human {
        problems.add(
            Some(id),
            Some("assignee"),
            "only a thread assigned `to = \"human\"` has an assignee",
        );
    }
}

/// A `branch` step: the value it looks at (kept without braces) and its
/// jumps.
fn check_branch(problems: &mut Problems<'_>, at: &StepScope<'_>, branch: &mut BranchStep) {
    let id = at.id;
    // `on` is a path; braces are tolerated and dropped, so both
    // spellings are the same definition (and version).
    let bare = strip_braces(&branch.on).to_owned();
    match Reference::parse(&bare) {
        Ok(reference) if reference.root == Root::ResumeUrl => {
            problems.add(Some(id), Some("on"), "a branch cannot look at a resume URL");
        }
        Ok(reference) => at
            .refs
            .reference(problems, id, Some(at.place), "on", &reference),
        Err(e) => problems.add(Some(id), Some("on"), e.0),
    }
    branch.on = bare;
    for (case, target) in &branch.cases {
        at.jump(problems, &format!("cases.{case}"), target);
    }
    if let Some(target) = &branch.default {
        at.jump(problems, "default", target);
    }
}

fn check_retry(problems: &mut Problems<'_>, id: &str, retry: &RetryPolicy) {
    if !(1..=100).contains(&retry.max_attempts) {
        problems.add(Some(id), Some("retry.max_attempts"), "must be 1 to 100");
    }
    if !(retry.multiplier.is_finite() && retry.multiplier >= 1.0) {
        problems.add(Some(id), Some("retry.multiplier"), "must be at least 1");
    }
    for (field, ms) in [
        ("retry.initial_backoff_ms", retry.initial_backoff_ms),
        ("retry.max_backoff_ms", retry.max_backoff_ms),
    ] {
        if ms > MAX_SECS * 1000 {
            problems.add(Some(id), Some(field), "at most ten years");
        }
    }
    if !(0.0..=1.0).contains(&retry.jitter) {
        problems.add(Some(id), Some("retry.jitter"), "must be 0 to 1");
    }
}

/// A literal `agent_name` must fit a message's; a template is checked when
/// the step runs.
fn check_agent_name(problems: &mut Problems<'_>, id: &str, name: Option<&str>) {
    if let Some(name) = name
        && (name.trim().is_empty() || name.chars().count() > 128)
    {
        problems.add(Some(id), Some("agent_name"), "must be 1 to 128 characters");
    }
}

/// The deadline of a step that waits for a person.
fn check_deadline(
    problems: &mut Problems<'_>,
    id: &str,
    timeout_secs: Option<u64>,
    on_timeout: Option<&str>,
) {
    if timeout_secs.is_some_and(|t| !(1..=MAX_SECS).contains(&t)) {
        problems.add(
            Some(id),
            Some("timeout_secs"),
            "must be 1 to 315360000 (ten years)",
        );
    }
    if on_timeout.is_some() && timeout_secs.is_none() {
        problems.add(
            Some(id),
            Some("on_timeout"),
            "needs `timeout_secs`: without a deadline it never fires",
        );
    }
}

/// Structured output wants a JSON Schema whose root is an object (the
/// providers' `response_format: json_schema` does).
fn check_schema(problems: &mut Problems<'_>, id: &str, schema: &Value) {
    let Some(object) = schema.as_object() else {
        problems.add(
            Some(id),
            Some("schema"),
            "must be a JSON Schema: a table/object",
        );
        return;
    };
    if object.get("type") != Some(&Value::String("object".into())) {
        problems.add(
            Some(id),
            Some("schema.type"),
            "must be \"object\": a structured answer is a JSON object",
        );
    }
    if let Some(properties) = object.get("properties")
        && !properties.is_object()
    {
        problems.add(
            Some(id),
            Some("schema.properties"),
            "must be a table/object of property schemas",
        );
    }
    if let Some(required) = object.get("required") {
        let names: Option<Vec<&str>> = required
            .as_array()
            .and_then(|list| list.iter().map(Value::as_str).collect());
        match names {
            None => problems.add(
                Some(id),
                Some("schema.required"),
                "must be a list of property names",
            ),
            Some(names) => {
                let properties = object.get("properties").and_then(Value::as_object);
                for name in names {
                    if properties.is_some_and(|p| !p.contains_key(name)) {
                        problems.add(
                            Some(id),
                            Some("schema.required"),
                            format!("{name:?} is not one of `properties`"),
                        );
                    }
                }
            }
        }
    }
}

fn strip_braces(on: &str) -> &str {
    let trimmed = on.trim();
    trimmed
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .unwrap_or(trimmed)
        .trim()
}

/// An `http` step's URL, when it does not start with a reference, must be
/// an http(s) URL (with each reference standing in as a plain word); one
/// that starts with a reference is checked when the step runs.
fn check_url(problems: &mut Problems<'_>, step: &str, source: &str) {
    let Ok(template) = Template::parse(source) else {
        return;
    };
    if template.literal_prefix().is_empty() && template.references().next().is_some() {
        return;
    }
    let mut sample = String::new();
    let mut rest = source;
    while let Some(start) = rest.find("{{") {
        sample.push_str(&rest[..start]);
        sample.push('x');
        rest = rest[start..]
            .find("}}")
            .map_or("", |end| &rest[start + end + 2..]);
    }
    sample.push_str(rest);
    match url::Url::parse(&sample) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        Ok(_) => problems.add(
            Some(step),
            Some("url"),
            format!("{source:?} must be an http:// or https:// URL"),
        ),
        Err(e) => problems.add(
            Some(step),
            Some("url"),
            format!("{source:?} is not a valid URL: {e}"),
        ),
    }
}
